package downgrade_test

import (
	"context"
	"errors"
	"math"
	"strings"
	"testing"
	"time"

	"github.com/nxcloud/nxcloud/apps"
	"github.com/nxcloud/nxcloud/apps/batch"
	"github.com/nxcloud/nxcloud/apps/downgrade"
	"github.com/nxcloud/nxcloud/apps/quality"
	"github.com/nxcloud/nxcloud/tenants"
	"github.com/nxcloud/nxcloud/tenants/tenanttest"
)

func wantCode(t *testing.T, what string, err error, code, field string) {
	t.Helper()
	var e *apps.Error
	if !errors.As(err, &e) || e.Code != code || (field != "" && e.Field != field) {
		t.Errorf("%s: err = %v, want %s (field %q)", what, err, code, field)
	}
}

type apps3 struct {
	batch *batch.Service
	dg    *downgrade.Service
	q     *quality.Service
}

func newApps(env *tenanttest.Env) apps3 {
	a := apps3{batch: batch.NewService(&env.DB, nil), dg: downgrade.NewService(&env.DB, nil), q: quality.NewService(&env.DB, nil)}
	a.dg.UseInspections(a.q)
	a.q.OnResults = a.dg.ProposeForLots
	return a
}

func (a apps3) lot(t *testing.T, ctx context.Context, in batch.LotInput) {
	t.Helper()
	if _, err := a.batch.CreateLot(ctx, in); err != nil {
		t.Fatalf("lot %s: %v", in.Code, err)
	}
}

func (a apps3) results(t *testing.T, ctx context.Context, lot string, values map[string][]float64) {
	t.Helper()
	var in quality.ResultsInput
	for k, vs := range values {
		for _, v := range vs {
			in.Results = append(in.Results, quality.ResultInput{Characteristic: k, Value: &v})
		}
	}
	if _, err := a.q.AddResults(ctx, lot, in); err != nil {
		t.Fatalf("results of %s: %v", lot, err)
	}
}

func setPrices(t *testing.T, dg *downgrade.Service, ctx context.Context) {
	t.Helper()
	_, err := dg.SetPrices(ctx, downgrade.PriceListInput{Currency: "CNY", RemeltValue: 200, ScrapValue: 50, ReworkCost: 30,
		Prices: []downgrade.GradePrice{{Grade: "N52", Price: 800}, {Grade: "N50", Price: 700}, {Grade: "N48", Price: 650},
			{Grade: "N42SH", Price: 900}, {Grade: "N42H", Price: 750}, {Grade: "N42", Price: 500}}})
	if err != nil {
		t.Fatal(err)
	}
}

// Proposals from results recorded through the quality app (its OnResults
// hook), against the demo sector's grades.
func TestProposalsFromRecordedResults(t *testing.T) {
	t.Parallel()
	env := tenanttest.New(t)
	tn := env.NewTenant(t)
	ctx := tn.Ctx()
	a := newApps(env)
	setPrices(t, a.dg, ctx)
	a.lot(t, ctx, batch.LotInput{Code: "L-N52", Product: "block", Grade: "N52", Quantity: 100})
	a.lot(t, ctx, batch.LotInput{Code: "L-N42SH", Product: "arc", Grade: "N42SH", Quantity: 50})
	a.lot(t, ctx, batch.LotInput{Code: "L-OK", Product: "block", Grade: "N52", Quantity: 80})
	a.lot(t, ctx, batch.LotInput{Code: "L-BAD", Product: "block", Grade: "N52", Quantity: 60})

	a.results(t, ctx, "L-N52", map[string][]float64{"br": {1.41, 1.42}, "hcj": {900}, "hcb": {850}, "bhmax": {390}, "density": {7.55}})
	a.results(t, ctx, "L-N42SH", map[string][]float64{"br": {1.30}, "hcj": {1450}, "hcb": {980}, "bhmax": {330}, "density": {7.52}})
	a.results(t, ctx, "L-OK", map[string][]float64{"br": {1.45}, "hcj": {950}, "hcb": {850}, "bhmax": {410}, "density": {7.56}})
	a.results(t, ctx, "L-BAD", map[string][]float64{"br": {1.44}, "hcj": {900}, "bhmax": {400}, "density": {7.2}})

	proposals, err := a.dg.Downgrades(ctx, downgrade.Query{Status: "proposed"})
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]downgrade.Downgrade{}
	for _, d := range proposals.Items {
		got[d.Lot] = d
	}
	if len(got) != 2 {
		t.Fatalf("proposals = %+v", proposals.Items)
	}
	for lot, want := range map[string]struct {
		assigned, reason string
		value            float64
	}{"L-N52": {"N50", "LOW_BR", 10000}, "L-N42SH": {"N42H", "LOW_HCJ", 7500}} {
		d := got[lot]
		if d.AssignedGrade != want.assigned || d.ReasonCode != want.reason || d.ValueLost == nil || *d.ValueLost != want.value ||
			d.Source != "rule" || d.Disposition != "sell_lower" {
			t.Errorf("%s: proposal = %+v, want %+v", lot, d, want)
		}
	}
	// No proposal for a lot meeting its grade, nor for one meeting no lower
	// grade; the rule says why.
	for lot, reason := range map[string]string{"L-OK": "meets its intended grade N52", "L-BAD": "meets no lower grade of family NdFeB"} {
		ev, err := a.dg.Evaluate(ctx, downgrade.EvaluateInput{Lot: lot})
		if err != nil {
			t.Fatal(err)
		}
		if ev.Decision.Propose || ev.Proposal != nil || !strings.Contains(ev.Decision.Reason, reason) {
			t.Errorf("%s: evaluation = %+v", lot, ev)
		}
	}
	// A what-if on given values stores nothing.
	ev, err := a.dg.Evaluate(ctx, downgrade.EvaluateInput{Lot: "L-OK", Values: map[string][]float64{"br": {1.37}, "hcj": {1000}, "bhmax": {370}}})
	if err != nil || ev.Decision.Assigned != "N48" || ev.Proposal != nil {
		t.Errorf("what-if = %+v, %v", ev, err)
	}
	// New results that bring the lot back within its grade withdraw the
	// proposal; a second evaluation does not duplicate one.
	if _, err := a.dg.Evaluate(ctx, downgrade.EvaluateInput{Lot: "L-N42SH"}); err != nil {
		t.Fatal(err)
	}
	if p, _ := a.dg.Downgrades(ctx, downgrade.Query{Status: "proposed", Lot: "L-N42SH"}); len(p.Items) != 1 {
		t.Errorf("proposals of L-N42SH after re-evaluation = %d", len(p.Items))
	}

	// Approve one, reject the other; a decided downgrade is not decided again.
	ap, err := a.dg.DecideProposal(ctx, got["L-N52"].ID.String(), true, downgrade.DecisionInput{Note: "sell as N50"})
	if err != nil || ap.Status != "approved" || ap.DecidedAt == nil {
		t.Errorf("approve = %+v, %v", ap, err)
	}
	_, err = a.dg.DecideProposal(ctx, got["L-N52"].ID.String(), false, downgrade.DecisionInput{})
	wantCode(t, "decide twice", err, apps.Conflict, "")
	rj, err := a.dg.DecideProposal(ctx, got["L-N42SH"].ID.String(), false, downgrade.DecisionInput{Note: "rework"})
	if err != nil || rj.Status != "rejected" {
		t.Errorf("reject = %+v, %v", rj, err)
	}
	// Another tenant sees none of it.
	other := env.NewTenant(t)
	if _, err := a.dg.Downgrade(other.Ctx(), ap.ID.String()); apps.Code(err) != apps.NotFound {
		t.Errorf("other tenant reads the downgrade: %v", err)
	}
	_, err = a.dg.DecideProposal(other.Ctx(), got["L-N42SH"].ID.String(), true, downgrade.DecisionInput{})
	wantCode(t, "other tenant decides", err, apps.NotFound, "")
	// The trace of the lot shows its downgrade.
	a.batch.AddDetail("downgrades", a.dg)
	tr, err := a.batch.Trace(ctx, batch.TraceQuery{Lot: "L-N52", Details: true})
	if err != nil || tr.Nodes[0].Details["downgrades"] == nil {
		t.Errorf("trace details = %+v, %v", tr.Nodes, err)
	}
}

func TestRecordAndAnalytics(t *testing.T) {
	t.Parallel()
	env := tenanttest.New(t)
	tn := env.NewTenant(t)
	ctx := tn.Ctx()
	a := newApps(env)
	setPrices(t, a.dg, ctx)
	line1, err := env.Tenants.CreateLine(context.Background(), tn.ID, tenants.LineInput{Key: "line-1", Name: "Line 1"})
	if err != nil {
		t.Fatal(err)
	}
	_ = line1
	furnace, _ := env.Device(t, tn, "furnace-1", "sintering-furnace")
	jan := time.Date(2026, 1, 5, 8, 0, 0, 0, time.UTC)
	feb := time.Date(2026, 2, 3, 8, 0, 0, 0, time.UTC)
	a.lot(t, ctx, batch.LotInput{Code: "RAW-A", Kind: "raw", Quantity: 10000})
	a.lot(t, ctx, batch.LotInput{Code: "RAW-B", Kind: "raw", Quantity: 10000})
	for _, l := range []batch.LotInput{
		{Code: "J1", Grade: "N52", Quantity: 100, Line: "line-1", Shift: "A", StartedAt: &jan},
		{Code: "J2", Grade: "N52", Quantity: 100, Line: "line-1", Shift: "B", StartedAt: &jan},
		{Code: "F1", Grade: "N42SH", Quantity: 50, Shift: "A", StartedAt: &feb},
		{Code: "F2", Grade: "N42SH", Quantity: 50, Shift: "B", StartedAt: &feb},
	} {
		a.lot(t, ctx, l)
	}
	for _, k := range [][2]string{{"RAW-A", "J1"}, {"RAW-A", "F1"}, {"RAW-B", "J2"}, {"RAW-B", "F2"}} {
		if _, err := a.batch.CreateLink(ctx, batch.LinkInput{Parent: k[0], Child: k[1], Kind: "consume", Quantity: 10}); err != nil {
			t.Fatal(err)
		}
	}
	end := jan.Add(5 * time.Hour)
	if _, err := a.batch.StartRun(ctx, "J1", batch.RunInput{Device: "furnace-1", StartedAt: jan, EndedAt: &end}); err != nil {
		t.Fatal(err)
	}
	_ = furnace

	rec := func(in downgrade.DowngradeInput) (downgrade.Downgrade, error) { return a.dg.Record(ctx, in) }
	q := func(v float64) *float64 { return &v }
	// Bad input.
	for _, tc := range []struct {
		in    downgrade.DowngradeInput
		code  string
		field string
	}{
		{downgrade.DowngradeInput{Lot: "NOPE", AssignedGrade: "N50", ReasonCode: "LOW_BR", Disposition: "sell_lower"}, apps.Invalid, "lot"},
		{downgrade.DowngradeInput{Lot: "J1", AssignedGrade: "N99", ReasonCode: "LOW_BR", Disposition: "sell_lower"}, apps.Invalid, "assigned_grade"},
		{downgrade.DowngradeInput{Lot: "J1", IntendedGrade: "X1", AssignedGrade: "N50", ReasonCode: "LOW_BR", Disposition: "sell_lower"}, apps.Invalid, "intended_grade"},
		{downgrade.DowngradeInput{Lot: "J1", AssignedGrade: "N42SH", ReasonCode: "LOW_BR", Disposition: "sell_lower"}, apps.Invalid, "assigned_grade"},
		{downgrade.DowngradeInput{Lot: "J1", AssignedGrade: "Y30", ReasonCode: "LOW_BR", Disposition: "sell_lower"}, apps.Invalid, "assigned_grade"},
		{downgrade.DowngradeInput{Lot: "J1", AssignedGrade: "N50", ReasonCode: "NOT_A_CODE", Disposition: "sell_lower"}, apps.Invalid, "reason_code"},
		{downgrade.DowngradeInput{Lot: "J1", AssignedGrade: "N50", ReasonCode: "LOW_BR", Disposition: "sell"}, apps.Invalid, "disposition"},
		{downgrade.DowngradeInput{Lot: "J1", AssignedGrade: "N50", ReasonCode: "LOW_BR", Disposition: "sell_lower", Quantity: q(-5)}, apps.Invalid, "quantity"},
		{downgrade.DowngradeInput{Lot: "J1", AssignedGrade: "N50", ReasonCode: "LOW_BR", Disposition: "sell_lower", Quantity: q(101)}, apps.Invalid, "quantity"},
		{downgrade.DowngradeInput{Lot: "J1", ReasonCode: "LOW_BR", Disposition: "sell_lower"}, apps.Invalid, "assigned_grade"},
	} {
		_, err := rec(tc.in)
		wantCode(t, tc.field+" "+tc.in.Lot, err, tc.code, tc.field)
	}
	// J1: 40 kg sold as N48 for low Br, (800-650)*40 = 6000; J2: 10 kg
	// scrapped for cracks, (800-50)*10 = 7500; F1: 50 kg re-melted for low
	// Hcj, (900-200)*50 = 35000; F2 untouched.
	for _, in := range []downgrade.DowngradeInput{
		{Lot: "J1", AssignedGrade: "N48", ReasonCode: "LOW_BR", Disposition: "sell_lower", Quantity: q(40)},
		{Lot: "J2", ReasonCode: "CRACK", Disposition: "scrap", Quantity: q(10)},
		{Lot: "F1", ReasonCode: "LOW_HCJ", Disposition: "remelt"},
	} {
		if _, err := rec(in); err != nil {
			t.Fatalf("record %s: %v", in.Lot, err)
		}
	}
	// J1 has 100 kg of which 40 are downgraded: 61 more is too much.
	_, err = rec(downgrade.DowngradeInput{Lot: "J1", ReasonCode: "CRACK", Disposition: "scrap", Quantity: q(61)})
	wantCode(t, "over-downgrade", err, apps.Invalid, "quantity")
	rw, err := rec(downgrade.DowngradeInput{Lot: "F2", ReasonCode: "CHIPPING", Disposition: "rework", Quantity: q(5)})
	if err != nil || rw.ValueLost == nil || *rw.ValueLost != 150 || rw.Status != "recorded" {
		t.Errorf("rework = %+v, %v", rw, err)
	}

	from, to := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC), time.Date(2026, 3, 1, 0, 0, 0, 0, time.UTC)
	an := func(by string) map[string]downgrade.Group {
		t.Helper()
		out, err := a.dg.Analytics(ctx, downgrade.AnalyticsQuery{GroupBy: by, From: from, To: to})
		if err != nil {
			t.Fatal(err)
		}
		m := map[string]downgrade.Group{"TOTAL": out.Total}
		for _, g := range out.Groups {
			m[g.Key] = g
		}
		return m
	}
	near := func(a, b float64) bool { return math.Abs(a-b) < 1e-9 }
	total := an("grade")["TOTAL"]
	// Produced 300 kg worth 100*800*2 + 50*900*2 = 250000; downgraded
	// 40+10+50+5 = 105 kg, value lost 6000+7500+35000+150 = 48650.
	if total.Lots != 4 || total.ProducedQuantity != 300 || total.DowngradedQuantity != 105 || !near(total.QuantityRate, 105.0/300) ||
		total.ProducedValue != 250000 || total.ValueLost != 48650 || !near(total.ValueRate, 48650.0/250000) {
		t.Errorf("total = %+v", total)
	}
	if r := total.Reasons; len(r) != 4 || r[0].Code != "LOW_HCJ" || r[0].Quantity != 50 || !near(r[3].Cumulative, 1) || r[1].Code != "LOW_BR" {
		t.Errorf("pareto = %+v", r)
	}
	for by, want := range map[string]map[string]float64{
		"grade":          {"N52": 50, "N42SH": 55},
		"line":           {"line-1": 50, "": 55},
		"shift":          {"A": 90, "B": 15},
		"equipment":      {"furnace-1": 40, "": 65},
		"material_lot":   {"RAW-A": 90, "RAW-B": 15},
		"month":          {"2026-01": 50, "2026-02": 55},
		"week":           {"2026-W02": 50, "2026-W06": 55},
		"recipe_version": {"": 105},
	} {
		got := an(by)
		for k, q := range want {
			if got[k].DowngradedQuantity != q {
				t.Errorf("%s %q: downgraded %v, want %v (%+v)", by, k, got[k].DowngradedQuantity, q, got[k])
			}
		}
	}
	_, err = a.dg.Analytics(ctx, downgrade.AnalyticsQuery{GroupBy: "colour", From: from, To: to})
	wantCode(t, "group_by", err, apps.Invalid, "group_by")
}
