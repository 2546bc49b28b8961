package api_test

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net/http"
	"reflect"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/labstack/echo/v4"

	"github.com/nxcloud/nxcloud/api"
	"github.com/nxcloud/nxcloud/apps/telemetry"
	"github.com/nxcloud/nxcloud/tenants"
)

// oaDoc is the parsed OpenAPI document.
type oaDoc map[string]any

func loadDoc(t testing.TB) oaDoc {
	t.Helper()
	var doc oaDoc
	dec := json.NewDecoder(bytes.NewReader(api.OpenAPI()))
	dec.UseNumber()
	if err := dec.Decode(&doc); err != nil {
		t.Fatalf("api/openapi.json is not valid JSON: %v", err)
	}
	if dec.More() {
		t.Fatal("api/openapi.json: data after the document")
	}
	return doc
}

func obj(v any) map[string]any { m, _ := v.(map[string]any); return m }

func str(v any) string { s, _ := v.(string); return s }

// pointer resolves a local JSON reference ("#/components/schemas/Device").
func (d oaDoc) pointer(ref string) (any, bool) {
	rest, ok := strings.CutPrefix(ref, "#")
	if !ok {
		return nil, false
	}
	var cur any = map[string]any(d)
	if rest == "" {
		return cur, true
	}
	if !strings.HasPrefix(rest, "/") {
		return nil, false
	}
	for _, tok := range strings.Split(rest[1:], "/") {
		tok = strings.ReplaceAll(strings.ReplaceAll(tok, "~1", "/"), "~0", "~")
		switch c := cur.(type) {
		case map[string]any:
			v, ok := c[tok]
			if !ok {
				return nil, false
			}
			cur = v
		case []any:
			i, err := strconv.Atoi(tok)
			if err != nil || i < 0 || i >= len(c) {
				return nil, false
			}
			cur = c[i]
		default:
			return nil, false
		}
	}
	return cur, true
}

// deref follows $ref (chains included) to the object it names.
func (d oaDoc) deref(v any) map[string]any {
	m := obj(v)
	for i := 0; m != nil && i < 16; i++ {
		ref, ok := m["$ref"].(string)
		if !ok {
			return m
		}
		target, found := d.pointer(ref)
		if !found {
			return nil
		}
		m = obj(target)
	}
	return m
}

var httpMethods = []string{"get", "put", "post", "delete", "options", "head", "patch", "trace"}

// operations returns "METHOD /path" → operation.
func (d oaDoc) operations() map[string]map[string]any {
	out := map[string]map[string]any{}
	for path, item := range obj(d["paths"]) {
		for _, m := range httpMethods {
			if op := obj(obj(item)[m]); op != nil {
				out[strings.ToUpper(m)+" "+path] = op
			}
		}
	}
	return out
}

// documentedRoute reports whether an echo route belongs in the document.
func documentedRoute(r *echo.Route) bool {
	if r.Method == echo.RouteNotFound {
		return false
	}
	switch r.Path {
	case "/healthz", "/readyz", "/metrics":
		return true
	}
	return strings.HasPrefix(r.Path, "/api/v1/")
}

var echoParam = regexp.MustCompile(`:([A-Za-z0-9_]+)`)

// openapiPath turns "/devices/:device" into "/devices/{device}".
func openapiPath(p string) string { return echoParam.ReplaceAllString(p, "{$1}") }

func TestOpenAPIDocument(t *testing.T) {
	doc := loadDoc(t)
	if v := str(doc["openapi"]); !strings.HasPrefix(v, "3.0.") {
		t.Errorf(`openapi = %q, want "3.0.x"`, v)
	}
	info := obj(doc["info"])
	for _, k := range []string{"title", "version", "description"} {
		if str(info[k]) == "" {
			t.Errorf("info.%s is missing", k)
		}
	}
	desc := strings.ToLower(str(info["description"]))
	for _, topic := range []string{"authorization", "cursor", "problem+json", "rfc 3339", "epoch milliseconds"} {
		if !strings.Contains(desc, topic) {
			t.Errorf("info.description does not explain %q", topic)
		}
	}

	// Every $ref resolves within the document.
	var refs int
	var walk func(path string, v any)
	walk = func(path string, v any) {
		switch x := v.(type) {
		case map[string]any:
			if ref, ok := x["$ref"]; ok {
				refs++
				s, isStr := ref.(string)
				if !isStr {
					t.Errorf("%s: $ref is not a string", path)
				} else if target, found := doc.pointer(s); !found || obj(target) == nil {
					t.Errorf("%s: $ref %q does not resolve within the document", path, s)
				}
			}
			for k, e := range x {
				walk(path+"/"+k, e)
			}
		case []any:
			for i, e := range x {
				walk(path+"/"+strconv.Itoa(i), e)
			}
		}
	}
	walk("#", map[string]any(doc))
	if refs == 0 {
		t.Error("the document has no $ref at all")
	}

	schemes := obj(obj(doc["components"])["securitySchemes"])
	for name, format := range map[string]bool{"apiKey": true, "operatorToken": false} {
		s := obj(schemes[name])
		if str(s["type"]) != "http" || str(s["scheme"]) != "bearer" {
			t.Errorf("security scheme %s = %v, want HTTP bearer", name, s)
		}
		if format && !strings.Contains(str(s["bearerFormat"])+str(s["description"]), "nxk_") {
			t.Errorf("security scheme %s does not mention the nxk_ key format", name)
		}
	}
	problem := obj(obj(obj(doc["components"])["schemas"])["Problem"])
	var codes []string
	enum, _ := obj(obj(problem["properties"])["code"])["enum"].([]any)
	for _, c := range enum {
		codes = append(codes, str(c))
	}
	sort.Strings(codes)
	want := []string{"conflict", "forbidden", "internal", "invalid", "method_not_allowed", "not_found", "quota_exceeded", "unauthorized", "unavailable"}
	if !slices.Equal(codes, want) {
		t.Errorf("Problem.code enum = %v, want %v", codes, want)
	}

	opIDs := map[string]string{}
	for key, op := range doc.operations() {
		method, path, _ := strings.Cut(key, " ")
		for _, k := range []string{"operationId", "summary", "description"} {
			if str(op[k]) == "" {
				t.Errorf("%s: %s is missing", key, k)
			}
		}
		if id := str(op["operationId"]); id != "" {
			if prev, dup := opIDs[id]; dup {
				t.Errorf("operationId %s used by %s and %s", id, prev, key)
			}
			opIDs[id] = key
		}
		// Security: operator routes take the operator token, the other /api/v1
		// routes an API key (or a session, same scheme); signing in and the
		// system routes none; signing out the session it ends.
		sec, hasSec := op["security"].([]any)
		var schemesUsed []string
		for _, s := range sec {
			for name := range obj(s) {
				schemesUsed = append(schemesUsed, name)
			}
		}
		switch {
		case !hasSec:
			t.Errorf("%s: no security requirement declared (use [] for none)", key)
		case strings.HasPrefix(path, "/api/v1/auth/"):
			if len(schemesUsed) != 0 && !(path == "/api/v1/auth/logout" && slices.Equal(schemesUsed, []string{"apiKey"})) {
				t.Errorf("%s: security %v, want none (apiKey for logout)", key, schemesUsed)
			}
		case strings.HasPrefix(path, "/api/v1/operator/"):
			if !slices.Equal(schemesUsed, []string{"operatorToken"}) {
				t.Errorf("%s: security %v, want operatorToken", key, schemesUsed)
			}
		case strings.HasPrefix(path, "/api/v1/") && path != "/api/v1/openapi.json":
			if !slices.Equal(schemesUsed, []string{"apiKey"}) {
				t.Errorf("%s: security %v, want apiKey", key, schemesUsed)
			}
		default:
			if len(schemesUsed) != 0 {
				t.Errorf("%s: security %v, want none", key, schemesUsed)
			}
		}
		responses := obj(op["responses"])
		if len(responses) == 0 {
			t.Errorf("%s: no responses", key)
		}
		if len(schemesUsed) > 0 && responses["401"] == nil {
			t.Errorf("%s: authenticated route without a 401 response", key)
		}
		if slices.Contains(schemesUsed, "operatorToken") && responses["403"] == nil {
			t.Errorf("%s: operator route without a 403 response", key)
		}
		for status, r := range responses {
			resp := doc.deref(r)
			if str(resp["description"]) == "" {
				t.Errorf("%s %s: response without description", key, status)
			}
			if status == "default" || status[0] == '4' || status[0] == '5' {
				if status == "503" && path == "/readyz" {
					continue
				}
				mt := obj(obj(resp["content"])["application/problem+json"])
				if mt == nil || str(obj(mt["schema"])["$ref"]) != "#/components/schemas/Problem" {
					t.Errorf("%s %s: error response is not application/problem+json with the Problem schema", key, status)
				}
			}
		}
		// Path parameters: exactly the template's, required, in: path.
		var declared []string
		params, _ := op["parameters"].([]any)
		for _, p := range params {
			param := doc.deref(p)
			if param == nil {
				t.Errorf("%s: unresolvable parameter %v", key, p)
				continue
			}
			if param["schema"] == nil {
				t.Errorf("%s: parameter %s has no schema", key, str(param["name"]))
			}
			if str(param["in"]) == "path" {
				declared = append(declared, str(param["name"]))
				if param["required"] != true {
					t.Errorf("%s: path parameter %s is not required", key, str(param["name"]))
				}
			}
		}
		var inTemplate []string
		for _, m := range regexp.MustCompile(`\{([^}]+)\}`).FindAllStringSubmatch(path, -1) {
			inTemplate = append(inTemplate, m[1])
		}
		sort.Strings(declared)
		sort.Strings(inTemplate)
		if !slices.Equal(declared, inTemplate) && !(len(declared) == 0 && len(inTemplate) == 0) {
			t.Errorf("%s: path parameters declared %v, template has %v", key, declared, inTemplate)
		}
		// Request bodies are strict.
		if rb := doc.deref(op["requestBody"]); rb != nil {
			schema := doc.deref(obj(obj(rb["content"])["application/json"])["schema"])
			if str(schema["type"]) == "array" {
				schema = doc.deref(schema["items"]) // a list of objects (bulk import): the elements are strict
			}
			if schema == nil {
				t.Errorf("%s: request body without an application/json schema", key)
			} else {
				if schema["additionalProperties"] != false {
					t.Errorf("%s: request body schema does not set additionalProperties: false", key)
				}
				if req, _ := schema["required"].([]any); len(req) == 0 {
					t.Errorf("%s: request body schema has no required fields", key)
				}
			}
		} else if method == "POST" && !strings.HasSuffix(path, "/rotate-secret") && path != "/api/v1/auth/logout" {
			t.Errorf("%s: POST without a request body", key)
		}
	}
}

// TestOpenAPIMatchesRoutes checks the document against the real route table
// both ways: every route is documented, every documented operation is served.
func TestOpenAPIMatchesRoutes(t *testing.T) {
	t.Parallel()
	s := newServer(t, nil, "operator-token")
	doc := loadDoc(t)
	served := map[string]bool{}
	for _, r := range s.srv.Routes() {
		if documentedRoute(r) {
			served[r.Method+" "+openapiPath(r.Path)] = true
		}
	}
	for _, must := range []string{"GET /healthz", "GET /readyz", "GET /metrics", "GET /api/v1/openapi.json"} {
		if !served[must] {
			t.Errorf("the server does not serve %s", must)
		}
	}
	documented := doc.operations()
	for key := range served {
		if documented[key] == nil {
			t.Errorf("route %s is not in api/openapi.json", key)
		}
	}
	for key := range documented {
		if !served[key] {
			t.Errorf("api/openapi.json documents %s, which is not a route (stale entry?)", key)
		}
	}
	if t.Failed() {
		var keys []string
		for k := range served {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		t.Logf("served routes:\n  %s", strings.Join(keys, "\n  "))
	}

	r := s.do(t, "GET", "/api/v1/openapi.json", "", "")
	if r.status != http.StatusOK || !bytes.Equal(r.body, api.OpenAPI()) {
		t.Errorf("GET /api/v1/openapi.json = %d, %d bytes; want 200 and the embedded document", r.status, len(r.body))
	}
	if ct := r.header.Get("Content-Type"); !strings.HasPrefix(ct, "application/json") {
		t.Errorf("GET /api/v1/openapi.json Content-Type = %q", ct)
	}
}

// TestOpenAPISchemasMatchGoTypes checks the component schemas against the Go
// types the handlers encode and decode: the same JSON names and, for
// responses, required exactly when the field is not omitempty.
func TestOpenAPISchemasMatchGoTypes(t *testing.T) {
	doc := loadDoc(t)
	schemas := obj(obj(doc["components"])["schemas"])
	type check struct {
		v        any
		response bool
	}
	for name, c := range map[string]check{
		"Tenant":                {tenants.Tenant{}, true},
		"Sector":                {tenants.Sector{}, true},
		"Line":                  {tenants.Line{}, true},
		"Device":                {tenants.Device{}, true},
		"Metric":                {tenants.Metric{}, true},
		"Model":                 {tenants.Model{}, true},
		"DeviceState":           {telemetry.DeviceState{}, true},
		"Value":                 {telemetry.Value{}, true},
		"Point":                 {telemetry.Point{}, true},
		"RawSeries":             {telemetry.RawSeries{}, true},
		"Bucket":                {telemetry.Bucket{}, true},
		"BucketSeries":          {telemetry.BucketSeries{}, true},
		"Bucketed":              {telemetry.Bucketed{}, true},
		"DeadLetter":            {telemetry.DeadLetter{}, true},
		"DeadLetterPage":        {telemetry.DeadLetterPage{}, true},
		"Problem":               {api.Problem{}, true},
		"EnterpriseInput":       {tenants.EnterpriseInput{}, false},
		"LineInput":             {tenants.LineInput{}, false},
		"DeviceInput":           {tenants.DeviceInput{}, false},
		"Grant":                 {tenants.Grant{}, true},
		"GrantInput":            {tenants.GrantInput{}, false},
		"AuditRecord":           {tenants.AuditRecord{}, true},
		"AuditPage":             {tenants.AuditPage{}, true},
		"DevicePatch":           {tenants.DevicePatch{}, false},
		"DeviceImport":          {tenants.ImportResult{}, true},
		"DeviceImportRow":       {tenants.ImportOutcome{}, true},
		"ImportRowError":        {tenants.RowError{}, true},
		"APIKey":                {tenants.APIKey{}, true},
		"APIKeyInput":           {tenants.APIKeyInput{}, false},
		"APIKeyCreated":         {tenants.APIKeyCreated{}, true},
		"DeviceCredentials":     {tenants.DeviceCredentials{}, true},
		"EnterpriseStatusInput": {tenants.TenantStatusInput{}, false},
	} {
		schema := obj(schemas[name])
		if schema == nil {
			t.Errorf("components.schemas.%s is missing", name)
			continue
		}
		props, required := doc.flatten(schema)
		fields := map[string]bool{} // JSON name → omitempty
		jsonFieldsOf(reflect.TypeOf(c.v), fields)
		for f, omit := range fields {
			if _, ok := props[f]; !ok {
				t.Errorf("schema %s lacks property %q (json tag of %T)", name, f, c.v)
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

func jsonFieldsOf(t reflect.Type, out map[string]bool) {
	for i := 0; i < t.NumField(); i++ {
		f := t.Field(i)
		tag := f.Tag.Get("json")
		if f.Anonymous && tag == "" {
			jsonFieldsOf(f.Type, out)
			continue
		}
		if !f.IsExported() || tag == "-" {
			continue
		}
		name, opts, _ := strings.Cut(tag, ",")
		if name == "" {
			name = f.Name
		}
		out[name] = slices.Contains(strings.Split(opts, ","), "omitempty")
	}
}

// flatten returns the properties and required names of an object schema,
// merging allOf members.
func (d oaDoc) flatten(schema map[string]any) (map[string]any, map[string]bool) {
	props := map[string]any{}
	required := map[string]bool{}
	var add func(s map[string]any)
	add = func(s map[string]any) {
		s = d.deref(s)
		for k, v := range obj(s["properties"]) {
			props[k] = v
		}
		req, _ := s["required"].([]any)
		for _, r := range req {
			required[str(r)] = true
		}
		all, _ := s["allOf"].([]any)
		for _, sub := range all {
			add(obj(sub))
		}
	}
	add(schema)
	return props, required
}

// operation finds the documented operation of a request path ("/a/b?x" is
// matched against "/a/{p}"); nil when none.
func (d oaDoc) operation(method, target string) (string, map[string]any) {
	path, _, _ := strings.Cut(target, "?")
	segs := strings.Split(path, "/")
	for tmpl, item := range obj(d["paths"]) {
		ts := strings.Split(tmpl, "/")
		if len(ts) != len(segs) {
			continue
		}
		match := true
		for i := range ts {
			if strings.HasPrefix(ts[i], "{") {
				match = match && segs[i] != ""
			} else {
				match = match && ts[i] == segs[i]
			}
		}
		if match {
			if op := obj(obj(item)[strings.ToLower(method)]); op != nil {
				return tmpl, op
			}
		}
	}
	return "", nil
}

// conforms checks a response against the document: its status is
// documented for the operation, its media type is, and its body matches the
// schema (undocumented properties included).
func (d oaDoc) conforms(method, target string, status int, contentType string, body []byte) error {
	tmpl, op := d.operation(method, target)
	if op == nil {
		return nil // not a documented operation (404/401/405 paths): checked elsewhere
	}
	responses := obj(op["responses"])
	r := responses[strconv.Itoa(status)]
	if r == nil {
		r = responses["default"]
	}
	if r == nil {
		return fmt.Errorf("%s %s: status %d is not documented", method, tmpl, status)
	}
	resp := d.deref(r)
	mt, _, _ := strings.Cut(contentType, ";")
	mt = strings.TrimSpace(mt)
	media := obj(obj(resp["content"])[mt])
	if media == nil {
		return fmt.Errorf("%s %s: status %d with media type %q is not documented", method, tmpl, status, mt)
	}
	if !strings.HasSuffix(mt, "json") {
		return nil
	}
	var v any
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.UseNumber()
	if err := dec.Decode(&v); err != nil {
		return fmt.Errorf("%s %s: %d body is not JSON: %v", method, tmpl, status, err)
	}
	if err := d.validate(obj(media["schema"]), v, "$"); err != nil {
		return fmt.Errorf("%s %s: %d body does not match its schema: %v", method, tmpl, status, err)
	}
	return nil
}

// validate checks v against the subset of JSON Schema the document uses.
// Objects are checked strictly: a property the schema does not declare is an
// error unless additionalProperties allows it.
func (d oaDoc) validate(schema map[string]any, v any, at string) error {
	schema = d.deref(schema)
	if schema == nil {
		return fmt.Errorf("%s: unresolvable schema", at)
	}
	if alts, ok := schema["anyOf"].([]any); ok {
		var errs []string
		for _, s := range alts {
			err := d.validate(obj(s), v, at)
			if err == nil {
				return nil
			}
			errs = append(errs, err.Error())
		}
		return fmt.Errorf("%s: matches none of anyOf: %s", at, strings.Join(errs, "; "))
	}
	if enum, ok := schema["enum"].([]any); ok {
		if !slices.ContainsFunc(enum, func(e any) bool { return fmt.Sprint(e) == fmt.Sprint(v) }) {
			return fmt.Errorf("%s: %v is not one of %v", at, v, enum)
		}
	}
	typ := str(schema["type"])
	if typ == "" && schema["allOf"] != nil {
		typ = "object"
	}
	switch typ {
	case "object":
		m, ok := v.(map[string]any)
		if !ok {
			return fmt.Errorf("%s: want an object, got %T", at, v)
		}
		props, required := d.flatten(schema)
		for r := range required {
			if _, ok := m[r]; !ok {
				return fmt.Errorf("%s: required property %q missing", at, r)
			}
		}
		for k, e := range m {
			ps, ok := props[k]
			if !ok {
				switch ap := schema["additionalProperties"].(type) {
				case map[string]any:
					ps = ap
				case bool:
					if !ap {
						return fmt.Errorf("%s: property %q not allowed", at, k)
					}
					continue
				default:
					if len(props) == 0 {
						continue // free-form object
					}
					return fmt.Errorf("%s: property %q is not documented", at, k)
				}
			}
			if err := d.validate(obj(ps), e, at+"."+k); err != nil {
				return err
			}
		}
	case "array":
		a, ok := v.([]any)
		if !ok {
			return fmt.Errorf("%s: want an array, got %T", at, v)
		}
		for i, e := range a {
			if err := d.validate(obj(schema["items"]), e, at+"["+strconv.Itoa(i)+"]"); err != nil {
				return err
			}
		}
	case "string":
		s, ok := v.(string)
		if !ok {
			return fmt.Errorf("%s: want a string, got %T", at, v)
		}
		switch str(schema["format"]) {
		case "date-time":
			if _, err := time.Parse(time.RFC3339Nano, s); err != nil {
				return fmt.Errorf("%s: %q is not a date-time", at, s)
			}
		case "uuid":
			if _, err := uuid.Parse(s); err != nil || len(s) != 36 {
				return fmt.Errorf("%s: %q is not a UUID", at, s)
			}
		}
		if p := str(schema["pattern"]); p != "" && !regexp.MustCompile(p).MatchString(s) {
			return fmt.Errorf("%s: %q does not match %s", at, s, p)
		}
	case "integer", "number":
		n, ok := v.(json.Number)
		if !ok {
			return fmt.Errorf("%s: want a number, got %T", at, v)
		}
		if typ == "integer" {
			if _, err := n.Int64(); err != nil {
				return fmt.Errorf("%s: %s is not an integer", at, n)
			}
		}
	case "boolean":
		if _, ok := v.(bool); !ok {
			return fmt.Errorf("%s: want a boolean, got %T", at, v)
		}
	}
	if typ != "object" {
		all, _ := schema["allOf"].([]any)
		for _, sub := range all {
			if err := d.validate(obj(sub), v, at); err != nil {
				return err
			}
		}
	}
	return nil
}
