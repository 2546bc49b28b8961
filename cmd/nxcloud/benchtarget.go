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

// ingestInternals are the in-process pipeline's counters the bench reports
// to explain its figures.
type ingestInternals struct {
	batches, batchNanos, points int64
	fsyncs                      int64
	fsyncTime                   time.Duration
	cpuBusy, cpuTotal           float64 // the machine's, in ticks
	procCPU                     float64 // this process's, in seconds
}

func (t *benchTarget) internals() ingestInternals {
	busy, total := machineCPU()
	if t.external {
		return ingestInternals{cpuBusy: busy, cpuTotal: total, procCPU: processCPU()}
	}
	st := t.platform.pipe.Stats()
	n, d := t.platform.pipe.SpoolFsyncs()
	return ingestInternals{batches: st.Batches.Load(), batchNanos: st.BatchNanos.Load(), points: st.PointsCommitted.Load() + st.PointsDuplicate.Load(),
		fsyncs: n, fsyncTime: d, cpuBusy: busy, cpuTotal: total, procCPU: processCPU()}
}

// since describes what happened between a and b, over d.
func (b ingestInternals) since(a ingestInternals, d time.Duration) string {
	batches := b.batches - a.batches
	var s string
	if b.cpuTotal > a.cpuTotal {
		s = fmt.Sprintf("machine CPU %.0f%% busy (this process %.2f cores); ", 100*(b.cpuBusy-a.cpuBusy)/(b.cpuTotal-a.cpuTotal),
			(b.procCPU-a.procCPU)/d.Seconds())
	}
	s += fmt.Sprintf("%.1f batches/s", float64(batches)/d.Seconds())
	if batches > 0 {
		s += fmt.Sprintf(" of %.0f points, %.1f ms each in the database", float64(b.points-a.points)/float64(batches),
			float64(b.batchNanos-a.batchNanos)/float64(batches)/1e6)
	}
	if f := b.fsyncs - a.fsyncs; f > 0 {
		s += fmt.Sprintf("; spool %.0f group fsyncs/s, %.2f ms each", float64(f)/d.Seconds(), float64(b.fsyncTime-a.fsyncTime)/float64(f)/1e6)
	}
	return s
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
