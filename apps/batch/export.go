package batch

import (
	"encoding/csv"
	"encoding/json"
	"html/template"
	"io"
	"strconv"
	"strings"
	"time"
)

// csvHeader is the trace CSV's header: one row per node.
var csvHeader = []string{"depth", "code", "product", "kind", "grade", "quantity", "unit", "status", "line",
	"recipe_version_id", "started_at", "ended_at", "shift", "operator", "supplier", "supplier_lot",
	"parents", "children", "equipment", "shipments"}

// WriteCSV writes a trace as CSV, one row per lot (the flat list), with its
// parents and children in the trace, its equipment runs and its shipments.
func WriteCSV(w io.Writer, t Trace) error {
	cw := csv.NewWriter(w)
	if err := cw.Write(csvHeader); err != nil {
		return err
	}
	parents, children := map[string][]string{}, map[string][]string{}
	for _, e := range t.Edges {
		parents[e.Child] = append(parents[e.Child], e.Parent)
		children[e.Parent] = append(children[e.Parent], e.Child)
	}
	for _, n := range t.Nodes {
		var eq, ships []string
		for _, r := range n.Runs {
			eq = append(eq, r.Device+"@"+r.StartedAt.Format(time.RFC3339))
		}
		for _, s := range n.Shipments {
			ships = append(ships, s.Code+"→"+s.Customer)
		}
		rv := ""
		if n.RecipeVersionID != nil {
			rv = n.RecipeVersionID.String()
		}
		row := []string{strconv.Itoa(n.Depth), n.Code, n.Product, n.Kind, n.Grade,
			strconv.FormatFloat(n.Quantity, 'f', -1, 64), n.Unit, n.Status, n.Line, rv, timeText(n.StartedAt), timeText(n.EndedAt),
			n.Shift, n.Operator, n.Supplier, n.SupplierLot, strings.Join(parents[n.Code], " "), strings.Join(children[n.Code], " "),
			strings.Join(eq, " "), strings.Join(ships, " ")}
		for i, v := range row {
			row[i] = csvSafe(v)
		}
		if err := cw.Write(row); err != nil {
			return err
		}
	}
	cw.Flush()
	return cw.Error()
}

// csvSafe defuses a cell a spreadsheet would run as a formula.
func csvSafe(v string) string {
	if v != "" && strings.ContainsRune("=+-@\t\r", rune(v[0])) {
		if _, err := strconv.ParseFloat(v, 64); err != nil {
			return "'" + v
		}
	}
	return v
}

func timeText(t *time.Time) string {
	if t == nil {
		return ""
	}
	return t.UTC().Format(time.RFC3339)
}

var reportTmpl = template.Must(template.New("trace").Funcs(template.FuncMap{
	"time": func(t *time.Time) string { return timeText(t) },
	"ts":   func(t time.Time) string { return t.UTC().Format(time.RFC3339) },
	"num":  func(v float64) string { return strconv.FormatFloat(v, 'g', 6, 64) },
	"json": func(v any) string {
		b, err := json.Marshal(v)
		if err != nil {
			return "?"
		}
		return string(b)
	},
}).Parse(`<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<title>Trace {{.Direction}} of lot {{.Root}}</title>
<style>
body{font-family:sans-serif;font-size:11pt;margin:1.5cm}
table{border-collapse:collapse;width:100%;margin:0.5em 0 1.5em}
th,td{border:1px solid #999;padding:3px 6px;text-align:left;vertical-align:top}
th{background:#eee}
.small{font-size:9pt;color:#333}
@media print{a{color:black;text-decoration:none}}
</style></head><body>
<h1>Lot {{.Root}}: {{.Direction}} trace</h1>
<p class="small">Generated {{ts .Generated}}. {{len .Nodes}} lots, {{len .Edges}} links, depth {{.Depth}}{{if .Truncated}} (limited){{end}}.</p>
<h2>Lots</h2>
<table><thead><tr><th>Depth</th><th>Lot</th><th>Product</th><th>Kind</th><th>Grade</th><th>Quantity</th><th>Status</th><th>Line</th><th>Window</th><th>Shift / operator</th><th>Supplier lot</th></tr></thead><tbody>
{{range .Nodes}}<tr><td>{{.Depth}}</td><td>{{.Code}}</td><td>{{.Product}}</td><td>{{.Kind}}</td><td>{{.Grade}}</td><td>{{num .Quantity}} {{.Unit}}</td><td>{{.Status}}</td><td>{{.Line}}</td><td>{{time .StartedAt}} – {{time .EndedAt}}</td><td>{{.Shift}} {{.Operator}}</td><td>{{.Supplier}} {{.SupplierLot}}</td></tr>
{{end}}</tbody></table>
<h2>Links</h2>
<table><thead><tr><th>From</th><th>To</th><th>Kind</th><th>Quantity</th></tr></thead><tbody>
{{range .Edges}}<tr><td>{{.Parent}}</td><td>{{.Child}}</td><td>{{.Kind}}</td><td>{{num .Quantity}}</td></tr>
{{end}}</tbody></table>
<h2>Equipment runs and telemetry</h2>
<table><thead><tr><th>Lot</th><th>Equipment</th><th>Window</th><th>Telemetry (min / avg / max)</th></tr></thead><tbody>
{{range $n := .Nodes}}{{range .Runs}}<tr><td>{{$n.Code}}</td><td>{{.Device}} ({{.Model}})</td><td>{{ts .StartedAt}} – {{time .EndedAt}}</td><td class="small">{{range .Telemetry}}{{.Metric}}: {{num .Min}} / {{num .Avg}} / {{num .Max}} {{.Unit}}<br>{{end}}</td></tr>
{{end}}{{end}}</tbody></table>
<h2>Inspections, recipe deviations and downgrades</h2>
<table><thead><tr><th>Lot</th><th>Record</th><th>Details</th></tr></thead><tbody>
{{range $n := .Nodes}}{{range $k, $v := .Details}}<tr><td>{{$n.Code}}</td><td>{{$k}}</td><td class="small">{{json $v}}</td></tr>
{{end}}{{end}}</tbody></table>
{{if .Shipments}}<h2>Shipments</h2>
<table><thead><tr><th>Shipment</th><th>Customer</th><th>Shipped</th><th>Lots</th></tr></thead><tbody>
{{range .Shipments}}<tr><td>{{.Code}}</td><td>{{.Customer}} {{.Name}}</td><td>{{ts .ShippedAt}}</td><td>{{range .Lots}}{{.Lot}} ({{num .Quantity}} {{.Unit}}) {{end}}</td></tr>
{{end}}</tbody></table>{{end}}
</body></html>
`))

// WriteHTML writes a printable report of a trace; every value is escaped.
func WriteHTML(w io.Writer, t Trace) error {
	return reportTmpl.Execute(w, t)
}
