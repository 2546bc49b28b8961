package api

import (
	"context"
	"log/slog"
	"net/http"
	"strings"
	"time"

	"github.com/google/uuid"
	"github.com/labstack/echo/v4"
	"github.com/redis/go-redis/v9"

	"github.com/nxcloud/nxcloud/apps/batch"
	"github.com/nxcloud/nxcloud/apps/downgrade"
	"github.com/nxcloud/nxcloud/apps/quality"
	"github.com/nxcloud/nxcloud/apps/recipe"
	"github.com/nxcloud/nxcloud/metering"
	"github.com/nxcloud/nxcloud/tenants"
)

// AppDeps are what the N apps are built from.
type AppDeps struct {
	DB      *tenants.DB
	Tenants *tenants.Service
	Redis   redis.UniversalClient
	// Downlink sends commands to devices (recipe downloads).
	Downlink recipe.Downlink
	Logger   *slog.Logger
	// Meter is usage metering, built by the caller when something else
	// needs it first (serve.go: ingest's writers count telemetry with it);
	// nil: NewApps builds one with defaults.
	Meter *metering.Service
}

// Apps are the N apps, built once and shared by the HTTP server and the
// background jobs, so the process and the tests serve the same apps.
type Apps struct {
	Batch     *batch.Service
	Downgrade *downgrade.Service
	Quality   *quality.Service
	Recipe    *recipe.Service
	// Meter is usage metering and billing: the apps record their billable
	// uses with Meter.RecordAppUse (or RecordUseTx in their own transaction).
	Meter *metering.Service
	// Jobs run in the background while the process serves (event feeds,
	// download retries, deviation detection); each returns when ctx ends.
	Jobs []func(ctx context.Context)
	log  *slog.Logger
}

// NewApps builds the N apps.
func NewApps(d AppDeps) *Apps {
	log := d.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	a := &Apps{
		Batch:     batch.NewService(d.DB, log.With("app", "batch")),
		Downgrade: downgrade.NewService(d.DB, log.With("app", "downgrade")),
		Quality:   quality.NewService(d.DB, log.With("app", "quality")),
		Recipe:    recipe.NewService(d.DB, d.Downlink, log.With("app", "recipe")),
	}
	// Trace nodes carry the other apps' records where an app provides them.
	for key, src := range map[string]any{"inspections": a.Quality, "deviations": a.Recipe, "downgrades": a.Downgrade} {
		if ds, ok := src.(batch.DetailSource); ok {
			a.Batch.AddDetail(key, ds)
		}
	}
	// The downgrade rule reads inspection values and proposes as results land.
	a.Downgrade.UseInspections(a.Quality)
	a.Quality.OnResults = a.Downgrade.ProposeForLots
	if d.DB != nil && d.DB.System != nil {
		lotEvents := a.Batch.Feed(d.DB.System)
		a.Jobs = append(a.Jobs, func(ctx context.Context) { lotEvents.Run(ctx, 2*time.Second) })
	}
	if d.DB != nil && d.DB.System != nil {
		// Recipe: device replies to downloads, download retries/timeouts,
		// deviation detection.
		replies := a.Recipe.ReplyFeed()
		a.Jobs = append(a.Jobs, func(ctx context.Context) { replies.Run(ctx, time.Second) },
			func(ctx context.Context) { a.Recipe.RunDownloads(ctx, 5*time.Second) },
			func(ctx context.Context) { a.Recipe.RunDeviations(ctx, 10*time.Second) })
	}
	if d.DB != nil && d.DB.System != nil {
		// Quality: test benches' "inspection" events become results.
		inspections := a.Quality.Feed(d.DB.System)
		a.Jobs = append(a.Jobs, func(ctx context.Context) { inspections.Run(ctx, 2*time.Second) })
	}
	a.log = log
	a.Meter = d.Meter
	if a.Meter == nil {
		a.Meter = metering.New(metering.Config{Logger: log.With("app", "metering")}, d.DB.System, d.DB.App, d.Redis)
	}
	a.Jobs = append(a.Jobs, a.Meter.Run)
	return a
}

// register adds the apps' routes: tenant routes on tg, routes open without
// authentication (a label's public resolve) on public.
func (a *Apps) register(tg, public *echo.Group, r *tenants.Routes) {
	if a == nil {
		return
	}
	ag := tg.Group("", a.meterUses)
	batch.NewHandler(a.Batch).Register(ag, r)
	batch.NewHandler(a.Batch).RegisterPublic(public, r)
	downgrade.NewHandler(a.Downgrade).Register(ag, r)
	quality.NewHandler(a.Quality).Register(ag, r)
	recipe.NewHandler(a.Recipe).Register(ag, r)
}

// appUses are the N-app uses a firm pays per use (meter app.uses, subject
// "<app>.<use>"), by route.
var appUses = map[string]string{
	"GET /api/v1/lots/:lot/trace":                              "batch.trace",
	"GET /api/v1/lots/:lot/trace.csv":                          "batch.trace",
	"GET /api/v1/lots/:lot/trace.html":                         "batch.trace",
	"GET /api/v1/quality/spc":                                  "quality.spc",
	"POST /api/v1/recipes/:recipe/versions/:version/release":   "recipe.download",
	"POST /api/v1/recipes/:recipe/versions/:version/downloads": "recipe.download",
}

// meterUses records an app use once it is answered without error, before
// the answer's first byte (as API calls are), keyed by the client's
// Idempotency-Key or else the request id, so a retried use with the same
// key is counted once.
func (a *Apps) meterUses(next echo.HandlerFunc) echo.HandlerFunc {
	return func(c echo.Context) error {
		use, ok := appUses[c.Request().Method+" "+c.Path()]
		if !ok || a.Meter == nil {
			return next(c)
		}
		key := c.Request().Header.Get(IdempotencyHeader)
		if key == "" {
			key = c.Response().Header().Get(echo.HeaderXRequestID)
		}
		if key == "" {
			key = uuid.NewString()
		}
		app, name, _ := strings.Cut(use, ".")
		ctx := context.WithoutCancel(c.Request().Context())
		c.Response().Before(func() {
			if c.Response().Status < http.StatusBadRequest {
				if err := a.Meter.RecordAppUse(ctx, app, name, c.Request().Method+" "+c.Path()+" "+key); err != nil {
					a.log.Warn("metering: app use not recorded", "use", use, "err", err)
				}
			}
		})
		return next(c)
	}
}
