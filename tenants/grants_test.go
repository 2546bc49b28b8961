package tenants_test

import (
	"context"
	"errors"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/nxcloud/nxcloud/apps"
	"github.com/nxcloud/nxcloud/tenants"
	"github.com/nxcloud/nxcloud/tenants/tenanttest"
)

func newOrg(t testing.TB, env *tenanttest.Env, kind string) uuid.UUID { return env.Org(t, kind) }

// contractor is a member of a contractor organisation, as authentication
// makes it before a grant is checked.
func contractor(org uuid.UUID) tenants.Principal {
	return tenants.Principal{Kind: tenants.KindUser, UserID: uuid.New(), OrgID: org, OrgKind: tenants.OrgContractor,
		Role: "member", Name: "Carla Contractor"}
}

// admin is tenant tn's owner acting through the API.
func admin(tn tenanttest.Tenant) context.Context {
	return tenants.WithPrincipal(context.Background(), tenants.Principal{Kind: tenants.KindUser, UserID: uuid.New(),
		OrgID: tn.ID, OrgKind: tenants.OrgEnterprise, Role: "owner", TenantID: tn.ID, Name: "Olga Owner"})
}

func grant(t testing.TB, env *tenanttest.Env, tn tenanttest.Tenant, org uuid.UUID, scopes ...string) tenants.Grant {
	t.Helper()
	g, err := env.Tenants.CreateGrant(admin(tn), tenants.GrantInput{ContractorOrg: org.String(), Scopes: scopes,
		ExpiresAt: time.Now().Add(time.Hour).Format(time.RFC3339)})
	if err != nil {
		t.Fatalf("grant %v: %v", scopes, err)
	}
	return g
}

// wantNoGrant checks the one refusal a contractor gets, whatever the reason.
func wantNoGrant(t testing.TB, what string, p tenants.Principal, err error) {
	t.Helper()
	var ae *apps.Error
	if !errors.As(err, &ae) || ae.Code != apps.Forbidden || ae.Message != "no active grant from this tenant" {
		t.Errorf("%s: %+v, %v; want forbidden, no active grant from this tenant", what, p, err)
	}
}

// eventually polls until ok holds, for at most 5 s (the revocation bound).
func eventually(t testing.TB, what string, ok func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !ok() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within 5 s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func TestContractorNeedsALiveGrant(t *testing.T) {
	t.Parallel()
	env := tenanttest.New(t)
	ctx := context.Background()
	a, b := env.NewTenant(t), env.NewTenant(t)
	devA, _ := env.Device(t, a, "press-a", "jet-mill")
	devB, _ := env.Device(t, b, "press-b", "jet-mill")
	org, other := newOrg(t, env, tenants.OrgContractor), newOrg(t, env, tenants.OrgContractor)
	p := contractor(org)

	// Without a grant, the answer is the same for a real tenant, an unknown
	// one, and nonsense.
	for _, ref := range []string{a.Slug, a.ID.String(), "no-such-tenant", uuid.NewString(), "", "Ünïcode\x00", strings.Repeat("x", 300)} {
		got, err := env.Tenants.ContractorTenant(ctx, p, ref)
		wantNoGrant(t, "no grant, tenant "+ref, got, err)
	}

	g := grant(t, env, a, org, tenants.PermDevicesRead)
	if g.Status != tenants.GrantActive || g.TenantID != a.ID || g.ContractorOrg != org || !slices.Equal(g.Scopes, []string{tenants.PermDevicesRead}) {
		t.Errorf("grant = %+v", g)
	}
	for _, ref := range []string{a.Slug, a.ID.String(), strings.ToUpper(a.ID.String())} {
		got, err := env.Tenants.ContractorTenant(ctx, p, ref)
		if err != nil || got.TenantID != a.ID || !slices.Equal(got.Scopes, []string{tenants.PermDevicesRead}) || got.UserID != p.UserID {
			t.Fatalf("with a grant, tenant %s: %+v, %v", ref, got, err)
		}
	}
	pa, _ := env.Tenants.ContractorTenant(ctx, p, a.Slug)

	// Only within the grant's scopes.
	if err := tenants.Authorize(pa, tenants.PermDevicesRead); err != nil {
		t.Errorf("devices:read within the grant: %v", err)
	}
	for _, perm := range []string{tenants.PermTelemetryRead, tenants.PermDevicesWrite, tenants.PermGrantsRead, tenants.PermAuditRead, tenants.PermOperate} {
		if err := tenants.Authorize(pa, perm); apps.Code(err) != apps.Forbidden {
			t.Errorf("%s outside the grant: %v", perm, err)
		}
	}
	// It reads the granting tenant's rows and nobody else's.
	actx := tenants.WithPrincipal(ctx, pa)
	if d, err := env.Tenants.Device(actx, devA.Key); err != nil || d.ID != devA.ID {
		t.Errorf("A's device through the grant: %+v, %v", d, err)
	}
	if d, err := env.Tenants.Device(actx, devB.ID.String()); apps.Code(err) != apps.NotFound {
		t.Errorf("B's device through A's grant: %+v, %v", d, err)
	}
	// Not on B, not for another contractor, not for a principal of another kind.
	for _, ref := range []string{b.Slug, b.ID.String()} {
		got, err := env.Tenants.ContractorTenant(ctx, p, ref)
		wantNoGrant(t, "A's grant used on B", got, err)
	}
	got, err := env.Tenants.ContractorTenant(ctx, contractor(other), a.Slug)
	wantNoGrant(t, "another contractor", got, err)
	notContractor := p
	notContractor.OrgKind = tenants.OrgAssociation
	got, err = env.Tenants.ContractorTenant(ctx, notContractor, a.Slug)
	wantNoGrant(t, "an association member", got, err)

	// A second grant adds its scopes.
	grant(t, env, a, org, tenants.PermTelemetryRead, tenants.PermDevicesRead)
	if got, err := env.Tenants.ContractorTenant(ctx, p, a.Slug); err != nil ||
		!slices.Equal(got.Scopes, []string{tenants.PermDevicesRead, tenants.PermTelemetryRead}) {
		t.Errorf("two grants: %+v, %v", got, err)
	}

	// A suspended enterprise admits no contractor.
	if _, err := env.DB.System.Exec(ctx, `UPDATE tenants SET status = 'suspended' WHERE id = $1`, a.ID); err != nil {
		t.Fatal(err)
	}
	eventually(t, "suspended tenant", func() bool {
		_, err := env.Tenants.ContractorTenant(ctx, p, a.Slug)
		return err != nil
	})
}

func TestExpiredGrantAdmitsNoOne(t *testing.T) {
	t.Parallel()
	env := tenanttest.New(t)
	ctx := context.Background()
	a := env.NewTenant(t)
	org := newOrg(t, env, tenants.OrgContractor)
	p := contractor(org)
	// Expired an hour ago (the API refuses to create such a grant).
	if _, err := env.DB.System.Exec(ctx, `INSERT INTO grants (tenant_id, contractor_org_id, scopes, expires_at, created_at)
		VALUES ($1, $2, '{devices:read}', now() - interval '1 hour', now() - interval '2 hours')`, a.ID, org); err != nil {
		t.Fatal(err)
	}
	got, err := env.Tenants.ContractorTenant(ctx, p, a.Slug)
	wantNoGrant(t, "expired grant", got, err)
	gs, err := env.Tenants.Grants(admin(a))
	if err != nil || len(gs) != 1 || gs[0].Status != tenants.GrantExpired {
		t.Errorf("grants = %+v, %v; want the one, expired", gs, err)
	}

	// A grant that expires while cached stops admitting when it expires, not
	// a cache period later.
	if _, err := env.DB.System.Exec(ctx, `INSERT INTO grants (tenant_id, contractor_org_id, scopes, expires_at)
		VALUES ($1, $2, '{devices:read}', now() + interval '1 second')`, a.ID, org); err != nil {
		t.Fatal(err)
	}
	slow := tenants.NewService(env.DB, nil, time.Hour)
	tenants.SetGrantCacheTTL(slow, time.Hour)
	if _, err := slow.ContractorTenant(ctx, p, a.Slug); err != nil {
		t.Fatalf("grant about to expire: %v", err)
	}
	eventually(t, "expiry while cached", func() bool {
		_, err := slow.ContractorTenant(ctx, p, a.Slug)
		return err != nil
	})
}

func TestRevocationReachesEveryReplica(t *testing.T) {
	t.Parallel()
	env := tenanttest.New(t)
	ctx := context.Background()
	a := env.NewTenant(t)
	org := newOrg(t, env, tenants.OrgContractor)
	p := contractor(org)
	g := grant(t, env, a, org, tenants.PermDevicesRead, tenants.PermTelemetryRead)

	// A second replica that would trust its cache for an hour: only the Redis
	// announcement can tell it (UseRedisGrants returns once subscribed).
	replica := tenants.NewService(env.DB, nil, time.Hour)
	tenants.SetGrantCacheTTL(replica, time.Hour)
	rctx, cancel := context.WithCancel(ctx)
	defer cancel()
	replica.UseRedisGrants(rctx, env.Redis, nil)
	// And one without Redis, bounded by the cache TTL.
	plain := tenants.NewService(env.DB, nil, 0)
	for _, s := range []*tenants.Service{env.Tenants, replica, plain} {
		if _, err := s.ContractorTenant(ctx, p, a.Slug); err != nil {
			t.Fatalf("before revocation: %v", err)
		}
	}
	revoked, err := env.Tenants.RevokeGrant(admin(a), g.ID.String())
	if err != nil || revoked.Status != tenants.GrantRevoked || revoked.RevokedAt == nil {
		t.Fatalf("revoke: %+v, %v", revoked, err)
	}
	// At once where it was revoked; within 5 s elsewhere.
	got, err := env.Tenants.ContractorTenant(ctx, p, a.Slug)
	wantNoGrant(t, "revoked, same replica", got, err)
	for name, s := range map[string]*tenants.Service{"Redis replica": replica, "replica without Redis": plain} {
		eventually(t, name, func() bool {
			_, err := s.ContractorTenant(ctx, p, a.Slug)
			return err != nil
		})
	}
	// Revoking again changes nothing.
	again, err := env.Tenants.RevokeGrant(admin(a), g.ID.String())
	if err != nil || again.RevokedAt == nil || !again.RevokedAt.Equal(*revoked.RevokedAt) {
		t.Errorf("revoke twice: %+v, %v", again, err)
	}
	// A new grant admits at once where it was made.
	grant(t, env, a, org, tenants.PermDevicesRead)
	if _, err := env.Tenants.ContractorTenant(ctx, p, a.Slug); err != nil {
		t.Errorf("after a new grant: %v", err)
	}
}

func TestCreateGrantValidation(t *testing.T) {
	t.Parallel()
	env := tenanttest.New(t)
	a := env.NewTenant(t)
	org := newOrg(t, env, tenants.OrgContractor)
	assoc := newOrg(t, env, tenants.OrgAssociation)
	in := func(org, exp string, scopes ...string) tenants.GrantInput {
		return tenants.GrantInput{ContractorOrg: org, Scopes: scopes, ExpiresAt: exp}
	}
	soon := time.Now().Add(time.Hour).Format(time.RFC3339)
	for _, c := range []struct {
		name  string
		in    tenants.GrantInput
		field string
	}{
		{"org not a UUID", in("acme", soon, "devices:read"), "contractor_org"},
		{"org missing", in("", soon, "devices:read"), "contractor_org"},
		{"unknown org", in(uuid.NewString(), soon, "devices:read"), "contractor_org"},
		{"association org", in(assoc.String(), soon, "devices:read"), "contractor_org"},
		{"enterprise org", in(a.ID.String(), soon, "devices:read"), "contractor_org"},
		{"no scopes", in(org.String(), soon), "scopes"},
		{"unknown scope", in(org.String(), soon, "devices:read", "devices:delete"), "scopes"},
		{"operator scope", in(org.String(), soon, tenants.PermOperate), "scopes"},
		{"grants scope", in(org.String(), soon, tenants.PermGrantsWrite), "scopes"},
		{"audit scope", in(org.String(), soon, tenants.PermAuditRead), "scopes"},
		{"empty app", in(org.String(), soon, "apps:"), "scopes"},
		{"bad app", in(org.String(), soon, "apps:Batch/x"), "scopes"},
		{"expiry missing", in(org.String(), "", "devices:read"), "expires_at"},
		{"expiry not RFC 3339", in(org.String(), "tomorrow", "devices:read"), "expires_at"},
		{"expiry without zone", in(org.String(), "2030-01-01T00:00:00", "devices:read"), "expires_at"},
		{"expiry past", in(org.String(), time.Now().Add(-time.Minute).Format(time.RFC3339), "devices:read"), "expires_at"},
		{"expiry over a year", in(org.String(), time.Now().AddDate(1, 0, 2).Format(time.RFC3339), "devices:read"), "expires_at"},
	} {
		_, err := env.Tenants.CreateGrant(admin(a), c.in)
		var ae *apps.Error
		if !errors.As(err, &ae) || ae.Code != apps.Invalid || ae.Field != c.field {
			t.Errorf("%s: %v, want invalid %s", c.name, err, c.field)
		}
	}
	// The unknown and the wrong-kind organisation read alike.
	_, e1 := env.Tenants.CreateGrant(admin(a), in(uuid.NewString(), soon, "devices:read"))
	_, e2 := env.Tenants.CreateGrant(admin(a), in(a.ID.String(), soon, "devices:read"))
	if e1 == nil || e2 == nil || e1.Error() != e2.Error() {
		t.Errorf("unknown org %v, enterprise org %v: want the same answer", e1, e2)
	}
	if gs, err := env.Tenants.Grants(admin(a)); err != nil || len(gs) != 0 {
		t.Errorf("refused grants were stored: %+v, %v", gs, err)
	}
	if _, err := env.Tenants.CreateGrant(context.Background(), in(org.String(), soon, "devices:read")); apps.Code(err) != apps.Unauthorized {
		t.Errorf("grant without a tenant: %v", err)
	}
	g, err := env.Tenants.CreateGrant(admin(a), in(org.String(), time.Now().AddDate(1, 0, 0).Format(time.RFC3339),
		"telemetry:read", "apps:batch", "devices:read", "telemetry:read"))
	if err != nil || !slices.Equal(g.Scopes, []string{"apps:batch", "devices:read", "telemetry:read"}) || g.ContractorName == "" {
		t.Errorf("a year, duplicate scopes: %+v, %v", g, err)
	}
}

func TestGrantsAreTenantScoped(t *testing.T) {
	t.Parallel()
	env := tenanttest.New(t)
	ctx := context.Background()
	a, b := env.NewTenant(t), env.NewTenant(t)
	org := newOrg(t, env, tenants.OrgContractor)
	ga := grant(t, env, a, org, tenants.PermDevicesRead)
	gb := grant(t, env, b, org, tenants.PermDevicesRead)

	if got, err := env.Tenants.Grant(admin(b), ga.ID.String()); apps.Code(err) != apps.NotFound {
		t.Errorf("B reads A's grant: %+v, %v", got, err)
	}
	if got, err := env.Tenants.RevokeGrant(admin(b), ga.ID.String()); apps.Code(err) != apps.NotFound {
		t.Errorf("B revokes A's grant: %+v, %v", got, err)
	}
	for _, ref := range []string{"x", "", "'; DROP TABLE grants; --"} {
		if _, err := env.Tenants.RevokeGrant(admin(a), ref); apps.Code(err) != apps.NotFound {
			t.Errorf("revoke %q: %v", ref, err)
		}
	}
	if got, err := env.Tenants.Grant(admin(a), ga.ID.String()); err != nil || got.Status != tenants.GrantActive {
		t.Errorf("A's grant after B's attempts: %+v, %v", got, err)
	}
	if _, err := env.Tenants.ContractorTenant(ctx, contractor(org), a.Slug); err != nil {
		t.Errorf("A's contractor after B's attempts: %v", err)
	}
	gs, err := env.Tenants.Grants(admin(b))
	if err != nil || len(gs) != 1 || gs[0].ID != gb.ID {
		t.Errorf("B's grants = %+v, %v; want only its own", gs, err)
	}

	// The app role may revoke, nothing else: not widen scopes, not move a
	// grant, not extend it, not un-revoke.
	inA := func(sql string, args ...any) error {
		return tenants.InTx(a.Ctx(), env.DB.App, func(tx pgx.Tx) error {
			_, err := tx.Exec(ctx, sql, args...)
			return err
		})
	}
	for _, sql := range []string{
		`UPDATE grants SET scopes = '{devices:read,devices:write}' WHERE id = $1`,
		`UPDATE grants SET expires_at = expires_at + interval '10 years' WHERE id = $1`,
		`UPDATE grants SET tenant_id = tenant_id WHERE id = $1`,
		`DELETE FROM grants WHERE id = $1`,
	} {
		if err := inA(sql, ga.ID); !isPgCode(err, "42501") {
			t.Errorf("%s as nxcloud_app: %v, want permission denied", sql, err)
		}
	}
	if _, err := env.Tenants.RevokeGrant(admin(a), ga.ID.String()); err != nil {
		t.Fatal(err)
	}
	if err := inA(`UPDATE grants SET revoked_at = NULL WHERE id = $1`, ga.ID); !isPgCode(err, "23514") {
		t.Errorf("un-revoke as nxcloud_app: %v, want refused", err)
	}
	if err := inA(`INSERT INTO grants (tenant_id, contractor_org_id, scopes, expires_at) VALUES ($1, $2, '{devices:read}', now() + interval '1 hour')`,
		b.ID, org); !isPgCode(err, "42501") {
		t.Errorf("a grant on B inserted from A's transaction: %v, want refused by RLS", err)
	}
}

func isPgCode(err error, code string) bool {
	var pe *pgconn.PgError
	return errors.As(err, &pe) && pe.Code == code
}
