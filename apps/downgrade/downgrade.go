// Package downgrade is the downgrade (off-grade) management N app: downgrades
// (intended → assigned grade, quantity, reason, disposition, value lost from
// the tenant's price list), proposals by rule from a lot's inspection values,
// their approval, and analytics (rates by quantity and value, Pareto of
// reasons, by period, grade, line, equipment, shift, recipe version and
// raw-material lot).
package downgrade

import (
	"context"
	"encoding/json"
	"log/slog"
	"math"
	"strings"
	"sync"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"

	"github.com/nxcloud/nxcloud/apps"
	"github.com/nxcloud/nxcloud/tenants"
)

// Inspections gives a lot's measured values per characteristic (the quality
// app).
type Inspections interface {
	LotValues(ctx context.Context, q tenants.Querier, lotID uuid.UUID) (map[string][]float64, error)
}

// Service is the downgrade app.
type Service struct {
	db  *tenants.DB
	log *slog.Logger

	mu          sync.RWMutex
	inspections Inspections
}

// NewService returns the downgrade app on db.
func NewService(db *tenants.DB, log *slog.Logger) *Service {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Service{db: db, log: log}
}

// UseInspections sets where the rule reads a lot's inspection values.
func (s *Service) UseInspections(i Inspections) {
	s.mu.Lock()
	s.inspections = i
	s.mu.Unlock()
}

func (s *Service) source() Inspections {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.inspections
}

func (s *Service) inTx(ctx context.Context, fn func(tx pgx.Tx) error) error {
	return tenants.InTx(ctx, s.db.App, fn)
}

// Dispositions of a downgraded lot.
var Dispositions = []string{"sell_lower", "rework", "remelt", "scrap"}

// Statuses of a downgrade.
var Statuses = []string{"recorded", "proposed", "approved", "rejected"}

// Downgrade is an off-grade lot's downgrade.
type Downgrade struct {
	ID            uuid.UUID      `json:"id"`
	Lot           string         `json:"lot"`
	LotID         uuid.UUID      `json:"lot_id"`
	IntendedGrade string         `json:"intended_grade"`
	AssignedGrade string         `json:"assigned_grade,omitempty"`
	Quantity      float64        `json:"quantity"`
	Unit          string         `json:"unit"`
	ReasonCode    string         `json:"reason_code"`
	Disposition   string         `json:"disposition"`
	ValueLost     *float64       `json:"value_lost,omitempty"`
	Currency      string         `json:"currency"`
	Status        string         `json:"status"`
	Source        string         `json:"source"`
	Note          string         `json:"note"`
	Evidence      map[string]any `json:"evidence"`
	CreatedAt     time.Time      `json:"created_at"`
	CreatedBy     string         `json:"created_by"`
	DecidedAt     *time.Time     `json:"decided_at,omitempty"`
	DecidedBy     string         `json:"decided_by,omitempty"`
	DecisionNote  string         `json:"decision_note,omitempty"`
}

// DowngradeInput records a downgrade.
type DowngradeInput struct {
	Lot           string   `json:"lot"`
	IntendedGrade string   `json:"intended_grade"`
	AssignedGrade string   `json:"assigned_grade"`
	Quantity      *float64 `json:"quantity"`
	ReasonCode    string   `json:"reason_code"`
	Disposition   string   `json:"disposition"`
	Note          string   `json:"note"`
}

// Decision input: a note on approving or rejecting a proposal.
type DecisionInput struct {
	Note string `json:"note"`
}

const dgColumns = `d.id, l.code, d.lot_id, d.intended_grade, coalesce(d.assigned_grade, ''), d.quantity::float8, d.unit,
	d.reason_code, d.disposition, d.value_lost::float8, d.currency, d.status, d.source, d.note, d.evidence, d.created_at,
	d.created_by, d.decided_at, d.decided_by, d.decision_note`

const dgFrom = ` FROM downgrades d JOIN lots l ON l.id = d.lot_id `

func scanDowngrade(r pgx.CollectableRow) (Downgrade, error) {
	var d Downgrade
	err := r.Scan(&d.ID, &d.Lot, &d.LotID, &d.IntendedGrade, &d.AssignedGrade, &d.Quantity, &d.Unit, &d.ReasonCode,
		&d.Disposition, &d.ValueLost, &d.Currency, &d.Status, &d.Source, &d.Note, &d.Evidence, &d.CreatedAt,
		&d.CreatedBy, &d.DecidedAt, &d.DecidedBy, &d.DecisionNote)
	d.CreatedAt = d.CreatedAt.UTC()
	if d.DecidedAt != nil {
		t := d.DecidedAt.UTC()
		d.DecidedAt = &t
	}
	if d.Evidence == nil {
		d.Evidence = map[string]any{}
	}
	return d, err
}

func downgradeByID(ctx context.Context, q tenants.Querier, id uuid.UUID) (Downgrade, error) {
	rows, err := q.Query(ctx, `SELECT `+dgColumns+dgFrom+`WHERE d.tenant_id = nx_require_tenant() AND d.id = $1`, id)
	if err != nil {
		return Downgrade{}, err
	}
	d, err := pgx.CollectExactlyOneRow(rows, scanDowngrade)
	return d, tenants.StoreError(err, "downgrade")
}

// grades loads the tenant's grades.
func grades(ctx context.Context, q tenants.Querier) (map[string]Grade, error) {
	rows, err := q.Query(ctx, `SELECT code, name, family, rank, specs FROM grades WHERE tenant_id = nx_require_tenant()`)
	if err != nil {
		return nil, err
	}
	list, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (Grade, error) {
		var g Grade
		var specs []byte
		err := r.Scan(&g.Code, &g.Name, &g.Family, &g.Rank, &specs)
		if err == nil {
			err = json.Unmarshal(specs, &g.Specs)
		}
		return g, err
	})
	out := make(map[string]Grade, len(list))
	for _, g := range list {
		out[g.Code] = g
	}
	return out, err
}

func checkGrade(gs map[string]Grade, field, code string) error {
	if _, ok := gs[code]; !ok {
		return apps.FieldError(field, "grade %q is not a grade of the sector", clip(code))
	}
	return nil
}

func clip(s string) string {
	if len(s) > 64 {
		return s[:64] + "…"
	}
	return s
}

type lotInfo struct {
	id       uuid.UUID
	code     string
	grade    string
	quantity float64
	unit     string
}

func lotByRef(ctx context.Context, q tenants.Querier, ref, field string) (lotInfo, error) {
	var id *uuid.UUID
	if u, err := uuid.Parse(ref); err == nil {
		id = &u
	}
	var l lotInfo
	err := q.QueryRow(ctx, `SELECT id, code, coalesce(grade_code, ''), quantity::float8, unit FROM lots
		WHERE tenant_id = nx_require_tenant() AND (code = $1 OR id = $2) LIMIT 1`, ref, id).
		Scan(&l.id, &l.code, &l.grade, &l.quantity, &l.unit)
	if err == pgx.ErrNoRows {
		if field == "" {
			return l, apps.Errorf(apps.NotFound, "unknown lot %q", clip(ref))
		}
		return l, apps.FieldError(field, "unknown lot %q", clip(ref))
	}
	return l, err
}

func principalName(ctx context.Context) string {
	p, ok := tenants.PrincipalFrom(ctx)
	if !ok {
		return ""
	}
	if p.Name != "" {
		return p.Name
	}
	if p.UserID != uuid.Nil {
		return p.UserID.String()
	}
	return p.KeyID.String()
}

// Record records a downgrade entered by a person (status recorded). The
// intended grade defaults to the lot's grade and the quantity to the lot's.
// Errors: invalid (fields: unknown lot, grade not in the sector, assigned
// grade not lower in the same family, reason code, disposition, quantity).
func (s *Service) Record(ctx context.Context, in DowngradeInput) (Downgrade, error) {
	if in.Lot == "" {
		return Downgrade{}, apps.FieldError("lot", "lot is required")
	}
	if !oneOf(in.Disposition, Dispositions) {
		return Downgrade{}, apps.FieldError("disposition", "disposition must be one of %s", strings.Join(Dispositions, ", "))
	}
	if in.ReasonCode == "" {
		return Downgrade{}, apps.FieldError("reason_code", "reason_code is required (one of the tenant's defect codes)")
	}
	if in.Quantity != nil {
		if q := *in.Quantity; math.IsNaN(q) || math.IsInf(q, 0) || q <= 0 {
			return Downgrade{}, apps.FieldError("quantity", "quantity must be greater than 0")
		}
	}
	if len(in.Note) > 2000 {
		return Downgrade{}, apps.FieldError("note", "note must be at most 2000 bytes")
	}
	var out Downgrade
	err := s.inTx(ctx, func(tx pgx.Tx) error {
		lot, err := lotByRef(ctx, tx, in.Lot, "lot")
		if err != nil {
			return err
		}
		gs, err := grades(ctx, tx)
		if err != nil {
			return err
		}
		if in.IntendedGrade == "" {
			in.IntendedGrade = lot.grade
		}
		if in.IntendedGrade == "" {
			return apps.FieldError("intended_grade", "the lot has no grade: give intended_grade")
		}
		if err := checkGrade(gs, "intended_grade", in.IntendedGrade); err != nil {
			return err
		}
		if in.Disposition == "sell_lower" && in.AssignedGrade == "" {
			return apps.FieldError("assigned_grade", "assigned_grade is required to sell as a lower grade")
		}
		if in.AssignedGrade != "" {
			if err := checkGrade(gs, "assigned_grade", in.AssignedGrade); err != nil {
				return err
			}
			i, a := gs[in.IntendedGrade], gs[in.AssignedGrade]
			if a.Family != i.Family || a.Rank >= i.Rank {
				return apps.FieldError("assigned_grade", "%s is not a lower grade of %s's family %s", a.Code, i.Code, i.Family)
			}
		}
		if err := checkReason(ctx, tx, in.ReasonCode); err != nil {
			return err
		}
		qty := lot.quantity
		if in.Quantity != nil {
			qty = *in.Quantity
		}
		if qty > lot.quantity*(1+1e-9) {
			return apps.FieldError("quantity", "lot %s has %g %s; %g cannot be downgraded", lot.code, lot.quantity, lot.unit, qty)
		}
		if qty <= 0 {
			return apps.FieldError("quantity", "lot %s has no quantity: give quantity", lot.code)
		}
		// Downgrades of one lot never add up to more than the lot: they are
		// recorded one at a time per lot (row lock).
		if _, err := tx.Exec(ctx, `SELECT 1 FROM lots WHERE tenant_id = nx_require_tenant() AND id = $1 FOR UPDATE`, lot.id); err != nil {
			return err
		}
		var done float64
		if err := tx.QueryRow(ctx, `SELECT coalesce(sum(quantity), 0)::float8 FROM downgrades
			WHERE tenant_id = nx_require_tenant() AND lot_id = $1 AND status IN ('recorded', 'approved')`, lot.id).Scan(&done); err != nil {
			return err
		}
		if done+qty > lot.quantity*(1+1e-9) {
			return apps.FieldError("quantity", "lot %s has %g %s of which %g are already downgraded; %g more exceeds it", lot.code, lot.quantity, lot.unit, done, qty)
		}
		value, currency, err := valueLost(ctx, tx, in.IntendedGrade, in.AssignedGrade, in.Disposition, qty)
		if err != nil {
			return err
		}
		var id uuid.UUID
		err = tx.QueryRow(ctx, `INSERT INTO downgrades (tenant_id, lot_id, intended_grade, assigned_grade, quantity, unit,
				reason_code, disposition, value_lost, currency, status, source, note, created_by)
			VALUES (nx_require_tenant(), $1, $2, nullif($3, ''), $4, $5, $6, $7, $8, $9, 'recorded', 'user', $10, $11) RETURNING id`,
			lot.id, in.IntendedGrade, in.AssignedGrade, qty, lot.unit, in.ReasonCode, in.Disposition, value, currency,
			in.Note, principalName(ctx)).Scan(&id)
		if err != nil {
			return tenants.StoreError(err, "downgrade")
		}
		out, err = downgradeByID(ctx, tx, id)
		return err
	})
	return out, err
}

func oneOf(v string, set []string) bool {
	for _, s := range set {
		if s == v {
			return true
		}
	}
	return false
}

func checkReason(ctx context.Context, q tenants.Querier, code string) error {
	var ok bool
	if err := q.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM defect_codes WHERE tenant_id = nx_require_tenant() AND code = $1)`, code).Scan(&ok); err != nil {
		return err
	}
	if !ok {
		return apps.FieldError("reason_code", "reason_code %q is not one of the tenant's defect codes", clip(code))
	}
	return nil
}

// valueLost costs a downgrade from the tenant's price list: selling lower
// loses the price difference, rework costs its rework cost, re-melting and
// scrapping lose the intended price less the recovered value, per unit. Nil
// when a price it needs is not set.
func valueLost(ctx context.Context, q tenants.Querier, intended, assigned, disposition string, qty float64) (*float64, string, error) {
	st, err := settings(ctx, q)
	if err != nil {
		return nil, "", err
	}
	price := func(grade string) (float64, bool, error) {
		var p float64
		err := q.QueryRow(ctx, `SELECT price::float8 FROM grade_prices WHERE tenant_id = nx_require_tenant() AND grade_code = $1`, grade).Scan(&p)
		if err == pgx.ErrNoRows {
			return 0, false, nil
		}
		return p, err == nil, err
	}
	var v float64
	switch disposition {
	case "rework":
		v = st.ReworkCost * qty
	default:
		pi, ok, err := price(intended)
		if err != nil || !ok {
			return nil, st.Currency, err
		}
		recovered := st.ScrapValue
		switch disposition {
		case "remelt":
			recovered = st.RemeltValue
		case "sell_lower":
			pa, ok, err := price(assigned)
			if err != nil || !ok {
				return nil, st.Currency, err
			}
			recovered = pa
		}
		v = (pi - recovered) * qty
	}
	v = math.Round(v*100) / 100
	return &v, st.Currency, nil
}

// Downgrade returns a downgrade. Errors: not_found.
func (s *Service) Downgrade(ctx context.Context, ref string) (Downgrade, error) {
	id, err := uuid.Parse(ref)
	if err != nil {
		return Downgrade{}, apps.Errorf(apps.NotFound, "unknown downgrade %q", clip(ref))
	}
	var out Downgrade
	err = s.inTx(ctx, func(tx pgx.Tx) error {
		out, err = downgradeByID(ctx, tx, id)
		return err
	})
	return out, err
}

// Query filters the downgrade list.
type Query struct {
	Status, Lot, Grade string
	From, To           *time.Time
	Limit              int
	Before             *time.Time
}

// Page is a page of downgrades, newest first.
type Page struct {
	Items      []Downgrade `json:"items"`
	NextCursor string      `json:"next_cursor,omitempty"`
}

// Downgrades lists downgrades, newest first. Errors: invalid, not_found (lot).
func (s *Service) Downgrades(ctx context.Context, q Query) (Page, error) {
	if q.Limit == 0 {
		q.Limit = 100
	}
	if q.Limit > 1000 {
		return Page{}, apps.FieldError("limit", "limit must be at most 1000")
	}
	if q.Status != "" && !oneOf(q.Status, Statuses) {
		return Page{}, apps.FieldError("status", "status must be one of %s", strings.Join(Statuses, ", "))
	}
	page := Page{Items: []Downgrade{}}
	err := s.inTx(ctx, func(tx pgx.Tx) error {
		var lot *uuid.UUID
		if q.Lot != "" {
			l, err := lotByRef(ctx, tx, q.Lot, "")
			if err != nil {
				return err
			}
			lot = &l.id
		}
		rows, err := tx.Query(ctx, `SELECT `+dgColumns+dgFrom+`
			WHERE d.tenant_id = nx_require_tenant() AND ($1 = '' OR d.status = $1) AND ($2::uuid IS NULL OR d.lot_id = $2)
			  AND ($3 = '' OR d.intended_grade = $3 OR d.assigned_grade = $3)
			  AND ($4::timestamptz IS NULL OR d.created_at >= $4) AND ($5::timestamptz IS NULL OR d.created_at < $5)
			  AND ($6::timestamptz IS NULL OR d.created_at < $6)
			ORDER BY d.created_at DESC, d.id DESC LIMIT $7`, q.Status, lot, q.Grade, q.From, q.To, q.Before, q.Limit+1)
		if err != nil {
			return err
		}
		page.Items, err = pgx.CollectRows(rows, scanDowngrade)
		return err
	})
	if err != nil {
		return Page{}, err
	}
	if len(page.Items) > q.Limit {
		page.Items = page.Items[:q.Limit]
		page.NextCursor = page.Items[q.Limit-1].CreatedAt.Format(time.RFC3339Nano)
	}
	return page, nil
}

// DecideProposal approves or rejects a proposal. Errors: not_found, conflict (not a
// proposal awaiting a decision).
func (s *Service) DecideProposal(ctx context.Context, ref string, approve bool, in DecisionInput) (Downgrade, error) {
	id, err := uuid.Parse(ref)
	if err != nil {
		return Downgrade{}, apps.Errorf(apps.NotFound, "unknown downgrade %q", clip(ref))
	}
	if len(in.Note) > 2000 {
		return Downgrade{}, apps.FieldError("note", "note must be at most 2000 bytes")
	}
	status := "rejected"
	if approve {
		status = "approved"
	}
	var out Downgrade
	err = s.inTx(ctx, func(tx pgx.Tx) error {
		cur, err := downgradeByID(ctx, tx, id)
		if err != nil {
			return err
		}
		if cur.Status != "proposed" {
			return apps.Errorf(apps.Conflict, "downgrade %s is %s, not a proposal awaiting a decision", id, cur.Status)
		}
		if _, err := tx.Exec(ctx, `UPDATE downgrades SET status = $2, decided_at = now(), decided_by = $3, decision_note = $4
			WHERE tenant_id = nx_require_tenant() AND id = $1 AND status = 'proposed'`, id, status, principalName(ctx), in.Note); err != nil {
			return err
		}
		if approve && cur.AssignedGrade != "" {
			// The lot is sold as its assigned grade from now on.
			if _, err := tx.Exec(ctx, `UPDATE lots SET attributes = attributes || jsonb_build_object('assigned_grade', $2::text), updated_at = now()
				WHERE tenant_id = nx_require_tenant() AND id = $1`, cur.LotID, cur.AssignedGrade); err != nil {
				return err
			}
		}
		out, err = downgradeByID(ctx, tx, id)
		return err
	})
	return out, err
}
