package recipe_test

import (
	"context"
	"strings"
	"testing"

	"github.com/google/uuid"

	"github.com/nxcloud/nxcloud/apps"
	"github.com/nxcloud/nxcloud/apps/recipe"
	"github.com/nxcloud/nxcloud/tenants"
	"github.com/nxcloud/nxcloud/tenants/tenanttest"
)

func ptr(v float64) *float64 { return &v }

// as returns a context acting as a user of tn.
func as(tn tenanttest.Tenant, user uuid.UUID, name string) context.Context {
	return tenants.WithPrincipal(context.Background(), tenants.Principal{Kind: tenants.KindUser, UserID: user,
		OrgID: tn.ID, OrgKind: tenants.OrgEnterprise, Role: "engineer", TenantID: tn.ID, Name: name})
}

// sinterRecipe is a sintering recipe for N42 with two furnace parameters and
// one press parameter.
func sinterRecipe(code string) recipe.RecipeInput {
	return recipe.RecipeInput{
		Code: code, Name: "N42 sintering", Product: "block 50x30x10", Grade: "N42",
		Ingredients: []recipe.Ingredient{
			{Material: "PrNd", Ratio: ptr(31.5), Tolerance: 0.2},
			{Material: "B", Ratio: ptr(0.98), Tolerance: 0.02},
			{Material: "Fe", Balance: true},
		},
		Parameters: []recipe.ParameterInput{
			{Model: "sintering-furnace", Metric: "zone1_temp", Setpoint: ptr(1060), Lower: ptr(1050), Upper: ptr(1070), Step: "sintering hold"},
			{Model: "sintering-furnace", Metric: "vacuum_pa", Setpoint: ptr(0.005), Lower: ptr(0), Upper: ptr(0.01)},
			{Model: "orientation-press", Metric: "orient_field_t", Setpoint: ptr(1.8), Lower: ptr(1.6), Upper: ptr(2.0)},
		},
	}
}

// released creates a recipe and takes version 1 to approved (alice submits,
// bob approves).
func approved(t *testing.T, svc *recipe.Service, tn tenanttest.Tenant, code string) (alice, bob context.Context) {
	t.Helper()
	alice, bob = as(tn, uuid.New(), "alice"), as(tn, uuid.New(), "bob")
	if _, err := svc.CreateRecipe(alice, sinterRecipe(code)); err != nil {
		t.Fatal(err)
	}
	if _, err := svc.Submit(alice, code, "1", recipe.TransitionInput{}); err != nil {
		t.Fatal(err)
	}
	if _, err := svc.Approve(bob, code, "1", recipe.TransitionInput{Comment: "ok"}); err != nil {
		t.Fatal(err)
	}
	return alice, bob
}

func wantCode(t *testing.T, what string, err error, code, field string) {
	t.Helper()
	if apps.Code(err) != code {
		t.Fatalf("%s: %v, want %s", what, err, code)
	}
	var e *apps.Error
	if field != "" {
		if ok := asErr(err, &e); !ok || e.Field != field {
			t.Fatalf("%s: %v, want field %s", what, err, field)
		}
	}
}

func asErr(err error, e **apps.Error) bool {
	x, ok := err.(*apps.Error)
	*e = x
	return ok
}

// TestWorkflow: composition and parameter checks, draft-only edits, four
// eyes, immutability of released versions and the diff.
func TestWorkflow(t *testing.T) {
	env := tenanttest.New(t)
	tn := env.NewTenant(t)
	svc := recipe.NewService(&env.DB, nopDownlink{}, nil)
	alice, bob := as(tn, uuid.New(), "alice"), as(tn, uuid.New(), "bob")

	bad := []struct {
		name  string
		edit  func(*recipe.RecipeInput)
		field string
	}{
		{"unknown grade", func(in *recipe.RecipeInput) { in.Grade = "N99" }, "grade"},
		{"unknown metric", func(in *recipe.RecipeInput) { in.Parameters[0].Metric = "zone9_temp" }, "parameters[0].metric"},
		{"unknown model", func(in *recipe.RecipeInput) { in.Parameters[0].Model = "toaster" }, "parameters[0].model"},
		{"limits crossed", func(in *recipe.RecipeInput) { in.Parameters[0].Lower, in.Parameters[0].Upper = ptr(1080), ptr(1070) }, "parameters[0].lower"},
		{"setpoint outside", func(in *recipe.RecipeInput) { in.Parameters[0].Setpoint = ptr(1075) }, "parameters[0].setpoint"},
		{"wrong unit", func(in *recipe.RecipeInput) { in.Parameters[0].Unit = "K" }, "parameters[0].unit"},
		{"missing upper", func(in *recipe.RecipeInput) { in.Parameters[1].Upper = nil }, "parameters[1].upper"},
		{"duplicate metric", func(in *recipe.RecipeInput) { in.Parameters[1] = in.Parameters[0] }, "parameters[1].metric"},
		{"ratios not 100", func(in *recipe.RecipeInput) { in.Ingredients = in.Ingredients[:2] }, "ingredients"},
		{"ratio and amount", func(in *recipe.RecipeInput) {
			in.Ingredients = []recipe.Ingredient{{Material: "PrNd", Ratio: ptr(31), Tolerance: 1}, {Material: "Fe", Amount: ptr(60), Unit: "kg"}}
		}, "ingredients[1].amount"},
		{"two balances", func(in *recipe.RecipeInput) { in.Ingredients[1] = recipe.Ingredient{Material: "Co", Balance: true} }, "ingredients[2].balance"},
		{"negative tolerance", func(in *recipe.RecipeInput) { in.Ingredients[0].Tolerance = -1 }, "ingredients[0].tolerance"},
	}
	for _, b := range bad {
		in := sinterRecipe("R-BAD")
		b.edit(&in)
		_, err := svc.CreateRecipe(alice, in)
		wantCode(t, b.name, err, apps.Invalid, b.field)
	}

	r, err := svc.CreateRecipe(alice, sinterRecipe("R-1"))
	if err != nil {
		t.Fatal(err)
	}
	v1, err := svc.Version(alice, "R-1", "1")
	if err != nil {
		t.Fatal(err)
	}
	if v1.Status != recipe.Draft || len(v1.Parameters) != 3 || v1.Parameters[0].Unit != "°C" || *v1.Ingredients[2].Ratio != 67.52 {
		t.Fatalf("version 1: %+v", v1)
	}
	if _, err := svc.CreateRecipe(alice, sinterRecipe("R-1")); apps.Code(err) != apps.Conflict {
		t.Fatalf("duplicate code: %v", err)
	}
	// A draft is editable; approval needs review and another person.
	edit := recipe.ContentInput{Notes: "hotter", Ingredients: sinterRecipe("").Ingredients, Parameters: sinterRecipe("").Parameters}
	edit.Parameters[0].Setpoint, edit.Parameters[0].Upper = ptr(1065), ptr(1075)
	if _, err := svc.UpdateDraft(alice, r.ID.String(), v1.ID.String(), edit); err != nil {
		t.Fatal(err)
	}
	_, err = svc.Approve(bob, "R-1", "1", recipe.TransitionInput{})
	wantCode(t, "approve a draft", err, apps.Conflict, "")
	if _, err := svc.Submit(alice, "R-1", "1", recipe.TransitionInput{Comment: "please review"}); err != nil {
		t.Fatal(err)
	}
	_, err = svc.UpdateDraft(alice, "R-1", "1", edit)
	wantCode(t, "edit in review", err, apps.Conflict, "")
	_, err = svc.Approve(alice, "R-1", "1", recipe.TransitionInput{})
	wantCode(t, "approve own submission", err, apps.Forbidden, "")
	key := tenants.WithPrincipal(context.Background(), tenants.Principal{Kind: tenants.KindAPIKey, KeyID: uuid.New(), TenantID: tn.ID, Scopes: []string{"*"}})
	_, err = svc.Approve(key, "R-1", "1", recipe.TransitionInput{})
	wantCode(t, "approve with an API key", err, apps.Forbidden, "")
	v, err := svc.Approve(bob, "R-1", "1", recipe.TransitionInput{Comment: "ok"})
	if err != nil {
		t.Fatal(err)
	}
	if v.Status != recipe.Approved || v.SubmittedBy.Name != "alice" || v.ApprovedBy.Name != "bob" || v.ApprovedAt == nil || len(v.History) != 2 ||
		v.History[1].Comment != "ok" {
		t.Fatalf("approved: %+v", v)
	}
	rel, ds, err := svc.Release(bob, "R-1", "1", recipe.ReleaseInput{Lines: []string{}})
	if err != nil || rel.Status != recipe.Released || len(ds) != 0 || rel.ReleasedBy.Name != "bob" {
		t.Fatalf("release: %+v %v %v", rel, ds, err)
	}
	_, err = svc.UpdateDraft(alice, "R-1", "1", edit)
	wantCode(t, "edit released", err, apps.Conflict, "")
	// The database refuses it too.
	_, err = env.DB.System.Exec(context.Background(), `UPDATE recipe_versions SET notes = 'x' WHERE id = $1`, v1.ID)
	if err == nil {
		t.Fatal("a released version's content changed in the database")
	}

	// A lot may name this version only in this enterprise.
	other := env.NewTenant(t)
	for _, tenant := range []uuid.UUID{other.ID} {
		_, err := env.DB.System.Exec(context.Background(), `INSERT INTO lots (tenant_id, code, recipe_version_id) VALUES ($1, 'L-X', $2)`, tenant, v1.ID)
		if err == nil {
			t.Fatal("a lot of another enterprise refers to this recipe version")
		}
	}
	if _, err := env.DB.System.Exec(context.Background(), `INSERT INTO lots (tenant_id, code, recipe_version_id) VALUES ($1, 'L-OWN', $2)`, tn.ID, v1.ID); err != nil {
		t.Fatal(err)
	}

	// Version 2 from 1: change a limit, drop a parameter, add one, change an ingredient.
	v2, err := svc.NewVersion(alice, "R-1", recipe.NewVersionInput{From: 1})
	if err != nil || v2.Number != 2 || v2.Status != recipe.Draft {
		t.Fatalf("new version: %+v %v", v2, err)
	}
	edit2 := edit
	edit2.Parameters = []recipe.ParameterInput{edit.Parameters[0], edit.Parameters[2],
		{Model: "sintering-furnace", Metric: "hold_time_h", Setpoint: ptr(4), Lower: ptr(3.5), Upper: ptr(4.5)}}
	edit2.Parameters[0].Lower = ptr(1055)
	edit2.Ingredients = []recipe.Ingredient{{Material: "PrNd", Ratio: ptr(31.8), Tolerance: 0.2}, edit.Ingredients[1], edit.Ingredients[2]}
	if _, err := svc.UpdateDraft(alice, "R-1", "2", edit2); err != nil {
		t.Fatal(err)
	}
	d, err := svc.Diff(alice, "R-1", "1", "2")
	if err != nil {
		t.Fatal(err)
	}
	if len(d.Parameters.Added) != 1 || d.Parameters.Added[0].Metric != "hold_time_h" ||
		len(d.Parameters.Removed) != 1 || d.Parameters.Removed[0].Metric != "vacuum_pa" ||
		len(d.Parameters.Changed) != 1 || d.Parameters.Changed[0].From.Lower != 1050 || d.Parameters.Changed[0].To.Lower != 1055 ||
		len(d.Ingredients.Changed) != 2 || len(d.Ingredients.Added) != 0 || len(d.Ingredients.Removed) != 0 || d.NotesChanged {
		t.Fatalf("diff: %+v", d)
	}
	// Returned to draft by a reviewer, then retired versions cannot come back.
	if _, err := svc.Submit(alice, "R-1", "2", recipe.TransitionInput{}); err != nil {
		t.Fatal(err)
	}
	_, err = svc.Return(bob, "R-1", "2", recipe.ReturnInput{})
	wantCode(t, "return without reason", err, apps.Invalid, "reason")
	if v, err := svc.Return(bob, "R-1", "2", recipe.ReturnInput{Reason: "hold time too short"}); err != nil || v.Status != recipe.Draft || v.ReturnReason == "" {
		t.Fatalf("return: %+v %v", v, err)
	}
	if v, err := svc.Retire(bob, "R-1", "1", recipe.TransitionInput{}); err != nil || v.Status != recipe.Retired {
		t.Fatalf("retire: %+v %v", v, err)
	}
	_, _, err = svc.Release(bob, "R-1", "1", recipe.ReleaseInput{})
	wantCode(t, "release retired", err, apps.Conflict, "")
}

type nopDownlink struct{}

func (nopDownlink) Publish(string, []byte, bool, byte) error { return nil }

// TestParameterSets: the sector template's recipe parameter sets, with the
// enterprise's models and units, make a valid recipe as they are; a template
// with a set naming an unknown metric or crossed limits does not load.
func TestParameterSets(t *testing.T) {
	env := tenanttest.New(t)
	tn := env.NewTenant(t)
	svc := recipe.NewService(&env.DB, nopDownlink{}, nil)
	ctx := as(tn, uuid.New(), "alice")
	sets, err := svc.ParameterSets(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var in []recipe.ParameterInput
	for _, s := range sets {
		if s.Key == "ndfeb-sintering" {
			if s.Model != "sintering-furnace" || len(s.Parameters) != 5 || s.Parameters[0].Unit != "°C" || s.ModelID == uuid.Nil {
				t.Fatalf("set %+v", s)
			}
			for _, p := range s.Parameters {
				in = append(in, recipe.ParameterInput{Model: p.Model, Metric: p.Metric, Setpoint: ptr(p.Setpoint), Lower: ptr(p.Lower), Upper: ptr(p.Upper), Unit: p.Unit, Step: p.Step})
			}
		}
	}
	if len(sets) < 6 || in == nil {
		t.Fatalf("sets %+v", sets)
	}
	if _, err := svc.CreateRecipe(ctx, recipe.RecipeInput{Code: "R-SET", Name: "from the template", Grade: "N42", Parameters: in}); err != nil {
		t.Fatal(err)
	}

	tpl, err := tenants.Templates()
	if err != nil {
		t.Fatal(err)
	}
	for _, bad := range []tenants.RecipeParameterTemplate{
		{Metric: "zone9_temp", Setpoint: 1, Lower: 0, Upper: 2},
		{Metric: "zone1_temp", Setpoint: 1070, Lower: 1090, Upper: 1050},
	} {
		x := *tpl["magnetic-materials"]
		x.RecipeParameterSets = []tenants.RecipeParameterSet{{Key: "bad", Name: "bad", Model: "sintering-furnace",
			Parameters: []tenants.RecipeParameterTemplate{bad}}}
		if err := x.Validate(); err == nil || !strings.Contains(err.Error(), "recipe parameter set") {
			t.Errorf("template with %+v: %v", bad, err)
		}
	}
}
