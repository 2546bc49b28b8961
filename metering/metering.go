// Package metering is nxcloud's pay-per-use: the usage ledger in PostgreSQL
// (telemetry points counted in the transaction that stores them, API calls,
// N-app uses and X-module invocations recorded under idempotency keys, daily
// snapshots of storage and active devices), the operator's price plans, the
// tenant's subscription, quotas checked in real time on Redis hot counters
// rebuilt from the ledger, and monthly invoices whose lines are recomputed
// from the ledger to the cent. docs/metering.md explains the choices.
package metering

import (
	"context"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"
)

// Meters. Names are stable: plans, quotas and clients key on them.
const (
	// MeterPoints counts telemetry points stored (subject: device id).
	MeterPoints = "telemetry.points"
	// MeterRejected counts telemetry points or message parts dead-lettered
	// (subject: device id).
	MeterRejected = "telemetry.rejected"
	// MeterEvents counts device events stored (subject: device id).
	MeterEvents = "telemetry.events"
	// MeterAPICalls counts answered API requests (subject: route class, the
	// permission the route requires, e.g. "telemetry:read").
	MeterAPICalls = "api.calls"
	// MeterAppUses counts N-app uses (subject: "<app>.<use>", e.g.
	// "batch.trace", "quality.spc", "recipe.download").
	MeterAppUses = "app.uses"
	// MeterModuleInvocations counts X-module invocations (subject: module id).
	MeterModuleInvocations = "module.invocations"
	// MeterStorage is the daily snapshot of bytes stored (gauge; billed as
	// the month's average).
	MeterStorage = "storage.bytes"
	// MeterActiveDevices is the daily number of devices that sent data
	// (gauge; billed as the month's maximum).
	MeterActiveDevices = "devices.active"
)

// Meters lists every meter.
var Meters = []string{MeterPoints, MeterRejected, MeterEvents, MeterAPICalls, MeterAppUses, MeterModuleInvocations,
	MeterStorage, MeterActiveDevices}

// gauge reports how a meter aggregates over a month: "" for counters (sum),
// "avg" or "max" of the daily values for gauges.
func gauge(meter string) string {
	switch meter {
	case MeterStorage:
		return "avg"
	case MeterActiveDevices:
		return "max"
	}
	return ""
}

func validMeter(m string) bool {
	for _, x := range Meters {
		if x == m {
			return true
		}
	}
	return false
}

// Config configures metering.
type Config struct {
	// APIBatchWait is how long the group commit waits for more answered
	// requests before it commits (0, the default: it commits at once what
	// queued while the previous commit ran).
	APIBatchWait time.Duration
	// APIBatchSize is the most rows one group commit writes.
	APIBatchSize int
	// CloseGrace is how long after a month ends its invoices are closed.
	CloseGrace time.Duration
	// QuotaCacheTTL is how long a tenant's quotas are cached in the process.
	QuotaCacheTTL time.Duration
	// ReconcileEvery is how often hot counters are reset from the ledger.
	ReconcileEvery time.Duration
	// RowBytes estimates a telemetry row's size on disk when the relation
	// size cannot be apportioned (no rows yet).
	RowBytes int64
	Logger   *slog.Logger
}

func (c *Config) defaults() {
	if c.APIBatchSize <= 0 {
		c.APIBatchSize = 256
	}
	if c.CloseGrace <= 0 {
		c.CloseGrace = 2 * time.Hour
	}
	if c.QuotaCacheTTL <= 0 {
		c.QuotaCacheTTL = 10 * time.Second
	}
	if c.ReconcileEvery <= 0 {
		c.ReconcileEvery = 30 * time.Second
	}
	if c.RowBytes <= 0 {
		c.RowBytes = 80
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
}

// Service is metering and billing. Sys is the schema owner's pool (ingest
// hook, background jobs, the API usage outbox); App runs tenant requests
// under row-level security.
type Service struct {
	cfg  Config
	sys  *pgxpool.Pool
	app  *pgxpool.Pool
	rdb  redis.UniversalClient
	log  *slog.Logger
	kpis map[string]KPIProvider
	api  *apiRecorder
	met  *metrics

	qmu    sync.Mutex
	quotas map[uuid.UUID]quotaEntry
	warned map[string]bool
	now    func() time.Time
	// failLog is when a fail-open was last logged (unix ns).
	failLog atomic.Int64
}

// New returns the metering service. Start its recorder with Run (the process
// does it in the background); Close flushes it.
func New(cfg Config, sys, app *pgxpool.Pool, rdb redis.UniversalClient) *Service {
	cfg.defaults()
	s := &Service{cfg: cfg, sys: sys, app: app, rdb: rdb, log: cfg.Logger, met: newMetrics(),
		quotas: map[uuid.UUID]quotaEntry{}, warned: map[string]bool{}, now: time.Now}
	s.kpis = map[string]KPIProvider{
		KPIRejectRatio:   rejectRatio{s},
		KPIDowngradeRate: downgradeRate{s},
		KPIDefectRate:    defectRate{s},
	}
	s.api = newAPIRecorder(cfg.Logger, sys, cfg.APIBatchWait, cfg.APIBatchSize, s.met)
	return s
}

// Collectors returns the Prometheus collectors of metering.
func (s *Service) Collectors() []prometheus.Collector { return s.met.collectors() }

// Run runs the background work until ctx ends: the API usage group commit
// and the periodic jobs (merging telemetry rows, daily
// snapshots, reconciling hot counters, closing invoices).
func (s *Service) Run(ctx context.Context) {
	var wg sync.WaitGroup
	wg.Add(2)
	go func() { defer wg.Done(); s.api.run(ctx) }()
	go func() { defer wg.Done(); s.jobLoop(ctx) }()
	wg.Wait()
}

// monthStart is the first instant (UTC) of t's month.
func monthStart(t time.Time) time.Time {
	t = t.UTC()
	return time.Date(t.Year(), t.Month(), 1, 0, 0, 0, 0, time.UTC)
}

type metrics struct {
	apiRecorded   prometheus.Counter
	apiFailed     prometheus.Counter
	apiBatch      prometheus.Histogram
	failOpen      *prometheus.CounterVec
	quotaRefused  *prometheus.CounterVec
	rebuilds      prometheus.Counter
	telemetryRows prometheus.Counter
}

func newMetrics() *metrics {
	return &metrics{
		apiRecorded: prometheus.NewCounter(prometheus.CounterOpts{Name: "nxcloud_metering_api_calls_recorded_total",
			Help: "API calls written to the usage ledger."}),
		apiFailed: prometheus.NewCounter(prometheus.CounterOpts{Name: "nxcloud_metering_api_record_failures_total",
			Help: "Group commits of API usage that failed (retried from memory until they succeed)."}),
		apiBatch: prometheus.NewHistogram(prometheus.HistogramOpts{Name: "nxcloud_metering_api_batch_rows",
			Help: "Rows per API usage group commit.", Buckets: prometheus.ExponentialBuckets(1, 2, 10)}),
		failOpen: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "nxcloud_metering_quota_fail_open_total",
			Help: "Quota checks admitted without Redis (fail open)."}, []string{"check"}),
		quotaRefused: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "nxcloud_metering_quota_refused_total",
			Help: "Requests, connections or publishes refused by a hard quota."}, []string{"meter"}),
		rebuilds: prometheus.NewCounter(prometheus.CounterOpts{Name: "nxcloud_metering_hot_counter_rebuilds_total",
			Help: "Hot counters rebuilt from the ledger (missing in Redis)."}),
		telemetryRows: prometheus.NewCounter(prometheus.CounterOpts{Name: "nxcloud_metering_telemetry_rows_total",
			Help: "Ledger rows written by the ingest hook."}),
	}
}

func (m *metrics) collectors() []prometheus.Collector {
	return []prometheus.Collector{m.apiRecorded, m.apiFailed, m.apiBatch, m.failOpen, m.quotaRefused, m.rebuilds, m.telemetryRows}
}
