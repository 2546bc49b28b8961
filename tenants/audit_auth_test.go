package tenants_test

import (
	"context"
	"testing"

	"github.com/google/uuid"

	"github.com/nxcloud/nxcloud/apps"
	"github.com/nxcloud/nxcloud/tenants"
	"github.com/nxcloud/nxcloud/tenants/tenanttest"
)

type loginRow struct {
	kind, result, reason string
	status               int
	user                 *uuid.UUID
	tenant               *uuid.UUID
	locked               bool
}

// loginRows returns the auth.login rows from a client address, oldest first.
func loginRows(t *testing.T, env *tenanttest.Env, ip string) []loginRow {
	t.Helper()
	rows, err := env.DB.System.Query(context.Background(), `SELECT actor_kind, result, coalesce(detail->>'reason', ''), status,
		actor_id, tenant_id, coalesce((detail->>'locked')::boolean, false)
		FROM audit_log WHERE action = 'auth.login' AND ip = $1 ORDER BY id`, ip)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	var out []loginRow
	for rows.Next() {
		var r loginRow
		if err := rows.Scan(&r.kind, &r.result, &r.reason, &r.status, &r.user, &r.tenant, &r.locked); err != nil {
			t.Fatal(err)
		}
		out = append(out, r)
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	return out
}

// Throttled attempts are recorded once per window, so a flood does not grow
// the audit log faster than the throttle admits attempts.
func TestThrottledLoginsAuditedOnce(t *testing.T) {
	t.Parallel()
	env := tenanttest.New(t)
	ctx := context.Background()
	a := env.NewTenant(t)

	// From one address: three attempts, then refusals; the first refusal is
	// recorded, the next is not.
	env.Tenants.LoginLimits.PerIP = 3
	ip := "audit-ip-" + uuid.NewString()
	for range 5 {
		_, err := env.Tenants.Login(ctx, tenants.LoginInput{Email: "nobody-" + uuid.NewString() + "@test.example", Password: "x"},
			tenants.Client{IP: ip})
		if c := apps.Code(err); c != apps.Unauthorized && c != apps.QuotaExceeded {
			t.Fatalf("login: %v", err)
		}
	}
	rows := loginRows(t, env, ip)
	if len(rows) != 4 || rows[2].reason != "unknown_account" || rows[3].reason != "throttled" || rows[3].status != 429 ||
		rows[3].result != "denied" || rows[3].kind != "anonymous" {
		t.Errorf("rows from a throttled address = %+v, want 3 failures and 1 refusal", rows)
	}

	// On one account: the failure that locks it is marked; the refusals of
	// the locked account are not recorded.
	env.Tenants.LoginLimits.PerIP = 100000
	env.Tenants.LoginLimits.MaxFailures = 2
	m := env.Member(t, a.ID, "operator")
	ip = "audit-ip-" + uuid.NewString()
	for _, pw := range []string{"wrong 1", "wrong 2", m.Password, m.Password} {
		_, _ = env.Tenants.Login(ctx, tenants.LoginInput{Email: m.Email, Password: pw}, tenants.Client{IP: ip})
	}
	rows = loginRows(t, env, ip)
	if len(rows) != 2 || rows[0].locked || !rows[1].locked || rows[1].reason != "wrong_password" ||
		rows[1].user == nil || *rows[1].user != m.ID || rows[1].tenant == nil || *rows[1].tenant != a.ID {
		t.Errorf("rows of a locked account = %+v, want 2 failures, the second locking it", rows)
	}
}

// A failed login names a tenant only when the account belongs to it: the
// organisation named, or the account's only one.
func TestFailedLoginAttribution(t *testing.T) {
	t.Parallel()
	env := tenanttest.New(t)
	ctx := context.Background()
	a, b := env.NewTenant(t), env.NewTenant(t)
	m := env.Member(t, a.ID, "viewer")
	attempt := func(org string) loginRow {
		t.Helper()
		ip := "audit-ip-" + uuid.NewString()
		_, _ = env.Tenants.Login(ctx, tenants.LoginInput{Email: m.Email, Password: "wrong password", Org: org}, tenants.Client{IP: ip})
		rows := loginRows(t, env, ip)
		if len(rows) != 1 {
			t.Fatalf("%d rows", len(rows))
		}
		return rows[0]
	}
	if r := attempt(""); r.tenant == nil || *r.tenant != a.ID {
		t.Errorf("the only membership: %+v", r)
	}
	if r := attempt(b.ID.String()); r.tenant != nil || r.user == nil {
		t.Errorf("naming an enterprise the user is not in: %+v, want no tenant", r)
	}
	if _, err := env.Tenants.EnsureMember(ctx, b.ID, m.Email, "", "", "viewer"); err != nil {
		t.Fatal(err)
	}
	if r := attempt(""); r.tenant != nil {
		t.Errorf("two memberships, none named: %+v, want no tenant", r)
	}
	if r := attempt(b.ID.String()); r.tenant == nil || *r.tenant != b.ID {
		t.Errorf("naming B: %+v", r)
	}
}
