package main

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"
	"github.com/google/uuid"

	"github.com/nxcloud/nxcloud/metering"
	"github.com/nxcloud/nxcloud/migrations"
	"github.com/nxcloud/nxcloud/tenants"
)

// cmdChaosMetering proves metering exact under failure: it runs `nxcloud
// serve` as a child process against the configured PostgreSQL, drives
// telemetry (paho, QoS 1, explicit timestamps) and API traffic (each request
// retried with its Idempotency-Key until answered), SIGKILLs the child twice
// and restarts Redis once, then checks that the telemetry points metered
// equal the rows stored, and that the API calls metered are exactly the
// requests answered, none twice.
func cmdChaosMetering(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) error {
	var bin, redisRestart *string
	var duration *time.Duration
	var devices, workers *int
	cfg, err := parseCommand("chaos-metering", args, getenv, stderr, func(fs *flag.FlagSet) {
		bin = fs.String("bin", "bin/nxcloud", "the nxcloud binary to run as the child (build it first: go build -o bin/nxcloud ./cmd/nxcloud)")
		duration = fs.Duration("duration", 40*time.Second, "how long traffic runs (the kills and the Redis restart fall at 1/4, 1/2 and 3/4)")
		devices = fs.Int("devices", 5, "devices publishing telemetry")
		workers = fs.Int("workers", 4, "concurrent API clients")
		redisRestart = fs.String("redis-restart", "", "command that restarts the Redis of --redis-url (e.g. 'deploy/local/services.sh restart-redis'); "+
			"empty: the check runs its own redis-server on a free port and restarts it (without persistence: every hot counter is lost)")
	})
	if err != nil {
		return err
	}
	say := func(format string, a ...any) { fmt.Fprintf(stdout, "chaos-metering: "+format+"\n", a...) }
	pool, err := openPool(ctx, cfg.DatabaseURL, 4)
	if err != nil {
		return err
	}
	defer pool.Close()
	if _, err := migrations.Up(ctx, pool, migrations.Options{Timescale: cfg.Timescale}); err != nil {
		return err
	}

	redisURL, restartRedis := cfg.RedisURL, func() error {
		c := exec.CommandContext(ctx, "sh", "-c", *redisRestart)
		c.Stdout, c.Stderr = stderr, stderr
		return c.Run()
	}
	if *redisRestart == "" {
		r, err := startPrivateRedis(ctx, stderr)
		if err != nil {
			return err
		}
		defer r.stop()
		redisURL, restartRedis = r.url(), r.restart
		say("private Redis on %s", r.addr)
	}

	// A fresh enterprise with its devices.
	templates, err := tenants.Templates()
	if err != nil {
		return err
	}
	appURL, err := cfg.appURL()
	if err != nil {
		return err
	}
	app, err := openPool(ctx, appURL, 2)
	if err != nil {
		return err
	}
	defer app.Close()
	svc := tenants.NewService(tenants.DB{System: pool, App: app}, templates, 0)
	if err := svc.LoadSectors(ctx); err != nil {
		return err
	}
	slug := "chaos-" + uuid.NewString()[:8]
	tn, apiKey, err := svc.CreateEnterprise(ctx, tenants.EnterpriseInput{Slug: slug, Name: "Chaos metering " + slug, Sector: "magnetic-materials"})
	if err != nil {
		return err
	}
	type dev struct{ key, secret string }
	var devs []dev
	for i := 0; i < *devices; i++ {
		d, secret, err := svc.RegisterDevice(ctx, tn.ID, tenants.DeviceInput{Key: fmt.Sprintf("mill-%02d", i+1), Model: "jet-mill"})
		if err != nil {
			return err
		}
		devs = append(devs, dev{d.Key, secret})
	}
	// Soft quotas, so hot counters are kept (and lost with Redis, and rebuilt).
	meter := metering.New(metering.Config{}, pool, pool, nil)
	plan, err := meter.CreatePlan(ctx, metering.PlanInput{Code: slug, Name: "Chaos", Currency: "EUR", Definition: metering.Definition{
		Quotas: []metering.Quota{{Meter: metering.MeterAPICalls, Limit: 1 << 40}, {Meter: metering.MeterPoints, Limit: 1 << 40}}}}, "chaos-metering")
	if err != nil {
		return err
	}
	if _, err := meter.Subscribe(ctx, pool, tn.ID, metering.SubscriptionInput{Plan: plan.Code}, "chaos-metering"); err != nil {
		return err
	}
	say("enterprise %s (%s), %d devices, plan %s", slug, tn.ID, len(devs), plan.Code)

	httpAddr, mqttAddr := freeAddr(), freeAddr()
	child := &childProc{bin: *bin, args: []string{"serve", "--http-addr", httpAddr, "--mqtt-addr", mqttAddr, "--mqtt-ws-addr", "",
		"--redis-url", redisURL, "--database-url", cfg.DatabaseURL, "--log-level", "warn"}, stderr: stderr}
	if cfg.AppDatabaseURL != "" {
		child.args = append(child.args, "--app-database-url", cfg.AppDatabaseURL)
	}
	base := "http://" + httpAddr
	if err := child.start(ctx, base); err != nil {
		return err
	}
	defer child.kill()

	runCtx, stopTraffic := context.WithCancel(ctx)
	var wg sync.WaitGroup
	var published atomic.Int64
	for i, d := range devs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			chaosPublish(runCtx, "tcp://"+mqttAddr, slug, d.key, d.secret, int64(i), &published)
		}()
	}
	var answered sync.Map // idempotency key → true, for requests answered 2xx
	var sent, retries atomic.Int64
	for w := 0; w < *workers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			client := &http.Client{Timeout: 5 * time.Second}
			for runCtx.Err() == nil {
				key := uuid.NewString()
				sent.Add(1)
				// Retry the same request until it is answered, across kills.
				for {
					req, _ := http.NewRequest(http.MethodGet, base+"/api/v1/tenant", nil)
					req.Header.Set("Authorization", "Bearer "+apiKey)
					req.Header.Set("Idempotency-Key", key)
					resp, err := client.Do(req)
					if err == nil {
						_, _ = io.Copy(io.Discard, resp.Body)
						resp.Body.Close()
						if resp.StatusCode == http.StatusOK {
							answered.Store(key, true)
							break
						}
					}
					retries.Add(1)
					time.Sleep(100 * time.Millisecond)
				}
			}
		}()
	}

	step := *duration / 4
	for i, action := range []string{"SIGKILL nxcloud", "restart Redis", "SIGKILL nxcloud"} {
		sleepCtx(ctx, step)
		say("%s (%d/3) after %s: %d telemetry messages acknowledged, %d API requests sent", action, i+1, step*time.Duration(i+1), published.Load(), sent.Load())
		switch action {
		case "SIGKILL nxcloud":
			child.kill()
			time.Sleep(500 * time.Millisecond)
			if err := child.start(ctx, base); err != nil {
				stopTraffic()
				return err
			}
		case "restart Redis":
			if err := restartRedis(); err != nil {
				stopTraffic()
				return fmt.Errorf("restart Redis: %w", err)
			}
		}
	}
	sleepCtx(ctx, step)
	stopTraffic()
	wg.Wait()
	say("traffic stopped; stopping nxcloud (SIGTERM: ingest flushes)")
	if err := child.stop(); err != nil {
		return err
	}

	// The proof.
	var rows, metered, rejected int64
	if err := pool.QueryRow(ctx, `SELECT count(*) FROM telemetry WHERE tenant_id = $1`, tn.ID).Scan(&rows); err != nil {
		return err
	}
	if metered, rejected, err = meter.TelemetryTotals(ctx, tn.ID); err != nil {
		return err
	}
	var dead int64
	if err := pool.QueryRow(ctx, `SELECT count(*) FROM dead_letters WHERE tenant_id = $1`, tn.ID).Scan(&dead); err != nil {
		return err
	}
	keys := map[string]bool{}
	dbRows, err := pool.Query(ctx, `SELECT idem_key FROM usage_events WHERE tenant_id = $1 AND meter = 'api.calls' AND subject = 'tenant:read'`, tn.ID)
	if err != nil {
		return err
	}
	for dbRows.Next() {
		var k string
		if err := dbRows.Scan(&k); err != nil {
			dbRows.Close()
			return err
		}
		keys[k] = true
	}
	dbRows.Close()
	var nAnswered, missing int
	answered.Range(func(k, _ any) bool {
		nAnswered++
		if !keys[apiIdem("GET", "/api/v1/tenant", k.(string))] {
			missing++
		}
		delete(keys, apiIdem("GET", "/api/v1/tenant", k.(string)))
		return true
	})
	extra := len(keys)
	say("telemetry: %d messages acknowledged, %d rows stored, %d points metered; %d dead letters stored, %d rejected parts metered",
		published.Load(), rows, metered, dead, rejected)
	say("API: %d requests answered (%d retries), %d metered; %d answered but not metered, %d metered but not answered",
		nAnswered, retries.Load(), nAnswered-missing+extra, missing, extra)
	var errs []error
	if rows != metered {
		errs = append(errs, fmt.Errorf("points metered %d ≠ rows stored %d", metered, rows))
	}
	if rejected != dead {
		errs = append(errs, fmt.Errorf("rejected parts metered %d ≠ dead letters stored %d", rejected, dead))
	}
	if rows == 0 {
		errs = append(errs, errors.New("no telemetry was stored: the check proved nothing"))
	}
	if missing != 0 || extra != 0 || nAnswered == 0 {
		errs = append(errs, fmt.Errorf("API calls: %d answered, %d missing from the ledger, %d in the ledger not answered", nAnswered, missing, extra))
	}
	if len(errs) > 0 {
		return errors.Join(errs...)
	}
	say("PASS: points metered = rows stored (%d); API calls metered = requests answered (%d), none twice", rows, nAnswered)
	return nil
}

// apiIdem is the ledger key api/metering.go gives a request.
func apiIdem(method, route, key string) string {
	sum := sha256.Sum256([]byte(method + " " + route + "\x00" + key))
	return "api:" + hex.EncodeToString(sum[:16])
}

// chaosPublish sends QoS 1 readings with explicit, unique timestamps until ctx
// ends, reconnecting across kills; it counts acknowledged messages.
func chaosPublish(ctx context.Context, broker, slug, key, secret string, n int64, acked *atomic.Int64) {
	opts := mqtt.NewClientOptions().AddBroker(broker).SetClientID("chaos-" + slug + "-" + key).
		SetUsername(key + "@" + slug).SetPassword(secret).SetCleanSession(true).
		SetAutoReconnect(true).SetConnectRetry(true).SetConnectRetryInterval(200 * time.Millisecond).SetMaxReconnectInterval(time.Second)
	c := mqtt.NewClient(opts)
	c.Connect().WaitTimeout(5 * time.Second)
	defer c.Disconnect(100)
	topic := "v1/" + slug + "/" + key + "/telemetry"
	start := time.Now().Add(-time.Hour).UnixMilli() + n*7
	for i := int64(0); ctx.Err() == nil; i++ {
		ts := start + i*50 // unique per device
		payload := fmt.Sprintf(`{"ts":%d,"metrics":{"d50_um":%s,"power_kw":%s}}`, ts,
			strconv.FormatFloat(4+float64(i%10)/10, 'f', 2, 64), strconv.FormatFloat(20+float64(i%7), 'f', 1, 64))
		if i%25 == 24 { // a part ingest rejects (unknown metric): dead-lettered, metered as rejected
			payload = fmt.Sprintf(`{"ts":%d,"metrics":{"d50_um":4.1,"no_such_metric":1}}`, ts)
		}
		tok := c.Publish(topic, 1, false, payload)
		if tok.WaitTimeout(5*time.Second) && tok.Error() == nil {
			acked.Add(1)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

type childProc struct {
	bin    string
	args   []string
	stderr io.Writer
	cmd    *exec.Cmd
	done   chan error
}

func (c *childProc) start(ctx context.Context, base string) error {
	c.cmd = exec.Command(c.bin, c.args...)
	c.cmd.Stdout, c.cmd.Stderr = io.Discard, c.stderr
	c.cmd.Env = os.Environ()
	if err := c.cmd.Start(); err != nil {
		return fmt.Errorf("start %s: %w (build it: go build -o bin/nxcloud ./cmd/nxcloud)", c.bin, err)
	}
	c.done = make(chan error, 1)
	go func() { c.done <- c.cmd.Wait() }()
	deadline := time.Now().Add(60 * time.Second)
	for time.Now().Before(deadline) {
		select {
		case err := <-c.done:
			return fmt.Errorf("nxcloud exited while starting: %v", err)
		default:
		}
		if resp, err := http.Get(base + "/healthz"); err == nil {
			resp.Body.Close()
			return nil
		}
		sleepCtx(ctx, 100*time.Millisecond)
	}
	return errors.New("nxcloud did not answer /healthz within 60 s")
}

func (c *childProc) kill() {
	if c.cmd == nil || c.cmd.Process == nil {
		return
	}
	_ = c.cmd.Process.Signal(syscall.SIGKILL)
	<-c.done
	c.cmd = nil
}

func (c *childProc) stop() error {
	if c.cmd == nil {
		return nil
	}
	_ = c.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-c.done:
		c.cmd = nil
		return nil
	case <-time.After(60 * time.Second):
		c.kill()
		return errors.New("nxcloud did not stop within 60 s of SIGTERM")
	}
}

func freeAddr() string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "127.0.0.1:0"
	}
	defer ln.Close()
	return ln.Addr().String()
}

// privateRedis is a redis-server of the check's own, without persistence,
// so its restart loses every hot counter.
type privateRedis struct {
	addr string
	dir  string
	cmd  *exec.Cmd
	done chan error
	errw io.Writer
}

func startPrivateRedis(ctx context.Context, errw io.Writer) (*privateRedis, error) {
	dir, err := os.MkdirTemp("", "nxcloud-chaos-redis-")
	if err != nil {
		return nil, err
	}
	r := &privateRedis{addr: freeAddr(), dir: dir, errw: errw}
	return r, r.start(ctx)
}

func (r *privateRedis) url() string { return "redis://" + r.addr + "/0" }

func (r *privateRedis) start(ctx context.Context) error {
	host, port, _ := net.SplitHostPort(r.addr)
	r.cmd = exec.Command("redis-server", "--bind", host, "--port", port, "--save", "", "--appendonly", "no", "--dir", r.dir)
	r.cmd.Stdout, r.cmd.Stderr = io.Discard, r.errw
	if err := r.cmd.Start(); err != nil {
		return fmt.Errorf("start redis-server (install redis-server, or pass --redis-restart): %w", err)
	}
	r.done = make(chan error, 1)
	go func() { r.done <- r.cmd.Wait() }()
	for i := 0; i < 100; i++ {
		if c, err := net.Dial("tcp", r.addr); err == nil {
			c.Close()
			return nil
		}
		sleepCtx(ctx, 50*time.Millisecond)
	}
	return errors.New("redis-server did not listen")
}

func (r *privateRedis) stop() {
	if r.cmd != nil && r.cmd.Process != nil {
		_ = r.cmd.Process.Signal(syscall.SIGKILL)
		<-r.done
		r.cmd = nil
	}
	os.RemoveAll(r.dir)
}

func (r *privateRedis) restart() error {
	r.stop()
	dir, err := os.MkdirTemp("", "nxcloud-chaos-redis-")
	if err != nil {
		return err
	}
	r.dir = dir
	return r.start(context.Background())
}
