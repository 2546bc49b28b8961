package ingest

import (
	"context"
	"log/slog"
	"strconv"
	"sync"
	"time"

	"github.com/google/uuid"
	"github.com/redis/go-redis/v9"
)

// Hot keeps each device's latest values, last-seen time and connection state
// in Redis. Updates are coalesced in memory and flushed in one pipeline every
// interval, so Redis sees one write per device per interval whatever the
// message rate. Redis is never on the durability path: when it is down, ingest
// goes on and the API falls back to the database.
//
// Keys (tenant t, device d):
//
//	nx:{t}:latest:{d}  hash metric_id → "<unix ms>:<value>"
//	nx:{t}:seen        sorted set device_id, score = last message time (unix ms)
//	nx:{t}:online      hash device_id → connected-since (unix ms)
type Hot struct {
	rdb      redis.UniversalClient
	interval time.Duration
	log      *slog.Logger

	mu     sync.Mutex
	latest map[deviceKey]map[int32]latestValue
	seen   map[deviceKey]time.Time
	conn   map[deviceKey]connState
	// online is every device connected now, kept so the presence hash can
	// be written again in full: after a Redis restart (or flushes lost while
	// it was away) presence recovers by itself within resyncEvery.
	online      map[deviceKey]time.Time
	resyncEvery time.Duration
	lastResync  time.Time

	stop chan struct{}
	done chan struct{}
}

type deviceKey struct{ tenant, device uuid.UUID }

type latestValue struct {
	ts time.Time
	v  float64
}

type connState struct {
	up bool
	at time.Time
}

// NewHot returns a Hot writing to rdb every interval.
func NewHot(rdb redis.UniversalClient, interval time.Duration, log *slog.Logger) *Hot {
	if interval <= 0 {
		interval = 500 * time.Millisecond
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	h := &Hot{rdb: rdb, interval: interval, log: log, stop: make(chan struct{}), done: make(chan struct{}),
		latest: map[deviceKey]map[int32]latestValue{}, seen: map[deviceKey]time.Time{}, conn: map[deviceKey]connState{},
		online: map[deviceKey]time.Time{}, resyncEvery: 30 * time.Second, lastResync: time.Now()}
	go h.loop()
	return h
}

// Latest records the newest point of each metric in a committed batch.
func (h *Hot) Latest(batch []Item) {
	h.mu.Lock()
	defer h.mu.Unlock()
	for _, it := range batch {
		k := deviceKey{it.Tenant, it.Device}
		m := h.latest[k]
		if m == nil {
			m = map[int32]latestValue{}
			h.latest[k] = m
		}
		for _, p := range it.Points {
			if cur, ok := m[p.MetricID]; !ok || !p.TS.Before(cur.ts) {
				m[p.MetricID] = latestValue{p.TS, p.Value}
			}
		}
	}
}

// Seen records that a device sent a message at t.
func (h *Hot) Seen(tenant, device uuid.UUID, t time.Time) {
	h.mu.Lock()
	h.seen[deviceKey{tenant, device}] = t
	h.mu.Unlock()
}

// Connected records a device's connection state.
func (h *Hot) Connected(tenant, device uuid.UUID, up bool) {
	h.mu.Lock()
	k, now := deviceKey{tenant, device}, time.Now()
	h.conn[k] = connState{up, now}
	if up {
		h.online[k] = now
	} else {
		delete(h.online, k)
	}
	h.mu.Unlock()
}

// Close flushes once more and stops.
func (h *Hot) Close() {
	close(h.stop)
	<-h.done
}

func (h *Hot) loop() {
	defer close(h.done)
	t := time.NewTicker(h.interval)
	defer t.Stop()
	for {
		select {
		case <-t.C:
			h.flush()
		case <-h.stop:
			h.flush()
			return
		}
	}
}

func (h *Hot) flush() {
	h.mu.Lock()
	latest, seen, conn := h.latest, h.seen, h.conn
	if time.Since(h.lastResync) >= h.resyncEvery {
		h.lastResync = time.Now()
		for k, at := range h.online {
			if _, changed := conn[k]; !changed {
				conn[k] = connState{up: true, at: at}
			}
		}
	}
	if len(latest)+len(seen)+len(conn) == 0 {
		h.mu.Unlock()
		return
	}
	h.latest, h.seen, h.conn = map[deviceKey]map[int32]latestValue{}, map[deviceKey]time.Time{}, map[deviceKey]connState{}
	h.mu.Unlock()

	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	pipe := h.rdb.Pipeline()
	for k, m := range latest {
		vals := make([]any, 0, 2*len(m))
		for id, v := range m {
			vals = append(vals, strconv.Itoa(int(id)), strconv.FormatInt(v.ts.UnixMilli(), 10)+":"+strconv.FormatFloat(v.v, 'g', -1, 64))
		}
		pipe.HSet(ctx, LatestKey(k.tenant, k.device), vals...)
	}
	for k, t := range seen {
		pipe.ZAddGT(ctx, SeenKey(k.tenant), redis.Z{Score: float64(t.UnixMilli()), Member: k.device.String()})
	}
	for k, c := range conn {
		if c.up {
			pipe.HSet(ctx, OnlineKey(k.tenant), k.device.String(), c.at.UnixMilli())
		} else {
			pipe.HDel(ctx, OnlineKey(k.tenant), k.device.String())
		}
	}
	if _, err := pipe.Exec(ctx); err != nil {
		metricHotErrors.Inc()
		h.log.Warn("ingest: hot state update failed (API falls back to the database)", "err", err)
	}
}

// LatestKey is the Redis hash of a device's latest values.
func LatestKey(tenant, device uuid.UUID) string {
	return "nx:" + tenant.String() + ":latest:" + device.String()
}

// SeenKey is the Redis sorted set of a tenant's devices by last message time.
func SeenKey(tenant uuid.UUID) string { return "nx:" + tenant.String() + ":seen" }

// OnlineKey is the Redis hash of a tenant's connected devices.
func OnlineKey(tenant uuid.UUID) string { return "nx:" + tenant.String() + ":online" }
