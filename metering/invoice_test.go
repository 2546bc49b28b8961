package metering

import (
	"bytes"
	"context"
	"encoding/csv"
	"fmt"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/nxcloud/nxcloud/apps"
	"github.com/nxcloud/nxcloud/tenants/tenanttest"
)

func linesByCode(ls []Line) map[string]Line {
	out := map[string]Line{}
	for _, l := range ls {
		k := l.Kind + ":" + l.Code + ":" + l.SubjectPrefix
		if l.Kind == LineAdjustment {
			k += ":" + l.Period
		}
		out[k] = l
	}
	return out
}

// A month is billed from the ledger to the cent; usage arriving after its
// close is billed as an adjustment on the next invoice, priced as the
// difference it makes to the closed month; every final invoice recomputes
// to the same lines.
func TestInvoices(t *testing.T) {
	t.Parallel()
	env := tenanttest.New(t)
	s := newService(t, env)
	s.cfg.CloseGrace = time.Minute
	ctx := context.Background()
	tn := env.NewTenant(t)
	dev, _ := env.Device(t, tn, "mill-1", "jet-mill")
	m0 := monthStart(time.Now())
	m2, m1 := m0.AddDate(0, -2, 0), m0.AddDate(0, -1, 0)
	plan := testPlan(t, s, Definition{
		MonthlyFeeCents: 10000,
		OneOff:          []Fee{{Code: "onboarding", Description: "Onboarding", AmountCents: 50000}},
		Apps:            []AppFee{{App: "batch", MonthlyCents: 2000}},
		Prices: []Price{
			{Meter: MeterAPICalls, Model: PerUnit, UnitCents: 1, Free: 2},
			{Meter: MeterAppUses, SubjectPrefix: "batch.", Model: Graduated, Tiers: []Tier{{UpTo: 2, UnitCents: 100}, {UnitCents: 50}}},
			{Meter: MeterPoints, Model: PerUnit, UnitCents: 1, Per: 1000},
			{Meter: MeterActiveDevices, Model: PerUnit, UnitCents: 500},
		},
		Effect: &Effect{KPI: KPIRejectRatio, SharePct: 50, CentsPerPoint: 1000, CapCents: 100000},
	})
	// Subscribed two months ago, baseline 10 % rejected points agreed.
	if _, err := env.DB.System.Exec(ctx, `INSERT INTO billing_subscriptions (tenant_id, effective_from, plan_id, effect_baseline) VALUES ($1, $2, $3, 0.10)`,
		tn.ID, m2, plan.ID); err != nil {
		t.Fatal(err)
	}
	use := func(meter, subject, key string, at time.Time) {
		t.Helper()
		if err := s.RecordUse(ctx, tn.ID, Use{Meter: meter, Subject: subject, Quantity: 1, Key: key, At: at}); err != nil {
			t.Fatal(err)
		}
	}
	for i := 0; i < 5; i++ {
		use(MeterAPICalls, "telemetry:read", fmt.Sprint("c", i), m2.Add(24*time.Hour))
	}
	for i := 0; i < 3; i++ {
		use(MeterAppUses, "batch.trace", fmt.Sprint("t", i), m2.Add(48*time.Hour))
	}
	use(MeterAppUses, "quality.spc", "s1", m2.Add(48*time.Hour)) // not priced by this plan
	if _, err := env.DB.System.Exec(ctx, `INSERT INTO usage_telemetry (tenant_id, device_id, hour, stored, rejected) VALUES ($1, $2, $3, 5000, 500)`,
		tn.ID, dev.ID, m2.Add(72*time.Hour)); err != nil {
		t.Fatal(err)
	}
	for day, n := range map[int]int64{1: 3, 2: 5} {
		if err := s.RecordUse(ctx, tn.ID, Use{Meter: MeterActiveDevices, Quantity: n, Key: fmt.Sprint("devices.active:", day), At: m2.AddDate(0, 0, day)}); err != nil {
			t.Fatal(err)
		}
	}

	if _, err := s.Close(ctx, tn.ID, m1); apps.Code(err) != apps.Invalid {
		t.Errorf("closing %s before %s: %v, want invalid", periodName(m1), periodName(m2), err)
	}
	inv2, err := s.Close(ctx, tn.ID, m2)
	if err != nil {
		t.Fatal(err)
	}
	got := linesByCode(inv2.Lines)
	want := map[string]int64{
		"one_off:onboarding:": 50000, "monthly_fee:" + plan.Code + ":": 10000, "app:batch:": 2000,
		"usage:api.calls:": 3, "usage:app.uses:batch.": 250, "usage:telemetry.points:": 5, "usage:devices.active:": 2500,
		// 500/5500 rejected against a 10 % baseline: 0.909… points × 10.00 × 50 % = 4.545… → 455 cents.
		"effect:telemetry_reject_ratio:": 455,
	}
	for k, cents := range want {
		if got[k].AmountCents != cents {
			t.Errorf("%s line = %+v, want %d cents", k, got[k], cents)
		}
	}
	if len(got) != len(want) || inv2.Status != "final" || inv2.TotalCents != 50000+10000+2000+3+250+5+2500+455 {
		t.Errorf("invoice %s: %d lines, status %s, total %d: %+v", inv2.Period, len(got), inv2.Status, inv2.TotalCents, inv2.Lines)
	}
	// Closing again changes nothing.
	if again, err := s.Close(ctx, tn.ID, m2); err != nil || again.ID != inv2.ID || again.TotalCents != inv2.TotalCents {
		t.Errorf("second close: %+v, %v", again, err)
	}

	// Late usage of the closed month: keyed uses, and a telemetry batch whose
	// transaction began in that month and committed after the close.
	if _, err := env.DB.System.Exec(ctx, `INSERT INTO usage_telemetry_batches (tenant_id, hour, devices, stored, rejected, events)
		VALUES ($1, $2, $3, '{1500}', '{0}', '{0}')`, tn.ID, m2.Add(80*time.Hour), []uuid.UUID{dev.ID}); err != nil {
		t.Fatal(err)
	}
	use(MeterAPICalls, "telemetry:read", "late-1", m2.Add(5*24*time.Hour))
	use(MeterAppUses, "batch.trace", "late-2", m2.Add(5*24*time.Hour))
	use(MeterAPICalls, "telemetry:read", "c0", m2.Add(24*time.Hour)) // a replay: nothing new
	if n, err := s.CloseDue(ctx); err != nil || n < 1 {
		t.Fatalf("CloseDue = %d, %v", n, err)
	}
	var inv1 Invoice
	list, err := s.Invoices(ctx, s.sys, tn.ID)
	if err != nil {
		t.Fatal(err)
	}
	for _, x := range list {
		if x.Period == periodName(m1) {
			inv1 = x
		}
	}
	got = linesByCode(inv1.Lines)
	adjAPI, adjApp := got["adjustment:api.calls::"+periodName(m2)], got["adjustment:app.uses:batch.:"+periodName(m2)]
	if inv1.Status != "final" || adjAPI.Quantity != 1 || adjAPI.AmountCents != 1 || adjApp.Quantity != 1 || adjApp.AmountCents != 50 {
		t.Errorf("next invoice %s (%s): adjustments %+v and %+v, want 1 call at 1 cent and 1 trace at 50 cents", inv1.Period, inv1.Status, adjAPI, adjApp)
	}
	// 5000 points billed 5 cents; 6500 now: 7 (6.5 rounds half up), +2.
	if adj := got["adjustment:telemetry.points::"+periodName(m2)]; adj.Quantity != 1500 || adj.AmountCents != 2 {
		t.Errorf("telemetry adjustment = %+v, want 1500 points at 2 cents", adj)
	}
	if _, ok := got["one_off:onboarding:"]; ok {
		t.Error("the one-off fee is charged again")
	}
	if got["effect:telemetry_reject_ratio:"].AmountCents != 0 {
		t.Errorf("effect without data = %+v, want the floor (0)", got["effect:telemetry_reject_ratio:"])
	}
	// Both final invoices recompute from the ledger to the cent.
	for _, inv := range []Invoice{inv2, inv1} {
		lines, err := s.Recompute(ctx, s.sys, tn.ID, inv.ID)
		if err != nil {
			t.Fatal(err)
		}
		if fmt.Sprintf("%+v", lines) != fmt.Sprintf("%+v", inv.Lines) || total(lines) != inv.TotalCents {
			t.Errorf("recomputed %s:\n%+v\nstored:\n%+v", inv.Period, lines, inv.Lines)
		}
	}
	// The usage API explains the lines: 6 calls in the month = 5 billed + 1 adjusted.
	rep, err := s.Usage(ctx, s.sys, tn.ID, m2, m1, "meter", "")
	if err != nil {
		t.Fatal(err)
	}
	for _, it := range rep.Items {
		if it.Meter == MeterAPICalls && it.Quantity != 6 || it.Meter == MeterActiveDevices && it.Quantity != 5 {
			t.Errorf("usage %s = %d", it.Meter, it.Quantity)
		}
	}

	// This month: a draft, recomputed when read, without adjustments.
	use(MeterAPICalls, "telemetry:read", "now-1", time.Time{})
	draft, err := s.Draft(ctx, s.sys, tn.ID, m0)
	if err != nil {
		t.Fatal(err)
	}
	if draft.Status != "draft" || linesByCode(draft.Lines)["usage:api.calls:"].Quantity != 1 {
		t.Errorf("draft = %+v", draft)
	}
	if _, err := s.Recompute(ctx, s.sys, tn.ID, draft.ID); apps.Code(err) != apps.Invalid {
		t.Errorf("recompute a draft: %v", err)
	}
	if _, err := s.Close(ctx, tn.ID, m0); apps.Code(err) != apps.Invalid {
		t.Errorf("closing the running month: %v", err)
	}

	var b bytes.Buffer
	if err := WriteCSV(&b, inv2); err != nil {
		t.Fatal(err)
	}
	recs, err := csv.NewReader(&b).ReadAll()
	if err != nil || len(recs) != len(inv2.Lines)+2 || recs[len(recs)-1][10] != "652.13" {
		t.Errorf("CSV: %v rows, last %v, %v", len(recs), recs[len(recs)-1], err)
	}
}

// Without a plan there is no invoice.
func TestNoPlanNoInvoice(t *testing.T) {
	t.Parallel()
	env := tenanttest.New(t)
	s := newService(t, env)
	tn := env.NewTenant(t)
	if _, err := s.Draft(context.Background(), s.sys, tn.ID, monthStart(time.Now())); apps.Code(err) != apps.NotFound {
		t.Errorf("draft without a plan: %v", err)
	}
	list, err := s.Invoices(context.Background(), s.sys, tn.ID)
	if err != nil || len(list) != 0 {
		t.Errorf("invoices without a plan: %v, %v", list, err)
	}
	if _, err := s.Subscribe(context.Background(), s.sys, tn.ID, SubscriptionInput{Plan: uuid.NewString()}, "t"); apps.Code(err) != apps.NotFound {
		t.Errorf("subscribe to an unknown plan: %v", err)
	}
}

// The daily snapshots count active devices and apportion bytes, once per day.
func TestSnapshots(t *testing.T) {
	t.Parallel()
	env := tenanttest.New(t)
	s := newService(t, env)
	tn := env.NewTenant(t)
	d1, _ := env.Device(t, tn, "mill-1", "jet-mill")
	d2, _ := env.Device(t, tn, "mill-2", "jet-mill")
	metric := anyMetric(t, env, tn, "jet-mill")
	storeBatch(t, s, env, tn, d1.ID, metric, 10, 0, false)
	storeBatch(t, s, env, tn, d2.ID, metric, 10, 0, false)
	today := time.Now().UTC().Truncate(24 * time.Hour)
	for i := 0; i < 2; i++ {
		if err := s.Snapshot(context.Background(), today, 400*24*time.Hour); err != nil {
			t.Fatal(err)
		}
	}
	u := usageOf(t, s, env, tn, "meter")
	if u[MeterActiveDevices+"|"] != 2 || u[MeterStorage+"|"] <= 0 {
		t.Errorf("snapshots = %v, want 2 active devices and some bytes", u)
	}
}

// The demo plan is valid and the demo enterprise is put on it once.
func TestDemoPlan(t *testing.T) {
	t.Parallel()
	env := tenanttest.New(t)
	s := newService(t, env)
	tn := env.NewTenant(t)
	for i := 0; i < 2; i++ {
		if err := s.EnsureDemoPlan(context.Background(), tn.ID); err != nil {
			t.Fatal(err)
		}
	}
	subs, err := s.Subscriptions(context.Background(), s.sys, tn.ID)
	if err != nil || len(subs) != 1 || subs[0].Plan != DemoPlanCode || subs[0].EffectBaseline == nil {
		t.Fatalf("subscriptions = %+v, %v", subs, err)
	}
	inv, err := s.Draft(context.Background(), s.sys, tn.ID, monthStart(time.Now()))
	if err != nil || inv.TotalCents < 99900+500000+2*19900 {
		t.Errorf("demo draft = %+v, %v", inv, err)
	}
}
