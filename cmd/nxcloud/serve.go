package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/redis/go-redis/v9"

	"github.com/nxcloud/nxcloud/api"
	"github.com/nxcloud/nxcloud/apps/telemetry"
	"github.com/nxcloud/nxcloud/broker"
	"github.com/nxcloud/nxcloud/ingest"
	"github.com/nxcloud/nxcloud/metering"
	"github.com/nxcloud/nxcloud/migrations"
	"github.com/nxcloud/nxcloud/tenants"
)

func cmdServe(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) error {
	cfg, err := parseCommand("serve", args, getenv, stderr, nil)
	if err != nil {
		return err
	}
	log, err := newLogger(stderr, cfg.LogLevel, cfg.LogFormat)
	if err != nil {
		return err
	}
	p, err := startPlatform(ctx, cfg, log, platformOptions{})
	if err != nil {
		return err
	}
	p.printURLs(stdout)
	<-ctx.Done()
	return p.shutdown()
}

type platformOptions struct {
	onCommit func(time.Time, []ingest.Item)
	onStored func(context.Context, pgx.Tx, []ingest.Usage) error
	// meteringOff, when set and true, skips the metering hook (nxcloud
	// bench-metering alternates it to measure its cost).
	meteringOff *atomic.Bool
}

// platform is one running nxcloud: pools, Redis, ingest, broker, HTTP API.
type platform struct {
	cfg     config
	log     *slog.Logger
	sys     *pgxpool.Pool
	app     *pgxpool.Pool
	flavor  string
	rdb     *redis.Client
	tenants *tenants.Service
	hot     *ingest.Hot
	pipe    *ingest.Pipeline
	meter   *metering.Service
	broker  *broker.Broker
	api     *api.Server
	httpLn  net.Listener
	reg     *prometheus.Registry

	bg      sync.WaitGroup
	stopBg  context.CancelFunc
	httpErr chan error
}

func openPool(ctx context.Context, url string, maxConns int32) (*pgxpool.Pool, error) {
	pc, err := pgxpool.ParseConfig(url)
	if err != nil {
		return nil, fmt.Errorf("database URL %s: %w", redact(url), err)
	}
	if maxConns > 0 {
		pc.MaxConns = maxConns
	}
	pool, err := pgxpool.NewWithConfig(ctx, pc)
	if err != nil {
		return nil, err
	}
	pctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if err := pool.Ping(pctx); err != nil {
		pool.Close()
		return nil, fmt.Errorf("cannot reach PostgreSQL at %s: %w\n  start one with `make run` (local services) or set NXCLOUD_DATABASE_URL", redact(url), err)
	}
	return pool, nil
}

func startPlatform(ctx context.Context, cfg config, log *slog.Logger, opt platformOptions) (_ *platform, err error) {
	p := &platform{cfg: cfg, log: log, reg: prometheus.NewRegistry(), httpErr: make(chan error, 1)}
	defer func() {
		if err != nil {
			p.closePools()
		}
	}()
	p.sys, err = openPool(ctx, cfg.DatabaseURL, int32(cfg.IngestWriters+6))
	if err != nil {
		return nil, err
	}
	if cfg.NoMigrate {
		p.flavor, err = migrations.Flavor(ctx, p.sys)
	} else {
		p.flavor, err = migrations.Up(ctx, p.sys, migrations.Options{Timescale: cfg.Timescale, Logger: log})
	}
	if err != nil {
		return nil, err
	}
	appURL, err := cfg.appURL()
	if err != nil {
		return nil, err
	}
	p.app, err = openPool(ctx, appURL, 20)
	if err != nil {
		return nil, fmt.Errorf("%w\n  the app role nxcloud_app is created by the migrations; set NXCLOUD_APP_DATABASE_URL if it needs a password", err)
	}
	templates, err := tenants.Templates()
	if err != nil {
		return nil, err
	}
	p.tenants = tenants.NewService(tenants.DB{System: p.sys, App: p.app}, templates, cfg.AuthCacheTTL)
	if err := p.tenants.LoadSectors(ctx); err != nil {
		return nil, err
	}
	ropt, err := redis.ParseURL(cfg.RedisURL)
	if err != nil {
		return nil, fmt.Errorf("redis URL %s: %w", redact(cfg.RedisURL), err)
	}
	p.rdb = redis.NewClient(ropt)
	p.tenants.UseRedis(p.rdb)
	if err := p.rdb.Ping(ctx).Err(); err != nil {
		log.Warn("Redis is not reachable; ingest goes on, latest values come from the database until it is", "url", redact(cfg.RedisURL), "err", err)
	}
	p.tenants.UseRedisGrants(ctx, p.rdb, log)
	p.hot = ingest.NewHot(p.rdb, 500*time.Millisecond, log)
	spool := ingest.SpoolConfig{Dir: cfg.IngestSpoolDir, BudgetBytes: int64(cfg.IngestSpoolBytes), SyncInterval: cfg.IngestSpoolSync}
	switch cfg.IngestDurability {
	case "spool":
	case "commit":
		spool.Dir = ""
	case "none":
		// The foundation's behaviour, for benchmarks only.
		spool.Dir, spool.AckOnAppend = "", true
		log.Warn("ingest durability none: QoS 1 messages are acknowledged before they are durable and are lost on a crash; use it only to measure the cost of durability")
	default:
		return nil, fmt.Errorf("ingest durability %q: want spool or commit (NXCLOUD_INGEST_DURABILITY)", cfg.IngestDurability)
	}
	// Metering counts telemetry in each ingest batch's transaction.
	p.meter = metering.New(metering.Config{Logger: log.With("app", "metering")}, p.sys, p.app, p.rdb)
	onStored := opt.onStored
	if cfg.Metering {
		onStored = meteringHook(p.meter, opt.onStored, opt.meteringOff)
	}
	p.pipe, err = ingest.New(ingest.Config{
		BatchPoints: cfg.IngestBatch, FlushInterval: cfg.IngestFlush, Writers: cfg.IngestWriters,
		Spool: spool, RecordInvalidations: p.flavor == migrations.FlavorPostgres,
		OnStored: onStored, OnCommit: opt.onCommit, Logger: log,
	}, p.sys, p.tenants, p.hot)
	if err != nil {
		return nil, err
	}
	p.pipe.Start()

	bgctx, stopBg := context.WithCancel(context.WithoutCancel(ctx))
	p.stopBg = stopBg
	maint := ingest.NewMaintainer(p.sys, p.flavor, log)
	maint.Retention = time.Duration(cfg.RetentionDays) * 24 * time.Hour
	p.bg.Add(1)
	go func() { defer p.bg.Done(); maint.Run(bgctx, cfg.MaintainEvery) }()

	p.broker, err = broker.New(broker.Config{
		TCPAddr: cfg.MQTTAddr, WSAddr: cfg.MQTTWSAddr, MaxPacketSize: uint32(cfg.MaxPacket),
		ConnectTimeout: cfg.MQTTConnectLimit, Limits: cfg.brokerLimits(),
		SessionStore: cfg.MQTTSessionStore, Admission: p.meter, Logger: log,
	}, p.tenants, p.pipe, p.pipe)
	if err != nil {
		return nil, err
	}
	if err := p.broker.Start(); err != nil {
		return nil, fmt.Errorf("start MQTT broker: %w", err)
	}

	p.reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	p.reg.MustRegister(p.pipe.Collectors()...)
	p.reg.MustRegister(p.meter.Collectors()...)
	p.reg.MustRegister(brokerCollectors(p.broker)...)
	p.reg.MustRegister(limitCollectors(p.broker)...)

	var proxies []string
	if cfg.TrustedProxies != "" {
		proxies = strings.Split(cfg.TrustedProxies, ",")
	}
	nApps := api.NewApps(api.AppDeps{DB: &tenants.DB{System: p.sys, App: p.app}, Tenants: p.tenants, Redis: p.rdb,
		Downlink: p.broker, Logger: log, Meter: p.meter})
	for _, job := range nApps.Jobs {
		p.bg.Add(1)
		go func() { defer p.bg.Done(); job(bgctx) }()
	}
	p.api, err = api.New(api.Config{OperatorToken: cfg.OperatorToken, TrustedProxies: proxies, Logger: log}, api.Deps{
		Tenants:   p.tenants,
		Telemetry: telemetry.NewService(p.app, p.rdb, p.tenants, log),
		Apps:      nApps,
		Registry:  p.reg,
		Ready:     p.ready,
	})
	if err != nil {
		return nil, err
	}
	p.httpLn, err = net.Listen("tcp", cfg.HTTPAddr)
	if err != nil {
		return nil, fmt.Errorf("HTTP listen on %s: %w (set NXCLOUD_HTTP_ADDR to another address)", cfg.HTTPAddr, err)
	}
	go func() { p.httpErr <- p.api.Serve(p.httpLn) }()
	log.Info("nxcloud started", "http", p.httpLn.Addr().String(), "mqtt", p.broker.TCPAddr(), "mqtt_ws", p.broker.WSAddr(),
		"storage", p.flavor)
	return p, nil
}

// ready reports the state of each dependency for /readyz. Redis being away
// degrades but does not unready: it is never on the durability path.
func (p *platform) ready(ctx context.Context) (map[string]string, bool) {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	checks := map[string]string{"storage": p.flavor}
	ok := true
	if err := p.sys.Ping(ctx); err != nil {
		checks["database"], ok = "down: "+err.Error(), false
	} else {
		checks["database"] = "ok"
	}
	if err := p.rdb.Ping(ctx).Err(); err != nil {
		checks["redis"] = "degraded: " + err.Error()
	} else {
		checks["redis"] = "ok"
	}
	sp := p.pipe.Spool()
	checks["ingest_backlog"] = fmt.Sprintf("%d messages, %d of %d bytes", sp.Pending, sp.Bytes, sp.Budget)
	switch {
	case sp.Broken != "":
		checks["ingest"], ok = "failed: "+sp.Broken, false
	case sp.Bytes*10 >= sp.Budget*9:
		checks["ingest"], ok = "saturated (spool nearly full: back-pressure on)", false
	case sp.Pending > 0 && checks["database"] != "ok":
		checks["ingest"] = "spooling (the database is away; acknowledged messages wait in the spool)"
	default:
		checks["ingest"] = "ok"
	}
	checks["mqtt"] = "ok"
	return checks, ok
}

func (p *platform) httpURL() string {
	_, port, _ := net.SplitHostPort(p.httpLn.Addr().String())
	return "http://" + p.cfg.PublicHost + ":" + port
}

func (p *platform) printURLs(w io.Writer) {
	fmt.Fprintf(w, "nxcloud is up (storage: %s)\n", p.flavor)
	fmt.Fprintf(w, "  HTTP API   %s/api/v1  (OpenAPI: %s/api/v1/openapi.json)\n", p.httpURL(), p.httpURL())
	fmt.Fprintf(w, "  health     %s/healthz  %s/readyz  %s/metrics\n", p.httpURL(), p.httpURL(), p.httpURL())
	if a := p.broker.TCPAddr(); a != "" {
		_, port, _ := net.SplitHostPort(a)
		fmt.Fprintf(w, "  MQTT       mqtt://%s:%s\n", p.cfg.PublicHost, port)
	}
	if a := p.broker.WSAddr(); a != "" {
		_, port, _ := net.SplitHostPort(a)
		fmt.Fprintf(w, "  MQTT/WS    ws://%s:%s\n", p.cfg.PublicHost, port)
	}
}

// shutdown stops accepting (broker, HTTP), flushes ingest, then closes pools.
func (p *platform) shutdown() error {
	ctx, cancel := context.WithTimeout(context.Background(), p.cfg.ShutdownTimeout)
	defer cancel()
	p.log.Info("shutting down: closing listeners")
	var errs []error
	if err := p.broker.Close(); err != nil {
		errs = append(errs, fmt.Errorf("broker: %w", err))
	}
	if err := p.api.Shutdown(ctx); err != nil {
		errs = append(errs, fmt.Errorf("http: %w", err))
	}
	p.log.Info("shutting down: flushing ingest", "backlog_messages", p.pipe.Spool().Pending)
	if err := p.pipe.Close(ctx); err != nil {
		errs = append(errs, err)
	}
	p.hot.Close()
	p.stopBg()
	p.bg.Wait()
	p.closePools()
	p.log.Info("shut down", "points_committed", p.pipe.Stats().PointsCommitted.Load())
	return errors.Join(errs...)
}

func (p *platform) closePools() {
	if p.rdb != nil {
		p.rdb.Close()
	}
	if p.app != nil {
		p.app.Close()
	}
	if p.sys != nil {
		p.sys.Close()
	}
}
