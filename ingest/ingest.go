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
	"github.com/jackc/pgx/v5/pgxpool"
	"golang.org/x/sync/semaphore"

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
	// MaxQueuedPoints bounds the points accepted but not yet committed: the
	// pipeline's memory. Beyond it QoS 1 publishes wait (back-pressure) and QoS 0
	// ones are dropped and counted.
	MaxQueuedPoints int
	// EnqueueTimeout is how long a QoS 1 publish may wait for room before it is
	// refused (the broker then withholds the PUBACK and the device re-sends).
	EnqueueTimeout time.Duration
	// Limits bound each payload.
	Limits Limits
	// RecordInvalidations makes writers log the time range of each batch for the
	// rollup job (plain-PostgreSQL storage; TimescaleDB tracks this itself).
	RecordInvalidations bool
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
	if c.MaxQueuedPoints <= 0 {
		c.MaxQueuedPoints = 500000
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
type Pipeline struct {
	cfg     Config
	pool    *pgxpool.Pool
	schemas *schemaCache
	hot     *Hot
	log     *slog.Logger

	room   *semaphore.Weighted
	items  chan Item
	dead   chan DeadLetter
	events chan event

	// mu guards closing and the channels: senders hold it shared, Close
	// exclusively, so nothing is sent on a closed channel.
	mu       sync.RWMutex
	closing  bool
	stopOnce sync.Once
	wg       sync.WaitGroup // telemetry and event writers
	deadWG   sync.WaitGroup // the dead-letter writer, stopped last
	closed   chan struct{}
	// stop is closed first by Close, so a Handle blocked on a full queue lets
	// go of mu and Close can take it.
	stop  chan struct{}
	stats Stats
}

// Stats are the pipeline's counters since start.
type Stats struct {
	Messages        atomic.Int64
	PointsAccepted  atomic.Int64
	PointsCommitted atomic.Int64
	PointsRejected  atomic.Int64
	PointsDropped   atomic.Int64
	DeadLetters     atomic.Int64
	DeadDropped     atomic.Int64
	Batches         atomic.Int64
	WriteErrors     atomic.Int64
	Queued          atomic.Int64
}

// maxDeadPerMessage bounds the dead letters one message can produce.
const maxDeadPerMessage = 20

// ErrOverloaded is returned by Handle when a QoS 1 message found no room
// within the enqueue timeout, or the pipeline is shutting down.
var ErrOverloaded = errors.New("ingest: overloaded, retry later")

// New returns a pipeline writing to pool (a connection that bypasses RLS:
// batches mix tenants). hot may be nil.
func New(cfg Config, pool *pgxpool.Pool, schemas SchemaSource, hot *Hot) *Pipeline {
	cfg.defaults()
	return &Pipeline{
		cfg:     cfg,
		pool:    pool,
		schemas: newSchemaCache(schemas, 30*time.Second),
		hot:     hot,
		log:     cfg.Logger,
		room:    semaphore.NewWeighted(int64(cfg.MaxQueuedPoints)),
		items:   make(chan Item, 4096),
		dead:    make(chan DeadLetter, 4096),
		events:  make(chan event, 4096),
		closed:  make(chan struct{}),
		stop:    make(chan struct{}),
	}
}

// Stats returns the live counters.
func (p *Pipeline) Stats() *Stats { return &p.stats }

// Start launches the writers. They run until Close.
func (p *Pipeline) Start() {
	for i := 0; i < p.cfg.Writers; i++ {
		p.wg.Add(1)
		go func() { defer p.wg.Done(); p.writeLoop() }()
	}
	p.wg.Add(1)
	go func() { defer p.wg.Done(); p.eventLoop() }()
	p.deadWG.Add(1)
	go func() { defer p.deadWG.Done(); p.deadLoop() }()
}

// Close stops accepting, writes what is queued (waiting at most until ctx is
// done) and stops the writers. Call it after the broker stopped.
func (p *Pipeline) Close(ctx context.Context) error {
	done := make(chan struct{})
	p.stopOnce.Do(func() {
		close(p.stop)
		p.mu.Lock()
		p.closing = true
		close(p.items)
		close(p.events)
		p.mu.Unlock()
		go func() {
			// The telemetry and event writers may still produce dead letters.
			p.wg.Wait()
			close(p.dead)
			p.deadWG.Wait()
			close(p.closed)
		}()
	})
	go func() { <-p.closed; close(done) }()
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("ingest: %d points not written before shutdown deadline: %w", p.stats.Queued.Load(), ctx.Err())
	}
}

// Handle implements broker.Sink: it decodes and validates the message, queues
// the accepted points and the rejections, and returns without waiting for the
// database. For QoS ≥ 1 it waits for room (back-pressure) up to the enqueue
// timeout; QoS 0 messages that find no room are dropped and counted.
func (p *Pipeline) Handle(ctx context.Context, m broker.Message) error {
	p.stats.Messages.Add(1)
	switch m.Topic.Kind {
	case "telemetry":
		return p.handleTelemetry(ctx, m)
	case "events", "state", "cmd_reply":
		p.handleEvent(m)
		return nil
	}
	return nil
}

func (p *Pipeline) handleTelemetry(ctx context.Context, m broker.Message) error {
	id := m.Identity
	schema, err := p.schemas.get(ctx, id.ModelID)
	if err != nil {
		// The database is unreachable: refuse so the device re-sends.
		p.log.Warn("ingest: device model lookup failed", "device", id.DeviceKey, "err", err)
		if m.QoS > 0 {
			return ErrOverloaded
		}
		p.stats.PointsDropped.Add(1)
		return nil
	}
	points, rejects := Decode(m.Payload, schema, m.Received, p.cfg.Limits, nil)
	p.stats.PointsRejected.Add(int64(len(rejects)))
	if len(rejects) > maxDeadPerMessage {
		// A hostile payload can hold a hundred thousand bad parts: keep the first
		// ones and say how many more there were, in one more row.
		more := len(rejects) - (maxDeadPerMessage - 1)
		last := rejects[maxDeadPerMessage-1]
		rejects = append(rejects[:maxDeadPerMessage-1:maxDeadPerMessage-1], Rejection{Reason: last.Reason,
			Detail: fmt.Sprintf("%s; and %d more rejected parts in this message", last.Detail, more-1)})
	}
	for _, r := range rejects {
		p.deadLetter(id, m, r)
	}
	if len(points) == 0 {
		return nil
	}
	n := int64(len(points))
	if m.QoS == 0 {
		if !p.room.TryAcquire(n) {
			p.stats.PointsDropped.Add(n)
			return nil
		}
	} else {
		wctx, cancel := context.WithTimeout(ctx, p.cfg.EnqueueTimeout)
		err := p.room.Acquire(wctx, n)
		cancel()
		if err != nil {
			return ErrOverloaded
		}
	}
	p.mu.RLock()
	defer p.mu.RUnlock()
	if p.closing {
		p.room.Release(n)
		return ErrOverloaded
	}
	p.stats.PointsAccepted.Add(n)
	p.stats.Queued.Add(n)
	select {
	case p.items <- Item{Tenant: id.TenantID, Device: id.DeviceID, Received: m.Received, Points: points}:
	case <-p.stop:
		p.stats.PointsAccepted.Add(-n)
		p.stats.Queued.Add(-n)
		p.room.Release(n)
		return ErrOverloaded
	}
	if p.hot != nil {
		p.hot.Seen(id.TenantID, id.DeviceID, m.Received)
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
