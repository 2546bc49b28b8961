package api_test

import (
	"context"
	"testing"

	"github.com/google/uuid"

	"github.com/nxcloud/nxcloud/metering"
	"github.com/nxcloud/nxcloud/tenants/tenanttest"
)

// seedMeteringIsolation seeds tenant A with a plan, telemetry usage of one
// device, API calls past a soft quota (warnings) and a draft invoice, for
// TestTenantIsolation.
func seedMeteringIsolation(t *testing.T, s *testServer, a tenanttest.Tenant, credA string) isolationSeed {
	t.Helper()
	ctx := context.Background()
	env := s.env
	m := metering.New(metering.Config{}, env.DB.System, env.DB.App, env.Redis)
	plan, err := m.CreatePlan(ctx, metering.PlanInput{Code: "iso-" + uuid.NewString()[:8], Name: "Isolation plan", Currency: "EUR",
		Definition: metering.Definition{MonthlyFeeCents: 100,
			Prices: []metering.Price{{Meter: metering.MeterPoints, Model: metering.PerUnit, UnitCents: 1}},
			Quotas: []metering.Quota{{Meter: metering.MeterAPICalls, Limit: 3}}}}, "test")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := m.Subscribe(ctx, env.DB.System, a.ID, metering.SubscriptionInput{Plan: plan.Code}, "test"); err != nil {
		t.Fatal(err)
	}
	dev, _ := env.Device(t, a, "meter-iso-"+uuid.NewString()[:8], "jet-mill")
	tx, err := env.DB.System.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := m.RecordTelemetry(ctx, tx, []metering.TelemetryUsage{{Tenant: a.ID, Device: dev.ID, Stored: 10, Rejected: 1}}); err != nil {
		t.Fatal(err)
	}
	if err := tx.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 4; i++ { // past the soft quota: warnings at 80 % and 100 %
		s.do(t, "GET", "/api/v1/tenant", credA, "")
	}
	list := decode[struct{ Items []metering.Invoice }](t, "A's invoices", s.do(t, "GET", "/api/v1/invoices", credA, ""), 200)
	if len(list.Items) != 1 {
		t.Fatalf("A's invoices = %+v, want this month's draft", list.Items)
	}
	inv := list.Items[0].ID.String()
	return isolationSeed{
		Markers: map[string]string{"A's invoice id": inv, "A's metered device id": dev.ID.String()},
		Fills:   map[string][]string{"invoice": {inv}},
		Query:   map[string]string{"/api/v1/usage": "group=device"},
	}
}
