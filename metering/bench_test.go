package metering

import (
	"context"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgtype"

	"github.com/nxcloud/nxcloud/tenants/tenanttest"
)

// BenchmarkWriterTx measures what metering adds to an ingest writer's
// transaction: one batch of 10,000 points from 500 devices COPYed into
// telemetry and committed, without and with RecordTelemetry (one INSERT of
// 500 ledger rows in the same transaction). The ratio on/off is the cost
// of exact telemetry metering on the write path (a plain COPY: the real
// writer does more per batch, so the ratio there is lower).
//
//	go test -run '^$' -bench WriterTx -benchtime 200x ./metering
func BenchmarkWriterTx(b *testing.B) {
	env := tenanttest.New(b)
	s := New(Config{}, env.DB.System, env.DB.App, env.Redis)
	tn := env.NewTenant(b)
	const devices, perDevice = 500, 20
	devs := make([]pgtype.UUID, devices)
	for i := range devs {
		devs[i] = pgtype.UUID{Bytes: uuid.New(), Valid: true}
	}
	tid := pgtype.UUID{Bytes: tn.ID, Valid: true}
	base := time.Now().UTC().Add(-time.Hour)
	seq := 0
	for _, mode := range []string{"off", "on"} {
		b.Run(mode, func(b *testing.B) {
			var copyTime, meterTime time.Duration
			for n := 0; n < b.N; n++ {
				seq++
				rows := make([][]any, 0, devices*perDevice)
				usage := make([]TelemetryUsage, 0, devices)
				for d := range devs {
					for p := 0; p < perDevice; p++ {
						rows = append(rows, []any{base.Add(time.Duration(seq*perDevice+p) * time.Millisecond), tid, devs[d], int32(1), float64(p)})
					}
					usage = append(usage, TelemetryUsage{Tenant: tn.ID, Device: devs[d].Bytes, Stored: perDevice})
				}
				ctx := context.Background()
				err := pgx.BeginFunc(ctx, env.DB.System, func(tx pgx.Tx) error {
					t0 := time.Now()
					if _, err := tx.CopyFrom(ctx, pgx.Identifier{"telemetry"}, []string{"ts", "tenant_id", "device_id", "metric_id", "value"}, pgx.CopyFromRows(rows)); err != nil {
						return err
					}
					copyTime += time.Since(t0)
					if mode == "on" {
						t1 := time.Now()
						defer func() { meterTime += time.Since(t1) }()
						return s.RecordTelemetry(ctx, tx, usage)
					}
					return nil
				})
				if err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(float64(devices*perDevice*b.N)/b.Elapsed().Seconds(), "points/s")
			if mode == "on" {
				// The metering statement's time as a share of the COPY's, in
				// the same transactions: robust to a loaded machine.
				b.ReportMetric(100*meterTime.Seconds()/copyTime.Seconds(), "meter/copy-%")
			}
		})
	}
}

// BenchmarkAPICall measures the API usage group commit: each call returns
// once its row is committed with the others answered at the same moment:
// one caller (latency) and 64 concurrent ones (throughput).
//
//	go test -run '^$' -bench APICall ./metering
func BenchmarkAPICall(b *testing.B) {
	env := tenanttest.New(b)
	s := New(Config{}, env.DB.System, env.DB.App, env.Redis)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { s.Run(ctx); close(done) }()
	defer func() { cancel(); <-done }()
	for !s.api.running.Load() {
		time.Sleep(time.Millisecond)
	}
	tn := env.NewTenant(b)
	b.Run("one-caller", func(b *testing.B) { // ns/op: the latency a lone request waits
		for n := 0; n < b.N; n++ {
			if err := s.RecordAPICall(context.Background(), tn.ID, "telemetry:read", uuid.NewString()); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("64-callers", func(b *testing.B) { // ns/op: the inverse of throughput
		b.SetParallelism(32)
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				if err := s.RecordAPICall(context.Background(), tn.ID, "telemetry:read", uuid.NewString()); err != nil {
					b.Error(err)
				}
			}
		})
	})
}
