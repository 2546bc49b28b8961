package tenants

import (
	"context"
	"errors"
	"regexp"
	"slices"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"

	"github.com/nxcloud/nxcloud/apps"
)

// Grant statuses.
const (
	GrantActive  = "active"
	GrantExpired = "expired"
	GrantRevoked = "revoked"
)

// MaxGrantDuration is how far ahead a grant may expire: access is renewed
// explicitly, never given for good.
const MaxGrantDuration = 366 * 24 * time.Hour

// Grant lets a contractor organisation use some scopes on the granting tenant
// until it expires or is revoked.
type Grant struct {
	ID             uuid.UUID  `json:"id"`
	TenantID       uuid.UUID  `json:"tenant_id"`
	ContractorOrg  uuid.UUID  `json:"contractor_org"`
	ContractorName string     `json:"contractor_name"`
	Scopes         []string   `json:"scopes"`
	ExpiresAt      time.Time  `json:"expires_at"`
	RevokedAt      *time.Time `json:"revoked_at,omitempty"`
	CreatedBy      *uuid.UUID `json:"created_by,omitempty"`
	CreatedAt      time.Time  `json:"created_at"`
	// Status is active, expired or revoked.
	Status string `json:"status"`
}

// GrantInput creates a grant.
type GrantInput struct {
	ContractorOrg string   `json:"contractor_org"`
	Scopes        []string `json:"scopes"`
	// ExpiresAt is RFC 3339, in the future and at most a year ahead.
	ExpiresAt string `json:"expires_at"`
}

var appScopeRE = regexp.MustCompile(`^apps:[a-z][a-z0-9-]{0,62}$`)

// grantScopes validates scopes and returns them sorted, without duplicates.
func grantScopes(in []string) ([]string, error) {
	if err := validScopes(in); err != nil {
		return nil, err
	}
	if len(in) > 64 {
		return nil, apps.FieldError("scopes", "at most 64 scopes")
	}
	for _, s := range in {
		if !slices.Contains(GrantableScopes, s) && !appScopeRE.MatchString(s) {
			return nil, apps.FieldError("scopes", "scope %q: want apps:<name> with a lower-case app name", clip(s, 80))
		}
	}
	out := slices.Clone(in)
	slices.Sort(out)
	return slices.Compact(out), nil
}

// CreateGrant lets a contractor organisation use scopes on the tenant of ctx
// until in.ExpiresAt. Errors: invalid (fields contractor_org, scopes,
// expires_at; an organisation that does not exist or is not a contractor is
// refused alike), unauthorized (no tenant).
func (s *Service) CreateGrant(ctx context.Context, in GrantInput) (Grant, error) {
	tenant, ok := FromContext(ctx)
	if !ok {
		return Grant{}, apps.Errorf(apps.Unauthorized, "no tenant in this request")
	}
	org, err := uuid.Parse(in.ContractorOrg)
	if err != nil || len(in.ContractorOrg) != 36 {
		return Grant{}, apps.FieldError("contractor_org", "want the contractor organisation's id (a UUID)")
	}
	scopes, err := grantScopes(in.Scopes)
	if err != nil {
		return Grant{}, err
	}
	expires, err := time.Parse(time.RFC3339Nano, in.ExpiresAt)
	if err != nil {
		return Grant{}, apps.FieldError("expires_at", "want an RFC 3339 time such as 2027-01-31T00:00:00Z")
	}
	now := s.now()
	if !expires.After(now) {
		return Grant{}, apps.FieldError("expires_at", "expires_at must be in the future")
	}
	if expires.After(now.Add(MaxGrantDuration)) {
		return Grant{}, apps.FieldError("expires_at", "a grant lasts at most a year; renew it with a new grant")
	}
	var name string
	// Organisations live outside any one tenant: read them as the system.
	err = s.db.System.QueryRow(ctx, `SELECT name FROM orgs WHERE id = $1 AND kind = 'contractor'`, org).Scan(&name)
	if errors.Is(err, pgx.ErrNoRows) {
		return Grant{}, apps.FieldError("contractor_org", "no contractor organisation with this id")
	}
	if err != nil {
		return Grant{}, err
	}
	var createdBy *uuid.UUID
	if p, ok := PrincipalFrom(ctx); ok {
		createdBy = actorID(p)
	}
	g := Grant{ContractorOrg: org, ContractorName: name, Scopes: scopes, CreatedBy: createdBy}
	err = InTx(ctx, s.db.App, func(tx pgx.Tx) error {
		err := tx.QueryRow(ctx, `INSERT INTO grants (tenant_id, contractor_org_id, scopes, expires_at, created_by)
			VALUES (nx_tenant(), $1, $2, $3, $4) RETURNING id, tenant_id, expires_at, created_at`,
			org, scopes, expires, createdBy).Scan(&g.ID, &g.TenantID, &g.ExpiresAt, &g.CreatedAt)
		return StoreError(err, "grant")
	})
	if err != nil {
		return Grant{}, err
	}
	g.ExpiresAt, g.CreatedAt = g.ExpiresAt.UTC(), g.CreatedAt.UTC()
	g.Status = grantStatus(g, now)
	// A contractor refused a moment ago is admitted at once.
	s.grants.cache.forget(org, tenant)
	s.publishGrantChange(ctx, org, tenant)
	s.auditEvent(ctx, AuditEntry{Tenant: tenant, Action: "grant.create", Resource: "grants/" + g.ID.String(),
		Result: AuditOK, Detail: grantDetail(g)})
	return g, nil
}

// RevokeGrant revokes a grant of the tenant of ctx at once; revoking a revoked
// grant changes nothing. Every replica refuses the contractor within
// seconds. Errors: not_found (unknown id, or another tenant's grant).
func (s *Service) RevokeGrant(ctx context.Context, ref string) (Grant, error) {
	tenant, ok := FromContext(ctx)
	if !ok {
		return Grant{}, apps.Errorf(apps.Unauthorized, "no tenant in this request")
	}
	id, err := uuid.Parse(ref)
	if err != nil {
		return Grant{}, apps.Errorf(apps.NotFound, "grant not found")
	}
	var g Grant
	var changed bool
	err = InTx(ctx, s.db.App, func(tx pgx.Tx) error {
		tag, err := tx.Exec(ctx, `UPDATE grants SET revoked_at = now() WHERE id = $1 AND revoked_at IS NULL`, id)
		if err != nil {
			return err
		}
		changed = tag.RowsAffected() == 1
		g, err = grantByID(ctx, tx, id)
		return err
	})
	if err != nil {
		return Grant{}, err
	}
	g.Status = grantStatus(g, s.now())
	if err := s.contractorNames(ctx, []Grant{g}); err != nil {
		return Grant{}, err
	}
	if changed {
		s.grants.cache.forget(g.ContractorOrg, tenant)
		s.publishGrantChange(ctx, g.ContractorOrg, tenant)
		s.auditEvent(ctx, AuditEntry{Tenant: tenant, Action: "grant.revoke", Resource: "grants/" + g.ID.String(),
			Result: AuditOK, Detail: grantDetail(g)})
	}
	return g, nil
}

// Grants lists the grants of the tenant of ctx, newest first, revoked and
// expired ones included.
func (s *Service) Grants(ctx context.Context) ([]Grant, error) {
	var out []Grant
	err := InTx(ctx, s.db.App, func(tx pgx.Tx) error {
		rows, err := tx.Query(ctx, grantSelect+` ORDER BY created_at DESC, id`)
		if err != nil {
			return err
		}
		out, err = pgx.CollectRows(rows, scanGrant)
		return err
	})
	if err != nil {
		return nil, err
	}
	now := s.now()
	for i := range out {
		out[i].Status = grantStatus(out[i], now)
	}
	return out, s.contractorNames(ctx, out)
}

// Grant returns one grant of the tenant of ctx. Errors: not_found.
func (s *Service) Grant(ctx context.Context, ref string) (Grant, error) {
	id, err := uuid.Parse(ref)
	if err != nil {
		return Grant{}, apps.Errorf(apps.NotFound, "grant not found")
	}
	var g Grant
	err = InTx(ctx, s.db.App, func(tx pgx.Tx) error {
		g, err = grantByID(ctx, tx, id)
		return err
	})
	if err != nil {
		return Grant{}, err
	}
	g.Status = grantStatus(g, s.now())
	return g, s.contractorNames(ctx, []Grant{g})
}

const grantSelect = `SELECT id, tenant_id, contractor_org_id, scopes, expires_at, revoked_at, created_by, created_at FROM grants`

func grantByID(ctx context.Context, tx pgx.Tx, id uuid.UUID) (Grant, error) {
	rows, err := tx.Query(ctx, grantSelect+` WHERE id = $1`, id)
	if err != nil {
		return Grant{}, err
	}
	g, err := pgx.CollectExactlyOneRow(rows, scanGrant)
	return g, StoreError(err, "grant")
}

func scanGrant(r pgx.CollectableRow) (Grant, error) {
	var g Grant
	err := r.Scan(&g.ID, &g.TenantID, &g.ContractorOrg, &g.Scopes, &g.ExpiresAt, &g.RevokedAt, &g.CreatedBy, &g.CreatedAt)
	g.ExpiresAt, g.CreatedAt = g.ExpiresAt.UTC(), g.CreatedAt.UTC()
	if g.RevokedAt != nil {
		t := g.RevokedAt.UTC()
		g.RevokedAt = &t
	}
	return g, err
}

// contractorNames fills in the contractor organisations' names; they are not
// tenant data, so they are read as the system, for the organisations this
// tenant's grants name only.
func (s *Service) contractorNames(ctx context.Context, gs []Grant) error {
	if len(gs) == 0 {
		return nil
	}
	ids := make([]uuid.UUID, len(gs))
	for i, g := range gs {
		ids[i] = g.ContractorOrg
	}
	rows, err := s.db.System.Query(ctx, `SELECT id, name FROM orgs WHERE id = ANY($1)`, ids)
	if err != nil {
		return err
	}
	defer rows.Close()
	names := map[uuid.UUID]string{}
	for rows.Next() {
		var id uuid.UUID
		var name string
		if err := rows.Scan(&id, &name); err != nil {
			return err
		}
		names[id] = name
	}
	for i := range gs {
		gs[i].ContractorName = names[gs[i].ContractorOrg]
	}
	return rows.Err()
}

func grantStatus(g Grant, now time.Time) string {
	switch {
	case g.RevokedAt != nil:
		return GrantRevoked
	case !g.ExpiresAt.After(now):
		return GrantExpired
	}
	return GrantActive
}

func grantDetail(g Grant) map[string]any {
	return map[string]any{"grant": g.ID.String(), "contractor_org": g.ContractorOrg.String(), "scopes": g.Scopes,
		"expires_at": g.ExpiresAt.Format(time.RFC3339Nano)}
}

// actorID is the user or API key a principal speaks for.
func actorID(p Principal) *uuid.UUID {
	switch {
	case p.UserID != uuid.Nil:
		return &p.UserID
	case p.KeyID != uuid.Nil:
		return &p.KeyID
	}
	return nil
}
