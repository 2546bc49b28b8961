package tenants

// Scaffolding while grants and audit are being written (issue 3).

import (
	"context"

	"github.com/labstack/echo/v4"

	"github.com/nxcloud/nxcloud/apps"
)

// ContractorTenant resolves a contractor principal's access to the tenant it
// names (X-Nx-Tenant: slug or id) through a live grant, returning the
// principal with TenantID and Scopes set. Errors: forbidden.
func (s *Service) ContractorTenant(ctx context.Context, p Principal, tenantRef string) (Principal, error) {
	return Principal{}, apps.Errorf(apps.Forbidden, "no grant")
}

// AuditEntry is one audited action.
type AuditEntry struct {
	Tenant    *[16]byte
	Action    string
	Resource  string
	Result    string
	Status    int
	IP        string
	RequestID string
}

// Audit records an entry.
func (s *Service) Audit(ctx context.Context, e AuditEntry) error { return nil }

func (h *Handler) registerGrants(g *echo.Group, r *Routes) {}
