package tenants_test

import (
	"context"
	"slices"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"

	"github.com/nxcloud/nxcloud/apps"
	"github.com/nxcloud/nxcloud/tenants"
	"github.com/nxcloud/nxcloud/tenants/tenanttest"
)

func auditLog(t testing.TB, env *tenanttest.Env, tn tenanttest.Tenant, q tenants.AuditQuery) []tenants.AuditRecord {
	t.Helper()
	page, err := env.Tenants.AuditLog(admin(tn), q)
	if err != nil {
		t.Fatalf("audit log of %s: %v", tn.Slug, err)
	}
	return page.Items
}

func TestAuditRecordsGrantChangesAndRefusals(t *testing.T) {
	t.Parallel()
	env := tenanttest.New(t)
	a, b := env.NewTenant(t), env.NewTenant(t)
	org := newOrg(t, env, tenants.OrgContractor)
	ctx := tenants.WithRequest(admin(a), "198.51.100.7", "req-grant-1")
	owner, _ := tenants.PrincipalFrom(ctx)
	g, err := env.Tenants.CreateGrant(ctx, tenants.GrantInput{ContractorOrg: org.String(), Scopes: []string{"devices:read"},
		ExpiresAt: time.Now().Add(time.Hour).Format(time.RFC3339)})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := env.Tenants.RevokeGrant(tenants.WithRequest(admin(a), "198.51.100.7", "req-grant-2"), g.ID.String()); err != nil {
		t.Fatal(err)
	}
	for action, reqID := range map[string]string{"grant.create": "req-grant-1", "grant.revoke": "req-grant-2"} {
		rows := auditLog(t, env, a, tenants.AuditQuery{Action: action})
		if len(rows) != 1 {
			t.Fatalf("%s rows = %+v, want 1", action, rows)
		}
		r := rows[0]
		if r.ActorKind != tenants.KindUser || r.ActorName != "Olga Owner" || r.ActorOrgKind != tenants.OrgEnterprise ||
			r.Result != tenants.AuditOK || r.RequestID != reqID || r.IP != "198.51.100.7" || r.Resource != "grants/"+g.ID.String() {
			t.Errorf("%s row = %+v", action, r)
		}
		if r.Detail["grant"] != g.ID.String() || r.Detail["contractor_org"] != org.String() ||
			!slices.Equal(r.Detail["scopes"].([]any), []any{"devices:read"}) {
			t.Errorf("%s detail = %v", action, r.Detail)
		}
		if r.ActorID == nil || *r.ActorID == uuid.Nil {
			t.Errorf("%s row has no actor id", action)
		}
	}
	// By actor: the owner's id, the owner's name.
	if rows := auditLog(t, env, a, tenants.AuditQuery{Actor: owner.OrgID.String()}); len(rows) != 2 {
		t.Errorf("rows of the owner's organisation = %d, want 2", len(rows))
	}
	if rows := auditLog(t, env, a, tenants.AuditQuery{Actor: "Olga Owner"}); len(rows) != 2 {
		t.Errorf("rows by the owner's name = %d, want 2", len(rows))
	}

	// A refused contractor is recorded on the tenant it named.
	c := contractor(org)
	if _, err := env.Tenants.ContractorTenant(tenants.WithRequest(context.Background(), "203.0.113.9", "req-c"), c, a.Slug); err == nil {
		t.Fatal("revoked grant admits")
	}
	rows := auditLog(t, env, a, tenants.AuditQuery{Action: "contractor.access"})
	if len(rows) != 1 || rows[0].Result != tenants.AuditDenied || rows[0].Status != 403 || rows[0].ActorOrg == nil ||
		*rows[0].ActorOrg != org || rows[0].ActorOrgKind != tenants.OrgContractor || rows[0].RequestID != "req-c" {
		t.Errorf("refused contractor rows = %+v", rows)
	}

	// B sees none of it.
	for _, q := range []tenants.AuditQuery{{}, {Action: "grant.create"}, {Actor: org.String()}} {
		if rows := auditLog(t, env, b, q); len(rows) != 0 {
			t.Errorf("B's audit log %+v shows %+v", q, rows)
		}
	}
	if _, err := env.Tenants.AuditLog(context.Background(), tenants.AuditQuery{}); apps.Code(err) != apps.Unauthorized {
		t.Errorf("audit log without a tenant: %v", err)
	}
}

func TestAuditLogPagingAndFilters(t *testing.T) {
	t.Parallel()
	env := tenanttest.New(t)
	a := env.NewTenant(t)
	ctx := admin(a)
	for i := range 7 {
		err := env.Tenants.Audit(ctx, tenants.AuditEntry{Tenant: a.ID, Action: []string{"x.even", "x.odd"}[i%2],
			Resource: "things/" + string(rune('a'+i)), Result: tenants.AuditOK, Status: 200,
			Detail: map[string]any{"i": i, "nul": "a\x00b", "bad": "\xff"}})
		if err != nil {
			t.Fatal(err)
		}
	}
	// Text PostgreSQL would refuse is stored cleaned.
	err := env.Tenants.Audit(ctx, tenants.AuditEntry{Tenant: a.ID, Action: "x.\x00weird\xff", Resource: "r\x00", Result: tenants.AuditError})
	if err != nil {
		t.Fatalf("audit with NUL and invalid UTF-8: %v", err)
	}
	if err := env.Tenants.Audit(ctx, tenants.AuditEntry{Tenant: a.ID, Action: "x", Result: "maybe"}); err == nil {
		t.Error("an unknown result was stored")
	}

	var seen []string
	cursor := ""
	for pages := 0; ; pages++ {
		if pages > 10 {
			t.Fatal("paging does not end")
		}
		page, err := env.Tenants.AuditLog(ctx, tenants.AuditQuery{Limit: 3, Cursor: cursor})
		if err != nil {
			t.Fatal(err)
		}
		for _, r := range page.Items {
			seen = append(seen, r.Resource)
		}
		if page.NextCursor == "" {
			break
		}
		cursor = page.NextCursor
	}
	want := []string{"r", "things/g", "things/f", "things/e", "things/d", "things/c", "things/b", "things/a"}
	if !slices.Equal(seen, want) {
		t.Errorf("paged %v, want %v (newest first)", seen, want)
	}
	if rows := auditLog(t, env, a, tenants.AuditQuery{Action: "x.odd"}); len(rows) != 3 {
		t.Errorf("x.odd rows = %d, want 3", len(rows))
	}
	now := time.Now()
	if rows := auditLog(t, env, a, tenants.AuditQuery{From: now.Add(-time.Hour), To: now.Add(time.Hour)}); len(rows) != 8 {
		t.Errorf("rows within the hour = %d, want 8", len(rows))
	}
	if rows := auditLog(t, env, a, tenants.AuditQuery{To: now.Add(-time.Hour)}); len(rows) != 0 {
		t.Errorf("rows before an hour ago = %d, want 0", len(rows))
	}
	var exported []string
	if err := env.Tenants.ExportAudit(ctx, tenants.AuditQuery{Action: "x.even"}, func(r tenants.AuditRecord) error {
		exported = append(exported, r.Resource)
		return nil
	}); err != nil || !slices.Equal(exported, []string{"things/g", "things/e", "things/c", "things/a"}) {
		t.Errorf("export of x.even = %v, %v", exported, err)
	}
	for _, c := range []struct {
		q     tenants.AuditQuery
		field string
	}{
		{tenants.AuditQuery{Limit: 1001}, "limit"},
		{tenants.AuditQuery{Limit: -1}, "limit"},
		{tenants.AuditQuery{Cursor: "!!"}, "cursor"},
		{tenants.AuditQuery{Cursor: "LTE"}, "cursor"}, // "-1"
		{tenants.AuditQuery{Action: "a\x00"}, "action"},
		{tenants.AuditQuery{Actor: "\xff"}, "actor"},
		{tenants.AuditQuery{From: now, To: now}, "from"},
	} {
		_, err := env.Tenants.AuditLog(ctx, c.q)
		if ae, ok := err.(*apps.Error); !ok || ae.Code != apps.Invalid || ae.Field != c.field {
			t.Errorf("%+v: %v, want invalid %s", c.q, err, c.field)
		}
	}
}

// The audit log is append-only for the app role: it may read its tenant's
// rows and do nothing else.
func TestAuditLogIsReadOnlyForTheApp(t *testing.T) {
	t.Parallel()
	env := tenanttest.New(t)
	a, b := env.NewTenant(t), env.NewTenant(t)
	ctx := context.Background()
	for _, tn := range []tenanttest.Tenant{a, b} {
		if err := env.Tenants.Audit(admin(tn), tenants.AuditEntry{Tenant: tn.ID, Action: "seed", Result: tenants.AuditOK}); err != nil {
			t.Fatal(err)
		}
	}
	inA := func(sql string) error {
		return tenants.InTx(a.Ctx(), env.DB.App, func(tx pgx.Tx) error {
			_, err := tx.Exec(ctx, sql)
			return err
		})
	}
	for _, sql := range []string{
		`UPDATE audit_log SET result = 'ok'`,
		`UPDATE audit_log SET action = 'nothing happened' WHERE tenant_id = nx_tenant()`,
		`DELETE FROM audit_log`,
		`DELETE FROM audit_log WHERE tenant_id = nx_tenant()`,
		`TRUNCATE audit_log`,
		`INSERT INTO audit_log (tenant_id, actor_kind, action, result) VALUES (nx_tenant(), 'user', 'forged', 'ok')`,
	} {
		if err := inA(sql); !isPgCode(err, "42501") {
			t.Errorf("%s as nxcloud_app: %v, want permission denied", sql, err)
		}
	}
	var n, other int
	err := tenants.InTx(a.Ctx(), env.DB.App, func(tx pgx.Tx) error {
		return tx.QueryRow(ctx, `SELECT count(*), count(*) FILTER (WHERE tenant_id <> nx_tenant()) FROM audit_log`).Scan(&n, &other)
	})
	if err != nil || n != 1 || other != 0 {
		t.Errorf("A's view of audit_log: %d rows, %d of others, %v; want 1, 0", n, other, err)
	}
	// Not even the owner rewrites history.
	if _, err := env.DB.System.Exec(ctx, `UPDATE audit_log SET result = 'ok' WHERE tenant_id = $1`, a.ID); !isPgCode(err, "42501") {
		t.Errorf("UPDATE as the owner: %v, want refused", err)
	}
	if _, err := env.DB.System.Exec(ctx, `DELETE FROM audit_log WHERE tenant_id = $1`, a.ID); !isPgCode(err, "42501") {
		t.Errorf("DELETE as the owner: %v, want refused", err)
	}
}
