package quality

import (
	"fmt"
	"math"
)

// Chart types.
const (
	ChartXbarR = "xbar-r"
	ChartXbarS = "xbar-s"
	ChartIMR   = "imr"
)

// ControlLimits are a chart's center line and 3-sigma control limits.
type ControlLimits struct {
	Center float64 `json:"center"`
	LCL    float64 `json:"lcl"`
	UCL    float64 `json:"ucl"`
}

// Chart is a computed control chart. X holds the subgroup means (X̄ charts)
// or the individual values (I-MR) with their limits; R the ranges (X̄-R),
// sample standard deviations (X̄-S) or moving ranges of two (I-MR: R[0] is NaN,
// the first value has no moving range).
type Chart struct {
	Type    string
	N       int // subgroup size; 1 for I-MR
	X, R    []float64
	XLimits ControlLimits
	RLimits ControlLimits
	// SigmaWithin is the within-subgroup estimate of σ: R̄/d2, S̄/c4 or
	// MR̄/d2(2); SigmaOverall the sample standard deviation of every value.
	SigmaWithin, SigmaOverall float64
	// Mean is the grand mean of every value.
	Mean   float64
	Values int
}

// Capability are the capability indices of a process against spec limits;
// an index is nil when a limit it needs is missing (Cp, Pp need both) or σ
// is zero.
type Capability struct {
	Cp, Cpk, Pp, Ppk *float64
}

// ComputeChart computes a control chart of values. For X̄-R and X̄-S, values
// are consecutive subgroups of n (2 ≤ n ≤ 25; len(values) a multiple of n);
// for I-MR they are individuals (n is ignored). Errors: the chart type, n or
// the number of values does not fit (at least two points are needed).
func ComputeChart(chart string, values []float64, n int) (Chart, error) {
	c := Chart{Type: chart, Values: len(values)}
	switch chart {
	case ChartXbarR, ChartXbarS:
		k, ok := ChartConstants(n)
		if !ok {
			return c, fmt.Errorf("subgroup size %d: want 2-%d", n, maxN)
		}
		if len(values)%n != 0 {
			return c, fmt.Errorf("%d values are not whole subgroups of %d", len(values), n)
		}
		m := len(values) / n
		if m < 2 {
			return c, fmt.Errorf("%d subgroups: at least 2 are needed", m)
		}
		c.N = n
		c.X, c.R = make([]float64, m), make([]float64, m)
		var sumX, sumR float64
		for i := 0; i < m; i++ {
			g := values[i*n : (i+1)*n]
			mean := meanOf(g)
			c.X[i] = mean
			if chart == ChartXbarR {
				lo, hi := g[0], g[0]
				for _, v := range g[1:] {
					if v < lo {
						lo = v
					}
					if v > hi {
						hi = v
					}
				}
				c.R[i] = hi - lo
			} else {
				var ss float64
				for _, v := range g {
					d := v - mean
					ss += d * d
				}
				c.R[i] = math.Sqrt(ss / float64(n-1))
			}
			sumX += mean
			sumR += c.R[i]
		}
		xbb, rbar := sumX/float64(m), sumR/float64(m)
		if chart == ChartXbarR {
			c.XLimits = ControlLimits{xbb, xbb - k.A2*rbar, xbb + k.A2*rbar}
			c.RLimits = ControlLimits{rbar, k.LD3 * rbar, k.D4 * rbar}
			c.SigmaWithin = rbar / k.D2
		} else {
			c.XLimits = ControlLimits{xbb, xbb - k.A3*rbar, xbb + k.A3*rbar}
			c.RLimits = ControlLimits{rbar, k.B3 * rbar, k.B4 * rbar}
			c.SigmaWithin = rbar / k.C4
		}
	case ChartIMR:
		if len(values) < 2 {
			return c, fmt.Errorf("%d values: at least 2 are needed", len(values))
		}
		c.N = 1
		c.X = values
		c.R = make([]float64, len(values))
		c.R[0] = math.NaN()
		var sumMR float64
		for i := 1; i < len(values); i++ {
			c.R[i] = math.Abs(values[i] - values[i-1])
			sumMR += c.R[i]
		}
		mrbar := sumMR / float64(len(values)-1)
		xbar := meanOf(values)
		c.XLimits = ControlLimits{xbar, xbar - 3*mrbar/imrD2, xbar + 3*mrbar/imrD2}
		c.RLimits = ControlLimits{mrbar, 0, imrD4 * mrbar}
		c.SigmaWithin = mrbar / imrD2
	default:
		return c, fmt.Errorf("chart %q: want %s, %s or %s", chart, ChartXbarR, ChartXbarS, ChartIMR)
	}
	c.Mean = meanOf(values)
	var ss float64
	for _, v := range values {
		d := v - c.Mean
		ss += d * d
	}
	c.SigmaOverall = math.Sqrt(ss / float64(len(values)-1))
	return c, nil
}

// meanOf is the arithmetic mean, summed in order (the values of one
// characteristic are of one magnitude, so plain float64 summation keeps a
// relative error near 1e-12 even over a million values).
func meanOf(vs []float64) float64 {
	var s float64
	for _, v := range vs {
		s += v
	}
	return s / float64(len(vs))
}

// Capability returns Cp, Cpk (within-subgroup σ) and Pp, Ppk (overall σ)
// of c against lsl/usl (nil: no such limit): Cp = (USL-LSL)/6σ,
// Cpk = min(USL-μ, μ-LSL)/3σ with μ the grand mean.
func (c Chart) Capability(lsl, usl *float64) Capability {
	idx := func(sigma float64) (cp, cpk *float64) {
		if sigma <= 0 || math.IsNaN(sigma) {
			return nil, nil
		}
		if lsl != nil && usl != nil {
			v := (*usl - *lsl) / (6 * sigma)
			cp = &v
		}
		k := math.Inf(1)
		if usl != nil {
			k = (*usl - c.Mean) / (3 * sigma)
		}
		if lsl != nil {
			k = math.Min(k, (c.Mean-*lsl)/(3*sigma))
		}
		if !math.IsInf(k, 1) {
			cpk = &k
		}
		return cp, cpk
	}
	var out Capability
	out.Cp, out.Cpk = idx(c.SigmaWithin)
	out.Pp, out.Ppk = idx(c.SigmaOverall)
	return out
}
