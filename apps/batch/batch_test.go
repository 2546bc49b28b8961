package batch_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"

	"github.com/nxcloud/nxcloud/apps"
	"github.com/nxcloud/nxcloud/apps/batch"
	"github.com/nxcloud/nxcloud/migrations"
	"github.com/nxcloud/nxcloud/tenants"
	"github.com/nxcloud/nxcloud/tenants/tenanttest"
)

func wantCode(t *testing.T, what string, err error, code, field string) {
	t.Helper()
	var e *apps.Error
	if !errors.As(err, &e) || e.Code != code || (field != "" && e.Field != field) {
		t.Errorf("%s: err = %v, want %s (field %q)", what, err, code, field)
	}
}

func mustLot(t *testing.T, svc *batch.Service, ctx context.Context, in batch.LotInput) batch.Lot {
	t.Helper()
	l, err := svc.CreateLot(ctx, in)
	if err != nil {
		t.Fatalf("lot %s: %v", in.Code, err)
	}
	return l
}

func TestLotsAndLinkValidation(t *testing.T) {
	t.Parallel()
	env := tenanttest.New(t)
	a, b := env.NewTenant(t), env.NewTenant(t)
	svc := batch.NewService(&env.DB, nil)
	ctx := a.Ctx()

	mustLot(t, svc, ctx, batch.LotInput{Code: "RAW-1", Kind: "raw", Quantity: 100, Supplier: "Baotou", SupplierLot: "BT-77"})
	l := mustLot(t, svc, ctx, batch.LotInput{Code: "FLAKE-1", Product: "N52 flake", Grade: "N52", Quantity: 50})
	if l.Status != "planned" || l.Unit != "kg" || l.Grade != "N52" {
		t.Errorf("lot = %+v", l)
	}
	mustLot(t, svc, ctx, batch.LotInput{Code: "POWDER-1", Quantity: 40})
	mustLot(t, svc, b.Ctx(), batch.LotInput{Code: "B-RAW", Quantity: 100})

	// Bad input.
	for _, tc := range []struct {
		in    batch.LotInput
		field string
		code  string
	}{
		{batch.LotInput{Code: "X", Quantity: -1}, "quantity", apps.Invalid},
		{batch.LotInput{Code: "bad code"}, "code", apps.Invalid},
		{batch.LotInput{Code: "X", Grade: "N99"}, "grade", apps.Invalid},
		{batch.LotInput{Code: "X", Kind: "other"}, "kind", apps.Invalid},
		{batch.LotInput{Code: "X", Line: "no-such-line"}, "line", apps.Invalid},
		{batch.LotInput{Code: "RAW-1"}, "", apps.Conflict},
	} {
		_, err := svc.CreateLot(ctx, tc.in)
		wantCode(t, "create "+tc.in.Code+" "+tc.field, err, tc.code, tc.field)
	}
	// B cannot see A's lot, and its own lot with the same code is its own.
	if _, err := svc.Lot(b.Ctx(), "RAW-1"); apps.Code(err) != apps.NotFound {
		t.Errorf("B reads A's lot: %v", err)
	}
	if _, err := svc.Lot(b.Ctx(), l.ID.String()); apps.Code(err) != apps.NotFound {
		t.Errorf("B reads A's lot by id: %v", err)
	}

	link := func(p, c string, q float64) error {
		_, err := svc.CreateLink(ctx, batch.LinkInput{Parent: p, Child: c, Kind: "consume", Quantity: q})
		return err
	}
	if err := link("RAW-1", "FLAKE-1", 60); err != nil {
		t.Fatal(err)
	}
	if err := link("FLAKE-1", "POWDER-1", 45); err != nil {
		t.Fatal(err)
	}
	// Quantities: RAW-1 has 100 and gave 60.
	wantCode(t, "over quantity", link("RAW-1", "POWDER-1", 41), apps.Invalid, "quantity")
	wantCode(t, "negative quantity", link("RAW-1", "POWDER-1", -1), apps.Invalid, "quantity")
	wantCode(t, "zero quantity", link("RAW-1", "POWDER-1", 0), apps.Invalid, "quantity")
	// Cycles, direct and through a path; a self link.
	wantCode(t, "cycle", link("POWDER-1", "RAW-1", 1), apps.Invalid, "child")
	wantCode(t, "short cycle", link("FLAKE-1", "RAW-1", 1), apps.Invalid, "child")
	wantCode(t, "self", link("RAW-1", "RAW-1", 1), apps.Invalid, "child")
	// Another tenant's lot is an unknown lot, by code or by id.
	wantCode(t, "B's lot", link("RAW-1", "B-RAW", 1), apps.Invalid, "child")
	bl, err := svc.Lot(b.Ctx(), "B-RAW")
	if err != nil {
		t.Fatal(err)
	}
	wantCode(t, "B's lot by id", link(bl.ID.String(), "POWDER-1", 1), apps.Invalid, "parent")
	wantCode(t, "duplicate link", link("RAW-1", "FLAKE-1", 1), apps.Conflict, "")
	_, err = svc.CreateLink(ctx, batch.LinkInput{Parent: "RAW-1", Child: "POWDER-1", Kind: "melt", Quantity: 1})
	wantCode(t, "kind", err, apps.Invalid, "kind")
	// Shrinking a lot below what it gave is refused.
	q := 10.0
	_, err = svc.UpdateLot(ctx, "RAW-1", batch.LotPatch{Quantity: &q})
	wantCode(t, "shrink", err, apps.Invalid, "quantity")
	st := "done"
	if got, err := svc.UpdateLot(ctx, "FLAKE-1", batch.LotPatch{Status: &st}); err != nil || got.Status != "done" {
		t.Errorf("update status = %+v, %v", got, err)
	}
	links, err := svc.Links(ctx, "FLAKE-1")
	if err != nil || len(links.Parents) != 1 || len(links.Children) != 1 || links.Parents[0].Parent != "RAW-1" {
		t.Errorf("links = %+v, %v", links, err)
	}
	// Shipments: quantity counts against the lot; unknown customer.
	if _, err := svc.CreateCustomer(ctx, batch.CustomerInput{Code: "ACME", Name: "Acme Motors"}); err != nil {
		t.Fatal(err)
	}
	_, err = svc.CreateShipment(ctx, batch.ShipmentInput{Code: "S-1", Customer: "ACME", ShippedAt: time.Now(),
		Lots: []batch.ShipmentLotIn{{Lot: "POWDER-1", Quantity: 41}}})
	wantCode(t, "ship too much", err, apps.Invalid, "lots")
	_, err = svc.CreateShipment(ctx, batch.ShipmentInput{Code: "S-1", Customer: "NOPE", ShippedAt: time.Now(),
		Lots: []batch.ShipmentLotIn{{Lot: "POWDER-1", Quantity: 1}}})
	wantCode(t, "unknown customer", err, apps.Invalid, "customer")
	sh, err := svc.CreateShipment(ctx, batch.ShipmentInput{Code: "S-1", Customer: "ACME", ShippedAt: time.Now(),
		Lots: []batch.ShipmentLotIn{{Lot: "POWDER-1", Quantity: 40}}})
	if err != nil || len(sh.Lots) != 1 || sh.Customer != "ACME" {
		t.Fatalf("shipment = %+v, %v", sh, err)
	}
	if p, _ := svc.Lot(ctx, "POWDER-1"); p.Status != "shipped" {
		t.Errorf("shipped lot status = %s", p.Status)
	}
	if _, err := svc.Shipment(b.Ctx(), "S-1"); apps.Code(err) != apps.NotFound {
		t.Errorf("B reads A's shipment: %v", err)
	}
	page, err := svc.Lots(ctx, batch.LotQuery{Limit: 2})
	if err != nil || len(page.Items) != 2 || page.NextCursor == "" {
		t.Fatalf("page 1 = %+v, %v", page, err)
	}
	page2, err := svc.Lots(ctx, batch.LotQuery{Limit: 2, Cursor: page.NextCursor})
	if err != nil || len(page2.Items) != 1 || page2.NextCursor != "" {
		t.Errorf("page 2 = %+v, %v", page2, err)
	}
}

// Concurrent links that would together close cycles: the per-tenant lock
// makes one of each pair win and the other see the cycle.
func TestConcurrentLinksMakeNoCycle(t *testing.T) {
	t.Parallel()
	env := tenanttest.New(t)
	tn := env.NewTenant(t)
	svc := batch.NewService(&env.DB, nil)
	ctx := tn.Ctx()
	const n = 8
	codes := make([]string, n)
	for i := range codes {
		codes[i] = "C" + string(rune('A'+i))
		mustLot(t, svc, ctx, batch.LotInput{Code: codes[i], Quantity: 100})
	}
	// A ring C0 → C1 → ... → C7 → C0, every link at once: any n-1 of them
	// are fine, all n are a cycle.
	var wg sync.WaitGroup
	errs := make([]error, n)
	for i := 0; i < n; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			_, errs[i] = svc.CreateLink(ctx, batch.LinkInput{Parent: codes[i], Child: codes[(i+1)%n], Kind: "consume", Quantity: 1})
		}(i)
	}
	wg.Wait()
	failed := 0
	for _, err := range errs {
		if err != nil {
			wantCode(t, "ring link", err, apps.Invalid, "child")
			failed++
		}
	}
	if failed != 1 {
		t.Errorf("%d ring links refused, want exactly 1: %v", failed, errs)
	}
	for _, c := range codes {
		tr, err := svc.Trace(ctx, batch.TraceQuery{Lot: c, Direction: batch.Forward})
		if err != nil {
			t.Fatal(err)
		}
		for _, e := range tr.Edges {
			if e.Child == c {
				t.Errorf("cycle through %s: %+v", c, tr.Edges)
			}
		}
	}
}

func insertEvent(t *testing.T, env *tenanttest.Env, tn tenanttest.Tenant, dev tenants.Device, ts time.Time, payload string) {
	t.Helper()
	if _, err := env.DB.System.Exec(context.Background(), `INSERT INTO device_events (tenant_id, device_id, kind, ts, payload)
		VALUES ($1, $2, 'event', $3, $4)`, tn.ID, dev.ID, ts, payload); err != nil {
		t.Fatal(err)
	}
}

func seedPoints(t *testing.T, env *tenanttest.Env, tn tenanttest.Tenant, dev tenants.Device, metric string, ts []time.Time, vs []float64) {
	t.Helper()
	ctx := context.Background()
	var id int32
	if err := env.DB.System.QueryRow(ctx, `SELECT m.id FROM metrics m JOIN devices d ON d.device_model_id = m.device_model_id
		WHERE d.id = $1 AND m.key = $2`, dev.ID, metric).Scan(&id); err != nil {
		t.Fatal(err)
	}
	rows := make([][]any, len(ts))
	for i := range ts {
		rows[i] = []any{ts[i], tn.ID, dev.ID, id, vs[i]}
	}
	err := pgx.BeginFunc(ctx, env.DB.System, func(tx pgx.Tx) error {
		if _, err := tx.CopyFrom(ctx, pgx.Identifier{"telemetry"}, []string{"ts", "tenant_id", "device_id", "metric_id", "value"}, pgx.CopyFromRows(rows)); err != nil {
			return err
		}
		if env.Flavor == migrations.FlavorPostgres {
			_, err := tx.Exec(ctx, `INSERT INTO telemetry_invalidation (lo, hi) VALUES ($1, $2)`, ts[0], ts[len(ts)-1])
			return err
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

// Lot start/end events from a furnace open and close the lot's run; the trace
// summarises the furnace's telemetry during the run, and only during it.
func TestLotEventsAndTelemetrySummary(t *testing.T) {
	t.Parallel()
	env := tenanttest.New(t)
	tn := env.NewTenant(t)
	svc := batch.NewService(&env.DB, nil)
	ctx := tn.Ctx()
	furnace, _ := env.Device(t, tn, "sinter-1", "sintering-furnace")
	mustLot(t, svc, ctx, batch.LotInput{Code: "S-100", Product: "N52 block", Grade: "N52", Quantity: 500})

	start := time.Now().UTC().Add(time.Hour).Truncate(time.Minute)
	end := start.Add(90 * time.Minute)
	insertEvent(t, env, tn, furnace, start, `{"type":"lot_start","lot":"S-100"}`)
	insertEvent(t, env, tn, furnace, start.Add(time.Minute), `{"type":"lot_end","lot":"NO-SUCH-LOT"}`)
	insertEvent(t, env, tn, furnace, start.Add(time.Minute), `{"type":"lot_start","lot":"bad code"}`)
	insertEvent(t, env, tn, furnace, start.Add(time.Minute), `{"type":"lot_start","lot":"EV-2","grade":"N99"}`)
	// An MES starts a lot the platform has not seen: it is created.
	insertEvent(t, env, tn, furnace, start.Add(time.Minute), `{"type":"lot_start","lot":"EV-1","product":"N45 block","grade":"N45","quantity":300}`)
	insertEvent(t, env, tn, furnace, start.Add(2*time.Minute), `{"type":"door_open"}`)
	insertEvent(t, env, tn, furnace, end, `{"type":"lot_end","lot":"S-100"}`)
	feed := svc.Feed(env.DB.System)
	if _, err := feed.Poll(context.Background()); err != nil {
		t.Fatal(err)
	}
	runs, err := svc.Runs(ctx, "S-100")
	if err != nil || len(runs) != 1 {
		t.Fatalf("runs = %+v, %v", runs, err)
	}
	r := runs[0]
	if r.Device != "sinter-1" || !r.StartedAt.Equal(start) || r.EndedAt == nil || !r.EndedAt.Equal(end) || r.Source != "event" {
		t.Errorf("run = %+v", r)
	}
	ev1, err := svc.Lot(ctx, "EV-1")
	if err != nil || ev1.Grade != "N45" || ev1.Quantity != 300 || ev1.Status != "running" || ev1.StartedAt == nil {
		t.Errorf("lot from event = %+v, %v", ev1, err)
	}
	if runs, _ := svc.Runs(ctx, "EV-1"); len(runs) != 1 || runs[0].EndedAt != nil {
		t.Errorf("runs of EV-1 = %+v", runs)
	}
	// The refused events are recorded with their reasons, visible to the tenant.
	for lot, want := range map[string]string{"NO-SUCH-LOT": "unknown lot", "bad code": "code", "EV-2": "not a grade of the sector"} {
		var reason string
		err = tenants.InTx(ctx, env.DB.App, func(tx pgx.Tx) error {
			return tx.QueryRow(ctx, `SELECT coalesce(error, '') FROM event_feed_seen s JOIN device_events e ON e.id = s.event_id
				WHERE s.consumer = $1 AND e.payload->>'lot' = $2`, batch.FeedConsumer, lot).Scan(&reason)
		})
		if err != nil || !strings.Contains(reason, want) {
			t.Errorf("refusal of %s = %q, %v", lot, reason, err)
		}
	}
	if _, err := svc.Lot(ctx, "EV-2"); apps.Code(err) != apps.NotFound {
		t.Errorf("refused lot_start created EV-2: %v", err)
	}
	// Polling again applies nothing twice.
	if _, err := feed.Poll(context.Background()); err != nil {
		t.Fatal(err)
	}
	if runs, _ := svc.Runs(ctx, "S-100"); len(runs) != 1 {
		t.Errorf("runs after a second poll = %d", len(runs))
	}

	// Zone 1 temperature: inside the run 1040..1080, outside far off.
	var ts []time.Time
	var vs []float64
	for i := 0; i <= 80; i++ {
		ts = append(ts, start.Add(time.Duration(5+i)*time.Minute))
		vs = append(vs, 1040+float64(i)/2)
	}
	seedPoints(t, env, tn, furnace, "zone1_temp", ts, vs)
	seedPoints(t, env, tn, furnace, "zone1_temp", []time.Time{start.Add(-30 * time.Minute), end.Add(30 * time.Minute)}, []float64{20, 25})
	// The run lies ahead of the rollup watermark (it is in the future), so
	// the read layer answers from raw points at once; rollups are the
	// telemetry layer's own tests.
	tr, err := svc.Trace(ctx, batch.TraceQuery{Lot: "S-100", Direction: batch.Backward, Telemetry: true})
	if err != nil {
		t.Fatal(err)
	}
	if len(tr.Nodes) != 1 || len(tr.Nodes[0].Runs) != 1 {
		t.Fatalf("trace = %+v", tr)
	}
	var zone *batch.MetricSummary
	for i, m := range tr.Nodes[0].Runs[0].Telemetry {
		if m.Metric == "zone1_temp" {
			zone = &tr.Nodes[0].Runs[0].Telemetry[i]
		}
	}
	if zone == nil || zone.Min != 1040 || zone.Max != 1080 || zone.Count != 81 || zone.Avg < 1059.99 || zone.Avg > 1060.01 {
		t.Errorf("zone1_temp summary = %+v", zone)
	}
}

func TestPublicResolve(t *testing.T) {
	t.Parallel()
	env := tenanttest.New(t)
	a, b := env.NewTenant(t), env.NewTenant(t)
	svc := batch.NewService(&env.DB, nil)
	mustLot(t, svc, a.Ctx(), batch.LotInput{Code: "FIN-1", Product: "motor-magnet", Grade: "N42SH", Quantity: 120,
		Operator: "secret operator", Attributes: map[string]any{"coating": "NiCuNi", "cost": 99}})
	mustLot(t, svc, a.Ctx(), batch.LotInput{Code: "FIN-2", Product: "unlabelled", Quantity: 1})
	mustLot(t, svc, b.Ctx(), batch.LotInput{Code: "FIN-B", Product: "motor-magnet", Quantity: 1})
	if _, err := svc.SetPublicFields(a.Ctx(), batch.PublicFieldsInput{Product: "motor-magnet", Fields: []string{"code", "grade", "attributes.coating"}}); err != nil {
		t.Fatal(err)
	}
	_, err := svc.SetPublicFields(a.Ctx(), batch.PublicFieldsInput{Product: "x", Fields: []string{"operator"}})
	wantCode(t, "unknown field", err, apps.Invalid, "fields")

	got, err := svc.Resolve(context.Background(), a.Slug, "FIN-1")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := json.Marshal(got)
	want := `{"fields":{"attributes.coating":"NiCuNi","code":"FIN-1","grade":"N42SH"}}`
	if string(body) != want {
		t.Errorf("resolve = %s, want %s", body, want)
	}
	// Every way of showing nothing is the same not_found.
	for _, c := range [][2]string{{a.Slug, "NOPE"}, {a.Slug, "FIN-2"}, {a.Slug, "FIN-B"}, {b.Slug, "FIN-1"}, {"no-such-tenant", "FIN-1"}, {a.Slug, "bad code"}} {
		_, err := svc.Resolve(context.Background(), c[0], c[1])
		if apps.Code(err) != apps.NotFound || err.Error() != "not_found: no such label" {
			t.Errorf("resolve %v = %v", c, err)
		}
	}
}

func TestExportsEscape(t *testing.T) {
	t.Parallel()
	env := tenanttest.New(t)
	tn := env.NewTenant(t)
	svc := batch.NewService(&env.DB, nil)
	ctx := tn.Ctx()
	mustLot(t, svc, ctx, batch.LotInput{Code: "EXP-1", Product: `<script>alert(1)</script>`, Operator: "=HYPERLINK(\"x\")", Quantity: 5})
	mustLot(t, svc, ctx, batch.LotInput{Code: "EXP-2", Quantity: 5})
	if _, err := svc.CreateLink(ctx, batch.LinkInput{Parent: "EXP-1", Child: "EXP-2", Kind: "consume", Quantity: 5}); err != nil {
		t.Fatal(err)
	}
	svc.AddDetail("notes", noteSource{})
	tr, err := svc.Trace(ctx, batch.TraceQuery{Lot: "EXP-2", Details: true})
	if err != nil {
		t.Fatal(err)
	}
	var h, c bytes.Buffer
	if err := batch.WriteHTML(&h, tr); err != nil {
		t.Fatal(err)
	}
	if strings.Contains(h.String(), "<script>") || !strings.Contains(h.String(), "&lt;script&gt;") ||
		strings.Contains(h.String(), "<img") || !strings.Contains(h.String(), "notes") {
		t.Errorf("HTML report does not escape: %s", h.String())
	}
	if err := batch.WriteCSV(&c, tr); err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSpace(c.String()), "\n")
	if len(lines) != 3 || !strings.HasPrefix(lines[1], "0,EXP-2,") || !strings.Contains(lines[2], `'=HYPERLINK`) {
		t.Errorf("CSV = %s", c.String())
	}
}

// noteSource is a detail source whose records carry markup, for the export
// escaping test.
type noteSource struct{}

func (noteSource) LotDetails(ctx context.Context, q tenants.Querier, ids []uuid.UUID) (map[uuid.UUID]any, error) {
	out := map[uuid.UUID]any{}
	for _, id := range ids {
		out[id] = map[string]string{"note": "<img src=x onerror=alert(1)>"}
	}
	return out, nil
}
