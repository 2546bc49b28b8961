package api_test

import (
	"bytes"
	"context"
	"encoding/csv"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/labstack/echo/v4"

	"github.com/nxcloud/nxcloud/apps"
	"github.com/nxcloud/nxcloud/tenants"
	"github.com/nxcloud/nxcloud/tenants/tenanttest"
)

// as sends a request naming a tenant in X-Nx-Tenant (as a contractor does)
// and checks it like do.
func (s *testServer) as(t testing.TB, method, target, auth, tenant, body string) *response {
	t.Helper()
	var rd io.Reader
	if body != "" {
		rd = strings.NewReader(body)
	}
	req := httptest.NewRequest(method, target, rd)
	if body != "" {
		req.Header.Set("Content-Type", "application/json")
	}
	req.Header.Set("Authorization", auth)
	if tenant != "" {
		req.Header.Set("X-Nx-Tenant", tenant)
	}
	rec := httptest.NewRecorder()
	s.srv.Handler().ServeHTTP(rec, req)
	r := &response{status: rec.Code, header: rec.Header(), body: rec.Body.Bytes()}
	if r.status >= 500 {
		t.Errorf("%s %s: %v", method, target, r)
	}
	s.check(t, method, target, r)
	return r
}

// contractorOrg creates a contractor organisation with one member and
// returns the organisation and a session of the member.
func contractorOrg(t testing.TB, env *tenanttest.Env) (uuid.UUID, string) {
	t.Helper()
	org := env.Org(t, tenants.OrgContractor)
	return org, env.Session(t, env.Member(t, org, "member"), org)
}

func grantBody(org uuid.UUID, expires time.Time, scopes ...string) string {
	return fmt.Sprintf(`{"contractor_org":%q,"scopes":["%s"],"expires_at":%q}`, org, strings.Join(scopes, `","`), expires.Format(time.RFC3339))
}

func auditRows(t testing.TB, s *testServer, auth, query string) []tenants.AuditRecord {
	t.Helper()
	return decode[tenants.AuditPage](t, "audit "+query, s.do(t, "GET", "/api/v1/audit?"+query, auth, ""), 200).Items
}

func TestGrantsAPI(t *testing.T) {
	t.Parallel()
	s := newServer(t, nil, "")
	a, b := s.env.NewTenant(t), s.env.NewTenant(t)
	keyA, keyB := bearer(a.APIKey), bearer(b.APIKey)
	org, _ := contractorOrg(t, s.env)
	soon := time.Now().Add(24 * time.Hour).UTC().Truncate(time.Second)

	r := s.do(t, "POST", "/api/v1/grants", keyA, grantBody(org, soon, "telemetry:read", "devices:read"))
	g := decode[tenants.Grant](t, "create grant", r, http.StatusCreated)
	if g.TenantID != a.ID || g.ContractorOrg != org || !g.ExpiresAt.Equal(soon) || g.Status != "active" ||
		!slices.Equal(g.Scopes, []string{"devices:read", "telemetry:read"}) || g.ContractorName == "" || g.CreatedBy == nil {
		t.Errorf("created grant = %+v", g)
	}
	createID := r.header.Get("X-Request-Id")
	list := decode[struct{ Items []tenants.Grant }](t, "grants", s.do(t, "GET", "/api/v1/grants", keyA, ""), 200)
	if len(list.Items) != 1 || list.Items[0].ID != g.ID {
		t.Errorf("grants = %+v", list.Items)
	}
	if got := decode[tenants.Grant](t, "grant", s.do(t, "GET", "/api/v1/grants/"+g.ID.String(), keyA, ""), 200); got.ID != g.ID {
		t.Errorf("grant = %+v", got)
	}

	// Another enterprise neither sees nor revokes it.
	wantProblem(t, "B reads A's grant", s.do(t, "GET", "/api/v1/grants/"+g.ID.String(), keyB, ""), 404, apps.NotFound, "")
	wantProblem(t, "B revokes A's grant", s.do(t, "DELETE", "/api/v1/grants/"+g.ID.String(), keyB, ""), 404, apps.NotFound, "")
	if list := decode[struct{ Items []tenants.Grant }](t, "B's grants", s.do(t, "GET", "/api/v1/grants", keyB, ""), 200); len(list.Items) != 0 {
		t.Errorf("B's grants = %+v", list.Items)
	}
	wantProblem(t, "unknown grant", s.do(t, "GET", "/api/v1/grants/"+uuid.NewString(), keyA, ""), 404, apps.NotFound, "")
	wantProblem(t, "malformed grant id", s.do(t, "DELETE", "/api/v1/grants/nope", keyA, ""), 404, apps.NotFound, "")

	for _, c := range []struct{ name, body, field string }{
		{"unknown org", grantBody(uuid.New(), soon, "devices:read"), "contractor_org"},
		{"enterprise org", grantBody(b.ID, soon, "devices:read"), "contractor_org"},
		{"bad scope", grantBody(org, soon, "audit:read"), "scopes"},
		{"no scopes", fmt.Sprintf(`{"contractor_org":%q,"scopes":[],"expires_at":%q}`, org, soon.Format(time.RFC3339)), "scopes"},
		{"past", grantBody(org, time.Now().Add(-time.Hour), "devices:read"), "expires_at"},
		{"over a year", grantBody(org, time.Now().AddDate(1, 1, 0), "devices:read"), "expires_at"},
		{"scopes not a list", fmt.Sprintf(`{"contractor_org":%q,"scopes":"devices:read","expires_at":%q}`, org, soon.Format(time.RFC3339)), "scopes"},
		{"tenant in the body", fmt.Sprintf(`{"contractor_org":%q,"scopes":["devices:read"],"expires_at":%q,"tenant_id":%q}`, org, soon.Format(time.RFC3339), b.ID), "tenant_id"},
	} {
		wantProblem(t, "create grant, "+c.name, s.do(t, "POST", "/api/v1/grants", keyA, c.body), 400, apps.Invalid, c.field)
	}

	revoked := decode[tenants.Grant](t, "revoke", s.do(t, "DELETE", "/api/v1/grants/"+g.ID.String(), keyA, ""), 200)
	if revoked.Status != "revoked" || revoked.RevokedAt == nil {
		t.Errorf("revoked grant = %+v", revoked)
	}
	again := decode[tenants.Grant](t, "revoke again", s.do(t, "DELETE", "/api/v1/grants/"+g.ID.String(), keyA, ""), 200)
	if again.RevokedAt == nil || !again.RevokedAt.Equal(*revoked.RevokedAt) {
		t.Errorf("revoking twice moved revoked_at: %+v", again)
	}

	// The audit log has one row per request: the grant changes with their
	// detail, the refused writes with their outcome.
	rows := auditRows(t, s, keyA, "action=grant.create")
	if len(rows) != 1 || rows[0].RequestID != createID || rows[0].Status != 201 || rows[0].Result != "ok" ||
		rows[0].ActorKind != "api_key" || rows[0].ActorID == nil || rows[0].IP != "192.0.2.1" ||
		rows[0].Detail["grant"] != g.ID.String() || rows[0].Detail["contractor_org"] != org.String() ||
		rows[0].Detail["route"] != "POST /api/v1/grants" {
		t.Errorf("grant.create rows = %+v", rows)
	}
	if rows := auditRows(t, s, keyA, "action=grant.revoke"); len(rows) != 1 || rows[0].Resource != "grants/"+g.ID.String() {
		t.Errorf("grant.revoke rows = %+v (revoking twice records one change)", rows)
	}
	if rows := auditRows(t, s, keyA, "action="+url.QueryEscape("POST /api/v1/grants")); len(rows) != 8 ||
		rows[0].Result != "error" || rows[0].Status != 400 {
		t.Errorf("refused creations = %d rows (%+v), want 8, error, 400", len(rows), rows)
	}
	if rows := auditRows(t, s, keyA, "action="+url.QueryEscape("DELETE /api/v1/grants/:grant")); len(rows) != 2 ||
		rows[0].Result != "ok" || rows[1].Result != "denied" || rows[1].Status != 404 {
		t.Errorf("DELETE rows = %+v, want revoke-again (ok) and malformed id (denied)", rows)
	}
	// B's attempts are on B's log, not A's; reads by the enterprise are not
	// recorded.
	if rows := auditRows(t, s, keyB, ""); len(rows) != 1 || rows[0].Status != 404 || rows[0].Resource != "/api/v1/grants/"+g.ID.String() {
		t.Errorf("B's audit log = %+v, want its refused DELETE", rows)
	}
	for _, r := range auditRows(t, s, keyA, "limit=1000") {
		if r.Action == "GET /api/v1/grants" || r.Action == "GET /api/v1/grants/:grant" {
			t.Errorf("an enterprise's own read was recorded: %+v", r)
		}
	}
}

func TestContractorAccessThroughAPI(t *testing.T) {
	t.Parallel()
	s := newServer(t, nil, "")
	env := s.env
	a, b := env.NewTenant(t), env.NewTenant(t)
	devA, _ := env.Device(t, a, "mill-a", "jet-mill")
	devB, _ := env.Device(t, b, "mill-b", "jet-mill")
	org, token := contractorOrg(t, env)
	c := bearer(token)

	// No grant: refused on every route, the same for a real and an unknown
	// enterprise, and without naming one.
	for _, ref := range []string{a.Slug, a.ID.String(), "no-such-enterprise", uuid.NewString()} {
		r := s.as(t, "GET", "/api/v1/devices", c, ref, "")
		if p := wantProblem(t, "no grant, "+ref, r, 403, apps.Forbidden, ""); p.Detail != "no active grant from this tenant" {
			t.Errorf("no grant, %s: detail %q", ref, p.Detail)
		}
	}
	wantProblem(t, "no tenant named", s.as(t, "GET", "/api/v1/devices", c, "", ""), 403, apps.Forbidden, "")

	g := decode[tenants.Grant](t, "grant", s.do(t, "POST", "/api/v1/grants", bearer(a.APIKey), grantBody(org, time.Now().Add(time.Hour), "devices:read")), 201)

	// Within the grant: A's devices, nothing of B's.
	r := s.as(t, "GET", "/api/v1/devices", c, a.Slug, "")
	if r.status != 200 || !bytes.Contains(r.body, []byte(devA.ID.String())) || bytes.Contains(r.body, []byte(devB.ID.String())) {
		t.Errorf("A's devices through the grant: %v", r)
	}
	readID := r.header.Get("X-Request-Id")
	wantProblem(t, "B's device through A's grant", s.as(t, "GET", "/api/v1/devices/"+devB.ID.String(), c, a.Slug, ""), 404, apps.NotFound, "")
	for _, ref := range []string{b.Slug, b.ID.String()} {
		wantProblem(t, "naming B", s.as(t, "GET", "/api/v1/devices", c, ref, ""), 403, apps.Forbidden, "")
	}

	// Generated from the route table: every tenant route the grant's one
	// scope does not cover is refused, and so is every route on B.
	var checked int
	for _, rt := range s.routes() {
		perm, _ := s.srv.Permission(rt.Method, rt.Path)
		if !isTenantRoute(rt) || perm == tenants.PermPublic || perm == tenants.PermSelfRead {
			continue
		}
		target := fill(rt.Path, func(p string) string {
			if p == "device" {
				return devA.Key
			}
			return uuid.NewString()
		})
		checked++
		if perm != tenants.PermDevicesRead {
			wantProblem(t, rt.Method+" "+rt.Path+" outside the grant", s.as(t, rt.Method, target, c, a.Slug, bodyFor(rt.Method)), 403, apps.Forbidden, "")
		}
		wantProblem(t, rt.Method+" "+rt.Path+" on B", s.as(t, rt.Method, target, c, b.Slug, bodyFor(rt.Method)), 403, apps.Forbidden, "")
	}
	if checked < 10 {
		t.Errorf("only %d routes checked", checked)
	}

	// Every read by the contractor is in A's audit log, with who and which
	// request.
	key := bearer(a.APIKey)
	rows := auditRows(t, s, key, "action="+url.QueryEscape("GET /api/v1/devices"))
	if len(rows) != 1 || rows[0].RequestID != readID || rows[0].ActorOrg == nil || *rows[0].ActorOrg != org ||
		rows[0].ActorOrgKind != "contractor" || rows[0].ActorKind != "user" || rows[0].ActorID == nil ||
		rows[0].ActorName != "Test member" || rows[0].Result != "ok" {
		t.Errorf("contractor read rows = %+v", rows)
	}
	if rows := auditRows(t, s, key, "action="+url.QueryEscape("GET /api/v1/devices/:device/series")); len(rows) != 1 ||
		rows[0].Result != "denied" || rows[0].Status != 403 {
		t.Errorf("refused series read rows = %+v", rows)
	}
	if rows := auditRows(t, s, key, "actor="+org.String()+"&action=contractor.access"); len(rows) != 2 {
		t.Errorf("refusals before the grant on A = %d rows, want 2 (slug and id)", len(rows))
	}
	for _, r := range auditRows(t, s, bearer(b.APIKey), "limit=1000") {
		if r.Action != "contractor.access" {
			t.Errorf("B's log shows %+v", r)
		}
	}

	// Revoked: refused within 5 s.
	s.do(t, "DELETE", "/api/v1/grants/"+g.ID.String(), key, "")
	deadline := time.Now().Add(5 * time.Second)
	for s.as(t, "GET", "/api/v1/devices", c, a.Slug, "").status != 403 {
		if time.Now().After(deadline) {
			t.Fatal("a revoked grant still admits after 5 s")
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// Operators' reads are audited on the enterprise they read; the export
// streams the same rows as CSV.
func TestAuditOperatorReadsAndExport(t *testing.T) {
	t.Parallel()
	const token = "operator-token-audit"
	s := newServer(t, nil, token, func(g *echo.Group, r *tenants.Routes) {
		r.Add(g, "POST", "/test-audit-panic", tenants.PermTenantRead, func(echo.Context) error { panic("boom") })
	})
	a := s.env.NewTenant(t)
	key := bearer(a.APIKey)
	r := s.do(t, "GET", "/api/v1/operator/enterprises/"+a.Slug, bearer(token), "")
	if r.status != 200 {
		t.Fatalf("operator read: %v", r)
	}
	rows := auditRows(t, s, key, "action="+url.QueryEscape("GET /api/v1/operator/enterprises/:tenant"))
	if len(rows) != 1 || rows[0].ActorKind != "operator" || rows[0].RequestID != r.header.Get("X-Request-Id") {
		t.Errorf("operator read rows = %+v", rows)
	}
	if r := s.serve("POST", "/api/v1/test-audit-panic", key, "{}"); r.status != 500 {
		t.Fatalf("panic: %v", r)
	}
	if rows := auditRows(t, s, key, "action="+url.QueryEscape("POST /api/v1/test-audit-panic")); len(rows) != 1 ||
		rows[0].Result != "error" || rows[0].Status != 500 {
		t.Errorf("a write that panicked: %+v", rows)
	}
	// A name that would be a spreadsheet formula.
	if err := s.env.Tenants.Audit(context.Background(), tenants.AuditEntry{Tenant: a.ID, Action: "=HYPERLINK(\"x\")",
		Result: tenants.AuditOK, Actor: &tenants.Principal{Kind: tenants.KindUser, Name: "+cmd"}}); err != nil {
		t.Fatal(err)
	}

	all := auditRows(t, s, key, "limit=1000")
	exp := s.do(t, "GET", "/api/v1/audit/export", key, "")
	if exp.status != 200 || !strings.HasPrefix(exp.header.Get("Content-Type"), "text/csv") ||
		!strings.HasPrefix(exp.header.Get("Content-Disposition"), "attachment;") {
		t.Fatalf("export: %v %v", exp, exp.header)
	}
	recs, err := csv.NewReader(bytes.NewReader(exp.body)).ReadAll()
	if err != nil {
		t.Fatalf("export is not CSV: %v", err)
	}
	if len(recs) != len(all)+1 || strings.Join(recs[0], ",") != "id,at,actor_kind,actor_id,actor_org,actor_org_kind,actor_name,action,resource,result,status,ip,request_id,detail" {
		t.Fatalf("export = %d records (header %v), want %d rows and the header", len(recs), recs[0], len(all))
	}
	for i, rec := range recs[1:] {
		if rec[0] != fmt.Sprint(all[i].ID) {
			t.Errorf("export row %d = %v, want id %d", i, rec, all[i].ID)
		}
	}
	if recs[1][7] != `'=HYPERLINK("x")` || recs[1][6] != "'+cmd" {
		t.Errorf("formula-like cells exported as %q, %q", recs[1][7], recs[1][6])
	}
	filtered := s.do(t, "GET", "/api/v1/audit/export?action="+url.QueryEscape("POST /api/v1/test-audit-panic"), key, "")
	if recs, err := csv.NewReader(bytes.NewReader(filtered.body)).ReadAll(); err != nil || len(recs) != 2 {
		t.Errorf("filtered export = %v, %v", recs, err)
	}
	b := s.env.NewTenant(t)
	if recs, err := csv.NewReader(bytes.NewReader(s.do(t, "GET", "/api/v1/audit/export", bearer(b.APIKey), "").body)).ReadAll(); err != nil || len(recs) != 1 {
		t.Errorf("B's export = %v, %v; want the header alone", recs, err)
	}
	for _, c := range []struct{ q, field string }{
		{"limit=0", "limit"}, {"limit=1001", "limit"}, {"limit=x", "limit"}, {"cursor=%21", "cursor"},
		{"from=yesterday", "from"}, {"to=x", "to"}, {"from=2026-01-02T00:00:00Z&to=2026-01-01T00:00:00Z", "from"},
		{"actor=%FF", "actor"}, {"action=%00", "action"},
	} {
		wantProblem(t, "audit "+c.q, s.do(t, "GET", "/api/v1/audit?"+c.q, key, ""), 400, apps.Invalid, c.field)
	}
	wantProblem(t, "export from=x", s.do(t, "GET", "/api/v1/audit/export?from=x", key, ""), 400, apps.Invalid, "from")
}
