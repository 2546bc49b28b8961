// Package batch is the batch (lot) tracing N app: lots and their runs on
// equipment, genealogy links, customers and shipments, backward and forward
// traces to any depth (with each lot's equipment, telemetry summary and the
// details other apps add), exports, and label codes with a public resolve.
package batch

import (
	"context"
	"log/slog"
	"math"
	"regexp"
	"sync"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"

	"github.com/nxcloud/nxcloud/apps"
	"github.com/nxcloud/nxcloud/tenants"
)

// DetailSource adds one app's records to the lots of a trace (quality's
// inspections, recipe's deviations, downgrade's downgrades). q is a
// transaction scoped to the tenant; the answer maps lot ids to the details of
// that lot (lots without any may be absent).
type DetailSource interface {
	LotDetails(ctx context.Context, q tenants.Querier, lotIDs []uuid.UUID) (map[uuid.UUID]any, error)
}

// Service is the batch app.
type Service struct {
	db  *tenants.DB
	log *slog.Logger
	now func() time.Time

	mu      sync.RWMutex
	details map[string]DetailSource
}

// NewService returns the batch app on db.
func NewService(db *tenants.DB, log *slog.Logger) *Service {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Service{db: db, log: log, now: time.Now, details: map[string]DetailSource{}}
}

// AddDetail makes every trace node carry details[key] from src.
func (s *Service) AddDetail(key string, src DetailSource) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.details[key] = src
}

func (s *Service) detailSources() map[string]DetailSource {
	s.mu.RLock()
	defer s.mu.RUnlock()
	out := make(map[string]DetailSource, len(s.details))
	for k, v := range s.details {
		out[k] = v
	}
	return out
}

// inTx runs fn in a transaction scoped to the tenant of ctx.
func (s *Service) inTx(ctx context.Context, fn func(tx pgx.Tx) error) error {
	return tenants.InTx(ctx, s.db.App, fn)
}

var (
	codeRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9_.:/-]{0,63}$`)
	keyRE  = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$`)
)

// Lot kinds, statuses and link kinds.
var (
	LotKinds    = []string{"raw", "wip", "finished"}
	LotStatuses = []string{"planned", "running", "done", "on_hold", "shipped", "consumed", "scrapped"}
	LinkKinds   = []string{"consume", "split", "merge", "rework", "ship"}
)

func oneOf(v string, set []string) bool {
	for _, s := range set {
		if s == v {
			return true
		}
	}
	return false
}

// checkQuantity refuses negative, NaN and infinite quantities; positive
// demands > 0.
func checkQuantity(field string, v float64, positive bool) error {
	if math.IsNaN(v) || math.IsInf(v, 0) {
		return apps.FieldError(field, "%s must be a finite number", field)
	}
	if v < 0 || (positive && v == 0) {
		if positive {
			return apps.FieldError(field, "%s must be greater than 0", field)
		}
		return apps.FieldError(field, "%s must not be negative", field)
	}
	if v > 1e12 {
		return apps.FieldError(field, "%s is too large", field)
	}
	return nil
}

// text checks a free-text field's length.
func text(field, v string, max int) error {
	if len(v) > max {
		return apps.FieldError(field, "%s must be at most %d bytes", field, max)
	}
	return nil
}

// lotRef is a lot's id and code.
type lotRef struct {
	ID       uuid.UUID
	Code     string
	Quantity float64
	Unit     string
}

// resolveLot finds a lot of the tenant by code or id. Errors: not_found (with
// field when field is not "").
func resolveLot(ctx context.Context, q tenants.Querier, ref, field string) (lotRef, error) {
	var id *uuid.UUID
	if u, err := uuid.Parse(ref); err == nil {
		id = &u
	}
	var l lotRef
	err := q.QueryRow(ctx, `SELECT id, code, quantity::float8, unit FROM lots WHERE code = $1 OR id = $2 LIMIT 1`, ref, id).
		Scan(&l.ID, &l.Code, &l.Quantity, &l.Unit)
	if err == pgx.ErrNoRows {
		e := apps.Errorf(apps.NotFound, "unknown lot %q", clip(ref))
		if field != "" {
			e = apps.FieldError(field, "unknown lot %q", clip(ref))
		}
		return l, e
	}
	return l, err
}

func clip(s string) string {
	if len(s) > 64 {
		return s[:64] + "…"
	}
	return s
}
