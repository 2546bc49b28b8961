package ingest

import (
	"context"
	"encoding/json"
	"errors"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgtype"

	"github.com/nxcloud/nxcloud/broker"
	"github.com/nxcloud/nxcloud/tenants"
)

var telemetryColumns = []string{"ts", "tenant_id", "device_id", "metric_id", "value"}

// writeLoop collects items into batches of about BatchPoints points, or what
// arrived within FlushInterval of the first, and writes each batch.
func (p *Pipeline) writeLoop() {
	var batch []Item
	points := 0
	timer := time.NewTimer(time.Hour)
	timer.Stop()
	flush := func() {
		if len(batch) == 0 {
			return
		}
		p.writeBatch(batch, points)
		batch, points = batch[:0:0], 0
	}
	for {
		var it Item
		var ok bool
		if len(batch) == 0 {
			it, ok = <-p.items
			if !ok {
				return
			}
			timer.Reset(p.cfg.FlushInterval)
		} else {
			select {
			case it, ok = <-p.items:
				if !ok {
					timer.Stop()
					flush()
					return
				}
			case <-timer.C:
				flush()
				continue
			}
		}
		batch = append(batch, it)
		points += len(it.Points)
		if points >= p.cfg.BatchPoints {
			timer.Stop()
			flush()
		}
	}
}

// writeBatch writes one batch in one transaction, retrying with backoff while
// the database fails. Memory stays bounded meanwhile: the batch's points keep
// their room, so new QoS 1 publishes wait and QoS 0 ones are dropped.
func (p *Pipeline) writeBatch(batch []Item, points int) {
	ctx := context.Background()
	backoff := 100 * time.Millisecond
	for attempt := 1; ; attempt++ {
		start := time.Now()
		err := p.copyBatch(ctx, batch)
		if err == nil {
			now := time.Now()
			metricBatchSeconds.Observe(now.Sub(start).Seconds())
			p.stats.Batches.Add(1)
			p.stats.PointsCommitted.Add(int64(points))
			p.stats.Queued.Add(-int64(points))
			metricPointsCommitted.Add(float64(points))
			for _, it := range batch {
				metricCommitLatency.Observe(now.Sub(it.Received).Seconds())
			}
			if p.hot != nil {
				p.hot.Latest(batch)
			}
			if p.cfg.OnCommit != nil {
				p.cfg.OnCommit(now, batch)
			}
			p.room.Release(int64(points))
			return
		}
		p.stats.WriteErrors.Add(1)
		metricWriteErrors.Inc()
		p.log.Error("ingest: write failed, retrying", "points", points, "attempt", attempt, "retry_in", backoff, "err", err)
		time.Sleep(backoff)
		backoff = min(backoff*2, 5*time.Second)
	}
}

func (p *Pipeline) copyBatch(ctx context.Context, batch []Item) error {
	return pgx.BeginFunc(ctx, p.pool, func(tx pgx.Tx) error {
		lo, hi, err := CopyItems(ctx, tx, batch)
		if err != nil {
			return err
		}
		if p.cfg.RecordInvalidations {
			if _, err := tx.Exec(ctx, `INSERT INTO telemetry_invalidation (lo, hi) VALUES ($1, $2)`, lo, hi); err != nil {
				return err
			}
		}
		return nil
	})
}

// CopyItems writes the points of items into the telemetry table with one
// COPY, the way ingest's writers do, and returns their time range. The
// benchmark uses it to measure the raw COPY limit on the same code path.
func CopyItems(ctx context.Context, tx pgx.Tx, items []Item) (lo, hi time.Time, err error) {
	src := &batchSource{items: items, row: make([]any, 5), ids: make([][2]pgtype.UUID, len(items))}
	for i, it := range items {
		src.ids[i] = [2]pgtype.UUID{{Bytes: it.Tenant, Valid: true}, {Bytes: it.Device, Valid: true}}
	}
	_, err = tx.CopyFrom(ctx, pgx.Identifier{"telemetry"}, telemetryColumns, src)
	return src.lo, src.hi, err
}

// batchSource feeds a batch to CopyFrom without building a [][]any, and notes
// the batch's time range. Ids are passed as pgtype.UUID: pgx encodes a
// uuid.UUID through reflection, which measured 4x slower for the whole COPY.
type batchSource struct {
	items  []Item
	ids    [][2]pgtype.UUID
	i, j   int
	row    []any
	lo, hi time.Time
}

func (s *batchSource) Next() bool {
	for s.i < len(s.items) {
		if s.j < len(s.items[s.i].Points) {
			it := &s.items[s.i]
			pt := it.Points[s.j]
			s.j++
			if s.lo.IsZero() || pt.TS.Before(s.lo) {
				s.lo = pt.TS
			}
			if pt.TS.After(s.hi) {
				s.hi = pt.TS
			}
			s.row[0], s.row[1], s.row[2], s.row[3], s.row[4] = pt.TS, s.ids[s.i][0], s.ids[s.i][1], pt.MetricID, pt.Value
			return true
		}
		s.i, s.j = s.i+1, 0
	}
	return false
}

func (s *batchSource) Values() ([]any, error) { return s.row, nil }
func (s *batchSource) Err() error             { return nil }

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
}

// maxStoredPayload is how much of a rejected payload is kept.
const maxStoredPayload = 4096

func (p *Pipeline) deadLetter(id tenants.Identity, m broker.Message, r Rejection) {
	metricRejected.WithLabelValues(r.Reason).Inc()
	payload := m.Payload
	if len(payload) > maxStoredPayload {
		payload = payload[:maxStoredPayload]
	}
	d := DeadLetter{
		Tenant: id.TenantID, Device: id.DeviceID, Received: m.Received, Topic: m.Topic.String(),
		Reason: r.Reason, Detail: cleanText(r.Detail), Payload: cleanText(string(payload)), Size: len(m.Payload),
	}
	p.mu.RLock()
	defer p.mu.RUnlock()
	if p.closing {
		p.stats.DeadDropped.Add(1)
		return
	}
	p.queueDead(d)
}

// queueDead queues a dead letter without ever blocking: a full queue counts
// and drops it. The dead channel is closed only after every producer stopped.
func (p *Pipeline) queueDead(d DeadLetter) {
	select {
	case p.dead <- d:
	default:
		p.stats.DeadDropped.Add(1)
	}
}

// cleanText makes a string storable in a text column: valid UTF-8, no NUL.
func cleanText(s string) string {
	if !utf8.ValidString(s) {
		s = strings.ToValidUTF8(s, "\uFFFD")
	}
	return strings.ReplaceAll(s, "\x00", "\uFFFD")
}

var deadColumns = []string{"tenant_id", "device_id", "received_at", "topic", "reason", "detail", "payload", "payload_size"}

func (p *Pipeline) deadLoop() {
	drain(p.dead, 500, 200*time.Millisecond, func(batch []DeadLetter) {
		rows := make([][]any, len(batch))
		for i, d := range batch {
			rows[i] = []any{d.Tenant, d.Device, d.Received, d.Topic, d.Reason, d.Detail, d.Payload, d.Size}
		}
		_ = p.retry("dead letters", func(ctx context.Context) error {
			_, err := p.pool.CopyFrom(ctx, pgx.Identifier{"dead_letters"}, deadColumns, pgx.CopyFromRows(rows))
			return err
		})
		p.stats.DeadLetters.Add(int64(len(batch)))
	})
}

type event struct {
	tenant, device uuid.UUID
	topic          string
	kind, name     string
	ts             time.Time
	payload        []byte
}

func (p *Pipeline) handleEvent(m broker.Message) {
	kind := map[string]string{"events": "event", "state": "state", "cmd_reply": "cmd_reply"}[m.Topic.Kind]
	ts := m.Received.UTC().Truncate(time.Microsecond)
	reject := func(reason, detail string) {
		p.stats.PointsRejected.Add(1)
		p.deadLetter(m.Identity, m, Rejection{Reason: reason, Detail: detail})
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
	e := event{tenant: m.Identity.TenantID, device: m.Identity.DeviceID, topic: m.Topic.String(), kind: kind, name: m.Topic.Name, ts: ts,
		payload: append([]byte(nil), m.Payload...)}
	p.mu.RLock()
	defer p.mu.RUnlock()
	if p.closing {
		return
	}
	select {
	case p.events <- e:
	default:
		p.stats.PointsDropped.Add(1)
		p.log.Warn("ingest: event queue full, event dropped", "device", m.Identity.DeviceKey)
	}
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

var eventColumns = []string{"tenant_id", "device_id", "kind", "name", "ts", "payload"}

func (p *Pipeline) eventLoop() {
	drain(p.events, 500, 100*time.Millisecond, func(batch []event) {
		rows := make([][]any, len(batch))
		for i, e := range batch {
			rows[i] = []any{e.tenant, e.device, e.kind, e.name, e.ts, string(e.payload)}
		}
		err := p.retry("device events", func(ctx context.Context) error {
			_, err := p.pool.CopyFrom(ctx, pgx.Identifier{"device_events"}, eventColumns, pgx.CopyFromRows(rows))
			return err
		})
		if err == nil {
			return
		}
		// Some row is data PostgreSQL refuses (e.g. a JSON escape jsonb rejects):
		// write one by one and dead-letter the refused ones.
		for i, e := range batch {
			err := p.retry("device event", func(ctx context.Context) error {
				_, err := p.pool.CopyFrom(ctx, pgx.Identifier{"device_events"}, eventColumns, pgx.CopyFromRows(rows[i:i+1]))
				return err
			})
			if err != nil {
				p.stats.PointsRejected.Add(1)
				d := DeadLetter{Tenant: e.tenant, Device: e.device, Received: time.Now(), Topic: e.topic,
					Reason: ReasonMalformed, Detail: cleanText("refused by the database: " + err.Error()),
					Payload: cleanText(string(e.payload[:min(len(e.payload), maxStoredPayload)])), Size: len(e.payload)}
				p.queueDead(d)
			}
		}
	})
}

// retry runs fn until it succeeds, backing off, or until it fails with an
// error about the data (SQLSTATE class 22 or 23), which it returns: retrying
// would fail forever.
func (p *Pipeline) retry(what string, fn func(context.Context) error) error {
	backoff := 100 * time.Millisecond
	for {
		err := fn(context.Background())
		if err == nil {
			return nil
		}
		var pe *pgconn.PgError
		if errors.As(err, &pe) && (strings.HasPrefix(pe.Code, "22") || strings.HasPrefix(pe.Code, "23")) {
			return err
		}
		p.log.Error("ingest: write failed, retrying", "what", what, "retry_in", backoff, "err", err)
		time.Sleep(backoff)
		backoff = min(backoff*2, 5*time.Second)
	}
}

// drain reads ch into batches of up to n, flushing at least every d, until ch
// is closed.
func drain[T any](ch <-chan T, n int, d time.Duration, write func([]T)) {
	var batch []T
	tick := time.NewTicker(d)
	defer tick.Stop()
	for {
		select {
		case v, ok := <-ch:
			if !ok {
				if len(batch) > 0 {
					write(batch)
				}
				return
			}
			batch = append(batch, v)
			if len(batch) >= n {
				write(batch)
				batch = nil
			}
		case <-tick.C:
			if len(batch) > 0 {
				write(batch)
				batch = nil
			}
		}
	}
}
