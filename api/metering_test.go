package api_test

import (
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"testing"

	"github.com/google/uuid"

	"github.com/nxcloud/nxcloud/apps"
	"github.com/nxcloud/nxcloud/metering"
)

func apiCalls(t *testing.T, s *testServer, cred string) int64 {
	t.Helper()
	rep := decode[metering.UsageReport](t, "usage", s.do(t, "GET", "/api/v1/usage?meter=api.calls", cred, ""), 200)
	var n int64
	for _, it := range rep.Items {
		n += it.Quantity
	}
	return n
}

// sendKeyed sends a request with an Idempotency-Key.
func (s *testServer) sendKeyed(t *testing.T, method, target, auth, key string) *response {
	t.Helper()
	req := httptest.NewRequest(method, target, nil)
	req.Header.Set("Authorization", auth)
	req.Header.Set("Idempotency-Key", key)
	rec := httptest.NewRecorder()
	s.srv.Handler().ServeHTTP(rec, req)
	r := &response{status: rec.Code, header: rec.Header(), body: rec.Body.Bytes()}
	s.check(t, method, target, r)
	return r
}

// Every answered tenant request is metered once per idempotency key (a
// retry with the same key is not), refused ones are not, and a hard API
// quota answers 429 with Retry-After.
func TestAPICallsMetered(t *testing.T) {
	t.Parallel()
	const op = "operator-token-metering"
	s := newServer(t, nil, op)
	a := s.env.NewTenant(t)
	key := bearer(a.APIKey)
	before := apiCalls(t, s, key) // 0: the usage request is metered after it answers
	for i := 0; i < 5; i++ {
		s.sendKeyed(t, "GET", "/api/v1/tenant", key, "k-"+strconv.Itoa(i))
	}
	s.sendKeyed(t, "GET", "/api/v1/tenant", key, "k-0") // a retry: answered, not metered again
	wantProblem(t, "unknown device", s.do(t, "GET", "/api/v1/devices/nope", key, ""), 404, apps.NotFound, "")
	if got := apiCalls(t, s, key); before != 0 || got != 6 { // 5 keyed calls + the first usage request
		t.Errorf("API calls metered = %d (before %d), want 6", got, before)
	}
	bySubject := decode[metering.UsageReport](t, "usage", s.do(t, "GET", "/api/v1/usage?group=subject&meter=api.calls", key, ""), 200)
	classes := map[string]int64{}
	for _, it := range bySubject.Items {
		classes[it.Subject] = it.Quantity
	}
	if classes["tenant:read"] != 5 || classes["usage:read"] != 2 {
		t.Errorf("API calls by route class = %v", classes)
	}

	// A hard quota of 3 calls: the plan is put in force by the operator.
	plan := decode[metering.Plan](t, "plan", s.do(t, "POST", "/api/v1/operator/plans", bearer(op),
		`{"code":"api-cap-`+uuid.NewString()[:8]+`","name":"Capped","currency":"EUR","definition":{"quotas":[{"meter":"api.calls","limit":3,"hard":true}]}}`), 201)
	b := s.env.NewTenant(t)
	s.do(t, "POST", "/api/v1/operator/enterprises/"+b.Slug+"/subscriptions", bearer(op), `{"plan":"`+plan.Code+`"}`)
	for i := 0; i < 3; i++ {
		if r := s.do(t, "GET", "/api/v1/tenant", bearer(b.APIKey), ""); r.status != 200 {
			t.Fatalf("call %d under the quota: %v", i+1, r)
		}
	}
	r := s.do(t, "GET", "/api/v1/tenant", bearer(b.APIKey), "")
	wantProblem(t, "past the quota", r, http.StatusTooManyRequests, apps.QuotaExceeded, "")
	if ra, err := strconv.Atoi(r.header.Get("Retry-After")); err != nil || ra < 1 || ra > 32*24*3600 {
		t.Errorf("Retry-After = %q", r.header.Get("Retry-After"))
	}
	var n int64
	if err := s.env.DB.System.QueryRow(t.Context(), `SELECT count(*) FROM usage_alerts WHERE tenant_id = $1 AND meter = 'api.calls'`, b.ID).Scan(&n); err != nil || n != 2 {
		t.Errorf("warnings stored = %d, %v, want 80 %% and 100 %%", n, err)
	}
	if err := s.env.DB.System.QueryRow(t.Context(), `SELECT count(*) FROM usage_events WHERE tenant_id = $1 AND meter = 'api.calls'`, b.ID).Scan(&n); err != nil || n != 3 {
		t.Errorf("B's metered calls = %d, %v, want 3 (refused ones are not billed)", n, err)
	}
}

// Plans are the operator's; the owner chooses one from the next month; the
// tenant sees its own invoices, the operator every tenant's.
func TestPlansSubscriptionsInvoices(t *testing.T) {
	t.Parallel()
	const op = "operator-token-billing"
	s := newServer(t, nil, op)
	a, b := s.env.NewTenant(t), s.env.NewTenant(t)
	opAuth := bearer(op)
	code := "std-" + uuid.NewString()[:8]
	body := `{"code":"` + code + `","name":"Standard","currency":"EUR","definition":{"monthly_fee_cents":9900,
		"one_off":[{"code":"onboarding","description":"Onboarding","amount_cents":50000}],
		"apps":[{"app":"batch","monthly_cents":2000}],
		"prices":[{"meter":"api.calls","model":"graduated","free":1000,"tiers":[{"up_to":100000,"unit_cents":1},{"unit_cents":0}]}],
		"effect":{"kpi":"downgrade_rate","share_pct":20,"cents_per_point":100000,"floor_cents":0,"cap_cents":500000}}}`
	plan := decode[metering.Plan](t, "plan", s.do(t, "POST", "/api/v1/operator/plans", opAuth, body), 201)
	wantProblem(t, "same code", s.do(t, "POST", "/api/v1/operator/plans", opAuth, body), 409, apps.Conflict, "")
	wantProblem(t, "bad tiers", s.do(t, "POST", "/api/v1/operator/plans", opAuth,
		`{"code":"bad-`+uuid.NewString()[:8]+`","name":"Bad","currency":"EUR","definition":{"prices":[{"meter":"api.calls","model":"volume","tiers":[{"up_to":5,"unit_cents":1}]}]}}`),
		400, apps.Invalid, "definition.prices[0].tiers[0].up_to")
	wantProblem(t, "tenant creates a plan", s.do(t, "POST", "/api/v1/operator/plans", bearer(a.APIKey), body), 401, apps.Unauthorized, "")
	plans := decode[struct{ Items []metering.Plan }](t, "plans", s.do(t, "GET", "/api/v1/operator/plans", opAuth, ""), 200)
	if !containsPlan(plans.Items, plan.ID) {
		t.Error("the new plan is not listed")
	}

	// The operator agrees the effect baseline at go-live.
	sub := decode[metering.Subscription](t, "subscribe A", s.do(t, "POST", "/api/v1/operator/enterprises/"+a.ID.String()+"/subscriptions", opAuth,
		`{"plan":"`+code+`","effect_baseline":"0.082"}`), 201)
	if sub.EffectBaseline == nil || *sub.EffectBaseline != "0.082" {
		t.Errorf("subscription = %+v", sub)
	}
	wantProblem(t, "bad baseline", s.do(t, "POST", "/api/v1/operator/enterprises/"+a.Slug+"/subscriptions", opAuth,
		`{"plan":"`+code+`","effect_baseline":"lots"}`), 400, apps.Invalid, "effect_baseline")
	wantProblem(t, "unknown enterprise", s.do(t, "POST", "/api/v1/operator/enterprises/"+uuid.NewString()+"/subscriptions", opAuth,
		`{"plan":"`+code+`"}`), 404, apps.NotFound, "")

	// The owner changes plan: from the next month on; a viewer cannot.
	owner := s.env.Member(t, a.ID, "owner")
	viewer := s.env.Member(t, a.ID, "viewer")
	wantProblem(t, "viewer subscribes", s.do(t, "POST", "/api/v1/billing/subscriptions", bearer(s.env.Session(t, viewer, a.ID)), `{"plan":"`+code+`"}`), 403, apps.Forbidden, "")
	ownerAuth := bearer(s.env.Session(t, owner, a.ID))
	next := decode[metering.Subscription](t, "owner subscribes", s.do(t, "POST", "/api/v1/billing/subscriptions", ownerAuth, `{"plan":"`+code+`"}`), 201)
	if !next.EffectiveFrom.After(sub.EffectiveFrom) || next.EffectBaseline == nil {
		t.Errorf("owner's change = %+v, want from the next month, baseline kept", next)
	}
	wantProblem(t, "owner sets the baseline", s.do(t, "POST", "/api/v1/billing/subscriptions", ownerAuth, `{"plan":"`+code+`","effect_baseline":"0.5"}`), 400, apps.Invalid, "effect_baseline")
	wantProblem(t, "unknown plan", s.do(t, "POST", "/api/v1/billing/subscriptions", ownerAuth, `{"plan":"nope"}`), 404, apps.NotFound, "plan")
	subs := decode[struct{ Items []metering.Subscription }](t, "subs", s.do(t, "GET", "/api/v1/billing/subscriptions", ownerAuth, ""), 200)
	if len(subs.Items) != 2 {
		t.Errorf("A's subscriptions = %+v", subs.Items)
	}

	// B choosing a plan changes only B's.
	decode[metering.Subscription](t, "B subscribes", s.do(t, "POST", "/api/v1/billing/subscriptions", bearer(b.APIKey), `{"plan":"`+code+`"}`), 201)
	if again := decode[struct{ Items []metering.Subscription }](t, "subs", s.do(t, "GET", "/api/v1/billing/subscriptions", ownerAuth, ""), 200); len(again.Items) != 2 {
		t.Errorf("A's subscriptions after B's choice = %+v", again.Items)
	}

	// A's draft: monthly fee, one-off, app, usage, effect (no downgrade data: floor).
	invs := decode[struct{ Items []metering.Invoice }](t, "A's invoices", s.do(t, "GET", "/api/v1/invoices", ownerAuth, ""), 200)
	if len(invs.Items) != 1 || invs.Items[0].Status != "draft" || invs.Items[0].TotalCents != 9900+50000+2000 {
		t.Fatalf("A's invoices = %+v", invs.Items)
	}
	inv := invs.Items[0]
	one := decode[metering.Invoice](t, "A's invoice", s.do(t, "GET", "/api/v1/invoices/"+inv.ID.String(), ownerAuth, ""), 200)
	if one.ID != inv.ID || len(one.Lines) != 5 {
		t.Errorf("invoice = %+v", one)
	}
	r := s.do(t, "GET", "/api/v1/invoices/"+inv.ID.String()+"/csv", ownerAuth, "")
	if r.status != 200 || !strings.HasPrefix(r.header.Get("Content-Type"), "text/csv") || !strings.Contains(string(r.body), "619.00,EUR") {
		t.Errorf("CSV = %v", r)
	}
	// B never sees A's invoice; the operator sees both enterprises'.
	wantProblem(t, "B reads A's invoice", s.do(t, "GET", "/api/v1/invoices/"+inv.ID.String(), bearer(b.APIKey), ""), 404, apps.NotFound, "")
	wantProblem(t, "B reads A's CSV", s.do(t, "GET", "/api/v1/invoices/"+inv.ID.String()+"/csv", bearer(b.APIKey), ""), 404, apps.NotFound, "")
	wantProblem(t, "not an id", s.do(t, "GET", "/api/v1/invoices/x%00", ownerAuth, ""), 404, apps.NotFound, "")
	all := decode[struct{ Items []metering.Invoice }](t, "all invoices", s.do(t, "GET", "/api/v1/operator/invoices", opAuth, ""), 200)
	found := false
	for _, x := range all.Items {
		found = found || x.ID == inv.ID
	}
	if !found {
		t.Error("the operator does not see A's invoice")
	}
	opUsage := decode[metering.UsageReport](t, "operator usage", s.do(t, "GET", "/api/v1/operator/enterprises/"+a.Slug+"/usage?group=subject&meter=api.calls", opAuth, ""), 200)
	if len(opUsage.Items) == 0 {
		t.Error("the operator sees no API calls of A")
	}
	wantProblem(t, "operator usage of nobody", s.do(t, "GET", "/api/v1/operator/enterprises/"+uuid.NewString()+"/usage", opAuth, ""), 404, apps.NotFound, "")
	wantProblem(t, "tenant reads the operator usage", s.do(t, "GET", "/api/v1/operator/enterprises/"+a.Slug+"/usage", ownerAuth, ""), 403, apps.Forbidden, "")
	if r := s.do(t, "GET", "/api/v1/operator/invoices/"+inv.ID.String()+"/csv", opAuth, ""); r.status != 200 {
		t.Errorf("operator CSV = %v", r)
	}
	wantProblem(t, "close the running month", s.do(t, "POST", "/api/v1/operator/enterprises/"+a.Slug+"/invoices/close", opAuth,
		`{"period":"`+inv.Period+`"}`), 400, apps.Invalid, "period")
	wantProblem(t, "close a bad month", s.do(t, "POST", "/api/v1/operator/enterprises/"+a.Slug+"/invoices/close", opAuth,
		`{"period":"2026-13"}`), 400, apps.Invalid, "period")
	wantProblem(t, "bad group", s.do(t, "GET", "/api/v1/usage?group=week", ownerAuth, ""), 400, apps.Invalid, "group")
	wantProblem(t, "bad meter", s.do(t, "GET", "/api/v1/usage?meter=%00", ownerAuth, ""), 400, apps.Invalid, "meter")
	wantProblem(t, "beyond year 9999", s.do(t, "GET", "/api/v1/usage?from=9999-12-15T00:00:00Z", ownerAuth, ""), 400, apps.Invalid, "to")
	wantProblem(t, "bad range", s.do(t, "GET", "/api/v1/usage?from=2026-01-02T00:00:00Z&to=2026-01-01T00:00:00Z", ownerAuth, ""), 400, apps.Invalid, "to")
	q := decode[struct{ Items []metering.QuotaState }](t, "quotas", s.do(t, "GET", "/api/v1/usage/quotas", ownerAuth, ""), 200)
	if len(q.Items) != 0 {
		t.Errorf("quotas = %+v, want none in this plan", q.Items)
	}
}

func containsPlan(ps []metering.Plan, id uuid.UUID) bool {
	for _, p := range ps {
		if p.ID == id {
			return true
		}
	}
	return false
}
