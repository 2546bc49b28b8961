package ingest_test

import (
	"context"
	"encoding/json"
	"errors"
	"slices"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"

	"github.com/nxcloud/nxcloud/apps"
	"github.com/nxcloud/nxcloud/ingest"
	"github.com/nxcloud/nxcloud/tenants/tenanttest"
)

// TestFeedAppliesEachEventOnce: every event of the consumer's kinds is
// applied once, in id order, with its effect in the same transaction; a
// refused event is recorded with its reason and not retried; a failing
// handler leaves the event to be offered again; a second feed of the same
// consumer (another replica) applies nothing twice.
func TestFeedAppliesEachEventOnce(t *testing.T) {
	t.Parallel()
	env := tenanttest.New(t)
	ctx := context.Background()
	a := env.NewTenant(t)
	dev, _ := env.Device(t, a, "feed-dev", "sintering-furnace")
	insert := func(kind, name string, payload string) int64 {
		t.Helper()
		var id int64
		if err := env.DB.System.QueryRow(ctx, `
			INSERT INTO device_events (tenant_id, device_id, kind, name, ts, payload)
			VALUES ($1, $2, $3, $4, now(), $5) RETURNING id`, a.ID, dev.ID, kind, name, payload).Scan(&id); err != nil {
			t.Fatal(err)
		}
		return id
	}
	consumer := "test.feed." + uuid.NewString()
	// Effects of the current pass (the test's stand-in for rows written
	// through tx): kept when the poll succeeds, dropped when it fails.
	var seen, pending []int64
	poll := func(f *ingest.Feed) error {
		pending = nil
		_, err := f.Poll(ctx)
		if err == nil {
			seen = append(seen, pending...)
		}
		return err
	}
	var failOnce atomic.Bool
	failOnce.Store(true)
	handle := func(ctx context.Context, tx pgx.Tx, ev ingest.DeviceEvent) error {
		if ev.TenantID != a.ID {
			return nil // other tests' events share the table
		}
		if ev.DeviceKey != "feed-dev" || ev.Kind != "event" {
			t.Errorf("event %d: device %q kind %q", ev.ID, ev.DeviceKey, ev.Kind)
		}
		var p struct{ N int }
		if err := json.Unmarshal(ev.Payload, &p); err != nil {
			return err
		}
		if p.N == 13 {
			return apps.Errorf(apps.Invalid, "thirteen is refused")
		}
		if p.N == 7 && failOnce.CompareAndSwap(true, false) {
			return errors.New("database hiccup")
		}
		// The effect, written through tx: the tenant is set for RLS.
		var tenant string
		if err := tx.QueryRow(ctx, `SELECT current_setting('nx.tenant_id')`).Scan(&tenant); err != nil || tenant != a.ID.String() {
			t.Errorf("handler tx tenant = %q, %v", tenant, err)
		}
		pending = append(pending, ev.ID)
		return nil
	}
	f1 := ingest.NewFeed(env.DB.System, consumer, []string{"event"}, handle, nil)
	f2 := ingest.NewFeed(env.DB.System, consumer, []string{"event"}, handle, nil)
	var want []int64
	for i := 1; i <= 20; i++ {
		id := insert("event", "", `{"n":`+itoa(i)+`}`)
		if i != 13 {
			want = append(want, id)
		}
		insert("state", "", `{"state":"run"}`) // not this consumer's kind
	}
	// The first pass stops at the failing event 7 (rolled back), the next
	// applies it and the rest.
	f1.Batch, f2.Batch = 100000, 100000
	if err := poll(f1); err == nil {
		t.Fatal("a failing handler did not surface its error")
	}
	if err := poll(f2); err != nil {
		t.Fatal(err)
	}
	if err := poll(f1); err != nil {
		t.Fatal(err)
	}
	if got := len(seen); got != 19 {
		t.Fatalf("handled %d events, want 19 (20 less the refused one): %v", got, seen)
	}
	var refusal string
	if err := env.DB.System.QueryRow(ctx, `SELECT error FROM event_feed_seen WHERE consumer = $1 AND error IS NOT NULL`, consumer).Scan(&refusal); err != nil || refusal == "" {
		t.Errorf("refusal not recorded: %q %v", refusal, err)
	}
	if !slices.Equal(seen, want) {
		t.Errorf("applied %v, want %v (each once, in id order)", seen, want)
	}
	// Once settled, the watermark passes them and the seen rows are pruned.
	f1.Settle = 0
	time.Sleep(10 * time.Millisecond)
	if _, err := f1.Poll(ctx); err != nil {
		t.Fatal(err)
	}
	var left int
	if err := env.DB.System.QueryRow(ctx, `SELECT count(*) FROM event_feed_seen WHERE consumer = $1 AND tenant_id = $2`, consumer, a.ID).Scan(&left); err != nil {
		t.Fatal(err)
	}
	if left != 0 {
		t.Errorf("%d seen rows left below a settled watermark", left)
	}
	id := insert("event", "", `{"n":21}`)
	if err := poll(f1); err != nil || !slices.Contains(seen, id) {
		t.Errorf("after pruning, a new event was not applied (%v)", err)
	}
}

func itoa(i int) string { b, _ := json.Marshal(i); return string(b) }
