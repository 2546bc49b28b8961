package quality_test

import (
	"context"
	"testing"
	"time"

	"github.com/nxcloud/nxcloud/apps"
	"github.com/nxcloud/nxcloud/apps/quality"
	"github.com/nxcloud/nxcloud/tenants/tenanttest"
)

func TestImportResultsCSV(t *testing.T) {
	t.Parallel()
	env := tenanttest.New(t)
	tn := env.NewTenant(t)
	svc := quality.NewService(&env.DB, nil)
	ctx := tn.Ctx()
	newLot(t, env, tn, "L-IMP-1", "block", "N42")
	newLot(t, env, tn, "L-IMP-2", "block", "N42")
	dev, _ := env.Device(t, tn, "bench-1", "hysteresigraph")
	csv := "\ufefflot,characteristic,value,subgroup,measured_at,device\n" +
		"L-IMP-1,br,1.30,1,2026-11-01T08:00:00Z,bench-1\n" + // line 2
		"L-IMP-1,br,NaN,,,\n" + // 3: NaN refused
		"L-IMP-2,hcj,1001,,,\n" + // 4
		"L-NOPE,br,1.3,,,\n" + // 5: unknown lot
		"L-IMP-2,colour,3,,,\n" + // 6: unknown characteristic
		"L-IMP-1,br,1.20,,,\n" + // 7: below N42's 1.28 → LOW_BR
		"L-IMP-2,br,1.29,x,,\n" + // 8: bad subgroup
		"L-IMP-2,br,1.29,,,nope\n" // 9: unknown device
	rows, err := quality.ParseResultsCSV([]byte(csv))
	if err != nil {
		t.Fatal(err)
	}
	dry, err := svc.ImportResults(ctx, rows, true)
	if err != nil {
		t.Fatal(err)
	}
	want := map[int]string{2: "valid", 3: "failed", 4: "valid", 5: "failed", 6: "failed", 7: "valid", 8: "failed", 9: "failed"}
	fields := map[int]string{3: "value", 5: "lot", 6: "characteristic", 8: "subgroup", 9: "device"}
	for _, r := range dry.Rows {
		if r.Status != want[r.Row] {
			t.Errorf("dry run row %d: %s %+v, want %s", r.Row, r.Status, r.Error, want[r.Row])
		}
		if f := fields[r.Row]; f != "" && (r.Error == nil || r.Error.Field != f) {
			t.Errorf("row %d: error %+v, want field %s", r.Row, r.Error, f)
		}
	}
	if in, _ := svc.LotInspection(ctx, "L-IMP-1"); len(judgementOf(in, "br").Values) != 0 {
		t.Fatal("a dry run stored values")
	}
	res, err := svc.ImportResults(ctx, rows, false)
	if err != nil {
		t.Fatal(err)
	}
	if res.Stored != 3 || res.Failed != 5 || res.Rows[0].Status != "stored" || res.Rows[0].ResultID == 0 {
		t.Fatalf("import = %+v", res)
	}
	got, err := svc.Results(ctx, "L-IMP-1")
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 2 || got[0].Source != "csv" || got[0].DeviceID == nil || *got[0].DeviceID != dev.ID ||
		!got[0].MeasuredAt.Equal(time.Date(2026, 11, 1, 8, 0, 0, 0, time.UTC)) || got[1].Sample != 2 || got[0].ID != res.Rows[0].ResultID {
		t.Fatalf("results = %+v", got)
	}
	ncs, err := svc.Nonconformances(ctx, quality.NCQuery{Lot: "L-IMP-1"})
	if err != nil || len(ncs) != 1 || ncs[0].ReasonCode != "LOW_BR" {
		t.Fatalf("nonconformances = %+v, %v", ncs, err)
	}

	for _, bad := range []string{"", "lot,value\nL,1\n", "lot,characteristic,value,colour\n", "lot,characteristic,value\n", "lot,characteristic,value\n\"x,1\n"} {
		if _, err := quality.ParseResultsCSV([]byte(bad)); apps.Code(err) != apps.Invalid {
			t.Errorf("ParseResultsCSV(%q) = %v, want invalid", bad, err)
		}
	}
	jr, err := quality.ParseResultsJSON([]byte(`[{"lot":"L-IMP-2","characteristic":"br","value":1.3},{"lot":"L-IMP-2","Value":1}]`))
	if err != nil || jr[0].Err != nil || jr[1].Err == nil || jr[1].Row != 2 {
		t.Fatalf("ParseResultsJSON = %+v, %v", jr, err)
	}
	if _, err := quality.ParseResultsJSON([]byte(`{}`)); apps.Code(err) != apps.Invalid {
		t.Errorf("object accepted: %v", err)
	}
}

func judgementOf(in quality.LotInspection, key string) quality.Judgement {
	for _, j := range in.Characteristics {
		if j.Characteristic == key {
			return j
		}
	}
	return quality.Judgement{}
}

// A test bench's "inspection" event becomes results of the lot, measured by
// the bench, at the event's time; a bad event is refused for good.
func TestInspectionEvents(t *testing.T) {
	t.Parallel()
	env := tenanttest.New(t)
	tn := env.NewTenant(t)
	other := env.NewTenant(t)
	svc := quality.NewService(&env.DB, nil)
	newLot(t, env, tn, "L-EV", "block", "N52")
	newLot(t, env, other, "L-EV", "block", "N52") // the same code in another enterprise
	dev, _ := env.Device(t, tn, "bench-ev", "hysteresigraph")
	ts := time.Date(2026, 11, 20, 10, 0, 0, 0, time.UTC)
	insert := func(payload string) int64 {
		var id int64
		if err := env.DB.System.QueryRow(context.Background(), `INSERT INTO device_events (tenant_id, device_id, kind, ts, payload)
			VALUES ($1, $2, 'event', $3, $4) RETURNING id`, tn.ID, dev.ID, ts, payload).Scan(&id); err != nil {
			t.Fatal(err)
		}
		return id
	}
	good := insert(`{"type":"inspection","lot":"L-EV","results":[{"characteristic":"br","value":1.44},{"characteristic":"hcj","value":850,"subgroup":2}]}`)
	insert(`{"type":"inspection","lot":"L-EV","results":[{"characteristic":"br","value":"high"}]}`)
	insert(`{"type":"inspection","lot":"L-NONE","results":[{"characteristic":"br","value":1.4}]}`)
	insert(`{"type":"inspection","lot":"L-EV","results":[{"characteristic":"colour","value":1}]}`)
	insert(`{"type":"lot_start","lot":"L-EV"}`) // not quality's
	feed := svc.Feed(env.DB.System)
	if _, err := feed.Poll(context.Background()); err != nil {
		t.Fatal(err)
	}
	got, err := svc.Results(tn.Ctx(), "L-EV")
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 2 || got[0].Source != "event" || *got[0].DeviceID != dev.ID || !got[0].MeasuredAt.Equal(ts) || got[1].Subgroup != 2 {
		t.Fatalf("results = %+v", got)
	}
	in, err := svc.LotInspection(tn.Ctx(), "L-EV")
	if err != nil {
		t.Fatal(err)
	}
	if j := judgementOf(in, "hcj"); j.Status != quality.StatusFail || j.ReasonCode != "LOW_HCJ" {
		t.Fatalf("hcj judgement = %+v", j)
	}
	if o, err := svc.Results(other.Ctx(), "L-EV"); err != nil || len(o) != 0 {
		t.Fatalf("the other enterprise's lot got %+v, %v", o, err)
	}
	// Polling again applies nothing twice.
	if _, err := feed.Poll(context.Background()); err != nil {
		t.Fatal(err)
	}
	if again, _ := svc.Results(tn.Ctx(), "L-EV"); len(again) != 2 {
		t.Fatalf("after a second poll: %d results", len(again))
	}
	var refused int
	if err := env.DB.System.QueryRow(context.Background(), `SELECT count(*) FROM event_feed_seen
		WHERE consumer = $1 AND event_id > $2 AND tenant_id = $3 AND error IS NOT NULL`, quality.FeedConsumer, good, tn.ID).Scan(&refused); err != nil {
		t.Fatal(err)
	}
	if refused != 3 {
		t.Errorf("%d events refused, want 3", refused)
	}
}
