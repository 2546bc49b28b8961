package batch

import (
	"context"
	"encoding/json"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/nxcloud/nxcloud/apps"
	"github.com/nxcloud/nxcloud/ingest"
	"github.com/nxcloud/nxcloud/tenants"
)

// Run is a lot's run on one piece of equipment.
type Run struct {
	ID        int64      `json:"id"`
	Device    string     `json:"device"`
	DeviceID  uuid.UUID  `json:"device_id"`
	Model     string     `json:"model"`
	StartedAt time.Time  `json:"started_at"`
	EndedAt   *time.Time `json:"ended_at,omitempty"`
	Source    string     `json:"source"`
}

// RunInput starts (and optionally ends) a run of a lot on a device.
type RunInput struct {
	Device    string     `json:"device"`
	StartedAt time.Time  `json:"started_at"`
	EndedAt   *time.Time `json:"ended_at"`
}

// RunEnd ends a run.
type RunEnd struct {
	EndedAt time.Time `json:"ended_at"`
}

const runColumns = `r.id, d.key, r.device_id, m.key, r.started_at, r.ended_at, r.source`
const runFrom = ` FROM lot_runs r JOIN devices d ON d.id = r.device_id JOIN device_models m ON m.id = d.device_model_id `

func scanRun(r pgx.CollectableRow) (Run, error) {
	var x Run
	err := r.Scan(&x.ID, &x.Device, &x.DeviceID, &x.Model, &x.StartedAt, &x.EndedAt, &x.Source)
	x.StartedAt, x.EndedAt = x.StartedAt.UTC(), utcPtr(x.EndedAt)
	return x, err
}

func deviceID(ctx context.Context, q tenants.Querier, ref, field string) (uuid.UUID, error) {
	var id *uuid.UUID
	if u, err := uuid.Parse(ref); err == nil {
		id = &u
	}
	var out uuid.UUID
	err := q.QueryRow(ctx, `SELECT id FROM devices WHERE key = $1 OR id = $2 LIMIT 1`, ref, id).Scan(&out)
	if err == pgx.ErrNoRows {
		return out, apps.FieldError(field, "unknown device %q", clip(ref))
	}
	return out, err
}

// Runs lists a lot's runs, oldest first. Errors: not_found.
func (s *Service) Runs(ctx context.Context, lot string) ([]Run, error) {
	out := []Run{}
	err := s.inTx(ctx, func(tx pgx.Tx) error {
		l, err := resolveLot(ctx, tx, lot, "")
		if err != nil {
			return err
		}
		rows, err := tx.Query(ctx, `SELECT `+runColumns+runFrom+`WHERE r.lot_id = $1 ORDER BY r.started_at, r.id`, l.ID)
		if err != nil {
			return err
		}
		out, err = pgx.CollectRows(rows, scanRun)
		return err
	})
	return out, err
}

// StartRun records a lot's run on a device. Errors: invalid (device, times),
// not_found (lot), conflict (the lot already runs open on that device).
func (s *Service) StartRun(ctx context.Context, lot string, in RunInput) (Run, error) {
	if in.Device == "" {
		return Run{}, apps.FieldError("device", "device is required")
	}
	if in.StartedAt.IsZero() {
		return Run{}, apps.FieldError("started_at", "started_at is required")
	}
	if in.EndedAt != nil && in.EndedAt.Before(in.StartedAt) {
		return Run{}, apps.FieldError("ended_at", "ended_at must not be before started_at")
	}
	var out Run
	err := s.inTx(ctx, func(tx pgx.Tx) error {
		l, err := resolveLot(ctx, tx, lot, "")
		if err != nil {
			return err
		}
		dev, err := deviceID(ctx, tx, in.Device, "device")
		if err != nil {
			return err
		}
		id, err := insertRun(ctx, tx, l.ID, dev, in.StartedAt, in.EndedAt, "api")
		if err != nil {
			return err
		}
		rows, err := tx.Query(ctx, `SELECT `+runColumns+runFrom+`WHERE r.id = $1`, id)
		if err != nil {
			return err
		}
		out, err = pgx.CollectExactlyOneRow(rows, scanRun)
		return err
	})
	return out, err
}

func insertRun(ctx context.Context, tx pgx.Tx, lot, dev uuid.UUID, start time.Time, end *time.Time, source string) (int64, error) {
	var id int64
	err := tx.QueryRow(ctx, `INSERT INTO lot_runs (tenant_id, lot_id, device_id, started_at, ended_at, source)
		VALUES (nx_require_tenant(), $1, $2, $3, $4, $5) RETURNING id`, lot, dev, start, end, source).Scan(&id)
	if err != nil {
		return 0, tenants.StoreError(err, "an open run of this lot on this device")
	}
	// The lot's own window covers its runs.
	_, err = tx.Exec(ctx, `UPDATE lots SET started_at = LEAST(coalesce(started_at, $2), $2),
			status = CASE WHEN status = 'planned' THEN 'running' ELSE status END, updated_at = now()
		WHERE tenant_id = nx_require_tenant() AND id = $1`, lot, start)
	return id, err
}

// EndRun ends a lot's open run. Errors: invalid (ended_at), not_found (lot or
// run).
func (s *Service) EndRun(ctx context.Context, lot string, run int64, in RunEnd) (Run, error) {
	if in.EndedAt.IsZero() {
		return Run{}, apps.FieldError("ended_at", "ended_at is required")
	}
	var out Run
	err := s.inTx(ctx, func(tx pgx.Tx) error {
		l, err := resolveLot(ctx, tx, lot, "")
		if err != nil {
			return err
		}
		var started time.Time
		if err := tx.QueryRow(ctx, `SELECT started_at FROM lot_runs WHERE id = $1 AND lot_id = $2`, run, l.ID).Scan(&started); err != nil {
			return tenants.StoreError(err, "run")
		}
		if in.EndedAt.Before(started) {
			return apps.FieldError("ended_at", "ended_at must not be before the run's start %s", started.UTC().Format(time.RFC3339))
		}
		if _, err := tx.Exec(ctx, `UPDATE lot_runs SET ended_at = $2 WHERE id = $1`, run, in.EndedAt); err != nil {
			return tenants.StoreError(err, "run")
		}
		rows, err := tx.Query(ctx, `SELECT `+runColumns+runFrom+`WHERE r.id = $1`, run)
		if err != nil {
			return err
		}
		out, err = pgx.CollectExactlyOneRow(rows, scanRun)
		return err
	})
	return out, err
}

// FeedConsumer is the name of the device-event feed consumer of lot events.
const FeedConsumer = "batch.lots"

// Feed returns the feed that applies equipment's lot_start / lot_end events
// (on the system pool; each event is applied in its tenant's scope).
func (s *Service) Feed(system *pgxpool.Pool) *ingest.Feed {
	return ingest.NewFeed(system, FeedConsumer, []string{"event"}, s.ApplyEvent, s.log)
}

type lotEvent struct {
	Type string `json:"type"`
	Lot  string `json:"lot"`
	// A lot_start naming a lot not yet recorded creates it with these.
	Product  string   `json:"product"`
	Grade    string   `json:"grade"`
	Quantity *float64 `json:"quantity"`
	Unit     string   `json:"unit"`
	Shift    string   `json:"shift"`
	Operator string   `json:"operator"`
}

// ApplyEvent applies one device event: lot_start opens a run of the lot on the
// device at the event's time (creating the lot, on the device's line, when
// the code is new: an MES or the first machine of a line starts lots), lot_end
// closes the device's open run of it. Other event types are not the batch
// app's and are passed over. Errors (refusing the event for good): invalid
// (malformed code or fields, a grade not in the sector, end before start),
// not_found (lot_end of an unknown lot, no open run), conflict (already
// running).
func (s *Service) ApplyEvent(ctx context.Context, tx pgx.Tx, ev ingest.DeviceEvent) error {
	var e lotEvent
	if err := json.Unmarshal(ev.Payload, &e); err != nil {
		return nil // not an object with a type: not a lot event
	}
	if e.Type != "lot_start" && e.Type != "lot_end" {
		return nil
	}
	if e.Lot == "" {
		return apps.FieldError("lot", "%s event without a lot code", e.Type)
	}
	var lot uuid.UUID
	// The feed's connection may bypass row-level security: every query
	// names the event's tenant.
	err := tx.QueryRow(ctx, `SELECT id FROM lots WHERE tenant_id = nx_require_tenant() AND code = $1`, e.Lot).Scan(&lot)
	switch {
	case err == pgx.ErrNoRows && e.Type == "lot_start":
		if lot, err = createFromEvent(ctx, tx, e, ev); err != nil {
			return err
		}
	case err == pgx.ErrNoRows:
		return apps.Errorf(apps.NotFound, "%s: unknown lot %q", e.Type, clip(e.Lot))
	case err != nil:
		return err
	}
	if e.Type == "lot_start" {
		_, err := insertRun(ctx, tx, lot, ev.DeviceID, ev.TS, nil, "event")
		return err
	}
	var run int64
	var started time.Time
	err = tx.QueryRow(ctx, `SELECT id, started_at FROM lot_runs
		WHERE tenant_id = nx_require_tenant() AND lot_id = $1 AND device_id = $2 AND ended_at IS NULL`,
		lot, ev.DeviceID).Scan(&run, &started)
	if err == pgx.ErrNoRows {
		return apps.Errorf(apps.NotFound, "lot_end: lot %s has no open run on device %s", e.Lot, ev.DeviceKey)
	}
	if err != nil {
		return err
	}
	if ev.TS.Before(started) {
		return apps.Errorf(apps.Invalid, "lot_end at %s is before the run's start %s", ev.TS.UTC().Format(time.RFC3339), started.UTC().Format(time.RFC3339))
	}
	_, err = tx.Exec(ctx, `UPDATE lot_runs SET ended_at = $2 WHERE tenant_id = nx_require_tenant() AND id = $1`, run, ev.TS)
	return err
}

// createFromEvent records the lot a lot_start names, on the device's line.
func createFromEvent(ctx context.Context, tx pgx.Tx, e lotEvent, ev ingest.DeviceEvent) (uuid.UUID, error) {
	in := LotInput{Code: e.Lot, Product: e.Product, Grade: e.Grade, Unit: e.Unit, Shift: e.Shift, Operator: e.Operator, Status: "running"}
	if e.Quantity != nil {
		in.Quantity = *e.Quantity
	}
	if err := in.check(); err != nil {
		return uuid.Nil, err
	}
	var ok bool
	if in.Grade != "" {
		if err := tx.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM grades WHERE tenant_id = nx_require_tenant() AND code = $1)`, in.Grade).Scan(&ok); err != nil {
			return uuid.Nil, err
		}
		if !ok {
			return uuid.Nil, apps.FieldError("grade", "grade %q is not a grade of the sector", clip(in.Grade))
		}
	}
	var id uuid.UUID
	err := tx.QueryRow(ctx, `INSERT INTO lots (tenant_id, code, product, kind, grade_code, line_id, quantity, unit, status,
			started_at, shift, operator, attributes)
		SELECT nx_require_tenant(), $1, $2, 'wip', nullif($3, ''), d.line_id, $4, $5, 'running', $6, $7, $8,
			jsonb_build_object('created_by_event', $9::bigint)
		FROM devices d WHERE d.tenant_id = nx_require_tenant() AND d.id = $10
		RETURNING id`, in.Code, in.Product, in.Grade, in.Quantity, in.Unit, ev.TS, in.Shift, in.Operator, ev.ID, ev.DeviceID).Scan(&id)
	if err != nil {
		return uuid.Nil, tenants.StoreError(err, "lot "+in.Code)
	}
	return id, nil
}
