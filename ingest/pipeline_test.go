package ingest_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/redis/go-redis/v9"

	"github.com/nxcloud/nxcloud/broker"
	"github.com/nxcloud/nxcloud/ingest"
	"github.com/nxcloud/nxcloud/tenants/tenanttest"
)

func message(t *testing.T, env *tenanttest.Env, tn tenanttest.Tenant, key string, qos byte, payload string) broker.Message {
	t.Helper()
	d, err := env.Tenants.Device(tn.Ctx(), key)
	if err != nil {
		t.Fatal(err)
	}
	id, err := env.Tenants.Identity(context.Background(), d.ID)
	if err != nil {
		t.Fatal(err)
	}
	return broker.Message{Identity: id, Topic: broker.Topic{Tenant: tn.Slug, Device: key, Kind: broker.KindTelemetry},
		Payload: []byte(payload), QoS: qos, Received: time.Now()}
}

func count(t *testing.T, env *tenanttest.Env, q string, args ...any) int {
	t.Helper()
	var n int
	if err := env.DB.System.QueryRow(context.Background(), q, args...).Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n
}

func waitFor(t *testing.T, what string, f func() bool) {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for !f() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func TestDeadLettersPerMessageAreCapped(t *testing.T) {
	env := tenanttest.New(t)
	tn := env.NewTenant(t)
	env.Device(t, tn, "mill-01", "jet-mill")
	p := newPipeline(t, env, ingest.Config{FlushInterval: 5 * time.Millisecond})
	var b strings.Builder
	b.WriteString(`{"metrics":{"d50_um":3.9`)
	for i := 0; i < 100; i++ {
		fmt.Fprintf(&b, `,"bogus_%d":1`, i)
	}
	b.WriteString(`}}`)
	if err := p.Handle(context.Background(), message(t, env, tn, "mill-01", 1, b.String())); err != nil {
		t.Fatal(err)
	}
	if err := p.Close(context.Background()); err != nil {
		t.Fatal(err)
	}
	if n := count(t, env, `SELECT count(*) FROM dead_letters WHERE tenant_id = $1`, tn.ID); n != 20 {
		t.Fatalf("%d dead letters, want 20", n)
	}
	if n := count(t, env, `SELECT count(*) FROM dead_letters WHERE tenant_id = $1 AND detail LIKE '%and 80 more rejected parts%'`, tn.ID); n != 1 {
		t.Fatal("no summary row for the rejections beyond the cap")
	}
	if n := count(t, env, `SELECT count(*) FROM telemetry WHERE tenant_id = $1`, tn.ID); n != 1 {
		t.Fatalf("%d points stored, want the one valid metric", n)
	}
}

// TestBackPressure holds a lock on the telemetry table so writers cannot
// commit: QoS 1 messages are acknowledged into the spool until its budget is
// used, then refused after the enqueue timeout (the broker then withholds the
// PUBACK); QoS 0 messages are dropped and counted; everything acknowledged is
// committed once the database moves.
func TestBackPressure(t *testing.T) {
	env := tenanttest.New(t)
	tn := env.NewTenant(t)
	env.Device(t, tn, "mill-01", "jet-mill")
	ctx := context.Background()
	lock, err := env.DB.System.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := lock.Exec(ctx, `LOCK TABLE telemetry IN ACCESS EXCLUSIVE MODE`); err != nil {
		t.Fatal(err)
	}
	p := newPipeline(t, env, ingest.Config{BatchPoints: 5, FlushInterval: time.Millisecond,
		EnqueueTimeout: 200 * time.Millisecond, Writers: 1,
		Spool: ingest.SpoolConfig{Dir: t.TempDir(), BudgetBytes: 4000}})
	payload := func(i int) string {
		return fmt.Sprintf(`{"ts":%d,"metrics":{"d50_um":3.%d}}`, time.Now().Add(-time.Minute+time.Duration(i)*time.Millisecond).UnixMilli(), i%10)
	}
	accepted := 0
	var refused error
	for i := 0; i < 100 && refused == nil; i++ {
		if err := p.Handle(ctx, message(t, env, tn, "mill-01", 1, payload(i))); err != nil {
			refused = err
			break
		}
		accepted++
	}
	if !errors.Is(refused, ingest.ErrOverloaded) || accepted == 0 || accepted == 100 {
		t.Fatalf("accepted %d QoS 1 messages then %v; want some, then ErrOverloaded", accepted, refused)
	}
	if st := p.Spool(); st.Pending != int64(accepted) || !st.Durable {
		t.Errorf("spool holds %+v, want %d pending on disk", st, accepted)
	}
	if err := p.Handle(ctx, message(t, env, tn, "mill-01", 0, payload(99))); err != nil {
		t.Fatal(err)
	}
	if p.Stats().PointsDropped.Load() != 1 {
		t.Fatalf("QoS 0 under overload: dropped %d, want 1", p.Stats().PointsDropped.Load())
	}
	if err := lock.Rollback(ctx); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the spool to drain", func() bool { return p.Stats().PointsCommitted.Load() == int64(accepted) })
	if err := p.Close(ctx); err != nil {
		t.Fatal(err)
	}
	if n := count(t, env, `SELECT count(*) FROM telemetry WHERE tenant_id = $1`, tn.ID); n != accepted {
		t.Fatalf("%d rows stored, want %d", n, accepted)
	}
}

func newPipeline(t *testing.T, env *tenanttest.Env, cfg ingest.Config) *ingest.Pipeline {
	t.Helper()
	p, err := ingest.New(cfg, env.DB.System, env.Tenants, nil)
	if err != nil {
		t.Fatal(err)
	}
	p.Start()
	t.Cleanup(func() { _ = p.Close(context.Background()) })
	return p
}

// TestEventsAreStored: events, states and command replies land in
// device_events; an event payload PostgreSQL's jsonb refuses becomes a dead
// letter instead of blocking the writer.
func TestEventsAreStored(t *testing.T) {
	env := tenanttest.New(t)
	tn := env.NewTenant(t)
	env.Device(t, tn, "kiln-01", "rotary-kiln")
	p := newPipeline(t, env, ingest.Config{Spool: ingest.SpoolConfig{Dir: t.TempDir()}})
	ctx := context.Background()
	send := func(kind, name, payload string) {
		m := message(t, env, tn, "kiln-01", 1, payload)
		m.Topic.Kind, m.Topic.Name = kind, name
		if err := p.Handle(ctx, m); err != nil {
			t.Fatal(err)
		}
	}
	send(broker.KindEvents, "", `{"type":"lot_start","lot":"L-7","ts":"2026-01-01T00:00:00Z"}`)
	send(broker.KindEvents, "", fmt.Sprintf(`{"type":"lot_end","lot":"L-7","ts":%d}`, time.Now().UnixMilli()))
	send(broker.KindState, "", `{"state":"run"}`)
	send(broker.KindCmdReply, "recipe", `{"status":"applied"}`)
	send(broker.KindEvents, "", `{"bad":"\ud800"}`) // a lone surrogate: valid JSON, refused by jsonb
	send(broker.KindEvents, "", `not json`)
	if err := p.Close(ctx); err != nil {
		t.Fatal(err)
	}
	rows, err := env.DB.System.Query(ctx, `SELECT kind || ':' || name FROM device_events WHERE tenant_id = $1 ORDER BY id`, tn.ID)
	if err != nil {
		t.Fatal(err)
	}
	got, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		t.Fatal(err)
	}
	// The first event's ts is outside the accepted window: a dead letter.
	if strings.Join(got, ",") != "event:,state:,cmd_reply:recipe" {
		t.Fatalf("events %v", got)
	}
	if n := count(t, env, `SELECT count(*) FROM dead_letters WHERE tenant_id = $1`, tn.ID); n != 3 {
		t.Fatalf("%d dead letters, want 3 (old ts, lone surrogate, not JSON)", n)
	}
}

// TestReplayStoresOnce: messages acknowledged into the spool by a pipeline
// that then dies without writing them (a crash) are stored by the next one;
// a device re-sending some of them (its PUBACK was lost) and a second replay
// of the same spool store nothing twice.
func TestReplayStoresOnce(t *testing.T) {
	env := tenanttest.New(t)
	tn := env.NewTenant(t)
	env.Device(t, tn, "mill-01", "jet-mill")
	ctx := context.Background()
	dir := t.TempDir()
	base := time.Now().Add(-time.Hour).Truncate(time.Millisecond)
	msgs := make([]broker.Message, 40)
	for i := range msgs {
		msgs[i] = message(t, env, tn, "mill-01", 1,
			fmt.Sprintf(`{"ts":%d,"metrics":{"d50_um":%d.5,"bogus":1}}`, base.Add(time.Duration(i)*time.Second).UnixMilli(), i%9))
	}
	ev := message(t, env, tn, "mill-01", 1, `{"type":"lot_start","lot":"L-1"}`)
	ev.Topic.Kind = broker.KindEvents

	// The first process accepts (fsyncs) but never writes: no Start.
	crashed, err := ingest.New(ingest.Config{Spool: ingest.SpoolConfig{Dir: dir}}, env.DB.System, env.Tenants, nil)
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range append(msgs, ev) {
		if err := crashed.Handle(ctx, m); err != nil {
			t.Fatal(err)
		}
	}
	if n := count(t, env, `SELECT count(*) FROM telemetry WHERE tenant_id = $1`, tn.ID); n != 0 {
		t.Fatalf("%d rows before the replay", n)
	}
	stored := func() (points, events, dead int) {
		return count(t, env, `SELECT count(*) FROM telemetry WHERE tenant_id = $1`, tn.ID),
			count(t, env, `SELECT count(*) FROM device_events WHERE tenant_id = $1`, tn.ID),
			count(t, env, `SELECT count(*) FROM dead_letters WHERE tenant_id = $1`, tn.ID)
	}

	for round := 1; round <= 2; round++ {
		p := newPipeline(t, env, ingest.Config{FlushInterval: time.Millisecond, Spool: ingest.SpoolConfig{Dir: dir}})
		waitFor(t, "the replay", func() bool { return p.Spool().Pending == 0 })
		// The device re-sends ten messages whose PUBACK it never saw.
		for _, m := range msgs[:10] {
			if err := p.Handle(ctx, m); err != nil {
				t.Fatal(err)
			}
		}
		if err := p.Close(ctx); err != nil {
			t.Fatal(err)
		}
		if pts, evs, dls := stored(); pts != len(msgs) || evs != 1 || dls != len(msgs) {
			t.Fatalf("round %d: stored %d points, %d events, %d dead letters; want %d, 1, %d", round, pts, evs, dls, len(msgs), len(msgs))
		}
		if round == 1 && p.Stats().PointsCommitted.Load() != int64(len(msgs)) {
			t.Errorf("round 1 committed %d points, want %d", p.Stats().PointsCommitted.Load(), len(msgs))
		}
		if d := p.Stats().PointsDuplicate.Load(); d < 10 {
			t.Errorf("round %d: %d duplicate points counted, want at least the 10 re-sent", round, d)
		}
	}
}

// TestRedisOutageDoesNotStopIngest: with Redis unreachable, messages are
// acknowledged and stored as usual; only the hot state fails (counted).
func TestRedisOutageDoesNotStopIngest(t *testing.T) {
	env := tenanttest.New(t)
	tn := env.NewTenant(t)
	env.Device(t, tn, "mill-01", "jet-mill")
	dead := redis.NewClient(&redis.Options{Addr: "127.0.0.1:1", DialTimeout: 100 * time.Millisecond, MaxRetries: -1})
	defer dead.Close()
	hot := ingest.NewHot(dead, 10*time.Millisecond, nil)
	defer hot.Close()
	p, err := ingest.New(ingest.Config{FlushInterval: time.Millisecond, Spool: ingest.SpoolConfig{Dir: t.TempDir()}},
		env.DB.System, env.Tenants, hot)
	if err != nil {
		t.Fatal(err)
	}
	p.Start()
	ctx := context.Background()
	for i := 0; i < 20; i++ {
		m := message(t, env, tn, "mill-01", 1, fmt.Sprintf(`{"ts":%d,"metrics":{"d50_um":3.5}}`, time.Now().Add(time.Duration(-i)*time.Second).UnixMilli()))
		if err := p.Handle(ctx, m); err != nil {
			t.Fatal(err)
		}
		hot.Connected(tn.ID, m.Identity.DeviceID, true)
	}
	waitFor(t, "the points to be stored", func() bool { return p.Stats().PointsCommitted.Load() == 20 })
	if err := p.Close(ctx); err != nil {
		t.Fatal(err)
	}
	if n := count(t, env, `SELECT count(*) FROM telemetry WHERE tenant_id = $1`, tn.ID); n != 20 {
		t.Fatalf("%d rows stored with Redis away, want 20", n)
	}
}
