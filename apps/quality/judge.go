package quality

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"slices"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"

	"github.com/nxcloud/nxcloud/apps"
	"github.com/nxcloud/nxcloud/tenants"
)

// Judgement statuses of a characteristic and of a lot.
const (
	StatusPass       = "pass"
	StatusFail       = "fail"
	StatusIncomplete = "incomplete" // fewer values than the plan's sample size, none failing
	StatusPending    = "pending"    // due (in the plan, or specified by the grade) but not measured
	StatusNotJudged  = "not_judged" // measured but no limits apply
)

// Limits are the spec limits a characteristic is judged against; Source says
// where they come from: "plan" or "grade".
type Limits struct {
	LSL    *float64 `json:"lsl,omitempty"`
	USL    *float64 `json:"usl,omitempty"`
	Source string   `json:"source,omitempty"`
}

// gradeLimits applies the grade judgement rule of the cross-app contracts:
// br and bhmax are classification bands (a lot above a band's max belongs to a
// higher grade, it does not fail), hcj, hcb and density are minima, so those
// five are judged on their minimum only; any other characteristic's min and
// max are both limits.
func gradeLimits(key string, s tenants.Spec) Limits {
	switch key {
	case "br", "bhmax", "hcj", "hcb", "density":
		return Limits{LSL: s.Min, Source: "grade"}
	}
	return Limits{LSL: s.Min, USL: s.Max, Source: "grade"}
}

// Judgement is the judgement of one characteristic of a lot.
type Judgement struct {
	Characteristic string    `json:"characteristic"`
	Values         []float64 `json:"values"`
	Count          int       `json:"count"`
	SampleSize     int       `json:"sample_size"`
	Min            *float64  `json:"min,omitempty"`
	Max            *float64  `json:"max,omitempty"`
	Mean           *float64  `json:"mean,omitempty"`
	Limits         Limits    `json:"limits"`
	Failed         int       `json:"failed"`
	// Worst is the value furthest outside the limits, when one fails.
	Worst      *float64 `json:"worst,omitempty"`
	Status     string   `json:"status"`
	ReasonCode string   `json:"reason_code,omitempty"`
}

// Judge judges a lot's values (per characteristic, in sample order) against
// its plan (nil: the default plan, every characteristic the grade specifies,
// one value each) and its grade's specs: a plan characteristic with lsl or usl
// set is judged on those, otherwise on the grade spec per the grade rule.
// reasons maps a characteristic to its defect code. It returns the
// characteristics' judgements (the plan's or grade's order, then other
// measured ones by key) and the lot's status: fail when any fails, else
// pending when one is due and not (fully) measured, else pass when any was
// judged, else not_judged.
func Judge(values map[string][]float64, plan *Plan, specs map[string]tenants.Spec, reasons map[string]string) ([]Judgement, string) {
	type due struct {
		key    string
		limits Limits
		sample int
	}
	var order []due
	seen := map[string]bool{}
	if plan != nil {
		for _, c := range plan.Characteristics {
			l := Limits{LSL: c.LSL, USL: c.USL, Source: "plan"}
			if c.LSL == nil && c.USL == nil {
				l = Limits{}
				if s, ok := specs[c.Characteristic]; ok {
					l = gradeLimits(c.Characteristic, s)
				}
			}
			order = append(order, due{c.Characteristic, l, c.SampleSize})
			seen[c.Characteristic] = true
		}
	} else {
		keys := make([]string, 0, len(specs))
		for k := range specs {
			keys = append(keys, k)
		}
		slices.Sort(keys)
		for _, k := range keys {
			order = append(order, due{k, gradeLimits(k, specs[k]), defaultSampleSize})
			seen[k] = true
		}
	}
	extra := make([]string, 0)
	for k := range values {
		if !seen[k] {
			extra = append(extra, k)
		}
	}
	slices.Sort(extra)
	for _, k := range extra {
		l := Limits{}
		if s, ok := specs[k]; ok {
			l = gradeLimits(k, s)
		}
		order = append(order, due{k, l, 0}) // measured though not due
	}

	out := make([]Judgement, 0, len(order))
	lot := StatusNotJudged
	anyFail, anyDue, anyPass := false, false, false
	for _, d := range order {
		vs := values[d.key]
		j := Judgement{Characteristic: d.key, Values: vs, Count: len(vs), SampleSize: d.sample, Limits: d.limits}
		if j.Values == nil {
			j.Values = []float64{}
		}
		if len(vs) > 0 {
			lo, hi, sum := vs[0], vs[0], 0.0
			for _, v := range vs {
				lo, hi, sum = math.Min(lo, v), math.Max(hi, v), sum+v
			}
			mean := sum / float64(len(vs))
			j.Min, j.Max, j.Mean = &lo, &hi, &mean
		}
		judged := d.limits.LSL != nil || d.limits.USL != nil
		worstBy := 0.0
		for _, v := range vs {
			by := 0.0
			if d.limits.LSL != nil && v < *d.limits.LSL {
				by = *d.limits.LSL - v
			} else if d.limits.USL != nil && v > *d.limits.USL {
				by = v - *d.limits.USL
			}
			if by > 0 {
				j.Failed++
				if by > worstBy {
					worstBy = by
					w := v
					j.Worst = &w
				}
			}
		}
		switch {
		case j.Failed > 0:
			j.Status = StatusFail
			j.ReasonCode = reasons[d.key]
			anyFail = true
		case len(vs) == 0:
			j.Status = StatusPending
			anyDue = true
		case !judged:
			j.Status = StatusNotJudged
		case len(vs) < d.sample:
			j.Status = StatusIncomplete
			anyDue = true
		default:
			j.Status = StatusPass
			anyPass = true
		}
		out = append(out, j)
	}
	switch {
	case anyFail:
		lot = StatusFail
	case anyDue:
		lot = StatusPending
	case anyPass:
		lot = StatusPass
	}
	return out, lot
}

// LotInspection is a lot's inspection: its results judged per characteristic,
// its overall judgement and its nonconformances.
type LotInspection struct {
	Lot             Lot              `json:"lot"`
	Plan            string           `json:"plan,omitempty"`
	Status          string           `json:"status"`
	Characteristics []Judgement      `json:"characteristics"`
	Nonconformances []Nonconformance `json:"nonconformances"`
}

// LotInspection returns a lot's inspection by lot id or code. Errors:
// not_found.
func (s *Service) LotInspection(ctx context.Context, ref string) (LotInspection, error) {
	var out LotInspection
	err := tenants.InTx(ctx, s.db.App, func(tx pgx.Tx) error {
		l, err := lotByRef(ctx, tx, ref, false)
		if err != nil {
			return err
		}
		out, err = inspect(ctx, tx, l)
		return err
	})
	return out, err
}

// inspect loads and judges a lot.
func inspect(ctx context.Context, q tenants.Querier, l Lot) (LotInspection, error) {
	values, err := lotValues(ctx, q, l.ID)
	if err != nil {
		return LotInspection{}, err
	}
	plan, ok, err := planForLot(ctx, q, l)
	if err != nil {
		return LotInspection{}, err
	}
	specs := map[string]tenants.Spec{}
	if l.Grade != "" {
		var raw []byte
		err := q.QueryRow(ctx, `SELECT specs FROM grades WHERE tenant_id = nx_require_tenant() AND code = $1`, l.Grade).Scan(&raw)
		if err != nil && !errors.Is(err, pgx.ErrNoRows) {
			return LotInspection{}, fmt.Errorf("grade specs: %w", err)
		}
		if len(raw) > 0 {
			if err := json.Unmarshal(raw, &specs); err != nil {
				return LotInspection{}, fmt.Errorf("grade %s specs: %w", l.Grade, err)
			}
		}
	}
	reasons, err := reasonCodes(ctx, q)
	if err != nil {
		return LotInspection{}, err
	}
	out := LotInspection{Lot: l}
	var pp *Plan
	if ok {
		pp, out.Plan = &plan, plan.Code
	}
	out.Characteristics, out.Status = Judge(values, pp, specs, reasons)
	out.Nonconformances, err = nonconformances(ctx, q, NCQuery{LotID: &l.ID})
	return out, err
}

// reasonCodes maps each characteristic to the tenant's defect code for it
// (the first by code when several name it).
func reasonCodes(ctx context.Context, q tenants.Querier) (map[string]string, error) {
	rows, err := q.Query(ctx, `SELECT DISTINCT ON (characteristic) characteristic, code FROM defect_codes
		WHERE tenant_id = nx_require_tenant() AND characteristic <> '' ORDER BY characteristic, code`)
	if err != nil {
		return nil, fmt.Errorf("defect codes: %w", err)
	}
	defer rows.Close()
	out := map[string]string{}
	for rows.Next() {
		var k, c string
		if err := rows.Scan(&k, &c); err != nil {
			return nil, fmt.Errorf("defect codes: %w", err)
		}
		out[k] = c
	}
	return out, rows.Err()
}

// lotValues returns every value of a lot per characteristic, in sample order.
func lotValues(ctx context.Context, q tenants.Querier, lot uuid.UUID) (map[string][]float64, error) {
	rows, err := q.Query(ctx, `SELECT characteristic, value FROM inspection_results WHERE tenant_id = nx_require_tenant() AND lot_id = $1 ORDER BY characteristic, sample`, lot)
	if err != nil {
		return nil, fmt.Errorf("lot values: %w", err)
	}
	defer rows.Close()
	out := map[string][]float64{}
	for rows.Next() {
		var k string
		var v float64
		if err := rows.Scan(&k, &v); err != nil {
			return nil, fmt.Errorf("lot values: %w", err)
		}
		out[k] = append(out[k], v)
	}
	return out, rows.Err()
}

// LotValues returns every measured value of a lot per characteristic key, in
// sample order; an empty map when it has none. q is scoped to the tenant. It
// is the downgrade app's view of inspections.
func (s *Service) LotValues(ctx context.Context, q tenants.Querier, lotID uuid.UUID) (map[string][]float64, error) {
	return lotValues(ctx, q, lotID)
}

// LotDetails returns each lot's inspection (results per characteristic with
// judgement, nonconformances) for the batch app's trace, under the key
// "inspections". Lots without results or nonconformances, and lots not
// visible in q's tenant, are left out. q is scoped to the tenant.
func (s *Service) LotDetails(ctx context.Context, q tenants.Querier, lotIDs []uuid.UUID) (map[uuid.UUID]any, error) {
	out := make(map[uuid.UUID]any, len(lotIDs))
	// Most lots of a trace were never inspected (raw materials, work in
	// progress): find the ones with results or nonconformances in one query
	// and judge only those, so a trace of a hundred lots costs one round trip
	// here rather than several per lot.
	rows, err := q.Query(ctx, `
		SELECT DISTINCT lot_id FROM inspection_results WHERE tenant_id = nx_require_tenant() AND lot_id = ANY($1)
		UNION
		SELECT DISTINCT lot_id FROM nonconformances WHERE tenant_id = nx_require_tenant() AND lot_id = ANY($1)`, lotIDs)
	if err != nil {
		return nil, fmt.Errorf("inspected lots: %w", err)
	}
	inspected, err := pgx.CollectRows(rows, pgx.RowTo[uuid.UUID])
	if err != nil {
		return nil, fmt.Errorf("inspected lots: %w", err)
	}
	for _, id := range inspected {
		l, err := lotByRef(ctx, q, id.String(), false)
		if err != nil {
			if apps.Code(err) == apps.NotFound {
				continue
			}
			return nil, err
		}
		in, err := inspect(ctx, q, l)
		if err != nil {
			return nil, err
		}
		out[id] = in
	}
	return out, nil
}
