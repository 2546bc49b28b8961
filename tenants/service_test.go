package tenants_test

import (
	"context"
	"testing"
	"time"

	"github.com/nxcloud/nxcloud/apps"
	"github.com/nxcloud/nxcloud/tenants"
	"github.com/nxcloud/nxcloud/tenants/tenanttest"
)

func TestCreateEnterpriseCopiesTheSectorTemplate(t *testing.T) {
	env := tenanttest.New(t)
	tn := env.NewTenant(t)
	tpl, _ := env.Tenants.Template("magnetic-materials")
	ctx := context.Background()
	count := func(q string) int {
		var n int
		if err := env.DB.System.QueryRow(ctx, q, tn.ID).Scan(&n); err != nil {
			t.Fatal(err)
		}
		return n
	}
	metrics := 0
	for _, m := range tpl.DeviceModels {
		metrics += len(m.Metrics)
	}
	for q, want := range map[string]int{
		`SELECT count(*) FROM device_models WHERE tenant_id = $1`: len(tpl.DeviceModels),
		`SELECT count(*) FROM metrics WHERE tenant_id = $1`:       metrics,
		`SELECT count(*) FROM grades WHERE tenant_id = $1`:        len(tpl.Grades),
		`SELECT count(*) FROM defect_codes WHERE tenant_id = $1`:  len(tpl.DefectCodes),
		`SELECT count(*) FROM api_keys WHERE tenant_id = $1`:      1,
	} {
		if got := count(q); got != want {
			t.Errorf("%s: %d, want %d", q, got, want)
		}
	}
	if _, _, err := env.Tenants.CreateEnterprise(ctx, tenants.EnterpriseInput{Slug: tn.Slug, Name: "again", Sector: "magnetic-materials"}); apps.Code(err) != apps.Conflict {
		t.Fatalf("duplicate slug: %v", err)
	}
	for _, in := range []tenants.EnterpriseInput{
		{Slug: "Bad Slug", Name: "x", Sector: "magnetic-materials"},
		{Slug: "ok-slug-x", Name: "", Sector: "magnetic-materials"},
		{Slug: "ok-slug-y", Name: "x", Sector: "no-such-sector"},
	} {
		if _, _, err := env.Tenants.CreateEnterprise(ctx, in); apps.Code(err) != apps.Invalid {
			t.Errorf("%+v: %v, want invalid", in, err)
		}
	}
}

func TestDevicesAndCredentials(t *testing.T) {
	env := tenanttest.New(t)
	tn := env.NewTenant(t)
	ctx := context.Background()
	if _, err := env.Tenants.CreateLine(ctx, tn.ID, tenants.LineInput{Key: "L1", Name: "Line 1"}); err != nil {
		t.Fatal(err)
	}
	d, secret, err := env.Tenants.RegisterDevice(ctx, tn.ID, tenants.DeviceInput{Key: "press-01", Model: "orientation-press", Line: "L1"})
	if err != nil {
		t.Fatal(err)
	}
	if d.LineKey != "L1" || d.ModelKey != "orientation-press" || len(secret) < 24 {
		t.Fatalf("device %+v secret %q", d, secret)
	}
	for _, in := range []tenants.DeviceInput{
		{Key: "bad/key", Model: "orientation-press"},
		{Key: "x1", Model: "no-such-model"},
		{Key: "x2", Model: "orientation-press", Line: "no-such-line"},
		{Key: "x3", Model: "orientation-press", Secret: "short"},
	} {
		if _, _, err := env.Tenants.RegisterDevice(ctx, tn.ID, in); apps.Code(err) != apps.Invalid {
			t.Errorf("%+v: %v, want invalid", in, err)
		}
	}
	if _, _, err := env.Tenants.RegisterDevice(ctx, tn.ID, tenants.DeviceInput{Key: "press-01", Model: "orientation-press"}); apps.Code(err) != apps.Conflict {
		t.Fatalf("duplicate device: %v", err)
	}

	user := tenants.MQTTUsername("press-01", tn.Slug)
	id, err := env.Tenants.Authenticate(ctx, user, []byte(secret))
	if err != nil || id.DeviceID != d.ID || id.TenantID != tn.ID || !id.Active {
		t.Fatalf("authenticate: %+v %v", id, err)
	}
	for _, c := range []struct{ user, pass string }{
		{user, "wrong"}, {tenants.MQTTUsername("press-02", tn.Slug), secret}, {"press-01", secret}, {"@" + tn.Slug, secret},
	} {
		if _, err := env.Tenants.Authenticate(ctx, c.user, []byte(c.pass)); apps.Code(err) != apps.Unauthorized {
			t.Errorf("authenticate %q/%q: %v, want unauthorized", c.user, c.pass, err)
		}
	}
	// Disabled: refused (after the cache TTL the environment sets: 200 ms).
	if _, err := env.Tenants.SetDeviceStatus(ctx, tn.ID, "press-01", "disabled"); err != nil {
		t.Fatal(err)
	}
	if _, err := env.Tenants.Authenticate(ctx, user, []byte(secret)); apps.Code(err) != apps.Forbidden {
		t.Fatalf("disabled device: %v, want forbidden", err)
	}
	if id, err := env.Tenants.Identity(ctx, d.ID); err != nil || id.Active {
		t.Fatalf("identity of a disabled device: %+v %v", id, err)
	}
	env.Tenants.SetDeviceStatus(ctx, tn.ID, d.ID.String(), "active")
	// Rotation: the old secret stops working.
	_, fresh, err := env.Tenants.RotateSecret(ctx, tn.ID, "press-01")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := env.Tenants.Authenticate(ctx, user, []byte(secret)); apps.Code(err) != apps.Unauthorized {
		t.Fatalf("old secret after rotation: %v", err)
	}
	if _, err := env.Tenants.Authenticate(ctx, user, []byte(fresh)); err != nil {
		t.Fatalf("new secret: %v", err)
	}
	// Another tenant cannot touch the device.
	other := env.NewTenant(t)
	if _, err := env.Tenants.SetDeviceStatus(ctx, other.ID, d.ID.String(), "disabled"); apps.Code(err) != apps.NotFound {
		t.Fatalf("other tenant disabling: %v", err)
	}
	if _, err := env.Tenants.Device(other.Ctx(), d.ID.String()); apps.Code(err) != apps.NotFound {
		t.Fatalf("other tenant reading: %v", err)
	}
}

func TestAPIKeys(t *testing.T) {
	env := tenanttest.New(t)
	tn := env.NewTenant(t)
	ctx := context.Background()
	p, err := env.Tenants.AuthenticateAPIKey(ctx, tn.APIKey)
	if err != nil || p.TenantID != tn.ID {
		t.Fatalf("%+v %v", p, err)
	}
	for _, k := range []string{"", "nxk_", "nxk_abc", tn.APIKey + "x", "Bearer " + tn.APIKey, "nxk_nosuchprefix_secret"} {
		if _, err := env.Tenants.AuthenticateAPIKey(ctx, k); apps.Code(err) != apps.Unauthorized {
			t.Errorf("%q: %v", k, err)
		}
	}
	// Revoked keys stop working within the cache TTL.
	if _, err := env.DB.System.Exec(ctx, `UPDATE api_keys SET revoked_at = now() WHERE tenant_id = $1`, tn.ID); err != nil {
		t.Fatal(err)
	}
	time.Sleep(250 * time.Millisecond)
	if _, err := env.Tenants.AuthenticateAPIKey(ctx, tn.APIKey); apps.Code(err) != apps.Unauthorized {
		t.Fatalf("revoked key: %v", err)
	}
}

func TestSeedDemoIsIdempotent(t *testing.T) {
	env := tenanttest.New(t)
	ctx := context.Background()
	first, err := env.Tenants.SeedDemo(ctx, "magnetic-materials")
	if err != nil {
		t.Fatal(err)
	}
	second, err := env.Tenants.SeedDemo(ctx, "magnetic-materials")
	if err != nil {
		t.Fatal(err)
	}
	if second.Created || second.Tenant.ID != first.Tenant.ID || len(second.Devices) != len(first.Devices) || len(first.Devices) < 12 {
		t.Fatalf("first %d devices, second %+v", len(first.Devices), second)
	}
	if _, err := env.Tenants.Authenticate(ctx, tenants.MQTTUsername(first.Devices[0].Key, first.Tenant.Slug), []byte(tenants.DemoDeviceSecret)); err != nil {
		t.Fatalf("demo device login: %v", err)
	}
	if p, err := env.Tenants.AuthenticateAPIKey(ctx, tenants.DemoAPIKey); err != nil || p.TenantID != first.Tenant.ID {
		t.Fatalf("demo API key: %+v %v", p, err)
	}
}
