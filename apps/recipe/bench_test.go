package recipe_test

import (
	"context"
	"testing"
	"time"

	"github.com/nxcloud/nxcloud/apps/recipe"
	"github.com/nxcloud/nxcloud/tenants"
	"github.com/nxcloud/nxcloud/tenants/tenanttest"
)

// BenchmarkScanDeviations measures deviation detection over one lot run of
// 100 000 points of a recipe parameter's metric (one point a second for
// about 28 h, one excursion every 1 000 points): each iteration rescans the
// run from its start. Reported: points scanned per second.
func BenchmarkScanDeviations(b *testing.B) {
	env := tenanttest.New(b)
	tn := env.NewTenant(b)
	ctx := context.Background()
	tctx := tenants.WithTenant(ctx, tn.ID)
	svc := recipe.NewService(&env.DB, nopDownlink{}, nil)
	svc.Settle = 0
	in := sinterRecipe("R-BENCH")
	if _, err := svc.CreateRecipe(tctx, in); err != nil {
		b.Fatal(err)
	}
	v, err := svc.Version(tctx, "R-BENCH", "1")
	if err != nil {
		b.Fatal(err)
	}
	furnace, _ := env.Device(b, tn, "sinter-01", "sintering-furnace")
	const n = 100000
	// In the future, with the service's clock past the run's end: other
	// processes' jobs (real clock) leave it alone (see TestDeviationsExactly).
	t0 := time.Now().UTC().Add(time.Hour).Truncate(time.Second)
	end := t0.Add(n * time.Second)
	svc.Now = func() time.Time { return end.Add(time.Minute) }
	lot := seedRun(b, env, tn, "L-BENCH", v.ID, furnace.ID, t0, &end)
	pts := make(map[int]float64, n)
	for i := 0; i < n; i++ {
		pts[i] = 1060
		if i%1000 >= 990 {
			pts[i] = 1075 + float64(i%10)
		}
	}
	seedPoints(b, env, tn, furnace.ID, "zone1_temp", t0, pts)
	b.ResetTimer()
	for b.Loop() {
		b.StopTimer()
		if _, err := env.DB.System.Exec(ctx, `DELETE FROM recipe_deviations WHERE lot_id = $1`, lot); err != nil {
			b.Fatal(err)
		}
		if _, err := env.DB.System.Exec(ctx, `DELETE FROM recipe_run_scans WHERE tenant_id = $1`, tn.ID); err != nil {
			b.Fatal(err)
		}
		b.StartTimer()
		if _, err := svc.ScanDeviations(tctx); err != nil {
			b.Fatal(err)
		}
	}
	b.StopTimer()
	dsPage, err := svc.Deviations(tctx, recipe.DeviationQuery{Lot: "L-BENCH", Limit: 1000})
	ds := dsPage.Items
	if err != nil || len(ds) != n/1000 {
		b.Fatalf("%d deviations (%v), want %d", len(ds), err, n/1000)
	}
	b.ReportMetric(float64(n)*float64(b.N)/b.Elapsed().Seconds(), "points/s")
}
