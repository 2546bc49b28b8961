package main

import (
	"context"
	"sync/atomic"

	"github.com/jackc/pgx/v5"

	"github.com/nxcloud/nxcloud/ingest"
	"github.com/nxcloud/nxcloud/metering"
)

// meteringHook is ingest's OnStored: it runs next (when set), then adds the
// batch's telemetry counts to the usage ledger in the batch's transaction
// (unless off is set and true: only to measure the hook's cost).
func meteringHook(m *metering.Service, next func(context.Context, pgx.Tx, []ingest.Usage) error, off *atomic.Bool) func(context.Context, pgx.Tx, []ingest.Usage) error {
	return func(ctx context.Context, tx pgx.Tx, usage []ingest.Usage) error {
		if next != nil {
			if err := next(ctx, tx, usage); err != nil {
				return err
			}
		}
		if off != nil && off.Load() {
			return nil
		}
		mu := make([]metering.TelemetryUsage, len(usage))
		for i, u := range usage {
			mu[i] = metering.TelemetryUsage(u)
		}
		return m.RecordTelemetry(ctx, tx, mu)
	}
}
