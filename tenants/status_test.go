package tenants_test

import (
	"context"
	"testing"
	"time"

	"github.com/nxcloud/nxcloud/apps"
	"github.com/nxcloud/nxcloud/tenants"
	"github.com/nxcloud/nxcloud/tenants/tenanttest"
)

// Suspending an enterprise refuses its API keys, its members' sessions, its
// devices and contractors' grants on it on every replica, through Redis: the
// other replica here caches keys, devices and grant checks for an hour, and
// sessions sit in Redis for a minute.
// Reactivating it brings them all back.
func TestSuspensionReachesEveryReplica(t *testing.T) {
	t.Parallel()
	env := tenanttest.New(t)
	ctx := context.Background()
	a, b := env.NewTenant(t), env.NewTenant(t)
	other := newReplica(t, env)
	tenants.SetKeyCacheTTL(other, time.Hour)
	tenants.SetGrantCacheTTL(other, time.Hour)
	m := env.Member(t, a.ID, "engineer")
	sess := env.Session(t, m, a.ID)
	d, secret := env.Device(t, a, "press-1", "jet-mill")
	user := tenants.MQTTUsername(d.Key, a.Slug)
	mB := env.Member(t, b.ID, "viewer")
	sessB := env.Session(t, mB, b.ID)
	org := env.Org(t, tenants.OrgContractor)
	contractor := principalOf(t, env, env.Member(t, org, "member"), org)
	if _, err := env.Tenants.CreateGrant(a.Ctx(), tenants.GrantInput{ContractorOrg: org.String(), Scopes: []string{"devices:read"},
		ExpiresAt: time.Now().Add(time.Hour).Format(time.RFC3339)}); err != nil {
		t.Fatal(err)
	}

	// use reports how each credential fares on svc: nil when admitted.
	use := func(svc *tenants.Service) map[string]error {
		_, kErr := svc.AuthenticateAPIKey(ctx, a.APIKey)
		_, sErr := svc.AuthenticateSession(ctx, sess)
		_, dErr := svc.Authenticate(ctx, user, []byte(secret))
		id, iErr := svc.Identity(ctx, d.ID)
		if iErr == nil && !id.Active {
			iErr = apps.Errorf(apps.Forbidden, "inactive")
		}
		_, gErr := svc.ContractorTenant(ctx, contractor, a.Slug)
		return map[string]error{"API key": kErr, "session": sErr, "device login": dErr, "connected device": iErr, "contractor's grant": gErr}
	}
	for name, err := range use(other) {
		if err != nil {
			t.Fatalf("%s before suspension: %v", name, err)
		}
	}

	got, err := env.Tenants.SetTenantStatus(ctx, a.Slug, tenants.TenantStatusInput{Status: tenants.TenantSuspended})
	if err != nil || got.Status != tenants.TenantSuspended || got.ID != a.ID {
		t.Fatalf("suspend: %+v, %v", got, err)
	}
	for _, svc := range []*tenants.Service{env.Tenants, other} {
		within5s(t, "suspension refuses every credential", func() bool {
			for _, err := range use(svc) {
				if err == nil {
					return false
				}
			}
			return true
		})
	}
	if _, err := loginAs(env, m, a.ID); apps.Code(err) != apps.Unauthorized {
		t.Errorf("a member of a suspended enterprise logs in: %v", err)
	}
	// Another enterprise is untouched.
	if _, err := other.AuthenticateAPIKey(ctx, b.APIKey); err != nil {
		t.Errorf("B's key: %v", err)
	}
	if _, err := other.AuthenticateSession(ctx, sessB); err != nil {
		t.Errorf("B's session: %v", err)
	}

	// By id, and back.
	if got, err := env.Tenants.SetTenantStatus(ctx, a.ID.String(), tenants.TenantStatusInput{Status: tenants.TenantActive}); err != nil || got.Status != tenants.TenantActive {
		t.Fatalf("reactivate: %+v, %v", got, err)
	}
	for _, svc := range []*tenants.Service{env.Tenants, other} {
		within5s(t, "reactivation admits every credential again", func() bool {
			for _, err := range use(svc) {
				if err != nil {
					return false
				}
			}
			return true
		})
	}
	if _, err := loginAs(env, m, a.ID); err != nil {
		t.Errorf("login after reactivation: %v", err)
	}

	for _, c := range []struct {
		ref, status, code string
	}{
		{a.Slug, "paused", apps.Invalid},
		{a.Slug, "", apps.Invalid},
		{"no-such-enterprise", tenants.TenantSuspended, apps.NotFound},
		{"Bad Slug", tenants.TenantSuspended, apps.NotFound},
	} {
		if _, err := env.Tenants.SetTenantStatus(ctx, c.ref, tenants.TenantStatusInput{Status: c.status}); apps.Code(err) != c.code {
			t.Errorf("SetTenantStatus(%q, %q) = %v, want %s", c.ref, c.status, err, c.code)
		}
	}
}
