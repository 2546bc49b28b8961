package batch

import (
	"context"
	"fmt"
	"sort"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"

	"github.com/nxcloud/nxcloud/apps"
	"github.com/nxcloud/nxcloud/tenants"
)

// Trace directions.
const (
	Backward = "backward" // towards the raw materials (parents)
	Forward  = "forward"  // towards shipments and customers (children)
)

// TraceQuery selects a trace.
type TraceQuery struct {
	Lot       string
	Direction string
	// MaxDepth bounds the walk (0: any depth).
	MaxDepth int
	// Telemetry adds each run's telemetry summary; Details adds the other
	// apps' records (inspections, deviations, downgrades).
	Telemetry bool
	Details   bool
}

// MetricSummary is a metric's min/avg/max over a run's window.
type MetricSummary struct {
	Metric string  `json:"metric"`
	Unit   string  `json:"unit"`
	Min    float64 `json:"min"`
	Avg    float64 `json:"avg"`
	Max    float64 `json:"max"`
	Count  int64   `json:"count"`
}

// TraceRun is a node's run on a piece of equipment, with its telemetry.
type TraceRun struct {
	Run
	// Width is the rollup the summary was computed from (1m or 1h); the
	// window is widened to whole buckets.
	Width     string          `json:"width,omitempty"`
	Telemetry []MetricSummary `json:"telemetry"`
}

// ShipmentRef is a shipment a node went into.
type ShipmentRef struct {
	Code      string    `json:"code"`
	Customer  string    `json:"customer"`
	Name      string    `json:"customer_name"`
	ShippedAt time.Time `json:"shipped_at"`
	Quantity  float64   `json:"quantity"`
}

// TraceNode is a lot reached by a trace, at its minimum depth (the root is at
// depth 0), once however many paths reach it.
type TraceNode struct {
	Lot
	Depth     int            `json:"depth"`
	Runs      []TraceRun     `json:"runs"`
	Shipments []ShipmentRef  `json:"shipments"`
	Details   map[string]any `json:"details"`
}

// TraceEdge is a genealogy link within a trace.
type TraceEdge struct {
	Parent   string  `json:"parent"`
	Child    string  `json:"child"`
	Kind     string  `json:"kind"`
	Quantity float64 `json:"quantity"`
}

// Trace is a lot's genealogy in one direction: a graph (nodes and edges) whose
// nodes, ordered by depth then code, are also the flat list.
type Trace struct {
	Root      string      `json:"root"`
	Direction string      `json:"direction"`
	Depth     int         `json:"depth"`
	Truncated bool        `json:"truncated"`
	Nodes     []TraceNode `json:"nodes"`
	Edges     []TraceEdge `json:"edges"`
	Shipments []Shipment  `json:"shipments"`
	Generated time.Time   `json:"generated_at"`
}

// maxTelemetryRuns bounds the telemetry summaries of one trace (each is a
// query over the rollups).
const maxTelemetryRuns = 500

// Trace walks a lot's genealogy backward (to its raw materials) or forward (to
// every shipment and customer), to any depth. Errors: invalid (direction,
// depth), not_found (lot).
func (s *Service) Trace(ctx context.Context, q TraceQuery) (Trace, error) {
	if q.Direction == "" {
		q.Direction = Backward
	}
	if q.Direction != Backward && q.Direction != Forward {
		return Trace{}, apps.FieldError("direction", "direction must be backward or forward")
	}
	if q.MaxDepth < 0 {
		return Trace{}, apps.FieldError("depth", "depth must be positive")
	}
	tenant, ok := tenants.FromContext(ctx)
	if !ok {
		return Trace{}, apps.Errorf(apps.Unauthorized, "no tenant in this request")
	}
	return s.trace(ctx, tenant, q)
}

// pipeline sends queries in one round trip, as one implicit transaction
// scoped to the tenant: set_config(…, true) first, as tenants.InTx does, so
// row-level security applies to every query of the batch (and a batch cut
// short reads nothing rather than another tenant's rows).
func (s *Service) pipeline(ctx context.Context, tenant uuid.UUID, queue func(*pgx.Batch), read func(pgx.BatchResults) error) error {
	b := &pgx.Batch{}
	b.Queue(`SELECT set_config('nx.tenant_id', $1, true)`, tenant.String())
	queue(b)
	br := s.db.App.SendBatch(ctx, b)
	_, err := br.Exec()
	if err == nil {
		err = read(br)
	}
	if cerr := br.Close(); err == nil {
		err = cerr
	}
	return err
}

type edge struct {
	parent, child uuid.UUID
	kind          string
	quantity      float64
}

// walkSQL finds the root lot (by code or id) and returns every link
// reachable from it in the direction, in one statement ($1 tenant, $2 code,
// $3 id). The recursive CTE unions on the lot id, so each lot is expanded
// once: it ends on any graph, cycles included, and its work is linear in the
// links reached.
func walkSQL(direction string) string {
	from, to := "child_id", "parent_id"
	if direction == Forward {
		from, to = "parent_id", "child_id"
	}
	// from/to are one of two fixed column names, never input.
	return `WITH RECURSIVE root AS (
			SELECT id, code FROM lots WHERE tenant_id = $1 AND (code = $2 OR id = $3) LIMIT 1
		), reach(id) AS (
			SELECT id FROM root
			UNION
			SELECT l.` + to + ` FROM reach r JOIN lot_links l ON l.tenant_id = $1 AND l.` + from + ` = r.id
		), edges AS (
			SELECT l.parent_id, l.child_id, l.kind, l.quantity::float8 AS quantity
			FROM reach r JOIN lot_links l ON l.tenant_id = $1 AND l.` + from + ` = r.id
		)
		SELECT root.id, root.code, e.parent_id, e.child_id, e.kind, e.quantity FROM root LEFT JOIN edges e ON true`
}

// readWalk reads walkSQL's answer. Errors: not_found (no root).
func readWalk(rows pgx.Rows, ref string) (uuid.UUID, string, []edge, error) {
	defer rows.Close()
	var root uuid.UUID
	var code string
	var edges []edge
	found := false
	for rows.Next() {
		var p, c *uuid.UUID
		var kind *string
		var qty *float64
		if err := rows.Scan(&root, &code, &p, &c, &kind, &qty); err != nil {
			return uuid.Nil, "", nil, err
		}
		found = true
		if p != nil {
			edges = append(edges, edge{parent: *p, child: *c, kind: *kind, quantity: *qty})
		}
	}
	if err := rows.Err(); err != nil {
		return uuid.Nil, "", nil, err
	}
	if !found {
		return uuid.Nil, "", nil, apps.Errorf(apps.NotFound, "unknown lot %q", clip(ref))
	}
	return root, code, edges, nil
}

// depths assigns each lot reached its minimum depth from root (breadth first
// over the edges), up to maxDepth (0: any), and keeps the edges between lots
// within it.
func depths(root uuid.UUID, edges []edge, direction string, maxDepth int) (map[uuid.UUID]int, []edge, bool) {
	next := map[uuid.UUID][]uuid.UUID{}
	for _, e := range edges {
		from, to := e.child, e.parent
		if direction == Forward {
			from, to = e.parent, e.child
		}
		next[from] = append(next[from], to)
	}
	depth := map[uuid.UUID]int{root: 0}
	level := []uuid.UUID{root}
	truncated := false
	for d := 1; len(level) > 0; d++ {
		var nl []uuid.UUID
		for _, id := range level {
			for _, n := range next[id] {
				if _, seen := depth[n]; seen {
					continue
				}
				if maxDepth > 0 && d > maxDepth {
					truncated = true
					continue
				}
				depth[n] = d
				nl = append(nl, n)
			}
		}
		level = nl
	}
	kept := edges[:0:0]
	for _, e := range edges {
		_, p := depth[e.parent]
		_, c := depth[e.child]
		if p && c {
			kept = append(kept, e)
		}
	}
	return depth, kept, truncated
}

// trace reads the genealogy (one round trip), then the lots with their runs
// and shipments (one round trip), then, in a transaction, what needs more
// queries: telemetry summaries, shipments' lots, other apps' details.
func (s *Service) trace(ctx context.Context, tenant uuid.UUID, q TraceQuery) (Trace, error) {
	var id *uuid.UUID
	if u, err := uuid.Parse(q.Lot); err == nil {
		id = &u
	}
	var rootID uuid.UUID
	var rootCode string
	var edges []edge
	err := s.pipeline(ctx, tenant, func(b *pgx.Batch) { b.Queue(walkSQL(q.Direction), tenant, q.Lot, id) },
		func(br pgx.BatchResults) error {
			rows, err := br.Query()
			if err != nil {
				return err
			}
			rootID, rootCode, edges, err = readWalk(rows, q.Lot)
			return err
		})
	if err != nil {
		return Trace{}, err
	}
	depth, edges, truncated := depths(rootID, edges, q.Direction, q.MaxDepth)
	ids := make([]uuid.UUID, 0, len(depth))
	for id := range depth {
		ids = append(ids, id)
	}
	var lots []Lot
	var runs []lotRun
	var ships []lotShipment
	err = s.pipeline(ctx, tenant, func(b *pgx.Batch) {
		b.Queue(`SELECT `+lotColumns+lotFrom+`WHERE l.tenant_id = $1 AND l.id = ANY($2)`, tenant, ids)
		b.Queue(`SELECT r.lot_id, `+runColumns+runFrom+`WHERE r.tenant_id = $1 AND r.lot_id = ANY($2)
			ORDER BY r.started_at, r.id`, tenant, ids)
		b.Queue(`SELECT sl.lot_id, s.code, c.code, c.name, s.shipped_at, sl.quantity::float8
			FROM shipment_lots sl JOIN shipments s ON s.id = sl.shipment_id JOIN customers c ON c.id = s.customer_id
			WHERE sl.tenant_id = $1 AND sl.lot_id = ANY($2) ORDER BY s.shipped_at, s.code`, tenant, ids)
	}, func(br pgx.BatchResults) error {
		var err error
		lots, runs, ships, err = readTraceBatch(br)
		return err
	})
	if err != nil {
		return Trace{}, err
	}
	out := Trace{Root: rootCode, Direction: q.Direction, Truncated: truncated, Nodes: make([]TraceNode, len(lots)),
		Edges: make([]TraceEdge, 0, len(edges)), Shipments: []Shipment{}, Generated: s.now().UTC()}
	code := make(map[uuid.UUID]string, len(lots))
	for i, l := range lots {
		out.Nodes[i] = TraceNode{Lot: l, Depth: depth[l.ID], Runs: []TraceRun{}, Shipments: []ShipmentRef{}, Details: map[string]any{}}
		code[l.ID] = l.Code
		out.Depth = max(out.Depth, depth[l.ID])
	}
	sort.Slice(out.Nodes, func(i, j int) bool {
		a, b := out.Nodes[i], out.Nodes[j]
		if a.Depth != b.Depth {
			return a.Depth < b.Depth
		}
		return a.Code < b.Code
	})
	index := make(map[uuid.UUID]int, len(out.Nodes))
	for i, n := range out.Nodes {
		index[n.ID] = i
	}
	for _, e := range edges {
		out.Edges = append(out.Edges, TraceEdge{Parent: code[e.parent], Child: code[e.child], Kind: e.kind, Quantity: e.quantity})
	}
	sort.Slice(out.Edges, func(i, j int) bool {
		a, b := out.Edges[i], out.Edges[j]
		if a.Parent != b.Parent {
			return a.Parent < b.Parent
		}
		return a.Child < b.Child
	})
	sources := map[string]DetailSource{}
	if q.Details {
		sources = s.detailSources()
	}
	if !(q.Telemetry && len(runs) > 0) && len(ships) == 0 && len(sources) == 0 {
		// Nothing more to read: runs without summaries need no query.
		err := s.addRuns(ctx, nil, &out, runs, index, false)
		return out, err
	}
	err = s.inTx(ctx, func(tx pgx.Tx) error {
		if err := s.addRuns(ctx, tx, &out, runs, index, q.Telemetry); err != nil {
			return err
		}
		if err := addShipments(ctx, tx, &out, ships, index); err != nil {
			return err
		}
		for key, src := range sources {
			m, err := src.LotDetails(ctx, tx, ids)
			if err != nil {
				return fmt.Errorf("trace details %s: %w", key, err)
			}
			for id, v := range m {
				if i, ok := index[id]; ok {
					out.Nodes[i].Details[key] = v
				}
			}
		}
		return nil
	})
	if err != nil {
		return Trace{}, err
	}
	return out, nil
}

type lotRun struct {
	lot uuid.UUID
	run Run
}

type lotShipment struct {
	lot uuid.UUID
	ref ShipmentRef
}

// readTraceBatch reads the answers of the trace's batch: lots, runs,
// shipment references.
func readTraceBatch(br pgx.BatchResults) ([]Lot, []lotRun, []lotShipment, error) {
	rows, err := br.Query()
	if err != nil {
		return nil, nil, nil, err
	}
	lots, err := pgx.CollectRows(rows, scanLot)
	if err != nil {
		return nil, nil, nil, err
	}
	if rows, err = br.Query(); err != nil {
		return nil, nil, nil, err
	}
	runs, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (lotRun, error) {
		var x lotRun
		err := r.Scan(&x.lot, &x.run.ID, &x.run.Device, &x.run.DeviceID, &x.run.Model, &x.run.StartedAt, &x.run.EndedAt, &x.run.Source)
		x.run.StartedAt, x.run.EndedAt = x.run.StartedAt.UTC(), utcPtr(x.run.EndedAt)
		return x, err
	})
	if err != nil {
		return nil, nil, nil, err
	}
	if rows, err = br.Query(); err != nil {
		return nil, nil, nil, err
	}
	ships, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (lotShipment, error) {
		var x lotShipment
		err := r.Scan(&x.lot, &x.ref.Code, &x.ref.Customer, &x.ref.Name, &x.ref.ShippedAt, &x.ref.Quantity)
		x.ref.ShippedAt = x.ref.ShippedAt.UTC()
		return x, err
	})
	return lots, runs, ships, err
}

func (s *Service) addRuns(ctx context.Context, tx pgx.Tx, out *Trace, runs []lotRun, index map[uuid.UUID]int, telemetry bool) error {
	var err error
	metrics := map[uuid.UUID][]metricRef{}
	for n, x := range runs {
		tr := TraceRun{Run: x.run, Telemetry: []MetricSummary{}}
		if telemetry && n < maxTelemetryRuns {
			ms, ok := metrics[x.run.DeviceID]
			if !ok {
				if ms, err = keyMetrics(ctx, tx, x.run.DeviceID); err != nil {
					return err
				}
				metrics[x.run.DeviceID] = ms
			}
			end := s.now()
			if x.run.EndedAt != nil {
				end = *x.run.EndedAt
			}
			if tr.Width, tr.Telemetry, err = summarize(ctx, tx, x.run.DeviceID, ms, x.run.StartedAt, end); err != nil {
				return err
			}
		}
		i := index[x.lot]
		out.Nodes[i].Runs = append(out.Nodes[i].Runs, tr)
	}
	return nil
}

func addShipments(ctx context.Context, tx pgx.Tx, out *Trace, ships []lotShipment, index map[uuid.UUID]int) error {
	var codes []string
	seen := map[string]bool{}
	for _, x := range ships {
		i := index[x.lot]
		out.Nodes[i].Shipments = append(out.Nodes[i].Shipments, x.ref)
		if !seen[x.ref.Code] {
			seen[x.ref.Code] = true
			codes = append(codes, x.ref.Code)
		}
	}
	if len(codes) > 0 {
		list, err := shipmentsWhere(ctx, tx, `s.code = ANY($1)`, codes)
		if err != nil {
			return err
		}
		out.Shipments = list
	}
	return nil
}

type metricRef struct {
	id   int32
	key  string
	unit string
}

// keyMetrics are the measurements of a device's model: every metric but the
// state code.
func keyMetrics(ctx context.Context, q tenants.Querier, device uuid.UUID) ([]metricRef, error) {
	rows, err := q.Query(ctx, `SELECT m.id, m.key, m.unit FROM devices d JOIN metrics m ON m.device_model_id = d.device_model_id
		WHERE d.id = $1 AND m.key <> 'state_code' ORDER BY m.key`, device)
	if err != nil {
		return nil, err
	}
	return pgx.CollectRows(rows, func(r pgx.CollectableRow) (metricRef, error) {
		var m metricRef
		err := r.Scan(&m.id, &m.key, &m.unit)
		return m, err
	})
}

// summaryWidth picks the rollup for a window: 1-minute buckets up to two
// days, hourly beyond, so a summary reads at most a few thousand rows per
// metric whatever the window.
func summaryWidth(from, to time.Time) (string, time.Duration) {
	if to.Sub(from) <= 48*time.Hour {
		return "1m", time.Minute
	}
	return "1h", time.Hour
}

// summarize computes min/avg/max per metric of a device over [from, to]
// through the telemetry read layer (telemetry_buckets: tenant-filtered, the
// same on TimescaleDB and plain PostgreSQL), the window widened to whole
// buckets.
func summarize(ctx context.Context, q tenants.Querier, device uuid.UUID, ms []metricRef, from, to time.Time) (string, []MetricSummary, error) {
	out := []MetricSummary{}
	if len(ms) == 0 {
		return "", out, nil
	}
	width, w := summaryWidth(from, to)
	ids := make([]int32, len(ms))
	for i, m := range ms {
		ids[i] = m.id
	}
	rows, err := q.Query(ctx, `SELECT metric_id, min(min), max(max), sum(avg * count) / sum(count), sum(count)::bigint
		FROM telemetry_buckets($1, $2, $3, $4, $5) GROUP BY metric_id`, width, device, ids, from.Truncate(w), to.Add(time.Nanosecond))
	if err != nil {
		return "", nil, err
	}
	defer rows.Close()
	byID := map[int32]MetricSummary{}
	for rows.Next() {
		var id int32
		var m MetricSummary
		if err := rows.Scan(&id, &m.Min, &m.Max, &m.Avg, &m.Count); err != nil {
			return "", nil, err
		}
		byID[id] = m
	}
	if err := rows.Err(); err != nil {
		return "", nil, err
	}
	for _, m := range ms {
		if x, ok := byID[m.id]; ok && x.Count > 0 {
			x.Metric, x.Unit = m.key, m.unit
			out = append(out, x)
		}
	}
	return width, out, nil
}
