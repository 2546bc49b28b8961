package quality

import (
	"context"
	"encoding/binary"
	"fmt"
	"math"
	"sync"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"

	"github.com/nxcloud/nxcloud/apps"
	"github.com/nxcloud/nxcloud/tenants"
)

// SPCQuery asks for a control chart of one characteristic. Zero values:
// every product, grade and line; no time bound; chart and n from the plan
// (see SPC); Western Electric rules; capability on the plan's or grade's
// limits; the last 500 points listed.
type SPCQuery struct {
	Characteristic string
	Chart          string
	N              int
	Product, Grade string
	Line           string // id or key
	From, To       time.Time
	Rules          string // we, nelson or none
	LSL, USL       *float64
	Points         int
}

// SPCResult is a control chart with its points, run-rule flags and
// capability. X and R are absent, Points empty, when there are fewer than two
// points.
type SPCResult struct {
	Characteristic string         `json:"characteristic"`
	Chart          string         `json:"chart"`
	N              int            `json:"n"`
	Rules          string         `json:"rules"`
	Values         int            `json:"values"`
	Subgroups      int            `json:"subgroups"`
	Excluded       int            `json:"excluded"`
	X              *ControlLimits `json:"x,omitempty"`
	R              *ControlLimits `json:"r,omitempty"`
	Points         []SPCPoint     `json:"points"`
	FlagCounts     map[string]int `json:"flag_counts"`
	Capability     *SPCCapability `json:"capability,omitempty"`
}

// SPCPoint is a point of a chart: a subgroup's mean (or an individual value)
// and its range, standard deviation or moving range, with the rules it trips.
type SPCPoint struct {
	Index      int       `json:"index"`
	Value      float64   `json:"value"`
	Range      *float64  `json:"range,omitempty"`
	At         time.Time `json:"at"`
	LotID      uuid.UUID `json:"lot_id"`
	Lot        string    `json:"lot"`
	Flags      []string  `json:"flags"`
	RangeFlags []string  `json:"range_flags,omitempty"`
}

// SPCCapability are a chart's capability indices and the limits they use.
type SPCCapability struct {
	LSL          *float64 `json:"lsl,omitempty"`
	USL          *float64 `json:"usl,omitempty"`
	Source       string   `json:"source,omitempty"`
	Mean         float64  `json:"mean"`
	SigmaWithin  float64  `json:"sigma_within"`
	SigmaOverall float64  `json:"sigma_overall"`
	Cp           *float64 `json:"cp,omitempty"`
	Cpk          *float64 `json:"cpk,omitempty"`
	Pp           *float64 `json:"pp,omitempty"`
	Ppk          *float64 `json:"ppk,omitempty"`
}

// Limits of an SPC query.
const (
	defaultSPCPoints = 500
	maxSPCPoints     = 10000
	defaultSPCN      = 5
)

// check validates q and fills the defaults that need no database.
func (q *SPCQuery) check(chars map[string]tenants.Characteristic) error {
	if q.Characteristic == "" {
		return invalidf("characteristic", "a characteristic is required")
	}
	if _, ok := chars[q.Characteristic]; !ok {
		return invalidf("characteristic", "unknown characteristic %q", clip(q.Characteristic, 64))
	}
	switch q.Chart {
	case "", ChartXbarR, ChartXbarS, ChartIMR:
	default:
		return invalidf("chart", "want xbar-r, xbar-s or imr")
	}
	if q.N < 0 || q.N > maxN {
		return invalidf("n", "want a subgroup size of 1-%d", maxN)
	}
	if q.Chart != "" && q.Chart != ChartIMR && q.N == 1 {
		return invalidf("n", "X̄ charts need subgroups of 2-%d", maxN)
	}
	switch q.Rules {
	case "":
		q.Rules = "we"
	case "we", "nelson", "none":
	default:
		return invalidf("rules", "want we, nelson or none")
	}
	if !finite(q.LSL) || !finite(q.USL) {
		return invalidf("lsl", "spec limits must be finite")
	}
	if q.LSL != nil && q.USL != nil && *q.LSL > *q.USL {
		return invalidf("lsl", "limits crossed over: lsl %g is above usl %g", *q.LSL, *q.USL)
	}
	if !q.From.IsZero() && !q.To.IsZero() && q.From.After(q.To) {
		return invalidf("from", "from is after to")
	}
	if q.Points == 0 {
		q.Points = defaultSPCPoints
	}
	if q.Points < 1 || q.Points > maxSPCPoints {
		return invalidf("points", "want 1-%d", maxSPCPoints)
	}
	return nil
}

// SPC computes a control chart of one characteristic over the values of the
// lots matching q, in measurement order (measured_at, then id). Subgroups are
// the values of one lot sharing a subgroup number, consecutive in that order;
// X̄ charts keep those of exactly n values and count the others as excluded.
// n defaults to the subgroup size of the plan for q's product and grade, else
// 5; chart to xbar-r when n > 1, imr otherwise. Spec limits for capability:
// q's, else the plan's, else the grade's (grade rule). Errors: invalid (bad
// query field), not_found (line or grade unknown).
func (s *Service) SPC(ctx context.Context, q SPCQuery) (SPCResult, error) {
	var out SPCResult
	err := tenants.InTx(ctx, s.db.App, func(tx pgx.Tx) error {
		chars, err := characteristicSet(ctx, tx)
		if err != nil {
			return err
		}
		if err := q.check(chars); err != nil {
			return err
		}
		var lineID *uuid.UUID
		if q.Line != "" {
			id, err := lineByRef(ctx, tx, q.Line)
			if err != nil {
				return err
			}
			lineID = &id
		}
		lsl, usl, source, n, err := specAndN(ctx, tx, &q)
		if err != nil {
			return err
		}
		if q.N == 0 {
			q.N = n
		}
		if q.Chart == "" {
			q.Chart = ChartXbarR
			if q.N == 1 {
				q.Chart = ChartIMR
			}
		}
		if q.Chart == ChartIMR {
			q.N = 1
		}
		data, err := fetchSPC(ctx, tx, q, lineID)
		if err != nil {
			return err
		}
		defer data.release()
		out, err = buildSPC(q, data, lsl, usl, source)
		if err != nil {
			return err
		}
		return lotCodes(ctx, tx, out.Points)
	})
	return out, err
}

func lineByRef(ctx context.Context, q tenants.Querier, ref string) (uuid.UUID, error) {
	var id uuid.UUID
	sql, arg := `SELECT id FROM lines WHERE tenant_id = nx_require_tenant() AND key = $1`, any(ref)
	if u, err := uuid.Parse(ref); err == nil {
		sql, arg = `SELECT id FROM lines WHERE tenant_id = nx_require_tenant() AND id = $1`, u
	}
	if err := q.QueryRow(ctx, sql, arg).Scan(&id); err != nil {
		return id, tenants.StoreError(err, fmt.Sprintf("line %q", clip(ref, 64)))
	}
	return id, nil
}

// specAndN finds the spec limits for capability and the default subgroup
// size of q's characteristic.
func specAndN(ctx context.Context, tx pgx.Tx, q *SPCQuery) (lsl, usl *float64, source string, n int, err error) {
	n = defaultSPCN
	var specs map[string]tenants.Spec
	if q.Grade != "" {
		err = tx.QueryRow(ctx, `SELECT specs FROM grades WHERE tenant_id = nx_require_tenant() AND code = $1`, q.Grade).Scan(&specs)
		if err != nil {
			return nil, nil, "", 0, tenants.StoreError(err, fmt.Sprintf("grade %q", clip(q.Grade, 64)))
		}
	}
	plan, ok, err := planForLot(ctx, tx, Lot{Product: q.Product, Grade: q.Grade})
	if err != nil {
		return nil, nil, "", 0, err
	}
	if ok {
		for _, c := range plan.Characteristics {
			if c.Characteristic != q.Characteristic {
				continue
			}
			n = c.SubgroupSize
			if c.LSL != nil || c.USL != nil {
				lsl, usl, source = c.LSL, c.USL, "plan"
			}
		}
	}
	if source == "" {
		if sp, found := specs[q.Characteristic]; found {
			l := gradeLimits(q.Characteristic, sp)
			lsl, usl, source = l.LSL, l.USL, "grade"
		}
	}
	if q.LSL != nil || q.USL != nil {
		lsl, usl, source = q.LSL, q.USL, "query"
	}
	return lsl, usl, source, n, nil
}

// spcData is what one pass over the values yields: the values of the kept
// subgroups (or the individuals) in order, and for the last points their lot
// and time.
type spcData struct {
	values   []float64
	excluded int
	ring     []pointMeta // the last q.Points points' lot and time, circular
	points   int
}

type pointMeta struct {
	lot uuid.UUID
	at  time.Time
}

// valueBufs recycles the value buffers of SPC queries: a million values are
// 8 MB, which growing by appending would copy about twice over per query.
var valueBufs = sync.Pool{New: func() any { b := make([]float64, 0, 1<<16); return &b }}

// release returns d's value buffer to the pool; buildSPC keeps no reference
// to it.
func (d *spcData) release() {
	b := d.values[:0]
	d.values = nil
	valueBufs.Put(&b)
}

func (d *spcData) keep(m pointMeta) {
	d.ring[d.points%len(d.ring)] = m
	d.points++
}

// fetchSPC reads the values lot by lot from inspection_series (one row per
// lot: its values packed as 8-byte floats, its subgroup sizes), decoding the
// binary columns by hand, so a million values cost a few thousand rows, 8 MB
// and no per-value allocation.
func fetchSPC(ctx context.Context, tx pgx.Tx, q SPCQuery, lineID *uuid.UUID) (*spcData, error) {
	sql := `SELECT s.lot_id, s.first_at, s.subgroup_sizes, s.value_data FROM inspection_series s
		WHERE s.tenant_id = nx_require_tenant() AND s.characteristic = $1 AND s.first_at >= $2 AND s.first_at < $3`
	args := []any{q.Characteristic, lowTime(q.From), highTime(q.To)}
	if q.Product != "" || q.Grade != "" || lineID != nil {
		sql += ` AND s.lot_id IN (SELECT id FROM lots WHERE tenant_id = nx_require_tenant() AND ($4 = '' OR product = $4)
			AND ($5 = '' OR grade_code = $5) AND ($6::uuid IS NULL OR line_id = $6))`
		args = append(args, q.Product, q.Grade, lineID)
	}
	sql += ` ORDER BY s.first_at, s.lot_id`
	rows, err := tx.Query(ctx, sql, args...)
	if err != nil {
		return nil, fmt.Errorf("spc values: %w", err)
	}
	defer rows.Close()
	d := &spcData{ring: make([]pointMeta, q.Points), values: (*valueBufs.Get().(*[]float64))[:0]}
	for rows.Next() {
		raw := rows.RawValues()
		if len(raw) != 4 || len(raw[0]) != 16 || len(raw[1]) != 8 || len(raw[3])%8 != 0 {
			return nil, fmt.Errorf("spc values: unexpected row encoding")
		}
		meta := pointMeta{uuid.UUID(raw[0]), pgTime(raw[1])}
		sizes, err := arrayBody(raw[2], 4)
		if err != nil {
			return nil, err
		}
		vals := raw[3]
		count := len(vals) / 8
		if q.N == 1 {
			for i := 0; i < count; i++ {
				d.values = append(d.values, math.Float64frombits(binary.BigEndian.Uint64(vals[i*8:])))
				d.keep(meta)
			}
			continue
		}
		at := 0
		for p := 0; p < len(sizes); p += 8 {
			size := int(binary.BigEndian.Uint32(sizes[p+4:]))
			if size < 1 || at+size > count {
				return nil, fmt.Errorf("spc values: subgroup sizes do not add up")
			}
			if size == q.N {
				for i := at; i < at+size; i++ {
					d.values = append(d.values, math.Float64frombits(binary.BigEndian.Uint64(vals[i*8:])))
				}
				d.keep(meta)
			} else {
				d.excluded++
			}
			at += size
		}
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("spc values: %w", err)
	}
	return d, nil
}

// arrayBody returns the elements part of a one-dimensional PostgreSQL
// binary array of non-null elements of size bytes: per element a 4-byte
// length (checked) and the element. Errors: another encoding.
func arrayBody(b []byte, size int) ([]byte, error) {
	bad := fmt.Errorf("spc values: unexpected array encoding")
	if len(b) < 12 {
		return nil, bad
	}
	switch binary.BigEndian.Uint32(b[0:4]) {
	case 0:
		return nil, nil
	case 1:
	default:
		return nil, bad
	}
	if len(b) < 20 {
		return nil, bad
	}
	n := int(binary.BigEndian.Uint32(b[12:16]))
	body := b[20:]
	if len(body) != n*(4+size) {
		return nil, bad
	}
	for p := 0; p < len(body); p += 4 + size {
		if binary.BigEndian.Uint32(body[p:]) != uint32(size) {
			return nil, bad
		}
	}
	return body, nil
}

// pgEpoch is PostgreSQL's timestamp epoch; binary timestamptz values are
// microseconds since it.
var pgEpoch = time.Date(2000, 1, 1, 0, 0, 0, 0, time.UTC)

func pgTime(b []byte) time.Time {
	return pgEpoch.Add(time.Duration(int64(binary.BigEndian.Uint64(b))) * time.Microsecond)
}

func lowTime(t time.Time) time.Time {
	if t.IsZero() {
		return time.Date(1, 1, 1, 0, 0, 0, 0, time.UTC)
	}
	return t
}

func highTime(t time.Time) time.Time {
	if t.IsZero() {
		return time.Date(9999, 12, 31, 0, 0, 0, 0, time.UTC)
	}
	return t
}

// buildSPC computes the chart and lists its last points.
func buildSPC(q SPCQuery, d *spcData, lsl, usl *float64, source string) (SPCResult, error) {
	out := SPCResult{Characteristic: q.Characteristic, Chart: q.Chart, N: q.N, Rules: q.Rules,
		Values: len(d.values), Subgroups: d.points, Excluded: d.excluded, Points: []SPCPoint{}, FlagCounts: map[string]int{}}
	if d.points < 2 {
		return out, nil
	}
	c, err := ComputeChart(q.Chart, d.values, q.N)
	if err != nil {
		return out, apps.Errorf(apps.Invalid, "%v", err)
	}
	out.X, out.R = &c.XLimits, &c.RLimits
	set := map[string]Rule{"we": RulesWE, "nelson": RulesNelson, "none": 0}[q.Rules]
	flags := Flags(c.X, c.XLimits, set)
	for _, f := range flags {
		if f == 0 {
			continue
		}
		for _, x := range ruleNames {
			if f&x.r != 0 {
				out.FlagCounts[x.name]++
			}
		}
	}
	for _, r := range c.R { // NaN (the first moving range) compares false
		if r > c.RLimits.UCL || r < c.RLimits.LCL {
			out.FlagCounts["beyond_limits"]++
		}
	}
	first := max(0, d.points-q.Points)
	for i := first; i < d.points; i++ {
		m := d.ring[i%len(d.ring)]
		p := SPCPoint{Index: i, Value: c.X[i], At: m.at, LotID: m.lot, Flags: flags[i].Names()}
		if r := c.R[i]; !math.IsNaN(r) {
			p.Range = &r
			if r > c.RLimits.UCL || r < c.RLimits.LCL {
				p.RangeFlags = []string{"beyond_limits"}
			}
		}
		out.Points = append(out.Points, p)
	}
	cp := c.Capability(lsl, usl)
	out.Capability = &SPCCapability{LSL: lsl, USL: usl, Source: source, Mean: c.Mean, SigmaWithin: c.SigmaWithin,
		SigmaOverall: c.SigmaOverall, Cp: cp.Cp, Cpk: cp.Cpk, Pp: cp.Pp, Ppk: cp.Ppk}
	return out, nil
}

// lotCodes fills the lot codes of the listed points.
func lotCodes(ctx context.Context, tx pgx.Tx, pts []SPCPoint) error {
	if len(pts) == 0 {
		return nil
	}
	ids := make([]uuid.UUID, 0)
	seen := map[uuid.UUID]bool{}
	for _, p := range pts {
		if !seen[p.LotID] {
			seen[p.LotID] = true
			ids = append(ids, p.LotID)
		}
	}
	rows, err := tx.Query(ctx, `SELECT id, code FROM lots WHERE tenant_id = nx_require_tenant() AND id = ANY($1)`, ids)
	if err != nil {
		return fmt.Errorf("lot codes: %w", err)
	}
	defer rows.Close()
	codes := map[uuid.UUID]string{}
	for rows.Next() {
		var id uuid.UUID
		var code string
		if err := rows.Scan(&id, &code); err != nil {
			return fmt.Errorf("lot codes: %w", err)
		}
		codes[id] = code
	}
	if err := rows.Err(); err != nil {
		return fmt.Errorf("lot codes: %w", err)
	}
	for i := range pts {
		pts[i].Lot = codes[pts[i].LotID]
	}
	return nil
}
