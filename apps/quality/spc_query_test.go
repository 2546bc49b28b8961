package quality_test

import (
	"math"
	"math/rand/v2"
	"testing"
	"time"

	"github.com/nxcloud/nxcloud/apps"
	"github.com/nxcloud/nxcloud/apps/quality"
	"github.com/nxcloud/nxcloud/tenants/tenanttest"
)

func TestSPCEndpointMatchesComputation(t *testing.T) {
	t.Parallel()
	env := tenanttest.New(t)
	tn := env.NewTenant(t)
	svc := quality.NewService(&env.DB, nil)
	ctx := tn.Ctx()
	lsl, usl := 1.40, 1.50
	if _, err := svc.CreatePlan(ctx, quality.PlanInput{Code: "P-RING", Product: "ring", Grade: "N52",
		Characteristics: []quality.PlanCharacteristic{{Characteristic: "br", LSL: &lsl, USL: &usl, SampleSize: 10, SubgroupSize: 5}}}); err != nil {
		t.Fatal(err)
	}
	rng := rand.New(rand.NewPCG(7, 8))
	t0 := time.Date(2026, 10, 1, 0, 0, 0, 0, time.UTC)
	var all []float64
	for i := 0; i < 12; i++ {
		code := "L-R" + string(rune('A'+i))
		newLot(t, env, tn, code, "ring", "N52")
		in := quality.ResultsInput{}
		for k := 0; k < 10; k++ {
			v := 1.45 + rng.NormFloat64()*0.01
			at := t0.Add(time.Duration(i)*time.Hour + time.Duration(k)*time.Minute)
			in.Results = append(in.Results, quality.ResultInput{Characteristic: "br", Value: &v, MeasuredAt: &at})
			all = append(all, v)
		}
		if _, err := svc.AddResults(ctx, code, in); err != nil {
			t.Fatal(err)
		}
	}
	// Another product's lot and an incomplete subgroup of this product.
	newLot(t, env, tn, "L-OTHER", "disc", "N52")
	if _, err := svc.AddResults(ctx, "L-OTHER", quality.ResultsInput{Results: values(9, 9, 9, 9, 9)}); err != nil {
		t.Fatal(err)
	}
	newLot(t, env, tn, "L-SHORT", "ring", "N52")
	late := t0.Add(48 * time.Hour)
	if _, err := svc.AddResults(ctx, "L-SHORT", quality.ResultsInput{Results: []quality.ResultInput{
		{Characteristic: "br", Value: f(1.46), MeasuredAt: &late}, {Characteristic: "br", Value: f(1.44), MeasuredAt: &late}}}); err != nil {
		t.Fatal(err)
	}

	res, err := svc.SPC(ctx, quality.SPCQuery{Characteristic: "br", Product: "ring", Grade: "N52", Rules: "nelson"})
	if err != nil {
		t.Fatal(err)
	}
	if res.Chart != quality.ChartXbarR || res.N != 5 || res.Subgroups != 24 || res.Excluded != 1 || res.Values != 120 {
		t.Fatalf("chart %s n=%d subgroups=%d excluded=%d values=%d", res.Chart, res.N, res.Subgroups, res.Excluded, res.Values)
	}
	want, err := quality.ComputeChart(quality.ChartXbarR, all, 5)
	if err != nil {
		t.Fatal(err)
	}
	if math.Abs(res.X.UCL-want.XLimits.UCL) > 1e-12 || math.Abs(res.R.Center-want.RLimits.Center) > 1e-12 {
		t.Fatalf("limits %+v %+v, want %+v %+v", res.X, res.R, want.XLimits, want.RLimits)
	}
	c := res.Capability
	wc := want.Capability(&lsl, &usl)
	if c.Source != "plan" || math.Abs(*c.Cpk-*wc.Cpk) > 1e-12 || math.Abs(*c.Pp-*wc.Pp) > 1e-12 {
		t.Fatalf("capability %+v, want %+v", c, wc)
	}
	if len(res.Points) != 24 || res.Points[0].Lot != "L-RA" || res.Points[23].Lot != "L-RL" || res.Points[23].Index != 23 {
		t.Fatalf("points %+v", res.Points)
	}

	// I-MR over every br value of N52 lots, the last 3 points listed (the
	// other product's lot, measured now); no product: the ring plan does not
	// apply, capability is on the grade (br: minimum only).
	res, err = svc.SPC(ctx, quality.SPCQuery{Characteristic: "br", Chart: quality.ChartIMR, Grade: "N52", Points: 3})
	if err != nil {
		t.Fatal(err)
	}
	if res.Values != 127 || len(res.Points) != 3 || res.Points[2].Lot != "L-OTHER" || res.Capability.Source != "grade" || res.Points[2].Flags[0] != "we1" {
		t.Fatalf("imr: values %d points %+v capability %+v", res.Values, res.Points, res.Capability)
	}
	res, err = svc.SPC(ctx, quality.SPCQuery{Characteristic: "br", Chart: quality.ChartIMR, Grade: "N52", Product: "disc"})
	if err != nil {
		t.Fatal(err)
	}
	if res.Values != 5 || res.Capability.Source != "grade" || res.Capability.USL != nil || *res.Capability.LSL != 1.43 || res.Capability.Cp != nil {
		t.Fatalf("disc: values %d capability %+v", res.Values, res.Capability)
	}
	// A period that holds no lot: 200, no points.
	res, err = svc.SPC(ctx, quality.SPCQuery{Characteristic: "br", From: t0.Add(-time.Hour), To: t0.Add(-time.Minute)})
	if err != nil || res.Values != 0 || len(res.Points) != 0 || res.X != nil {
		t.Fatalf("empty period: %+v, %v", res, err)
	}

	for _, c := range []struct {
		q     quality.SPCQuery
		code  string
		field string
	}{
		{quality.SPCQuery{}, apps.Invalid, "characteristic"},
		{quality.SPCQuery{Characteristic: "nope"}, apps.Invalid, "characteristic"},
		{quality.SPCQuery{Characteristic: "br", Chart: "p"}, apps.Invalid, "chart"},
		{quality.SPCQuery{Characteristic: "br", N: 26}, apps.Invalid, "n"},
		{quality.SPCQuery{Characteristic: "br", Chart: quality.ChartXbarS, N: 1}, apps.Invalid, "n"},
		{quality.SPCQuery{Characteristic: "br", Rules: "x"}, apps.Invalid, "rules"},
		{quality.SPCQuery{Characteristic: "br", LSL: f(2), USL: f(1)}, apps.Invalid, "lsl"},
		{quality.SPCQuery{Characteristic: "br", From: t0, To: t0.Add(-time.Hour)}, apps.Invalid, "from"},
		{quality.SPCQuery{Characteristic: "br", Line: "no-such-line"}, apps.NotFound, ""},
		{quality.SPCQuery{Characteristic: "br", Grade: "N99"}, apps.NotFound, ""},
	} {
		_, err := svc.SPC(ctx, c.q)
		wantCode(t, "SPC "+c.field, err, c.code, c.field)
	}
}

// Values stored in several requests, subgroups out of order, chart in
// subgroup order within the lot.
func TestSPCSeriesFollowsSubgroups(t *testing.T) {
	t.Parallel()
	env := tenanttest.New(t)
	tn := env.NewTenant(t)
	svc := quality.NewService(&env.DB, nil)
	ctx := tn.Ctx()
	newLot(t, env, tn, "L-ORD", "", "")
	post := func(sg int, vs ...float64) {
		in := quality.ResultsInput{}
		for _, v := range vs {
			in.Results = append(in.Results, quality.ResultInput{Characteristic: "hcj", Value: f(v), Subgroup: sg})
		}
		if _, err := svc.AddResults(ctx, "L-ORD", in); err != nil {
			t.Fatal(err)
		}
	}
	post(2, 1040, 1041)
	post(1, 1030, 1031)
	post(3, 1050)
	post(3, 1051)
	res, err := svc.SPC(ctx, quality.SPCQuery{Characteristic: "hcj", N: 2})
	if err != nil {
		t.Fatal(err)
	}
	var got []float64
	for _, p := range res.Points {
		got = append(got, p.Value)
	}
	if len(got) != 3 || got[0] != 1030.5 || got[1] != 1040.5 || got[2] != 1050.5 || res.Excluded != 0 {
		t.Fatalf("points %v, excluded %d", got, res.Excluded)
	}
}
