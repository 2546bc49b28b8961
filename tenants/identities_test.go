package tenants_test

import (
	"context"
	"testing"

	"github.com/google/uuid"

	"github.com/nxcloud/nxcloud/tenants/tenanttest"
)

// TestIdentities: many devices' current state in one call; a disabled device
// reads inactive, an unknown one is absent.
func TestIdentities(t *testing.T) {
	t.Parallel()
	env := tenanttest.New(t)
	ctx := context.Background()
	a, b := env.NewTenant(t), env.NewTenant(t)
	d1, _ := env.Device(t, a, "press-01", "orientation-press")
	d2, _ := env.Device(t, b, "press-01", "orientation-press")
	if _, err := env.Tenants.SetDeviceStatus(ctx, b.ID, "press-01", "disabled"); err != nil {
		t.Fatal(err)
	}
	gone := uuid.New()
	got, err := env.Tenants.Identities(ctx, []uuid.UUID{d1.ID, d2.ID, gone})
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 2 {
		t.Fatalf("%d identities, want 2: %+v", len(got), got)
	}
	if id := got[d1.ID]; !id.Active || id.TenantID != a.ID || id.TenantSlug != a.Slug || id.DeviceKey != "press-01" {
		t.Errorf("device 1: %+v", id)
	}
	if id := got[d2.ID]; id.Active || id.TenantID != b.ID {
		t.Errorf("disabled device of B: %+v", id)
	}
	if _, ok := got[gone]; ok {
		t.Error("an unknown device has an identity")
	}
}
