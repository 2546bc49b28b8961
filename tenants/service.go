package tenants

import (
	"context"
	"encoding/json"
	"fmt"
	"regexp"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"

	"github.com/nxcloud/nxcloud/apps"
)

// Service manages sectors, enterprises, lines, devices and API keys.
type Service struct {
	db        DB
	templates map[string]*Template
	now       func() time.Time
	auth      *authCache
	ident     *identity   // sessions.go
	grants    *grantState // grants_access.go

	// SessionLifetime is how long a login session lasts (0: 12 hours).
	SessionLifetime time.Duration
	// LoginLimits throttle logins (zero fields take the defaults).
	LoginLimits LoginLimits
}

// NewService returns a Service on db with the embedded sector templates.
// cacheTTL bounds how long a credential check or a device's state is cached: a
// disabled device or a revoked key is refused within that time.
func NewService(db DB, templates map[string]*Template, cacheTTL time.Duration) *Service {
	return &Service{db: db, templates: templates, now: time.Now, auth: newAuthCache(cacheTTL), ident: newIdentity(),
		grants: newGrantState(cacheTTL)}
}

// Template returns the embedded template of a sector.
func (s *Service) Template(sector string) (*Template, bool) {
	t, ok := s.templates[sector]
	return t, ok
}

// LoadSectors writes the embedded sector templates into the sectors table, so
// the database knows every sector this binary can onboard.
func (s *Service) LoadSectors(ctx context.Context) error {
	for _, t := range s.templates {
		body, err := json.Marshal(t)
		if err != nil {
			return err
		}
		_, err = s.db.System.Exec(ctx, `
			INSERT INTO sectors (id, name, version, template) VALUES ($1, $2, $3, $4)
			ON CONFLICT (id) DO UPDATE SET name = EXCLUDED.name, version = EXCLUDED.version,
				template = EXCLUDED.template, loaded_at = now()
			WHERE sectors.version <= EXCLUDED.version`,
			t.ID, t.Name, t.Version, body)
		if err != nil {
			return fmt.Errorf("load sector %s: %w", t.ID, err)
		}
	}
	return nil
}

// Sector is a sector as the operator sees it.
type Sector struct {
	ID      string `json:"id"`
	Name    string `json:"name"`
	Version int    `json:"version"`
	Models  int    `json:"device_models"`
	Grades  int    `json:"grades"`
	Defects int    `json:"defect_codes"`
}

// Sectors lists the sectors that can be onboarded.
func (s *Service) Sectors(ctx context.Context) ([]Sector, error) {
	rows, err := s.db.System.Query(ctx, `SELECT id, name, version,
		jsonb_array_length(coalesce(template->'device_models', '[]')),
		jsonb_array_length(coalesce(template->'grades', '[]')),
		jsonb_array_length(coalesce(template->'defect_codes', '[]'))
		FROM sectors ORDER BY id`)
	if err != nil {
		return nil, err
	}
	return pgx.CollectRows(rows, func(r pgx.CollectableRow) (Sector, error) {
		var x Sector
		err := r.Scan(&x.ID, &x.Name, &x.Version, &x.Models, &x.Grades, &x.Defects)
		return x, err
	})
}

var slugRE = regexp.MustCompile(`^[a-z0-9][a-z0-9-]{1,62}$`)
var keyPattern = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$`)

// EnterpriseInput creates an enterprise.
type EnterpriseInput struct {
	Slug   string `json:"slug"`
	Name   string `json:"name"`
	Sector string `json:"sector"`
	// OwnerEmail, when set, is invited to be the enterprise's owner
	// (CreateEnterpriseWithOwner).
	OwnerEmail string `json:"owner_email,omitempty"`
	// Lines and Devices, when given, are created in the new enterprise in
	// the same transaction (CreateEnterpriseWithOwner): a device's model is
	// one of the sector's, its line one of Lines.
	Lines   []LineInput   `json:"lines,omitempty"`
	Devices []DeviceInput `json:"devices,omitempty"`
}

// Onboarded is a new enterprise with its first API key and, when an owner was
// named, the owner's invitation token (both shown once).
type Onboarded struct {
	Tenant          Tenant
	APIKey          string
	OwnerInvitation string
	// Lines and Devices are those of EnterpriseInput, created; each device
	// comes with its MQTT username and secret (shown once).
	Lines   []Line
	Devices []DeviceCredentials
}

// DeviceCredentials is a device with its MQTT credentials, shown once.
type DeviceCredentials struct {
	Device   Device `json:"device"`
	Username string `json:"mqtt_username"`
	Secret   string `json:"secret"`
}

// CreateEnterprise is CreateEnterpriseWithOwner for callers that invite no
// owner: in.OwnerEmail must be empty (so an invitation token is never made
// and lost). It returns the tenant and its API key. Errors: invalid,
// conflict (slug taken).
func (s *Service) CreateEnterprise(ctx context.Context, in EnterpriseInput) (Tenant, string, error) {
	if in.OwnerEmail != "" {
		return Tenant{}, "", apps.FieldError("owner_email", "use CreateEnterpriseWithOwner to get the owner's invitation")
	}
	if len(in.Devices) > 0 {
		return Tenant{}, "", apps.FieldError("devices", "use CreateEnterpriseWithOwner to get the devices' secrets")
	}
	o, err := s.CreateEnterpriseWithOwner(ctx, in)
	return o.Tenant, o.APIKey, err
}

// CreateEnterpriseWithOwner creates a tenant in a sector and instantiates the
// sector's template (device models and metrics, defect codes, grades) for it,
// plus its enterprise organisation, a first API key and, when in.OwnerEmail
// is set, an invitation for its owner, in one transaction. Errors: invalid,
// conflict (slug taken). With in.Lines and in.Devices it also creates those
// lines and devices; every row is checked before anything is written, and a
// bad one refuses the whole call (invalid, naming the row).
func (s *Service) CreateEnterpriseWithOwner(ctx context.Context, in EnterpriseInput) (Onboarded, error) {
	if !slugRE.MatchString(in.Slug) {
		return Onboarded{}, apps.FieldError("slug", "want 2-63 lower-case letters, digits or '-', starting with a letter or digit")
	}
	if in.Name == "" || utf8.RuneCountInString(in.Name) > 200 {
		return Onboarded{}, apps.FieldError("name", "a name of 1 to 200 characters is required")
	}
	tpl, ok := s.templates[in.Sector]
	if !ok {
		return Onboarded{}, apps.FieldError("sector", "unknown sector %q", in.Sector)
	}
	if in.OwnerEmail != "" {
		if err := validEmail(normalEmail(in.OwnerEmail), "owner_email"); err != nil {
			return Onboarded{}, err
		}
	}
	lines, rows, err := checkOnboardRows(tpl, in.Lines, in.Devices)
	if err != nil {
		return Onboarded{}, err
	}
	var o Onboarded
	err = pgx.BeginFunc(ctx, s.db.System, func(tx pgx.Tx) error {
		t := &o.Tenant
		err := tx.QueryRow(ctx, `INSERT INTO tenants (slug, name, sector_id) VALUES ($1, $2, $3)
			RETURNING id, slug, name, sector_id, status, created_at`, in.Slug, in.Name, in.Sector).
			Scan(&t.ID, &t.Slug, &t.Name, &t.SectorID, &t.Status, &t.CreatedAt)
		if err != nil {
			return StoreError(err, "enterprise "+in.Slug)
		}
		if err := instantiate(ctx, tx, t.ID, tpl); err != nil {
			return err
		}
		if err := createEnterpriseOrg(ctx, tx, *t); err != nil {
			return err
		}
		if in.OwnerEmail != "" {
			inv, err := createInvitation(ctx, tx, t.ID, in.OwnerEmail, "owner", uuid.Nil)
			if err != nil {
				return err
			}
			o.OwnerInvitation = inv.Token
		}
		o.APIKey, err = createAPIKey(ctx, tx, t.ID, "initial key", "", "")
		if err != nil {
			return err
		}
		o.Lines, o.Devices, err = onboardRows(ctx, tx, t.ID, lines, rows)
		return err
	})
	if err != nil {
		return Onboarded{}, err
	}
	return o, nil
}

func instantiate(ctx context.Context, tx pgx.Tx, tenant uuid.UUID, tpl *Template) error {
	for _, m := range tpl.DeviceModels {
		var modelID uuid.UUID
		if err := tx.QueryRow(ctx, `INSERT INTO device_models (tenant_id, key, name, kind) VALUES ($1, $2, $3, $4) RETURNING id`,
			tenant, m.Key, m.Name, m.Kind).Scan(&modelID); err != nil {
			return fmt.Errorf("device model %s: %w", m.Key, err)
		}
		for _, x := range m.Metrics {
			if _, err := tx.Exec(ctx, `INSERT INTO metrics (tenant_id, device_model_id, key, name, unit, min_value, max_value)
				VALUES ($1, $2, $3, $4, $5, $6, $7)`, tenant, modelID, x.Key, x.Name, x.Unit, x.Min, x.Max); err != nil {
				return fmt.Errorf("metric %s.%s: %w", m.Key, x.Key, err)
			}
		}
	}
	for _, d := range tpl.DefectCodes {
		if _, err := tx.Exec(ctx, `INSERT INTO defect_codes (tenant_id, code, name, characteristic) VALUES ($1, $2, $3, $4)`,
			tenant, d.Code, d.Name, d.Characteristic); err != nil {
			return fmt.Errorf("defect code %s: %w", d.Code, err)
		}
	}
	for _, g := range tpl.Grades {
		specs, err := json.Marshal(g.Specs)
		if err != nil {
			return err
		}
		if _, err := tx.Exec(ctx, `INSERT INTO grades (tenant_id, code, name, family, rank, specs) VALUES ($1, $2, $3, $4, $5, $6)`,
			tenant, g.Code, g.Name, g.Family, g.Rank, specs); err != nil {
			return fmt.Errorf("grade %s: %w", g.Code, err)
		}
	}
	return nil
}

// createAPIKey stores an API key with every permission of the enterprise
// (scopes AllScopes: the onboarding and demo keys); prefix and secret are
// generated when empty.
func createAPIKey(ctx context.Context, q Querier, tenant uuid.UUID, name, prefix, secret string) (string, error) {
	if prefix == "" {
		prefix = newPrefix()
	}
	if secret == "" {
		secret = NewSecret()
	}
	salt := newSalt()
	_, err := q.Exec(ctx, `INSERT INTO api_keys (tenant_id, prefix, salt, hash, name) VALUES ($1, $2, $3, $4, $5)`,
		tenant, prefix, salt, hashSecret(salt, secret), name)
	if err != nil {
		return "", StoreError(err, "API key")
	}
	return apiKeyTag + prefix + "_" + secret, nil
}

// Enterprises lists every tenant (operator view).
func (s *Service) Enterprises(ctx context.Context) ([]Tenant, error) {
	rows, err := s.db.System.Query(ctx, `SELECT id, slug, name, sector_id, status, created_at FROM tenants ORDER BY slug`)
	if err != nil {
		return nil, err
	}
	return pgx.CollectRows(rows, scanTenant)
}

func scanTenant(r pgx.CollectableRow) (Tenant, error) {
	var t Tenant
	err := r.Scan(&t.ID, &t.Slug, &t.Name, &t.SectorID, &t.Status, &t.CreatedAt)
	return t, err
}

// EnterpriseBySlug returns a tenant by slug (operator view). Errors: not_found.
func (s *Service) EnterpriseBySlug(ctx context.Context, slug string) (Tenant, error) {
	if !slugRE.MatchString(slug) {
		return Tenant{}, apps.Errorf(apps.NotFound, "enterprise %q not found", clip(slug, 64))
	}
	rows, err := s.db.System.Query(ctx, `SELECT id, slug, name, sector_id, status, created_at FROM tenants WHERE slug = $1`, slug)
	if err != nil {
		return Tenant{}, err
	}
	t, err := pgx.CollectExactlyOneRow(rows, scanTenant)
	return t, StoreError(err, "enterprise "+slug)
}

// Current returns the tenant of ctx (tenant view).
func (s *Service) Current(ctx context.Context) (Tenant, error) {
	var t Tenant
	err := InTx(ctx, s.db.App, func(tx pgx.Tx) error {
		rows, err := tx.Query(ctx, `SELECT id, slug, name, sector_id, status, created_at FROM tenants WHERE id = nx_tenant()`)
		if err != nil {
			return err
		}
		t, err = pgx.CollectExactlyOneRow(rows, scanTenant)
		return StoreError(err, "enterprise")
	})
	return t, err
}

// LineInput creates a line.
type LineInput struct {
	Key  string `json:"key"`
	Name string `json:"name"`
}

// CreateLine adds a production line to a tenant. Errors: invalid, conflict.
func (s *Service) CreateLine(ctx context.Context, tenant uuid.UUID, in LineInput) (Line, error) {
	if err := in.normalize(); err != nil {
		return Line{}, err
	}
	var l Line
	err := InTx(WithTenant(ctx, tenant), s.db.App, func(tx pgx.Tx) error {
		var err error
		l, err = createLineTx(ctx, tx, in)
		return err
	})
	return l, err
}

// normalize checks a line's fields and fills the name's default. Errors:
// invalid (with the field).
func (in *LineInput) normalize() error {
	if !keyPattern.MatchString(in.Key) {
		return apps.FieldError("key", "want 1-64 letters, digits, '_', '.' or '-'")
	}
	if in.Name == "" {
		in.Name = in.Key
	}
	if utf8.RuneCountInString(in.Name) > 200 {
		return apps.FieldError("name", "at most 200 characters")
	}
	return nil
}

// createLineTx inserts a normalized line into the tenant of tx (nx_tenant()).
func createLineTx(ctx context.Context, tx pgx.Tx, in LineInput) (Line, error) {
	l := Line{Key: in.Key, Name: in.Name}
	err := tx.QueryRow(ctx, `INSERT INTO lines (tenant_id, key, name) VALUES (nx_tenant(), $1, $2) RETURNING id`,
		in.Key, in.Name).Scan(&l.ID)
	return l, StoreError(err, "line "+in.Key)
}

// Lines lists the lines of the tenant of ctx.
func (s *Service) Lines(ctx context.Context) ([]Line, error) {
	var out []Line
	err := InTx(ctx, s.db.App, func(tx pgx.Tx) error {
		rows, err := tx.Query(ctx, `SELECT id, key, name FROM lines ORDER BY key`)
		if err != nil {
			return err
		}
		out, err = pgx.CollectRows(rows, func(r pgx.CollectableRow) (Line, error) {
			var l Line
			return l, r.Scan(&l.ID, &l.Key, &l.Name)
		})
		return err
	})
	return out, err
}

// Models lists the device models of the tenant of ctx with their metrics.
func (s *Service) Models(ctx context.Context) ([]Model, error) {
	var out []Model
	err := InTx(ctx, s.db.App, func(tx pgx.Tx) error {
		rows, err := tx.Query(ctx, `SELECT m.id, m.key, m.name, m.kind, x.id, x.key, x.name, x.unit, x.min_value, x.max_value
			FROM device_models m JOIN metrics x ON x.device_model_id = m.id
			ORDER BY m.key, x.id`)
		if err != nil {
			return err
		}
		defer rows.Close()
		for rows.Next() {
			var m Model
			var x Metric
			if err := rows.Scan(&m.ID, &m.Key, &m.Name, &m.Kind, &x.ID, &x.Key, &x.Name, &x.Unit, &x.Min, &x.Max); err != nil {
				return err
			}
			if n := len(out); n == 0 || out[n-1].ID != m.ID {
				out = append(out, m)
			}
			out[len(out)-1].Metrics = append(out[len(out)-1].Metrics, x)
		}
		return rows.Err()
	})
	return out, err
}

// ModelMetrics returns the metrics of a device model (system view, for ingest).
func (s *Service) ModelMetrics(ctx context.Context, model uuid.UUID) ([]Metric, error) {
	rows, err := s.db.System.Query(ctx, `SELECT id, key, name, unit, min_value, max_value FROM metrics
		WHERE device_model_id = $1 ORDER BY id`, model)
	if err != nil {
		return nil, err
	}
	return pgx.CollectRows(rows, func(r pgx.CollectableRow) (Metric, error) {
		var x Metric
		return x, r.Scan(&x.ID, &x.Key, &x.Name, &x.Unit, &x.Min, &x.Max)
	})
}

// clip shortens s for an error message, at a rune boundary.
func clip(s string, n int) string {
	s = strings.ToValidUTF8(s, "?")
	if len(s) <= n {
		return s
	}
	for n > 0 && !utf8.RuneStart(s[n]) {
		n--
	}
	return s[:n] + "…"
}
