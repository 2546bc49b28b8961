package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"
	"github.com/google/uuid"

	"github.com/nxcloud/nxcloud/broker"
	"github.com/nxcloud/nxcloud/ingest"
	"github.com/nxcloud/nxcloud/tenants"
)

// connsConfig is what `nxcloud bench conns` measures: the publish→commit
// latency of well-behaved devices alone, then with idle connections held, a
// flood of over-limit publishers, slow readers and a connect storm.
type connsConfig struct {
	Devices    int           // well-behaved devices
	Rate       float64       // their messages per second each
	Idle       int           // idle connections
	Sources    int           // loopback source addresses for them
	FloodConns int           // over-limit publishers (half QoS 1 unpaced, half QoS 0 paced)
	FloodRate  float64       // messages per second of each QoS 0 flooder
	Slow       int           // slow readers
	StormConns int           // concurrent dialers of the connect storm
	StormRate  float64       // their connection attempts per second, together
	Phase      time.Duration // length of each measured window
	Cycles     int           // off/on cycles per disturbance
	Out        string
}

// benchDialer spreads the bench's connections over loopback source addresses
// 127.0.0.1-250 when the broker is on loopback, as devices of many sites
// would be, so that the connect rate per address (and the ephemeral ports of
// one address) do not limit the bench. Elsewhere it is paho's default.
func benchDialer(brokerURL string, i int) *net.Dialer {
	d := &net.Dialer{Timeout: 30 * time.Second}
	if u, err := url.Parse(brokerURL); err == nil && u.Hostname() == "127.0.0.1" {
		d.LocalAddr = &net.TCPAddr{IP: net.IPv4(127, 0, 0, byte(1+i%250))}
	}
	return d
}

func cmdBenchConns(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) error {
	if len(args) > 0 && args[0] == idleClientsCmd {
		return runIdleChild(ctx, args[1:], stdout)
	}
	var bc connsConfig
	cfg, err := parseCommand("bench conns", args, getenv, stderr, func(fs *flag.FlagSet) {
		fs.IntVar(&bc.Devices, "devices", 100, "well-behaved devices whose latency is measured")
		fs.Float64Var(&bc.Rate, "rate", 2, "messages per second per well-behaved device (5 metrics, QoS 1)")
		fs.IntVar(&bc.Idle, "idle", 10000, "idle connections held (one device each)")
		fs.IntVar(&bc.Sources, "sources", 100, "loopback source addresses the idle connections come from")
		fs.IntVar(&bc.FloodConns, "flood-conns", 10, "over-limit publishers: half QoS 1 as fast as acknowledged, half QoS 0 at --flood-rate")
		fs.Float64Var(&bc.FloodRate, "flood-rate", 1000, "messages per second of each QoS 0 flooder")
		fs.IntVar(&bc.Slow, "slow", 50, "slow readers: subscribed to their commands, never reading, sent 64 KiB commands 20 times a second")
		fs.IntVar(&bc.StormConns, "storm-conns", 16, "concurrent dialers of the connect storm from one address")
		fs.Float64Var(&bc.StormRate, "storm-rate", 2000, "connection attempts per second of the storm (40× the default limit per address)")
		fs.DurationVar(&bc.Phase, "window", 10*time.Second, "length of each measured window")
		fs.IntVar(&bc.Cycles, "cycles", 3, "off/on cycles per disturbance")
		fs.StringVar(&bc.Out, "out", "", "also write the report to this file")
	})
	if err != nil {
		return err
	}
	if bc.Devices < 1 || bc.Rate <= 0 || bc.Idle < 0 || bc.Sources < 1 || bc.Sources > 200 || bc.Cycles < 1 || bc.StormRate <= 0 {
		return fmt.Errorf("bench conns: need devices ≥ 1, rate > 0, idle ≥ 0, 1-200 sources, cycles ≥ 1 and storm-rate > 0")
	}
	raiseFileLimit(2*(bc.Idle+bc.Devices+bc.FloodConns+bc.Slow) + 4096)
	// A spool and a session store of its own: another nxcloud on this
	// machine may use the defaults.
	tmp, err := os.MkdirTemp("", "nxcloud-bench-conns-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(tmp)
	cfg.IngestSpoolDir, cfg.MQTTSessionStore = filepath.Join(tmp, "spool"), filepath.Join(tmp, "mqtt-sessions.db")
	cfg.HTTPAddr, cfg.MQTTAddr, cfg.MQTTWSAddr = "127.0.0.1:0", "127.0.0.1:0", ""
	if cfg.LogLevel == "info" {
		cfg.LogLevel = "warn"
	}
	log, err := newLogger(stderr, cfg.LogLevel, cfg.LogFormat)
	if err != nil {
		return err
	}
	say := func(f string, a ...any) { fmt.Fprintf(stderr, "bench conns: "+f+"\n", a...) }
	lat := &deviceLatencies{}
	p, err := startPlatform(ctx, cfg, log, platformOptions{onCommit: lat.add})
	if err != nil {
		return err
	}
	defer func() { _ = p.shutdown() }()
	_, port, _ := net.SplitHostPort(p.broker.TCPAddr())
	addr, brokerURL := "127.0.0.1:"+port, "tcp://127.0.0.1:"+port

	slug := "conns-" + strconv.FormatInt(time.Now().Unix(), 36)
	t, _, err := p.tenants.CreateEnterprise(ctx, tenants.EnterpriseInput{Slug: slug, Name: "nxcloud bench conns", Sector: "magnetic-materials"})
	if err != nil {
		return err
	}
	target := &benchTarget{sys: p.sys, tenants: p.tenants}
	model, keys, err := benchModel(ctx, target, t.ID, 5)
	if err != nil {
		return err
	}
	const secret = "bench-device-secret"
	total := bc.Devices + bc.FloodConns + bc.Slow + bc.StormConns + bc.Idle
	say("registering %d devices in tenant %s", total, slug)
	all, err := importBenchDevices(ctx, p.tenants, t.ID, model, secret, total)
	if err != nil {
		return err
	}
	next := func(n int) []string { out := all[:n]; all = all[n:]; return out }
	good, flooders, slow, storm := next(bc.Devices), next(bc.FloodConns), next(bc.Slow), next(bc.StormConns) // then the idle ones
	ids, err := deviceIDs(ctx, p, t.ID, good)
	if err != nil {
		return err
	}
	lat.devices = ids

	// The well-behaved devices publish through every phase.
	say("connecting %d well-behaved devices (%.0f msg/s each)", bc.Devices, bc.Rate)
	clients, err := connectAll(ctx, brokerURL, slug, good, secret)
	if err != nil {
		return err
	}
	runCtx, stopRun := context.WithCancel(ctx)
	defer stopRun()
	var wg sync.WaitGroup
	var failed atomic.Int64
	pending := make(chan mqtt.Token, 64*1024)
	collected := make(chan struct{})
	go func() {
		defer close(collected)
		for tok := range pending {
			if tok.Wait(); tok.Error() != nil {
				failed.Add(1)
			}
		}
	}()
	for i, c := range clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			publishLoop(runCtx, c, "v1/"+slug+"/"+good[i]+"/telemetry", keys, 1, time.Duration(float64(time.Second)/bc.Rate), int64(i), pending, nil)
		}()
	}
	// Each disturbance is switched on and off in turn, cycles times, and
	// the latencies of its windows are pooled and compared with those of
	// the windows around them: on a shared machine the background load
	// drifts by more than what is measured.
	// window measures for bench.Phase; cpu gets the process's CPU time in it.
	window := func(cpu *float64) []float32 {
		c0 := processCPU()
		lat.collect(true)
		sleepCtx(ctx, bc.Phase)
		*cpu += processCPU() - c0
		return lat.collect(false)
	}
	var rows []connsRow
	ab := func(name string, n int, on func() error, off func() string) error {
		if n == 0 {
			return nil // switched off by its flag
		}
		r := connsRow{name: name, load: loadavg()}
		for c := range bc.Cycles {
			sleepCtx(ctx, 2*time.Second)
			r.off = append(r.off, window(&r.cpuOff)...)
			if err := on(); err != nil {
				return err
			}
			sleepCtx(ctx, 2*time.Second)
			r.on = append(r.on, window(&r.cpuOn)...)
			r.rss = max(r.rss, rssBytes())
			r.conns = max(r.conns, p.broker.Stats().ClientsConnected)
			if note := off(); c == 0 || note != "" {
				r.note = note
			}
			if ctx.Err() != nil {
				return ctx.Err()
			}
		}
		slices.Sort(r.off)
		slices.Sort(r.on)
		r.load += " → " + loadavg()
		rows = append(rows, r)
		say("%-18s p50 %6.1f → %6.1f ms  p99 %7.1f → %7.1f ms  %s", name, pct(r.off, 50), pct(r.on, 50), pct(r.off, 99), pct(r.on, 99), r.note)
		return nil
	}
	say("warming up")
	sleepCtx(ctx, 5*time.Second)
	rss0 := rssBytes()

	// (a) idle connections, from a child process: this one's open-file
	// limit (20 000 here, not raisable without CAP_SYS_RESOURCE) cannot
	// hold both ends, and this process's RSS is then the platform's alone.
	say("idle: %d connections from %d source addresses, %d cycles", bc.Idle, bc.Sources, bc.Cycles)
	var ic *idleChild
	var rssBefore, heapBefore, rssIdle, heapIdle int64
	var first *idleChild
	openIdleConns := func() error {
		runtime.GC()
		rb, hb := rssBytes(), heapBytes()
		var err error
		if ic, err = startIdleChild(ctx, stderr, addr, slug, secret, total-bc.Idle, bc.Idle, bc.Sources); err != nil {
			return err
		}
		if first == nil {
			first = ic
			runtime.GC()
			sleepCtx(ctx, 2*time.Second)
			rssBefore, heapBefore, rssIdle, heapIdle = rb, hb, rssBytes(), heapBytes()
		}
		return nil
	}
	closeIdle := func() string {
		ic.close()
		sleepCtx(ctx, 2*time.Second) // let the broker forget their client ids
		return fmt.Sprintf("%d held, %d refused by the broker", ic.held, ic.refused)
	}
	if err := ab("idle connections", bc.Idle, openIdleConns, closeIdle); err != nil {
		return err
	}
	// They stay for the rest: each disturbance below comes on top of them.
	if err := openIdleConns(); err != nil {
		return err
	}
	defer ic.close()

	// (b) over-limit publishers.
	var fw *sync.WaitGroup
	var fstats *floodStats
	var stopFlood context.CancelFunc
	var l0 broker.LimitStats
	err = ab("over-limit flood", bc.FloodConns, func() error {
		var fctx context.Context
		fctx, stopFlood = context.WithCancel(ctx)
		l0 = p.broker.LimitStats()
		var err error
		fw, fstats, err = startFlood(fctx, addr, slug, flooders, secret, keys, bc.FloodRate)
		return err
	}, func() string {
		stopFlood()
		fw.Wait()
		l1 := p.broker.LimitStats()
		return fmt.Sprintf("%d flooders: %d QoS 1 acked (%d held, %d disconnected), %d QoS 0 sent (%d dropped) per window",
			len(flooders), fstats.acked.Load(), l1.Throttled-l0.Throttled, l1.RateDisconnects-l0.RateDisconnects, fstats.sent0.Load(), l1.RateDropped-l0.RateDropped)
	})
	if err != nil {
		return err
	}

	// (c) slow readers.
	var sc []net.Conn
	var sent *atomic.Int64
	var stopSlow context.CancelFunc
	err = ab("slow readers", bc.Slow, func() error {
		var sctx context.Context
		sctx, stopSlow = context.WithCancel(ctx)
		var err error
		sc, sent, err = startSlowReaders(sctx, p, addr, slug, slow, secret)
		return err
	}, func() string {
		stopSlow()
		for _, c := range sc {
			_ = c.Close()
		}
		return fmt.Sprintf("%d readers: %d commands of 64 KiB queued to them per window, %d closed for not reading in all",
			len(slow), sent.Load(), p.broker.LimitStats().SlowReaders)
	})
	if err != nil {
		return err
	}

	// (d) connect storm from one address.
	var st *stormStats
	var sw sync.WaitGroup
	var stopStorm context.CancelFunc
	var r0 int64
	pace := time.NewTicker(time.Duration(float64(time.Second) / bc.StormRate))
	defer pace.Stop()
	err = ab("connect storm", bc.StormConns, func() error {
		var stctx context.Context
		stctx, stopStorm = context.WithCancel(ctx)
		st, r0 = &stormStats{}, p.broker.LimitStats().ConnectsRefused
		for i := range bc.StormConns {
			sw.Add(1)
			go func() { defer sw.Done(); storm1(stctx, addr, storm[i]+"@"+slug, secret, pace.C, st) }()
		}
		return nil
	}, func() string {
		stopStorm()
		sw.Wait()
		return fmt.Sprintf("%d dialers from 127.0.0.254: %d attempts, %d accepted, %d refused per window",
			bc.StormConns, st.attempts.Load(), st.accepted.Load(), p.broker.LimitStats().ConnectsRefused-r0)
	})
	if err != nil {
		return err
	}
	ic.close()
	stopRun()
	wg.Wait()
	close(pending)
	<-collected
	for _, c := range clients {
		c.Disconnect(100)
	}

	var b strings.Builder
	fmt.Fprintf(&b, "nxcloud bench conns — %s, %d CPUs, GOMAXPROCS %d, storage %s\n", time.Now().UTC().Format(time.RFC3339), runtime.NumCPU(), runtime.GOMAXPROCS(0), p.flavor)
	fmt.Fprintf(&b, "command: nxcloud bench conns %s\n", strings.Join(args, " "))
	fmt.Fprintf(&b, "machine load (1-minute average) at start %s, at end %s\n", loadavg0, loadavg())
	fmt.Fprintf(&b, "limits: %d publishes/s (burst %d) and %d B/s (burst %d) per device, QoS 1 held ≤ %s; %d connects/s (burst %d) per address; write timeout %s\n",
		cfg.MQTTDeviceRate, cfg.MQTTDeviceBurst, cfg.MQTTDeviceBytes, cfg.MQTTDeviceBytesBurst, cfg.MQTTThrottleMax, cfg.MQTTConnectRate, cfg.MQTTConnectBurst, cfg.MQTTWriteTimeout)
	fmt.Fprintf(&b, "\nidle connections: %d held (%d refused by the broker) from %d loopback addresses of a child process (MQTT 3.1.1, keepalive 120 s, one device each)\n",
		first.held, first.refused, bc.Sources)
	fmt.Fprintf(&b, "  connect: %.1f s for all (%.0f/s, 64 at a time), CONNECT→CONNACK p50 %.1f ms p99 %.1f ms (first connection of each device: credentials from the database)\n",
		first.took.Seconds(), float64(first.held)/first.took.Seconds(), first.p50, first.p99)
	fmt.Fprintf(&b, "  RSS of the platform's process: %s at start, %s before, %s with them → %.1f KiB per connection (Go heap+stacks %.1f KiB per connection)\n",
		mib(rss0), mib(rssBefore), mib(rssIdle), float64(rssIdle-rssBefore)/1024/float64(max(1, first.held)), float64(heapIdle-heapBefore)/1024/float64(max(1, first.held)))
	fmt.Fprintf(&b, "\npublish→commit latency of %d well-behaved devices × %.0f msg/s (QoS 1): each disturbance off and on in turn, %d × %s windows each, pooled\n",
		bc.Devices, bc.Rate, bc.Cycles, bc.Phase)
	fmt.Fprintf(&b, "  %-18s %8s %8s %6s %8s %8s %6s %8s %11s %9s %6s %12s\n", "disturbance", "p50 off", "p50 on", "×", "p99 off", "p99 on", "×", "msgs on", "cores off/on", "RSS on", "conns", "load")
	secs := bc.Phase.Seconds() * float64(bc.Cycles)
	for _, r := range rows {
		fmt.Fprintf(&b, "  %-18s %8.1f %8.1f %6.2f %8.1f %8.1f %6.2f %8d %5.2f/%5.2f %9s %6d %12s\n", r.name, pct(r.off, 50), pct(r.on, 50), pct(r.on, 50)/pct(r.off, 50),
			pct(r.off, 99), pct(r.on, 99), pct(r.on, 99)/pct(r.off, 99), len(r.on), r.cpuOff/secs, r.cpuOn/secs, mib(r.rss), r.conns, r.load)
	}
	fmt.Fprintf(&b, "  (ms; × = on/off, target ≤ 2; cores = CPU of this process (platform and load generator) in the windows; flood, slow readers\n")
	fmt.Fprintf(&b, "   and storm come on top of the idle connections, held in both of their windows; load = 1-minute load average of the machine;\n")
	fmt.Fprintf(&b, "   %d publishes of well-behaved devices failed)\n", failed.Load())
	for _, r := range rows {
		fmt.Fprintf(&b, "  %s: %s\n", r.name, r.note)
	}
	fmt.Fprint(stdout, b.String())
	if bc.Out != "" {
		if err := os.WriteFile(bc.Out, []byte(b.String()), 0o644); err != nil {
			return err
		}
	}
	_, err = p.sys.Exec(ctx, `DELETE FROM telemetry WHERE tenant_id = $1`, t.ID)
	return err
}

type connsRow struct {
	name, note, load string
	off, on          []float32
	cpuOff, cpuOn    float64 // CPU seconds of the process in the windows
	rss, conns       int64
}

// deviceLatencies collects commit latencies of the well-behaved devices only.
type deviceLatencies struct {
	latencies
	devices map[uuid.UUID]bool // set before publishing starts
}

func (d *deviceLatencies) add(committed time.Time, batch []ingest.Item) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if !d.on {
		return
	}
	for _, it := range batch {
		if len(it.Points) > 0 && d.devices[it.Device] {
			d.v = append(d.v, float32(committed.Sub(it.Points[0].TS).Seconds()*1000))
		}
	}
}

// importBenchDevices registers n devices d-000000… with one secret, in
// imports of up to tenants.MaxImportRows.
func importBenchDevices(ctx context.Context, svc *tenants.Service, tenant uuid.UUID, model, secret string, n int) ([]string, error) {
	keys := make([]string, n)
	for i := range keys {
		keys[i] = fmt.Sprintf("d-%06d", i)
	}
	for lo := 0; lo < n; lo += tenants.MaxImportRows {
		var rows []tenants.ImportRow
		for i := lo; i < min(n, lo+tenants.MaxImportRows); i++ {
			rows = append(rows, tenants.ImportRow{Row: i + 1, Input: tenants.DeviceInput{Key: keys[i], Model: model, Secret: secret}})
		}
		res, err := svc.ImportDevices(ctx, tenant, rows, false)
		if err != nil {
			return nil, err
		}
		if res.Failed > 0 {
			return nil, fmt.Errorf("bench conns: %d devices could not be registered: %+v", res.Failed, res.Rows[0])
		}
	}
	return keys, nil
}

func deviceIDs(ctx context.Context, p *platform, tenant uuid.UUID, keys []string) (map[uuid.UUID]bool, error) {
	rows, err := p.sys.Query(ctx, `SELECT id FROM devices WHERE tenant_id = $1 AND key = ANY($2)`, tenant, keys)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	out := map[uuid.UUID]bool{}
	for rows.Next() {
		var id uuid.UUID
		if err := rows.Scan(&id); err != nil {
			return nil, err
		}
		out[id] = true
	}
	return out, rows.Err()
}
