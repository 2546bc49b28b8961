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

// UserAccount is a user as the operator sees it: the account and the
// organisations it belongs to.
type UserAccount struct {
	ID          uuid.UUID        `json:"id"`
	Email       string           `json:"email"`
	Name        string           `json:"name"`
	Status      string           `json:"status"`
	Memberships []UserMembership `json:"memberships"`
}

// UserMembership is one organisation of a user, with the user's role there.
type UserMembership struct {
	OrgID uuid.UUID `json:"org_id"`
	Kind  string    `json:"kind"`
	Name  string    `json:"name"`
	Role  string    `json:"role"`
}

// UserStatusInput enables or disables an account.
type UserStatusInput struct {
	Status string `json:"status"`
}

// FindUsers returns the account with email (none or one: emails are unique)
// with its memberships, for the operator. Errors: invalid (field email).
func (s *Service) FindUsers(ctx context.Context, email string) ([]UserAccount, error) {
	email = normalEmail(email)
	if err := validEmail(email, "email"); err != nil {
		return nil, err
	}
	var id uuid.UUID
	err := s.db.System.QueryRow(ctx, `SELECT id FROM users WHERE email = $1`, email).Scan(&id)
	if errors.Is(err, pgx.ErrNoRows) {
		return []UserAccount{}, nil
	}
	if err != nil {
		return nil, err
	}
	u, err := s.UserAccount(ctx, id)
	if err != nil {
		return nil, err
	}
	return []UserAccount{u}, nil
}

// UserAccount returns a user with its memberships. Errors: not_found.
func (s *Service) UserAccount(ctx context.Context, id uuid.UUID) (UserAccount, error) {
	u := UserAccount{ID: id}
	err := s.db.System.QueryRow(ctx, `SELECT email, name, status FROM users WHERE id = $1`, id).Scan(&u.Email, &u.Name, &u.Status)
	if errors.Is(err, pgx.ErrNoRows) {
		return UserAccount{}, apps.Errorf(apps.NotFound, "user not found")
	}
	if err != nil {
		return UserAccount{}, err
	}
	rows, err := s.db.System.Query(ctx, `SELECT o.id, o.kind, o.name, m.role FROM memberships m JOIN orgs o ON o.id = m.org_id
		WHERE m.user_id = $1 ORDER BY o.kind, o.name, o.id`, id)
	if err != nil {
		return UserAccount{}, err
	}
	u.Memberships, err = pgx.CollectRows(rows, func(r pgx.CollectableRow) (UserMembership, error) {
		var m UserMembership
		return m, r.Scan(&m.OrgID, &m.Kind, &m.Name, &m.Role)
	})
	return u, err
}

// SetAccountStatus is the operator's SetUserStatus: it enables or disables
// the account of userRef on the whole platform (a disabled user's sessions
// are refused at once on every replica) and returns it. An operator user
// cannot disable its own account. Errors: invalid (field status), not_found,
// conflict.
func (s *Service) SetAccountStatus(ctx context.Context, p Principal, userRef string, in UserStatusInput) (UserAccount, error) {
	id, err := memberRef(userRef)
	if err != nil {
		return UserAccount{}, err
	}
	if in.Status == "disabled" && p.Kind == KindUser && p.UserID == id {
		return UserAccount{}, apps.Errorf(apps.Conflict, "you cannot disable your own account")
	}
	if err := s.SetUserStatus(ctx, id, in.Status); err != nil {
		return UserAccount{}, err
	}
	return s.UserAccount(ctx, id)
}

func (h *Handler) findUsers(c echo.Context) error {
	out, err := h.svc.FindUsers(c.Request().Context(), c.QueryParam("email"))
	if err != nil {
		return err
	}
	return c.JSON(http.StatusOK, map[string]any{"items": out})
}

func (h *Handler) setUserStatus(c echo.Context) error {
	p, err := principal(c)
	if err != nil {
		return err
	}
	var in UserStatusInput
	if err := apps.Bind(c.Request().Body, &in); err != nil {
		return err
	}
	out, err := h.svc.SetAccountStatus(c.Request().Context(), p, c.Param("user"), in)
	if err != nil {
		return err
	}
	return c.JSON(http.StatusOK, out)
}
