package quality

import (
	"encoding/csv"
	"math"
	"os"
	"strconv"
	"strings"
	"testing"
)

// TestChartConstantsMatchPublishedTable checks the computed constants against
// Montgomery, Introduction to Statistical Quality Control, Appendix VI
// (testdata/control_chart_constants.csv), to the table's rounding.
func TestChartConstantsMatchPublishedTable(t *testing.T) {
	b, err := os.ReadFile("testdata/control_chart_constants.csv")
	if err != nil {
		t.Fatal(err)
	}
	var lines []string
	for _, l := range strings.Split(string(b), "\n") {
		if l != "" && !strings.HasPrefix(l, "#") {
			lines = append(lines, l)
		}
	}
	recs, err := csv.NewReader(strings.NewReader(strings.Join(lines, "\n"))).ReadAll()
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range recs[1:] {
		n, _ := strconv.Atoi(r[0])
		k, ok := ChartConstants(n)
		if !ok {
			t.Fatalf("n=%d: no constants", n)
		}
		got := []float64{k.A2, k.A3, k.C4, k.B3, k.B4, k.D2, k.D3, k.LD3, k.D4}
		for i, name := range recs[0][1:] {
			want, err := strconv.ParseFloat(r[i+1], 64)
			if err != nil {
				t.Fatal(err)
			}
			// Printed to 3 decimals (c4 to 4); derived columns (D3, D4) were
			// computed by the table's authors from unrounded d2, d3, so a
			// rounding step of 0.001 (plus half a unit) is the tolerance.
			tol := 0.0015
			if name == "c4" {
				tol = 0.00006
			}
			if math.Abs(got[i]-want) > tol {
				t.Errorf("n=%d %s = %.5f, table %.4f", n, name, got[i], want)
			}
		}
	}
}

// TestChartConstantsClosedForms checks n = 2, where d2 = 2/√π, d3 = √(2-4/π)
// and c4 = √(2/π) exactly.
func TestChartConstantsClosedForms(t *testing.T) {
	k, _ := ChartConstants(2)
	for _, c := range []struct {
		name      string
		got, want float64
	}{
		{"d2", k.D2, 2 / math.Sqrt(math.Pi)},
		{"d3", k.D3, math.Sqrt(2 - 4/math.Pi)},
		{"c4", k.C4, math.Sqrt(2 / math.Pi)},
	} {
		if math.Abs(c.got-c.want) > 5e-8 {
			t.Errorf("%s(2) = %.10f, want %.10f", c.name, c.got, c.want)
		}
	}
	if _, ok := ChartConstants(1); ok {
		t.Error("n=1 has constants")
	}
	if _, ok := ChartConstants(26); ok {
		t.Error("n=26 has constants")
	}
}
