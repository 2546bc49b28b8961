package tenants_test

import (
	"context"
	"errors"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/nxcloud/nxcloud/apps"
	"github.com/nxcloud/nxcloud/tenants"
	"github.com/nxcloud/nxcloud/tenants/tenanttest"
)

// keyPrincipal returns the principal an API key authenticates as.
func keyPrincipal(t *testing.T, env *tenanttest.Env, key string) tenants.Principal {
	t.Helper()
	p, err := env.Tenants.AuthenticateAPIKey(context.Background(), key)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func TestAPIKeyScopes(t *testing.T) {
	t.Parallel()
	want := []string{"audit:read", "batch:read", "batch:write", "benchmarks:read", "devices:read", "devices:write",
		"downgrades:approve", "downgrades:read", "downgrades:write", "grants:read", "keys:read", "quality:read", "quality:write",
		"recipes:approve", "recipes:read", "recipes:write", "telemetry:read", "tenant:read", "usage:read", "users:read"}
	if got := tenants.APIKeyScopes(); !slices.Equal(got, want) {
		t.Errorf("APIKeyScopes() = %v, want %v", got, want)
	}
	env := tenanttest.New(t)
	a := env.NewTenant(t)
	p := keyPrincipal(t, env, a.APIKey)
	if !slices.Equal(p.Scopes, []string{tenants.AllScopes}) {
		t.Errorf("the onboarding key's scopes = %v, want [*]", p.Scopes)
	}
	for _, c := range []struct {
		name   string
		in     tenants.APIKeyInput
		field  string
		scopes []string
	}{
		{"one scope", tenants.APIKeyInput{Name: "reader", Scopes: []string{"devices:read"}}, "", []string{"devices:read"}},
		{"sorted, no duplicates", tenants.APIKeyInput{Name: "x", Scopes: []string{"telemetry:read", "devices:read", "telemetry:read"}}, "",
			[]string{"devices:read", "telemetry:read"}},
		{"every allowed scope", tenants.APIKeyInput{Name: "x", Scopes: tenants.APIKeyScopes()}, "", tenants.APIKeyScopes()},
		{"no scopes", tenants.APIKeyInput{Name: "x"}, "scopes", nil},
		{"star", tenants.APIKeyInput{Name: "x", Scopes: []string{"*"}}, "scopes", nil},
		{"users:write", tenants.APIKeyInput{Name: "x", Scopes: []string{"devices:read", "users:write"}}, "scopes", nil},
		{"keys:write", tenants.APIKeyInput{Name: "x", Scopes: []string{"keys:write"}}, "scopes", nil},
		{"grants:write", tenants.APIKeyInput{Name: "x", Scopes: []string{"grants:write"}}, "scopes", nil},
		{"operator", tenants.APIKeyInput{Name: "x", Scopes: []string{"platform:operate"}}, "scopes", nil},
		{"contractor scope", tenants.APIKeyInput{Name: "x", Scopes: []string{"modules:deploy"}}, "scopes", nil},
		{"app scope", tenants.APIKeyInput{Name: "x", Scopes: []string{"apps:batch"}}, "scopes", nil},
		{"65 scopes", tenants.APIKeyInput{Name: "x", Scopes: slices.Repeat([]string{"devices:read"}, 65)}, "scopes", nil},
		{"no name", tenants.APIKeyInput{Scopes: []string{"devices:read"}}, "name", nil},
		{"long name", tenants.APIKeyInput{Name: strings.Repeat("n", 201), Scopes: []string{"devices:read"}}, "name", nil},
		{"past expiry", tenants.APIKeyInput{Name: "x", Scopes: []string{"devices:read"}, ExpiresAt: time.Now().Add(-time.Minute).Format(time.RFC3339)}, "expires_at", nil},
		{"three years", tenants.APIKeyInput{Name: "x", Scopes: []string{"devices:read"}, ExpiresAt: time.Now().AddDate(3, 0, 0).Format(time.RFC3339)}, "expires_at", nil},
		{"no zone", tenants.APIKeyInput{Name: "x", Scopes: []string{"devices:read"}, ExpiresAt: "2027-01-01T00:00:00"}, "expires_at", nil},
	} {
		got, err := env.Tenants.CreateAPIKey(context.Background(), p, c.in)
		if c.field != "" {
			var ae *apps.Error
			if !errors.As(err, &ae) || ae.Code != apps.Invalid || ae.Field != c.field {
				t.Errorf("%s: %v, want invalid %s", c.name, err, c.field)
			}
			continue
		}
		if err != nil {
			t.Errorf("%s: %v", c.name, err)
			continue
		}
		if !slices.Equal(got.APIKey.Scopes, c.scopes) || got.APIKey.Status != tenants.KeyActive || got.APIKey.CreatedBy == nil ||
			*got.APIKey.CreatedBy != p.KeyID || !strings.HasPrefix(got.Key, "nxk_"+got.APIKey.Prefix+"_") {
			t.Errorf("%s: created %+v", c.name, got)
		}
		kp := keyPrincipal(t, env, got.Key)
		if !slices.Equal(kp.Scopes, c.scopes) || kp.TenantID != a.ID || kp.KeyID != got.APIKey.ID {
			t.Errorf("%s: the key authenticates as %+v", c.name, kp)
		}
	}

	// Only the enterprise's own principals create keys.
	for name, q := range map[string]tenants.Principal{
		"contractor": {Kind: tenants.KindUser, OrgKind: tenants.OrgContractor, TenantID: a.ID, Scopes: []string{"devices:read"}},
		"operator":   {Kind: tenants.KindOperator, OrgKind: tenants.OrgOperator},
	} {
		if _, err := env.Tenants.CreateAPIKey(context.Background(), q, tenants.APIKeyInput{Name: "x", Scopes: []string{"devices:read"}}); apps.Code(err) != apps.Forbidden {
			t.Errorf("a key created by the %s: %v", name, err)
		}
	}
}

// A revoked key is refused at once where it was revoked, and on another
// replica through Redis: that replica caches key checks for an hour here, so
// only the announcement can reach it.
func TestAPIKeyRevocationReachesEveryReplica(t *testing.T) {
	t.Parallel()
	env := tenanttest.New(t)
	ctx := context.Background()
	a := env.NewTenant(t)
	other := newReplica(t, env)
	tenants.SetKeyCacheTTL(other, time.Hour)
	created, err := env.Tenants.CreateAPIKey(ctx, keyPrincipal(t, env, a.APIKey), tenants.APIKeyInput{Name: "plc", Scopes: []string{"telemetry:read"}})
	if err != nil {
		t.Fatal(err)
	}
	keep, err := env.Tenants.CreateAPIKey(ctx, keyPrincipal(t, env, a.APIKey), tenants.APIKeyInput{Name: "keep", Scopes: []string{"devices:read"}})
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range []*tenants.Service{env.Tenants, other} {
		for _, k := range []string{created.Key, keep.Key} {
			if _, err := s.AuthenticateAPIKey(ctx, k); err != nil {
				t.Fatal(err)
			}
		}
	}
	revoked, err := env.Tenants.RevokeAPIKey(a.Ctx(), created.APIKey.ID.String())
	if err != nil || revoked.Status != tenants.KeyRevoked || revoked.RevokedAt == nil {
		t.Fatalf("revoke: %+v, %v", revoked, err)
	}
	if _, err := env.Tenants.AuthenticateAPIKey(ctx, created.Key); apps.Code(err) != apps.Unauthorized {
		t.Errorf("the revoking replica still admits the key: %v", err)
	}
	within5s(t, "revocation seen by the other replica", func() bool {
		_, err := other.AuthenticateAPIKey(ctx, created.Key)
		return apps.Code(err) == apps.Unauthorized
	})
	if _, err := other.AuthenticateAPIKey(ctx, keep.Key); err != nil {
		t.Errorf("another key of the tenant: %v", err)
	}
	again, err := env.Tenants.RevokeAPIKey(a.Ctx(), created.APIKey.ID.String())
	if err != nil || !again.RevokedAt.Equal(*revoked.RevokedAt) {
		t.Errorf("revoking twice: %+v, %v", again, err)
	}

	// Another tenant neither sees nor revokes it.
	b := env.NewTenant(t)
	if _, err := env.Tenants.RevokeAPIKey(b.Ctx(), keep.APIKey.ID.String()); apps.Code(err) != apps.NotFound {
		t.Errorf("B revokes A's key: %v", err)
	}
	if _, err := env.Tenants.APIKey(b.Ctx(), keep.APIKey.ID.String()); apps.Code(err) != apps.NotFound {
		t.Errorf("B reads A's key: %v", err)
	}
	list, err := env.Tenants.APIKeys(a.Ctx())
	if err != nil || len(list) != 3 || list[0].ID != keep.APIKey.ID || list[1].Status != tenants.KeyRevoked || list[2].Scopes[0] != "*" {
		t.Errorf("A's keys = %+v, %v", list, err)
	}
}

// A key stops at its expiry, even while a replica has it cached.
func TestAPIKeyExpires(t *testing.T) {
	t.Parallel()
	env := tenanttest.New(t)
	ctx := context.Background()
	a := env.NewTenant(t)
	tenants.SetKeyCacheTTL(env.Tenants, time.Hour)
	created, err := env.Tenants.CreateAPIKey(ctx, keyPrincipal(t, env, a.APIKey), tenants.APIKeyInput{
		Name: "short", Scopes: []string{"devices:read"}, ExpiresAt: time.Now().Add(time.Second).Format(time.RFC3339Nano)})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := env.Tenants.AuthenticateAPIKey(ctx, created.Key); err != nil {
		t.Fatal(err)
	}
	within5s(t, "expired key refused", func() bool {
		_, err := env.Tenants.AuthenticateAPIKey(ctx, created.Key)
		return apps.Code(err) == apps.Unauthorized
	})
	if k, err := env.Tenants.APIKey(a.Ctx(), created.APIKey.ID.String()); err != nil || k.Status != tenants.KeyExpired {
		t.Errorf("expired key = %+v, %v", k, err)
	}
}

// The app role creates and revokes keys, nothing else; a revoked key stays
// revoked, for the owner too.
func TestAPIKeysTableGuards(t *testing.T) {
	t.Parallel()
	env := tenanttest.New(t)
	ctx := context.Background()
	a := env.NewTenant(t)
	created, err := env.Tenants.CreateAPIKey(ctx, keyPrincipal(t, env, a.APIKey), tenants.APIKeyInput{Name: "k", Scopes: []string{"devices:read"}})
	if err != nil {
		t.Fatal(err)
	}
	id := created.APIKey.ID
	app := func(sql string) error {
		tx, err := env.DB.App.Begin(ctx)
		if err != nil {
			t.Fatal(err)
		}
		defer tx.Rollback(ctx)
		if _, err := tx.Exec(ctx, `SELECT set_config('nx.tenant_id', $1, true)`, a.ID.String()); err != nil {
			t.Fatal(err)
		}
		_, err = tx.Exec(ctx, sql, id)
		return err
	}
	for _, sql := range []string{
		`DELETE FROM api_keys WHERE id = $1`,
		`UPDATE api_keys SET scopes = '{*}' WHERE id = $1`,
		`UPDATE api_keys SET expires_at = NULL WHERE id = $1`,
		`UPDATE api_keys SET name = 'x' WHERE id = $1`,
	} {
		if err := app(sql); err == nil {
			t.Errorf("the app role may %s", sql)
		}
	}
	if _, err := env.DB.System.Exec(ctx, `UPDATE api_keys SET scopes = '{*}' WHERE id = $1`, id); err == nil {
		t.Error("the owner widened a key's scopes")
	}
	if _, err := env.Tenants.RevokeAPIKey(a.Ctx(), id.String()); err != nil {
		t.Fatal(err)
	}
	if _, err := env.DB.System.Exec(ctx, `UPDATE api_keys SET revoked_at = NULL WHERE id = $1`, id); err == nil {
		t.Error("a revoked key was brought back")
	}
}
