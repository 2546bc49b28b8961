package downgrade

import (
	"context"
	"fmt"
	"sort"
	"strings"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"

	"github.com/nxcloud/nxcloud/apps"
	"github.com/nxcloud/nxcloud/tenants"
)

// Groupings of the analytics: by a lot's attribute, or by period (trend).
var Groupings = []string{"grade", "line", "equipment", "shift", "recipe_version", "material_lot", "week", "month"}

// AnalyticsQuery selects the lots produced in [From, To) (by start, else by
// creation) and groups them.
type AnalyticsQuery struct {
	GroupBy  string
	From, To time.Time
}

// Reason is one reason's share of the downgrades (a Pareto bar).
type Reason struct {
	Code      string  `json:"code"`
	Name      string  `json:"name"`
	Count     int     `json:"count"`
	Quantity  float64 `json:"quantity"`
	ValueLost float64 `json:"value_lost"`
	// Share of the downgraded quantity, and the cumulative share down the
	// Pareto (reasons ordered by quantity).
	Share      float64 `json:"share"`
	Cumulative float64 `json:"cumulative"`
}

// Group is one group's downgrade figures.
type Group struct {
	Key                string   `json:"key"`
	Lots               int      `json:"lots"`
	DowngradedLots     int      `json:"downgraded_lots"`
	ProducedQuantity   float64  `json:"produced_quantity"`
	DowngradedQuantity float64  `json:"downgraded_quantity"`
	QuantityRate       float64  `json:"quantity_rate"`
	ProducedValue      float64  `json:"produced_value"`
	ValueLost          float64  `json:"value_lost"`
	ValueRate          float64  `json:"value_rate"`
	Reasons            []Reason `json:"reasons"`
}

// Analytics are downgrade rates and Pareto of reasons per group, and in
// total. A lot counts in every group it belongs to (each equipment it ran
// on, each raw-material lot in its genealogy), so groups may overlap.
type Analytics struct {
	GroupBy  string    `json:"group_by"`
	From     time.Time `json:"from"`
	To       time.Time `json:"to"`
	Currency string    `json:"currency"`
	Total    Group     `json:"total"`
	Groups   []Group   `json:"groups"`
}

type baseLot struct {
	id       uuid.UUID
	quantity float64
	value    float64
	at       time.Time
}

type dgRow struct {
	lot      uuid.UUID
	quantity float64
	value    float64
	reason   string
}

// Analytics computes downgrade rates by quantity and by value (value lost
// over the production value at intended grades, from the price list) and the
// Pareto of reasons, per group. Recorded and approved downgrades count;
// proposals and rejections do not. Errors: invalid (group_by, range).
func (s *Service) Analytics(ctx context.Context, q AnalyticsQuery) (Analytics, error) {
	if q.GroupBy == "" {
		q.GroupBy = "grade"
	}
	if !oneOf(q.GroupBy, Groupings) {
		return Analytics{}, apps.FieldError("group_by", "group_by must be one of %s", strings.Join(Groupings, ", "))
	}
	if !q.From.Before(q.To) {
		return Analytics{}, apps.FieldError("from", "from must be before to")
	}
	out := Analytics{GroupBy: q.GroupBy, From: q.From.UTC(), To: q.To.UTC(), Groups: []Group{}}
	err := s.inTx(ctx, func(tx pgx.Tx) error {
		st, err := settings(ctx, tx)
		if err != nil {
			return err
		}
		out.Currency = st.Currency
		rows, err := tx.Query(ctx, `SELECT l.id, l.quantity::float8, l.quantity::float8 * coalesce(p.price, 0)::float8,
				coalesce(l.started_at, l.created_at)
			FROM lots l LEFT JOIN grade_prices p ON p.tenant_id = l.tenant_id AND p.grade_code = l.grade_code
			WHERE l.tenant_id = nx_require_tenant() AND l.grade_code IS NOT NULL AND l.kind <> 'raw'
			  AND coalesce(l.started_at, l.created_at) >= $1 AND coalesce(l.started_at, l.created_at) < $2`, q.From, q.To)
		if err != nil {
			return err
		}
		base, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (baseLot, error) {
			var b baseLot
			err := r.Scan(&b.id, &b.quantity, &b.value, &b.at)
			return b, err
		})
		if err != nil {
			return err
		}
		ids := make([]uuid.UUID, len(base))
		for i, b := range base {
			ids[i] = b.id
		}
		rows, err = tx.Query(ctx, `SELECT lot_id, quantity::float8, coalesce(value_lost, 0)::float8, reason_code FROM downgrades
			WHERE tenant_id = nx_require_tenant() AND lot_id = ANY($1) AND status IN ('recorded', 'approved')`, ids)
		if err != nil {
			return err
		}
		dgs, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (dgRow, error) {
			var d dgRow
			err := r.Scan(&d.lot, &d.quantity, &d.value, &d.reason)
			return d, err
		})
		if err != nil {
			return err
		}
		names, err := reasonNames(ctx, tx)
		if err != nil {
			return err
		}
		keys, err := groupKeys(ctx, tx, q.GroupBy, base, ids)
		if err != nil {
			return err
		}
		out.Total, out.Groups = aggregate(base, dgs, keys, names)
		return nil
	})
	return out, err
}

func reasonNames(ctx context.Context, q tenants.Querier) (map[string]string, error) {
	rows, err := q.Query(ctx, `SELECT code, name FROM defect_codes WHERE tenant_id = nx_require_tenant()`)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	out := map[string]string{}
	for rows.Next() {
		var c, n string
		if err := rows.Scan(&c, &n); err != nil {
			return nil, err
		}
		out[c] = n
	}
	return out, rows.Err()
}

// groupKeys maps each lot to the groups it belongs to.
func groupKeys(ctx context.Context, q tenants.Querier, by string, base []baseLot, ids []uuid.UUID) (map[uuid.UUID][]string, error) {
	out := map[uuid.UUID][]string{}
	switch by {
	case "week", "month":
		for _, b := range base {
			t := b.at.UTC()
			if by == "month" {
				out[b.id] = []string{t.Format("2006-01")}
			} else {
				y, w := t.ISOWeek()
				out[b.id] = []string{isoWeek(y, w)}
			}
		}
		return out, nil
	}
	var sql string
	switch by {
	case "grade":
		sql = `SELECT id, grade_code FROM lots WHERE tenant_id = nx_require_tenant() AND id = ANY($1)`
	case "shift":
		sql = `SELECT id, shift FROM lots WHERE tenant_id = nx_require_tenant() AND id = ANY($1)`
	case "recipe_version":
		sql = `SELECT id, coalesce(recipe_version_id::text, '') FROM lots WHERE tenant_id = nx_require_tenant() AND id = ANY($1)`
	case "line":
		sql = `SELECT l.id, coalesce(ln.key, '') FROM lots l LEFT JOIN lines ln ON ln.id = l.line_id
			WHERE l.tenant_id = nx_require_tenant() AND l.id = ANY($1)`
	case "equipment":
		sql = `SELECT DISTINCT r.lot_id, d.key FROM lot_runs r JOIN devices d ON d.id = r.device_id
			WHERE r.tenant_id = nx_require_tenant() AND r.lot_id = ANY($1)`
	case "material_lot":
		sql = `WITH RECURSIVE up(lot_id, id) AS (
				SELECT id, id FROM lots WHERE tenant_id = nx_require_tenant() AND id = ANY($1)
				UNION
				SELECT up.lot_id, k.parent_id FROM up JOIN lot_links k ON k.tenant_id = nx_require_tenant() AND k.child_id = up.id
			)
			SELECT up.lot_id, l.code FROM up JOIN lots l ON l.id = up.id WHERE l.kind = 'raw'`
	}
	rows, err := q.Query(ctx, sql, ids)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	for rows.Next() {
		var id uuid.UUID
		var k string
		if err := rows.Scan(&id, &k); err != nil {
			return nil, err
		}
		out[id] = append(out[id], k)
	}
	if err := rows.Err(); err != nil {
		return nil, err
	}
	for _, b := range base {
		if len(out[b.id]) == 0 {
			out[b.id] = []string{""} // the lot has none: the group of lots without
		}
	}
	return out, nil
}

func isoWeek(y, w int) string { return fmt.Sprintf("%d-W%02d", y, w) }

type acc struct {
	g       Group
	reasons map[string]*Reason
	lots    map[uuid.UUID]bool
}

func newAcc(key string) *acc {
	return &acc{g: Group{Key: key, Reasons: []Reason{}}, reasons: map[string]*Reason{}, lots: map[uuid.UUID]bool{}}
}

func (a *acc) lot(b baseLot) {
	a.g.Lots++
	a.g.ProducedQuantity += b.quantity
	a.g.ProducedValue += b.value
}

func (a *acc) downgrade(d dgRow, names map[string]string) {
	if !a.lots[d.lot] {
		a.lots[d.lot] = true
		a.g.DowngradedLots++
	}
	a.g.DowngradedQuantity += d.quantity
	a.g.ValueLost += d.value
	r := a.reasons[d.reason]
	if r == nil {
		r = &Reason{Code: d.reason, Name: names[d.reason]}
		a.reasons[d.reason] = r
	}
	r.Count++
	r.Quantity += d.quantity
	r.ValueLost += d.value
}

func (a *acc) done() Group {
	g := a.g
	if g.ProducedQuantity > 0 {
		g.QuantityRate = g.DowngradedQuantity / g.ProducedQuantity
	}
	if g.ProducedValue > 0 {
		g.ValueRate = g.ValueLost / g.ProducedValue
	}
	for _, r := range a.reasons {
		g.Reasons = append(g.Reasons, *r)
	}
	sort.Slice(g.Reasons, func(i, j int) bool {
		if g.Reasons[i].Quantity != g.Reasons[j].Quantity {
			return g.Reasons[i].Quantity > g.Reasons[j].Quantity
		}
		return g.Reasons[i].Code < g.Reasons[j].Code
	})
	cum := 0.0
	for i := range g.Reasons {
		if g.DowngradedQuantity > 0 {
			g.Reasons[i].Share = g.Reasons[i].Quantity / g.DowngradedQuantity
		}
		cum += g.Reasons[i].Share
		g.Reasons[i].Cumulative = cum
	}
	return g
}

func aggregate(base []baseLot, dgs []dgRow, keys map[uuid.UUID][]string, names map[string]string) (Group, []Group) {
	total := newAcc("")
	groups := map[string]*acc{}
	get := func(k string) *acc {
		if groups[k] == nil {
			groups[k] = newAcc(k)
		}
		return groups[k]
	}
	for _, b := range base {
		total.lot(b)
		for _, k := range keys[b.id] {
			get(k).lot(b)
		}
	}
	for _, d := range dgs {
		total.downgrade(d, names)
		for _, k := range keys[d.lot] {
			get(k).downgrade(d, names)
		}
	}
	out := make([]Group, 0, len(groups))
	for _, a := range groups {
		out = append(out, a.done())
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Key < out[j].Key })
	return total.done(), out
}
