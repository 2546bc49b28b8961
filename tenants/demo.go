package tenants

import (
	"context"
	"fmt"

	"github.com/nxcloud/nxcloud/apps"
)

// The demo enterprise's fixed credentials, printed by `nxcloud demo` and
// written in the README. They exist only in databases the demo seeded.
const (
	DemoAPIKey        = "nxk_demo_magnets-demo-key"
	DemoDeviceSecret  = "demo-device-secret"
	DemoOwnerEmail    = "owner@demo-magnets.example"
	DemoOwnerPassword = "demo-owner-password"
)

// DemoResult describes the seeded demo enterprise.
type DemoResult struct {
	Tenant  Tenant
	Devices []Device
	Created bool
}

// SeedDemo creates the demo enterprise of a sector with its lines and devices,
// or completes it when it exists (idempotent: a second run reuses the data).
func (s *Service) SeedDemo(ctx context.Context, sector string) (DemoResult, error) {
	tpl, ok := s.templates[sector]
	if !ok || tpl.Demo == nil {
		return DemoResult{}, apps.Errorf(apps.Invalid, "sector %q has no demo enterprise", sector)
	}
	var res DemoResult
	t, err := s.EnterpriseBySlug(ctx, tpl.Demo.Slug)
	switch {
	case apps.Code(err) == apps.NotFound:
		t, _, err = s.CreateEnterprise(ctx, EnterpriseInput{Slug: tpl.Demo.Slug, Name: tpl.Demo.Name, Sector: sector})
		if err != nil {
			return res, fmt.Errorf("create demo enterprise: %w", err)
		}
		res.Created = true
	case err != nil:
		return res, err
	}
	res.Tenant = t
	if _, err := s.EnsureMember(ctx, t.ID, DemoOwnerEmail, "Demo Owner", DemoOwnerPassword, "owner"); err != nil {
		return res, fmt.Errorf("demo owner: %w", err)
	}
	prefix, secret, _ := splitAPIKey(DemoAPIKey)
	var have bool
	if err := s.db.System.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM api_keys WHERE prefix = $1)`, prefix).Scan(&have); err != nil {
		return res, err
	}
	if !have {
		if _, err := createAPIKey(ctx, s.db.System, t.ID, "demo key", prefix, secret); err != nil {
			return res, err
		}
	}
	tctx := WithTenant(ctx, t.ID)
	existing, err := s.Devices(tctx)
	if err != nil {
		return res, err
	}
	byKey := map[string]Device{}
	for _, d := range existing {
		byKey[d.Key] = d
	}
	lines, err := s.Lines(tctx)
	if err != nil {
		return res, err
	}
	haveLine := map[string]bool{}
	for _, l := range lines {
		haveLine[l.Key] = true
	}
	for _, l := range tpl.Demo.Lines {
		if !haveLine[l.Key] {
			if _, err := s.CreateLine(ctx, t.ID, LineInput{Key: l.Key, Name: l.Name}); err != nil {
				return res, err
			}
		}
		for _, dv := range l.Devices {
			if d, ok := byKey[dv.Key]; ok {
				res.Devices = append(res.Devices, d)
				continue
			}
			d, _, err := s.RegisterDevice(ctx, t.ID, DeviceInput{Key: dv.Key, Name: dv.Name, Model: dv.Model, Line: l.Key, Secret: DemoDeviceSecret})
			if err != nil {
				return res, fmt.Errorf("demo device %s: %w", dv.Key, err)
			}
			res.Devices = append(res.Devices, d)
		}
	}
	return res, nil
}
