package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"
	"github.com/google/uuid"

	"github.com/nxcloud/nxcloud/migrations"
	"github.com/nxcloud/nxcloud/tenants"
)

// cmdChaos is the ingest fault test (issue 7): devices publish QoS 1
// messages carrying sequence numbers (each message's ts is the device's base
// time plus its sequence number in milliseconds) to an nxcloud child process
// on a PostgreSQL and a Redis of the test's own; meanwhile nxcloud is
// SIGKILLed twice, PostgreSQL is stopped for a minute and Redis restarted.
// At the end every sequence number a device saw acknowledged must be stored
// exactly once, and nothing that was never sent may be.
func cmdChaos(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) error {
	var bin *string
	var devices, rate *int
	var duration, pgDown *time.Duration
	var keep *bool
	if _, err := parseCommand("chaos", args, getenv, stderr, func(fs *flag.FlagSet) {
		bin = fs.String("bin", "bin/nxcloud", "the nxcloud binary to run as the child (build it first: go build -o bin/nxcloud ./cmd/nxcloud)")
		devices = fs.Int("devices", 200, "devices publishing QoS 1 messages, one connection each")
		rate = fs.Int("rate", 5, "messages per second per device")
		duration = fs.Duration("duration", 150*time.Second, "how long traffic runs; faults fall at fixed shares of it")
		pgDown = fs.Duration("pg-down", 60*time.Second, "how long PostgreSQL stays stopped")
		keep = fs.Bool("keep", false, "keep the private PostgreSQL data directory for inspection")
	}); err != nil {
		return err
	}
	if *duration < *pgDown+60*time.Second {
		return fmt.Errorf("chaos: --duration must leave a minute besides --pg-down (%s)", *pgDown)
	}
	say := func(format string, a ...any) {
		fmt.Fprintf(stdout, "chaos %s: "+format+"\n", append([]any{time.Now().Format("15:04:05")}, a...)...)
	}
	work, err := os.MkdirTemp("", "nxcloud-chaos-")
	if err != nil {
		return err
	}
	if !*keep {
		defer os.RemoveAll(work)
	}

	pg, err := startPrivatePostgres(ctx, filepath.Join(work, "pg"), stderr)
	if err != nil {
		return err
	}
	defer pg.stop()
	say("private PostgreSQL on %s (%s)", pg.addr, pg.dir)
	rd, err := startPrivateRedis(ctx, stderr)
	if err != nil {
		return err
	}
	defer rd.stop()
	say("private Redis on %s", rd.addr)

	pool, err := openPool(ctx, pg.url(), 4)
	if err != nil {
		return err
	}
	defer pool.Close()
	if _, err := migrations.Up(ctx, pool, migrations.Options{}); err != nil {
		return err
	}
	templates, err := tenants.Templates()
	if err != nil {
		return err
	}
	svc := tenants.NewService(tenants.DB{System: pool, App: pool}, templates, 0)
	if err := svc.LoadSectors(ctx); err != nil {
		return err
	}
	slug := "chaos-" + uuid.NewString()[:8]
	tn, _, err := svc.CreateEnterprise(ctx, tenants.EnterpriseInput{Slug: slug, Name: "Ingest fault test", Sector: "magnetic-materials"})
	if err != nil {
		return err
	}
	const secret = "chaos-device-secret"
	keys := make([]string, *devices)
	for i := range keys {
		keys[i] = fmt.Sprintf("mill-%04d", i)
		if _, _, err := svc.RegisterDevice(ctx, tn.ID, tenants.DeviceInput{Key: keys[i], Model: "jet-mill", Secret: secret}); err != nil {
			return err
		}
	}
	say("enterprise %s with %d devices", slug, len(keys))

	httpAddr, mqttAddr := freeAddr(), freeAddr()
	child := &childProc{bin: *bin, stderr: stderr, args: []string{"serve",
		"--http-addr", httpAddr, "--mqtt-addr", mqttAddr, "--mqtt-ws-addr", "",
		"--database-url", pg.url(), "--redis-url", rd.url(), "--log-level", "warn",
		"--ingest-durability", "spool", "--ingest-spool-dir", filepath.Join(work, "spool"),
		"--mqtt-session-store", filepath.Join(work, "sessions.db"),
		// The fault test's own traffic must not trip the abuse limits.
		"--mqtt-connect-rate", "-1"}}
	base := "http://" + httpAddr
	if err := child.start(ctx, base); err != nil {
		return err
	}
	defer child.kill()
	say("nxcloud up (HTTP %s, MQTT %s)", httpAddr, mqttAddr)

	// Traffic.
	start := time.Now().Add(-time.Hour).Truncate(time.Second)
	acks := make([]*chaosDevice, len(keys))
	runCtx, stopTraffic := context.WithCancel(ctx)
	var wg sync.WaitGroup
	var acked, resent atomic.Int64
	for i, k := range keys {
		d := &chaosDevice{key: k}
		acks[i] = d
		wg.Add(1)
		go func() {
			defer wg.Done()
			d.run(runCtx, "tcp://"+mqttAddr, slug, secret, start, time.Second/time.Duration(*rate), &acked, &resent)
		}()
	}

	d := *duration
	type fault struct {
		at   time.Duration
		name string
		do   func() error
	}
	restart := func() error {
		child.kill()
		time.Sleep(300 * time.Millisecond)
		return child.start(ctx, base)
	}
	faults := []fault{
		{d / 10, "SIGKILL nxcloud (1/2) and start it again", restart},
		{d / 5, "stop PostgreSQL for " + pgDown.String(), pg.stopServer},
		{d/5 + *pgDown, "start PostgreSQL", pg.startServer},
		{d/5 + *pgDown + (d-d/5-*pgDown)/4, "SIGKILL nxcloud (2/2) and start it again", restart},
		{d/5 + *pgDown + (d-d/5-*pgDown)/2, "restart Redis", rd.restart},
	}
	t0 := time.Now()
	for _, f := range faults {
		sleepCtx(ctx, time.Until(t0.Add(f.at)))
		if ctx.Err() != nil {
			break
		}
		say("%s — %d messages acknowledged so far, %d re-sent", f.name, acked.Load(), resent.Load())
		if err := f.do(); err != nil {
			stopTraffic()
			wg.Wait()
			return fmt.Errorf("%s: %w", f.name, err)
		}
	}
	sleepCtx(ctx, time.Until(t0.Add(d)))
	stopTraffic()
	wg.Wait()
	say("traffic stopped: %d messages acknowledged, %d re-sent after a lost acknowledgement or a refusal", acked.Load(), resent.Load())

	// Wait until the spool is drained (readyz reports the backlog) or stored
	// rows stop moving, then stop nxcloud gracefully.
	say("waiting for the spool to drain")
	deadline := time.Now().Add(3 * time.Minute)
	var stored int64
	for last := int64(-1); time.Now().Before(deadline); {
		if err := pool.QueryRow(ctx, `SELECT count(*) FROM telemetry WHERE tenant_id = $1`, tn.ID).Scan(&stored); err != nil {
			return err
		}
		if stored >= acked.Load() && stored == last && spoolEmpty(base) {
			break
		}
		last = stored
		sleepCtx(ctx, time.Second)
	}
	if err := child.stop(); err != nil {
		return err
	}

	// The proof: per device, the stored timestamps against the acknowledged
	// and the sent sequence numbers.
	metric := 0
	if err := pool.QueryRow(ctx, `SELECT m.id FROM metrics m JOIN device_models dm ON dm.id = m.device_model_id
		WHERE m.tenant_id = $1 AND dm.key = 'jet-mill' AND m.key = 'd50_um'`, tn.ID).Scan(&metric); err != nil {
		return err
	}
	rows, err := pool.Query(ctx, `SELECT d.key, t.ts, count(*) OVER (PARTITION BY t.device_id, t.metric_id, t.ts)
		FROM telemetry t JOIN devices d ON d.id = t.device_id WHERE t.tenant_id = $1 AND t.metric_id = $2`, tn.ID, metric)
	if err != nil {
		return err
	}
	storedSeq := map[string]map[int64]bool{}
	var dups, total int64
	for rows.Next() {
		var key string
		var ts time.Time
		var n int64
		if err := rows.Scan(&key, &ts, &n); err != nil {
			rows.Close()
			return err
		}
		total++
		if n > 1 {
			dups++
		}
		if storedSeq[key] == nil {
			storedSeq[key] = map[int64]bool{}
		}
		storedSeq[key][ts.Sub(start).Milliseconds()] = true
	}
	rows.Close()
	var missing, unsent int64
	var examples []string
	for _, dv := range acks {
		for _, s := range dv.acked {
			if !storedSeq[dv.key][s] {
				missing++
				if len(examples) < 5 {
					examples = append(examples, fmt.Sprintf("%s#%d", dv.key, s))
				}
			}
		}
		for s := range storedSeq[dv.key] {
			if s < 0 || s >= dv.next {
				unsent++
			}
		}
	}
	say("acknowledged %d sequence numbers; stored %d rows; acknowledged but not stored %d; stored twice %d; stored but never sent %d",
		acked.Load(), total, missing, dups, unsent)
	var errs []error
	if missing > 0 {
		sort.Strings(examples)
		errs = append(errs, fmt.Errorf("%d acknowledged messages were lost (e.g. %s)", missing, strings.Join(examples, ", ")))
	}
	if dups > 0 {
		errs = append(errs, fmt.Errorf("%d points stored more than once", dups))
	}
	if unsent > 0 {
		errs = append(errs, fmt.Errorf("%d stored points were never sent", unsent))
	}
	if acked.Load() == 0 {
		errs = append(errs, errors.New("nothing was acknowledged: the test proved nothing"))
	}
	if len(errs) > 0 {
		return errors.Join(errs...)
	}
	say("PASS: every acknowledged sequence number (%d) is stored exactly once", acked.Load())
	return nil
}

// spoolEmpty reports whether nxcloud's /readyz shows no ingest backlog.
func spoolEmpty(base string) bool {
	resp, err := http.Get(base + "/readyz")
	if err != nil {
		return false
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return strings.Contains(string(b), `"ingest_backlog":"0 messages`)
}

// chaosDevice publishes its sequence numbers in order; a message whose
// acknowledgement does not come (nxcloud killed, refused under back-pressure)
// is sent again after reconnecting, as a device would.
type chaosDevice struct {
	key   string
	acked []int64 // sequence numbers acknowledged
	next  int64   // sequence numbers below it were sent at least once
}

func (d *chaosDevice) run(ctx context.Context, broker, slug, secret string, start time.Time, every time.Duration,
	acked, resent *atomic.Int64) {
	user := tenants.MQTTUsername(d.key, slug)
	var c mqtt.Client
	connect := func() bool {
		for ctx.Err() == nil {
			opts := mqtt.NewClientOptions().AddBroker(broker).SetClientID(user).SetUsername(user).SetPassword(secret).
				SetCleanSession(true).SetAutoReconnect(false).SetConnectRetry(false).SetConnectTimeout(5 * time.Second).
				SetKeepAlive(30 * time.Second)
			c = mqtt.NewClient(opts)
			tok := c.Connect()
			if tok.WaitTimeout(6*time.Second) && tok.Error() == nil {
				return true
			}
			sleepCtx(ctx, 500*time.Millisecond)
		}
		return false
	}
	if !connect() {
		return
	}
	defer func() { c.Disconnect(100) }()
	topic := "v1/" + slug + "/" + d.key + "/telemetry"
	tick := time.NewTicker(every)
	defer tick.Stop()
	seq := int64(0)
	for ctx.Err() == nil {
		ts := start.Add(time.Duration(seq) * time.Millisecond)
		payload := `{"ts":` + strconv.FormatInt(ts.UnixMilli(), 10) + `,"metrics":{"d50_um":` + strconv.FormatInt(3+seq%2, 10) + `}}`
		if seq >= d.next {
			d.next = seq + 1
		}
		tok := c.Publish(topic, 1, false, payload)
		if tok.WaitTimeout(15*time.Second) && tok.Error() == nil {
			d.acked = append(d.acked, seq)
			acked.Add(1)
			seq++
			select {
			case <-ctx.Done():
			case <-tick.C:
			}
			continue
		}
		// No acknowledgement: reconnect and send the same message again.
		resent.Add(1)
		c.Disconnect(0)
		if !connect() {
			return
		}
	}
}

// privatePostgres is a PostgreSQL server of the fault test's own, which it
// can stop and start without disturbing anyone else's database.
type privatePostgres struct {
	bindir, dir, addr, logFile string
	asUser                     []string // runuser prefix when running as root
	errw                       io.Writer
}

func startPrivatePostgres(ctx context.Context, dir string, errw io.Writer) (*privatePostgres, error) {
	bindir := ""
	if out, err := exec.Command("pg_config", "--bindir").Output(); err == nil {
		bindir = strings.TrimSpace(string(out))
	}
	if _, err := os.Stat(filepath.Join(bindir, "initdb")); bindir == "" || err != nil {
		cands, _ := filepath.Glob("/usr/lib/postgresql/*/bin/initdb")
		if len(cands) == 0 {
			return nil, errors.New("no PostgreSQL server binaries (initdb) found: install postgresql (make test does)")
		}
		sort.Strings(cands)
		bindir = filepath.Dir(cands[len(cands)-1])
	}
	p := &privatePostgres{bindir: bindir, dir: dir, addr: freeAddr(), errw: errw, logFile: dir + ".log"}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	if os.Geteuid() == 0 {
		// initdb refuses to run as root: run the server as postgres.
		u, err := user.Lookup("postgres")
		if err != nil {
			return nil, errors.New("running as root needs a postgres OS user for the private PostgreSQL")
		}
		uid, _ := strconv.Atoi(u.Uid)
		gid, _ := strconv.Atoi(u.Gid)
		for _, path := range []string{filepath.Dir(dir), dir} {
			if err := os.Chown(path, uid, gid); err != nil {
				return nil, err
			}
		}
		f, err := os.Create(p.logFile)
		if err != nil {
			return nil, err
		}
		f.Close()
		_ = os.Chown(p.logFile, uid, gid)
		p.asUser = []string{"runuser", "-u", "postgres", "--"}
	}
	if err := p.run(ctx, "initdb", "-D", dir, "-U", "nxcloud", "--auth=trust", "-E", "UTF8", "--no-instructions"); err != nil {
		return nil, err
	}
	if err := p.startServer(); err != nil {
		return nil, err
	}
	if err := p.run(ctx, "createdb", "-h", "127.0.0.1", "-p", p.port(), "-U", "nxcloud", "nxcloud"); err != nil {
		p.stop()
		return nil, err
	}
	return p, nil
}

func (p *privatePostgres) port() string { _, port, _ := net.SplitHostPort(p.addr); return port }

func (p *privatePostgres) url() string {
	return "postgres://nxcloud@" + p.addr + "/nxcloud?sslmode=disable"
}

func (p *privatePostgres) run(ctx context.Context, prog string, args ...string) error {
	argv := append(append(append([]string{}, p.asUser...), filepath.Join(p.bindir, prog)), args...)
	cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
	cmd.Dir = "/"
	out, err := cmd.CombinedOutput()
	if err != nil {
		return fmt.Errorf("%s: %w: %s", prog, err, strings.TrimSpace(string(out)))
	}
	return nil
}

// startServer starts the server (fsync on, as in production) and waits for it.
func (p *privatePostgres) startServer() error {
	opts := fmt.Sprintf("-c listen_addresses=127.0.0.1 -p %s -c unix_socket_directories='' -c fsync=on -c synchronous_commit=on -c max_connections=100", p.port())
	if err := p.run(context.Background(), "pg_ctl", "-D", p.dir, "-l", p.logFile, "-o", opts, "-w", "-t", "60", "start"); err != nil {
		return err
	}
	return nil
}

// stopServer stops the server at once (fast shutdown: connections are cut).
func (p *privatePostgres) stopServer() error {
	return p.run(context.Background(), "pg_ctl", "-D", p.dir, "-m", "fast", "-w", "-t", "60", "stop")
}

func (p *privatePostgres) stop() {
	_ = p.run(context.Background(), "pg_ctl", "-D", p.dir, "-m", "immediate", "-w", "-t", "30", "stop")
}
