// Package tenants holds enterprises (the tenants), their sector templates,
// lines, devices and API keys, and the tenant scoping every query runs under.
package tenants

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/nxcloud/nxcloud/apps"
)

// Tenant is an enterprise on the platform.
type Tenant struct {
	ID        uuid.UUID `json:"id"`
	Slug      string    `json:"slug"`
	Name      string    `json:"name"`
	SectorID  string    `json:"sector"`
	Status    string    `json:"status"`
	CreatedAt time.Time `json:"created_at"`
}

// Line is a production line of a tenant.
type Line struct {
	ID   uuid.UUID `json:"id"`
	Key  string    `json:"key"`
	Name string    `json:"name"`
}

// Device is a registered device. Its secret is only ever returned once, when it
// is created or rotated.
type Device struct {
	ID        uuid.UUID  `json:"id"`
	TenantID  uuid.UUID  `json:"tenant_id"`
	Key       string     `json:"key"`
	Name      string     `json:"name"`
	ModelID   uuid.UUID  `json:"model_id"`
	ModelKey  string     `json:"model"`
	LineID    *uuid.UUID `json:"line_id,omitempty"`
	LineKey   string     `json:"line,omitempty"`
	Status    string     `json:"status"`
	CreatedAt time.Time  `json:"created_at"`
}

// Identity is what a device credential resolves to: the tenant and device a
// connection speaks for.
type Identity struct {
	TenantID   uuid.UUID
	TenantSlug string
	DeviceID   uuid.UUID
	DeviceKey  string
	ModelID    uuid.UUID
	// Active is false when the device or its tenant is disabled.
	Active bool
}

// Metric is one metric of a device model, with its valid range.
type Metric struct {
	ID   int32    `json:"id"`
	Key  string   `json:"key"`
	Name string   `json:"name"`
	Unit string   `json:"unit"`
	Min  *float64 `json:"min,omitempty"`
	Max  *float64 `json:"max,omitempty"`
}

// Model is a device model: the metrics its devices may send.
type Model struct {
	ID      uuid.UUID `json:"id"`
	Key     string    `json:"key"`
	Name    string    `json:"name"`
	Kind    string    `json:"kind"`
	Metrics []Metric  `json:"metrics"`
}

// DB holds the two connection pools: System runs as the schema owner (or a role
// with BYPASSRLS) for migrations, ingest and cross-tenant jobs; App runs as
// nxcloud_app, under row-level security, for everything a tenant asks.
type DB struct {
	System *pgxpool.Pool
	App    *pgxpool.Pool
}

// Querier is what both a pool and a transaction offer.
type Querier interface {
	Exec(ctx context.Context, sql string, args ...any) (pgconn.CommandTag, error)
	Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error)
	QueryRow(ctx context.Context, sql string, args ...any) pgx.Row
}

type ctxKey struct{}

// WithTenant returns a context that carries the tenant every query under it is
// scoped to.
func WithTenant(ctx context.Context, id uuid.UUID) context.Context {
	return context.WithValue(ctx, ctxKey{}, id)
}

// FromContext returns the tenant of ctx, if any.
func FromContext(ctx context.Context) (uuid.UUID, bool) {
	id, ok := ctx.Value(ctxKey{}).(uuid.UUID)
	return id, ok && id != uuid.Nil
}

// InTx runs fn in a transaction on the App pool scoped to the tenant of ctx:
// it sets nx.tenant_id transaction-locally, so row-level security admits only
// that tenant's rows. Without a tenant in ctx it refuses to run (unauthorized).
func InTx(ctx context.Context, pool *pgxpool.Pool, fn func(tx pgx.Tx) error) error {
	id, ok := FromContext(ctx)
	if !ok {
		return apps.Errorf(apps.Unauthorized, "no tenant in this request")
	}
	return pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, `SELECT set_config('nx.tenant_id', $1, true)`, id.String()); err != nil {
			return fmt.Errorf("scope transaction to tenant: %w", err)
		}
		return fn(tx)
	})
}

// StoreError translates database errors into application errors: no rows →
// not_found, unique violation → conflict, foreign-key/check violations →
// invalid. Other errors are returned wrapped with what.
func StoreError(err error, what string) error {
	if err == nil {
		return nil
	}
	if errors.Is(err, pgx.ErrNoRows) {
		return apps.Errorf(apps.NotFound, "%s not found", what)
	}
	var pe *pgconn.PgError
	if errors.As(err, &pe) {
		switch pe.Code {
		case "23505":
			return apps.Errorf(apps.Conflict, "%s already exists", what)
		case "23503":
			return apps.Errorf(apps.Invalid, "%s refers to something that does not exist", what)
		case "23514", "22P02", "23502":
			return apps.Errorf(apps.Invalid, "%s is not valid: %s", what, pe.Message)
		}
	}
	return fmt.Errorf("%s: %w", what, err)
}
