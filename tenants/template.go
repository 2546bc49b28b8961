package tenants

import (
	"embed"
	"encoding/json"
	"fmt"
	"io/fs"
	"math"
	"regexp"
	"sort"
	"strings"
)

// Template is a sector template: the standard data every enterprise of one
// sector starts from ("copy the proven sample"). One JSON file per sector under
// tenants/sectors/.
type Template struct {
	ID          string `json:"id"`
	Name        string `json:"name"`
	Version     int    `json:"version"`
	Description string `json:"description"`
	// DeviceModels are the kinds of equipment of the sector with their metrics.
	DeviceModels []ModelTemplate `json:"device_models"`
	// DefectCodes are the sector's defect / reason codes.
	DefectCodes []DefectCode `json:"defect_codes"`
	// Characteristics are the inspection characteristics grades are specified by.
	Characteristics []Characteristic `json:"characteristics"`
	// Grades with their spec limits per characteristic key; a higher Rank is a
	// better grade within a Family.
	Grades []Grade `json:"grades"`
	// RecipeParameterSets are the sector's standard process parameters per
	// kind of equipment and step: starting values a recipe copies and adjusts
	// (apps/recipe serves them to the enterprises of the sector).
	RecipeParameterSets []RecipeParameterSet `json:"recipe_parameter_sets,omitempty"`
	// KPIs the sector measures (for benchmarks).
	KPIs []KPI `json:"kpis"`
	// Demo describes the demo enterprise `nxcloud demo` seeds for this sector.
	Demo *DemoTemplate `json:"demo,omitempty"`
}

// ModelTemplate is a device model of a sector.
type ModelTemplate struct {
	Key     string           `json:"key"`
	Name    string           `json:"name"`
	Kind    string           `json:"kind"`
	Metrics []MetricTemplate `json:"metrics"`
}

// MetricTemplate is one metric of a device model, with its valid range (values
// outside it are rejected on ingest) and hints for the simulator.
type MetricTemplate struct {
	Key  string   `json:"key"`
	Name string   `json:"name"`
	Unit string   `json:"unit"`
	Min  *float64 `json:"min,omitempty"`
	Max  *float64 `json:"max,omitempty"`
	Sim  *SimHint `json:"sim,omitempty"`
}

// SimHint tells the simulator how a metric behaves: a base value, a slow
// sinusoidal swing of Amplitude over PeriodS seconds, Gaussian noise and, when
// Counter is set, a monotonically increasing counter growing by Base per second.
type SimHint struct {
	Base      float64 `json:"base"`
	Amplitude float64 `json:"amplitude,omitempty"`
	PeriodS   float64 `json:"period_s,omitempty"`
	Noise     float64 `json:"noise,omitempty"`
	Counter   bool    `json:"counter,omitempty"`
}

// DefectCode is a defect or reason code.
type DefectCode struct {
	Code           string `json:"code"`
	Name           string `json:"name"`
	Characteristic string `json:"characteristic,omitempty"`
}

// Characteristic is an inspection characteristic.
type Characteristic struct {
	Key  string `json:"key"`
	Name string `json:"name"`
	Unit string `json:"unit"`
}

// Spec is a spec range of one characteristic; either bound may be open.
type Spec struct {
	Min *float64 `json:"min,omitempty"`
	Max *float64 `json:"max,omitempty"`
}

// Grade is a product grade with its spec limits per characteristic.
type Grade struct {
	Code   string          `json:"code"`
	Name   string          `json:"name"`
	Family string          `json:"family"`
	Rank   int             `json:"rank"`
	Specs  map[string]Spec `json:"specs"`
}

// RecipeParameterSet is a set of process parameters for one device model.
type RecipeParameterSet struct {
	Key        string                    `json:"key"`
	Name       string                    `json:"name"`
	Model      string                    `json:"model"`
	Parameters []RecipeParameterTemplate `json:"parameters"`
}

// RecipeParameterTemplate is one parameter of a set: a metric of the set's
// model with a setpoint within [lower, upper].
type RecipeParameterTemplate struct {
	Metric   string  `json:"metric"`
	Setpoint float64 `json:"setpoint"`
	Lower    float64 `json:"lower"`
	Upper    float64 `json:"upper"`
	Step     string  `json:"step,omitempty"`
}

// KPI is a key performance indicator the sector measures.
type KPI struct {
	Key         string `json:"key"`
	Name        string `json:"name"`
	Unit        string `json:"unit"`
	Better      string `json:"better"` // "higher" or "lower"
	Description string `json:"description"`
}

// DemoTemplate is the demo enterprise of a sector.
type DemoTemplate struct {
	Slug  string     `json:"slug"`
	Name  string     `json:"name"`
	Lines []DemoLine `json:"lines"`
}

// DemoLine is a production line of the demo enterprise.
type DemoLine struct {
	Key     string       `json:"key"`
	Name    string       `json:"name"`
	Devices []DemoDevice `json:"devices"`
}

// DemoDevice is a device of the demo enterprise.
type DemoDevice struct {
	Key   string `json:"key"`
	Name  string `json:"name"`
	Model string `json:"model"`
	// Manual devices are not simulated: their data is what a person sends.
	Manual bool `json:"manual,omitempty"`
}

//go:embed sectors/*.json
var sectorFiles embed.FS

var keyRE = regexp.MustCompile(`^[a-z0-9][a-z0-9_.-]{0,63}$`)

// Templates returns the sector templates embedded in the binary, by id.
func Templates() (map[string]*Template, error) {
	entries, err := fs.ReadDir(sectorFiles, "sectors")
	if err != nil {
		return nil, err
	}
	out := map[string]*Template{}
	for _, e := range entries {
		b, err := sectorFiles.ReadFile("sectors/" + e.Name())
		if err != nil {
			return nil, err
		}
		t, err := ParseTemplate(b)
		if err != nil {
			return nil, fmt.Errorf("sector template %s: %w", e.Name(), err)
		}
		if t.ID+".json" != e.Name() {
			return nil, fmt.Errorf("sector template %s: id %q must match the file name", e.Name(), t.ID)
		}
		out[t.ID] = t
	}
	return out, nil
}

// ParseTemplate decodes and validates a sector template.
func ParseTemplate(b []byte) (*Template, error) {
	dec := json.NewDecoder(strings.NewReader(string(b)))
	dec.DisallowUnknownFields()
	var t Template
	if err := dec.Decode(&t); err != nil {
		return nil, err
	}
	if dec.More() {
		return nil, fmt.Errorf("unexpected data after the template object")
	}
	return &t, t.Validate()
}

// Validate checks a template for the mistakes that would break onboarding.
func (t *Template) Validate() error {
	var errs []string
	bad := func(f string, a ...any) { errs = append(errs, fmt.Sprintf(f, a...)) }
	if !keyRE.MatchString(t.ID) {
		bad("id %q: want lower-case letters, digits, '-', '_' or '.'", t.ID)
	}
	if t.Name == "" || t.Version <= 0 {
		bad("name and a positive version are required")
	}
	models := map[string]bool{}
	for _, m := range t.DeviceModels {
		if !keyRE.MatchString(m.Key) || models[m.Key] {
			bad("device model %q: missing, malformed or duplicate key", m.Key)
		}
		models[m.Key] = true
		if len(m.Metrics) == 0 {
			bad("device model %q has no metrics", m.Key)
		}
		seen := map[string]bool{}
		for _, x := range m.Metrics {
			if !keyRE.MatchString(x.Key) || seen[x.Key] {
				bad("device model %q metric %q: missing, malformed or duplicate key", m.Key, x.Key)
			}
			seen[x.Key] = true
			if x.Min != nil && x.Max != nil && *x.Min > *x.Max {
				bad("device model %q metric %q: min above max", m.Key, x.Key)
			}
			for _, v := range []*float64{x.Min, x.Max} {
				if v != nil && (math.IsNaN(*v) || math.IsInf(*v, 0)) {
					bad("device model %q metric %q: limits must be finite", m.Key, x.Key)
				}
			}
		}
	}
	t.validateParameterSets(bad)
	chars := map[string]bool{}
	for _, c := range t.Characteristics {
		if !keyRE.MatchString(c.Key) || chars[c.Key] {
			bad("characteristic %q: missing, malformed or duplicate key", c.Key)
		}
		chars[c.Key] = true
	}
	codes := map[string]bool{}
	for _, d := range t.DefectCodes {
		if d.Code == "" || codes[d.Code] {
			bad("defect code %q: missing or duplicate", d.Code)
		}
		codes[d.Code] = true
		if d.Characteristic != "" && !chars[d.Characteristic] {
			bad("defect code %q: unknown characteristic %q", d.Code, d.Characteristic)
		}
	}
	grades := map[string]bool{}
	for _, g := range t.Grades {
		if g.Code == "" || grades[g.Code] {
			bad("grade %q: missing or duplicate", g.Code)
		}
		grades[g.Code] = true
		keys := make([]string, 0, len(g.Specs))
		for k := range g.Specs {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		for _, k := range keys {
			s := g.Specs[k]
			if !chars[k] {
				bad("grade %q: spec for unknown characteristic %q", g.Code, k)
			}
			if s.Min != nil && s.Max != nil && *s.Min > *s.Max {
				bad("grade %q characteristic %q: min above max", g.Code, k)
			}
		}
	}
	if d := t.Demo; d != nil {
		if !slugRE.MatchString(d.Slug) {
			bad("demo slug %q: want a tenant slug", d.Slug)
		}
		devs := map[string]bool{}
		for _, l := range d.Lines {
			if !keyPattern.MatchString(l.Key) {
				bad("demo line %q: malformed key", l.Key)
			}
			for _, dv := range l.Devices {
				if !keyPattern.MatchString(dv.Key) {
					bad("demo device %q: malformed key (it becomes an MQTT username and topic level)", dv.Key)
				}
				if !models[dv.Model] {
					bad("demo device %q: unknown model %q", dv.Key, dv.Model)
				}
				if devs[dv.Key] {
					bad("demo device %q: duplicate key", dv.Key)
				}
				devs[dv.Key] = true
			}
		}
	}
	if len(errs) > 0 {
		return fmt.Errorf("invalid template: %s", strings.Join(errs, "; "))
	}
	return nil
}

// validateParameterSets checks that each recipe parameter set names a model
// and metrics of the template, with setpoint within [lower, upper] and the
// metric's valid range.
func (t *Template) validateParameterSets(bad func(string, ...any)) {
	metrics := map[string]MetricTemplate{}
	for _, m := range t.DeviceModels {
		for _, x := range m.Metrics {
			metrics[m.Key+"/"+x.Key] = x
		}
	}
	keys := map[string]bool{}
	for _, set := range t.RecipeParameterSets {
		if !keyRE.MatchString(set.Key) || keys[set.Key] {
			bad("recipe parameter set %q: missing, malformed or duplicate key", set.Key)
		}
		keys[set.Key] = true
		if len(set.Parameters) == 0 {
			bad("recipe parameter set %q has no parameters", set.Key)
		}
		seen := map[string]bool{}
		for _, p := range set.Parameters {
			m, ok := metrics[set.Model+"/"+p.Metric]
			switch {
			case !ok:
				bad("recipe parameter set %q: model %q has no metric %q", set.Key, set.Model, p.Metric)
			case seen[p.Metric]:
				bad("recipe parameter set %q: metric %q twice", set.Key, p.Metric)
			case !(p.Lower <= p.Setpoint && p.Setpoint <= p.Upper):
				bad("recipe parameter set %q metric %q: want lower <= setpoint <= upper", set.Key, p.Metric)
			case (m.Min != nil && p.Setpoint < *m.Min) || (m.Max != nil && p.Setpoint > *m.Max):
				bad("recipe parameter set %q metric %q: setpoint outside the metric's valid range", set.Key, p.Metric)
			}
			seen[p.Metric] = true
		}
	}
}
