package main

import (
	"bytes"
	"context"
	"flag"
	"fmt"
	"io"
	"net"
	"net/url"
	"os"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"
	"github.com/google/uuid"
	"github.com/mochi-mqtt/server/v2/packets"

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
	Phase      time.Duration // length of each measured phase
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
		fs.Float64Var(&bc.Rate, "rate", 10, "messages per second per well-behaved device (5 metrics, QoS 1)")
		fs.IntVar(&bc.Idle, "idle", 10000, "idle connections held (one device each)")
		fs.IntVar(&bc.Sources, "sources", 100, "loopback source addresses the idle connections come from")
		fs.IntVar(&bc.FloodConns, "flood-conns", 10, "over-limit publishers: half QoS 1 as fast as acknowledged, half QoS 0 at --flood-rate")
		fs.Float64Var(&bc.FloodRate, "flood-rate", 1000, "messages per second of each QoS 0 flooder")
		fs.IntVar(&bc.Slow, "slow", 50, "slow readers: subscribed to their commands, never reading, sent 64 KiB commands 20 times a second")
		fs.IntVar(&bc.StormConns, "storm-conns", 16, "concurrent dialers of the connect storm from one address")
		fs.Float64Var(&bc.StormRate, "storm-rate", 2000, "connection attempts per second of the storm (100× the default limit)")
		fs.DurationVar(&bc.Phase, "phase", 20*time.Second, "length of each measured phase")
		fs.StringVar(&bc.Out, "out", "", "also write the report to this file")
	})
	if err != nil {
		return err
	}
	if bc.Devices < 1 || bc.Rate <= 0 || bc.Idle < 0 || bc.Sources < 1 || bc.Sources > 200 {
		return fmt.Errorf("bench conns: need devices ≥ 1, rate > 0, idle ≥ 0 and 1-200 sources")
	}
	raiseFileLimit(2*(bc.Idle+bc.Devices+bc.FloodConns+bc.Slow) + 4096)
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
	go func() {
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
	var rows []connsRow
	measure := func(name, note string) {
		runtime.GC()
		sleepCtx(ctx, 3*time.Second) // settle
		lat.collect(true)
		l0 := ingestLoad()
		sleepCtx(ctx, bc.Phase)
		v := lat.collect(false)
		slices.Sort(v)
		r := connsRow{name: name, note: note, lat: v, rss: rssBytes(), load: ingestLoad() - l0, conns: p.broker.Stats().ClientsConnected}
		rows = append(rows, r)
		say("%-24s p50 %6.1f ms  p99 %7.1f ms  (%d messages) %s", name, pct(v, 50), pct(v, 99), len(v), note)
	}
	say("warming up")
	sleepCtx(ctx, 5*time.Second)
	rss0 := rssBytes()
	measure("baseline", "")

	// (a) idle connections.
	say("opening %d idle connections from %d source addresses", bc.Idle, bc.Sources)
	runtime.GC()
	rssBefore, heapBefore := rssBytes(), heapBytes()
	// From a child process: this one's open-file limit (20 000 here, and
	// not raisable without CAP_SYS_RESOURCE) cannot hold both ends, and
	// this process's RSS is then the platform's alone.
	ic, err := startIdleChild(ctx, stderr, addr, slug, secret, total-bc.Idle, bc.Idle, bc.Sources)
	if err != nil {
		return err
	}
	defer ic.close()
	runtime.GC()
	sleepCtx(ctx, 2*time.Second)
	rssIdle, heapIdle := rssBytes(), heapBytes()
	measure("+ idle connections", fmt.Sprintf("%d held", ic.held))

	// (b) over-limit publishers.
	say("flood: %d over-limit publishers", bc.FloodConns)
	fctx, stopFlood := context.WithCancel(ctx)
	fw, fstats, err := startFlood(fctx, brokerURL, slug, flooders, secret, keys, bc.FloodRate)
	if err != nil {
		stopFlood()
		return err
	}
	l0 := p.broker.LimitStats()
	measure("+ over-limit flood", "")
	l1 := p.broker.LimitStats()
	stopFlood()
	fw.Wait()
	rows[len(rows)-1].note = fmt.Sprintf("%d QoS 1 acked (%d held, %d disconnected), %d QoS 0 sent (%d dropped)",
		fstats.acked.Load(), l1.Throttled-l0.Throttled, l1.RateDisconnects-l0.RateDisconnects, fstats.sent0.Load(), l1.RateDropped-l0.RateDropped)

	// (c) slow readers.
	say("slow readers: %d", bc.Slow)
	sctx, stopSlow := context.WithCancel(ctx)
	sc, sent, err := startSlowReaders(sctx, p, addr, slug, slow, secret)
	if err != nil {
		stopSlow()
		return err
	}
	measure("+ slow readers", "")
	stopSlow()
	rows[len(rows)-1].note = fmt.Sprintf("%d commands queued to them, %d closed for not reading", sent.Load(), p.broker.LimitStats().SlowReaders)
	for _, c := range sc {
		_ = c.Close()
	}

	// (d) connect storm from one address.
	say("connect storm: %d dialers from 127.0.0.254, %.0f attempts/s", bc.StormConns, bc.StormRate)
	stctx, stopStorm := context.WithCancel(ctx)
	var st stormStats
	var sw sync.WaitGroup
	pace := time.NewTicker(time.Duration(float64(time.Second) / bc.StormRate))
	defer pace.Stop()
	for i := range bc.StormConns {
		sw.Add(1)
		go func() { defer sw.Done(); storm1(stctx, addr, storm[i]+"@"+slug, secret, pace.C, &st) }()
	}
	r0 := p.broker.LimitStats().ConnectsRefused
	measure("+ connect storm", "")
	stopStorm()
	sw.Wait()
	rows[len(rows)-1].note = fmt.Sprintf("%d attempts, %d accepted, %d refused by the broker",
		st.attempts.Load(), st.accepted.Load(), p.broker.LimitStats().ConnectsRefused-r0)

	idleHeld := ic.held
	ic.close()
	measure("baseline again", "idle connections closed")
	stopRun()
	wg.Wait()
	close(pending)
	for _, c := range clients {
		c.Disconnect(100)
	}

	var b strings.Builder
	fmt.Fprintf(&b, "nxcloud bench conns — %s, %d CPUs, GOMAXPROCS %d, storage %s\n", time.Now().UTC().Format(time.RFC3339), runtime.NumCPU(), runtime.GOMAXPROCS(0), p.flavor)
	fmt.Fprintf(&b, "command: nxcloud bench conns %s\n", strings.Join(args, " "))
	fmt.Fprintf(&b, "machine load (1-minute average) at start %s, at end %s\n", loadavg0, loadavg())
	fmt.Fprintf(&b, "limits: %d publishes/s (burst %d) and %d B/s (burst %d) per device, QoS 1 held ≤ %s; %d connects/s (burst %d) per address; write timeout %s\n",
		cfg.MQTTDeviceRate, cfg.MQTTDeviceBurst, cfg.MQTTDeviceBytes, cfg.MQTTDeviceBytesBurst, cfg.MQTTThrottleMax, cfg.MQTTConnectRate, cfg.MQTTConnectBurst, cfg.MQTTWriteTimeout)
	fmt.Fprintf(&b, "\nidle connections: %d from %d loopback addresses of a child process (MQTT 3.1.1, keepalive 120 s, one device each)\n", idleHeld, bc.Sources)
	fmt.Fprintf(&b, "  connect: %.1f s for all (%.0f/s, 64 at a time), CONNECT→CONNACK p50 %.1f ms p99 %.1f ms (first connection of each device: credentials from the database)\n",
		ic.took.Seconds(), float64(idleHeld)/ic.took.Seconds(), ic.p50, ic.p99)
	fmt.Fprintf(&b, "  RSS of the platform's process: %s at start, %s before, %s with them → %.1f KiB per connection (Go heap+stacks %.1f KiB per connection)\n",
		mib(rss0), mib(rssBefore), mib(rssIdle), float64(rssIdle-rssBefore)/1024/float64(max(1, idleHeld)), float64(heapIdle-heapBefore)/1024/float64(max(1, idleHeld)))
	fmt.Fprintf(&b, "\npublish→commit latency of %d well-behaved devices × %.0f msg/s (QoS 1), %s per phase, same run:\n", bc.Devices, bc.Rate, bc.Phase)
	fmt.Fprintf(&b, "  %-22s %9s %9s %9s %9s %8s %6s %6s %9s %7s  %s\n", "phase", "p50 ms", "p90 ms", "p99 ms", "max ms", "msgs", "p50×", "p99×", "RSS", "conns", "")
	base := rows[0]
	for _, r := range rows {
		fmt.Fprintf(&b, "  %-22s %9.1f %9.1f %9.1f %9.1f %8d %6.2f %6.2f %9s %7d  %s\n", r.name, pct(r.lat, 50), pct(r.lat, 90), pct(r.lat, 99), pct(r.lat, 100),
			len(r.lat), pct(r.lat, 50)/pct(base.lat, 50), pct(r.lat, 99)/pct(base.lat, 99), mib(r.rss), r.conns, r.note)
	}
	fmt.Fprintf(&b, "  (× = ratio to the baseline phase; target ≤ 2; %d publishes of well-behaved devices failed)\n", failed.Load())
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
	name, note string
	lat        []float32
	rss        int64
	load       float64
	conns      int64
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

// raiseFileLimit lifts RLIMIT_NOFILE to at least n (root may raise the hard
// limit too); it reports nothing and leaves the limit as it is on failure.
func raiseFileLimit(n int) {
	var r syscall.Rlimit
	if syscall.Getrlimit(syscall.RLIMIT_NOFILE, &r) != nil || r.Cur >= uint64(n) {
		return
	}
	want := syscall.Rlimit{Cur: uint64(n), Max: max(r.Max, uint64(n))}
	if syscall.Setrlimit(syscall.RLIMIT_NOFILE, &want) != nil {
		r.Cur = r.Max
		_ = syscall.Setrlimit(syscall.RLIMIT_NOFILE, &r)
	}
}

// rssBytes is the process's resident set (VmRSS).
func rssBytes() int64 {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			kb, _ := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
			return kb * 1024
		}
	}
	return 0
}

func heapBytes() int64 {
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return int64(m.HeapInuse + m.StackInuse)
}

func mib(n int64) string { return fmt.Sprintf("%.0f MiB", float64(n)/(1<<20)) }

var loadavg0 = loadavg()

func loadavg() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "?"
	}
	f := strings.Fields(string(b))
	if len(f) == 0 {
		return "?"
	}
	return f[0]
}

// ingestLoad is the process's CPU time in seconds (user+system), to show
// what each phase cost.
func ingestLoad() float64 {
	var ru syscall.Rusage
	if syscall.Getrusage(syscall.RUSAGE_SELF, &ru) != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano()).Seconds()
}

// rawConnect opens an MQTT 3.1.1 connection from local address from and
// returns it once the broker has answered CONNACK (code 0 = accepted).
func rawConnect(addr string, from net.IP, username, secret string, keepalive uint16) (net.Conn, byte, error) {
	d := net.Dialer{Timeout: 30 * time.Second}
	if from != nil {
		d.LocalAddr = &net.TCPAddr{IP: from}
	}
	c, err := d.Dial("tcp", addr)
	if err != nil {
		return nil, 0, err
	}
	pk := packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Connect}, ProtocolVersion: 4,
		Connect: packets.ConnectParams{ProtocolName: []byte("MQTT"), Clean: true, Keepalive: keepalive, ClientIdentifier: username,
			UsernameFlag: true, Username: []byte(username), PasswordFlag: true, Password: []byte(secret)}}
	var buf bytes.Buffer
	if err := pk.ConnectEncode(&buf); err != nil {
		c.Close()
		return nil, 0, err
	}
	_ = c.SetDeadline(time.Now().Add(30 * time.Second))
	if _, err := c.Write(buf.Bytes()); err != nil {
		c.Close()
		return nil, 0, err
	}
	var ack [4]byte
	if _, err := io.ReadFull(c, ack[:]); err != nil {
		c.Close()
		return nil, 0, err
	}
	_ = c.SetDeadline(time.Time{})
	if ack[0] != 0x20 {
		c.Close()
		return nil, 0, fmt.Errorf("bench conns: %s got packet %#x instead of CONNACK", username, ack[0])
	}
	return c, ack[3], nil
}
