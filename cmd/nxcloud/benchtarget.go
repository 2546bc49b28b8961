package main

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"sync"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/nxcloud/nxcloud/migrations"
	"github.com/nxcloud/nxcloud/tenants"
)

// benchTarget is the platform a bench measures: one started in-process, or a
// running one reached by MQTT and its database.
type benchTarget struct {
	external  bool
	brokerURL string
	sys       *pgxpool.Pool
	tenants   *tenants.Service
	flavor    string
	tenant    uuid.UUID
	probe     *prober
	platform  *platform // in-process only
	close     func()
}

func openBenchTarget(ctx context.Context, cfg config, target string, log *slog.Logger, lat *latencies) (*benchTarget, error) {
	if target == "" {
		p, err := startPlatform(ctx, cfg, log, platformOptions{onCommit: lat.add})
		if err != nil {
			return nil, err
		}
		_, port, _ := net.SplitHostPort(p.broker.TCPAddr())
		return &benchTarget{brokerURL: "tcp://127.0.0.1:" + port, sys: p.sys, tenants: p.tenants, flavor: p.flavor, platform: p,
			close: func() { _ = p.shutdown() }}, nil
	}
	sys, err := openPool(ctx, cfg.DatabaseURL, int32(cfg.IngestWriters+4))
	if err != nil {
		return nil, err
	}
	flavor, err := migrations.Flavor(ctx, sys)
	if err != nil {
		sys.Close()
		return nil, fmt.Errorf("%w (is --database-url the target's database?)", err)
	}
	templates, err := tenants.Templates()
	if err != nil {
		sys.Close()
		return nil, err
	}
	// Only operator-side calls are made: creating the bench tenant and devices.
	svc := tenants.NewService(tenants.DB{System: sys, App: sys}, templates, time.Second)
	return &benchTarget{external: true, brokerURL: target, sys: sys, tenants: svc, flavor: flavor, close: sys.Close}, nil
}

// committed returns the points committed so far for the bench tenant.
func (t *benchTarget) committed(ctx context.Context) int64 {
	if !t.external {
		return t.platform.pipe.Stats().PointsCommitted.Load()
	}
	var n int64
	if err := t.sys.QueryRow(ctx, `SELECT count(*) FROM telemetry WHERE tenant_id = $1`, t.tenant).Scan(&n); err != nil {
		return -1
	}
	return n
}

// drain waits until everything accepted has been committed.
func (t *benchTarget) drain(ctx context.Context) {
	if !t.external {
		for i := 0; i < 600 && ctx.Err() == nil && t.platform.pipe.Spool().Pending > 0; i++ {
			sleepCtx(ctx, 100*time.Millisecond)
		}
		return
	}
	// Externally: until the count stops moving for a second.
	last := int64(-2)
	for i := 0; i < 120 && ctx.Err() == nil; i++ {
		n := t.committed(ctx)
		if n == last {
			return
		}
		last = n
		sleepCtx(ctx, time.Second)
	}
}

// prober samples publish→committed latency of a few devices of an external
// platform: each probe device's publish times are queued, and a poller pops
// those at or before the newest stored timestamp of that device.
type prober struct {
	mu   sync.Mutex
	sent map[string][]time.Time // device key → publish times not yet seen stored
}

func newProber(keys []string) *prober {
	p := &prober{sent: map[string][]time.Time{}}
	for _, k := range keys {
		p.sent[k] = nil
	}
	return p
}

// recorder returns the function publishLoop calls for a device, or nil when
// the device is not a probe (or there is no prober).
func (p *prober) recorder(key string) func(time.Time) {
	if p == nil {
		return nil
	}
	if _, ok := p.sent[key]; !ok {
		return nil
	}
	return func(ts time.Time) {
		p.mu.Lock()
		p.sent[key] = append(p.sent[key], ts)
		p.mu.Unlock()
	}
}

func (p *prober) poll(ctx context.Context, t *benchTarget, lat *latencies) {
	p.mu.Lock()
	keys := make([]string, 0, len(p.sent))
	for k := range p.sent {
		keys = append(keys, k)
	}
	p.mu.Unlock()
	for ctx.Err() == nil {
		sleepCtx(ctx, 20*time.Millisecond)
		rows, err := t.sys.Query(ctx, `SELECT d.key, max(x.ts) FROM telemetry x JOIN devices d ON d.id = x.device_id
			WHERE d.tenant_id = $1 AND d.key = ANY($2) AND x.ts > now() - interval '1 minute' GROUP BY d.key`, t.tenant, keys)
		if err != nil {
			continue
		}
		type newest struct {
			key string
			ts  time.Time
		}
		got, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (newest, error) {
			var n newest
			return n, r.Scan(&n.key, &n.ts)
		})
		if err != nil {
			continue
		}
		now := time.Now()
		var done []float32
		p.mu.Lock()
		for _, n := range got {
			q := p.sent[n.key]
			i := 0
			for ; i < len(q) && !q[i].After(n.ts); i++ {
				done = append(done, float32(now.Sub(q[i]).Seconds()*1000))
			}
			p.sent[n.key] = q[i:]
		}
		p.mu.Unlock()
		lat.addMillis(done)
	}
}
