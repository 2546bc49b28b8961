package recipe_test

import (
	"context"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"

	"github.com/nxcloud/nxcloud/apps"
	"github.com/nxcloud/nxcloud/apps/batch"
	"github.com/nxcloud/nxcloud/apps/recipe"
	"github.com/nxcloud/nxcloud/tenants"
	"github.com/nxcloud/nxcloud/tenants/tenanttest"
)

// The recipe app provides the "deviations" details of trace nodes.
var _ batch.DetailSource = (*recipe.Service)(nil)

// seedRun creates a lot made with version and its run on device from start
// to end, and returns the lot id.
func seedRun(t testing.TB, env *tenanttest.Env, tn tenanttest.Tenant, code string, version, device uuid.UUID, start time.Time, end *time.Time) uuid.UUID {
	t.Helper()
	ctx := context.Background()
	var lot uuid.UUID
	if err := env.DB.System.QueryRow(ctx, `INSERT INTO lots (tenant_id, code, product, grade_code, recipe_version_id, status, started_at)
		VALUES ($1, $2, 'block', 'N42', $3, 'running', $4) RETURNING id`, tn.ID, code, version, start).Scan(&lot); err != nil {
		t.Fatal(err)
	}
	if _, err := env.DB.System.Exec(ctx, `INSERT INTO lot_runs (tenant_id, lot_id, device_id, started_at, ended_at) VALUES ($1, $2, $3, $4, $5)`,
		tn.ID, lot, device, start, end); err != nil {
		t.Fatal(err)
	}
	return lot
}

// seedPoints writes telemetry of one metric of a device: value at start+offset seconds.
func seedPoints(t testing.TB, env *tenanttest.Env, tn tenanttest.Tenant, device uuid.UUID, metric string, start time.Time, pts map[int]float64) {
	t.Helper()
	ctx := context.Background()
	var id int32
	if err := env.DB.System.QueryRow(ctx, `SELECT x.id FROM metrics x JOIN devices d ON d.device_model_id = x.device_model_id
		WHERE d.id = $1 AND x.key = $2`, device, metric).Scan(&id); err != nil {
		t.Fatal(err)
	}
	var rows [][]any
	for off, v := range pts {
		rows = append(rows, []any{start.Add(time.Duration(off) * time.Second), tn.ID, device, id, v})
	}
	if _, err := env.DB.System.CopyFrom(ctx, pgx.Identifier{"telemetry"}, []string{"ts", "tenant_id", "device_id", "metric_id", "value"},
		pgx.CopyFromRows(rows)); err != nil {
		t.Fatal(err)
	}
}

// TestDeviationsExactly drives a furnace's zone temperature outside the
// recipe's limits [1050, 1070] °C during a lot run: two separate excursions
// above the upper limit, one below the lower one, points exactly at both
// limits (not deviations), and data before and after the run and on another
// furnace (ignored). The scan runs twice, the first time up to the middle of
// the first excursion: it is continued, not opened twice, and a point that
// arrives after the first scan (within the settle window) still counts.
func TestDeviationsExactly(t *testing.T) {
	env := tenanttest.New(t)
	tn := env.NewTenant(t)
	ctx := context.Background()
	svc := recipe.NewService(&env.DB, nopDownlink{}, nil)
	approved(t, svc, tn, "R-DEV")
	tctx := tenants.WithTenant(ctx, tn.ID)
	v, err := svc.Version(tctx, "R-DEV", "1")
	if err != nil {
		t.Fatal(err)
	}
	furnace, _ := env.Device(t, tn, "sinter-01", "sintering-furnace")
	other, _ := env.Device(t, tn, "sinter-02", "sintering-furnace")

	// The run is an hour in the future and the service's clock with it: the
	// deviation jobs of platforms that other tests run on the same database
	// (real clock) do not reach it.
	t0 := time.Now().UTC().Add(time.Hour).Truncate(time.Second)
	svc.Now = func() time.Time { return t0.Add(time.Hour) }
	end := t0.Add(10 * time.Minute)
	lot := seedRun(t, env, tn, "L-DEV-1", v.ID, furnace.ID, t0, &end)
	seedPoints(t, env, tn, furnace.ID, "zone1_temp", t0, map[int]float64{
		-60: 2000, // before the run
		0:   1060,
		10:  1075, // above: excursion A starts
		20:  1080,
		30:  1072,
		40:  1060, // A ends
		50:  1070, // exactly at the upper limit: inside
		60:  1050, // exactly at the lower limit: inside
		70:  1045, // below: excursion B starts
		80:  1040,
		90:  1065, // B ends
		100: 1090, // above: excursion C starts
		110: 1060, // C ends
		120: 1061,
		600: 2000, // at the run's end (the window is [start, end)): ignored
		660: 2000, // after the run
	})
	seedPoints(t, env, tn, furnace.ID, "vacuum_pa", t0, map[int]float64{0: 0.005, 10: 0.01, 20: 0.0})
	seedPoints(t, env, tn, other.ID, "zone1_temp", t0, map[int]float64{10: 1500, 20: 1500})

	// First scan: up to t0+25s, in the middle of excursion A.
	svc.Settle = svc.Now().Sub(t0.Add(25 * time.Second))
	if _, err := svc.ScanDeviations(tctx); err != nil {
		t.Fatal(err)
	}
	firstPage, err := svc.Deviations(tctx, recipe.DeviationQuery{Lot: "L-DEV-1"})
	first := firstPage.Items
	if err != nil {
		t.Fatal(err)
	}
	if len(first) != 1 || !first[0].Open || first[0].WorstValue != 1080 || first[0].Points != 2 {
		t.Fatalf("after the first scan: %+v", first)
	}
	// A late point inside A, then the rest of the run.
	seedPoints(t, env, tn, furnace.ID, "zone1_temp", t0, map[int]float64{35: 1100})
	svc.Settle = 0
	if _, err := svc.ScanDeviations(tctx); err != nil {
		t.Fatal(err)
	}
	// A rescan changes nothing.
	if _, err := svc.ScanDeviations(tctx); err != nil {
		t.Fatal(err)
	}
	gotPage, err := svc.Deviations(tctx, recipe.DeviationQuery{Lot: lot.String()})
	got := gotPage.Items
	if err != nil {
		t.Fatal(err)
	}
	type dev struct {
		limit       string
		start, stop int
		worst       float64
		worstAt     int
		points      int
	}
	want := []dev{ // newest first
		{recipe.Upper, 100, 110, 1090, 100, 1},
		{recipe.Lower, 70, 90, 1040, 80, 2},
		{recipe.Upper, 10, 40, 1100, 35, 4},
	}
	if len(got) != len(want) {
		t.Fatalf("%d deviations, want %d: %+v", len(got), len(want), got)
	}
	for i, w := range want {
		g := got[i]
		at := func(s int) time.Time { return t0.Add(time.Duration(s) * time.Second) }
		if g.LimitCrossed != w.limit || !g.StartedAt.Equal(at(w.start)) || g.EndedAt == nil || !g.EndedAt.Equal(at(w.stop)) ||
			g.WorstValue != w.worst || !g.WorstAt.Equal(at(w.worstAt)) || g.Points != w.points || g.Open ||
			g.Metric != "zone1_temp" || g.Unit != "°C" || g.Lot != "L-DEV-1" || g.Device != "sinter-01" || g.Version != 1 ||
			g.Lower != 1050 || g.Upper != 1070 || (w.limit == recipe.Upper) != (g.Limit == 1070) {
			t.Errorf("deviation %d: %+v, want %+v", i, g, w)
		}
	}
	if got[2].ID != first[0].ID {
		t.Errorf("excursion A was opened twice (%s, then %s)", first[0].ID, got[2].ID)
	}

	// Acknowledged once; filters.
	bobCtx := as(tn, uuid.New(), "bob")
	a, err := svc.Acknowledge(bobCtx, got[1].ID.String(), recipe.AcknowledgeInput{Note: "thermocouple swapped"})
	if err != nil || !a.Acknowledged || a.AcknowledgedBy.Name != "bob" || a.Note != "thermocouple swapped" {
		t.Fatalf("acknowledge: %+v %v", a, err)
	}
	if _, err := svc.Acknowledge(bobCtx, got[1].ID.String(), recipe.AcknowledgeInput{}); apps.Code(err) != apps.Conflict {
		t.Fatalf("second acknowledgement: %v", err)
	}
	for q, n := range map[recipe.DeviationQuery]int{
		{Acknowledged: "true"}: 1, {Acknowledged: "false"}: 2, {State: "open"}: 0, {State: "closed"}: 3,
		{Device: "sinter-02"}: 0, {Device: "sinter-01", Lot: "L-DEV-1"}: 3, {Device: furnace.ID.String()}: 3,
	} {
		dsPage, err := svc.Deviations(tctx, q)
		ds := dsPage.Items
		if err != nil || len(ds) != n {
			t.Errorf("deviations %+v: %d (%v), want %d", q, len(ds), err, n)
		}
	}
	// Pages of two, newest first, then one.
	p1, err := svc.Deviations(tctx, recipe.DeviationQuery{Lot: "L-DEV-1", Limit: 2})
	if err != nil || len(p1.Items) != 2 || p1.NextCursor == "" || p1.Items[0].ID != got[0].ID {
		t.Fatalf("first page: %+v %v", p1, err)
	}
	p2, err := svc.Deviations(tctx, recipe.DeviationQuery{Lot: "L-DEV-1", Limit: 2, Cursor: p1.NextCursor})
	if err != nil || len(p2.Items) != 1 || p2.NextCursor != "" || p2.Items[0].ID != got[2].ID {
		t.Fatalf("second page: %+v %v", p2, err)
	}
	_, err = svc.Deviations(tctx, recipe.DeviationQuery{Cursor: "nope"})
	wantCode(t, "bad cursor", err, apps.Invalid, "cursor")

	// The lot's trace details.
	err = tenants.InTx(tctx, env.DB.App, func(tx pgx.Tx) error {
		m, err := svc.LotDetails(tctx, tx, []uuid.UUID{lot, uuid.New()})
		if err != nil {
			return err
		}
		if ds := m[lot].([]recipe.Deviation); len(ds) != 3 || !ds[0].StartedAt.Equal(at0(t0, 10)) {
			t.Errorf("lot details: %+v", m[lot])
		}
		if len(m) != 2 {
			t.Errorf("lot details for %d lots, want 2", len(m))
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

func at0(t0 time.Time, s int) time.Time { return t0.Add(time.Duration(s) * time.Second) }

// TestOpenRunDeviation: while the lot still runs, an excursion in progress
// is open; when the run ends outside the limits, it ends with the run.
func TestOpenRunDeviation(t *testing.T) {
	env := tenanttest.New(t)
	tn := env.NewTenant(t)
	ctx := context.Background()
	svc := recipe.NewService(&env.DB, nopDownlink{}, nil)
	svc.Settle = 0
	approved(t, svc, tn, "R-OPEN")
	tctx := tenants.WithTenant(ctx, tn.ID)
	v, _ := svc.Version(tctx, "R-OPEN", "1")
	furnace, _ := env.Device(t, tn, "sinter-01", "sintering-furnace")
	t0 := time.Now().UTC().Add(time.Hour).Truncate(time.Second) // see TestDeviationsExactly
	svc.Now = func() time.Time { return t0.Add(time.Minute) }
	lot := seedRun(t, env, tn, "L-OPEN", v.ID, furnace.ID, t0, nil)
	seedPoints(t, env, tn, furnace.ID, "zone1_temp", t0, map[int]float64{0: 1060, 10: 1075, 20: 1077})
	if _, err := svc.ScanDeviations(tctx); err != nil {
		t.Fatal(err)
	}
	dsPage, _ := svc.Deviations(tctx, recipe.DeviationQuery{State: "open"})
	ds := dsPage.Items
	if len(ds) != 1 || ds[0].WorstValue != 1077 || ds[0].EndedAt != nil {
		t.Fatalf("open deviation: %+v", ds)
	}
	end := t0.Add(30 * time.Second)
	if _, err := env.DB.System.Exec(ctx, `UPDATE lot_runs SET ended_at = $2 WHERE lot_id = $1`, lot, end); err != nil {
		t.Fatal(err)
	}
	if _, err := svc.ScanDeviations(tctx); err != nil {
		t.Fatal(err)
	}
	dsPage, _ = svc.Deviations(tctx, recipe.DeviationQuery{Lot: "L-OPEN"})
	ds = dsPage.Items
	if len(ds) != 1 || ds[0].EndedAt == nil || !ds[0].EndedAt.Equal(end) {
		t.Fatalf("deviation after the run ended: %+v", ds)
	}
}

// TestLateData: points that arrive after the scan passed their time are
// counted — within Lookback by the next scan (a late inside point splits a
// deviation, late outside points add deviations), older ones by the final
// pass when the run ends (a late point extends a deviation backwards, same
// id).
func TestLateData(t *testing.T) {
	env := tenanttest.New(t)
	tn := env.NewTenant(t)
	ctx := context.Background()
	tctx := tenants.WithTenant(ctx, tn.ID)
	svc := recipe.NewService(&env.DB, nopDownlink{}, nil)
	svc.Settle, svc.Lookback = 0, 2*time.Minute
	approved(t, svc, tn, "R-LATE")
	v, _ := svc.Version(tctx, "R-LATE", "1")
	furnace, _ := env.Device(t, tn, "sinter-01", "sintering-furnace")
	t0 := time.Now().UTC().Add(time.Hour).Truncate(time.Second) // see TestDeviationsExactly
	at := func(s int) time.Time { return t0.Add(time.Duration(s) * time.Second) }
	clock := func(s int) { svc.Now = func() time.Time { return at(s) } }
	lot := seedRun(t, env, tn, "L-LATE", v.ID, furnace.ID, t0, nil)
	scan := func() []recipe.Deviation {
		t.Helper()
		if _, err := svc.ScanDeviations(tctx); err != nil {
			t.Fatal(err)
		}
		dsPage, err := svc.Deviations(tctx, recipe.DeviationQuery{Lot: "L-LATE"})
		ds := dsPage.Items
		if err != nil {
			t.Fatal(err)
		}
		return ds
	}
	type dev struct {
		limit       string
		start, stop int
		worst       float64
		points      int
	}
	check := func(what string, got []recipe.Deviation, want []dev) {
		t.Helper()
		if len(got) != len(want) {
			t.Fatalf("%s: %d deviations, want %d: %+v", what, len(got), len(want), got)
		}
		for i, w := range want { // got is newest first
			g := got[len(got)-1-i]
			if g.LimitCrossed != w.limit || !g.StartedAt.Equal(at(w.start)) || g.EndedAt == nil || !g.EndedAt.Equal(at(w.stop)) ||
				g.WorstValue != w.worst || g.Points != w.points {
				t.Errorf("%s: deviation %d = %+v, want %+v", what, i, g, w)
			}
		}
	}
	seedPoints(t, env, tn, furnace.ID, "zone1_temp", t0, map[int]float64{0: 1060, 10: 1075, 12: 1076, 14: 1077, 20: 1060,
		30: 1060, 50: 1060, 60: 1060, 70: 1060, 80: 1060, 90: 1060})
	clock(100)
	first := scan()
	check("first scan", first, []dev{{recipe.Upper, 10, 20, 1077, 3}})

	// Late, within Lookback: an inside point splits A, an excursion below and
	// one above appear.
	seedPoints(t, env, tn, furnace.ID, "zone1_temp", t0, map[int]float64{13: 1060, 40: 1045, 55: 1071})
	clock(110)
	second := scan()
	check("second scan", second, []dev{{recipe.Upper, 10, 13, 1076, 2}, {recipe.Upper, 14, 20, 1077, 1},
		{recipe.Lower, 40, 50, 1045, 1}, {recipe.Upper, 55, 60, 1071, 1}})
	if second[3].ID != first[0].ID {
		t.Errorf("the split deviation lost its id")
	}

	// Much later: a point at 5 s arrives after the watermark passed 1000 s;
	// only the final pass at the run's end sees it.
	seedPoints(t, env, tn, furnace.ID, "zone1_temp", t0, map[int]float64{500: 1060, 1000: 1060})
	clock(1010)
	scan()
	seedPoints(t, env, tn, furnace.ID, "zone1_temp", t0, map[int]float64{5: 1090})
	clock(1020)
	check("before the run ends", scan(), []dev{{recipe.Upper, 10, 13, 1076, 2}, {recipe.Upper, 14, 20, 1077, 1},
		{recipe.Lower, 40, 50, 1045, 1}, {recipe.Upper, 55, 60, 1071, 1}})
	if _, err := env.DB.System.Exec(ctx, `UPDATE lot_runs SET ended_at = $2 WHERE lot_id = $1`, lot, at(1015)); err != nil {
		t.Fatal(err)
	}
	final := scan()
	check("final pass", final, []dev{{recipe.Upper, 5, 13, 1090, 3}, {recipe.Upper, 14, 20, 1077, 1},
		{recipe.Lower, 40, 50, 1045, 1}, {recipe.Upper, 55, 60, 1071, 1}})
	if final[3].ID != first[0].ID {
		t.Errorf("the extended deviation lost its id")
	}
}
