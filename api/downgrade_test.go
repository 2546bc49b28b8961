package api_test

import (
	"net/http"
	"testing"

	"github.com/nxcloud/nxcloud/apps"
	"github.com/nxcloud/nxcloud/apps/batch"
	"github.com/nxcloud/nxcloud/apps/downgrade"
	"github.com/nxcloud/nxcloud/apps/quality"
)

// Downgrades over HTTP: a proposal made when inspection results are
// recorded (the quality app's hook, as the process wires it), decided only by
// a role that may approve and only by its own enterprise; bad input is
// problem+json.
func TestDowngradeAPI(t *testing.T) {
	t.Parallel()
	s := newServer(t, nil, "")
	env := s.env
	a, b := env.NewTenant(t), env.NewTenant(t)
	credA, credB := bearer(a.APIKey), bearer(b.APIKey)
	s.do(t, "PUT", "/api/v1/grade-prices", credA, `{"prices":[{"grade":"N52","price":800},{"grade":"N50","price":700}]}`)
	s.do(t, "POST", "/api/v1/lots", credA, `{"code":"N52-LOT","grade":"N52","quantity":100}`)
	decode[quality.ResultsAdded](t, "results", s.do(t, "POST", "/api/v1/quality/lots/N52-LOT/results", credA,
		`{"results":[{"characteristic":"br","value":1.41},{"characteristic":"hcj","value":900},{"characteristic":"bhmax","value":390},{"characteristic":"density","value":7.55}]}`), http.StatusCreated)
	page := decode[downgrade.Page](t, "proposals", s.do(t, "GET", "/api/v1/downgrades?status=proposed&lot=N52-LOT", credA, ""), 200)
	if len(page.Items) != 1 || page.Items[0].AssignedGrade != "N50" || *page.Items[0].ValueLost != 10000 {
		t.Fatalf("proposals = %+v", page.Items)
	}
	id := page.Items[0].ID.String()

	// An operator records but does not approve; B cannot see or decide A's.
	operator := s.session(t, env.Member(t, a.ID, "operator"))
	wantProblem(t, "operator approves", s.do(t, "POST", "/api/v1/downgrades/"+id+"/approve", operator, `{"note":""}`), 403, apps.Forbidden, "")
	wantProblem(t, "B approves", s.do(t, "POST", "/api/v1/downgrades/"+id+"/approve", credB, `{"note":""}`), 404, apps.NotFound, "")
	wantProblem(t, "B rejects", s.do(t, "POST", "/api/v1/downgrades/"+id+"/reject", credB, `{"note":""}`), 404, apps.NotFound, "")
	wantProblem(t, "B records on A's lot", s.do(t, "POST", "/api/v1/downgrades", credB,
		`{"lot":"N52-LOT","assigned_grade":"N50","reason_code":"LOW_BR","disposition":"sell_lower"}`), 400, apps.Invalid, "lot")
	engineer := s.session(t, env.Member(t, a.ID, "engineer"))
	got := decode[downgrade.Downgrade](t, "approve", s.do(t, "POST", "/api/v1/downgrades/"+id+"/approve", engineer, `{"note":"sell as N50"}`), 200)
	if got.Status != "approved" || got.DecisionNote != "sell as N50" {
		t.Errorf("approved = %+v", got)
	}
	// The lot's trace carries its inspections and downgrades (api.NewApps
	// wires the apps' details into the batch app).
	tr := decode[batch.Trace](t, "trace", s.do(t, "GET", "/api/v1/lots/N52-LOT/trace", credA, ""), 200)
	if len(tr.Nodes) != 1 || tr.Nodes[0].Details["inspections"] == nil || tr.Nodes[0].Details["downgrades"] == nil {
		t.Errorf("trace details = %+v", tr.Nodes)
	}
	wantProblem(t, "approve twice", s.do(t, "POST", "/api/v1/downgrades/"+id+"/reject", engineer, `{"note":""}`), 409, apps.Conflict, "")

	// Bad input.
	for _, tc := range []struct{ body, field string }{
		{`{"lot":"N52-LOT","assigned_grade":"N99","reason_code":"LOW_BR","disposition":"sell_lower"}`, "assigned_grade"},
		{`{"lot":"N52-LOT","assigned_grade":"N50","reason_code":"LOW_BR","disposition":"sell_lower","quantity":-3}`, "quantity"},
		{`{"lot":"N52-LOT","assigned_grade":"N50","reason_code":"BAD","disposition":"sell_lower"}`, "reason_code"},
		{`{"lot":"NOPE","assigned_grade":"N50","reason_code":"LOW_BR","disposition":"sell_lower"}`, "lot"},
	} {
		wantProblem(t, tc.body, s.do(t, "POST", "/api/v1/downgrades", operator, tc.body), 400, apps.Invalid, tc.field)
	}
	wantProblem(t, "bad price", s.do(t, "PUT", "/api/v1/grade-prices", credA, `{"prices":[{"grade":"N99","price":1}]}`), 400, apps.Invalid, "prices")
	ev := decode[downgrade.Evaluation](t, "what-if", s.do(t, "POST", "/api/v1/downgrades/evaluate", operator,
		`{"lot":"N52-LOT","values":{"br":[1.45],"hcj":[900],"bhmax":[400]}}`), 200)
	if ev.Decision.Propose {
		t.Errorf("what-if = %+v", ev)
	}
	an := decode[downgrade.Analytics](t, "analytics", s.do(t, "GET", "/api/v1/downgrade-analytics?group_by=month", credA, ""), 200)
	if an.Total.DowngradedQuantity != 100 || an.Total.ValueLost != 10000 || len(an.Groups) != 1 {
		t.Errorf("analytics = %+v", an)
	}
	wantProblem(t, "group_by", s.do(t, "GET", "/api/v1/downgrade-analytics?group_by=colour", credA, ""), 400, apps.Invalid, "group_by")
	wantProblem(t, "unknown lot filter", s.do(t, "GET", "/api/v1/downgrades?lot=NOPE", credA, ""), 404, apps.NotFound, "")
}
