package downgrade

import (
	"fmt"
	"sort"
	"strings"
)

// Limit is one bound of a grade's spec; nil is open.
type Limit struct {
	Min *float64 `json:"min,omitempty"`
	Max *float64 `json:"max,omitempty"`
}

// Grade is a grade of the tenant's sector with its spec limits.
type Grade struct {
	Code   string           `json:"code"`
	Name   string           `json:"name"`
	Family string           `json:"family"`
	Rank   int              `json:"rank"`
	Specs  map[string]Limit `json:"specs"`
}

// bandCharacteristics are classification bands: a lot above the maximum
// belongs to a higher grade rather than failing, so grade decisions judge
// only their minima (contracts: grade judgement).
var bandCharacteristics = map[string]bool{"br": true, "bhmax": true}

// Miss is a measured value that misses a grade's limit.
type Miss struct {
	Characteristic string  `json:"characteristic"`
	Value          float64 `json:"value"`
	// Limit is "min" or "max"; Bound its value.
	Limit string  `json:"limit"`
	Bound float64 `json:"bound"`
}

// judge returns the misses of the values against g (empty: the lot meets g).
// A characteristic of the spec that was not measured is not judged.
func judge(g Grade, values map[string][]float64) []Miss {
	out := []Miss{}
	keys := make([]string, 0, len(g.Specs))
	for k := range g.Specs {
		keys = append(keys, k)
	}
	sort.Slice(keys, func(i, j int) bool { return charOrder(keys[i]) < charOrder(keys[j]) })
	for _, k := range keys {
		lim := g.Specs[k]
		for _, v := range values[k] {
			if lim.Min != nil && v < *lim.Min {
				out = append(out, Miss{Characteristic: k, Value: v, Limit: "min", Bound: *lim.Min})
				break
			}
			if lim.Max != nil && !bandCharacteristics[k] && v > *lim.Max {
				out = append(out, Miss{Characteristic: k, Value: v, Limit: "max", Bound: *lim.Max})
				break
			}
		}
	}
	return out
}

// charOrder orders characteristics as a magnet's data sheet does, so the
// first miss names the main reason.
func charOrder(k string) string {
	for i, c := range []string{"br", "hcj", "hcb", "bhmax", "density"} {
		if k == c {
			return fmt.Sprint(i)
		}
	}
	return "9" + k
}

// Decision is the rule's answer for one lot.
type Decision struct {
	Intended string `json:"intended_grade"`
	// Propose is true when the lot misses its intended grade but meets a
	// lower one: Assigned is then the highest-ranked such grade.
	Propose  bool   `json:"propose"`
	Assigned string `json:"assigned_grade,omitempty"`
	// Reason says why in words; Misses are the values that miss the
	// intended grade.
	Reason string `json:"reason"`
	Misses []Miss `json:"misses"`
	// Tried are the lower grades judged, highest rank first, until one met.
	Tried []string `json:"tried"`
	// Measured lists the characteristics with values.
	Measured []string `json:"measured"`
}

// Decide applies the downgrade rule: a lot whose measured values miss its
// intended grade's spec is proposed for the highest-ranked lower grade of the
// same family whose spec every measured value meets. No proposal when the lot
// meets its intended grade, when nothing was measured, or when it meets no
// lower grade (the reason says which).
func Decide(intended Grade, grades []Grade, values map[string][]float64) Decision {
	d := Decision{Intended: intended.Code, Misses: []Miss{}, Tried: []string{}, Measured: []string{}}
	for k, vs := range values {
		if len(vs) > 0 {
			d.Measured = append(d.Measured, k)
		}
	}
	sort.Strings(d.Measured)
	judged := false
	for k := range intended.Specs {
		if len(values[k]) > 0 {
			judged = true
		}
	}
	if !judged {
		d.Reason = fmt.Sprintf("no measured value of a characteristic of %s's spec: nothing to judge", intended.Code)
		return d
	}
	d.Misses = judge(intended, values)
	if len(d.Misses) == 0 {
		d.Reason = fmt.Sprintf("the lot meets its intended grade %s", intended.Code)
		return d
	}
	lower := make([]Grade, 0, len(grades))
	for _, g := range grades {
		if g.Family == intended.Family && g.Rank < intended.Rank && g.Code != intended.Code {
			lower = append(lower, g)
		}
	}
	sort.Slice(lower, func(i, j int) bool {
		if lower[i].Rank != lower[j].Rank {
			return lower[i].Rank > lower[j].Rank
		}
		return lower[i].Code < lower[j].Code
	})
	for _, g := range lower {
		d.Tried = append(d.Tried, g.Code)
		if len(judge(g, values)) == 0 {
			d.Propose, d.Assigned = true, g.Code
			d.Reason = fmt.Sprintf("misses %s (%s) but meets %s, the highest-ranked lower grade of family %s it meets",
				intended.Code, missText(d.Misses), g.Code, intended.Family)
			return d
		}
	}
	d.Reason = fmt.Sprintf("misses %s (%s) and meets no lower grade of family %s: no downgrade to propose (rework, re-melt or scrap are decisions for a person)",
		intended.Code, missText(d.Misses), intended.Family)
	return d
}

func missText(ms []Miss) string {
	parts := make([]string, len(ms))
	for i, m := range ms {
		op := "<"
		if m.Limit == "max" {
			op = ">"
		}
		parts[i] = fmt.Sprintf("%s %g %s %s %g", m.Characteristic, m.Value, op, m.Limit, m.Bound)
	}
	return strings.Join(parts, ", ")
}
