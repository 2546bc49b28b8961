package quality

import (
	"context"
	"fmt"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"

	"github.com/nxcloud/nxcloud/apps"
	"github.com/nxcloud/nxcloud/tenants"
)

// Nonconformance is a lot's nonconformance: raised by judgement (origin
// "judgement": one per lot and failing characteristic, with the worst value
// and the limits it missed) or recorded by a person (origin "manual"), with a
// reason code of the tenant's defect codes.
type Nonconformance struct {
	ID             uuid.UUID  `json:"id"`
	LotID          uuid.UUID  `json:"lot_id"`
	LotCode        string     `json:"lot"`
	Characteristic string     `json:"characteristic,omitempty"`
	ReasonCode     string     `json:"reason_code,omitempty"`
	Description    string     `json:"description"`
	Origin         string     `json:"origin"`
	WorstValue     *float64   `json:"worst_value,omitempty"`
	LSL            *float64   `json:"lsl,omitempty"`
	USL            *float64   `json:"usl,omitempty"`
	FailedCount    int        `json:"failed_count"`
	Status         string     `json:"status"`
	Disposition    string     `json:"disposition"`
	CreatedBy      string     `json:"created_by"`
	CreatedAt      time.Time  `json:"created_at"`
	UpdatedAt      time.Time  `json:"updated_at"`
	ClosedAt       *time.Time `json:"closed_at,omitempty"`
}

// NCInput records a nonconformance by hand.
type NCInput struct {
	ReasonCode     string `json:"reason_code"`
	Characteristic string `json:"characteristic"`
	Description    string `json:"description"`
}

// NCUpdate sets a nonconformance's status (required: open or closed) and
// optionally its disposition or description.
type NCUpdate struct {
	Status      string  `json:"status"`
	Disposition *string `json:"disposition"`
	Description *string `json:"description"`
}

// NCQuery filters nonconformances; zero values match all.
type NCQuery struct {
	LotID  *uuid.UUID
	Lot    string // a lot id or code
	Status string
	Reason string
	Limit  int
}

const ncColumns = `n.id, n.lot_id, l.code, n.characteristic, coalesce(n.reason_code, ''), n.description, n.origin, n.worst_value,
	n.lsl, n.usl, n.failed_count, n.status, n.disposition, n.created_by, n.created_at, n.updated_at, n.closed_at`

func nonconformances(ctx context.Context, q tenants.Querier, f NCQuery) ([]Nonconformance, error) {
	limit := f.Limit
	if limit <= 0 || limit > 1000 {
		limit = 1000
	}
	rows, err := q.Query(ctx, `SELECT `+ncColumns+` FROM nonconformances n JOIN lots l ON l.id = n.lot_id
		WHERE n.tenant_id = nx_require_tenant() AND ($1::uuid IS NULL OR n.lot_id = $1) AND ($2 = '' OR n.status = $2) AND ($3 = '' OR n.reason_code = $3)
		ORDER BY n.created_at DESC, n.id LIMIT $4`, f.LotID, f.Status, f.Reason, limit)
	if err != nil {
		return nil, fmt.Errorf("nonconformances: %w", err)
	}
	defer rows.Close()
	out := []Nonconformance{}
	for rows.Next() {
		n, err := scanNC(rows)
		if err != nil {
			return nil, err
		}
		out = append(out, n)
	}
	return out, rows.Err()
}

func scanNC(r pgx.Row) (Nonconformance, error) {
	var n Nonconformance
	err := r.Scan(&n.ID, &n.LotID, &n.LotCode, &n.Characteristic, &n.ReasonCode, &n.Description, &n.Origin, &n.WorstValue,
		&n.LSL, &n.USL, &n.FailedCount, &n.Status, &n.Disposition, &n.CreatedBy, &n.CreatedAt, &n.UpdatedAt, &n.ClosedAt)
	if err != nil {
		return n, tenants.StoreError(err, "nonconformance")
	}
	return n, nil
}

// Nonconformances lists nonconformances, newest first. Errors: invalid (bad
// status), not_found (the lot filter names no lot of the tenant).
func (s *Service) Nonconformances(ctx context.Context, f NCQuery) ([]Nonconformance, error) {
	switch f.Status {
	case "", "open", "closed":
	default:
		return nil, invalidf("status", "want open or closed")
	}
	var out []Nonconformance
	err := tenants.InTx(ctx, s.db.App, func(tx pgx.Tx) error {
		if f.Lot != "" {
			l, err := lotByRef(ctx, tx, f.Lot, false)
			if err != nil {
				return err
			}
			f.LotID = &l.ID
		}
		var err error
		out, err = nonconformances(ctx, tx, f)
		return err
	})
	return out, err
}

// Nonconformance returns one nonconformance. Errors: not_found.
func (s *Service) Nonconformance(ctx context.Context, id string) (Nonconformance, error) {
	var out Nonconformance
	err := tenants.InTx(ctx, s.db.App, func(tx pgx.Tx) error {
		var err error
		out, err = ncByID(ctx, tx, id)
		return err
	})
	return out, err
}

func ncByID(ctx context.Context, q tenants.Querier, ref string) (Nonconformance, error) {
	id, err := uuid.Parse(ref)
	if err != nil {
		return Nonconformance{}, apps.Errorf(apps.NotFound, "nonconformance %q not found", clip(ref, 64))
	}
	n, err := scanNC(q.QueryRow(ctx, `SELECT `+ncColumns+` FROM nonconformances n JOIN lots l ON l.id = n.lot_id WHERE n.tenant_id = nx_require_tenant() AND n.id = $1`, id))
	if apps.Code(err) == apps.NotFound {
		return n, apps.Errorf(apps.NotFound, "nonconformance %q not found", clip(ref, 64))
	}
	return n, err
}

// RecordNonconformance records a nonconformance of a lot by hand (cracks,
// chipping...). Errors: not_found (lot), invalid (unknown reason code or
// characteristic, description too long).
func (s *Service) RecordNonconformance(ctx context.Context, lotRef string, in NCInput) (Nonconformance, error) {
	if len([]rune(in.Description)) > 2000 {
		return Nonconformance{}, invalidf("description", "at most 2000 characters")
	}
	var out Nonconformance
	err := tenants.InTx(ctx, s.db.App, func(tx pgx.Tx) error {
		l, err := lotByRef(ctx, tx, lotRef, false)
		if err != nil {
			return err
		}
		var known bool
		if err := tx.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM defect_codes WHERE tenant_id = nx_require_tenant() AND code = $1)`, in.ReasonCode).Scan(&known); err != nil {
			return fmt.Errorf("check reason code: %w", err)
		}
		if !known {
			return invalidf("reason_code", "unknown reason code %q (the tenant's defect codes apply)", clip(in.ReasonCode, 64))
		}
		if in.Characteristic != "" {
			chars, err := characteristicSet(ctx, tx)
			if err != nil {
				return err
			}
			if _, ok := chars[in.Characteristic]; !ok {
				return invalidf("characteristic", "unknown characteristic %q", clip(in.Characteristic, 64))
			}
		}
		var id uuid.UUID
		err = tx.QueryRow(ctx, `INSERT INTO nonconformances (tenant_id, lot_id, characteristic, reason_code, description, origin, created_by)
			VALUES (nx_tenant(), $1, $2, $3, $4, 'manual', $5) RETURNING id`,
			l.ID, in.Characteristic, in.ReasonCode, in.Description, actor(ctx)).Scan(&id)
		if err != nil {
			return tenants.StoreError(err, "nonconformance")
		}
		out, err = ncByID(ctx, tx, id.String())
		return err
	})
	return out, err
}

// UpdateNonconformance closes or reopens a nonconformance, sets its
// disposition (use_as_is, rework, downgrade, scrap, return_to_supplier) or
// description. Errors: not_found, invalid.
func (s *Service) UpdateNonconformance(ctx context.Context, ref string, in NCUpdate) (Nonconformance, error) {
	if in.Status != "open" && in.Status != "closed" {
		return Nonconformance{}, invalidf("status", "want open or closed")
	}
	if in.Disposition != nil {
		switch *in.Disposition {
		case "", "use_as_is", "rework", "downgrade", "scrap", "return_to_supplier":
		default:
			return Nonconformance{}, invalidf("disposition", "want use_as_is, rework, downgrade, scrap or return_to_supplier")
		}
	}
	if in.Description != nil && len([]rune(*in.Description)) > 2000 {
		return Nonconformance{}, invalidf("description", "at most 2000 characters")
	}
	var out Nonconformance
	err := tenants.InTx(ctx, s.db.App, func(tx pgx.Tx) error {
		cur, err := ncByID(ctx, tx, ref)
		if err != nil {
			return err
		}
		_, err = tx.Exec(ctx, `UPDATE nonconformances SET
				status = $2, disposition = coalesce($3, disposition), description = coalesce($4, description),
				closed_at = CASE WHEN $2 = 'closed' THEN coalesce(closed_at, now()) END, updated_at = now()
			WHERE tenant_id = nx_require_tenant() AND id = $1`, cur.ID, in.Status, in.Disposition, in.Description)
		if err != nil {
			return tenants.StoreError(err, "nonconformance")
		}
		out, err = ncByID(ctx, tx, cur.ID.String())
		return err
	})
	return out, err
}

// raiseNonconformances records or refreshes one judgement nonconformance per
// failing characteristic of a lot.
func raiseNonconformances(ctx context.Context, tx pgx.Tx, lot uuid.UUID, js []Judgement) error {
	for _, j := range js {
		if j.Status != StatusFail {
			continue
		}
		_, err := tx.Exec(ctx, `
			INSERT INTO nonconformances (tenant_id, lot_id, characteristic, reason_code, description, origin,
				worst_value, lsl, usl, failed_count, created_by)
			VALUES (nx_tenant(), $1, $2, nullif($3, ''), $4, 'judgement', $5, $6, $7, $8, 'judgement')
			ON CONFLICT (lot_id, characteristic) WHERE origin = 'judgement' DO UPDATE SET
				reason_code = EXCLUDED.reason_code, description = EXCLUDED.description, worst_value = EXCLUDED.worst_value,
				lsl = EXCLUDED.lsl, usl = EXCLUDED.usl, failed_count = EXCLUDED.failed_count, updated_at = now()`,
			lot, j.Characteristic, j.ReasonCode, describe(j), j.Worst, j.Limits.LSL, j.Limits.USL, j.Failed)
		if err != nil {
			return fmt.Errorf("raise nonconformance: %w", err)
		}
	}
	return nil
}

func describe(j Judgement) string {
	lim := ""
	if j.Limits.LSL != nil {
		lim += fmt.Sprintf(" min %g", *j.Limits.LSL)
	}
	if j.Limits.USL != nil {
		lim += fmt.Sprintf(" max %g", *j.Limits.USL)
	}
	return fmt.Sprintf("%d of %d %s values outside the %s limits (%s); worst %g", j.Failed, j.Count, j.Characteristic, j.Limits.Source, lim[1:], *j.Worst)
}
