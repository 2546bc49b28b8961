package api_test

import (
	"context"
	"net/http"
	"net/url"
	"reflect"
	"strings"
	"testing"

	"github.com/nxcloud/nxcloud/apps/recipe"
	"github.com/nxcloud/nxcloud/tenants"
)

// TestRecipeAPI: problems for bad recipes (with the field to blame), the
// workflow over HTTP (four eyes, API keys cannot approve, released versions
// immutable), the audit rows naming each step and version, and the views of
// downloads, equipment and deviations.
func TestRecipeAPI(t *testing.T) {
	t.Parallel()
	s := newServer(t, nil, "")
	env := s.env
	a := env.NewTenant(t)
	key := bearer(a.APIKey)

	for _, c := range []struct {
		name, from, to, field string
		status                int
	}{
		{"unknown metric", `"metric":"zone1_temp"`, `"metric":"zone9_temp"`, "parameters[0].metric", 400},
		{"unknown model", `"model":"sintering-furnace"`, `"model":"toaster"`, "parameters[0].model", 400},
		{"limits crossed", `"lower":1050,"upper":1070`, `"lower":1080,"upper":1070`, "parameters[0].lower", 400},
		{"setpoint outside", `"setpoint":1060`, `"setpoint":1000`, "parameters[0].setpoint", 400},
		{"unknown grade", `"grade":"N42"`, `"grade":"N99"`, "grade", 400},
		{"ratios over 100", `"ratio":31.5`, `"ratio":101`, "ingredients[0].ratio", 400},
		{"wrong case", `"grade":`, `"Grade":`, "Grade", 400},
	} {
		body := strings.Replace(recipeBody("R-BAD"), c.from, c.to, 1)
		wantProblem(t, c.name, s.do(t, "POST", "/api/v1/recipes", key, body), c.status, "invalid", c.field)
	}

	f := seedRecipe(t, s, a, key)
	code := f.recipe.Code
	v := "/api/v1/recipes/" + code + "/versions/"

	// Released: immutable.
	wantProblem(t, "edit a released version", s.do(t, "PUT", v+"1", key, `{"ingredients":[],"parameters":[]}`), 409, "conflict", "")
	// Version 2: four eyes over HTTP.
	v2 := decode[recipe.Version](t, "new version", s.do(t, "POST", "/api/v1/recipes/"+code+"/versions", key, `{"from":1}`), http.StatusCreated)
	if v2.Number != 2 || v2.Status != recipe.Draft {
		t.Fatalf("version 2: %+v", v2)
	}
	edited := decode[recipe.Version](t, "edit draft", s.do(t, "PUT", v+"2", key,
		`{"notes":"wider","ingredients":[{"material":"PrNd","ratio":31.5,"tolerance":0.2},{"material":"Fe","balance":true,"tolerance":0}],
		"parameters":[{"model":"sintering-furnace","metric":"zone1_temp","setpoint":1060,"lower":1045,"upper":1075}]}`), http.StatusOK)
	if edited.Parameters[0].Lower != 1045 || edited.Parameters[0].Unit != "°C" {
		t.Fatalf("edited: %+v", edited)
	}
	eng := env.Member(t, a.ID, "engineer")
	engSess := bearer(env.Session(t, eng, a.ID))
	other := bearer(env.Session(t, env.Member(t, a.ID, "admin"), a.ID))
	viewer := bearer(env.Session(t, env.Member(t, a.ID, "viewer"), a.ID))
	wantProblem(t, "viewer submits", s.do(t, "POST", v+"2/submit", viewer, `{"comment":""}`), 403, "forbidden", "")
	decode[recipe.Version](t, "submit", s.do(t, "POST", v+"2/submit", engSess, `{"comment":"please"}`), http.StatusOK)
	wantProblem(t, "approve own submission", s.do(t, "POST", v+"2/approve", engSess, `{"comment":""}`), 403, "forbidden", "")
	wantProblem(t, "approve with an API key", s.do(t, "POST", v+"2/approve", key, `{"comment":""}`), 403, "forbidden", "")
	ok := decode[recipe.Version](t, "approve", s.do(t, "POST", v+"2/approve", other, `{"comment":"fine"}`), http.StatusOK)
	if ok.SubmittedBy == nil || ok.SubmittedBy.ID != eng.ID.String() || ok.ApprovedBy == nil || ok.ApprovedBy.Kind != tenants.KindUser || ok.ApprovedBy.ID == eng.ID.String() {
		t.Fatalf("approved: %+v", ok)
	}
	wantProblem(t, "approve twice", s.do(t, "POST", v+"2/approve", other, `{"comment":""}`), 409, "conflict", "")
	wantProblem(t, "release to an unknown line", s.do(t, "POST", v+"2/release", key, `{"lines":["nope"]}`), 400, "invalid", "lines")
	rel := decode[recipe.ReleaseResult](t, "release 2", s.do(t, "POST", v+"2/release", key, `{"lines":["`+f.line+`"]}`), http.StatusOK)
	if rel.Version.Status != recipe.Released || len(rel.Downloads) != 1 || rel.Downloads[0].Status != recipe.Sent {
		t.Fatalf("release 2: %+v", rel)
	}
	diff := decode[recipe.Diff](t, "diff", s.do(t, "GET", "/api/v1/recipes/"+code+"/diff?from=1&to=2", key, ""), http.StatusOK)
	if len(diff.Parameters.Changed) != 1 || !diff.NotesChanged {
		t.Fatalf("diff: %+v", diff)
	}
	wantProblem(t, "diff without to", s.do(t, "GET", "/api/v1/recipes/"+code+"/diff?from=1", key, ""), 400, "invalid", "to")

	// The audit log names the step and the version.
	audit := decode[tenants.AuditPage](t, "audit", s.do(t, "GET", "/api/v1/audit?action="+
		url.QueryEscape("POST /api/v1/recipes/:recipe/versions/:version/approve"), key, ""), http.StatusOK)
	var approvals []string
	for _, r := range audit.Items {
		approvals = append(approvals, r.Result+" "+r.Resource+" "+r.ActorName)
	}
	if !strings.Contains(strings.Join(approvals, "\n"), "ok "+v+"2/approve") || !strings.Contains(strings.Join(approvals, "\n"), "denied "+v+"2/approve") {
		t.Errorf("audit rows of approvals: %q", approvals)
	}

	// Version 1's download was superseded by version 2's on the same furnace.
	dl := decode[struct{ Items []recipe.Download }](t, "downloads", s.do(t, "GET", "/api/v1/recipe-downloads?device="+f.device.Key, key, ""), http.StatusOK)
	if len(dl.Items) != 2 || dl.Items[0].Version != 2 || dl.Items[1].Status != recipe.Superseded {
		t.Fatalf("downloads: %+v", dl.Items)
	}
	wantProblem(t, "bad status filter", s.do(t, "GET", "/api/v1/recipe-downloads?status=done", key, ""), 400, "invalid", "status")
	eq := decode[struct{ Items []recipe.Equipment }](t, "equipment", s.do(t, "GET", "/api/v1/recipe-equipment", key, ""), http.StatusOK)
	if len(eq.Items) != 1 || eq.Items[0].Running != nil || eq.Items[0].Latest.Version != 2 {
		t.Fatalf("equipment: %+v", eq.Items)
	}

	// Deviations: listed, acknowledged once.
	devs := decode[struct{ Items []recipe.Deviation }](t, "deviations", s.do(t, "GET", "/api/v1/recipe-deviations?lot="+f.lot+"&acknowledged=false", key, ""), http.StatusOK)
	if len(devs.Items) != 1 || devs.Items[0].WorstValue != 1080 || devs.Items[0].LimitCrossed != "upper" {
		t.Fatalf("deviations: %+v", devs.Items)
	}
	wantProblem(t, "bad state filter", s.do(t, "GET", "/api/v1/recipe-deviations?state=maybe", key, ""), 400, "invalid", "state")
	ack := decode[recipe.Deviation](t, "acknowledge", s.do(t, "POST", "/api/v1/recipe-deviations/"+f.deviation.ID.String()+"/acknowledge", engSess,
		`{"note":"checked"}`), http.StatusOK)
	if !ack.Acknowledged || ack.AcknowledgedBy == nil || ack.AcknowledgedBy.ID != eng.ID.String() {
		t.Fatalf("acknowledged: %+v", ack)
	}
	wantProblem(t, "acknowledge twice", s.do(t, "POST", "/api/v1/recipe-deviations/"+f.deviation.ID.String()+"/acknowledge", key, `{"note":""}`), 409, "conflict", "")
	wantProblem(t, "unknown deviation", s.do(t, "GET", "/api/v1/recipe-deviations/nope", key, ""), 404, "not_found", "")

	// The sector's recipe parameter sets, with A's models.
	sets := decode[struct{ Items []recipe.ParameterSet }](t, "parameter sets", s.do(t, "GET", "/api/v1/recipe-parameter-sets", key, ""), http.StatusOK)
	if len(sets.Items) < 6 || sets.Items[0].ModelID.String() == "" {
		t.Errorf("parameter sets: %+v", sets.Items)
	}

	// The lot's trace carries its deviations.
	tr := s.do(t, "GET", "/api/v1/lots/"+f.lot+"/trace", key, "")
	if tr.status != http.StatusOK || !strings.Contains(string(tr.body), `"deviations":[{"id":"`+f.deviation.ID.String()+`"`) {
		t.Errorf("trace of %s: %v", f.lot, tr)
	}
}

// TestRecipeWriteIsolation: tenant B cannot edit, submit, approve, release,
// retire or download A's recipe versions, nor acknowledge A's deviation:
// each is 404, and A's records are unchanged.
func TestRecipeWriteIsolation(t *testing.T) {
	t.Parallel()
	s := newServer(t, nil, "")
	env := s.env
	a, b := env.NewTenant(t), env.NewTenant(t)
	f := seedRecipe(t, s, a, bearer(a.APIKey))
	// A's second version, in review, for B to try approving.
	code := f.recipe.Code
	s.do(t, "POST", "/api/v1/recipes/"+code+"/versions", bearer(a.APIKey), `{"from":1}`)
	s.do(t, "POST", "/api/v1/recipes/"+code+"/versions/2/submit", bearer(a.APIKey), `{"comment":""}`)
	// B has a line of the same key, so only the recipe can be the reason.
	if _, err := env.Tenants.CreateLine(context.Background(), b.ID, tenants.LineInput{Key: f.line, Name: "B's line"}); err != nil {
		t.Fatal(err)
	}
	bKey := bearer(b.APIKey)
	bUser := bearer(env.Session(t, env.Member(t, b.ID, "owner"), b.ID))
	for _, ref := range []string{f.recipe.ID.String(), code} {
		for _, ver := range []string{"2", f.version.ID.String()} {
			p := "/api/v1/recipes/" + ref + "/versions/" + ver
			for _, w := range []struct{ method, path, cred, body string }{
				{"PUT", p, bKey, `{"ingredients":[],"parameters":[]}`},
				{"POST", p + "/submit", bKey, `{"comment":""}`},
				{"POST", p + "/approve", bUser, `{"comment":""}`},
				{"POST", p + "/return", bUser, `{"reason":"no"}`},
				{"POST", p + "/release", bKey, `{"lines":[]}`},
				{"POST", p + "/retire", bKey, `{"comment":""}`},
				{"POST", p + "/downloads", bKey, `{"line":"` + f.line + `"}`},
			} {
				wantProblem(t, "B: "+w.method+" "+w.path, s.do(t, w.method, w.path, w.cred, w.body), 404, "not_found", "")
			}
		}
		wantProblem(t, "B: new version", s.do(t, "POST", "/api/v1/recipes/"+ref+"/versions", bKey, `{"from":1}`), 404, "not_found", "")
	}
	wantProblem(t, "B: acknowledge", s.do(t, "POST", "/api/v1/recipe-deviations/"+f.deviation.ID.String()+"/acknowledge", bKey, `{"note":""}`), 404, "not_found", "")

	// A's records are as they were.
	aKey := bearer(a.APIKey)
	v2 := decode[recipe.Version](t, "A's version 2", s.do(t, "GET", "/api/v1/recipes/"+code+"/versions/2", aKey, ""), http.StatusOK)
	v1 := decode[recipe.Version](t, "A's version 1", s.do(t, "GET", "/api/v1/recipes/"+code+"/versions/1", aKey, ""), http.StatusOK)
	d := decode[recipe.Deviation](t, "A's deviation", s.do(t, "GET", "/api/v1/recipe-deviations/"+f.deviation.ID.String(), aKey, ""), http.StatusOK)
	dl := decode[struct{ Items []recipe.Download }](t, "A's downloads", s.do(t, "GET", "/api/v1/recipe-downloads", aKey, ""), http.StatusOK)
	if v2.Status != recipe.InReview || v1.Status != recipe.Released || d.Acknowledged || len(dl.Items) != 1 {
		t.Fatalf("A's records changed: v2 %s, v1 %s, deviation acknowledged %v, %d downloads", v2.Status, v1.Status, d.Acknowledged, len(dl.Items))
	}
}

// TestRecipeSchemasMatchGoTypes checks the recipe fragment's schemas against
// the Go types the handlers encode and decode (as
// TestOpenAPISchemasMatchGoTypes does for the core schemas).
func TestRecipeSchemasMatchGoTypes(t *testing.T) {
	doc := loadDoc(t)
	schemas := obj(obj(doc["components"])["schemas"])
	for name, c := range map[string]struct {
		v        any
		response bool
	}{
		"RecipeActor": {recipe.Actor{}, true}, "RecipeIngredient": {recipe.Ingredient{}, true},
		"RecipeParameter": {recipe.Parameter{}, true}, "RecipeParameterInput": {recipe.ParameterInput{}, false},
		"RecipeVersionSummary": {recipe.VersionSummary{}, true}, "Recipe": {recipe.Recipe{}, true},
		"RecipeTransition": {recipe.Transition{}, true}, "RecipeVersion": {recipe.Version{}, true},
		"RecipeInput": {recipe.RecipeInput{}, false}, "RecipeContentInput": {recipe.ContentInput{}, false},
		"RecipeNewVersionInput": {recipe.NewVersionInput{}, false}, "RecipeTransitionInput": {recipe.TransitionInput{}, false},
		"RecipeReturnInput": {recipe.ReturnInput{}, false}, "RecipeReleaseInput": {recipe.ReleaseInput{}, false},
		"RecipeDownloadInput": {recipe.DownloadInput{}, false}, "RecipeCommandParameter": {recipe.CommandParameter{}, true},
		"RecipeCommand": {recipe.Command{}, true}, "RecipeDownload": {recipe.Download{}, true},
		"RecipeReleaseResult": {recipe.ReleaseResult{}, true}, "RecipeRunning": {recipe.Running{}, true},
		"RecipeEquipment": {recipe.Equipment{}, true}, "RecipeDeviation": {recipe.Deviation{}, true},
		"RecipeAcknowledgeInput": {recipe.AcknowledgeInput{}, false}, "RecipeParameterChange": {recipe.ParameterChange{}, true},
		"RecipeIngredientChange": {recipe.IngredientChange{}, true}, "RecipeParameterDiff": {recipe.ParameterDiff{}, true},
		"RecipeIngredientDiff": {recipe.IngredientDiff{}, true}, "RecipeDiff": {recipe.Diff{}, true},
		"RecipeParameterSet": {recipe.ParameterSet{}, true}, "RecipeDownloadPage": {recipe.DownloadPage{}, true},
		"RecipeDeviationPage": {recipe.DeviationPage{}, true},
	} {
		schema := obj(schemas[name])
		if schema == nil {
			t.Errorf("components.schemas.%s is missing", name)
			continue
		}
		props, required := doc.flatten(schema)
		fields := map[string]bool{}
		jsonFieldsOf(reflect.TypeOf(c.v), fields)
		for f, omit := range fields {
			if _, ok := props[f]; !ok {
				t.Errorf("schema %s lacks property %q (json tag of %T)", name, f, c.v)
			} else if c.response && required[f] == omit {
				t.Errorf("schema %s: property %q required=%v, but the Go field is omitempty=%v", name, f, required[f], omit)
			}
		}
		for p := range props {
			if _, ok := fields[p]; !ok {
				t.Errorf("schema %s has property %q, which %T does not have", name, p, c.v)
			}
		}
	}
}
