package recipe

import (
	"context"
	"encoding/json"
	"errors"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"

	"github.com/nxcloud/nxcloud/tenants"
)

// Limits crossed.
const (
	Upper = "upper"
	Lower = "lower"
)

// scanPage is how many points of one series a scan reads per query.
const scanPage = 5000

// run is a lot run deviation detection looks at.
type run struct {
	id             int64
	lot, device    uuid.UUID
	started        time.Time
	ended          *time.Time
	version        uuid.UUID
	deviceModelID  uuid.UUID
	deviceModelKey string
	scannedTo      time.Time
}

// ScanDeviations scans the telemetry of every lot run with a recipe version
// that is not fully scanned, from its watermark up to now minus Settle, and
// records deviations. It returns how many runs it scanned. The job runs it
// periodically for every tenant; with a tenant in ctx it scans only that
// tenant's runs (tests step the job that way).
func (s *Service) ScanDeviations(ctx context.Context) (int, error) {
	horizon := s.Now().Add(-s.Settle)
	only, _ := tenants.FromContext(ctx)
	// Finding the work crosses tenants (system pool); each run is then
	// scanned in its tenant's transaction through the tenant-filtered
	// telemetry functions.
	rows, err := s.db.System.Query(ctx, `SELECT r.id, r.tenant_id
		FROM lot_runs r JOIN lots l ON l.id = r.lot_id
		LEFT JOIN recipe_run_scans sc ON sc.run_id = r.id
		WHERE l.recipe_version_id IS NOT NULL AND NOT coalesce(sc.done, false) AND r.started_at < $1
		  AND ($2 = '00000000-0000-0000-0000-000000000000'::uuid OR r.tenant_id = $2)
		  AND (coalesce(sc.scanned_to, r.started_at) < LEAST(r.ended_at, $1) OR (r.ended_at IS NOT NULL AND r.ended_at <= $1))
		ORDER BY r.id LIMIT 1000`, horizon, only)
	if err != nil {
		return 0, err
	}
	type todo struct {
		id     int64
		tenant uuid.UUID
	}
	list, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (todo, error) {
		var t todo
		return t, r.Scan(&t.id, &t.tenant)
	})
	if err != nil {
		return 0, err
	}
	n := 0
	var errs []error
	for _, t := range list {
		if err := s.scanRun(tenants.WithTenant(ctx, t.tenant), t.id, horizon); err != nil {
			errs = append(errs, err)
			continue
		}
		n++
	}
	return n, errors.Join(errs...)
}

// RunDeviations runs ScanDeviations every interval until ctx ends.
func (s *Service) RunDeviations(ctx context.Context, every time.Duration) {
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		if _, err := s.ScanDeviations(ctx); err != nil && ctx.Err() == nil {
			s.log.Warn("recipe: deviation scan", "err", err)
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// scanRun scans one run from its watermark to horizon (or the run's end).
func (s *Service) scanRun(ctx context.Context, runID int64, horizon time.Time) error {
	return tenants.InTx(ctx, s.db.App, func(tx pgx.Tx) error {
		var r run
		var version *uuid.UUID
		err := tx.QueryRow(ctx, `SELECT r.id, r.lot_id, r.device_id, r.started_at, r.ended_at, l.recipe_version_id,
				dev.device_model_id, m.key
			FROM lot_runs r JOIN lots l ON l.id = r.lot_id JOIN devices dev ON dev.id = r.device_id
			JOIN device_models m ON m.id = dev.device_model_id WHERE r.id = $1`, runID).
			Scan(&r.id, &r.lot, &r.device, &r.started, &r.ended, &version, &r.deviceModelID, &r.deviceModelKey)
		if err != nil {
			return tenants.StoreError(err, "lot run")
		}
		if _, err := tx.Exec(ctx, `INSERT INTO recipe_run_scans (tenant_id, run_id, scanned_to) VALUES (nx_require_tenant(), $1, $2)
			ON CONFLICT (run_id) DO NOTHING`, r.id, r.started); err != nil {
			return err
		}
		var done bool
		if err := tx.QueryRow(ctx, `SELECT scanned_to, done FROM recipe_run_scans WHERE run_id = $1 FOR UPDATE`, r.id).Scan(&r.scannedTo, &done); err != nil {
			return err
		}
		if done {
			return nil
		}
		var params []Parameter
		if version != nil {
			var raw []byte
			err := tx.QueryRow(ctx, `SELECT parameters FROM recipe_versions WHERE id = $1`, *version).Scan(&raw)
			if err != nil && !errors.Is(err, pgx.ErrNoRows) {
				return err
			}
			if err == nil {
				r.version = *version
				if err := json.Unmarshal(raw, &params); err != nil {
					return err
				}
			}
		}
		end, finishing := horizon, false
		if r.ended != nil && !r.ended.After(horizon) {
			end, finishing = *r.ended, true
		}
		// Re-read a little before the watermark (late points); the final
		// pass of an ended run re-reads all of it.
		from := r.scannedTo.Add(-s.Lookback)
		if finishing || from.Before(r.started) {
			from = r.started
		}
		if r.version != uuid.Nil && (r.scannedTo.Before(end) || finishing) {
			for _, p := range params {
				if p.Model != r.deviceModelKey {
					continue
				}
				if err := s.scanParameter(ctx, tx, r, p, from, end, finishing); err != nil {
					return err
				}
			}
		}
		if finishing || r.version == uuid.Nil {
			// The run is over: a deviation still open ends with it.
			if r.ended != nil {
				if _, err := tx.Exec(ctx, `UPDATE recipe_deviations SET ended_at = $2 WHERE run_id = $1 AND ended_at IS NULL`, r.id, *r.ended); err != nil {
					return err
				}
			}
		}
		if end.Before(r.scannedTo) {
			end = r.scannedTo
		}
		_, err = tx.Exec(ctx, `UPDATE recipe_run_scans SET scanned_to = $2, done = $3, updated_at = now() WHERE run_id = $1`,
			r.id, end, finishing || r.version == uuid.Nil)
		return err
	})
}

// excursion is a stretch of points outside the limits on one side, computed
// by a scan or stored as a deviation.
type excursion struct {
	id            uuid.UUID
	side          string
	started, last time.Time
	ended         *time.Time
	worst         float64
	worstAt       time.Time
	points        int
	acknowledged  bool
	used          bool
}

// overlaps reports whether two excursions on the same side share time (an
// open one extends to infinity).
func (e *excursion) overlaps(o *excursion) bool {
	if e.side != o.side {
		return false
	}
	return (e.ended == nil || o.started.Before(*e.ended)) && (o.ended == nil || e.started.Before(*o.ended))
}

// scanParameter recomputes one parameter's excursions from the points in
// [from, end) (from moved back to the start of a stored deviation still
// under way at from) and reconciles them with the stored deviations: a
// computed excursion updates the stored one it overlaps (same id: a deviation
// that spans scans is continued, never opened twice; a late point extends
// it), or is inserted; stored ones that a late point merged into another are
// deleted unless acknowledged. When finishing, an excursion still under way
// ends with the run.
func (s *Service) scanParameter(ctx context.Context, tx pgx.Tx, r run, p Parameter, from, end time.Time, finishing bool) error {
	var metricID int32
	if err := tx.QueryRow(ctx, `SELECT id FROM metrics WHERE device_model_id = $1 AND key = $2`, r.deviceModelID, p.Metric).Scan(&metricID); err != nil {
		if errors.Is(err, pgx.ErrNoRows) {
			return nil // the metric left the model: nothing to watch
		}
		return err
	}
	rows, err := tx.Query(ctx, `SELECT id, limit_crossed, started_at, ended_at, acknowledged_at IS NOT NULL
		FROM recipe_deviations WHERE run_id = $1 AND metric = $2 AND (ended_at IS NULL OR ended_at > $3)
		ORDER BY started_at FOR UPDATE`, r.id, p.Metric, from)
	if err != nil {
		return err
	}
	stored, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (*excursion, error) {
		var e excursion
		return &e, row.Scan(&e.id, &e.side, &e.started, &e.ended, &e.acknowledged)
	})
	if err != nil {
		return err
	}
	for _, e := range stored {
		if e.started.Before(from) {
			from = e.started
		}
	}
	computed, err := s.excursions(ctx, tx, r, metricID, p, from, end)
	if err != nil {
		return err
	}
	if n := len(computed); n > 0 && finishing && computed[n-1].ended == nil {
		t := end
		computed[n-1].ended = &t
	}
	for _, c := range computed {
		var match *excursion
		for _, st := range stored {
			if !st.used && st.overlaps(c) {
				if match == nil {
					match, st.used = st, true
					continue
				}
				// A late point joined two stored deviations into one.
				st.used = true
				if !st.acknowledged {
					if _, err := tx.Exec(ctx, `DELETE FROM recipe_deviations WHERE id = $1`, st.id); err != nil {
						return err
					}
				}
			}
		}
		if match != nil {
			_, err = tx.Exec(ctx, `UPDATE recipe_deviations SET started_at = $2, ended_at = $3, last_at = $4, worst_value = $5,
				worst_at = $6, points = $7 WHERE id = $1`, match.id, c.started, c.ended, c.last, c.worst, c.worstAt, c.points)
		} else {
			s.log.Info("recipe deviation", "run", r.id, "lot", r.lot, "device", r.device, "metric", p.Metric,
				"limit", c.side, "started", c.started, "worst", c.worst)
			_, err = tx.Exec(ctx, `INSERT INTO recipe_deviations (tenant_id, id, run_id, lot_id, device_id, version_id, metric, unit,
				limit_crossed, lower_limit, upper_limit, setpoint, started_at, ended_at, last_at, worst_value, worst_at, points)
				VALUES (nx_require_tenant(), $1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17)`,
				uuid.New(), r.id, r.lot, r.device, r.version, p.Metric, p.Unit, c.side, p.Lower, p.Upper, p.Setpoint,
				c.started, c.ended, c.last, c.worst, c.worstAt, c.points)
		}
		if err != nil {
			return err
		}
	}
	return nil
}

// excursions reads a series in [from, end) page by page and returns its
// stretches outside [p.Lower, p.Upper] (limits inclusive: a point at a limit
// is inside), oldest first; the last may still be under way (ended nil).
func (s *Service) excursions(ctx context.Context, tx pgx.Tx, r run, metricID int32, p Parameter, from, end time.Time) ([]*excursion, error) {
	var out []*excursion
	var open *excursion
	for from.Before(end) {
		rows, err := tx.Query(ctx, `SELECT ts, value FROM telemetry_raw($1, $2, $3, $4, $5)`, r.device, metricID, from, end, scanPage)
		if err != nil {
			return nil, err
		}
		type point struct {
			ts time.Time
			v  float64
		}
		pts, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (point, error) {
			var x point
			return x, row.Scan(&x.ts, &x.v)
		})
		if err != nil {
			return nil, err
		}
		next := end
		if len(pts) == scanPage {
			// A full page: stop before the last timestamp (it may continue on
			// the next page) unless the whole page shares it.
			last := pts[len(pts)-1].ts
			cut := len(pts)
			for cut > 0 && pts[cut-1].ts.Equal(last) {
				cut--
			}
			if cut > 0 {
				pts, next = pts[:cut], last
			} else {
				next = last.Add(time.Microsecond)
			}
		}
		for _, x := range pts {
			side := ""
			switch {
			case x.v > p.Upper:
				side = Upper
			case x.v < p.Lower:
				side = Lower
			}
			if open != nil && side != open.side {
				t := x.ts
				open.ended = &t
				out = append(out, open)
				open = nil
			}
			if side == "" {
				continue
			}
			if open == nil {
				open = &excursion{side: side, started: x.ts, worst: x.v, worstAt: x.ts}
			} else if (side == Upper && x.v > open.worst) || (side == Lower && x.v < open.worst) {
				open.worst, open.worstAt = x.v, x.ts
			}
			open.points++
			open.last = x.ts
		}
		from = next
	}
	if open != nil {
		out = append(out, open)
	}
	return out, nil
}
