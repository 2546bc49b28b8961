package ingest_test

import (
	"context"
	"math"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"

	"github.com/nxcloud/nxcloud/ingest"
	"github.com/nxcloud/nxcloud/tenants/tenanttest"
)

// TestCopyEncoding: the hand-built binary COPY stores exactly the points
// given (microsecond timestamps, extreme values, negative metric ids).
func TestCopyEncoding(t *testing.T) {
	env := tenanttest.New(t)
	tn := env.NewTenant(t)
	d, _ := env.Device(t, tn, "enc-01", "jet-mill")
	now := time.Now().UTC().Truncate(time.Microsecond)
	want := []ingest.Point{
		{TS: now, MetricID: 1, Value: -1.5},
		{TS: now.Add(-time.Hour + 7*time.Microsecond), MetricID: math.MaxInt32, Value: math.MaxFloat64},
		{TS: now.Add(-2 * time.Hour), MetricID: -3, Value: math.SmallestNonzeroFloat64},
		{TS: now.Add(-3 * time.Hour), MetricID: 4, Value: 0},
	}
	items := []ingest.Item{{Tenant: tn.ID, Device: d.ID, Points: want}}
	ctx := context.Background()
	var lo, hi time.Time
	err := pgx.BeginFunc(ctx, env.DB.System, func(tx pgx.Tx) error {
		var err error
		lo, hi, err = ingest.CopyItems(ctx, tx, items)
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	if !lo.Equal(now.Add(-3*time.Hour)) || !hi.Equal(now) {
		t.Fatalf("range %s..%s, want %s..%s", lo, hi, now.Add(-3*time.Hour), now)
	}
	rows, err := env.DB.System.Query(ctx, `SELECT ts, tenant_id, metric_id, value FROM telemetry WHERE device_id = $1 ORDER BY ts DESC`, d.ID)
	if err != nil {
		t.Fatal(err)
	}
	var got []ingest.Point
	for rows.Next() {
		var p ingest.Point
		var tenant uuid.UUID
		if err := rows.Scan(&p.TS, &tenant, &p.MetricID, &p.Value); err != nil {
			t.Fatal(err)
		}
		if tenant != tn.ID {
			t.Fatalf("tenant %s, want %s", tenant, tn.ID)
		}
		got = append(got, p)
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	if len(got) != len(want) {
		t.Fatalf("%d rows, want %d", len(got), len(want))
	}
	for i := range want {
		if !got[i].TS.Equal(want[i].TS) || got[i].MetricID != want[i].MetricID || got[i].Value != want[i].Value {
			t.Fatalf("row %d = %+v, want %+v", i, got[i], want[i])
		}
	}
}
