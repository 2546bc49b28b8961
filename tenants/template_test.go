package tenants

import (
	"math"
	"strings"
	"testing"
)

func loadTemplates(t *testing.T) map[string]*Template {
	t.Helper()
	ts, err := Templates()
	if err != nil {
		t.Fatalf("Templates: %v", err)
	}
	if len(ts) == 0 {
		t.Fatal("Templates: no sector template embedded")
	}
	return ts
}

func magnetTemplate(t *testing.T) *Template {
	t.Helper()
	tpl, ok := loadTemplates(t)["magnetic-materials"]
	if !ok {
		t.Fatal(`Templates: no "magnetic-materials" template`)
	}
	return tpl
}

func TestTemplatesLoad(t *testing.T) {
	tpl := magnetTemplate(t)
	if tpl.Version != 1 || tpl.Name == "" {
		t.Errorf("version %d, name %q: want version 1 and a name", tpl.Version, tpl.Name)
	}
	if tpl.Demo == nil || tpl.Demo.Slug != "demo-magnets" {
		t.Fatalf("demo: want slug demo-magnets, got %+v", tpl.Demo)
	}
	n := 0
	for _, l := range tpl.Demo.Lines {
		n += len(l.Devices)
	}
	if n < 12 || n > 20 {
		t.Errorf("demo has %d devices, want 12-20", n)
	}
}

func TestTemplateDemoDevicesHaveModels(t *testing.T) {
	for id, tpl := range loadTemplates(t) {
		if tpl.Demo == nil {
			continue
		}
		models := map[string]bool{}
		for _, m := range tpl.DeviceModels {
			models[m.Key] = true
		}
		for _, l := range tpl.Demo.Lines {
			for _, d := range l.Devices {
				if !models[d.Model] {
					t.Errorf("%s: demo device %s (line %s) has unknown model %q", id, d.Key, l.Key, d.Model)
				}
			}
		}
	}
}

// TestTemplateSimHintsInRange checks that the simulator, following a metric's
// hint, stays inside the range ingest accepts: base ± amplitude ± 4·noise.
func TestTemplateSimHintsInRange(t *testing.T) {
	for id, tpl := range loadTemplates(t) {
		for _, m := range tpl.DeviceModels {
			for _, x := range m.Metrics {
				name := id + "/" + m.Key + "/" + x.Key
				s := x.Sim
				if s == nil {
					continue
				}
				if s.Amplitude < 0 || s.Noise < 0 || s.PeriodS < 0 {
					t.Errorf("%s: negative amplitude, noise or period: %+v", name, *s)
				}
				if s.Amplitude != 0 && s.PeriodS == 0 {
					t.Errorf("%s: amplitude without period", name)
				}
				if s.Counter {
					if s.Base < 0 {
						t.Errorf("%s: counter must not decrease (base %v)", name, s.Base)
					}
					continue
				}
				lo := s.Base - math.Abs(s.Amplitude) - 4*s.Noise
				hi := s.Base + math.Abs(s.Amplitude) + 4*s.Noise
				if x.Min != nil && lo < *x.Min {
					t.Errorf("%s: simulated low %v below min %v", name, lo, *x.Min)
				}
				if x.Max != nil && hi > *x.Max {
					t.Errorf("%s: simulated high %v above max %v", name, hi, *x.Max)
				}
			}
		}
	}
}

func TestTemplatePowerMetrics(t *testing.T) {
	tpl := magnetTemplate(t)
	for _, m := range tpl.DeviceModels {
		keys := map[string]MetricTemplate{}
		for _, x := range m.Metrics {
			keys[x.Key] = x
		}
		if _, ok := keys["power_kw"]; !ok {
			t.Errorf("model %s has no power_kw", m.Key)
		}
		if len(m.Metrics) < 3 || len(m.Metrics) > 7 {
			t.Errorf("model %s has %d metrics, want 3-7", m.Key, len(m.Metrics))
		}
		if m.Kind == "energy" {
			e, ok := keys["energy_kwh"]
			if !ok || e.Sim == nil || !e.Sim.Counter {
				t.Errorf("energy model %s: want an energy_kwh counter", m.Key)
			}
		}
	}
}

func gradeByCode(t *testing.T, tpl *Template, code string) Grade {
	t.Helper()
	for _, g := range tpl.Grades {
		if g.Code == code {
			return g
		}
	}
	t.Fatalf("no grade %s", code)
	return Grade{}
}

func TestTemplateGradeRanks(t *testing.T) {
	tpl := magnetTemplate(t)
	for _, c := range []struct{ higher, lower string }{
		{"N52", "N50"},
		{"N50", "N48"},
		{"N42SH", "N42H"},
		{"N42H", "N42M"},
		{"N42M", "N42"},
		{"Y40", "Y35"},
	} {
		h, l := gradeByCode(t, tpl, c.higher), gradeByCode(t, tpl, c.lower)
		if h.Family != l.Family {
			t.Errorf("%s (%s) and %s (%s): want one family", h.Code, h.Family, l.Code, l.Family)
		}
		if h.Rank <= l.Rank {
			t.Errorf("%s rank %d does not outrank %s rank %d", h.Code, h.Rank, l.Code, l.Rank)
		}
	}
	type familyRank struct {
		family string
		rank   int
	}
	seen := map[familyRank]string{}
	for _, g := range tpl.Grades {
		k := familyRank{g.Family, g.Rank}
		if other, dup := seen[k]; dup {
			t.Errorf("grades %s and %s share family %s and rank %d", other, g.Code, g.Family, g.Rank)
		}
		seen[k] = g.Code
	}
}

// sellDown returns the highest-ranked grade below intended, in its family, whose
// minima the measured values meet: the downgrade rule the template's ranks are
// meant for.
func sellDown(tpl *Template, intended Grade, measured map[string]float64) string {
	best, bestRank := "", math.MinInt
	for _, g := range tpl.Grades {
		if g.Family != intended.Family || g.Rank >= intended.Rank || g.Rank <= bestRank {
			continue
		}
		ok := true
		for k, s := range g.Specs {
			v, have := measured[k]
			if !have || (s.Min != nil && v < *s.Min) {
				ok = false
				break
			}
		}
		if ok {
			best, bestRank = g.Code, g.Rank
		}
	}
	return best
}

// TestTemplateDowngradeExamples runs the SECTOR file's two downgrade examples.
func TestTemplateDowngradeExamples(t *testing.T) {
	tpl := magnetTemplate(t)
	for _, c := range []struct {
		intended string
		measured map[string]float64
		want     string
	}{
		{"N52", map[string]float64{"br": 1.41, "hcj": 960, "hcb": 850, "bhmax": 385, "density": 7.55}, "N50"},
		{"N42SH", map[string]float64{"br": 1.30, "hcj": 1450, "hcb": 960, "bhmax": 330, "density": 7.55}, "N42H"},
	} {
		if got := sellDown(tpl, gradeByCode(t, tpl, c.intended), c.measured); got != c.want {
			t.Errorf("%s lot %v: sold down as %q, want %q", c.intended, c.measured, got, c.want)
		}
	}
}

const minimalTemplate = `{
  "id": "test-sector", "name": "Test", "version": 1,
  "device_models": [
    {"key": "furnace", "name": "Furnace", "kind": "furnace", "metrics": [
      {"key": "temp", "name": "Temperature", "unit": "°C", "min": 0, "max": 1300}]}
  ],
  "characteristics": [{"key": "br", "name": "Br", "unit": "T"}],
  "grades": [{"code": "N42", "name": "N42", "family": "NdFeB", "rank": 42, "specs": {"br": {"min": 1.28}}}],
  "demo": {"slug": "demo", "name": "Demo", "lines": [
    {"key": "l1", "name": "Line", "devices": [{"key": "f1", "name": "F1", "model": "furnace"}]}]}
}`

func TestParseTemplateRejects(t *testing.T) {
	if _, err := ParseTemplate([]byte(minimalTemplate)); err != nil {
		t.Fatalf("minimal template: %v", err)
	}
	for _, c := range []struct {
		name, old, new, want string
	}{
		{"unknown field", `"version": 1,`, `"version": 1, "colour": "blue",`, "unknown field"},
		{"duplicate model key", `"device_models": [`,
			`"device_models": [{"key": "furnace", "name": "Again", "kind": "furnace", "metrics": [{"key": "t", "name": "T", "unit": ""}]},`,
			"duplicate"},
		{"metric min above max", `"min": 0, "max": 1300`, `"min": 1300, "max": 0`, "min above max"},
		{"grade spec for unknown characteristic", `"specs": {"br"`, `"specs": {"hcj"`, "unknown characteristic"},
		{"demo device with unknown model", `"model": "furnace"`, `"model": "kiln"`, "unknown model"},
	} {
		t.Run(c.name, func(t *testing.T) {
			if !strings.Contains(minimalTemplate, c.old) {
				t.Fatalf("test case edits nothing: %q not in the minimal template", c.old)
			}
			_, err := ParseTemplate([]byte(strings.Replace(minimalTemplate, c.old, c.new, 1)))
			if err == nil {
				t.Fatal("accepted, want an error")
			}
			if !strings.Contains(err.Error(), c.want) {
				t.Errorf("error %q does not mention %q", err, c.want)
			}
		})
	}
}
