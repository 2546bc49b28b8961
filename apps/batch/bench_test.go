package batch_test

import (
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"slices"
	"sort"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"

	"github.com/nxcloud/nxcloud/apps/batch"
	"github.com/nxcloud/nxcloud/apps/downgrade"
	"github.com/nxcloud/nxcloud/apps/quality"
	"github.com/nxcloud/nxcloud/tenants"
	"github.com/nxcloud/nxcloud/tenants/tenanttest"
)

// A generated genealogy: families of 100 lots in 12 levels, like the sector's
// flow (12 raw-material lots, then 11 levels of 8: flake, powder, pressed,
// sintered, machined, plated, shipped...). Every lot above the raw level has
// 3 parents in the level below, and 36 lots per family a fourth, rework link
// from two levels below: 300 links per family. 10,000 families are 1,000,000
// lots and 3,000,000 links; a trace from a family's top or bottom level is
// 11 links deep.
const (
	familyLots  = 100
	familyLinks = 300
	levels      = 12
	rawWidth    = 12
	levelWidth  = 8
)

func levelOf(i int) (level, pos int) {
	if i < rawWidth {
		return 0, i
	}
	return 1 + (i-rawWidth)/levelWidth, (i - rawWidth) % levelWidth
}

func indexOf(level, pos int) int {
	if level == 0 {
		return pos
	}
	return rawWidth + (level-1)*levelWidth + pos
}

func lotCode(f, i int) string {
	l, p := levelOf(i)
	return fmt.Sprintf("G%05d-L%02d-%02d", f, l, p)
}

type genLink struct {
	parent, child int // indexes within the family
	kind          string
}

// familyLinksOf generates one family's 300 links, deterministically from the
// family number. A lot's first parent is the lot at its position in the level
// below (for the first level, also the raw lot 8 further), so every lot has a
// child; the others are random. Rework links (a fourth parent) come from the
// level below too, so every path climbs one level per link.
func familyLinksOf(f int) []genLink {
	r := rand.New(rand.NewPCG(uint64(f), 0x6e78636c6f7564))
	out := make([]genLink, 0, familyLinks)
	parents := make([][]int, familyLots)
	for i := rawWidth; i < familyLots; i++ {
		l, pos := levelOf(i)
		width := levelWidth
		if l == 1 {
			width = rawWidth
		}
		ps := []int{pos}
		if l == 1 {
			ps = append(ps, levelWidth+pos%(rawWidth-levelWidth))
		}
		for _, p := range r.Perm(width) {
			if len(ps) == 3 {
				break
			}
			if !slices.Contains(ps, p) {
				ps = append(ps, p)
			}
		}
		parents[i] = ps
		for _, p := range ps {
			out = append(out, genLink{parent: indexOf(l-1, p), child: i, kind: "consume"})
		}
	}
	for _, k := range r.Perm(familyLots - rawWidth)[:familyLinks-len(out)] {
		i := rawWidth + k
		l, _ := levelOf(i)
		width := levelWidth
		if l == 1 {
			width = rawWidth
		}
		for _, p := range r.Perm(width) {
			if !slices.Contains(parents[i], p) {
				out = append(out, genLink{parent: indexOf(l-1, p), child: i, kind: "rework"})
				break
			}
		}
	}
	return out
}

// loadGenealogy bulk-loads families into tenant with COPY and returns the
// lot ids per family.
func loadGenealogy(ctx context.Context, pool tenants.Querier, begin func(context.Context) (pgx.Tx, error), tenant uuid.UUID, families int) ([][]uuid.UUID, error) {
	ids := make([][]uuid.UUID, families)
	for f := range ids {
		ids[f] = make([]uuid.UUID, familyLots)
		for i := range ids[f] {
			ids[f][i] = uuid.New()
		}
	}
	tx, err := begin(ctx)
	if err != nil {
		return nil, err
	}
	defer tx.Rollback(ctx)
	if _, err := tx.Exec(ctx, `SELECT set_config('nx.tenant_id', $1, true)`, tenant.String()); err != nil {
		return nil, err
	}
	f, i := 0, 0
	_, err = tx.CopyFrom(ctx, pgx.Identifier{"lots"}, []string{"tenant_id", "id", "code", "product", "kind", "quantity", "status"},
		pgx.CopyFromFunc(func() ([]any, error) {
			if f == families {
				return nil, nil
			}
			kind := "wip"
			if i < rawWidth {
				kind = "raw"
			}
			row := []any{tenant, ids[f][i], lotCode(f, i), "bench", kind, 1000, "done"}
			if i++; i == familyLots {
				f, i = f+1, 0
			}
			return row, nil
		}))
	if err != nil {
		return nil, fmt.Errorf("copy lots: %w", err)
	}
	f = 0
	var fl []genLink
	k := 0
	_, err = tx.CopyFrom(ctx, pgx.Identifier{"lot_links"}, []string{"tenant_id", "parent_id", "child_id", "kind", "quantity"},
		pgx.CopyFromFunc(func() ([]any, error) {
			if k == len(fl) {
				if f == families {
					return nil, nil
				}
				fl, k = familyLinksOf(f), 0
				f++
			}
			l := fl[k]
			k++
			return []any{tenant, ids[f-1][l.parent], ids[f-1][l.child], l.kind, 1}, nil
		}))
	if err != nil {
		return nil, fmt.Errorf("copy links: %w", err)
	}
	if _, err := tx.Exec(ctx, `ANALYZE lots`); err != nil {
		return nil, err
	}
	if _, err := tx.Exec(ctx, `ANALYZE lot_links`); err != nil {
		return nil, err
	}
	return ids, tx.Commit(ctx)
}

// expected computes a trace's lots and minimum depths from the generator
// itself, independently of the database.
func expected(f, root int, forward bool) map[string]int {
	next := map[int][]int{}
	for _, l := range familyLinksOf(f) {
		if forward {
			next[l.parent] = append(next[l.parent], l.child)
		} else {
			next[l.child] = append(next[l.child], l.parent)
		}
	}
	depth := map[int]int{root: 0}
	queue := []int{root}
	for len(queue) > 0 {
		n := queue[0]
		queue = queue[1:]
		for _, m := range next[n] {
			if _, ok := depth[m]; !ok {
				depth[m] = depth[n] + 1
				queue = append(queue, m)
			}
		}
	}
	out := map[string]int{}
	for i, d := range depth {
		out[lotCode(f, i)] = d
	}
	return out
}

// A small generated genealogy, traced from random roots both ways, against
// the generator's own breadth-first search.
func TestGeneratedGenealogy(t *testing.T) {
	t.Parallel()
	env := tenanttest.New(t)
	tn := env.NewTenant(t)
	const families = 30
	if _, err := loadGenealogy(context.Background(), env.DB.System, env.DB.System.Begin, tn.ID, families); err != nil {
		t.Fatal(err)
	}
	svc := batch.NewService(&env.DB, nil)
	r := rand.New(rand.NewPCG(1, 2))
	for n := 0; n < 40; n++ {
		f, forward := r.IntN(families), n%2 == 0
		root := indexOf(levels-1, r.IntN(levelWidth))
		dir := batch.Backward
		if forward {
			root, dir = r.IntN(rawWidth), batch.Forward
		}
		want := expected(f, root, forward)
		tr, err := svc.Trace(tn.Ctx(), batch.TraceQuery{Lot: lotCode(f, root), Direction: dir, Telemetry: true})
		if err != nil {
			t.Fatal(err)
		}
		got := map[string]int{}
		for _, x := range tr.Nodes {
			got[x.Code] = x.Depth
		}
		if fmt.Sprint(got) != fmt.Sprint(want) {
			t.Errorf("%s %s: got %v\nwant %v", lotCode(f, root), dir, got, want)
		}
		if tr.Depth != levels-1 {
			t.Errorf("%s %s: depth %d, want %d", lotCode(f, root), dir, tr.Depth, levels-1)
		}
	}
}

// BenchmarkTrace1M loads (once; later runs reuse it) a genealogy of 1,000,000
// lots and 3,000,000 links into a dedicated tenant, then times backward
// traces from top-level lots and forward traces from raw-material lots (11
// links deep), reporting p50 and p99 per direction. Run it on demand:
//
//	go test -run '^$' -bench BenchmarkTrace1M -benchtime 2000x -timeout 60m ./apps/batch
//
// NXCLOUD_BENCH_FAMILIES overrides the 10,000 families (100 lots each).
func BenchmarkTrace1M(b *testing.B) {
	env := tenanttest.New(b)
	ctx := context.Background()
	families := 10000
	if v := os.Getenv("NXCLOUD_BENCH_FAMILIES"); v != "" {
		fmt.Sscan(v, &families)
	}
	slug := fmt.Sprintf("bench-trace-%d", families)
	var tenant uuid.UUID
	err := env.DB.System.QueryRow(ctx, `SELECT id FROM tenants WHERE slug = $1`, slug).Scan(&tenant)
	if err == pgx.ErrNoRows {
		tn, _, err := env.Tenants.CreateEnterprise(ctx, tenants.EnterpriseInput{Slug: slug, Name: "Trace benchmark", Sector: "magnetic-materials"})
		if err != nil {
			b.Fatal(err)
		}
		tenant = tn.ID
	} else if err != nil {
		b.Fatal(err)
	}
	var lots, links int
	if err := env.DB.System.QueryRow(ctx, `SELECT (SELECT count(*) FROM lots WHERE tenant_id = $1), (SELECT count(*) FROM lot_links WHERE tenant_id = $1)`, tenant).Scan(&lots, &links); err != nil {
		b.Fatal(err)
	}
	if lots != families*familyLots || links != families*familyLinks {
		if lots != 0 {
			b.Fatalf("tenant %s holds a partial genealogy (%d lots, %d links): drop it or use another NXCLOUD_BENCH_FAMILIES", slug, lots, links)
		}
		start := time.Now()
		if _, err := loadGenealogy(ctx, env.DB.System, env.DB.System.Begin, tenant, families); err != nil {
			b.Fatal(err)
		}
		b.Logf("loaded %d lots and %d links in %s", families*familyLots, families*familyLinks, time.Since(start).Round(time.Millisecond))
	} else {
		b.Logf("reusing %d lots and %d links of tenant %s", lots, links, slug)
	}
	tctx := tenants.WithTenant(ctx, tenant)
	// core: the genealogy walk with each lot, its runs (and their telemetry
	// summaries) and shipments; details: plus the inspections and downgrades
	// of every lot, as the process wires the apps.
	b.Run("core", func(b *testing.B) { benchTraces(b, tctx, batch.NewService(&env.DB, nil), families, false) })
	b.Run("details", func(b *testing.B) {
		svc := batch.NewService(&env.DB, nil)
		svc.AddDetail("inspections", quality.NewService(&env.DB, nil))
		svc.AddDetail("downgrades", downgrade.NewService(&env.DB, nil))
		benchTraces(b, tctx, svc, families, true)
	})
}

func benchTraces(b *testing.B, tctx context.Context, svc *batch.Service, families int, details bool) {
	r := rand.New(rand.NewPCG(uint64(time.Now().UnixNano()), 7))
	var back, fwd []time.Duration
	nodes := 0
	b.ResetTimer()
	for n := 0; n < b.N; n++ {
		f := r.IntN(families)
		q := batch.TraceQuery{Lot: lotCode(f, indexOf(levels-1, r.IntN(levelWidth))), Direction: batch.Backward, Telemetry: true, Details: details}
		if n%2 == 1 {
			q = batch.TraceQuery{Lot: lotCode(f, r.IntN(rawWidth)), Direction: batch.Forward, Telemetry: true, Details: details}
		}
		start := time.Now()
		tr, err := svc.Trace(tctx, q)
		d := time.Since(start)
		if err != nil {
			b.Fatal(err)
		}
		if tr.Depth < 10 {
			b.Fatalf("trace of %s is %d deep", q.Lot, tr.Depth)
		}
		nodes += len(tr.Nodes)
		if q.Direction == batch.Backward {
			back = append(back, d)
		} else {
			fwd = append(fwd, d)
		}
	}
	b.StopTimer()
	pct := func(ds []time.Duration, p float64) float64 {
		if len(ds) == 0 {
			return 0
		}
		s := slices.Clone(ds)
		sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
		return float64(s[min(len(s)-1, int(p*float64(len(s))))].Microseconds()) / 1000
	}
	b.ReportMetric(pct(back, 0.50), "back-p50-ms")
	b.ReportMetric(pct(back, 0.99), "back-p99-ms")
	b.ReportMetric(pct(fwd, 0.50), "fwd-p50-ms")
	b.ReportMetric(pct(fwd, 0.99), "fwd-p99-ms")
	b.ReportMetric(float64(nodes)/float64(b.N), "nodes/trace")
}
