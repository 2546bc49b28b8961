package tenants

// The operator suspends and reactivates enterprises. A suspended enterprise's
// API keys, its members' sessions and its devices are refused — within a few
// seconds on every replica — and come back when it is reactivated; nothing is
// revoked or deleted.

import (
	"context"
	"net/http"

	"github.com/jackc/pgx/v5"
	"github.com/labstack/echo/v4"

	"github.com/nxcloud/nxcloud/apps"
)

// Enterprise statuses.
const (
	TenantActive    = "active"
	TenantSuspended = "suspended"
)

// TenantStatusInput changes an enterprise's status.
type TenantStatusInput struct {
	Status string `json:"status"`
}

// SetTenantStatus suspends ("suspended") or reactivates ("active") the
// enterprise ref names (slug or id). Every check a replica cached of the
// enterprise — its API keys, devices, members' sessions (in Redis too) and
// contractors' grant checks — is dropped at once, here and, through Redis,
// on the other replicas; without Redis the caches expire within seconds.
// Connected devices are cut off at the broker's next recheck. Errors:
// invalid (field status), not_found.
func (s *Service) SetTenantStatus(ctx context.Context, ref string, in TenantStatusInput) (Tenant, error) {
	if in.Status != TenantActive && in.Status != TenantSuspended {
		return Tenant{}, apps.FieldError("status", "want active or suspended")
	}
	id, err := s.ResolveTenant(ctx, ref)
	if err != nil {
		return Tenant{}, err
	}
	var t Tenant
	var previous string
	var sessions [][]byte
	err = pgx.BeginFunc(ctx, s.db.System, func(tx pgx.Tx) error {
		if err := tx.QueryRow(ctx, `SELECT status FROM tenants WHERE id = $1 FOR UPDATE`, id).Scan(&previous); err != nil {
			return StoreError(err, "enterprise")
		}
		rows, err := tx.Query(ctx, `UPDATE tenants SET status = $2 WHERE id = $1
			RETURNING id, slug, name, sector_id, status, created_at`, id, in.Status)
		if err != nil {
			return err
		}
		if t, err = pgx.CollectExactlyOneRow(rows, scanTenant); err != nil {
			return StoreError(err, "enterprise")
		}
		if previous == in.Status {
			return nil
		}
		// The members' sessions stay valid in the database (reactivation
		// brings them back), but no replica may keep using a cached one.
		rows, err = tx.Query(ctx, `SELECT token_hash FROM sessions
			WHERE org_id = $1 AND revoked_at IS NULL AND expires_at > now()`, id)
		if err != nil {
			return err
		}
		sessions, err = pgx.CollectRows(rows, pgx.RowTo[[]byte])
		return err
	})
	if err != nil {
		return Tenant{}, err
	}
	if previous != in.Status {
		s.forgetTenant(id)
		s.forgetSessions(ctx, sessions)
		s.announceRevoked(ctx, revokedTenantTag+id.String())
	}
	s.auditEvent(ctx, AuditEntry{Tenant: id, Action: "enterprise.status", Resource: "enterprises/" + t.Slug,
		Result: AuditOK, Detail: map[string]any{"status": t.Status, "previous": previous, "sessions_uncached": len(sessions)}})
	return t, nil
}

func (h *Handler) setEnterpriseStatus(c echo.Context) error {
	var in TenantStatusInput
	if err := apps.Bind(c.Request().Body, &in); err != nil {
		return err
	}
	t, err := h.svc.SetTenantStatus(c.Request().Context(), c.Param("tenant"), in)
	if err != nil {
		return err
	}
	return c.JSON(http.StatusOK, t)
}
