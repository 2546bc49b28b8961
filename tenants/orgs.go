package tenants

import (
	"context"
	"slices"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"

	"github.com/nxcloud/nxcloud/apps"
)

// Org is an organisation as the operator sees it.
type Org struct {
	ID   uuid.UUID `json:"id"`
	Kind string    `json:"kind"`
	Name string    `json:"name"`
	// TenantID is set for an enterprise (and equals ID).
	TenantID  *uuid.UUID `json:"tenant_id,omitempty"`
	Members   int        `json:"members"`
	CreatedAt time.Time  `json:"created_at"`
}

// OrgInput creates a contractor, association or operator organisation with
// an invitation for its first member.
type OrgInput struct {
	Kind       string `json:"kind"`
	Name       string `json:"name"`
	AdminEmail string `json:"admin_email"`
}

// OrgCreated is a new organisation and the invitation of its first member
// (token shown once).
type OrgCreated struct {
	Org Org `json:"org"`
	InvitationCreated
}

// firstRole is the role of the first member of an organisation the operator
// creates (each kind but enterprise has one role).
var firstRole = map[string]string{OrgContractor: "member", OrgAssociation: "analyst", OrgOperator: "admin"}

// CreateOrg creates a contractor, association or operator organisation and
// invites its first member (enterprises are created with
// CreateEnterpriseWithOwner). Errors: invalid.
func (s *Service) CreateOrg(ctx context.Context, p Principal, in OrgInput) (OrgCreated, error) {
	role, ok := firstRole[in.Kind]
	if !ok {
		return OrgCreated{}, apps.FieldError("kind", "want contractor, association or operator (enterprises are created under /operator/enterprises)")
	}
	if err := validName(in.Name); err != nil {
		return OrgCreated{}, err
	}
	email := normalEmail(in.AdminEmail)
	if err := validEmail(email, "admin_email"); err != nil {
		return OrgCreated{}, err
	}
	var out OrgCreated
	err := pgx.BeginFunc(ctx, s.db.System, func(tx pgx.Tx) error {
		out.Org = Org{Kind: in.Kind, Name: in.Name}
		if err := tx.QueryRow(ctx, `INSERT INTO orgs (kind, name) VALUES ($1, $2) RETURNING id, created_at`, in.Kind, in.Name).
			Scan(&out.Org.ID, &out.Org.CreatedAt); err != nil {
			return StoreError(err, "organisation")
		}
		var err error
		out.InvitationCreated, err = createInvitation(ctx, tx, out.Org.ID, email, role, p.UserID)
		return err
	})
	return out, err
}

// Orgs lists the organisations, of one kind unless kind is empty. Errors:
// invalid.
func (s *Service) Orgs(ctx context.Context, kind string) ([]Org, error) {
	if kind != "" && !slices.Contains([]string{OrgEnterprise, OrgContractor, OrgAssociation, OrgOperator}, kind) {
		return nil, apps.FieldError("kind", "want enterprise, contractor, association or operator")
	}
	rows, err := s.db.System.Query(ctx, `SELECT o.id, o.kind, o.name, o.tenant_id,
		(SELECT count(*) FROM memberships m WHERE m.org_id = o.id), o.created_at
		FROM orgs o WHERE $1 = '' OR o.kind = $1 ORDER BY o.kind, o.name, o.id`, kind)
	if err != nil {
		return nil, err
	}
	return pgx.CollectRows(rows, func(r pgx.CollectableRow) (Org, error) {
		var o Org
		return o, r.Scan(&o.ID, &o.Kind, &o.Name, &o.TenantID, &o.Members, &o.CreatedAt)
	})
}

// createEnterpriseOrg adds the organisation of a new enterprise: its id is
// the tenant's.
func createEnterpriseOrg(ctx context.Context, q Querier, t Tenant) error {
	_, err := q.Exec(ctx, `INSERT INTO orgs (id, kind, name, tenant_id, created_at) VALUES ($1, 'enterprise', $2, $1, $3)`,
		t.ID, t.Name, t.CreatedAt)
	return StoreError(err, "organisation")
}

// Me describes the caller: who, in which organisation, with which role, on
// which tenant, allowed what.
type Me struct {
	Kind        string     `json:"kind"`
	User        *UserRef   `json:"user,omitempty"`
	Org         OrgRef     `json:"org"`
	Role        string     `json:"role,omitempty"`
	TenantID    *uuid.UUID `json:"tenant_id,omitempty"`
	Permissions []string   `json:"permissions"`
}

// Me returns the description of p. Errors: not_found (its user or
// organisation is gone).
func (s *Service) Me(ctx context.Context, p Principal) (Me, error) {
	out := Me{Kind: p.Kind, Role: p.Role, Permissions: Permissions(p)}
	org := p.OrgID
	if p.Kind == KindAPIKey {
		org = p.TenantID // an API key belongs to its enterprise
	}
	if err := s.db.System.QueryRow(ctx, `SELECT id, kind, name FROM orgs WHERE id = $1`, org).
		Scan(&out.Org.ID, &out.Org.Kind, &out.Org.Name); err != nil {
		return Me{}, StoreError(err, "organisation")
	}
	if p.Kind == KindUser {
		u := UserRef{}
		if err := s.db.System.QueryRow(ctx, `SELECT id, email, name FROM users WHERE id = $1`, p.UserID).
			Scan(&u.ID, &u.Email, &u.Name); err != nil {
			return Me{}, StoreError(err, "user")
		}
		out.User = &u
	}
	if p.TenantID != uuid.Nil {
		t := p.TenantID
		out.TenantID = &t
	}
	return out, nil
}

// Permissions lists what p may do, as Authorize decides it.
func Permissions(p Principal) []string {
	candidates := map[string]bool{}
	for _, roles := range rolePermissions {
		for _, perms := range roles {
			for _, x := range perms {
				candidates[x] = true
			}
		}
	}
	for _, x := range append(slices.Clone(GrantableScopes), p.Scopes...) {
		candidates[x] = x != AllScopes
	}
	out := []string{}
	for x, ok := range candidates {
		if ok && Authorize(p, x) == nil {
			out = append(out, x)
		}
	}
	slices.Sort(out)
	return out
}
