package metering

import (
	"context"
	"encoding/json"
	"fmt"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"

	"github.com/nxcloud/nxcloud/apps"
)

// billingLock serialises closing invoices and merging telemetry rows across
// replicas (pg_advisory_xact_lock key).
const billingLock = 0x6e786d65746572 // "nxmeter"

// Close makes tenant's invoice for the month starting at period final: every
// ledger row not yet billed that occurred before the month's end is marked
// with the invoice (usage of earlier closed months as adjustments), the
// lines are computed from exactly those rows, and the invoice is stored
// with its close time. Closing twice returns the final invoice. Errors:
// invalid (the month has not ended plus the grace), not_found (no plan).
func (s *Service) Close(ctx context.Context, tenant uuid.UUID, period time.Time) (Invoice, error) {
	period = monthStart(period)
	end := period.AddDate(0, 1, 0)
	now := s.now().UTC()
	if now.Before(end.Add(s.cfg.CloseGrace)) {
		return Invoice{}, apps.FieldError("period", "%s can be closed from %s on (its end plus %s of grace for late usage)",
			periodName(period), end.Add(s.cfg.CloseGrace).Format(time.RFC3339), s.cfg.CloseGrace)
	}
	var inv Invoice
	err := pgx.BeginFunc(ctx, s.sys, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, `SELECT pg_advisory_xact_lock($1)`, int64(billingLock)); err != nil {
			return err
		}
		cur, err := s.storedInvoice(ctx, tx, tenant, `period = $2`, period)
		if err == nil && cur.Status == "final" {
			inv = cur
			return nil
		}
		if err != nil && apps.Code(err) != apps.NotFound {
			return err
		}
		plan, _, _, ok, err := s.planFor(ctx, tx, tenant, period)
		if err != nil {
			return err
		}
		if !ok {
			return apps.Errorf(apps.NotFound, "no plan for %s: the enterprise has not subscribed", periodName(period))
		}
		// Months close in order: an earlier month with a plan and no final
		// invoice would otherwise see its usage billed here.
		var open *time.Time
		if err := tx.QueryRow(ctx, `
			SELECT min(m) FROM generate_series(
				(SELECT min(effective_from) FROM billing_subscriptions WHERE tenant_id = $1)::timestamp,
				$2::date - interval '1 month', interval '1 month') AS m
			WHERE NOT EXISTS (SELECT 1 FROM invoices WHERE tenant_id = $1 AND period = m::date AND status = 'final')`,
			tenant, period).Scan(&open); err != nil {
			return err
		}
		if open != nil {
			return apps.FieldError("period", "close %s first: months are closed in order", periodName(*open))
		}
		id := cur.ID
		if id == uuid.Nil {
			id = uuid.New()
		}
		if _, err := tx.Exec(ctx, `
			INSERT INTO invoices (tenant_id, id, period, status, plan_id, currency, total_cents, lines)
			VALUES ($1, $2, $3, 'draft', $4, $5, 0, '[]') ON CONFLICT (tenant_id, period) DO NOTHING`,
			tenant, id, period, plan.ID, plan.Currency); err != nil {
			return err
		}
		if _, err := mergeTx(ctx, tx); err != nil {
			return err
		}
		if _, err := tx.Exec(ctx, `UPDATE usage_events SET invoice_id = $2 WHERE tenant_id = $1 AND invoice_id IS NULL AND occurred_at < $3`,
			tenant, id, end); err != nil {
			return err
		}
		if _, err := tx.Exec(ctx, `UPDATE usage_telemetry SET invoice_id = $2 WHERE tenant_id = $1 AND invoice_id IS NULL AND hour < $3`,
			tenant, id, end); err != nil {
			return err
		}
		cells, err := s.cells(ctx, tx, tenant, selInvoice, id)
		if err != nil {
			return err
		}
		var closedAt time.Time
		if err := tx.QueryRow(ctx, `SELECT now()`).Scan(&closedAt); err != nil {
			return err
		}
		plan, lines, err := s.compute(ctx, tx, tenant, period, cells, func(m time.Time) ([]cell, error) {
			return s.cells(ctx, tx, tenant, selPrior, m, m.AddDate(0, 1, 0), closedAt)
		}, nil)
		if err != nil {
			return err
		}
		raw, _ := json.Marshal(lines)
		if _, err := tx.Exec(ctx, `
			UPDATE invoices SET status = 'final', plan_id = $3, currency = $4, total_cents = $5, lines = $6,
				computed_at = $7, closed_at = $7
			WHERE tenant_id = $1 AND id = $2`, tenant, id, plan.ID, plan.Currency, total(lines), raw, closedAt); err != nil {
			return err
		}
		inv, err = s.storedInvoice(ctx, tx, tenant, `id = $2`, id)
		return err
	})
	return inv, err
}

// CloseDue closes, month by month in order, every invoice whose month ended
// more than the grace ago, for every tenant with a plan. It returns how many
// it closed.
func (s *Service) CloseDue(ctx context.Context) (int, error) {
	rows, err := s.sys.Query(ctx, `
		SELECT s.tenant_id, min(s.effective_from),
			coalesce((SELECT max(period) FROM invoices i WHERE i.tenant_id = s.tenant_id AND i.status = 'final'), '0001-01-01')
		FROM billing_subscriptions s GROUP BY s.tenant_id`)
	if err != nil {
		return 0, err
	}
	type due struct {
		tenant      uuid.UUID
		first, last time.Time
	}
	var todo []due
	for rows.Next() {
		var d due
		if err := rows.Scan(&d.tenant, &d.first, &d.last); err != nil {
			rows.Close()
			return 0, err
		}
		todo = append(todo, d)
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return 0, err
	}
	n := 0
	limit := s.now().UTC().Add(-s.cfg.CloseGrace)
	for _, d := range todo {
		m := monthStart(d.first)
		if next := monthStart(d.last).AddDate(0, 1, 0); d.last.Year() > 1 && next.After(m) {
			m = next
		}
		for ; !m.AddDate(0, 1, 0).After(limit); m = m.AddDate(0, 1, 0) {
			if _, err := s.Close(ctx, d.tenant, m); err != nil {
				return n, fmt.Errorf("close %s of %s: %w", periodName(m), d.tenant, err)
			}
			n++
		}
	}
	return n, nil
}

// MergeTelemetry folds the per-batch telemetry rows into one unbilled row
// per (tenant, device, hour): the sums are unchanged; the ledger stays small.
// It returns the batch rows it folded.
func (s *Service) MergeTelemetry(ctx context.Context) (int64, error) {
	var n int64
	err := pgx.BeginFunc(ctx, s.sys, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, `SELECT pg_advisory_xact_lock($1)`, int64(billingLock)); err != nil {
			return err
		}
		var err error
		n, err = mergeTx(ctx, tx)
		return err
	})
	return n, err
}

// mergeTx folds the batch rows visible to tx (the caller holds the billing
// lock: no one else writes usage_telemetry).
func mergeTx(ctx context.Context, tx pgx.Tx) (int64, error) {
	var n int64
	err := tx.QueryRow(ctx, `
		WITH gone AS (
			DELETE FROM usage_telemetry_batches RETURNING tenant_id, hour, devices, stored, rejected, events
		), flat AS (
			SELECT g.tenant_id, u.d, g.hour, sum(u.s) AS s, sum(u.r) AS r, sum(u.e) AS e
			FROM gone g, unnest(g.devices, g.stored, g.rejected, g.events) AS u(d, s, r, e)
			GROUP BY 1, 2, 3
		), ins AS (
			INSERT INTO usage_telemetry (tenant_id, device_id, hour, stored, rejected, events, merged)
			SELECT tenant_id, d, hour, s, r, e, true FROM flat
			ON CONFLICT (tenant_id, device_id, hour) WHERE invoice_id IS NULL DO UPDATE
			SET stored = usage_telemetry.stored + excluded.stored, rejected = usage_telemetry.rejected + excluded.rejected,
				events = usage_telemetry.events + excluded.events
		)
		SELECT count(*) FROM gone`).Scan(&n)
	return n, err
}

// Snapshot records the daily gauges of the UTC day starting at day: active
// devices (devices whose points were stored that day) and bytes stored per
// tenant (the telemetry relation's size on disk, indexes included,
// apportioned by each tenant's share of the points stored within the
// retention window). Idempotent per day: a second run records nothing.
func (s *Service) Snapshot(ctx context.Context, day time.Time, retention time.Duration) error {
	day = day.UTC().Truncate(24 * time.Hour)
	name := day.Format(time.DateOnly)
	if _, err := s.sys.Exec(ctx, `
		INSERT INTO usage_events (tenant_id, meter, subject, quantity, occurred_at, idem_key)
		SELECT u.tenant_id, 'devices.active', '', count(DISTINCT u.device_id), $1, 'devices.active:' || $2
		FROM `+telemetryFlat+` u JOIN tenants t ON t.id = u.tenant_id
		WHERE u.hour >= $1 AND u.hour < $1 + interval '24 hours' AND u.stored > 0
		GROUP BY u.tenant_id
		ON CONFLICT (tenant_id, meter, idem_key) DO NOTHING`, day, name); err != nil {
		return fmt.Errorf("active devices snapshot: %w", err)
	}
	var tsdb bool
	if err := s.sys.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'timescaledb')`).Scan(&tsdb); err != nil {
		return err
	}
	sizeSQL := `SELECT coalesce(sum(pg_total_relation_size(inhrelid)), 0)::bigint FROM pg_inherits WHERE inhparent = 'telemetry'::regclass`
	if tsdb {
		sizeSQL = `SELECT coalesce(hypertable_size('telemetry'), 0)::bigint`
	}
	var size int64
	if err := s.sys.QueryRow(ctx, sizeSQL).Scan(&size); err != nil {
		return fmt.Errorf("telemetry size: %w", err)
	}
	_, err := s.sys.Exec(ctx, `
		WITH pts AS (
			SELECT u.tenant_id, sum(u.stored) AS n FROM `+telemetryFlat+` u JOIN tenants t ON t.id = u.tenant_id
			WHERE u.hour >= $1::timestamptz - $4::interval AND u.hour < $1::timestamptz + interval '24 hours' GROUP BY u.tenant_id
		), tot AS (SELECT sum(n) AS n FROM pts)
		INSERT INTO usage_events (tenant_id, meter, subject, quantity, occurred_at, idem_key)
		SELECT p.tenant_id, 'storage.bytes', 'telemetry',
			CASE WHEN $3::bigint > 0 THEN round($3::numeric * p.n / tot.n) ELSE p.n * $5::bigint END::bigint,
			$1, 'storage.bytes:' || $2
		FROM pts p, tot WHERE tot.n > 0 AND p.n > 0
		ON CONFLICT (tenant_id, meter, idem_key) DO NOTHING`, day, name, size, retention.String(), s.cfg.RowBytes)
	if err != nil {
		return fmt.Errorf("storage snapshot: %w", err)
	}
	return nil
}

// jobLoop runs the periodic work; each step logs its failure and is tried
// again at the next tick.
func (s *Service) jobLoop(ctx context.Context) {
	tick := time.NewTicker(s.cfg.ReconcileEvery)
	defer tick.Stop()
	last := time.Time{}
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		if err := s.Reconcile(ctx); err != nil && ctx.Err() == nil {
			s.log.Warn("metering: reconcile hot counters", "err", err)
		}
		if _, err := s.MergeTelemetry(ctx); err != nil && ctx.Err() == nil {
			s.log.Warn("metering: merge telemetry usage", "err", err)
		}
		if time.Since(last) < 5*time.Minute {
			continue
		}
		last = time.Now()
		today := s.now().UTC().Truncate(24 * time.Hour)
		for _, d := range []time.Time{today.AddDate(0, 0, -2), today.AddDate(0, 0, -1)} {
			if err := s.Snapshot(ctx, d, 400*24*time.Hour); err != nil && ctx.Err() == nil {
				s.log.Warn("metering: daily snapshot", "day", d, "err", err)
			}
		}
		if n, err := s.CloseDue(ctx); err != nil && ctx.Err() == nil {
			s.log.Warn("metering: close invoices", "err", err)
		} else if n > 0 {
			s.log.Info("metering: invoices closed", "count", n)
		}
	}
}
