package quality

import (
	"math"
	"sync"
)

// maxN is the largest subgroup size the control chart constants cover.
const maxN = 25

// Constants are the control chart constants of subgroup size N, derived from
// the distribution of the range and the standard deviation of N independent
// normal values (the definitions of Montgomery, Introduction to Statistical
// Quality Control, 7th ed., Appendix VI, and of the ASTM Manual on
// Presentation of Data and Control Chart Analysis, whose printed tables round
// them to three or four decimals):
//
//	d2 = E[R]/σ, d3 = sd(R)/σ, c4 = E[S]/σ = sqrt(2/(N-1))·Γ(N/2)/Γ((N-1)/2)
//	A2 = 3/(d2·√N), D3 = max(0, 1-3·d3/d2), D4 = 1+3·d3/d2
//	A3 = 3/(c4·√N), B3 = max(0, 1-3·√(1-c4²)/c4), B4 = 1+3·√(1-c4²)/c4
//
// c4 is exact; d2 and d3 are integrals of the normal distribution evaluated
// numerically (Simpson's rule, error below 5e-8): E[R^k] = ∫₀^∞ k·r^(k-1)·
// (1-F_R(r)) dr with F_R(r) = N·∫ φ(x)·(Φ(x+r)-Φ(x))^(N-1) dx. The test checks
// them against the printed table and against closed forms for N = 2.
type Constants struct {
	N                       int
	D2, D3, C4              float64
	A2, LD3, D4, A3, B3, B4 float64
}

var (
	constOnce  sync.Once
	constTable [maxN + 1]Constants
)

// ChartConstants returns the constants of subgroup size n, 2 ≤ n ≤ 25; ok is
// false outside that range.
func ChartConstants(n int) (Constants, bool) {
	if n < 2 || n > maxN {
		return Constants{}, false
	}
	constOnce.Do(func() {
		for k := 2; k <= maxN; k++ {
			constTable[k] = computeConstants(k)
		}
	})
	return constTable[n], true
}

// I-MR constants: the moving range of two consecutive values.
const (
	imrD2 = 1.128 // d2 for n = 2 (2/√π = 1.12838 to five decimals; charts use the table's 1.128)
	imrD4 = 3.267 // D4 for n = 2
)

func computeConstants(n int) Constants {
	fn := float64(n)
	c4 := math.Sqrt(2/(fn-1)) * math.Exp(lgamma(fn/2)-lgamma((fn-1)/2))
	m1, m2 := rangeMoments(n)
	d2 := m1
	d3 := math.Sqrt(m2 - m1*m1)
	k := Constants{N: n, D2: d2, D3: d3, C4: c4}
	k.A2 = 3 / (d2 * math.Sqrt(fn))
	k.LD3 = math.Max(0, 1-3*d3/d2)
	k.D4 = 1 + 3*d3/d2
	k.A3 = 3 / (c4 * math.Sqrt(fn))
	s := math.Sqrt(1-c4*c4) / c4
	k.B3 = math.Max(0, 1-3*s)
	k.B4 = 1 + 3*s
	return k
}

func lgamma(x float64) float64 {
	v, _ := math.Lgamma(x)
	return v
}

func phi(x float64) float64    { return math.Exp(-x*x/2) / math.Sqrt(2*math.Pi) }
func bigPhi(x float64) float64 { return 0.5 * math.Erfc(-x/math.Sqrt2) }

// rangeMoments returns E[R] and E[R²] of the range of n standard normal
// values. x and r share one grid step, so Φ(x+r) is read off the grid.
func rangeMoments(n int) (m1, m2 float64) {
	const (
		h    = 0.05
		xMax = 8.0
		rMax = 12.0
	)
	nx := int(math.Round(2*xMax/h)) + 1 // odd, as Simpson's rule wants
	nr := int(math.Round(rMax/h)) + 1
	ph := make([]float64, nx)
	cd := make([]float64, nx+nr)
	for i := range cd {
		x := -xMax + float64(i)*h
		cd[i] = bigPhi(x)
		if i < nx {
			ph[i] = phi(x)
		}
	}
	w := func(i, last int) float64 {
		switch {
		case i == 0 || i == last:
			return 1
		case i%2 == 1:
			return 4
		}
		return 2
	}
	fn := float64(n)
	for j := 0; j < nr; j++ {
		r := float64(j) * h
		var cdf float64
		for i := 0; i < nx; i++ {
			d := cd[i+j] - cd[i]
			p := 1.0
			for k := 1; k < n; k++ {
				p *= d
			}
			cdf += w(i, nx-1) * ph[i] * p
		}
		surv := 1 - fn*cdf*h/3
		if j == 0 {
			surv = 1
		}
		m1 += w(j, nr-1) * surv
		m2 += w(j, nr-1) * 2 * r * surv
	}
	return m1 * h / 3, m2 * h / 3
}
