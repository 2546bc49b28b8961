package quality_test

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/http/httptest"
	"syscall"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/labstack/echo/v4"

	"github.com/nxcloud/nxcloud/apps"
	"github.com/nxcloud/nxcloud/apps/quality"
	"github.com/nxcloud/nxcloud/tenants"
	"github.com/nxcloud/nxcloud/tenants/tenanttest"
)

// The SPC benchmark's data: one dedicated tenant with a million br results
// (2000 lots × 100 subgroups of 5), loaded once with CopyFrom and kept
// between runs. Only the benchmarks load it, never `go test`.
const (
	benchSlug    = "bench-spc-1m"
	benchLots    = 2000
	benchPerLot  = 500
	benchResults = benchLots * benchPerLot
)

func benchTenant(b *testing.B, env *tenanttest.Env) context.Context {
	b.Helper()
	ctx := context.Background()
	sys := env.DB.System
	var id uuid.UUID
	err := sys.QueryRow(ctx, `SELECT id FROM tenants WHERE slug = $1`, benchSlug).Scan(&id)
	if errors.Is(err, pgx.ErrNoRows) {
		_, _, cerr := env.Tenants.CreateEnterprise(ctx, tenants.EnterpriseInput{Slug: benchSlug, Name: "SPC benchmark", Sector: "magnetic-materials"})
		if cerr != nil && apps.Code(cerr) != apps.Conflict {
			b.Fatal(cerr)
		}
		err = sys.QueryRow(ctx, `SELECT id FROM tenants WHERE slug = $1`, benchSlug).Scan(&id)
	}
	if err != nil {
		b.Fatal(err)
	}
	var n int
	if err := sys.QueryRow(ctx, `SELECT count(*) FROM inspection_results WHERE tenant_id = $1 AND characteristic = 'br'`, id).Scan(&n); err != nil {
		b.Fatal(err)
	}
	var series int
	if err := sys.QueryRow(ctx, `SELECT count(*) FROM inspection_series WHERE tenant_id = $1`, id).Scan(&series); err != nil {
		b.Fatal(err)
	}
	if n != benchResults || series != benchLots {
		start := time.Now()
		loadBench(b, sys, id)
		b.Logf("loaded %d results in %v", benchResults, time.Since(start))
	}
	return tenants.WithTenant(ctx, id)
}

func loadBench(b *testing.B, sys *pgxpool.Pool, tenant uuid.UUID) {
	ctx := context.Background()
	for _, q := range []string{
		`DELETE FROM nonconformances WHERE tenant_id = $1`,
		`DELETE FROM inspection_series WHERE tenant_id = $1`,
		`DELETE FROM inspection_results WHERE tenant_id = $1`,
		`DELETE FROM lots WHERE tenant_id = $1`,
	} {
		if _, err := sys.Exec(ctx, q, tenant); err != nil {
			b.Fatal(err)
		}
	}
	lots := make([]uuid.UUID, benchLots)
	lotRows := make([][]any, benchLots)
	for i := range lots {
		lots[i] = uuid.New()
		lotRows[i] = []any{tenant, lots[i], fmt.Sprintf("BL-%05d", i), "block", "N52"}
	}
	if _, err := sys.CopyFrom(ctx, pgx.Identifier{"lots"}, []string{"tenant_id", "id", "code", "product", "grade_code"}, pgx.CopyFromRows(lotRows)); err != nil {
		b.Fatal(err)
	}
	rng := rand.New(rand.NewPCG(1, 2))
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	i := 0
	src := pgx.CopyFromFunc(func() ([]any, error) {
		if i == benchResults {
			return nil, nil
		}
		lot, k := i/benchPerLot, i%benchPerLot
		row := []any{tenant, lots[lot], "br", 1.45 + rng.NormFloat64()*0.01, int32(k + 1), int32(k/5 + 1),
			t0.Add(time.Duration(i) * time.Second), "csv", "bench"}
		i++
		return row, nil
	})
	_, err := sys.CopyFrom(ctx, pgx.Identifier{"inspection_results"},
		[]string{"tenant_id", "lot_id", "characteristic", "value", "sample", "subgroup", "measured_at", "source", "created_by"}, src)
	if err != nil {
		b.Fatal(err)
	}
	// What apps/quality keeps in step on every insert, built at once here.
	_, err = sys.Exec(ctx, `
		INSERT INTO inspection_series (tenant_id, lot_id, characteristic, first_at, subgroup_sizes, value_data)
		SELECT $1, g.lot_id, g.characteristic, min(g.first_at), array_agg(g.size ORDER BY g.subgroup), string_agg(g.data, ''::bytea ORDER BY g.subgroup)
		FROM (SELECT lot_id, characteristic, subgroup, min(measured_at) AS first_at, count(*)::int AS size,
				string_agg(float8send(value), ''::bytea ORDER BY sample) AS data
			FROM inspection_results WHERE tenant_id = $1 GROUP BY lot_id, characteristic, subgroup) g
		GROUP BY g.lot_id, g.characteristic`, tenant)
	if err != nil {
		b.Fatal(err)
	}
	for _, t := range []string{"inspection_results", "inspection_series"} {
		if _, err := sys.Exec(ctx, `VACUUM ANALYZE `+t); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkSPC measures the SPC endpoint's path (one tenant-scoped query
// over a million values of one characteristic, the chart, run rules and
// capability) per chart type, and the computation alone.
func BenchmarkSPC(b *testing.B) {
	env := tenanttest.New(b)
	ctx := benchTenant(b, env)
	svc := quality.NewService(&env.DB, nil)
	for _, chart := range []string{quality.ChartXbarR, quality.ChartXbarS, quality.ChartIMR} {
		b.Run("endpoint/"+chart, func(b *testing.B) {
			defer reportCPU(b)()
			for b.Loop() {
				res, err := svc.SPC(ctx, quality.SPCQuery{Characteristic: "br", Chart: chart, Rules: "nelson"})
				if err != nil {
					b.Fatal(err)
				}
				if res.Values != benchResults {
					b.Fatalf("%d values, want %d", res.Values, benchResults)
				}
			}
		})
	}
	// The HTTP route itself: echo, the permission check, the handler and
	// the JSON answer (what the API's auth middleware puts in the context is
	// set directly: an owner's session on the benchmark tenant).
	e := echo.New()
	tenantID, _ := tenants.FromContext(ctx)
	principal := tenants.Principal{Kind: tenants.KindUser, UserID: uuid.New(), OrgKind: tenants.OrgEnterprise, Role: "owner", TenantID: tenantID}
	g := e.Group("/api/v1", func(next echo.HandlerFunc) echo.HandlerFunc {
		return func(c echo.Context) error {
			rctx := tenants.WithPrincipal(tenants.WithTenant(c.Request().Context(), tenantID), principal)
			c.SetRequest(c.Request().WithContext(rctx))
			return next(c)
		}
	})
	quality.NewHandler(svc).Register(g, tenants.NewRoutes())
	for _, chart := range []string{quality.ChartXbarR, quality.ChartIMR} {
		b.Run("http/"+chart, func(b *testing.B) {
			defer reportCPU(b)()
			for b.Loop() {
				rec := httptest.NewRecorder()
				e.ServeHTTP(rec, httptest.NewRequest("GET", "/api/v1/quality/spc?characteristic=br&rules=nelson&chart="+chart, nil))
				if rec.Code != 200 {
					b.Fatalf("%d %s", rec.Code, rec.Body)
				}
			}
		})
	}
	vs := make([]float64, benchResults)
	rng := rand.New(rand.NewPCG(1, 2))
	for i := range vs {
		vs[i] = 1.45 + rng.NormFloat64()*0.01
	}
	for _, chart := range []string{quality.ChartXbarR, quality.ChartXbarS, quality.ChartIMR} {
		b.Run("compute/"+chart, func(b *testing.B) {
			defer reportCPU(b)()
			lsl := 1.43
			for b.Loop() {
				c, err := quality.ComputeChart(chart, vs, 5)
				if err != nil {
					b.Fatal(err)
				}
				quality.Flags(c.X, c.XLimits, quality.RulesNelson)
				c.Capability(&lsl, nil)
			}
		})
	}
}

// reportCPU reports the process's CPU time per operation (user + system, GC
// included; not the database server's), a figure a loaded machine inflates
// far less than wall time.
func reportCPU(b *testing.B) func() {
	cpu := func() time.Duration {
		var ru syscall.Rusage
		if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
			b.Fatal(err)
		}
		return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
	}
	start := cpu()
	return func() {
		b.ReportMetric(float64(cpu()-start)/float64(b.N)/1e6, "cpu-ms/op")
	}
}
