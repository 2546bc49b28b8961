// Package ingest turns accepted MQTT publishes into stored telemetry: decode →
// validate against the device model → batch → CopyFrom by a small pool of
// writers, with rejected parts kept as dead letters and the latest values kept
// hot in Redis.
package ingest

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"sync"
	"sync/atomic"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/nxcloud/nxcloud/broker"
	"github.com/nxcloud/nxcloud/tenants"
)

// Config tunes the pipeline.
type Config struct {
	// BatchPoints is the number of points that triggers a write.
	BatchPoints int
	// FlushInterval bounds how long a point waits for its batch to fill.
	FlushInterval time.Duration
	// Writers is the number of concurrent writers (database connections).
	Writers int
	// Spool is where accepted messages wait for their commit (see spool.go):
	// with a directory, a QoS 1 message is acknowledged once it is fsynced
	// there; without one, once its rows are committed.
	Spool SpoolConfig
	// EnqueueTimeout is how long a QoS 1 publish may wait for room in the
	// spool before it is refused (the broker then withholds the PUBACK and
	// the device re-sends).
	EnqueueTimeout time.Duration
	// Limits bound each payload.
	Limits Limits
	// RecordInvalidations makes writers log the time range of each batch for the
	// rollup job (plain-PostgreSQL storage; TimescaleDB tracks this itself).
	RecordInvalidations bool
	// OnStored, when set, is called inside each batch's transaction with what
	// it stored per device (metering counts units in the transaction that
	// makes them durable). An error rolls the batch back; it is retried.
	OnStored func(ctx context.Context, tx pgx.Tx, usage []Usage) error
	// OnCommit, when set, is called by a writer after each committed batch.
	OnCommit func(committedAt time.Time, batch []Item)
	Logger   *slog.Logger
}

func (c *Config) defaults() {
	if c.BatchPoints <= 0 {
		c.BatchPoints = 10000
	}
	if c.FlushInterval <= 0 {
		c.FlushInterval = 50 * time.Millisecond
	}
	if c.Writers <= 0 {
		c.Writers = 3
	}
	if c.EnqueueTimeout <= 0 {
		c.EnqueueTimeout = 10 * time.Second
	}
	if c.Limits == (Limits{}) {
		c.Limits = DefaultLimits()
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	if c.Spool.Logger == nil {
		c.Spool.Logger = c.Logger
	}
}

// SchemaSource returns the metrics of a device model.
type SchemaSource interface {
	ModelMetrics(ctx context.Context, model uuid.UUID) ([]tenants.Metric, error)
}

// Item is the accepted points of one message.
type Item struct {
	Tenant   uuid.UUID
	Device   uuid.UUID
	Received time.Time
	Points   []Point
}

// Pipeline is the ingest path. It implements broker.Sink and broker.Presence.
//
// A publish is appended to the spool (Handle); for QoS 1 Handle returns, and
// the broker acknowledges, once the record is durable. One reader takes
// records from the spool in order, decodes and validates them into batches,
// and the writers store each batch in one transaction (telemetry, events,
// dead letters, metering); then the records are marked committed and the
// spool frees their segment.
type Pipeline struct {
	cfg     Config
	pool    *pgxpool.Pool
	schemas *schemaCache
	hot     *Hot
	log     *slog.Logger
	spool   *Spool

	batches chan batch

	// mu guards closing: Handle holds it shared, Close exclusively.
	mu       sync.RWMutex
	closing  bool
	stopOnce sync.Once
	wg       sync.WaitGroup // reader and writers
	closed   chan struct{}
	// stop is closed by Close: the reader returns what the spool holds and
	// stops; abort is closed when Close's deadline passes: writers stop
	// retrying (records stay in the spool for the next start).
	stop      chan struct{}
	abort     chan struct{}
	abortOnce sync.Once
	stats     Stats
}

// Stats are the pipeline's counters since start.
type Stats struct {
	Messages        atomic.Int64
	PointsCommitted atomic.Int64
	// PointsDuplicate counts points not stored because the same device,
	// metric and ts was already stored (a re-sent or replayed message).
	PointsDuplicate atomic.Int64
	PointsRejected  atomic.Int64
	// PointsDropped counts QoS 0 messages dropped (the spool was full).
	PointsDropped atomic.Int64
	DeadLetters   atomic.Int64
	Batches       atomic.Int64
	// BatchNanos is the time spent in committed batches' transactions.
	BatchNanos  atomic.Int64
	WriteErrors atomic.Int64
	// Refused counts QoS 1 messages refused (no room before the deadline, or
	// shutting down): not acknowledged, so the device sends them again.
	Refused atomic.Int64
}

// maxDeadPerMessage bounds the dead letters one message can produce.
const maxDeadPerMessage = 20

// ErrOverloaded is returned by Handle when a QoS 1 message found no room
// within the enqueue timeout, or the pipeline is shutting down.
var ErrOverloaded = errors.New("ingest: overloaded, retry later")

// New returns a pipeline writing to pool (a connection that bypasses RLS:
// batches mix tenants), with its spool opened (replaying what a previous run
// left). hot may be nil.
func New(cfg Config, pool *pgxpool.Pool, schemas SchemaSource, hot *Hot) (*Pipeline, error) {
	cfg.defaults()
	spool, err := OpenSpool(cfg.Spool)
	if err != nil {
		return nil, err
	}
	return &Pipeline{
		cfg:     cfg,
		pool:    pool,
		schemas: newSchemaCache(schemas, 30*time.Second),
		hot:     hot,
		log:     cfg.Logger,
		spool:   spool,
		batches: make(chan batch, cfg.Writers),
		closed:  make(chan struct{}),
		stop:    make(chan struct{}),
		abort:   make(chan struct{}),
	}, nil
}

// Stats returns the live counters.
func (p *Pipeline) Stats() *Stats { return &p.stats }

// Spool returns the state of the spool (backlog, budget, durability).
func (p *Pipeline) Spool() SpoolStats { return p.spool.Stats() }

// SpoolFsyncs returns the spool's group fsyncs so far and the time spent in
// their writes and fsyncs.
func (p *Pipeline) SpoolFsyncs() (int64, time.Duration) {
	return p.spool.Fsyncs.Load(), time.Duration(p.spool.FsyncNanos.Load())
}

// Start launches the reader and the writers. They run until Close.
func (p *Pipeline) Start() {
	p.wg.Add(1)
	go func() { defer p.wg.Done(); p.readLoop() }()
	for i := 0; i < p.cfg.Writers; i++ {
		p.wg.Add(1)
		go func() { defer p.wg.Done(); p.writeLoop() }()
	}
}

// Close stops accepting, writes what the spool holds while ctx allows, and
// stops. Records not committed by then stay in the spool for the next start
// (memory mode: their publishers were never acknowledged). Call it after the
// broker stopped.
func (p *Pipeline) Close(ctx context.Context) error {
	p.stopOnce.Do(func() {
		p.mu.Lock()
		p.closing = true
		p.mu.Unlock()
		_ = p.spool.Close()
		close(p.stop)
		go func() { p.wg.Wait(); close(p.closed) }()
	})
	select {
	case <-p.closed:
		return nil
	case <-ctx.Done():
		p.abortOnce.Do(func() { close(p.abort) })
		<-p.closed
		st := p.spool.Stats()
		return fmt.Errorf("ingest: %d records not written before the shutdown deadline (kept in the spool: %v): %w",
			st.Pending, st.Durable, ctx.Err())
	}
}

// Handle implements broker.Sink: it appends the message to the spool. For
// QoS ≥ 1 it returns once the message is durable (fsynced in the spool, or
// committed in memory mode), waiting for room up to the enqueue timeout
// (back-pressure); ErrOverloaded means not accepted, and the broker withholds
// the acknowledgement. QoS 0 messages that find no room are dropped and
// counted. Decoding and validation happen in the writers.
func (p *Pipeline) Handle(ctx context.Context, m broker.Message) error {
	p.stats.Messages.Add(1)
	switch m.Topic.Kind {
	case broker.KindTelemetry, broker.KindEvents, broker.KindState, broker.KindCmdReply:
	default:
		return nil
	}
	p.mu.RLock()
	closing := p.closing
	p.mu.RUnlock()
	if closing {
		if m.QoS > 0 {
			p.stats.Refused.Add(1)
			return ErrOverloaded
		}
		p.stats.PointsDropped.Add(1)
		return nil
	}
	err := p.spool.Append(encodeRecord(m), m.QoS > 0, time.Now().Add(p.cfg.EnqueueTimeout))
	if err != nil {
		if m.QoS > 0 {
			p.stats.Refused.Add(1)
			if !errors.Is(err, ErrSpoolFull) && !errors.Is(err, errSpoolClosed) {
				p.log.Error("ingest: spool append failed", "device", m.Identity.DeviceKey, "err", err)
			}
			return ErrOverloaded
		}
		p.stats.PointsDropped.Add(1)
		return nil
	}
	if p.hot != nil {
		p.hot.Seen(m.Identity.TenantID, m.Identity.DeviceID, m.Received)
	}
	return nil
}

// Connected implements broker.Presence.
func (p *Pipeline) Connected(id tenants.Identity, remote string) {
	if p.hot != nil {
		p.hot.Connected(id.TenantID, id.DeviceID, true)
	}
}

// Disconnected implements broker.Presence.
func (p *Pipeline) Disconnected(id tenants.Identity) {
	if p.hot != nil {
		p.hot.Connected(id.TenantID, id.DeviceID, false)
	}
}

// schemaCache caches device-model schemas for ingest.
type schemaCache struct {
	src SchemaSource
	ttl time.Duration
	mu  sync.RWMutex
	m   map[uuid.UUID]schemaEntry
}

type schemaEntry struct {
	s  Schema
	at time.Time
}

func newSchemaCache(src SchemaSource, ttl time.Duration) *schemaCache {
	return &schemaCache{src: src, ttl: ttl, m: map[uuid.UUID]schemaEntry{}}
}

func (c *schemaCache) get(ctx context.Context, model uuid.UUID) (Schema, error) {
	c.mu.RLock()
	e, ok := c.m[model]
	c.mu.RUnlock()
	if ok && time.Since(e.at) < c.ttl {
		return e.s, nil
	}
	metrics, err := c.src.ModelMetrics(ctx, model)
	if err != nil {
		if ok {
			return e.s, nil // keep serving the last known schema while the database is away
		}
		return nil, err
	}
	return c.put(model, metrics), nil
}

func (c *schemaCache) put(model uuid.UUID, metrics []tenants.Metric) Schema {
	s := make(Schema, len(metrics))
	for _, x := range metrics {
		spec := MetricSpec{ID: x.ID, Min: math.Inf(-1), Max: math.Inf(1)}
		if x.Min != nil {
			spec.Min = *x.Min
		}
		if x.Max != nil {
			spec.Max = *x.Max
		}
		s[x.Key] = spec
	}
	c.mu.Lock()
	c.m[model] = schemaEntry{s: s, at: time.Now()}
	c.mu.Unlock()
	return s
}
