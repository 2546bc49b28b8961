package api_test

import (
	"context"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/nxcloud/nxcloud/apps/recipe"
	"github.com/nxcloud/nxcloud/tenants"
	"github.com/nxcloud/nxcloud/tenants/tenanttest"
)

// recipeFixture is a released recipe of tenant A with a download to a
// device and a deviation of a lot run on it.
type recipeFixture struct {
	recipe    recipe.Recipe
	version   recipe.Version
	download  recipe.Download
	deviation recipe.Deviation
	lot       string
	line      string
	device    tenants.Device
}

// recipeBody is a recipe of grade N42 with one sintering-furnace parameter.
func recipeBody(code string) string {
	return `{"code":"` + code + `","name":"N42 sintering ` + code + `","product":"block","grade":"N42",
		"ingredients":[{"material":"PrNd","ratio":31.5,"tolerance":0.2},{"material":"Fe","balance":true,"tolerance":0}],
		"parameters":[{"model":"sintering-furnace","metric":"zone1_temp","setpoint":1060,"lower":1050,"upper":1070,"step":"hold"}]}`
}

// seedRecipe creates, through the API, a recipe of tenant a submitted with
// cred and approved by an engineer's session, released to a new line with
// one furnace; then a lot run on the furnace with telemetry above the upper
// limit, scanned into a deviation.
func seedRecipe(t *testing.T, s *testServer, a tenanttest.Tenant, cred string) recipeFixture {
	t.Helper()
	ctx := context.Background()
	env := s.env
	suffix := strings.ReplaceAll(uuid.NewString(), "-", "")[:10]
	f := recipeFixture{line: "rcp-line-" + suffix, lot: "RCP-LOT-" + suffix}
	if _, err := env.Tenants.CreateLine(ctx, a.ID, tenants.LineInput{Key: f.line, Name: "Recipe line"}); err != nil {
		t.Fatal(err)
	}
	var err error
	f.device, _, err = env.Tenants.RegisterDevice(ctx, a.ID, tenants.DeviceInput{Key: "rcp-furnace-" + suffix, Model: "sintering-furnace", Line: f.line})
	if err != nil {
		t.Fatal(err)
	}
	code := "RCP-" + suffix
	f.recipe = decode[recipe.Recipe](t, "create recipe", s.do(t, "POST", "/api/v1/recipes", cred, recipeBody(code)), http.StatusCreated)
	s.do(t, "POST", "/api/v1/recipes/"+code+"/versions/1/submit", cred, `{"comment":""}`)
	approver := bearer(env.Session(t, env.Member(t, a.ID, "engineer"), a.ID))
	f.version = decode[recipe.Version](t, "approve", s.do(t, "POST", "/api/v1/recipes/"+code+"/versions/1/approve", approver, `{"comment":"ok"}`), http.StatusOK)
	rel := decode[recipe.ReleaseResult](t, "release", s.do(t, "POST", "/api/v1/recipes/"+code+"/versions/1/release", cred,
		`{"lines":["`+f.line+`"]}`), http.StatusOK)
	if len(rel.Downloads) != 1 {
		t.Fatalf("release: %+v", rel)
	}
	f.download = rel.Downloads[0]

	// A lot made with the version ran on the furnace an hour ago and went
	// above the upper limit once.
	t0 := time.Now().UTC().Add(-time.Hour).Truncate(time.Second)
	var lot uuid.UUID
	if err := env.DB.System.QueryRow(ctx, `INSERT INTO lots (tenant_id, code, grade_code, recipe_version_id, status)
		VALUES ($1, $2, 'N42', $3, 'done') RETURNING id`, a.ID, f.lot, f.version.ID).Scan(&lot); err != nil {
		t.Fatal(err)
	}
	if _, err := env.DB.System.Exec(ctx, `INSERT INTO lot_runs (tenant_id, lot_id, device_id, started_at, ended_at) VALUES ($1, $2, $3, $4, $5)`,
		a.ID, lot, f.device.ID, t0, t0.Add(time.Minute)); err != nil {
		t.Fatal(err)
	}
	if _, err := env.DB.System.Exec(ctx, `INSERT INTO telemetry (ts, tenant_id, device_id, metric_id, value)
		SELECT $1::timestamptz + make_interval(secs => v.s), $2, $3, x.id, v.value
		FROM metrics x, (VALUES (0, 1060.0), (10, 1080.0), (20, 1060.0)) AS v(s, value)
		WHERE x.device_model_id = $4 AND x.key = 'zone1_temp'`, t0, a.ID, f.device.ID, f.device.ModelID); err != nil {
		t.Fatal(err)
	}
	svc := recipe.NewService(&env.DB, testDownlink{}, nil)
	if _, err := svc.ScanDeviations(tenants.WithTenant(ctx, a.ID)); err != nil {
		t.Fatal(err)
	}
	dsPage, err := svc.Deviations(tenants.WithTenant(ctx, a.ID), recipe.DeviationQuery{Lot: f.lot})
	ds := dsPage.Items
	if err != nil || len(ds) != 1 {
		t.Fatalf("seeded deviations: %+v %v", ds, err)
	}
	f.deviation = ds[0]
	return f
}

// seedRecipeIsolation seeds tenant A with recipe records for TestTenantIsolation.
func seedRecipeIsolation(t *testing.T, s *testServer, a tenanttest.Tenant, credA string) isolationSeed {
	f := seedRecipe(t, s, a, credA)
	return isolationSeed{
		Markers: map[string]string{
			"A's recipe id": f.recipe.ID.String(), "A's recipe code": f.recipe.Code, "A's recipe name": f.recipe.Name,
			"A's recipe version id": f.version.ID.String(), "A's recipe download id": f.download.ID.String(),
			"A's recipe deviation id": f.deviation.ID.String(), "A's recipe line": f.line, "A's recipe device": f.device.Key,
		},
		Fills: map[string][]string{
			"recipe":    {f.recipe.ID.String(), f.recipe.Code},
			"version":   {"1", f.version.ID.String()},
			"download":  {f.download.ID.String()},
			"deviation": {f.deviation.ID.String()},
		},
		Query: map[string]string{"/api/v1/recipes/:recipe/diff": "from=1&to=1"},
	}
}
