package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"runtime"
	"runtime/pprof"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"
	"github.com/google/uuid"

	"github.com/nxcloud/nxcloud/ingest"
	"github.com/nxcloud/nxcloud/tenants"
)

// benchConfig is what `nxcloud bench` measures.
type benchConfig struct {
	Devices     int
	Rate        float64 // messages per second per device
	Metrics     int     // metrics per message
	QoS         int
	Duration    time.Duration
	Warmup      time.Duration
	FloodConns  int
	FloodFor    time.Duration
	FloodPoints int // points per flood message
	Out         string
	Target      string // MQTT URL of a running platform; "" starts one in-process
	Modes       string // durability modes to compare in one run
	// ChildPublishers runs the sustained phase's devices in a child process.
	ChildPublishers bool
}

// latencies collects publish→committed latencies of messages, in ms.
type latencies struct {
	mu sync.Mutex
	on bool
	v  []float32
}

func (l *latencies) add(committed time.Time, batch []ingest.Item) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if !l.on {
		return
	}
	for _, it := range batch {
		if len(it.Points) > 0 {
			l.v = append(l.v, float32(committed.Sub(it.Points[0].TS).Seconds()*1000))
		}
	}
}

func (l *latencies) addMillis(v []float32) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.on {
		l.v = append(l.v, v...)
	}
}

func (l *latencies) collect(on bool) []float32 {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.on = on
	out := l.v
	l.v = nil
	return out
}

func pct(v []float32, p float64) float64 {
	if len(v) == 0 {
		return 0
	}
	i := int(p / 100 * float64(len(v)-1))
	return float64(v[i])
}

func cmdBench(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) error {
	if len(args) > 0 && args[0] == "conns" {
		return cmdBenchConns(ctx, args[1:], getenv, stdout, stderr) // bench_conns.go
	}
	if len(args) > 0 && args[0] == publishersCmd {
		return runPublisherChild(ctx, args[1:], stdout) // bench_publishers.go
	}
	var bc benchConfig
	var cpuProfile *string
	cfg, err := parseCommand("bench", args, getenv, stderr, func(fs *flag.FlagSet) {
		fs.IntVar(&bc.Devices, "devices", 1000, "simulated devices, one MQTT connection each")
		fs.Float64Var(&bc.Rate, "rate", 20, "messages per second per device")
		fs.IntVar(&bc.Metrics, "metrics", 5, "metrics per message")
		fs.IntVar(&bc.QoS, "qos", 1, "MQTT QoS (0 or 1)")
		fs.DurationVar(&bc.Duration, "duration", 2*time.Minute, "sustained phase length (after warm-up)")
		fs.DurationVar(&bc.Warmup, "warmup", 10*time.Second, "warm-up before measuring")
		fs.IntVar(&bc.FloodConns, "flood-conns", 10, "connections of the flood phase (0 skips it)")
		fs.DurationVar(&bc.FloodFor, "flood-duration", 20*time.Second, "flood phase length")
		fs.IntVar(&bc.FloodPoints, "flood-points", 500, "points per flood message")
		fs.StringVar(&bc.Out, "out", "", "also write the report to this file")
		cpuProfile = fs.String("cpuprofile", "", "write a CPU profile of the sustained phase to this file")
		fs.StringVar(&bc.Target, "target-mqtt", "", "measure a running nxcloud at this MQTT URL (tcp://host:1883) instead of one started in-process; --database-url must be its database")
		fs.BoolVar(&bc.ChildPublishers, "publisher-process", true, "run the sustained phase's devices in a child process (false: in the platform's process, sharing its Go scheduler)")
		fs.StringVar(&bc.Modes, "durability-modes", "", "run the bench once per ingest durability mode (e.g. none,commit,spool) in this run and compare them")
	})
	if err != nil {
		return err
	}
	if bc.Metrics < 1 || bc.Devices < 1 || bc.Rate <= 0 || (bc.QoS != 0 && bc.QoS != 1) {
		return fmt.Errorf("bench: need devices ≥ 1, rate > 0, metrics ≥ 1 and qos 0 or 1")
	}
	// The in-process platform gets a spool and a session store of its own:
	// another nxcloud (make run) may hold the defaults.
	tmp, err := os.MkdirTemp("", "nxcloud-bench-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(tmp)
	cfg.MQTTSessionStore = tmp + "/mqtt-sessions.db"
	if bc.Modes == "" {
		cfg.IngestSpoolDir = tmp + "/spool"
		_, err := runBench(ctx, cfg, bc, args, *cpuProfile, stdout, stderr)
		return err
	}
	if bc.Target != "" {
		return fmt.Errorf("bench: --durability-modes runs in-process platforms; drop --target-mqtt")
	}
	var results []benchResult
	modes := strings.Split(bc.Modes, ",")
	for _, m := range modes {
		c := cfg
		c.IngestDurability = strings.TrimSpace(m)
		c.IngestSpoolDir, err = os.MkdirTemp("", "nxcloud-bench-spool-")
		if err != nil {
			return err
		}
		fmt.Fprintf(stderr, "bench: === durability %s ===\n", c.IngestDurability)
		r, err := runBench(ctx, c, bc, args, "", stdout, stderr)
		_ = os.RemoveAll(c.IngestSpoolDir)
		if err != nil {
			return fmt.Errorf("durability %s: %w", c.IngestDurability, err)
		}
		results = append(results, r)
	}
	var b strings.Builder
	fmt.Fprintf(&b, "\ncost of durability, same run (ratios against the first mode, %s):\n", modes[0])
	fmt.Fprintf(&b, "  %-8s %14s %8s %10s %10s %12s %8s\n", "mode", "points/s", "ratio", "p50 ms", "p99 ms", "flood pts/s", "lost")
	for i, r := range results {
		fmt.Fprintf(&b, "  %-8s %14.0f %8.2f %10.1f %10.1f %12.0f %8d\n", strings.TrimSpace(modes[i]), r.sustained, r.sustained/results[0].sustained,
			r.p50, r.p99, r.flood, r.lost)
	}
	fmt.Fprint(stdout, b.String())
	if bc.Out != "" {
		f, err := os.OpenFile(bc.Out, os.O_APPEND|os.O_WRONLY, 0o644)
		if err == nil {
			_, _ = f.WriteString(b.String())
			_ = f.Close()
		}
	}
	return nil
}

// benchResult is what one bench run measured.
type benchResult struct {
	sustained, p50, p99, flood float64
	lost                       int64
}

func runBench(ctx context.Context, cfg config, bc benchConfig, args []string, cpuProfile string, stdout, stderr io.Writer) (benchResult, error) {
	var res benchResult
	cfg.HTTPAddr, cfg.MQTTAddr, cfg.MQTTWSAddr = "127.0.0.1:0", "127.0.0.1:0", ""
	if cfg.LogLevel == "info" {
		cfg.LogLevel = "warn"
	}
	log, err := newLogger(stderr, cfg.LogLevel, cfg.LogFormat)
	if err != nil {
		return res, err
	}
	lat := &latencies{}
	tg, err := openBenchTarget(ctx, cfg, bc.Target, log, lat)
	if err != nil {
		return res, err
	}
	defer tg.close()
	say := func(f string, a ...any) { fmt.Fprintf(stderr, "bench: "+f+"\n", a...) }
	p := tg

	// A tenant of its own, so the run neither sees nor disturbs other data.
	slug := "bench-" + strconv.FormatInt(time.Now().Unix(), 36)
	t, _, err := p.tenants.CreateEnterprise(ctx, tenants.EnterpriseInput{Slug: slug, Name: "nxcloud bench", Sector: "magnetic-materials"})
	if err != nil {
		return res, err
	}
	model, keys, err := benchModel(ctx, p, t.ID, bc.Metrics)
	if err != nil {
		return res, err
	}
	const secret = "bench-device-secret"
	total := bc.Devices + bc.FloodConns
	say("registering %d devices in tenant %s", total, slug)
	devices := make([]string, total)
	for i := range devices {
		devices[i] = fmt.Sprintf("dev-%05d", i)
		if _, _, err := p.tenants.RegisterDevice(ctx, t.ID, tenants.DeviceInput{Key: devices[i], Model: model, Secret: secret}); err != nil {
			return res, err
		}
	}
	brokerURL := tg.brokerURL
	tg.tenant = t.ID
	if tg.external {
		// Publish→committed latency is sampled on 20 probe devices by polling
		// the database every 20 ms (resolution ±20 ms).
		tg.probe = newProber(devices[:min(20, bc.Devices)])
		go tg.probe.poll(ctx, tg, lat)
	}

	// Phase 1: sustained load from many devices.
	say("connecting %d devices (QoS %d, %.0f msg/s each, %d metrics a message)", bc.Devices, bc.QoS, bc.Rate, bc.Metrics)
	interval := time.Duration(float64(time.Second) / bc.Rate)
	var pubs publishers
	if tg.external || !bc.ChildPublishers {
		var rec func(string) func(time.Time)
		if tg.probe != nil {
			rec = tg.probe.recorder
		}
		pubs, err = startInProcess(ctx, brokerURL, slug, secret, devices[:bc.Devices], keys, byte(bc.QoS), interval, rec)
	} else {
		// The devices publish from a process of their own (see publishersCmd).
		pubs, err = startPublisherChild(ctx, stderr, brokerURL, slug, secret, bc.Devices, keys, byte(bc.QoS), interval)
	}
	if err != nil {
		return res, err
	}
	defer pubs.stop() // a no-op once stopped below
	acked := func() int64 { a, _ := pubs.counts(); return a }
	say("warming up for %s", bc.Warmup)
	sleepCtx(ctx, bc.Warmup)
	lat.collect(true)
	if cpuProfile != "" {
		f, err := os.Create(cpuProfile)
		if err != nil {
			return res, err
		}
		defer f.Close()
		if err := pprof.StartCPUProfile(f); err != nil {
			return res, err
		}
	}
	c0, a0, t0 := tg.committed(ctx), acked(), time.Now()
	i0 := tg.internals()
	say("measuring for %s", bc.Duration)
	progress(ctx, stderr, bc.Duration, func() string {
		return fmt.Sprintf("%d points committed so far", tg.committed(ctx)-c0)
	})
	c1, a1, t1 := tg.committed(ctx), acked(), time.Now()
	i1 := tg.internals()
	lats := lat.collect(false)
	if cpuProfile != "" {
		pprof.StopCPUProfile()
	}
	pubs.stop()
	ackedN, failedN := pubs.counts()
	say("draining")
	tg.drain(ctx)
	var stored int64
	if err := p.sys.QueryRow(ctx, `SELECT count(*) FROM telemetry WHERE tenant_id = $1`, t.ID).Scan(&stored); err != nil {
		return res, err
	}
	sustained := float64(c1-c0) / t1.Sub(t0).Seconds()
	offered := float64(a1-a0) * float64(bc.Metrics) / t1.Sub(t0).Seconds()
	slices.Sort(lats)
	ackedPoints := ackedN * int64(bc.Metrics)

	// Phase 2: a flood from a few connections, big messages, as fast as possible.
	var floodRate float64
	var floodPoints int64
	if bc.FloodConns > 0 {
		say("flood: %d connections, %d points a message, for %s", bc.FloodConns, bc.FloodPoints, bc.FloodFor)
		fc, err := connectAll(ctx, brokerURL, slug, devices[bc.Devices:], secret)
		if err != nil {
			return res, err
		}
		fctx, stopFlood := context.WithCancel(ctx)
		var fw sync.WaitGroup
		var facked, ffailed atomic.Int64
		for i, c := range fc {
			fw.Add(1)
			go func() {
				defer fw.Done()
				floodLoop(fctx, c, "v1/"+slug+"/"+devices[bc.Devices+i]+"/telemetry", keys, bc.FloodPoints, &facked, &ffailed)
			}()
		}
		sleepCtx(ctx, 3*time.Second)
		f0, ft0 := tg.committed(ctx), time.Now()
		sleepCtx(ctx, bc.FloodFor)
		f1, ft1 := tg.committed(ctx), time.Now()
		stopFlood()
		fw.Wait()
		tg.drain(ctx)
		for _, c := range fc {
			c.Disconnect(100)
		}
		floodPoints = f1 - f0
		floodRate = float64(floodPoints) / ft1.Sub(ft0).Seconds()
	}

	// The limit: raw CopyFrom of the same rows into the same table, with as many
	// connections as ingest has writers, batches of the same size, same run.
	say("raw COPY limit: %d connections, batches of %d", cfg.IngestWriters, cfg.IngestBatch)
	rawRate, err := rawCopyLimit(ctx, p, t.ID, devices[:bc.Devices], bc.Metrics, bc.Metrics, cfg.IngestWriters, cfg.IngestBatch, 10*time.Second)
	if err != nil {
		return res, err
	}
	var rawFlood float64
	if bc.FloodConns > 0 {
		say("raw COPY limit for the flood's rows (%d devices)", bc.FloodConns)
		if rawFlood, err = rawCopyLimit(ctx, p, t.ID, devices[bc.Devices:], bc.Metrics, max(bc.Metrics, bc.FloodPoints/bc.Metrics*bc.Metrics), cfg.IngestWriters, cfg.IngestBatch, 10*time.Second); err != nil {
			return res, err
		}
	}

	var b strings.Builder
	fmt.Fprintf(&b, "nxcloud bench — %s, %d CPUs, GOMAXPROCS %d, storage %s, platform %s\n", time.Now().UTC().Format(time.RFC3339),
		runtime.NumCPU(), runtime.GOMAXPROCS(0), p.flavor, map[bool]string{true: "at " + bc.Target, false: "in-process"}[tg.external])
	fmt.Fprintf(&b, "command: nxcloud bench %s\n", strings.Join(args, " "))
	fmt.Fprintf(&b, "ingest: %d writers, batch %d points, flush %s\n\n", cfg.IngestWriters, cfg.IngestBatch, cfg.IngestFlush)
	fmt.Fprintf(&b, "sustained: %d devices × %.0f msg/s × %d metrics, QoS %d, %s measured after %s warm-up\n",
		bc.Devices, bc.Rate, bc.Metrics, bc.QoS, bc.Duration, bc.Warmup)
	fmt.Fprintf(&b, "  offered (acknowledged by broker)  %10.0f points/s\n", offered)
	fmt.Fprintf(&b, "  committed end-to-end              %10.0f points/s\n", sustained)
	fmt.Fprintf(&b, "  publish→committed latency         p50 %.1f ms  p90 %.1f ms  p99 %.1f ms  max %.1f ms  (%d messages%s)\n",
		pct(lats, 50), pct(lats, 90), pct(lats, 99), pct(lats, 100), len(lats), map[bool]string{true: " of 20 probe devices, polled every 20 ms", false: ""}[tg.external])
	fmt.Fprintf(&b, "  loss: %d points acknowledged by the broker, %d stored, %d publishes failed → %d lost\n",
		ackedPoints, stored, failedN, ackedPoints-stored)
	if !tg.external {
		fmt.Fprintf(&b, "  inside: %s\n", i1.since(i0, t1.Sub(t0)))
	}
	if bc.FloodConns > 0 {
		fmt.Fprintf(&b, "flood: %d connections × %d points a message\n", bc.FloodConns, bc.FloodPoints)
		fmt.Fprintf(&b, "  committed end-to-end              %10.0f points/s\n", floodRate)
	}
	fmt.Fprintf(&b, "raw COPY limit, same table, %d connections, batches of %d, rows built before timing:\n", cfg.IngestWriters, cfg.IngestBatch)
	fmt.Fprintf(&b, "  rows of the sustained phase (%d devices)  %10.0f points/s → sustained/raw %.2f\n", bc.Devices, rawRate, sustained/rawRate)
	if bc.FloodConns > 0 {
		fmt.Fprintf(&b, "  rows of the flood (%d devices)            %10.0f points/s → flood/raw %.2f\n", bc.FloodConns, rawFlood, floodRate/rawFlood)
	}
	fmt.Fprint(stdout, b.String())
	if bc.Out != "" {
		flag := os.O_CREATE | os.O_WRONLY | os.O_TRUNC
		if bc.Modes != "" {
			flag = os.O_CREATE | os.O_WRONLY | os.O_APPEND
		}
		f, err := os.OpenFile(bc.Out, flag, 0o644)
		if err != nil {
			return res, err
		}
		_, _ = f.WriteString(b.String())
		_ = f.Close()
	}
	res = benchResult{sustained: sustained, p50: pct(lats, 50), p99: pct(lats, 99), flood: floodRate, lost: ackedPoints - stored}
	// Vacuumed too: millions of dead rows left in the table and its unique
	// index measured to slow the next run's COPY (the next mode, in a
	// --durability-modes run) by up to 2×.
	say("removing the bench tenant's telemetry (DELETE, then VACUUM so the next run starts from the same table)")
	if _, err = p.sys.Exec(ctx, `DELETE FROM telemetry WHERE tenant_id = $1`, t.ID); err != nil {
		return res, err
	}
	_, err = p.sys.Exec(ctx, `VACUUM telemetry`)
	return res, err
}

// benchMetric is a metric the bench sends, with a value range inside its
// valid range.
type benchMetric struct {
	key    string
	lo, hi float64
}

// benchModel picks a device model with at least n metrics.
func benchModel(ctx context.Context, p *benchTarget, tenant uuid.UUID, n int) (string, []benchMetric, error) {
	models, err := p.tenants.Models(tenants.WithTenant(ctx, tenant))
	if err != nil {
		return "", nil, err
	}
	for _, m := range models {
		if len(m.Metrics) >= n {
			keys := make([]benchMetric, n)
			for i := range keys {
				x := m.Metrics[i]
				lo, hi := 0.0, 100.0
				if x.Min != nil {
					lo = *x.Min
				}
				if x.Max != nil {
					hi = *x.Max
				}
				keys[i] = benchMetric{key: x.Key, lo: lo + (hi-lo)*0.25, hi: lo + (hi-lo)*0.75}
			}
			return m.Key, keys, nil
		}
	}
	return "", nil, fmt.Errorf("no device model of the sector has %d metrics", n)
}

func connectAll(ctx context.Context, brokerURL, slug string, keys []string, secret string) ([]mqtt.Client, error) {
	clients := make([]mqtt.Client, len(keys))
	sem := make(chan struct{}, 64)
	var wg sync.WaitGroup
	var firstErr atomic.Value
	for i, k := range keys {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer func() { <-sem; wg.Done() }()
			user := tenants.MQTTUsername(k, slug)
			opts := mqtt.NewClientOptions().AddBroker(brokerURL).SetClientID(user).SetUsername(user).SetPassword(secret).
				SetCleanSession(true).SetAutoReconnect(false).SetKeepAlive(60 * time.Second).SetMaxResumePubInFlight(1000).
				SetOrderMatters(false).SetDialer(benchDialer(brokerURL, i))
			c := mqtt.NewClient(opts)
			tok := c.Connect()
			if !tok.WaitTimeout(30*time.Second) || tok.Error() != nil {
				firstErr.CompareAndSwap(nil, fmt.Errorf("bench device %s could not connect: %v", k, tok.Error()))
				return
			}
			clients[i] = c
		}()
	}
	wg.Wait()
	if err, _ := firstErr.Load().(error); err != nil {
		return nil, err
	}
	return clients, ctx.Err()
}

// publishLoop publishes one message every interval until ctx is done,
// handing each token to pending.
func publishLoop(ctx context.Context, c mqtt.Client, topic string, keys []benchMetric, qos byte, every time.Duration, seed int64,
	pending chan<- mqtt.Token, record func(time.Time)) {
	rng := rand.New(rand.NewPCG(uint64(seed), 7))
	select {
	case <-ctx.Done():
		return
	case <-time.After(time.Duration(rng.Int64N(int64(every)))):
	}
	// A ticker drops ticks when the goroutine falls behind; counting what is
	// due since the start keeps the offered rate exact.
	tick := time.NewTicker(every)
	defer tick.Stop()
	start := time.Now()
	buf := make([]byte, 0, 256)
	var last time.Time
	for sent := int64(0); ; {
		for due := int64(time.Since(start)/every) + 1; sent < due; sent++ {
			// Catching up sends several messages at once: each gets its own
			// millisecond, as a device's readings would.
			now := time.Now().Truncate(time.Millisecond)
			if !now.After(last) {
				now = last.Add(time.Millisecond)
			}
			last = now
			buf = appendReading(buf[:0], now, keys, func(benchMetric) float64 { return rng.Float64() })
			if record != nil {
				record(now)
			}
			pending <- c.Publish(topic, qos, false, append([]byte(nil), buf...))
		}
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
	}
}

// appendReading appends one telemetry object with a value for each key,
// placed at fraction f(k) of the key's range.
func appendReading(buf []byte, ts time.Time, keys []benchMetric, f func(benchMetric) float64) []byte {
	buf = append(buf, `{"ts":`...)
	buf = strconv.AppendInt(buf, ts.UnixMilli(), 10)
	buf = append(buf, `,"metrics":{`...)
	for i, k := range keys {
		if i > 0 {
			buf = append(buf, ',')
		}
		buf = append(buf, '"')
		buf = append(buf, k.key...)
		buf = append(buf, `":`...)
		buf = strconv.AppendFloat(buf, round(k.lo+(k.hi-k.lo)*f(k), 3), 'f', -1, 64)
	}
	return append(buf, `}}`...)
}

func sleepCtx(ctx context.Context, d time.Duration) {
	select {
	case <-ctx.Done():
	case <-time.After(d):
	}
}

// progress sleeps for d, printing a line every 10 s.
func progress(ctx context.Context, w io.Writer, d time.Duration, line func() string) {
	end := time.Now().Add(d)
	for time.Now().Before(end) && ctx.Err() == nil {
		sleepCtx(ctx, min(10*time.Second, time.Until(end)))
		fmt.Fprintf(w, "bench: %s left — %s\n", time.Until(end).Round(time.Second), line())
	}
}
