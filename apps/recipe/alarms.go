package recipe

import (
	"context"
	"encoding/json"
	"strings"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"

	"github.com/nxcloud/nxcloud/apps"
	"github.com/nxcloud/nxcloud/tenants"
)

// Deviation is a stretch of a lot run's telemetry outside a recipe
// parameter's limits on one side: from the first point outside to the first
// point back inside (or the run's end); open while EndedAt is absent.
type Deviation struct {
	ID             uuid.UUID  `json:"id"`
	LotID          uuid.UUID  `json:"lot_id"`
	Lot            string     `json:"lot"`
	Device         string     `json:"device"`
	DeviceID       uuid.UUID  `json:"device_id"`
	RunID          int64      `json:"run_id"`
	Recipe         string     `json:"recipe"`
	Version        int        `json:"version"`
	VersionID      uuid.UUID  `json:"version_id"`
	Metric         string     `json:"metric"`
	Unit           string     `json:"unit"`
	LimitCrossed   string     `json:"limit_crossed"`
	Limit          float64    `json:"limit"`
	Lower          float64    `json:"lower"`
	Upper          float64    `json:"upper"`
	Setpoint       float64    `json:"setpoint"`
	StartedAt      time.Time  `json:"started_at"`
	EndedAt        *time.Time `json:"ended_at,omitempty"`
	Open           bool       `json:"open"`
	WorstValue     float64    `json:"worst_value"`
	WorstAt        time.Time  `json:"worst_at"`
	Points         int        `json:"points"`
	Acknowledged   bool       `json:"acknowledged"`
	AcknowledgedAt *time.Time `json:"acknowledged_at,omitempty"`
	AcknowledgedBy *Actor     `json:"acknowledged_by,omitempty"`
	Note           string     `json:"note,omitempty"`
}

const deviationColumns = `x.id, x.lot_id, lo.code, dev.key, x.device_id, x.run_id, r.code, v.number, x.version_id, x.metric, x.unit,
	x.limit_crossed, x.lower_limit, x.upper_limit, x.setpoint, x.started_at, x.ended_at, x.worst_value, x.worst_at, x.points,
	x.acknowledged_at, x.acknowledged_by, x.ack_note`

const deviationFrom = ` FROM recipe_deviations x
	JOIN lots lo ON lo.id = x.lot_id
	JOIN devices dev ON dev.id = x.device_id
	JOIN recipe_versions v ON v.id = x.version_id
	JOIN recipes r ON r.id = v.recipe_id`

func scanDeviation(row pgx.CollectableRow) (Deviation, error) {
	var d Deviation
	var by []byte
	if err := row.Scan(&d.ID, &d.LotID, &d.Lot, &d.Device, &d.DeviceID, &d.RunID, &d.Recipe, &d.Version, &d.VersionID, &d.Metric, &d.Unit,
		&d.LimitCrossed, &d.Lower, &d.Upper, &d.Setpoint, &d.StartedAt, &d.EndedAt, &d.WorstValue, &d.WorstAt, &d.Points,
		&d.AcknowledgedAt, &by, &d.Note); err != nil {
		return d, err
	}
	d.Open = d.EndedAt == nil
	d.Acknowledged = d.AcknowledgedAt != nil
	d.Limit = d.Upper
	if d.LimitCrossed == Lower {
		d.Limit = d.Lower
	}
	if len(by) > 0 {
		var a Actor
		if err := json.Unmarshal(by, &a); err != nil {
			return d, err
		}
		d.AcknowledgedBy = &a
	}
	return d, nil
}

// DeviationQuery filters deviations; empty fields match all.
type DeviationQuery struct {
	Lot          string // code or id
	Device       string // key or id
	State        string // open or closed
	Acknowledged string // true or false
	Limit        int
	// Cursor is next_cursor of the previous page.
	Cursor string
}

// DeviationPage is a page of deviations.
type DeviationPage struct {
	Items      []Deviation `json:"items"`
	NextCursor string      `json:"next_cursor,omitempty"`
}

// Deviations lists deviations, newest first, a page of at most Limit
// (default 100, at most 1000). Errors: invalid (field state, acknowledged,
// limit or cursor), not_found (the lot or device of a filter).
func (s *Service) Deviations(ctx context.Context, q DeviationQuery) (DeviationPage, error) {
	page := DeviationPage{Items: []Deviation{}}
	cur, err := parseCursor(q.Cursor)
	if err != nil {
		return page, err
	}
	if q.State != "" && q.State != "open" && q.State != "closed" {
		return page, apps.FieldError("state", "state is open or closed")
	}
	if q.Acknowledged != "" && q.Acknowledged != "true" && q.Acknowledged != "false" {
		return page, apps.FieldError("acknowledged", "acknowledged is true or false")
	}
	if q.Limit == 0 {
		q.Limit = 100
	}
	if q.Limit > 1000 {
		return page, apps.FieldError("limit", "limit is at most 1000")
	}
	err = tenants.InTx(ctx, s.db.App, func(tx pgx.Tx) error {
		lot, err := resolveRef(ctx, tx, "lots", "lot", q.Lot)
		if err != nil {
			return err
		}
		device, err := resolveRef(ctx, tx, "devices", "device", q.Device)
		if err != nil {
			return err
		}
		rows, err := tx.Query(ctx, `SELECT `+deviationColumns+deviationFrom+`
			WHERE ($1::uuid IS NULL OR x.lot_id = $1) AND ($2::uuid IS NULL OR x.device_id = $2)
			  AND ($3 = '' OR ($3 = 'open') = (x.ended_at IS NULL))
			  AND ($4 = '' OR ($4 = 'true') = (x.acknowledged_at IS NOT NULL))
			  AND ($6::timestamptz IS NULL OR (x.started_at, x.id) < ($6, $7))
			ORDER BY x.started_at DESC, x.id DESC LIMIT $5`, lot, device, q.State, q.Acknowledged, q.Limit+1, cur.at, cur.id)
		if err != nil {
			return err
		}
		items, err := pgx.CollectRows(rows, scanDeviation)
		if err != nil {
			return err
		}
		if len(items) > q.Limit {
			items = items[:q.Limit]
			last := items[len(items)-1]
			page.NextCursor = cursor{at: &last.StartedAt, id: last.ID}.String()
		}
		page.Items = append(page.Items, items...)
		return nil
	})
	return page, err
}

// Deviation returns one deviation. Errors: not_found.
func (s *Service) Deviation(ctx context.Context, id string) (Deviation, error) {
	var out Deviation
	err := tenants.InTx(ctx, s.db.App, func(tx pgx.Tx) error {
		var err error
		out, err = deviation(ctx, tx, id)
		return err
	})
	return out, err
}

func deviation(ctx context.Context, tx pgx.Tx, id string) (Deviation, error) {
	uid, err := uuid.Parse(id)
	if err != nil {
		return Deviation{}, apps.Errorf(apps.NotFound, "recipe deviation not found")
	}
	rows, err := tx.Query(ctx, `SELECT `+deviationColumns+deviationFrom+` WHERE x.id = $1`, uid)
	if err != nil {
		return Deviation{}, err
	}
	d, err := pgx.CollectExactlyOneRow(rows, scanDeviation)
	return d, tenants.StoreError(err, "recipe deviation")
}

// AcknowledgeInput acknowledges a deviation with a note (may be empty).
type AcknowledgeInput struct {
	Note string `json:"note"`
}

// Acknowledge records that a person saw a deviation. Errors: not_found,
// conflict (already acknowledged), invalid (field note).
func (s *Service) Acknowledge(ctx context.Context, id string, in AcknowledgeInput) (Deviation, error) {
	in.Note = strings.TrimSpace(in.Note)
	if len(in.Note) > maxText {
		return Deviation{}, apps.FieldError("note", "note is at most %d bytes", maxText)
	}
	var out Deviation
	err := tenants.InTx(ctx, s.db.App, func(tx pgx.Tx) error {
		d, err := deviation(ctx, tx, id)
		if err != nil {
			return err
		}
		tag, err := tx.Exec(ctx, `UPDATE recipe_deviations SET acknowledged_at = now(), acknowledged_by = $2, ack_note = $3
			WHERE id = $1 AND acknowledged_at IS NULL`, d.ID, actorJSON(ctx), in.Note)
		if err != nil {
			return err
		}
		if tag.RowsAffected() == 0 {
			return apps.Errorf(apps.Conflict, "recipe deviation %s was already acknowledged", d.ID)
		}
		out, err = deviation(ctx, tx, id)
		return err
	})
	return out, err
}

// LotDetails returns each lot's recipe deviations (key "deviations" of a
// trace node): every lot asked for gets a list, empty when it has none. q is
// a transaction scoped to the tenant.
func (s *Service) LotDetails(ctx context.Context, q tenants.Querier, lotIDs []uuid.UUID) (map[uuid.UUID]any, error) {
	out := make(map[uuid.UUID]any, len(lotIDs))
	lists := make(map[uuid.UUID][]Deviation, len(lotIDs))
	for _, id := range lotIDs {
		lists[id] = []Deviation{}
	}
	rows, err := q.Query(ctx, `SELECT `+deviationColumns+deviationFrom+` WHERE x.lot_id = ANY($1) ORDER BY x.started_at, x.id`, lotIDs)
	if err != nil {
		return nil, err
	}
	ds, err := pgx.CollectRows(rows, scanDeviation)
	if err != nil {
		return nil, err
	}
	for _, d := range ds {
		lists[d.LotID] = append(lists[d.LotID], d)
	}
	for id, l := range lists {
		out[id] = l
	}
	return out, nil
}
