package ingest

import (
	"context"
	"fmt"
	"log/slog"
	"sort"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
)

// Maintainer keeps plain-PostgreSQL telemetry storage in shape: daily
// partitions created ahead and dropped after retention, and the 1 min / 1 h
// rollups brought up to date. On TimescaleDB its policies do all of this and
// the Maintainer does nothing.
type Maintainer struct {
	pool      *pgxpool.Pool
	timescale bool
	// Ahead is how many days of partitions exist beyond today.
	Ahead int
	// Retention is how long raw telemetry and 1 min rollups are kept.
	Retention time.Duration
	// HourlyRetention is how long 1 h rollups are kept (TimescaleDB's policy
	// on telemetry_1h keeps them as long).
	HourlyRetention time.Duration
	log             *slog.Logger
	now             func() time.Time
}

// NewMaintainer returns a Maintainer for a database of the given flavor
// ("tsdb" or "pg").
func NewMaintainer(pool *pgxpool.Pool, flavor string, log *slog.Logger) *Maintainer {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Maintainer{pool: pool, timescale: flavor == "tsdb", Ahead: 7, Retention: 400 * 24 * time.Hour, HourlyRetention: 1825 * 24 * time.Hour, log: log, now: time.Now}
}

// Run maintains every interval until ctx is done.
func (m *Maintainer) Run(ctx context.Context, interval time.Duration) {
	if m.timescale {
		return
	}
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		if err := m.Once(ctx); err != nil && ctx.Err() == nil {
			m.log.Error("storage maintenance failed; will retry", "err", err)
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// Once runs one maintenance pass: partitions, then rollups.
func (m *Maintainer) Once(ctx context.Context) error {
	if m.timescale {
		return nil
	}
	if err := m.Partitions(ctx); err != nil {
		return err
	}
	return m.Rollup(ctx)
}

// Partitions creates the daily partitions from yesterday to Ahead days ahead
// and drops those past retention.
func (m *Maintainer) Partitions(ctx context.Context) error {
	today := m.now().UTC().Truncate(24 * time.Hour)
	var created, dropped int
	if err := m.pool.QueryRow(ctx, `SELECT nx_ensure_telemetry_partitions($1::date, $2::date)`,
		today.AddDate(0, 0, -8), today.AddDate(0, 0, m.Ahead)).Scan(&created); err != nil {
		return fmt.Errorf("create partitions: %w", err)
	}
	cut := today.Add(-m.Retention)
	if err := m.pool.QueryRow(ctx, `SELECT nx_drop_telemetry_partitions($1::date)`, cut).Scan(&dropped); err != nil {
		return fmt.Errorf("drop partitions: %w", err)
	}
	if _, err := m.pool.Exec(ctx, `DELETE FROM telemetry_1m_store WHERE bucket < $1`, cut); err != nil {
		return err
	}
	if _, err := m.pool.Exec(ctx, `DELETE FROM telemetry_1h_store WHERE bucket < $1`, today.Add(-m.HourlyRetention)); err != nil {
		return err
	}
	if created+dropped > 0 {
		m.log.Info("telemetry partitions maintained", "created", created, "dropped", dropped)
	}
	return nil
}

type span struct{ lo, hi time.Time } // [lo, hi)

// merge sorts spans and joins those that overlap or touch.
func merge(s []span) []span {
	sort.Slice(s, func(i, j int) bool { return s[i].lo.Before(s[j].lo) })
	var out []span
	for _, x := range s {
		if n := len(out); n > 0 && !x.lo.After(out[n-1].hi) {
			if x.hi.After(out[n-1].hi) {
				out[n-1].hi = x.hi
			}
			continue
		}
		out = append(out, x)
	}
	return out
}

// origin aligns buckets like TimescaleDB's time_bucket.
var origin = time.Date(2000, 1, 3, 0, 0, 0, 0, time.UTC)

func floorTo(t time.Time, d time.Duration) time.Time {
	return origin.Add(t.Sub(origin) / d * d).UTC()
}

// Rollup brings telemetry_1m_store and telemetry_1h_store up to date: it
// materialises the buckets completed since the last pass and recomputes older
// buckets that late data touched (from telemetry_invalidation), then advances
// the watermarks, in one transaction. Buckets at or after a watermark are
// computed from the level below at query time, so answers do not depend on
// when this ran.
func (m *Maintainer) Rollup(ctx context.Context) error {
	return pgx.BeginFunc(ctx, m.pool, func(tx pgx.Tx) error {
		var locked bool
		if err := tx.QueryRow(ctx, `SELECT pg_try_advisory_xact_lock(7311420002)`).Scan(&locked); err != nil {
			return err
		}
		if !locked {
			return nil // another replica is at it
		}
		var w1m, w1h time.Time
		var w1mInf, w1hInf bool
		if err := tx.QueryRow(ctx, `SELECT
			coalesce(nullif((SELECT watermark FROM telemetry_rollup_state WHERE level = '1m'), '-infinity'), 'epoch'),
			(SELECT watermark FROM telemetry_rollup_state WHERE level = '1m') = '-infinity',
			coalesce(nullif((SELECT watermark FROM telemetry_rollup_state WHERE level = '1h'), '-infinity'), 'epoch'),
			(SELECT watermark FROM telemetry_rollup_state WHERE level = '1h') = '-infinity'`).
			Scan(&w1m, &w1mInf, &w1h, &w1hInf); err != nil {
			return fmt.Errorf("read watermarks: %w", err)
		}
		if w1mInf || w1hInf {
			var first *time.Time
			if err := tx.QueryRow(ctx, `SELECT min(ts) FROM telemetry`).Scan(&first); err != nil {
				return err
			}
			start := m.now()
			if first != nil {
				start = *first
			}
			if w1mInf {
				w1m = floorTo(start, time.Minute)
			}
			if w1hInf {
				w1h = floorTo(start, time.Hour)
			}
		}
		// A minute is materialised once it is a minute old, so most late points
		// of a live device still land before their bucket is.
		now := m.now()
		new1m := floorTo(now, time.Minute).Add(-time.Minute)
		if new1m.Before(w1m) {
			new1m = w1m
		}
		new1h := floorTo(new1m, time.Hour)
		if new1h.Before(w1h) {
			new1h = w1h
		}

		rows, err := tx.Query(ctx, `DELETE FROM telemetry_invalidation RETURNING lo, hi`)
		if err != nil {
			return fmt.Errorf("read invalidations: %w", err)
		}
		var late []span
		for rows.Next() {
			var s span
			if err := rows.Scan(&s.lo, &s.hi); err != nil {
				rows.Close()
				return err
			}
			if s.lo.Before(w1m) { // only what is already materialised needs redoing
				late = append(late, span{floorTo(s.lo, time.Minute), minTime(floorTo(s.hi, time.Minute).Add(time.Minute), w1m)})
			}
		}
		rows.Close()
		if err := rows.Err(); err != nil {
			return err
		}
		spans1m := merge(append(late, span{w1m, new1m}))
		var spans1h []span
		for _, s := range spans1m {
			if s.lo.Before(w1h) {
				spans1h = append(spans1h, span{floorTo(s.lo, time.Hour), minTime(floorTo(s.hi.Add(-time.Nanosecond), time.Hour).Add(time.Hour), w1h)})
			}
		}
		spans1h = merge(append(spans1h, span{w1h, new1h}))
		if err := rebuild(ctx, tx, "telemetry_1m_store", rollup1m, spans1m); err != nil {
			return fmt.Errorf("roll up 1m: %w", err)
		}
		if err := rebuild(ctx, tx, "telemetry_1h_store", rollup1h, spans1h); err != nil {
			return fmt.Errorf("roll up 1h: %w", err)
		}
		_, err = tx.Exec(ctx, `UPDATE telemetry_rollup_state SET watermark = CASE level WHEN '1m' THEN $1::timestamptz ELSE $2::timestamptz END`, new1m, new1h)
		return err
	})
}

// The rollups: 1 min buckets from raw rows, 1 h buckets from 1 min ones, for
// buckets in [$1, $2).
const (
	rollup1m = `INSERT INTO telemetry_1m_store (bucket, tenant_id, device_id, metric_id, sum, count, min, max, last, last_ts)
		SELECT date_bin(interval '1 minute', ts, timestamptz '2000-01-03 00:00:00+00'), tenant_id, device_id, metric_id,
		       sum(value), count(*), min(value), max(value), (array_agg(value ORDER BY ts DESC))[1], max(ts)
		FROM telemetry WHERE ts >= $1 AND ts < $2
		GROUP BY 1, 2, 3, 4`
	rollup1h = `INSERT INTO telemetry_1h_store (bucket, tenant_id, device_id, metric_id, sum, count, min, max, last, last_ts)
		SELECT date_bin(interval '1 hour', bucket, timestamptz '2000-01-03 00:00:00+00'), tenant_id, device_id, metric_id,
		       sum(sum), sum(count)::bigint, min(min), max(max), (array_agg(last ORDER BY last_ts DESC))[1], max(last_ts)
		FROM telemetry_1m_store WHERE bucket >= $1 AND bucket < $2
		GROUP BY 1, 2, 3, 4`
)

// rebuild replaces the rows of store in each span by what insert computes.
func rebuild(ctx context.Context, tx pgx.Tx, store, insert string, spans []span) error {
	for _, s := range spans {
		if !s.lo.Before(s.hi) {
			continue
		}
		if _, err := tx.Exec(ctx, `DELETE FROM `+store+` WHERE bucket >= $1 AND bucket < $2`, s.lo, s.hi); err != nil {
			return err
		}
		if _, err := tx.Exec(ctx, insert, s.lo, s.hi); err != nil {
			return err
		}
	}
	return nil
}

func minTime(a, b time.Time) time.Time {
	if a.Before(b) {
		return a
	}
	return b
}
