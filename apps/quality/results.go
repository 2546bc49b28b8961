package quality

import (
	"context"
	"fmt"
	"math"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"

	"github.com/nxcloud/nxcloud/tenants"
)

// MaxResults is the most values one request, import or event may carry.
const MaxResults = 10000

// Result sources.
const (
	SourceAPI   = "api"
	SourceCSV   = "csv"
	SourceEvent = "event"
)

// ResultInput is one measured value of a lot. Subgroup 0 means "derive it":
// the value's sample number divided into subgroups of the plan's subgroup
// size. MeasuredAt defaults to now (to the event's time for device events).
// Device, when given, is the measuring device's key or id.
type ResultInput struct {
	Characteristic string     `json:"characteristic"`
	Value          *float64   `json:"value"`
	Subgroup       int        `json:"subgroup"`
	MeasuredAt     *time.Time `json:"measured_at"`
	Device         string     `json:"device"`
}

// ResultsInput is a batch of values of one lot.
type ResultsInput struct {
	Results []ResultInput `json:"results"`
}

// Result is a stored value.
type Result struct {
	ID             int64      `json:"id"`
	LotID          uuid.UUID  `json:"lot_id"`
	Characteristic string     `json:"characteristic"`
	Value          float64    `json:"value"`
	Sample         int        `json:"sample"`
	Subgroup       int        `json:"subgroup"`
	MeasuredAt     time.Time  `json:"measured_at"`
	Source         string     `json:"source"`
	DeviceID       *uuid.UUID `json:"device_id,omitempty"`
	CreatedBy      string     `json:"created_by"`
}

// ResultsAdded is what storing results answers: the stored values and the
// lot's inspection after them.
type ResultsAdded struct {
	Results    []Result      `json:"results"`
	Inspection LotInspection `json:"inspection"`
}

// AddResults stores a batch of values of a lot (by id or code), judges the
// lot, raises nonconformances for failing characteristics and calls OnResults,
// all in one transaction. Errors: not_found (lot), invalid (no values, too
// many, unknown characteristic or device, missing or non-finite value, bad
// subgroup; with the field, e.g. results[2].characteristic).
func (s *Service) AddResults(ctx context.Context, lotRef string, in ResultsInput) (ResultsAdded, error) {
	if len(in.Results) == 0 {
		return ResultsAdded{}, invalidf("results", "no values")
	}
	if len(in.Results) > MaxResults {
		return ResultsAdded{}, invalidf("results", "at most %d values per request", MaxResults)
	}
	var out ResultsAdded
	err := tenants.InTx(ctx, s.db.App, func(tx pgx.Tx) error {
		l, err := lotByRef(ctx, tx, lotRef, true)
		if err != nil {
			return err
		}
		chars, err := characteristicSet(ctx, tx)
		if err != nil {
			return err
		}
		rows := make([]pendingResult, len(in.Results))
		for i, r := range in.Results {
			p, err := s.checkResult(ctx, tx, chars, r, fmt.Sprintf("results[%d].", i))
			if err != nil {
				return err
			}
			rows[i] = p
		}
		out.Results, err = s.store(ctx, tx, l, rows, SourceAPI, nil)
		if err != nil {
			return err
		}
		if err := s.afterResults(ctx, tx, []Lot{l}); err != nil {
			return err
		}
		out.Inspection, err = inspect(ctx, tx, l)
		return err
	})
	return out, err
}

// pendingResult is a checked value waiting to be stored.
type pendingResult struct {
	key        string
	value      float64
	subgroup   int
	measuredAt time.Time
	device     *uuid.UUID
}

// checkResult validates one value; prefix starts the error's field name.
func (s *Service) checkResult(ctx context.Context, q tenants.Querier, chars map[string]tenants.Characteristic, r ResultInput, prefix string) (pendingResult, error) {
	p := pendingResult{key: r.Characteristic, subgroup: r.Subgroup}
	if _, ok := chars[r.Characteristic]; !ok {
		return p, invalidf(prefix+"characteristic", "unknown characteristic %q (the sector template's characteristics apply)", clip(r.Characteristic, 64))
	}
	if r.Value == nil {
		return p, invalidf(prefix+"value", "a value is required")
	}
	if math.IsNaN(*r.Value) || math.IsInf(*r.Value, 0) {
		return p, invalidf(prefix+"value", "the value must be a finite number")
	}
	p.value = *r.Value
	if r.Subgroup < 0 {
		return p, invalidf(prefix+"subgroup", "want a positive subgroup number (or none)")
	}
	p.measuredAt = s.now().UTC()
	if r.MeasuredAt != nil {
		if y := r.MeasuredAt.UTC().Year(); y < 2000 || y > 9999 {
			return p, invalidf(prefix+"measured_at", "want a time after 2000")
		}
		p.measuredAt = r.MeasuredAt.UTC()
	}
	if r.Device != "" {
		id, err := deviceByRef(ctx, q, r.Device)
		if err != nil {
			return p, invalidf(prefix+"device", "unknown device %q", clip(r.Device, 64))
		}
		p.device = &id
	}
	return p, nil
}

func deviceByRef(ctx context.Context, q tenants.Querier, ref string) (uuid.UUID, error) {
	var id uuid.UUID
	sql, arg := `SELECT id FROM devices WHERE tenant_id = nx_require_tenant() AND key = $1`, any(ref)
	if u, err := uuid.Parse(ref); err == nil {
		sql, arg = `SELECT id FROM devices WHERE tenant_id = nx_require_tenant() AND id = $1`, u
	}
	err := q.QueryRow(ctx, sql, arg).Scan(&id)
	return id, tenants.StoreError(err, "device")
}

// store numbers and inserts a lot's values (the lot row is locked by the
// caller) and returns them.
func (s *Service) store(ctx context.Context, tx pgx.Tx, l Lot, rows []pendingResult, source string, eventID *int64) ([]Result, error) {
	next := map[string]int{}
	r, err := tx.Query(ctx, `SELECT characteristic, max(sample) FROM inspection_results WHERE tenant_id = nx_require_tenant() AND lot_id = $1 GROUP BY characteristic`, l.ID)
	if err != nil {
		return nil, fmt.Errorf("number results: %w", err)
	}
	for r.Next() {
		var k string
		var n int
		if err := r.Scan(&k, &n); err != nil {
			r.Close()
			return nil, fmt.Errorf("number results: %w", err)
		}
		next[k] = n
	}
	r.Close()
	if err := r.Err(); err != nil {
		return nil, fmt.Errorf("number results: %w", err)
	}
	sizes := map[string]int{}
	if plan, ok, err := planForLot(ctx, tx, l); err != nil {
		return nil, err
	} else if ok {
		for _, c := range plan.Characteristics {
			sizes[c.Characteristic] = c.SubgroupSize
		}
	}
	n := len(rows)
	keys, values, samples, subgroups := make([]string, n), make([]float64, n), make([]int32, n), make([]int32, n)
	times, devices := make([]time.Time, n), make([]*uuid.UUID, n)
	for i, p := range rows {
		next[p.key]++
		size := sizes[p.key]
		if size == 0 {
			size = defaultSubgroupSize
		}
		sg := p.subgroup
		if sg == 0 {
			sg = (next[p.key]-1)/size + 1
		}
		keys[i], values[i], samples[i], subgroups[i] = p.key, p.value, int32(next[p.key]), int32(sg)
		times[i], devices[i] = p.measuredAt, p.device
	}
	by := actor(ctx)
	if source == SourceEvent {
		by = "device"
	}
	res, err := tx.Query(ctx, `
		INSERT INTO inspection_results (tenant_id, lot_id, characteristic, value, sample, subgroup, measured_at, source, device_id, event_id, created_by)
		SELECT nx_tenant(), $1, k, v, s, g, t, $8, d, $9, $10
		FROM unnest($2::text[], $3::float8[], $4::int[], $5::int[], $6::timestamptz[], $7::uuid[]) AS u(k, v, s, g, t, d)
		RETURNING id, lot_id, characteristic, value, sample, subgroup, measured_at, source, device_id, created_by`,
		l.ID, keys, values, samples, subgroups, times, devices, source, eventID, by)
	if err != nil {
		return nil, tenants.StoreError(err, "inspection results")
	}
	out, err := pgx.CollectRows(res, func(row pgx.CollectableRow) (Result, error) {
		var x Result
		err := row.Scan(&x.ID, &x.LotID, &x.Characteristic, &x.Value, &x.Sample, &x.Subgroup, &x.MeasuredAt, &x.Source, &x.DeviceID, &x.CreatedBy)
		return x, err
	})
	if err != nil {
		return nil, tenants.StoreError(err, "inspection results")
	}
	seen := map[string]bool{}
	touched := make([]string, 0, 4)
	for _, p := range rows {
		if !seen[p.key] {
			seen[p.key] = true
			touched = append(touched, p.key)
		}
	}
	if err := refreshSeries(ctx, tx, l.ID, touched); err != nil {
		return nil, err
	}
	return out, nil
}

// refreshSeries rebuilds a lot's inspection_series rows for keys: its values
// packed in subgroup and sample order (float8send, 8 bytes each) and the
// sizes of its subgroups, which SPC reads.
func refreshSeries(ctx context.Context, tx pgx.Tx, lot uuid.UUID, keys []string) error {
	_, err := tx.Exec(ctx, `
		INSERT INTO inspection_series (tenant_id, lot_id, characteristic, first_at, subgroup_sizes, value_data)
		SELECT nx_require_tenant(), $1, g.characteristic, min(g.first_at),
			array_agg(g.size ORDER BY g.subgroup), string_agg(g.data, ''::bytea ORDER BY g.subgroup)
		FROM (SELECT characteristic, subgroup, min(measured_at) AS first_at, count(*)::int AS size,
				string_agg(float8send(value), ''::bytea ORDER BY sample) AS data
			FROM inspection_results WHERE tenant_id = nx_require_tenant() AND lot_id = $1 AND characteristic = ANY($2)
			GROUP BY characteristic, subgroup) g
		GROUP BY g.characteristic
		ON CONFLICT (lot_id, characteristic) DO UPDATE SET first_at = EXCLUDED.first_at,
			subgroup_sizes = EXCLUDED.subgroup_sizes, value_data = EXCLUDED.value_data`, lot, keys)
	if err != nil {
		return fmt.Errorf("refresh inspection series: %w", err)
	}
	return nil
}

// afterResults judges lots that got new values, raises their
// nonconformances and calls OnResults, in tx.
func (s *Service) afterResults(ctx context.Context, tx pgx.Tx, lots []Lot) error {
	ids := make([]uuid.UUID, 0, len(lots))
	for _, l := range lots {
		in, err := inspect(ctx, tx, l)
		if err != nil {
			return err
		}
		if err := raiseNonconformances(ctx, tx, l.ID, in.Characteristics); err != nil {
			return err
		}
		ids = append(ids, l.ID)
	}
	if s.OnResults != nil {
		if err := s.OnResults(ctx, tx, ids); err != nil {
			return fmt.Errorf("after results: %w", err)
		}
	}
	return nil
}

// Results lists a lot's stored values in characteristic and sample order.
// Errors: not_found.
func (s *Service) Results(ctx context.Context, lotRef string) ([]Result, error) {
	var out []Result
	err := tenants.InTx(ctx, s.db.App, func(tx pgx.Tx) error {
		l, err := lotByRef(ctx, tx, lotRef, false)
		if err != nil {
			return err
		}
		rows, err := tx.Query(ctx, `SELECT id, lot_id, characteristic, value, sample, subgroup, measured_at, source, device_id, created_by
			FROM inspection_results WHERE tenant_id = nx_require_tenant() AND lot_id = $1 ORDER BY characteristic, sample`, l.ID)
		if err != nil {
			return fmt.Errorf("results: %w", err)
		}
		out, err = pgx.CollectRows(rows, func(row pgx.CollectableRow) (Result, error) {
			var x Result
			err := row.Scan(&x.ID, &x.LotID, &x.Characteristic, &x.Value, &x.Sample, &x.Subgroup, &x.MeasuredAt, &x.Source, &x.DeviceID, &x.CreatedBy)
			return x, err
		})
		return err
	})
	return out, err
}
