package downgrade

import (
	"context"
	"errors"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"

	"github.com/nxcloud/nxcloud/apps"
	"github.com/nxcloud/nxcloud/tenants"
)

// Evaluation is the rule's answer for a lot, with the proposal it made or
// updated (none when the rule proposes nothing).
type Evaluation struct {
	Lot      string               `json:"lot"`
	Decision Decision             `json:"decision"`
	Values   map[string][]float64 `json:"values"`
	Proposal *Downgrade           `json:"proposal,omitempty"`
}

// EvaluateInput asks the rule about a lot; with values, it judges those
// (a what-if, nothing stored), without, the lot's recorded inspection values.
type EvaluateInput struct {
	Lot    string               `json:"lot"`
	Values map[string][]float64 `json:"values"`
}

// Evaluate runs the downgrade rule for a lot: on given values as a what-if,
// or on its recorded inspection values, making or updating its proposal.
// Errors: invalid (lot without a grade, values), not_found (lot),
// unavailable (no inspection source wired).
func (s *Service) Evaluate(ctx context.Context, in EvaluateInput) (Evaluation, error) {
	if in.Lot == "" {
		return Evaluation{}, apps.FieldError("lot", "lot is required")
	}
	src := s.source()
	if in.Values == nil && src == nil {
		return Evaluation{}, apps.Errorf(apps.Unavailable, "inspection results are not available to the downgrade rule; pass values")
	}
	var out Evaluation
	err := s.inTx(ctx, func(tx pgx.Tx) error {
		lot, err := lotByRef(ctx, tx, in.Lot, "lot")
		if err != nil {
			return err
		}
		if in.Values != nil {
			gs, err := grades(ctx, tx)
			if err != nil {
				return err
			}
			g, ok := gs[lot.grade]
			if !ok {
				return apps.FieldError("lot", "lot %s has no intended grade", lot.code)
			}
			out = Evaluation{Lot: lot.code, Values: in.Values, Decision: Decide(g, list(gs), in.Values)}
			return nil
		}
		out, err = s.propose(ctx, tx, src, lot.id)
		return err
	})
	return out, err
}

func list(gs map[string]Grade) []Grade {
	out := make([]Grade, 0, len(gs))
	for _, g := range gs {
		out = append(out, g)
	}
	return out
}

// ProposeForLots runs the rule for lots whose inspection results were just
// stored, in the same transaction (the quality app's OnResults hook): each
// lot that misses its intended grade but meets a lower one gets a proposal
// (its open proposal is updated); an open proposal of a lot that now meets
// its grade, or no lower grade, is withdrawn.
func (s *Service) ProposeForLots(ctx context.Context, tx pgx.Tx, lotIDs []uuid.UUID) error {
	src := s.source()
	if src == nil {
		return errors.New("downgrade: no inspection source to propose from")
	}
	for _, id := range lotIDs {
		if _, err := s.propose(ctx, tx, src, id); err != nil {
			return err
		}
	}
	return nil
}

// propose evaluates one lot on its recorded values and stores the outcome.
// The queries name the tenant: the transaction may come from a feed whose
// connection bypasses row-level security.
func (s *Service) propose(ctx context.Context, tx pgx.Tx, src Inspections, lotID uuid.UUID) (Evaluation, error) {
	var lot lotInfo
	err := tx.QueryRow(ctx, `SELECT id, code, coalesce(grade_code, ''), quantity::float8, unit FROM lots
		WHERE tenant_id = nx_require_tenant() AND id = $1`, lotID).Scan(&lot.id, &lot.code, &lot.grade, &lot.quantity, &lot.unit)
	if err != nil {
		return Evaluation{}, tenants.StoreError(err, "lot")
	}
	values, err := src.LotValues(ctx, tx, lot.id)
	if err != nil {
		return Evaluation{}, err
	}
	if values == nil {
		values = map[string][]float64{}
	}
	out := Evaluation{Lot: lot.code, Values: values}
	gs, err := grades(ctx, tx)
	if err != nil {
		return out, err
	}
	g, ok := gs[lot.grade]
	if !ok {
		out.Decision = Decision{Reason: "the lot has no intended grade: nothing to judge", Misses: []Miss{}, Tried: []string{}, Measured: []string{}}
		return out, nil
	}
	d := Decide(g, list(gs), values)
	out.Decision = d
	var open *uuid.UUID
	var oid uuid.UUID
	switch err := tx.QueryRow(ctx, `SELECT id FROM downgrades WHERE tenant_id = nx_require_tenant() AND lot_id = $1 AND status = 'proposed'`, lot.id).Scan(&oid); {
	case err == nil:
		open = &oid
	case !errors.Is(err, pgx.ErrNoRows):
		return out, err
	}
	if !d.Propose {
		if open != nil {
			if _, err := tx.Exec(ctx, `UPDATE downgrades SET status = 'rejected', decided_at = now(), decided_by = 'rule',
				decision_note = $2 WHERE tenant_id = nx_require_tenant() AND id = $1`, *open, "withdrawn by the rule: "+d.Reason); err != nil {
				return out, err
			}
		}
		return out, nil
	}
	reason, err := reasonFor(ctx, tx, d.Misses)
	if err != nil {
		return out, err
	}
	if reason == "" {
		out.Decision.Reason += "; no defect code names the missed characteristic, so no proposal"
		out.Decision.Propose, out.Decision.Assigned = false, ""
		return out, nil
	}
	qty := lot.quantity
	if qty <= 0 {
		out.Decision.Reason += "; the lot has no quantity, so no proposal"
		out.Decision.Propose = false
		return out, nil
	}
	value, currency, err := valueLost(ctx, tx, g.Code, d.Assigned, "sell_lower", qty)
	if err != nil {
		return out, err
	}
	evidence := map[string]any{"values": values, "misses": d.Misses, "tried": d.Tried, "reason": d.Reason}
	var id uuid.UUID
	if open != nil {
		id = *open
		_, err = tx.Exec(ctx, `UPDATE downgrades SET assigned_grade = $2, quantity = $3, unit = $4, reason_code = $5, value_lost = $6,
				currency = $7, evidence = $8, note = $9 WHERE tenant_id = nx_require_tenant() AND id = $1`,
			id, d.Assigned, qty, lot.unit, reason, value, currency, evidence, d.Reason)
	} else {
		err = tx.QueryRow(ctx, `INSERT INTO downgrades (tenant_id, lot_id, intended_grade, assigned_grade, quantity, unit, reason_code,
				disposition, value_lost, currency, status, source, note, evidence, created_by)
			VALUES (nx_require_tenant(), $1, $2, $3, $4, $5, $6, 'sell_lower', $7, $8, 'proposed', 'rule', $9, $10, 'rule') RETURNING id`,
			lot.id, g.Code, d.Assigned, qty, lot.unit, reason, value, currency, d.Reason, evidence).Scan(&id)
	}
	if err != nil {
		return out, tenants.StoreError(err, "downgrade proposal")
	}
	p, err := downgradeByID(ctx, tx, id)
	if err != nil {
		return out, err
	}
	out.Proposal = &p
	return out, nil
}

// reasonFor is the tenant's defect code of the first missed characteristic
// that has one.
func reasonFor(ctx context.Context, q tenants.Querier, misses []Miss) (string, error) {
	for _, m := range misses {
		var code string
		err := q.QueryRow(ctx, `SELECT code FROM defect_codes WHERE tenant_id = nx_require_tenant() AND characteristic = $1
			ORDER BY code LIMIT 1`, m.Characteristic).Scan(&code)
		if err == nil {
			return code, nil
		}
		if !errors.Is(err, pgx.ErrNoRows) {
			return "", err
		}
	}
	return "", nil
}

// LotSummary is a downgrade as a trace node shows it.
type LotSummary struct {
	ID            uuid.UUID `json:"id"`
	IntendedGrade string    `json:"intended_grade"`
	AssignedGrade string    `json:"assigned_grade,omitempty"`
	Quantity      float64   `json:"quantity"`
	Unit          string    `json:"unit"`
	ReasonCode    string    `json:"reason_code"`
	Disposition   string    `json:"disposition"`
	Status        string    `json:"status"`
	ValueLost     *float64  `json:"value_lost,omitempty"`
}

// LotDetails gives the downgrades of lots (for batch traces, key
// "downgrades"), rejected ones left out.
func (s *Service) LotDetails(ctx context.Context, q tenants.Querier, lotIDs []uuid.UUID) (map[uuid.UUID]any, error) {
	rows, err := q.Query(ctx, `SELECT lot_id, id, intended_grade, coalesce(assigned_grade, ''), quantity::float8, unit, reason_code,
			disposition, status, value_lost::float8
		FROM downgrades WHERE tenant_id = nx_require_tenant() AND lot_id = ANY($1) AND status <> 'rejected'
		ORDER BY created_at`, lotIDs)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	out := map[uuid.UUID]any{}
	for rows.Next() {
		var lot uuid.UUID
		var d LotSummary
		if err := rows.Scan(&lot, &d.ID, &d.IntendedGrade, &d.AssignedGrade, &d.Quantity, &d.Unit, &d.ReasonCode, &d.Disposition, &d.Status, &d.ValueLost); err != nil {
			return nil, err
		}
		list, _ := out[lot].([]LotSummary)
		out[lot] = append(list, d)
	}
	return out, rows.Err()
}
