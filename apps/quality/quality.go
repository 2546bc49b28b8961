// Package quality is the quality management N app: inspection plans, results
// per lot (API, CSV import, test-bench device events), automatic judgement
// per characteristic and per lot, nonconformances with reason codes, and SPC
// (X̄-R, X̄-S, I-MR charts, run rules, capability indices).
package quality

import (
	"context"
	"fmt"
	"log/slog"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"

	"github.com/nxcloud/nxcloud/apps"
	"github.com/nxcloud/nxcloud/tenants"
)

// Service is the quality app.
type Service struct {
	db  *tenants.DB
	log *slog.Logger
	now func() time.Time
	// OnResults, when set, is called in the same transaction right after
	// results are stored for lots (API, CSV import, test-bench events), with
	// the lots' ids; an error rolls the results back. The downgrade app's
	// proposals hang here (api/apps.go).
	OnResults func(ctx context.Context, tx pgx.Tx, lotIDs []uuid.UUID) error
}

// NewService returns the quality app on db.
func NewService(db *tenants.DB, log *slog.Logger) *Service {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Service{db: db, log: log, now: time.Now}
}

// Lot is what judgement needs to know of a lot.
type Lot struct {
	ID      uuid.UUID  `json:"id"`
	Code    string     `json:"code"`
	Product string     `json:"product"`
	Grade   string     `json:"grade,omitempty"`
	LineID  *uuid.UUID `json:"line_id,omitempty"`
}

// lotByRef finds a lot by id or code; with lock the lot's row is locked (so
// results are numbered one writer at a time) without keeping other
// transactions from inserting rows that refer to it. Errors: not_found.
func lotByRef(ctx context.Context, q tenants.Querier, ref string, lock bool) (Lot, error) {
	sql := `SELECT id, code, product, grade_code, line_id FROM lots WHERE tenant_id = nx_require_tenant() AND code = $1`
	args := []any{ref}
	if id, err := uuid.Parse(ref); err == nil {
		sql = `SELECT id, code, product, grade_code, line_id FROM lots WHERE tenant_id = nx_require_tenant() AND (id = $1 OR code = $2)
			ORDER BY id = $1 DESC LIMIT 1`
		args = []any{id, ref}
	}
	if lock {
		sql += ` FOR NO KEY UPDATE`
	}
	var l Lot
	var grade *string
	if err := q.QueryRow(ctx, sql, args...).Scan(&l.ID, &l.Code, &l.Product, &grade, &l.LineID); err != nil {
		return Lot{}, tenants.StoreError(err, fmt.Sprintf("lot %q", clip(ref, 64)))
	}
	if grade != nil {
		l.Grade = *grade
	}
	return l, nil
}

// characteristicSet returns the tenant's characteristics (its sector
// template's) by key.
func characteristicSet(ctx context.Context, q tenants.Querier) (map[string]tenants.Characteristic, error) {
	var list []tenants.Characteristic
	err := q.QueryRow(ctx, `
		SELECT coalesce(s.template->'characteristics', '[]'::jsonb)
		FROM tenants t JOIN sectors s ON s.id = t.sector_id
		WHERE t.id = nx_tenant()`).Scan(&list)
	if err != nil {
		return nil, tenants.StoreError(err, "tenant's characteristics")
	}
	out := make(map[string]tenants.Characteristic, len(list))
	for _, c := range list {
		out[c.Key] = c
	}
	return out, nil
}

// actor names who acted, for created_by columns.
func actor(ctx context.Context) string {
	p, ok := tenants.PrincipalFrom(ctx)
	if !ok {
		return ""
	}
	switch {
	case p.UserID != uuid.Nil:
		return "user:" + p.UserID.String()
	case p.KeyID != uuid.Nil:
		return "key:" + p.KeyID.String()
	}
	return p.Kind
}

// clip shortens s for an error message.
func clip(s string, n int) string {
	r := []rune(s)
	if len(r) <= n {
		return s
	}
	return string(r[:n]) + "…"
}

// invalidf is shorthand for a field error.
func invalidf(field, format string, args ...any) error {
	return apps.FieldError(field, format, args...)
}
