package ingest

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgtype"

	"github.com/nxcloud/nxcloud/broker"
)

// Usage is what one committed batch stored for one device: the units
// metering counts, in the transaction that stored them.
type Usage struct {
	Tenant, Device uuid.UUID
	// Stored is the telemetry rows inserted (duplicates of rows already
	// stored are not counted: they were not stored again).
	Stored int64
	// Rejected is the payload parts rejected into dead letters.
	Rejected int64
	// Events is the device events (events, states, command replies) stored.
	Events int64
}

// batch is what one writer transaction stores: the records it came from,
// their telemetry, events and dead letters.
type batch struct {
	recs   []spooled
	items  []Item
	events []event
	dead   []DeadLetter
	points int
}

type event struct {
	tenant, device uuid.UUID
	topic          string
	kind, name     string
	ts             time.Time
	payload        []byte
	received       time.Time
}

// DeadLetter is a rejected part of a message, kept for the tenant to see.
type DeadLetter struct {
	Tenant   uuid.UUID
	Device   uuid.UUID
	Received time.Time
	Topic    string
	Reason   string
	Detail   string
	Payload  string
	Size     int
	// Part numbers the dead letters of one message (its key with Device and
	// Received, so a replayed message's dead letters land once).
	Part int
	// Parts is how many rejected parts this row stands for (more than one
	// when a message's rejections were capped).
	Parts int
}

// maxStoredPayload is how much of a rejected payload is kept.
const maxStoredPayload = 4096

// readLoop reads records from the spool, turns them into batches and hands
// them to the writers, until the pipeline stops and the spool has nothing
// more to give.
func (p *Pipeline) readLoop() {
	defer close(p.batches)
	defer p.spool.closeReader()
	var b batch
	send := func() {
		if len(b.recs) == 0 {
			return
		}
		p.batches <- b
		b = batch{}
	}
	for {
		recs := p.spool.next(p.cfg.BatchPoints, p.cfg.FlushInterval, p.stop)
		if len(recs) == 0 {
			select {
			case <-p.stop:
				send()
				return
			default:
				continue
			}
		}
		for i, r := range recs {
			select {
			case <-p.abort:
				// Not written: the records stay in the spool for the next start.
				p.spool.done(append(b.recs, recs[i:]...), ErrOverloaded)
				return
			default:
			}
			p.prepare(&b, r)
			if b.points >= p.cfg.BatchPoints {
				send()
			}
		}
		send()
	}
}

// prepare decodes one record into b.
func (p *Pipeline) prepare(b *batch, r spooled) {
	b.recs = append(b.recs, r)
	m, err := decodeRecord(r.data)
	if err != nil {
		p.log.Error("ingest: skipping a malformed spool record", "bytes", len(r.data))
		return
	}
	switch m.Topic.Kind {
	case broker.KindTelemetry:
		p.prepareTelemetry(b, m)
	case broker.KindEvents, broker.KindState, broker.KindCmdReply:
		p.prepareEvent(b, m)
	}
}

func (p *Pipeline) prepareTelemetry(b *batch, m broker.Message) {
	id := m.Identity
	var schema Schema
	backoff := 100 * time.Millisecond
	for {
		var err error
		schema, err = p.schemas.get(context.Background(), id.ModelID)
		if err == nil {
			break
		}
		// The database is away: the record waits in the spool meanwhile.
		p.log.Warn("ingest: device model lookup failed, retrying", "device", id.DeviceKey, "retry_in", backoff, "err", err)
		select {
		case <-time.After(backoff):
		case <-p.abort:
			// Shutdown gave up waiting: the record stays in the spool for
			// the next start (its batch is never written).
			return
		}
		backoff = min(backoff*2, 5*time.Second)
	}
	points, rejects := Decode(m.Payload, schema, m.Received, p.cfg.Limits, nil)
	p.stats.PointsRejected.Add(int64(len(rejects)))
	parts := make([]int, len(rejects))
	for i := range parts {
		parts[i] = 1
	}
	if len(rejects) > maxDeadPerMessage {
		// A hostile payload can hold a hundred thousand bad parts: keep the first
		// ones and say how many more there were, in one more row.
		more := len(rejects) - (maxDeadPerMessage - 1)
		last := rejects[maxDeadPerMessage-1]
		rejects = append(rejects[:maxDeadPerMessage-1:maxDeadPerMessage-1], Rejection{Reason: last.Reason,
			Detail: fmt.Sprintf("%s; and %d more rejected parts in this message", last.Detail, more-1)})
		parts = parts[:maxDeadPerMessage]
		parts[maxDeadPerMessage-1] = more
	}
	for i, r := range rejects {
		b.dead = append(b.dead, p.deadLetter(m, r, i, parts[i]))
	}
	if len(points) > 0 {
		b.items = append(b.items, Item{Tenant: id.TenantID, Device: id.DeviceID, Received: m.Received, Points: points})
		b.points += len(points)
	}
}

func (p *Pipeline) deadLetter(m broker.Message, r Rejection, part, parts int) DeadLetter {
	metricRejected.WithLabelValues(r.Reason).Inc()
	payload := m.Payload
	if len(payload) > maxStoredPayload {
		payload = payload[:maxStoredPayload]
	}
	return DeadLetter{
		Tenant: m.Identity.TenantID, Device: m.Identity.DeviceID, Received: m.Received.UTC().Truncate(time.Microsecond),
		Topic: m.Topic.String(), Reason: r.Reason, Detail: cleanText(r.Detail), Payload: cleanText(string(payload)),
		Size: len(m.Payload), Part: part, Parts: parts,
	}
}

func (p *Pipeline) prepareEvent(b *batch, m broker.Message) {
	kind := map[string]string{broker.KindEvents: "event", broker.KindState: "state", broker.KindCmdReply: "cmd_reply"}[m.Topic.Kind]
	received := m.Received.UTC().Truncate(time.Microsecond)
	reject := func(reason, detail string) {
		p.stats.PointsRejected.Add(1)
		b.dead = append(b.dead, p.deadLetter(m, Rejection{Reason: reason, Detail: detail}, 0, 1))
	}
	if len(m.Payload) > p.cfg.Limits.MaxPayload {
		reject(ReasonTooLarge, "payload larger than the limit")
		return
	}
	var doc map[string]json.RawMessage
	if !utf8.Valid(m.Payload) || strings.Contains(string(m.Payload), `\u0000`) || json.Unmarshal(m.Payload, &doc) != nil {
		reject(ReasonMalformed, "an "+kind+" payload must be a JSON object in valid UTF-8 without \\u0000")
		return
	}
	ts := received
	if raw, ok := doc["ts"]; ok {
		t, err := parseEventTime(raw)
		if err != nil {
			reject(ReasonTimestamp, err.Error())
			return
		}
		if t.Before(m.Received.Add(-p.cfg.Limits.MaxAge)) || t.After(m.Received.Add(p.cfg.Limits.MaxFuture)) {
			reject(ReasonWindow, "ts outside the accepted window")
			return
		}
		ts = t
	}
	b.events = append(b.events, event{tenant: m.Identity.TenantID, device: m.Identity.DeviceID, topic: m.Topic.String(),
		kind: kind, name: m.Topic.Name, ts: ts, payload: m.Payload, received: received})
}

func parseEventTime(raw json.RawMessage) (time.Time, error) {
	var v any
	if err := json.Unmarshal(raw, &v); err != nil {
		return time.Time{}, err
	}
	switch x := v.(type) {
	case string:
		t, err := time.Parse(time.RFC3339Nano, x)
		if err != nil {
			return time.Time{}, errors.New("ts must be RFC 3339 or epoch milliseconds")
		}
		return t.UTC().Truncate(time.Microsecond), nil
	case float64:
		if x < 0 || x > 1e15 {
			return time.Time{}, errors.New("ts in epoch milliseconds is out of range")
		}
		return time.UnixMicro(int64(x * 1000)).UTC(), nil
	}
	return time.Time{}, errors.New("ts must be RFC 3339 or epoch milliseconds")
}

// cleanText makes a string storable in a text column: valid UTF-8, no NUL.
func cleanText(s string) string {
	if !utf8.ValidString(s) {
		s = strings.ToValidUTF8(s, "\uFFFD")
	}
	return strings.ReplaceAll(s, "\x00", "\uFFFD")
}

// writeLoop writes the batches the reader hands it.
func (p *Pipeline) writeLoop() {
	for b := range p.batches {
		p.writeBatch(b)
	}
}

// writeBatch writes one batch in one transaction, retrying with backoff while
// the database fails; its records stay in the spool meanwhile (and the spool's
// budget bounds how much can wait). An event PostgreSQL refuses as data (a
// JSON escape jsonb rejects) fails the batch; it is then written again with
// each event in a savepoint and the refused ones kept as dead letters.
func (p *Pipeline) writeBatch(b batch) {
	ctx := context.Background()
	backoff := 100 * time.Millisecond
	careful := false
	var rows copyRows
	if b.points > 0 {
		rows = encodeTelemetry(b.items)
	}
	for attempt := 1; ; attempt++ {
		start := time.Now()
		usage, stored, err := p.store(ctx, &b, rows, careful)
		if err == nil {
			now := time.Now()
			p.spool.done(b.recs, nil)
			metricBatchSeconds.Observe(now.Sub(start).Seconds())
			p.stats.Batches.Add(1)
			p.stats.BatchNanos.Add(int64(now.Sub(start)))
			p.stats.PointsCommitted.Add(stored)
			p.stats.PointsDuplicate.Add(int64(b.points) - stored)
			metricPointsCommitted.Add(float64(stored))
			for _, it := range b.items {
				metricCommitLatency.Observe(now.Sub(it.Received).Seconds())
			}
			var dead int64
			for _, u := range usage {
				dead += u.Rejected
			}
			p.stats.DeadLetters.Add(dead)
			if p.hot != nil {
				p.hot.Latest(b.items)
			}
			if p.cfg.OnCommit != nil {
				p.cfg.OnCommit(now, b.items)
			}
			return
		}
		var pe *pgconn.PgError
		if !careful && len(b.events) > 0 && errors.As(err, &pe) && strings.HasPrefix(pe.Code, "22") {
			careful = true
			continue
		}
		p.stats.WriteErrors.Add(1)
		metricWriteErrors.Inc()
		p.log.Error("ingest: write failed, retrying", "points", b.points, "events", len(b.events), "attempt", attempt,
			"retry_in", backoff, "err", err)
		select {
		case <-time.After(backoff):
		case <-p.abort:
			// Shutdown gave up waiting: the records stay in the spool (or,
			// in memory mode, their publishers are told it failed).
			p.spool.done(b.recs, ErrOverloaded)
			return
		}
		backoff = min(backoff*2, 5*time.Second)
	}
}

// store writes b in one transaction: telemetry (duplicates skipped), events,
// dead letters, the rollup invalidation and the metering hook.
func (p *Pipeline) store(ctx context.Context, b *batch, rows copyRows, careful bool) (map[[2]uuid.UUID]*Usage, int64, error) {
	usage := map[[2]uuid.UUID]*Usage{}
	use := func(t, d uuid.UUID) *Usage {
		k := [2]uuid.UUID{t, d}
		u := usage[k]
		if u == nil {
			u = &Usage{Tenant: t, Device: d}
			usage[k] = u
		}
		return u
	}
	var stored int64
	err := pgx.BeginFunc(ctx, p.pool, func(tx pgx.Tx) error {
		usage = map[[2]uuid.UUID]*Usage{}
		stored = 0
		if b.points > 0 {
			n, lo, hi, err := insertTelemetry(ctx, tx, b.items, rows, use)
			if err != nil {
				return err
			}
			stored = n
			if p.cfg.RecordInvalidations && n > 0 {
				if _, err := tx.Exec(ctx, `INSERT INTO telemetry_invalidation (lo, hi) VALUES ($1, $2)`, lo, hi); err != nil {
					return err
				}
			}
		}
		if len(b.events) > 0 {
			if err := p.insertEvents(ctx, tx, b, careful, use); err != nil {
				return err
			}
		}
		if len(b.dead) > 0 {
			if err := insertDead(ctx, tx, b.dead, use); err != nil {
				return err
			}
		}
		if p.cfg.OnStored != nil && len(usage) > 0 {
			list := make([]Usage, 0, len(usage))
			for _, u := range usage {
				list = append(list, *u)
			}
			if err := p.cfg.OnStored(ctx, tx, list); err != nil {
				return fmt.Errorf("metering: %w", err)
			}
		}
		return nil
	})
	return usage, stored, err
}

// insertTelemetry stores the batch's points (rows, encoded from items) in
// telemetry, skipping points already stored (same device, metric and ts), and
// counts what was inserted per device.
func insertTelemetry(ctx context.Context, tx pgx.Tx, items []Item, rows copyRows, use func(t, d uuid.UUID) *Usage) (int64, time.Time, time.Time, error) {
	// Fast path: duplicates are rare (a re-send after a lost PUBACK, a replay
	// after a crash), so COPY straight into the table, in a savepoint; only
	// when the unique key refuses a row does the batch take the slower path
	// that skips duplicates (measured: INSERT … SELECT … ON CONFLICT costs
	// about twice the COPY).
	sp, err := tx.Begin(ctx)
	if err != nil {
		return 0, time.Time{}, time.Time{}, err
	}
	_, err = copyTo(ctx, sp, copyTelemetrySQL, rows)
	if err == nil {
		if err := sp.Commit(ctx); err != nil {
			return 0, time.Time{}, time.Time{}, err
		}
		for _, it := range items {
			use(it.Tenant, it.Device).Stored += int64(len(it.Points))
		}
		return rows.rows, rows.lo, rows.hi, nil
	}
	var pe *pgconn.PgError
	if !errors.As(err, &pe) || pe.Code != "23505" {
		_ = sp.Rollback(ctx)
		return 0, time.Time{}, time.Time{}, err
	}
	if err := sp.Rollback(ctx); err != nil {
		return 0, time.Time{}, time.Time{}, err
	}
	return insertTelemetryDedup(ctx, tx, rows, use)
}

// insertTelemetryDedup is the path for a batch with points already stored.
func insertTelemetryDedup(ctx context.Context, tx pgx.Tx, rows copyRows, use func(t, d uuid.UUID) *Usage) (int64, time.Time, time.Time, error) {
	if _, err := tx.Exec(ctx, `CREATE TEMP TABLE IF NOT EXISTS telemetry_stage
		(ts timestamptz, tenant_id uuid, device_id uuid, metric_id integer, value double precision) ON COMMIT DELETE ROWS`); err != nil {
		return 0, time.Time{}, time.Time{}, err
	}
	if _, err := copyTo(ctx, tx, copyStageSQL, rows); err != nil {
		return 0, time.Time{}, time.Time{}, err
	}
	res, err := tx.Query(ctx, `
		WITH ins AS (
			INSERT INTO telemetry (ts, tenant_id, device_id, metric_id, value)
			SELECT ts, tenant_id, device_id, metric_id, value FROM telemetry_stage
			-- one key order for every writer: concurrent batches with
			-- overlapping keys wait for each other instead of deadlocking
			ORDER BY device_id, metric_id, ts
			ON CONFLICT DO NOTHING
			RETURNING tenant_id, device_id
		)
		SELECT tenant_id, device_id, count(*) FROM ins GROUP BY 1, 2`)
	if err != nil {
		return 0, time.Time{}, time.Time{}, err
	}
	defer res.Close()
	var total int64
	for res.Next() {
		var t, d pgtype.UUID
		var n int64
		if err := res.Scan(&t, &d, &n); err != nil {
			return 0, time.Time{}, time.Time{}, err
		}
		use(t.Bytes, d.Bytes).Stored += n
		total += n
	}
	return total, rows.lo, rows.hi, res.Err()
}

// CopyItems writes the points of items into the telemetry table with one
// plain COPY (no duplicate check), encoded as the writers encode them, and
// returns their time range. The benchmark uses it to measure the raw COPY
// limit on the same rows.
func CopyItems(ctx context.Context, tx pgx.Tx, items []Item) (lo, hi time.Time, err error) {
	rows := encodeTelemetry(items)
	_, err = copyTo(ctx, tx, copyTelemetrySQL, rows)
	return rows.lo, rows.hi, err
}

const insertEventsSQL = `
	INSERT INTO device_events (tenant_id, device_id, kind, name, ts, payload)
	SELECT * FROM unnest($1::uuid[], $2::uuid[], $3::text[], $4::text[], $5::timestamptz[], $6::text[]::jsonb[])
	ON CONFLICT DO NOTHING
	RETURNING tenant_id, device_id`

func (p *Pipeline) insertEvents(ctx context.Context, tx pgx.Tx, b *batch, careful bool, use func(t, d uuid.UUID) *Usage) error {
	count := func(rows pgx.Rows) error {
		defer rows.Close()
		for rows.Next() {
			var t, d pgtype.UUID
			if err := rows.Scan(&t, &d); err != nil {
				return err
			}
			use(t.Bytes, d.Bytes).Events++
		}
		return rows.Err()
	}
	args := func(evs []event) []any {
		ts, ds := make([]pgtype.UUID, len(evs)), make([]pgtype.UUID, len(evs))
		kinds, names, payloads := make([]string, len(evs)), make([]string, len(evs)), make([]string, len(evs))
		times := make([]time.Time, len(evs))
		for i, e := range evs {
			ts[i], ds[i] = pgtype.UUID{Bytes: e.tenant, Valid: true}, pgtype.UUID{Bytes: e.device, Valid: true}
			kinds[i], names[i], times[i], payloads[i] = e.kind, e.name, e.ts, string(e.payload)
		}
		return []any{ts, ds, kinds, names, times, payloads}
	}
	if !careful {
		rows, err := tx.Query(ctx, insertEventsSQL, args(b.events)...)
		if err != nil {
			return err
		}
		return count(rows)
	}
	for _, e := range b.events {
		sp, err := tx.Begin(ctx)
		if err != nil {
			return err
		}
		rows, err := sp.Query(ctx, insertEventsSQL, args([]event{e})...)
		if err == nil {
			err = count(rows)
		}
		var pe *pgconn.PgError
		if err != nil && errors.As(err, &pe) && strings.HasPrefix(pe.Code, "22") {
			_ = sp.Rollback(ctx)
			p.stats.PointsRejected.Add(1)
			b.dead = append(b.dead, DeadLetter{Tenant: e.tenant, Device: e.device, Received: e.received, Topic: e.topic,
				Reason: ReasonMalformed, Detail: cleanText("refused by the database: " + pe.Message),
				Payload: cleanText(string(e.payload[:min(len(e.payload), maxStoredPayload)])), Size: len(e.payload), Parts: 1})
			continue
		}
		if err != nil {
			_ = sp.Rollback(ctx)
			return err
		}
		if err := sp.Commit(ctx); err != nil {
			return err
		}
	}
	return nil
}

func insertDead(ctx context.Context, tx pgx.Tx, dead []DeadLetter, use func(t, d uuid.UUID) *Usage) error {
	n := len(dead)
	ts, ds := make([]pgtype.UUID, n), make([]pgtype.UUID, n)
	recv, parts := make([]time.Time, n), make([]int32, n)
	topics, reasons, details, payloads, sizes := make([]string, n), make([]string, n), make([]string, n), make([]string, n), make([]int32, n)
	weight := map[[3]any]int{}
	for i, d := range dead {
		ts[i], ds[i] = pgtype.UUID{Bytes: d.Tenant, Valid: true}, pgtype.UUID{Bytes: d.Device, Valid: true}
		recv[i], parts[i], topics[i], reasons[i], details[i], payloads[i], sizes[i] = d.Received, int32(d.Part), d.Topic, d.Reason, d.Detail, d.Payload, int32(d.Size)
		weight[[3]any{d.Device, d.Received.UnixMicro(), int32(d.Part)}] = max(d.Parts, 1)
	}
	rows, err := tx.Query(ctx, `
		INSERT INTO dead_letters (tenant_id, device_id, received_at, part, topic, reason, detail, payload, payload_size)
		SELECT * FROM unnest($1::uuid[], $2::uuid[], $3::timestamptz[], $4::int[], $5::text[], $6::text[], $7::text[], $8::text[], $9::int[])
		ON CONFLICT DO NOTHING
		RETURNING tenant_id, device_id, received_at, part`, ts, ds, recv, parts, topics, reasons, details, payloads, sizes)
	if err != nil {
		return err
	}
	defer rows.Close()
	for rows.Next() {
		var t, d pgtype.UUID
		var at time.Time
		var part int32
		if err := rows.Scan(&t, &d, &at, &part); err != nil {
			return err
		}
		use(t.Bytes, d.Bytes).Rejected += int64(weight[[3]any{uuid.UUID(d.Bytes), at.UnixMicro(), part}])
	}
	return rows.Err()
}
