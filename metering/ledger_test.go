package metering

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"

	"github.com/nxcloud/nxcloud/apps"
	"github.com/nxcloud/nxcloud/tenants"
	"github.com/nxcloud/nxcloud/tenants/tenanttest"
)

var batchSeq atomic.Int64

func newService(t *testing.T, env *tenanttest.Env) *Service {
	t.Helper()
	return New(Config{}, env.DB.System, env.DB.App, env.Redis)
}

// storeBatch stores n telemetry rows for device in one transaction, with
// the ledger hook, the way ingest's writer does; rollback aborts it.
func storeBatch(t *testing.T, s *Service, env *tenanttest.Env, tn tenanttest.Tenant, device uuid.UUID, metric int32, n int, rejected int64, rollback bool) {
	t.Helper()
	ctx := context.Background()
	tx, err := env.DB.System.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback(ctx)
	rows := make([][]any, n)
	base := time.Now().UTC().Add(-time.Minute).Add(time.Duration(batchSeq.Add(1)) * time.Millisecond)
	for i := range rows {
		rows[i] = []any{base.Add(time.Duration(i) * time.Microsecond), tn.ID, device, metric, float64(i)}
	}
	got, err := tx.CopyFrom(ctx, pgx.Identifier{"telemetry"}, []string{"ts", "tenant_id", "device_id", "metric_id", "value"}, pgx.CopyFromRows(rows))
	if err != nil {
		t.Fatal(err)
	}
	if err := s.RecordTelemetry(ctx, tx, []TelemetryUsage{{Tenant: tn.ID, Device: device, Stored: got, Rejected: rejected}}); err != nil {
		t.Fatal(err)
	}
	if rollback {
		return
	}
	if err := tx.Commit(ctx); err != nil {
		t.Fatal(err)
	}
}

func anyMetric(t *testing.T, env *tenanttest.Env, tn tenanttest.Tenant, model string) int32 {
	t.Helper()
	ms, err := env.Tenants.Models(tn.Ctx())
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range ms {
		if m.Key == model {
			return m.Metrics[0].ID
		}
	}
	t.Fatalf("no model %s", model)
	return 0
}

func usageOf(t *testing.T, s *Service, env *tenanttest.Env, tn tenanttest.Tenant, group string) map[string]int64 {
	t.Helper()
	out := map[string]int64{}
	now := time.Now().UTC()
	err := tenants.InTx(tn.Ctx(), env.DB.App, func(tx pgx.Tx) error {
		rep, err := s.Usage(tn.Ctx(), tx, tn.ID, now.Add(-24*time.Hour), now.Add(time.Hour), group, "")
		for _, it := range rep.Items {
			out[it.Meter+"|"+it.DeviceKey+it.App+it.Subject] += it.Quantity
		}
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// Points are counted in the transaction that stores them: a committed
// batch counts exactly its rows, a rolled-back one nothing.
func TestTelemetryCountedWithItsRows(t *testing.T) {
	t.Parallel()
	env := tenanttest.New(t)
	s := newService(t, env)
	tn := env.NewTenant(t)
	d1, _ := env.Device(t, tn, "mill-1", "jet-mill")
	d2, _ := env.Device(t, tn, "mill-2", "jet-mill")
	metric := anyMetric(t, env, tn, "jet-mill")
	var wg sync.WaitGroup
	for i := 0; i < 4; i++ { // concurrent writers never wait on each other
		wg.Add(1)
		go func() {
			defer wg.Done()
			storeBatch(t, s, env, tn, d1.ID, metric, 100, 2, false)
			storeBatch(t, s, env, tn, d2.ID, metric, 50, 0, false)
		}()
	}
	wg.Wait()
	storeBatch(t, s, env, tn, d1.ID, metric, 1000, 7, true)
	var stored int64
	if err := env.DB.System.QueryRow(context.Background(), `SELECT count(*) FROM telemetry WHERE tenant_id = $1`, tn.ID).Scan(&stored); err != nil {
		t.Fatal(err)
	}
	u := usageOf(t, s, env, tn, "device")
	if u[MeterPoints+"|mill-1"] != 400 || u[MeterPoints+"|mill-2"] != 200 || u[MeterRejected+"|mill-1"] != 8 {
		t.Errorf("usage by device = %v, want 400 and 200 points, 8 rejected", u)
	}
	if m := usageOf(t, s, env, tn, "meter"); m[MeterPoints+"|"] != stored || stored != 600 {
		t.Errorf("points metered %d, rows stored %d, want 600 both", m[MeterPoints+"|"], stored)
	}
	// Folding the batch rows keeps every sum.
	if _, err := s.MergeTelemetry(context.Background()); err != nil {
		t.Fatal(err)
	}
	var rows int
	if err := env.DB.System.QueryRow(context.Background(), `SELECT count(*) FROM usage_telemetry WHERE tenant_id = $1`, tn.ID).Scan(&rows); err != nil {
		t.Fatal(err)
	}
	if rows != 2 {
		t.Errorf("%d ledger rows after folding, want 2 (one per device and hour)", rows)
	}
	if m := usageOf(t, s, env, tn, "meter"); m[MeterPoints+"|"] != 600 || m[MeterRejected+"|"] != 8 {
		t.Errorf("after merging: %v", m)
	}
}

// A use recorded twice under one key counts once; in an app's own
// transaction it counts only if that transaction commits.
func TestUsesAreIdempotent(t *testing.T) {
	t.Parallel()
	env := tenanttest.New(t)
	s := newService(t, env)
	tn := env.NewTenant(t)
	ctx := tn.Ctx()
	for i := 0; i < 3; i++ {
		if err := s.RecordAppUse(ctx, "batch", "trace", "lot-42"); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.RecordAppUse(ctx, "quality", "spc", "run-1"); err != nil {
		t.Fatal(err)
	}
	if err := s.RecordModuleInvocation(ctx, tn.ID, "oee-calc", "inv-1"); err != nil {
		t.Fatal(err)
	}
	use := Use{Meter: MeterAppUses, Subject: "recipe.download", Quantity: 1, Key: "dl-1"}
	err := tenants.InTx(ctx, env.DB.App, func(tx pgx.Tx) error {
		if err := s.RecordUseTx(ctx, tx, tn.ID, use); err != nil {
			return err
		}
		return apps.Errorf(apps.Conflict, "the effect failed")
	})
	if apps.Code(err) != apps.Conflict {
		t.Fatal(err)
	}
	if err := tenants.InTx(ctx, env.DB.App, func(tx pgx.Tx) error { return s.RecordUseTx(ctx, tx, tn.ID, use) }); err != nil {
		t.Fatal(err)
	}
	// Under RLS a tenant cannot record for another.
	other := env.NewTenant(t)
	err = tenants.InTx(ctx, env.DB.App, func(tx pgx.Tx) error { return s.RecordUseTx(ctx, tx, other.ID, use) })
	if err == nil {
		t.Error("a use recorded for another tenant under RLS was accepted")
	}
	u := usageOf(t, s, env, tn, "subject")
	want := map[string]int64{MeterAppUses + "|batch.trace": 1, MeterAppUses + "|quality.spc": 1, MeterAppUses + "|recipe.download": 1,
		MeterModuleInvocations + "|oee-calc": 1}
	if fmt.Sprint(u) != fmt.Sprint(want) {
		t.Errorf("usage = %v, want %v", u, want)
	}
	if a := usageOf(t, s, env, tn, "app"); a[MeterAppUses+"|batch"] != 1 || a[MeterAppUses+"|recipe"] != 1 {
		t.Errorf("usage by app = %v", a)
	}
	for _, bad := range []Use{{Meter: "x", Key: "k"}, {Meter: MeterAppUses, Key: ""}, {Meter: MeterAppUses, Key: "k", Quantity: -1}, {Meter: MeterAppUses, Key: "a\x00"}} {
		if err := s.RecordUse(ctx, tn.ID, bad); apps.Code(err) != apps.Invalid {
			t.Errorf("RecordUse(%+v) = %v, want invalid", bad, err)
		}
	}
}

// API calls go through the group commit: every call once, a replayed key
// once, whatever the concurrency.
func TestAPICallsGroupCommit(t *testing.T) {
	t.Parallel()
	env := tenanttest.New(t)
	s := newService(t, env)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { s.Run(ctx); close(done) }()
	defer func() { cancel(); <-done }()
	for !s.api.running.Load() {
		time.Sleep(time.Millisecond)
	}
	tn := env.NewTenant(t)
	var wg sync.WaitGroup
	for w := 0; w < 8; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < 50; i++ {
				// Each key twice: a retry racing the original.
				if err := s.RecordAPICall(context.Background(), tn.ID, "telemetry:read", fmt.Sprintf("k-%d-%d", w, i)); err != nil {
					t.Error(err)
				}
				if err := s.RecordAPICall(context.Background(), tn.ID, "telemetry:read", fmt.Sprintf("k-%d-%d", w, i)); err != nil {
					t.Error(err)
				}
			}
		}()
	}
	wg.Wait()
	if u := usageOf(t, s, env, tn, "subject"); u[MeterAPICalls+"|telemetry:read"] != 400 {
		t.Errorf("API calls = %v, want 400", u)
	}
}
