package quality

import (
	"encoding/json"
	"math"
	"math/rand/v2"
	"os"
	"slices"
	"testing"
)

func near(t *testing.T, what string, got, want, tol float64) {
	t.Helper()
	if math.Abs(got-want) > tol || math.IsNaN(got) {
		t.Errorf("%s = %.8g, want %.8g (±%g)", what, got, want, tol)
	}
}

func readJSON(t *testing.T, path string, v any) {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(b, v); err != nil {
		t.Fatal(err)
	}
}

// TestXbarRMontgomeryHardBake reproduces Montgomery, Introduction to
// Statistical Quality Control, Example 6.1 (Table 6.1, hard-bake flow width,
// 25 samples of 5) and the capability ratio of Section 6.2.5 (USL 2.00,
// LSL 1.00): testdata/montgomery_hardbake_xbar_r.json. The book rounds to
// four or five digits and uses the table's three-decimal A2, D4 and d2.
func TestXbarRMontgomeryHardBake(t *testing.T) {
	var ex struct {
		N         int
		Subgroups [][]float64
		Published map[string]float64
	}
	readJSON(t, "testdata/montgomery_hardbake_xbar_r.json", &ex)
	var vs []float64
	for _, g := range ex.Subgroups {
		vs = append(vs, g...)
	}
	c, err := ComputeChart(ChartXbarR, vs, ex.N)
	if err != nil {
		t.Fatal(err)
	}
	p := ex.Published
	near(t, "x̿", c.XLimits.Center, p["xbarbar"], 5e-5)
	near(t, "R̄", c.RLimits.Center, p["rbar"], 5e-6)
	near(t, "UCL x̄", c.XLimits.UCL, p["x_ucl"], 2e-4)
	near(t, "LCL x̄", c.XLimits.LCL, p["x_lcl"], 2e-4)
	near(t, "UCL R", c.RLimits.UCL, p["r_ucl"], 5e-4)
	near(t, "LCL R", c.RLimits.LCL, p["r_lcl"], 0)
	near(t, "σ within", c.SigmaWithin, p["sigma_within"], 5e-5)
	lsl, usl := p["lsl"], p["usl"]
	cap := c.Capability(&lsl, &usl)
	near(t, "Cp", *cap.Cp, p["cp"], 5e-4)
	// The book's chart shows no point beyond the limits.
	for i, f := range Flags(c.X, c.XLimits, WE1) {
		if f != 0 {
			t.Errorf("sample %d flagged %v", i+1, f.Names())
		}
	}
}

// TestXbarSMontgomeryPistonRings reproduces Montgomery, Introduction to
// Statistical Quality Control, Example 6.3: X̄ and S charts of the piston
// ring diameters of Table 6.3 (25 samples of 5):
// testdata/montgomery_piston_rings_xbar_s.json, published to 3-4 decimals.
func TestXbarSMontgomeryPistonRings(t *testing.T) {
	var ex struct {
		N         int
		Subgroups [][]float64
		Published map[string]float64
	}
	readJSON(t, "testdata/montgomery_piston_rings_xbar_s.json", &ex)
	var vs []float64
	for _, g := range ex.Subgroups {
		vs = append(vs, g...)
	}
	c, err := ComputeChart(ChartXbarS, vs, ex.N)
	if err != nil {
		t.Fatal(err)
	}
	p := ex.Published
	near(t, "x̿", c.XLimits.Center, p["xbarbar"], 5e-4)
	near(t, "S̄", c.RLimits.Center, p["sbar"], 5e-5)
	// The book computes the limits from the rounded X̿ = 74.001 and
	// S̄ = 0.0094 (74.001 + 1.427·0.0094 = 74.0144); unrounded they are
	// 74.00118 + 1.4273·0.0093997 = 74.0146.
	near(t, "UCL x̄", c.XLimits.UCL, p["x_ucl"], 1e-3)
	near(t, "LCL x̄", c.XLimits.LCL, p["x_lcl"], 1e-3)
	near(t, "UCL S", c.RLimits.UCL, p["s_ucl"], 5e-5)
	near(t, "LCL S", c.RLimits.LCL, p["s_lcl"], 0)
	r, err := ComputeChart(ChartXbarR, vs, ex.N)
	if err != nil {
		t.Fatal(err)
	}
	near(t, "ΣR", r.RLimits.Center*25, p["sum_r"], 5e-9)
}

// TestIMRNISTExample reproduces the individuals chart example of the
// NIST/SEMATECH e-Handbook of Statistical Methods, section 6.3.2.2:
// testdata/nist_6322_individuals.json (published to two decimals).
func TestIMRNISTExample(t *testing.T) {
	var ex struct {
		Values    []float64
		Published map[string]float64
	}
	readJSON(t, "testdata/nist_6322_individuals.json", &ex)
	c, err := ComputeChart(ChartIMR, ex.Values, 1)
	if err != nil {
		t.Fatal(err)
	}
	p := ex.Published
	near(t, "x̄", c.XLimits.Center, p["xbar"], 5e-3)
	near(t, "MR̄", c.RLimits.Center, p["mrbar"], 5e-5)
	near(t, "UCL", c.XLimits.UCL, p["x_ucl"], 5e-3)
	near(t, "LCL", c.XLimits.LCL, p["x_lcl"], 5e-3)
	near(t, "UCL MR", c.RLimits.UCL, p["mr_ucl"], 5e-3)
	if !math.IsNaN(c.R[0]) || math.Abs(c.R[1]-2.0) > 1e-9 {
		t.Errorf("moving ranges = %v", c.R[:2])
	}
}

// independent computes a chart the straightforward way, as a reference:
// two-pass means and standard deviations, sorted ranges, constants from the
// published formulas applied afresh.
func independent(chart string, vs []float64, n int) (x, r []float64, xl, rl ControlLimits, sw, so, mean float64) {
	sum := 0.0
	for _, v := range vs {
		sum += v
	}
	mean = sum / float64(len(vs))
	ss := 0.0
	for _, v := range vs {
		ss += (v - mean) * (v - mean)
	}
	so = math.Sqrt(ss / float64(len(vs)-1))
	avg := func(a []float64) float64 {
		s := 0.0
		for _, v := range a {
			s += v
		}
		return s / float64(len(a))
	}
	if chart == ChartIMR {
		x = vs
		for i := 1; i < len(vs); i++ {
			r = append(r, math.Abs(vs[i]-vs[i-1]))
		}
		mr := avg(r)
		sw = mr / 1.128
		xl = ControlLimits{avg(vs), avg(vs) - 2.659574468085106*mr, avg(vs) + 2.659574468085106*mr} // 3/1.128
		rl = ControlLimits{mr, 0, 3.267 * mr}
		r = append([]float64{math.NaN()}, r...)
		return
	}
	k, _ := ChartConstants(n)
	for i := 0; i+n <= len(vs); i += n {
		g := slices.Clone(vs[i : i+n])
		m := avg(g)
		x = append(x, m)
		if chart == ChartXbarR {
			slices.Sort(g)
			r = append(r, g[n-1]-g[0])
		} else {
			s := 0.0
			for _, v := range g {
				s += (v - m) * (v - m)
			}
			r = append(r, math.Sqrt(s/float64(n-1)))
		}
	}
	xbb, rb := avg(x), avg(r)
	if chart == ChartXbarR {
		a2 := 3 / (k.D2 * math.Sqrt(float64(n)))
		xl = ControlLimits{xbb, xbb - a2*rb, xbb + a2*rb}
		rl = ControlLimits{rb, math.Max(0, rb*(1-3*k.D3/k.D2)), rb * (1 + 3*k.D3/k.D2)}
		sw = rb / k.D2
	} else {
		a3 := 3 / (k.C4 * math.Sqrt(float64(n)))
		b := 3 * math.Sqrt(1-k.C4*k.C4) / k.C4
		xl = ControlLimits{xbb, xbb - a3*rb, xbb + a3*rb}
		rl = ControlLimits{rb, math.Max(0, rb*(1-b)), rb * (1 + b)}
		sw = rb / k.C4
	}
	return
}

// naiveFlags applies the run rules by looking at each point's window
// directly (O(points × window)), as a reference for Flags.
func naiveFlags(x []float64, l ControlLimits) []Rule {
	cl, s := l.Center, (l.UCL-l.Center)/3
	out := make([]Rule, len(x))
	all := func(i, k int, p func(j int) bool) bool {
		if i+1 < k {
			return false
		}
		for j := i - k + 1; j <= i; j++ {
			if !p(j) {
				return false
			}
		}
		return true
	}
	count := func(i, m int, p func(j int) bool) int {
		c := 0
		for j := max(0, i-m+1); j <= i; j++ {
			if p(j) {
				c++
			}
		}
		return c
	}
	for i, v := range x {
		var f Rule
		if v > l.UCL || v < l.LCL {
			f |= WE1 | Nelson1
		}
		if (v > cl+2*s && count(i, 3, func(j int) bool { return x[j] > cl+2*s }) >= 2) ||
			(v < cl-2*s && count(i, 3, func(j int) bool { return x[j] < cl-2*s }) >= 2) {
			f |= WE2 | Nelson5
		}
		if (v > cl+s && count(i, 5, func(j int) bool { return x[j] > cl+s }) >= 4) ||
			(v < cl-s && count(i, 5, func(j int) bool { return x[j] < cl-s }) >= 4) {
			f |= WE3 | Nelson6
		}
		up := func(j int) bool { return x[j] > cl }
		dn := func(j int) bool { return x[j] < cl }
		if all(i, 8, up) || all(i, 8, dn) {
			f |= WE4
		}
		if all(i, 9, up) || all(i, 9, dn) {
			f |= Nelson2
		}
		if i >= 5 && (all(i, 5, func(j int) bool { return x[j] > x[j-1] }) || all(i, 5, func(j int) bool { return x[j] < x[j-1] })) {
			f |= Nelson3
		}
		if i >= 13 { // 14 points: 13 differences, none zero, each of the other sign than the one before
			ok := true
			for j := i - 12; j <= i; j++ {
				d := x[j] - x[j-1]
				if d == 0 || (j > i-12 && (d > 0) == (x[j-1]-x[j-2] > 0)) {
					ok = false
				}
			}
			if ok {
				f |= Nelson4
			}
		}
		if all(i, 15, func(j int) bool { return math.Abs(x[j]-cl) < s }) {
			f |= Nelson7
		}
		if all(i, 8, func(j int) bool { return x[j] > cl+s || x[j] < cl-s }) {
			f |= Nelson8
		}
		out[i] = f
	}
	return out
}

// heldOut returns random data sets the implementation was not tuned on:
// normal noise with level shifts, trends and alternation so every rule
// fires somewhere.
func heldOut(seed uint64, count int) []float64 {
	rng := rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))
	out := make([]float64, count)
	base := 1.3 + rng.Float64()
	level := base
	for i := range out {
		switch (i / 40) % 5 {
		case 1:
			if i%40 < 20 { // a trend up and back
				level += 0.004
			} else {
				level -= 0.004
			}
		case 2: // calm, at the starting level
			out[i] = base + rng.NormFloat64()*0.002
			continue
		case 3:
			if i%2 == 0 { // alternation
				out[i] = level + 0.03 + rng.NormFloat64()*0.002
				continue
			}
			out[i] = level - 0.03 + rng.NormFloat64()*0.002
			continue
		case 4:
			if i%40 == 0 {
				level += (rng.Float64() - 0.5) * 0.1 // shift
			}
		}
		out[i] = level + rng.NormFloat64()*0.02
	}
	return out
}

// TestChartsMatchIndependentComputation checks limits, σ, capability and run
// rule flags on held-out random data sets against the straightforward
// reference computation above, to 1e-6.
func TestChartsMatchIndependentComputation(t *testing.T) {
	const tol = 1e-6
	fired := Rule(0)
	for seed := uint64(101); seed < 109; seed++ {
		for _, tc := range []struct {
			chart string
			n     int
		}{{ChartIMR, 1}, {ChartXbarR, 2}, {ChartXbarR, 5}, {ChartXbarR, 11}, {ChartXbarS, 4}, {ChartXbarS, 9}, {ChartXbarS, 25}} {
			count := 1000 - 1000%tc.n
			vs := heldOut(seed, count)
			c, err := ComputeChart(tc.chart, vs, tc.n)
			if err != nil {
				t.Fatal(err)
			}
			x, r, xl, rl, sw, so, mean := independent(tc.chart, vs, tc.n)
			name := func(s string) string { return tc.chart + "/" + string(rune('0'+tc.n%10)) + " " + s }
			for _, p := range []struct {
				what      string
				got, want float64
			}{
				{"x center", c.XLimits.Center, xl.Center}, {"x lcl", c.XLimits.LCL, xl.LCL}, {"x ucl", c.XLimits.UCL, xl.UCL},
				{"r center", c.RLimits.Center, rl.Center}, {"r lcl", c.RLimits.LCL, rl.LCL}, {"r ucl", c.RLimits.UCL, rl.UCL},
				{"σ within", c.SigmaWithin, sw}, {"σ overall", c.SigmaOverall, so}, {"mean", c.Mean, mean},
			} {
				near(t, name(p.what), p.got, p.want, tol)
			}
			if len(c.X) != len(x) || len(c.R) != len(r) {
				t.Fatalf("%s: %d/%d points, want %d/%d", name(""), len(c.X), len(c.R), len(x), len(r))
			}
			for i := range x {
				near(t, name("x point"), c.X[i], x[i], tol)
				if i > 0 || tc.chart != ChartIMR {
					near(t, name("r point"), c.R[i], r[i], tol)
				}
			}
			lsl, usl := mean-0.1, mean+0.12
			cap := c.Capability(&lsl, &usl)
			near(t, name("Cp"), *cap.Cp, (usl-lsl)/(6*sw), tol)
			near(t, name("Cpk"), *cap.Cpk, math.Min(usl-mean, mean-lsl)/(3*sw), tol)
			near(t, name("Pp"), *cap.Pp, (usl-lsl)/(6*so), tol)
			near(t, name("Ppk"), *cap.Ppk, math.Min(usl-mean, mean-lsl)/(3*so), tol)
			onlyUSL := c.Capability(nil, &usl)
			if onlyUSL.Cp != nil || onlyUSL.Pp != nil {
				t.Errorf("%s: Cp without LSL", name(""))
			}
			near(t, name("Cpk (USL only)"), *onlyUSL.Cpk, (usl-mean)/(3*sw), tol)

			got, want := Flags(c.X, c.XLimits, RulesWE|RulesNelson), naiveFlags(x, xl)
			for i := range want {
				fired |= want[i]
				if got[i] != want[i] {
					t.Errorf("%s seed %d point %d: flags %v, reference %v", name(""), seed, i, got[i].Names(), want[i].Names())
				}
			}
		}
	}
	if fired != RulesWE|RulesNelson {
		t.Errorf("the held-out data fire only %v; every rule should be exercised", fired.Names())
	}
}

// TestRunRulesHandmade checks each rule on a short series built to trip it
// at a known point (center 0, σ 1, limits ±3).
func TestRunRulesHandmade(t *testing.T) {
	l := ControlLimits{Center: 0, LCL: -3, UCL: 3}
	rep := func(v float64, k int) []float64 { return slices.Repeat([]float64{v}, k) }
	for _, c := range []struct {
		name string
		x    []float64
		at   int
		rule Rule
	}{
		{"beyond 3σ", []float64{0.1, 3.2}, 1, WE1 | Nelson1},
		{"2 of 3 beyond 2σ", []float64{2.5, 0.1, 2.2}, 2, WE2 | Nelson5},
		{"4 of 5 beyond 1σ", []float64{1.5, 1.2, 0.2, 1.1, 1.3}, 4, WE3 | Nelson6},
		{"8 on one side", rep(0.5, 8), 7, WE4},
		{"9 on one side", rep(-0.5, 9), 8, WE4 | Nelson2},
		{"6 increasing", []float64{-0.5, -0.4, -0.3, -0.2, -0.1, 0.05}, 5, Nelson3},
		{"14 alternating", []float64{0.1, -0.1, 0.1, -0.1, 0.1, -0.1, 0.1, -0.1, 0.1, -0.1, 0.1, -0.1, 0.1, -0.1}, 13, Nelson4},
		{"15 within 1σ", []float64{0.1, 0.2, 0.3, 0.2, 0.1, 0.2, 0.3, 0.2, 0.1, 0.25, 0.3, 0.2, 0.1, 0.2, -0.3}, 14, Nelson7},
		{"8 beyond 1σ either side", []float64{1.5, -1.5, 1.5, -1.5, 1.5, -1.5, 1.5, -1.5}, 7, Nelson8},
	} {
		f := Flags(c.x, l, RulesWE|RulesNelson)
		if f[c.at]&c.rule != c.rule {
			t.Errorf("%s: point %d flags %v, want %v", c.name, c.at, f[c.at].Names(), c.rule.Names())
		}
		for i := 0; i < c.at; i++ {
			if f[i]&c.rule&^WE4 != 0 {
				t.Errorf("%s: point %d flagged %v early", c.name, i, (f[i] & c.rule).Names())
			}
		}
	}
}
