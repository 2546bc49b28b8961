package tenants

import (
	"context"
	"errors"
	"net/http"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/labstack/echo/v4"

	"github.com/nxcloud/nxcloud/apps"
)

// InvitationRevoked reports a revoked invitation.
type InvitationRevoked struct {
	ID      uuid.UUID `json:"id"`
	Revoked bool      `json:"revoked"`
}

// pendingInvitation is the SQL condition of an invitation that can still be
// accepted.
const pendingInvitation = `accepted_at IS NULL AND revoked_at IS NULL AND expires_at > now()`

// Invitations lists the pending invitations of the caller's enterprise (not
// accepted, not revoked, not expired), newest first. Tokens are never shown:
// only their hashes are stored. Errors: forbidden.
func (s *Service) Invitations(ctx context.Context, p Principal) ([]Invitation, error) {
	org, err := enterpriseOrg(p)
	if err != nil {
		return nil, err
	}
	rows, err := s.db.System.Query(ctx, `SELECT id, email, role, created_at, expires_at FROM invitations
		WHERE org_id = $1 AND `+pendingInvitation+` ORDER BY created_at DESC, id`, org)
	if err != nil {
		return nil, err
	}
	return pgx.CollectRows(rows, func(r pgx.CollectableRow) (Invitation, error) {
		var inv Invitation
		return inv, r.Scan(&inv.ID, &inv.Email, &inv.Role, &inv.CreatedAt, &inv.ExpiresAt)
	})
}

// RevokeInvitation revokes a pending invitation of the caller's enterprise:
// it can no longer be accepted. Only an owner revokes an invitation to be an
// owner (as only an owner makes one). Errors: not_found (unknown, another
// organisation's, or no longer pending), forbidden.
func (s *Service) RevokeInvitation(ctx context.Context, p Principal, ref string) (InvitationRevoked, error) {
	org, err := enterpriseOrg(p)
	if err != nil {
		return InvitationRevoked{}, err
	}
	id, err := uuid.Parse(ref)
	if err != nil || len(ref) != 36 {
		return InvitationRevoked{}, apps.Errorf(apps.NotFound, "invitation not found")
	}
	err = pgx.BeginFunc(ctx, s.db.System, func(tx pgx.Tx) error {
		var role string
		err := tx.QueryRow(ctx, `SELECT role FROM invitations WHERE id = $1 AND org_id = $2 AND `+pendingInvitation+`
			FOR UPDATE`, id, org).Scan(&role)
		if errors.Is(err, pgx.ErrNoRows) {
			return apps.Errorf(apps.NotFound, "invitation not found")
		}
		if err != nil {
			return err
		}
		if role == "owner" && !isOwner(p) {
			return apps.Errorf(apps.Forbidden, "only an owner may revoke an owner's invitation")
		}
		_, err = tx.Exec(ctx, `UPDATE invitations SET revoked_at = now() WHERE id = $1`, id)
		return err
	})
	if err != nil {
		return InvitationRevoked{}, err
	}
	return InvitationRevoked{ID: id, Revoked: true}, nil
}

func (h *Handler) invitations(c echo.Context) error {
	p, err := principal(c)
	if err != nil {
		return err
	}
	out, err := h.svc.Invitations(c.Request().Context(), p)
	if err != nil {
		return err
	}
	return c.JSON(http.StatusOK, map[string]any{"items": out})
}

func (h *Handler) revokeInvitation(c echo.Context) error {
	p, err := principal(c)
	if err != nil {
		return err
	}
	out, err := h.svc.RevokeInvitation(c.Request().Context(), p, c.Param("invitation"))
	if err != nil {
		return err
	}
	return c.JSON(http.StatusOK, out)
}
