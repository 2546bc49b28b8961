package tenants

// API keys managed by the enterprise: machines' credentials, scoped,
// expiring and revocable. The secret is shown once, when the key is created;
// the database keeps its salted hash.

import (
	"context"
	"net/http"
	"slices"
	"strings"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/labstack/echo/v4"

	"github.com/nxcloud/nxcloud/apps"
)

// API key statuses.
const (
	KeyActive  = "active"
	KeyExpired = "expired"
	KeyRevoked = "revoked"
)

// MaxAPIKeyDuration is how far ahead an API key may expire.
const MaxAPIKeyDuration = 2 * 366 * 24 * time.Hour

// APIKey is an API key as its enterprise sees it: never the secret.
type APIKey struct {
	ID uuid.UUID `json:"id"`
	// Prefix is the public part: the key reads nxk_<prefix>_<secret>.
	Prefix    string     `json:"prefix"`
	Name      string     `json:"name"`
	Scopes    []string   `json:"scopes"`
	ExpiresAt *time.Time `json:"expires_at,omitempty"`
	RevokedAt *time.Time `json:"revoked_at,omitempty"`
	CreatedBy *uuid.UUID `json:"created_by,omitempty"`
	CreatedAt time.Time  `json:"created_at"`
	// Status is active, expired or revoked.
	Status string `json:"status"`
}

// APIKeyInput creates an API key.
type APIKeyInput struct {
	Name   string   `json:"name"`
	Scopes []string `json:"scopes"`
	// ExpiresAt is RFC 3339, in the future and at most two years ahead;
	// empty: the key does not expire.
	ExpiresAt string `json:"expires_at,omitempty"`
}

// APIKeyCreated is a new API key with the key itself, shown once.
type APIKeyCreated struct {
	APIKey APIKey `json:"api_key"`
	Key    string `json:"key"`
}

// keyScopes validates the scopes of a new key and returns them sorted,
// without duplicates.
func keyScopes(in []string) ([]string, error) {
	if len(in) == 0 {
		return nil, apps.FieldError("scopes", "at least one scope is required")
	}
	if len(in) > 64 {
		return nil, apps.FieldError("scopes", "at most 64 scopes")
	}
	allowed := APIKeyScopes()
	for _, s := range in {
		switch {
		case s == AllScopes:
			return nil, apps.FieldError("scopes", "name the scopes the key needs; %q is not available to new keys", AllScopes)
		case slices.Contains(keyExcluded, s) && s != PermSelfRead:
			return nil, apps.FieldError("scopes", "an API key cannot hold %s: keys neither manage people, mint keys nor grant access", s)
		case !slices.Contains(allowed, s):
			return nil, apps.FieldError("scopes", "unknown scope %q; a key may hold: %s", clip(s, 80), strings.Join(allowed, ", "))
		}
	}
	out := slices.Clone(in)
	slices.Sort(out)
	return slices.Compact(out), nil
}

// CreateAPIKey creates an API key of the caller's enterprise with scopes
// among APIKeyScopes. Errors: invalid (fields name, scopes, expires_at),
// forbidden (the caller is not the enterprise's own user or key).
func (s *Service) CreateAPIKey(ctx context.Context, p Principal, in APIKeyInput) (APIKeyCreated, error) {
	if p.OrgKind != OrgEnterprise || p.TenantID == uuid.Nil {
		return APIKeyCreated{}, apps.Errorf(apps.Forbidden, "only an enterprise's own users and keys manage its API keys")
	}
	tenant := p.TenantID
	if err := validName(in.Name); err != nil {
		return APIKeyCreated{}, err
	}
	scopes, err := keyScopes(in.Scopes)
	if err != nil {
		return APIKeyCreated{}, err
	}
	now := s.now()
	var expires *time.Time
	if in.ExpiresAt != "" {
		t, err := time.Parse(time.RFC3339Nano, in.ExpiresAt)
		switch {
		case err != nil:
			return APIKeyCreated{}, apps.FieldError("expires_at", "want an RFC 3339 time such as 2027-01-31T00:00:00Z")
		case !t.After(now):
			return APIKeyCreated{}, apps.FieldError("expires_at", "expires_at must be in the future")
		case t.After(now.Add(MaxAPIKeyDuration)):
			return APIKeyCreated{}, apps.FieldError("expires_at", "an API key expires at most two years ahead")
		}
		expires = &t
	}
	prefix, secret, salt := newPrefix(), NewSecret(), newSalt()
	k := APIKey{Prefix: prefix, Name: in.Name, Scopes: scopes, CreatedBy: actorID(p)}
	err = InTx(WithTenant(ctx, tenant), s.db.App, func(tx pgx.Tx) error {
		rows, err := tx.Query(ctx, `INSERT INTO api_keys (tenant_id, prefix, salt, hash, name, scopes, expires_at, created_by)
			VALUES (nx_tenant(), $1, $2, $3, $4, $5, $6, $7) RETURNING `+apiKeyColumns,
			prefix, salt, hashSecret(salt, secret), in.Name, scopes, expires, k.CreatedBy)
		if err != nil {
			return err
		}
		k, err = pgx.CollectExactlyOneRow(rows, scanAPIKey)
		return StoreError(err, "API key")
	})
	if err != nil {
		return APIKeyCreated{}, err
	}
	k.Status = keyStatus(k, now)
	s.auditEvent(ctx, AuditEntry{Tenant: tenant, Action: "api_key.create", Resource: "api-keys/" + k.ID.String(),
		Result: AuditOK, Detail: keyDetail(k)})
	return APIKeyCreated{APIKey: k, Key: apiKeyTag + prefix + "_" + secret}, nil
}

// APIKeys lists the API keys of the tenant of ctx, newest first, revoked and
// expired ones included.
func (s *Service) APIKeys(ctx context.Context) ([]APIKey, error) {
	var out []APIKey
	err := InTx(ctx, s.db.App, func(tx pgx.Tx) error {
		rows, err := tx.Query(ctx, `SELECT `+apiKeyColumns+` FROM api_keys ORDER BY created_at DESC, id`)
		if err != nil {
			return err
		}
		out, err = pgx.CollectRows(rows, scanAPIKey)
		return err
	})
	if err != nil {
		return nil, err
	}
	now := s.now()
	for i := range out {
		out[i].Status = keyStatus(out[i], now)
	}
	return out, nil
}

// APIKey returns an API key of the tenant of ctx by id. Errors: not_found
// (also another tenant's key).
func (s *Service) APIKey(ctx context.Context, ref string) (APIKey, error) {
	id, err := keyRef(ref)
	if err != nil {
		return APIKey{}, err
	}
	var k APIKey
	err = InTx(ctx, s.db.App, func(tx pgx.Tx) error {
		k, err = apiKeyByID(ctx, tx, id)
		return err
	})
	if err != nil {
		return APIKey{}, err
	}
	k.Status = keyStatus(k, s.now())
	return k, nil
}

// RevokeAPIKey revokes an API key of the tenant of ctx; revoking a revoked
// key changes nothing. Every replica refuses the key within seconds (at once
// with Redis). Errors: not_found (also another tenant's key).
func (s *Service) RevokeAPIKey(ctx context.Context, ref string) (APIKey, error) {
	tenant, ok := FromContext(ctx)
	if !ok {
		return APIKey{}, apps.Errorf(apps.Unauthorized, "no tenant in this request")
	}
	id, err := keyRef(ref)
	if err != nil {
		return APIKey{}, err
	}
	var k APIKey
	var changed bool
	err = InTx(ctx, s.db.App, func(tx pgx.Tx) error {
		tag, err := tx.Exec(ctx, `UPDATE api_keys SET revoked_at = now() WHERE id = $1 AND revoked_at IS NULL`, id)
		if err != nil {
			return err
		}
		changed = tag.RowsAffected() == 1
		k, err = apiKeyByID(ctx, tx, id)
		return err
	})
	if err != nil {
		return APIKey{}, err
	}
	k.Status = keyStatus(k, s.now())
	if changed {
		s.auth.forgetKey(k.Prefix)
		s.announceRevoked(ctx, revokedKeyTag+k.Prefix)
		s.auditEvent(ctx, AuditEntry{Tenant: tenant, Action: "api_key.revoke", Resource: "api-keys/" + k.ID.String(),
			Result: AuditOK, Detail: keyDetail(k)})
	}
	return k, nil
}

const apiKeyColumns = `id, prefix, name, scopes, expires_at, revoked_at, created_by, created_at`

func scanAPIKey(r pgx.CollectableRow) (APIKey, error) {
	var k APIKey
	err := r.Scan(&k.ID, &k.Prefix, &k.Name, &k.Scopes, &k.ExpiresAt, &k.RevokedAt, &k.CreatedBy, &k.CreatedAt)
	k.CreatedAt = k.CreatedAt.UTC()
	for _, t := range []**time.Time{&k.ExpiresAt, &k.RevokedAt} {
		if *t != nil {
			u := (*t).UTC()
			*t = &u
		}
	}
	return k, err
}

func apiKeyByID(ctx context.Context, tx pgx.Tx, id uuid.UUID) (APIKey, error) {
	rows, err := tx.Query(ctx, `SELECT `+apiKeyColumns+` FROM api_keys WHERE id = $1`, id)
	if err != nil {
		return APIKey{}, err
	}
	k, err := pgx.CollectExactlyOneRow(rows, scanAPIKey)
	return k, StoreError(err, "API key")
}

// keyRef parses an API key id from a path; anything else is not found.
func keyRef(ref string) (uuid.UUID, error) {
	id, err := uuid.Parse(ref)
	if err != nil || len(ref) != 36 {
		return uuid.Nil, apps.Errorf(apps.NotFound, "API key not found")
	}
	return id, nil
}

func keyStatus(k APIKey, now time.Time) string {
	switch {
	case k.RevokedAt != nil:
		return KeyRevoked
	case k.ExpiresAt != nil && !k.ExpiresAt.After(now):
		return KeyExpired
	}
	return KeyActive
}

// keyDetail is what the audit log records of a key: never its secret.
func keyDetail(k APIKey) map[string]any {
	d := map[string]any{"key": k.ID.String(), "prefix": k.Prefix, "name": k.Name, "scopes": k.Scopes}
	if k.ExpiresAt != nil {
		d["expires_at"] = k.ExpiresAt.Format(time.RFC3339Nano)
	}
	return d
}

// registerAPIKeys adds an enterprise's management of its API keys to g.
func (h *Handler) registerAPIKeys(g *echo.Group, r *Routes) {
	r.Add(g, http.MethodGet, "/api-keys", PermKeysRead, h.apiKeys)
	r.Add(g, http.MethodPost, "/api-keys", PermKeysWrite, h.createAPIKey)
	r.Add(g, http.MethodGet, "/api-keys/:key", PermKeysRead, h.apiKey)
	r.Add(g, http.MethodDelete, "/api-keys/:key", PermKeysWrite, h.revokeAPIKey)
}

func (h *Handler) apiKeys(c echo.Context) error {
	out, err := h.svc.APIKeys(c.Request().Context())
	if err != nil {
		return err
	}
	if out == nil {
		out = []APIKey{}
	}
	return c.JSON(http.StatusOK, map[string]any{"items": out})
}

func (h *Handler) apiKey(c echo.Context) error {
	k, err := h.svc.APIKey(c.Request().Context(), c.Param("key"))
	if err != nil {
		return err
	}
	return c.JSON(http.StatusOK, k)
}

func (h *Handler) createAPIKey(c echo.Context) error {
	p, err := principal(c)
	if err != nil {
		return err
	}
	var in APIKeyInput
	if err := apps.Bind(c.Request().Body, &in); err != nil {
		return err
	}
	out, err := h.svc.CreateAPIKey(c.Request().Context(), p, in)
	if err != nil {
		return err
	}
	return c.JSON(http.StatusCreated, out)
}

func (h *Handler) revokeAPIKey(c echo.Context) error {
	k, err := h.svc.RevokeAPIKey(c.Request().Context(), c.Param("key"))
	if err != nil {
		return err
	}
	return c.JSON(http.StatusOK, k)
}
