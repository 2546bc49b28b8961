package api_test

import (
	"bytes"
	"reflect"
	"strings"
	"testing"

	"github.com/google/uuid"

	"github.com/nxcloud/nxcloud/apps"
	"github.com/nxcloud/nxcloud/apps/quality"
	"github.com/nxcloud/nxcloud/tenants"
)

// Inspection plans, results with judgement, nonconformances, import and SPC
// through the HTTP API, with the bad input each refuses.
func TestQualityAPI(t *testing.T) {
	t.Parallel()
	s := newServer(t, nil, "")
	a := s.env.NewTenant(t)
	key := bearer(a.APIKey)
	sfx := strings.ReplaceAll(uuid.NewString(), "-", "")[:8]
	lot := qualityLot(t, s, key, "Q-LOT-"+sfx, "ring", "N42")

	// Plans.
	for _, c := range []struct{ body, field string }{
		{`{"code":"P1","characteristics":[{"characteristic":"br","lsl":1.3,"usl":1.2}]}`, "characteristics[0].lsl"},
		{`{"code":"P1","characteristics":[{"characteristic":"colour"}]}`, "characteristics[0].characteristic"},
		{`{"code":"P1","characteristics":[{"characteristic":"br","subgroup_size":26}]}`, "characteristics[0].subgroup_size"},
		{`{"code":"P1","grade":"N99","characteristics":[{"characteristic":"br"}]}`, "grade"},
		{`{"code":"bad code","characteristics":[{"characteristic":"br"}]}`, "code"},
		{`{"code":"P1","characteristics":[]}`, "characteristics"},
		{`{"code":"P1","Characteristics":[]}`, "Characteristics"},
	} {
		wantProblem(t, "plan "+c.body, s.do(t, "POST", "/api/v1/quality/plans", key, c.body), 400, apps.Invalid, c.field)
	}
	plan := decode[quality.Plan](t, "plan", s.do(t, "POST", "/api/v1/quality/plans", key,
		`{"code":"P-RING","product":"ring","grade":"N42","characteristics":[{"characteristic":"br","sample_size":2,"subgroup_size":2},{"characteristic":"dimension","lsl":-0.05,"usl":0.05}]}`), 201)
	if plan.Grade != "N42" || plan.Characteristics[0].SubgroupSize != 2 || plan.Characteristics[1].Frequency != "lot" {
		t.Fatalf("plan = %+v", plan)
	}
	wantProblem(t, "same code", s.do(t, "POST", "/api/v1/quality/plans", key, `{"code":"P-RING","characteristics":[{"characteristic":"br"}]}`), 409, apps.Conflict, "")
	wantProblem(t, "same scope", s.do(t, "POST", "/api/v1/quality/plans", key, `{"code":"P-RING-2","product":"ring","grade":"N42","characteristics":[{"characteristic":"br"}]}`), 409, apps.Conflict, "")
	upd := decode[quality.Plan](t, "update", s.do(t, "PUT", "/api/v1/quality/plans/P-RING", key,
		`{"code":"P-RING","product":"ring","grade":"N42","characteristics":[{"characteristic":"br","sample_size":2,"subgroup_size":2},{"characteristic":"dimension","lsl":-0.02,"usl":0.02}]}`), 200)
	if *upd.Characteristics[1].USL != 0.02 {
		t.Fatalf("updated plan = %+v", upd)
	}
	wantProblem(t, "unknown plan", s.do(t, "GET", "/api/v1/quality/plans/nope", key, ""), 404, apps.NotFound, "")

	// Results.
	results := "/api/v1/quality/lots/" + lot.Code + "/results"
	wantProblem(t, "unknown characteristic", s.do(t, "POST", results, key,
		`{"results":[{"characteristic":"br","value":1.3},{"characteristic":"colour","value":1}]}`), 400, apps.Invalid, "results[1].characteristic")
	wantProblem(t, "NaN", s.do(t, "POST", results, key, `{"results":[{"characteristic":"br","value":NaN}]}`), 400, apps.Invalid, "")
	wantProblem(t, "overflow", s.do(t, "POST", results, key, `{"results":[{"characteristic":"br","value":1e999}]}`), 400, apps.Invalid, "")
	wantProblem(t, "no value", s.do(t, "POST", results, key, `{"results":[{"characteristic":"br"}]}`), 400, apps.Invalid, "results[0].value")
	wantProblem(t, "string value", s.do(t, "POST", results, key, `{"results":[{"characteristic":"br","value":"1.3"}]}`), 400, apps.Invalid, "")
	wantProblem(t, "unknown device", s.do(t, "POST", results, key, `{"results":[{"characteristic":"br","value":1.3,"device":"nope"}]}`), 400, apps.Invalid, "results[0].device")
	wantProblem(t, "empty", s.do(t, "POST", results, key, `{"results":[]}`), 400, apps.Invalid, "results")
	wantProblem(t, "unknown lot", s.do(t, "POST", "/api/v1/quality/lots/NOPE-"+sfx+"/results", key, `{"results":[{"characteristic":"br","value":1.3}]}`), 404, apps.NotFound, "")
	added := decode[quality.ResultsAdded](t, "results", s.do(t, "POST", results, key,
		`{"results":[{"characteristic":"br","value":1.30},{"characteristic":"br","value":1.25},{"characteristic":"dimension","value":0.03}]}`), 201)
	if added.Inspection.Status != quality.StatusFail || added.Inspection.Plan != "P-RING" || len(added.Inspection.Nonconformances) != 2 {
		t.Fatalf("inspection = %+v", added.Inspection)
	}
	if added.Results[1].Subgroup != 1 || added.Results[1].Sample != 2 {
		t.Fatalf("results = %+v", added.Results)
	}
	codes := map[string]bool{}
	var ncID uuid.UUID
	for _, n := range added.Inspection.Nonconformances {
		codes[n.ReasonCode] = true
		ncID = n.ID
	}
	if !codes["LOW_BR"] || !codes["DIM_OOT"] {
		t.Fatalf("reason codes = %v", codes)
	}
	decode[quality.LotInspection](t, "inspection", s.do(t, "GET", "/api/v1/quality/lots/"+lot.ID.String(), key, ""), 200)
	decode[map[string]any](t, "results", s.do(t, "GET", results, key, ""), 200)

	// Nonconformances.
	wantProblem(t, "unknown reason", s.do(t, "POST", "/api/v1/quality/lots/"+lot.Code+"/nonconformances", key, `{"reason_code":"NOPE"}`), 400, apps.Invalid, "reason_code")
	decode[quality.Nonconformance](t, "manual", s.do(t, "POST", "/api/v1/quality/lots/"+lot.Code+"/nonconformances", key, `{"reason_code":"CHIPPING","description":"edge"}`), 201)
	wantProblem(t, "bad status", s.do(t, "PATCH", "/api/v1/quality/nonconformances/"+ncID.String(), key, `{"status":"done"}`), 400, apps.Invalid, "status")
	wantProblem(t, "bad disposition", s.do(t, "PATCH", "/api/v1/quality/nonconformances/"+ncID.String(), key, `{"status":"closed","disposition":"burn"}`), 400, apps.Invalid, "disposition")
	closed := decode[quality.Nonconformance](t, "close", s.do(t, "PATCH", "/api/v1/quality/nonconformances/"+ncID.String(), key, `{"status":"closed","disposition":"rework"}`), 200)
	if closed.Status != "closed" || closed.ClosedAt == nil || closed.Disposition != "rework" {
		t.Fatalf("closed = %+v", closed)
	}
	list := decode[struct{ Items []quality.Nonconformance }](t, "list", s.do(t, "GET", "/api/v1/quality/nonconformances?status=open&lot="+lot.Code, key, ""), 200)
	if len(list.Items) != 2 {
		t.Fatalf("open nonconformances = %+v", list.Items)
	}
	wantProblem(t, "unknown lot filter", s.do(t, "GET", "/api/v1/quality/nonconformances?lot=NOPE", key, ""), 404, apps.NotFound, "")
	wantProblem(t, "bad status filter", s.do(t, "GET", "/api/v1/quality/nonconformances?status=x", key, ""), 400, apps.Invalid, "status")

	// Import.
	csv := "lot,characteristic,value\n" + lot.Code + ",br,1.31\nNOPE,br,1.3\n" + lot.Code + ",br,inf\n"
	imp := decode[quality.ImportResult](t, "import", s.send(t, "POST", "/api/v1/quality/results/import?dry_run=false", key, "text/csv; charset=utf-8", csv), 200)
	if imp.Stored != 1 || imp.Failed != 2 || imp.Rows[1].Error.Code != apps.NotFound || imp.Rows[2].Error.Field != "value" {
		t.Fatalf("import = %+v", imp)
	}
	wantProblem(t, "import header", s.send(t, "POST", "/api/v1/quality/results/import", key, "text/csv", "lot,value\nx,1\n"), 400, apps.Invalid, "")
	wantProblem(t, "import type", s.send(t, "POST", "/api/v1/quality/results/import", key, "text/plain", "x"), 400, apps.Invalid, "")
	wantProblem(t, "import dry_run", s.send(t, "POST", "/api/v1/quality/results/import?dry_run=maybe", key, "text/csv", csv), 400, apps.Invalid, "dry_run")
	decode[quality.ImportResult](t, "import JSON", s.send(t, "POST", "/api/v1/quality/results/import?dry_run=true", key, "application/json",
		`[{"lot":"`+lot.Code+`","characteristic":"br","value":1.3}]`), 200)

	// SPC: the plan's n = 2 gives X̄-R: the lot's first subgroup is complete,
	// its second (the imported value) is not; one point draws no limits.
	spc := decode[quality.SPCResult](t, "spc", s.do(t, "GET", "/api/v1/quality/spc?characteristic=br&product=ring&grade=N42&rules=nelson", key, ""), 200)
	if spc.Chart != quality.ChartXbarR || spc.N != 2 || spc.Subgroups != 1 || spc.Excluded != 1 || spc.X != nil {
		t.Fatalf("spc = %+v", spc)
	}
	spc = decode[quality.SPCResult](t, "spc imr", s.do(t, "GET", "/api/v1/quality/spc?characteristic=br&chart=imr&lsl=1.2&usl=1.4&from=2020-01-01T00:00:00Z", key, ""), 200)
	if spc.Values != 3 || spc.Capability == nil || spc.Capability.Source != "query" || spc.Capability.Cp == nil || len(spc.Points) != 3 {
		t.Fatalf("spc imr = %+v", spc)
	}
	for _, c := range []struct{ q, field string }{
		{"", "characteristic"}, {"characteristic=colour", "characteristic"}, {"characteristic=br&chart=p", "chart"},
		{"characteristic=br&n=0", "n"}, {"characteristic=br&n=30", "n"}, {"characteristic=br&lsl=2&usl=1", "lsl"},
		{"characteristic=br&lsl=NaN", "lsl"}, {"characteristic=br&from=yesterday", "from"}, {"characteristic=br&points=0", "points"},
		{"characteristic=br&rules=all", "rules"}, {"characteristic=br&from=2026-02-01T00:00:00Z&to=2026-01-01T00:00:00Z", "from"},
	} {
		wantProblem(t, "spc "+c.q, s.do(t, "GET", "/api/v1/quality/spc?"+c.q, key, ""), 400, apps.Invalid, c.field)
	}
	wantProblem(t, "spc unknown line", s.do(t, "GET", "/api/v1/quality/spc?characteristic=br&line=nope", key, ""), 404, apps.NotFound, "")

	// A viewer reads but does not record.
	viewer := bearer(s.env.Session(t, s.env.Member(t, a.ID, "viewer"), a.ID))
	s.do(t, "GET", "/api/v1/quality/plans", viewer, "")
	wantProblem(t, "viewer records", s.do(t, "POST", results, viewer, `{"results":[{"characteristic":"br","value":1.3}]}`), 403, apps.Forbidden, "")
}

// Enterprise B can neither write to nor read A's quality records.
func TestQualityWriteIsolation(t *testing.T) {
	t.Parallel()
	s := newServer(t, nil, "")
	a, b := s.env.NewTenant(t), s.env.NewTenant(t)
	ka, kb := bearer(a.APIKey), bearer(b.APIKey)
	sfx := strings.ReplaceAll(uuid.NewString(), "-", "")[:8]
	lot := qualityLot(t, s, ka, "QI-LOT-"+sfx, "iso", "N42")
	plan := decode[quality.Plan](t, "A's plan", s.do(t, "POST", "/api/v1/quality/plans", ka, `{"code":"QI-PLAN","characteristics":[{"characteristic":"br"}]}`), 201)
	added := decode[quality.ResultsAdded](t, "A's results", s.do(t, "POST", "/api/v1/quality/lots/"+lot.Code+"/results", ka,
		`{"results":[{"characteristic":"br","value":1.2},{"characteristic":"br","value":1.21}]}`), 201)
	nc := added.Inspection.Nonconformances[0]

	for _, ref := range []string{lot.Code, lot.ID.String()} {
		wantProblem(t, "B adds results to A's lot", s.do(t, "POST", "/api/v1/quality/lots/"+ref+"/results", kb,
			`{"results":[{"characteristic":"br","value":9}]}`), 404, apps.NotFound, "")
		wantProblem(t, "B records a nonconformance on A's lot", s.do(t, "POST", "/api/v1/quality/lots/"+ref+"/nonconformances", kb,
			`{"reason_code":"CRACK"}`), 404, apps.NotFound, "")
	}
	wantProblem(t, "B closes A's nonconformance", s.do(t, "PATCH", "/api/v1/quality/nonconformances/"+nc.ID.String(), kb, `{"status":"closed"}`), 404, apps.NotFound, "")
	wantProblem(t, "B replaces A's plan", s.do(t, "PUT", "/api/v1/quality/plans/"+plan.ID.String(), kb,
		`{"code":"QI-PLAN","characteristics":[{"characteristic":"br","lsl":0}]}`), 404, apps.NotFound, "")
	imp := decode[quality.ImportResult](t, "B imports into A's lot", s.send(t, "POST", "/api/v1/quality/results/import", kb, "text/csv",
		"lot,characteristic,value\n"+lot.Code+",br,9\n"+lot.ID.String()+",br,9\n"), 200)
	if imp.Stored != 0 || imp.Rows[0].Error.Code != apps.NotFound || imp.Rows[1].Error.Code != apps.NotFound {
		t.Fatalf("B's import = %+v", imp)
	}
	spc := s.do(t, "GET", "/api/v1/quality/spc?characteristic=br&chart=imr", kb, "")
	if spc.status != 200 || bytes.Contains(spc.body, []byte(lot.ID.String())) || bytes.Contains(spc.body, []byte(lot.Code)) {
		t.Fatalf("B's SPC = %v", spc)
	}
	if got := decode[quality.SPCResult](t, "B's SPC", spc, 200); got.Values != 0 {
		t.Fatalf("B's SPC sees %d values", got.Values)
	}
	// A's records are as A left them.
	in := decode[quality.LotInspection](t, "A's lot", s.do(t, "GET", "/api/v1/quality/lots/"+lot.Code, ka, ""), 200)
	if in.Characteristics[0].Count != 2 || len(in.Nonconformances) != 1 || in.Nonconformances[0].Status != "open" {
		t.Fatalf("A's inspection = %+v", in)
	}
	got := decode[quality.Plan](t, "A's plan", s.do(t, "GET", "/api/v1/quality/plans/QI-PLAN", ka, ""), 200)
	if got.Characteristics[0].LSL != nil {
		t.Fatalf("A's plan changed: %+v", got)
	}
}

// The quality schemas of api/openapi/quality.json list exactly the JSON
// fields of the Go types, required exactly when not omitempty.
func TestQualitySchemasMatchGoTypes(t *testing.T) {
	doc := loadDoc(t)
	schemas := obj(obj(doc["components"])["schemas"])
	for name, c := range map[string]struct {
		v        any
		response bool
	}{
		"InspectionPlan": {quality.Plan{}, true}, "InspectionPlanCharacteristic": {quality.PlanCharacteristic{}, false},
		"InspectionPlanInput": {quality.PlanInput{}, false}, "QualityLot": {quality.Lot{}, true}, "JudgementLimits": {quality.Limits{}, true},
		"Judgement": {quality.Judgement{}, true}, "LotInspection": {quality.LotInspection{}, true}, "InspectionResult": {quality.Result{}, true},
		"InspectionResultInput": {quality.ResultInput{}, false}, "InspectionResultsInput": {quality.ResultsInput{}, false},
		"InspectionResultsAdded": {quality.ResultsAdded{}, true}, "Nonconformance": {quality.Nonconformance{}, true},
		"NonconformanceInput": {quality.NCInput{}, false}, "NonconformanceUpdate": {quality.NCUpdate{}, false},
		"InspectionImportRowInput": {quality.ImportRowInput{}, false}, "InspectionImport": {quality.ImportResult{}, true},
		"InspectionImportRow": {quality.ImportOutcome{}, true}, "SPCLimits": {quality.ControlLimits{}, true},
		"SPCPoint": {quality.SPCPoint{}, true}, "InspectionImportRowError": {tenants.RowError{}, true}, "SPCCapability": {quality.SPCCapability{}, true}, "SPCChart": {quality.SPCResult{}, true},
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
				t.Errorf("schema %s lacks property %q", name, f)
				continue
			}
			if c.response && required[f] == omit {
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
