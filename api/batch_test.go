package api_test

import (
	"bytes"
	"net/http"
	"reflect"
	"strings"
	"testing"

	"github.com/nxcloud/nxcloud/apps"
	"github.com/nxcloud/nxcloud/apps/batch"
	"github.com/nxcloud/nxcloud/apps/downgrade"
)

// The batch API end to end: bad input answers problem+json with a field,
// another enterprise's lots are unknown to every write, roles gate writes,
// traces export, and the public resolve shows only the marked fields.
func TestBatchAPI(t *testing.T) {
	t.Parallel()
	s := newServer(t, nil, "")
	env := s.env
	a, b := env.NewTenant(t), env.NewTenant(t)
	credA, credB := bearer(a.APIKey), bearer(b.APIKey)
	post := func(cred, path, body string) *response { return s.do(t, "POST", path, cred, body) }

	decode[batch.Lot](t, "raw", post(credA, "/api/v1/lots", `{"code":"R-1","kind":"raw","quantity":100,"product":"NdPr metal"}`), http.StatusCreated)
	decode[batch.Lot](t, "flake", post(credA, "/api/v1/lots", `{"code":"F-1","quantity":90,"product":"flake"}`), http.StatusCreated)
	decode[batch.Lot](t, "block", post(credA, "/api/v1/lots", `{"code":"B-1","quantity":80,"product":"magnet <b>block</b>","grade":"N42SH"}`), http.StatusCreated)
	decode[batch.Lot](t, "B's lot", post(credB, "/api/v1/lots", `{"code":"R-1","kind":"raw","quantity":5}`), http.StatusCreated)

	// Bad input.
	wantProblem(t, "negative quantity", post(credA, "/api/v1/lots", `{"code":"X-1","quantity":-1}`), 400, apps.Invalid, "quantity")
	wantProblem(t, "grade not in the sector", post(credA, "/api/v1/lots", `{"code":"X-1","grade":"N99"}`), 400, apps.Invalid, "grade")
	wantProblem(t, "duplicate code", post(credA, "/api/v1/lots", `{"code":"R-1"}`), 409, apps.Conflict, "")
	wantProblem(t, "unknown field", post(credA, "/api/v1/lots", `{"code":"X-1","Quantity":1}`), 400, apps.Invalid, "Quantity")
	decode[batch.Link](t, "link", post(credA, "/api/v1/lot-links", `{"parent":"R-1","child":"F-1","kind":"consume","quantity":100}`), http.StatusCreated)
	decode[batch.Link](t, "link 2", post(credA, "/api/v1/lot-links", `{"parent":"F-1","child":"B-1","kind":"consume","quantity":90}`), http.StatusCreated)
	wantProblem(t, "cycle", post(credA, "/api/v1/lot-links", `{"parent":"B-1","child":"R-1","kind":"rework","quantity":1}`), 400, apps.Invalid, "child")
	wantProblem(t, "too much", post(credA, "/api/v1/lot-links", `{"parent":"B-1","child":"F-1","kind":"rework","quantity":81}`), 400, apps.Invalid, "quantity")
	wantProblem(t, "unknown lot", post(credA, "/api/v1/lot-links", `{"parent":"NOPE","child":"F-1","kind":"consume","quantity":1}`), 400, apps.Invalid, "parent")
	wantProblem(t, "unknown lot path", s.do(t, "GET", "/api/v1/lots/NOPE/trace", credA, ""), 404, apps.NotFound, "")
	wantProblem(t, "bad direction", s.do(t, "GET", "/api/v1/lots/B-1/trace?direction=up", credA, ""), 400, apps.Invalid, "direction")

	// B's writes never reach A's lots: A's codes and ids are unknown to B.
	lotA := decode[batch.Lot](t, "A's block", s.do(t, "GET", "/api/v1/lots/B-1", credA, ""), 200)
	for _, ref := range []string{"B-1", lotA.ID.String()} {
		wantProblem(t, "B patches A's lot", s.do(t, "PATCH", "/api/v1/lots/"+ref, credB, `{"status":"scrapped"}`), 404, apps.NotFound, "")
		wantProblem(t, "B runs A's lot", post(credB, "/api/v1/lots/"+ref+"/runs", `{"device":"x","started_at":"2026-11-23T08:00:00Z"}`), 404, apps.NotFound, "")
		wantProblem(t, "B links A's lot", post(credB, "/api/v1/lot-links", `{"parent":"R-1","child":"`+ref+`","kind":"consume","quantity":1}`), 400, apps.Invalid, "child")
	}
	post(credB, "/api/v1/customers", `{"code":"C-B","name":"B's customer"}`)
	wantProblem(t, "B ships A's lot", post(credB, "/api/v1/shipments", `{"code":"S-B","customer":"C-B","shipped_at":"2026-11-23T08:00:00Z","lots":[{"lot":"`+lotA.ID.String()+`","quantity":1}]}`), 400, apps.Invalid, "lots")
	if got := decode[batch.Lot](t, "A's block after B", s.do(t, "GET", "/api/v1/lots/B-1", credA, ""), 200); got.Status != "planned" {
		t.Errorf("A's lot changed by B: %+v", got)
	}

	// Roles: a viewer reads but does not write; an operator writes.
	viewer := s.session(t, env.Member(t, a.ID, "viewer"))
	operator := s.session(t, env.Member(t, a.ID, "operator"))
	s.do(t, "GET", "/api/v1/lots/B-1/trace", viewer, "")
	wantProblem(t, "viewer writes", post(viewer, "/api/v1/lots", `{"code":"V-1"}`), 403, apps.Forbidden, "")
	decode[batch.Lot](t, "operator writes", post(operator, "/api/v1/lots", `{"code":"O-1","quantity":1}`), http.StatusCreated)

	// Shipment and traces both ways, in every format.
	post(credA, "/api/v1/customers", `{"code":"ACME","name":"Acme <Motors>"}`)
	decode[batch.Shipment](t, "shipment", post(credA, "/api/v1/shipments", `{"code":"SHIP-1","customer":"ACME","shipped_at":"2026-11-23T08:00:00Z","lots":[{"lot":"B-1","quantity":80}]}`), http.StatusCreated)
	fw := decode[batch.Trace](t, "forward", s.do(t, "GET", "/api/v1/lots/R-1/trace?direction=forward", credA, ""), 200)
	if len(fw.Nodes) != 3 || fw.Nodes[2].Code != "B-1" || fw.Nodes[2].Depth != 2 || len(fw.Shipments) != 1 || fw.Shipments[0].Customer != "ACME" {
		t.Errorf("forward trace = %+v", fw)
	}
	bw := decode[batch.Trace](t, "backward", s.do(t, "GET", "/api/v1/lots/B-1/trace?depth=1", credA, ""), 200)
	if len(bw.Nodes) != 2 || !bw.Truncated {
		t.Errorf("backward trace = %+v", bw)
	}
	csv := s.do(t, "GET", "/api/v1/lots/B-1/trace.csv", credA, "")
	if csv.status != 200 || !strings.HasPrefix(csv.header.Get("Content-Type"), "text/csv") || !bytes.Contains(csv.body, []byte("2,R-1,")) {
		t.Errorf("CSV = %v", csv)
	}
	html := s.do(t, "GET", "/api/v1/lots/R-1/trace.html?direction=forward", credA, "")
	if html.status != 200 || !bytes.Contains(html.body, []byte("Acme &lt;Motors&gt;")) || bytes.Contains(html.body, []byte("<Motors>")) {
		t.Errorf("HTML = %v", html)
	}

	// The public resolve: only the marked fields, no credentials; everything
	// else is the same 404.
	s.do(t, "PUT", "/api/v1/label-fields", credA, `{"product":"magnet <b>block</b>","fields":["code","grade","customer"]}`)
	r := s.do(t, "GET", batch.LabelPath(a.Slug, "B-1"), "", "")
	if r.status != 200 || string(bytes.TrimSpace(r.body)) != `{"fields":{"code":"B-1","customer":"Acme \u003cMotors\u003e","grade":"N42SH"}}` {
		t.Errorf("resolve = %v", r)
	}
	var bodies []string
	for _, path := range []string{batch.LabelPath(a.Slug, "R-1"), batch.LabelPath(a.Slug, "NOPE"), batch.LabelPath(b.Slug, "B-1"), batch.LabelPath("no-such-slug", "B-1")} {
		r := s.do(t, "GET", path, "", "")
		p := wantProblem(t, "resolve "+path, r, 404, apps.NotFound, "")
		bodies = append(bodies, p.Detail)
	}
	for _, d := range bodies {
		if d != bodies[0] {
			t.Errorf("resolve answers differ: %q", bodies)
		}
	}
}

// The batch and downgrade schemas match their Go types: every JSON field is
// documented and nothing else; a response property is required exactly when
// the Go field is not omitempty.
func TestBatchDowngradeSchemasMatchGoTypes(t *testing.T) {
	doc := loadDoc(t)
	schemas := obj(obj(doc["components"])["schemas"])
	for name, c := range map[string]struct {
		v        any
		response bool
	}{
		"Lot": {batch.Lot{}, true}, "LotInput": {batch.LotInput{}, false}, "LotPatch": {batch.LotPatch{}, false},
		"LotPage": {batch.LotPage{}, true}, "Run": {batch.Run{}, true}, "RunInput": {batch.RunInput{}, false},
		"RunEnd": {batch.RunEnd{}, false}, "Link": {batch.Link{}, true}, "LinkInput": {batch.LinkInput{}, false},
		"LotLinks": {batch.LotLinks{}, true}, "Customer": {batch.Customer{}, true}, "CustomerInput": {batch.CustomerInput{}, false},
		"Shipment": {batch.Shipment{}, true}, "ShippedLot": {batch.ShippedLot{}, true}, "ShipmentInput": {batch.ShipmentInput{}, false},
		"ShipmentLotInput": {batch.ShipmentLotIn{}, false}, "MetricSummary": {batch.MetricSummary{}, true},
		"TraceRun": {batch.TraceRun{}, true}, "ShipmentRef": {batch.ShipmentRef{}, true}, "TraceNode": {batch.TraceNode{}, true},
		"TraceEdge": {batch.TraceEdge{}, true}, "Trace": {batch.Trace{}, true}, "LabelFields": {batch.PublicFields{}, true},
		"LabelFieldsInput": {batch.PublicFieldsInput{}, false}, "PublicLot": {batch.PublicLot{}, true},
		"Downgrade": {downgrade.Downgrade{}, true}, "DowngradeInput": {downgrade.DowngradeInput{}, false},
		"DowngradePage": {downgrade.Page{}, true}, "DowngradeDecisionInput": {downgrade.DecisionInput{}, false},
		"DowngradeMiss": {downgrade.Miss{}, true}, "DowngradeDecision": {downgrade.Decision{}, true},
		"DowngradeEvaluation": {downgrade.Evaluation{}, true}, "DowngradeEvaluateInput": {downgrade.EvaluateInput{}, false},
		"DowngradeReason": {downgrade.Reason{}, true}, "DowngradeGroup": {downgrade.Group{}, true},
		"DowngradeAnalytics": {downgrade.Analytics{}, true}, "GradePrice": {downgrade.GradePrice{}, true},
		"PriceList": {downgrade.PriceList{}, true}, "PriceListInput": {downgrade.PriceListInput{}, false},
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
			} else if c.response && required[f] == omit {
				t.Errorf("schema %s: property %q required=%v, but omitempty=%v", name, f, required[f], omit)
			}
		}
		for p := range props {
			if _, ok := fields[p]; !ok {
				t.Errorf("schema %s has property %q, which %T does not have", name, p, c.v)
			}
		}
	}
}
