package downgrade_test

import (
	"slices"
	"strings"
	"testing"

	"github.com/nxcloud/nxcloud/apps/downgrade"
	"github.com/nxcloud/nxcloud/tenants"
)

// sectorGrades are the demo sector's grades, from its template.
func sectorGrades(t *testing.T) map[string]downgrade.Grade {
	t.Helper()
	tpls, err := tenants.Templates()
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]downgrade.Grade{}
	for _, g := range tpls["magnetic-materials"].Grades {
		specs := map[string]downgrade.Limit{}
		for k, s := range g.Specs {
			specs[k] = downgrade.Limit{Min: s.Min, Max: s.Max}
		}
		out[g.Code] = downgrade.Grade{Code: g.Code, Name: g.Name, Family: g.Family, Rank: g.Rank, Specs: specs}
	}
	return out
}

// Held-out style inspection values against the sector's grades.
func TestDecide(t *testing.T) {
	grades := sectorGrades(t)
	all := make([]downgrade.Grade, 0, len(grades))
	for _, g := range grades {
		all = append(all, g)
	}
	for _, tc := range []struct {
		name     string
		intended string
		values   map[string][]float64
		propose  string // "" = no proposal
		reason   string // in the reason
		misses   []string
	}{
		// Br 1.41 misses N52 (min 1.43); N50's band starts at 1.40: N50.
		{"N52 with Br 1.41", "N52", map[string][]float64{"br": {1.41, 1.42}, "hcj": {900}, "hcb": {850}, "bhmax": {390}, "density": {7.55}},
			"N50", "meets N50", []string{"br", "bhmax"}},
		// With (BH)max 375, below N50's 382: N48 (Br 1.41 is above N48's band: a band's max is not judged).
		{"N52 with Br 1.41 and low (BH)max", "N52", map[string][]float64{"br": {1.41}, "hcj": {980}, "hcb": {850}, "bhmax": {375}, "density": {7.55}},
			"N48", "meets N48", []string{"br", "bhmax"}},
		// Hcj 1450 misses N42SH (1592) and N38SH; N42H needs 1353: N42H.
		{"N42SH with Hcj 1450", "N42SH", map[string][]float64{"br": {1.30}, "hcj": {1450, 1460}, "hcb": {980}, "bhmax": {330}, "density": {7.52}},
			"N42H", "meets N42H", []string{"hcj"}},
		// Hcj 1200: below N42H, meets N42M (1114).
		{"N42SH with Hcj 1200", "N42SH", map[string][]float64{"br": {1.30}, "hcj": {1200}, "hcb": {980}, "bhmax": {330}}, "N42M", "meets N42M", []string{"hcj"}},
		// Meets its grade: no proposal, Br above N52's band max is no miss.
		{"N52 meeting its grade", "N52", map[string][]float64{"br": {1.44, 1.49}, "hcj": {950}, "hcb": {840}, "bhmax": {425}, "density": {7.58}},
			"", "meets its intended grade N52", nil},
		// Hcj 900 is enough for N50 (876) but not for N48 (955): with
		// (BH)max 375 (below N50's 382) nothing lower fits.
		{"N52 with Br 1.41, low (BH)max and Hcj 900", "N52", map[string][]float64{"br": {1.41}, "hcj": {900}, "bhmax": {375}},
			"", "meets no lower grade", []string{"br", "bhmax"}},
		// Density 7.2 misses every NdFeB grade (min 7.4): no lower grade.
		{"N52 with low density", "N52", map[string][]float64{"br": {1.44}, "hcj": {900}, "bhmax": {400}, "density": {7.2}},
			"", "meets no lower grade of family NdFeB", []string{"density"}},
		// Br 1.10 is below the lowest NdFeB band (N35 from 1.17).
		{"N35 with Br 1.10", "N35", map[string][]float64{"br": {1.10}, "hcj": {1000}}, "", "meets no lower grade", []string{"br"}},
		// One value of several misses: every measured value must meet.
		{"N42H with one low Hcj", "N42H", map[string][]float64{"br": {1.30}, "hcj": {1400, 1300, 1420}, "bhmax": {330}}, "N42M", "meets N42M", []string{"hcj"}},
		// Ferrite stays in its family: Y40 with Br 0.41 → Y35.
		{"Y40 with Br 0.41", "Y40", map[string][]float64{"br": {0.41}, "hcj": {270}, "bhmax": {31}}, "Y35", "meets Y35", []string{"br", "bhmax"}},
		{"nothing measured", "N52", map[string][]float64{}, "", "nothing to judge", nil},
		{"only an unrelated characteristic", "N52", map[string][]float64{"salt_spray_h": {48}}, "", "nothing to judge", nil},
	} {
		d := downgrade.Decide(grades[tc.intended], all, tc.values)
		if d.Propose != (tc.propose != "") || d.Assigned != tc.propose {
			t.Errorf("%s: propose %v %q, want %q (%s)", tc.name, d.Propose, d.Assigned, tc.propose, d.Reason)
		}
		if !strings.Contains(d.Reason, tc.reason) {
			t.Errorf("%s: reason %q lacks %q", tc.name, d.Reason, tc.reason)
		}
		var misses []string
		for _, m := range d.Misses {
			misses = append(misses, m.Characteristic)
		}
		if !slices.Equal(misses, tc.misses) {
			t.Errorf("%s: misses %v, want %v", tc.name, misses, tc.misses)
		}
		if d.Propose && d.Tried[len(d.Tried)-1] != tc.propose {
			t.Errorf("%s: tried %v", tc.name, d.Tried)
		}
	}
}
