package api_test

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/nxcloud/nxcloud/apps"
	"github.com/nxcloud/nxcloud/apps/telemetry"
	"github.com/nxcloud/nxcloud/tenants"
)

// send is do with a Content-Type of the caller's choice.
func (s *testServer) send(t testing.TB, method, target, auth, contentType, body string) *response {
	t.Helper()
	req := httptest.NewRequest(method, target, strings.NewReader(body))
	if contentType != "" {
		req.Header.Set("Content-Type", contentType)
	}
	if auth != "" {
		req.Header.Set("Authorization", auth)
	}
	rec := httptest.NewRecorder()
	s.srv.Handler().ServeHTTP(rec, req)
	r := &response{status: rec.Code, header: rec.Header(), body: rec.Body.Bytes()}
	if r.status >= 500 {
		t.Errorf("%s %s: %v: a server error is never the answer to a client's input", method, target, r)
	}
	s.check(t, method, target, r)
	return r
}

const csvType = "text/csv"

// An enterprise administers its own devices and lines with its API key.
func TestTenantDeviceAdmin(t *testing.T) {
	t.Parallel()
	s := newServer(t, nil, "")
	a := s.env.NewTenant(t)
	key := bearer(a.APIKey)
	ctx := context.Background()

	line := decode[tenants.Line](t, "create line", s.do(t, "POST", "/api/v1/lines", key, `{"key":"line-1","name":"Line 1"}`), 201)
	if line.Key != "line-1" || line.Name != "Line 1" || line.ID == uuid.Nil {
		t.Errorf("line = %+v", line)
	}
	wantProblem(t, "duplicate line", s.do(t, "POST", "/api/v1/lines", key, `{"key":"line-1"}`), 409, apps.Conflict, "")
	wantProblem(t, "bad line key", s.do(t, "POST", "/api/v1/lines", key, `{"key":"line 1"}`), 400, apps.Invalid, "key")

	dev := decode[deviceCreated](t, "register", s.do(t, "POST", "/api/v1/devices", key,
		`{"key":"press-01","name":"Press 1","model":"orientation-press","line":"line-1"}`), 201)
	d := dev.Device
	if d.Key != "press-01" || d.TenantID != a.ID || d.LineKey != "line-1" || dev.Username != "press-01@"+a.Slug || len(dev.Secret) < 24 {
		t.Errorf("registered = %+v", dev)
	}
	if _, err := s.env.Tenants.Authenticate(ctx, dev.Username, []byte(dev.Secret)); err != nil {
		t.Errorf("the returned credentials do not log in: %v", err)
	}
	wantProblem(t, "duplicate device", s.do(t, "POST", "/api/v1/devices", key, `{"key":"press-01","model":"jet-mill"}`), 409, apps.Conflict, "")
	for _, c := range []struct{ name, body, field string }{
		{"unknown model", `{"key":"x-01","model":"nope"}`, "model"},
		{"missing model", `{"key":"x-01"}`, "model"},
		{"unknown line", `{"key":"x-01","model":"jet-mill","line":"nope"}`, "line"},
		{"bad key", `{"key":"x@01","model":"jet-mill"}`, "key"},
		{"short secret", `{"key":"x-01","model":"jet-mill","secret":"short"}`, "secret"},
		{"unknown field", `{"key":"x-01","model":"jet-mill","tenant_id":"` + a.ID.String() + `"}`, "tenant_id"},
		{"wrong-case field", `{"Key":"x-01","model":"jet-mill"}`, "Key"},
	} {
		wantProblem(t, "register, "+c.name, s.do(t, "POST", "/api/v1/devices", key, c.body), 400, apps.Invalid, c.field)
	}

	// Disable and rename, enable, by key and by id.
	got := decode[tenants.Device](t, "disable", s.do(t, "PATCH", "/api/v1/devices/press-01", key, `{"status":"disabled","name":"Press one"}`), 200)
	if got.ID != d.ID || got.Status != "disabled" || got.Name != "Press one" {
		t.Errorf("disabled = %+v", got)
	}
	if _, err := s.env.Tenants.Authenticate(ctx, dev.Username, []byte(dev.Secret)); apps.Code(err) != apps.Forbidden {
		t.Errorf("a disabled device logs in: %v", err)
	}
	got = decode[tenants.Device](t, "enable", s.do(t, "PATCH", "/api/v1/devices/"+d.ID.String(), key, `{"status":"active"}`), 200)
	if got.Status != "active" || got.Name != "Press one" {
		t.Errorf("enabled = %+v", got)
	}
	for _, c := range []struct{ name, body, field string }{
		{"unknown status", `{"status":"paused"}`, "status"},
		{"no status", `{"name":"x"}`, "status"},
		{"empty name", `{"status":"active","name":""}`, "name"},
		{"name not a string", `{"status":"active","name":1}`, "name"},
		{"unknown field", `{"status":"active","line":"line-1"}`, "line"},
	} {
		wantProblem(t, "patch, "+c.name, s.do(t, "PATCH", "/api/v1/devices/press-01", key, c.body), 400, apps.Invalid, c.field)
	}
	wantProblem(t, "patch unknown device", s.do(t, "PATCH", "/api/v1/devices/nope", key, `{"status":"active"}`), 404, apps.NotFound, "")

	// Rotate: the new secret logs in, the old one no longer.
	rot := decode[deviceCreated](t, "rotate", s.do(t, "POST", "/api/v1/devices/press-01/rotate-secret", key, ""), 200)
	if rot.Device.ID != d.ID || rot.Username != dev.Username || rot.Secret == dev.Secret || len(rot.Secret) < 24 {
		t.Errorf("rotated = %+v", rot)
	}
	if _, err := s.env.Tenants.Authenticate(ctx, dev.Username, []byte(rot.Secret)); err != nil {
		t.Errorf("the new secret does not log in: %v", err)
	}
	if _, err := s.env.Tenants.Authenticate(ctx, dev.Username, []byte(dev.Secret)); apps.Code(err) != apps.Unauthorized {
		t.Errorf("the old secret still logs in: %v", err)
	}
	wantProblem(t, "rotate unknown device", s.do(t, "POST", "/api/v1/devices/"+uuid.NewString()+"/rotate-secret", key, ""), 404, apps.NotFound, "")
}

type importResult struct {
	DryRun  bool `json:"dry_run"`
	Created int  `json:"created"`
	Failed  int  `json:"failed"`
	Rows    []struct {
		Row      int               `json:"row"`
		Key      string            `json:"key"`
		Status   string            `json:"status"`
		Error    *tenants.RowError `json:"error"`
		Device   *tenants.Device   `json:"device"`
		Username string            `json:"mqtt_username"`
		Secret   string            `json:"secret"`
	} `json:"rows"`
}

func TestDeviceImportAPI(t *testing.T) {
	t.Parallel()
	const token = "operator-token-import"
	s := newServer(t, nil, token)
	a := s.env.NewTenant(t)
	key, op := bearer(a.APIKey), bearer(token)
	ctx := context.Background()
	s.env.Device(t, a, "taken-01", "jet-mill")
	count := func() int {
		return len(decode[struct{ Items []telemetry.DeviceState }](t, "devices", s.do(t, "GET", "/api/v1/devices", key, ""), 200).Items)
	}

	csv := "key,name,model,line\nmill-01,Mill 1,jet-mill,\nmill-01,again,jet-mill,\nbad key,,jet-mill,\ntaken-01,,jet-mill,\nmill-02,,nope,\nmill-03,,jet-mill,\n"
	dry := decode[importResult](t, "dry run", s.send(t, "POST", "/api/v1/devices/import?dry_run=true", key, csvType, csv), 200)
	if !dry.DryRun || dry.Created != 0 || dry.Failed != 5 || len(dry.Rows) != 6 || dry.Rows[5].Status != "valid" || dry.Rows[5].Secret != "" {
		t.Errorf("dry run = %+v", dry)
	}
	if n := count(); n != 1 {
		t.Errorf("after a dry run the tenant has %d devices, want 1", n)
	}
	res := decode[importResult](t, "import CSV", s.send(t, "POST", "/api/v1/devices/import", key, "text/csv; charset=utf-8", csv), 200)
	if res.DryRun || res.Created != 1 || res.Failed != 5 {
		t.Fatalf("import = %+v", res)
	}
	for i, want := range []struct {
		row           int
		status, code  string
		field, errKey string
	}{
		{2, "failed", apps.Conflict, "key", "mill-01"}, {3, "failed", apps.Conflict, "key", "mill-01"},
		{4, "failed", apps.Invalid, "key", "bad key"}, {5, "failed", apps.Conflict, "key", "taken-01"},
		{6, "failed", apps.Invalid, "model", "mill-02"}, {7, "created", "", "", "mill-03"},
	} {
		r := res.Rows[i]
		if r.Row != want.row || r.Status != want.status || r.Key != want.errKey || (want.code != "" && (r.Error == nil || r.Error.Code != want.code || r.Error.Field != want.field)) {
			t.Errorf("rows[%d] = %+v, want %+v", i, r, want)
		}
	}
	created := res.Rows[5]
	if _, err := s.env.Tenants.Authenticate(ctx, created.Username, []byte(created.Secret)); err != nil || created.Username != "mill-03@"+a.Slug {
		t.Errorf("imported %s cannot log in: %v", created.Username, err)
	}
	if n := count(); n != 2 {
		t.Errorf("after the import the tenant has %d devices, want 2", n)
	}

	// JSON, through the operator API, by slug and by id.
	js := `[{"key":"mill-10","model":"jet-mill","secret":"a-long-enough-secret"},{"key":"mill-11","Model":"jet-mill"}]`
	res = decode[importResult](t, "import JSON", s.send(t, "POST", "/api/v1/operator/enterprises/"+a.Slug+"/devices/import", op, "application/json", js), 200)
	if res.Created != 1 || res.Failed != 1 || res.Rows[0].Secret != "a-long-enough-secret" || res.Rows[1].Error == nil || res.Rows[1].Error.Field != "Model" {
		t.Errorf("operator JSON import = %+v", res)
	}
	res = decode[importResult](t, "import by id", s.send(t, "POST", "/api/v1/operator/enterprises/"+a.ID.String()+"/devices/import?dry_run=1", op, "application/json", `[{"key":"mill-12","model":"jet-mill"}]`), 200)
	if res.Rows[0].Status != "valid" {
		t.Errorf("operator dry run = %+v", res)
	}
	wantProblem(t, "import into unknown enterprise", s.send(t, "POST", "/api/v1/operator/enterprises/no-such-"+a.Slug+"/devices/import", op, csvType, csv), 404, apps.NotFound, "")
	wantProblem(t, "operator import with a tenant key", s.send(t, "POST", "/api/v1/operator/enterprises/"+a.Slug+"/devices/import", key, csvType, csv), 401, apps.Unauthorized, "")

	// Whole-request errors.
	// One byte over the limit (the rows themselves would be fine).
	big := "key,name,model,line\n" + strings.Repeat("m,,jet-mill,\n", 100)
	big += strings.Repeat(",", tenants.MaxImportBytes+1-len(big))
	for _, c := range []struct {
		name, target, ctype, body string
		status                    int
		field                     string
	}{
		{"no Content-Type", "", "", csv, 400, ""},
		{"text/plain", "", "text/plain", csv, 400, ""},
		{"Latin-1 CSV", "", "text/csv; charset=iso-8859-1", csv, 400, ""},
		{"non-UTF-8 CSV", "", csvType, "key,name,model,line\nmill-20,M\xfchle,jet-mill,\n", 400, ""},
		{"non-UTF-8 JSON", "", "application/json", "[{\"key\":\"mill-20\",\"name\":\"M\xfchle\",\"model\":\"jet-mill\"}]", 400, ""},
		{"wrong header", "", csvType, "Key,Name,Model,Line\nmill-20,,jet-mill,\n", 400, ""},
		{"no header", "", csvType, "mill-20,,jet-mill,\n", 400, ""},
		{"empty CSV", "", csvType, "", 400, ""},
		{"header only", "", csvType, "key,name,model,line\n", 400, ""},
		{"JSON object", "", "application/json", `{"key":"mill-20","model":"jet-mill"}`, 400, ""},
		{"empty JSON array", "", "application/json", `[]`, 400, ""},
		{"bad dry_run", "?dry_run=maybe", csvType, csv, 400, "dry_run"},
		{"over 10000 rows", "", csvType, "key,name,model,line\n" + strings.Repeat("m,,jet-mill,\n", tenants.MaxImportRows+1), 400, ""},
		{"over 2 MiB", "", csvType, big, 413, ""},
	} {
		r := s.send(t, "POST", "/api/v1/devices/import"+c.target, key, c.ctype, c.body)
		wantProblem(t, "import, "+c.name, r, c.status, apps.Invalid, c.field)
	}
	// A file just under 2 MiB (and over 2 MB) is accepted.
	var near strings.Builder
	near.WriteString("key,name,model,line\n")
	for i := 0; near.Len() < tenants.MaxImportBytes-300; i++ {
		fmt.Fprintf(&near, "near-%05d,%s,jet-mill,\n", i, strings.Repeat("n", 190))
	}
	res = decode[importResult](t, "import near 2 MiB", s.send(t, "POST", "/api/v1/devices/import?dry_run=true", key, csvType, near.String()), 200)
	if near.Len() <= 2_000_000 || res.Failed != 0 || len(res.Rows) < 9000 {
		t.Errorf("a %d-byte file: %d rows, %d failed", near.Len(), len(res.Rows), res.Failed)
	}
	if n := count(); n != 3 {
		t.Errorf("after refused imports the tenant has %d devices, want 3", n)
	}
}

// Tenant isolation of the device write routes, generated from the route
// table: every non-GET tenant route with a :device parameter answers tenant B
// 404 for tenant A's device (by id or key) and changes nothing of A's; B's
// imports create B's devices only.
func TestDeviceWriteIsolation(t *testing.T) {
	t.Parallel()
	s := newServer(t, nil, "")
	env := s.env
	ctx := context.Background()
	a, b := env.NewTenant(t), env.NewTenant(t)
	suffix := strings.ReplaceAll(uuid.NewString(), "-", "")[:10]
	devA, secretA := env.Device(t, a, "iso-a-"+suffix, "jet-mill")
	usernameA := devA.Key + "@" + a.Slug
	// A valid request body for each write route, so B's 404 is not a 400.
	bodies := map[string]string{
		"PATCH /api/v1/devices/:device":              `{"status":"disabled","name":"taken over"}`,
		"POST /api/v1/devices/:device/rotate-secret": "",
	}
	var checked int
	for _, r := range s.routes() {
		if r.Method == http.MethodGet || r.Method == http.MethodHead || !isTenantRoute(r) || !strings.Contains(r.Path, ":device") {
			continue
		}
		body, ok := bodies[r.Method+" "+r.Path]
		if !ok {
			t.Errorf("%s %s: teach TestDeviceWriteIsolation a valid body for it", r.Method, r.Path)
			continue
		}
		for _, ref := range []string{devA.ID.String(), devA.Key, strings.ToUpper(devA.ID.String())} {
			target := fill(r.Path, func(p string) string { return ref })
			checked++
			rb := s.do(t, r.Method, target, bearer(b.APIKey), body)
			wantProblem(t, r.Method+" "+target+" as B", rb, http.StatusNotFound, apps.NotFound, "")
			if strings.Contains(string(rb.body), a.ID.String()) || strings.Contains(string(rb.body), a.Slug) {
				t.Errorf("%s %s as B shows A's tenant: %s", r.Method, target, rb.body)
			}
		}
	}
	if checked < 6 {
		t.Errorf("only %d device write routes checked", checked)
	}
	// B imports a device with A's key: B gets its own, A's is untouched.
	res := decode[importResult](t, "B's import", s.send(t, "POST", "/api/v1/devices/import", bearer(b.APIKey), csvType,
		"key,name,model,line\n"+devA.Key+",B's,jet-mill,\n"), 200)
	if res.Created != 1 || res.Rows[0].Device.TenantID != b.ID || res.Rows[0].Username != devA.Key+"@"+b.Slug {
		t.Errorf("B's import = %+v", res)
	}
	if got, err := env.Tenants.Device(a.Ctx(), devA.Key); err != nil || got != devA {
		t.Errorf("A's device after B's requests = %+v, %v; want %+v", got, err, devA)
	}
	if _, err := env.Tenants.Authenticate(ctx, usernameA, []byte(secretA)); err != nil {
		t.Errorf("A's device no longer logs in with its secret: %v", err)
	}
}

// The largest import through HTTP, timed (logged, no threshold).
func TestDeviceImportTenThousandAPI(t *testing.T) {
	if testing.Short() {
		t.Skip("short")
	}
	t.Parallel()
	s := newServer(t, nil, "")
	a := s.env.NewTenant(t)
	var b strings.Builder
	b.WriteString("key,name,model,line\n")
	for i := range tenants.MaxImportRows {
		fmt.Fprintf(&b, "dev-%05d,Device %d,jet-mill,\n", i, i)
	}
	start := time.Now()
	req := httptest.NewRequest("POST", "/api/v1/devices/import", strings.NewReader(b.String()))
	req.Header.Set("Content-Type", csvType)
	req.Header.Set("Authorization", bearer(a.APIKey))
	rec := httptest.NewRecorder()
	s.srv.Handler().ServeHTTP(rec, req)
	took := time.Since(start)
	res := decode[importResult](t, "import", &response{status: rec.Code, header: rec.Header(), body: rec.Body.Bytes()}, 200)
	if res.Created != tenants.MaxImportRows {
		t.Fatalf("created %d of %d", res.Created, tenants.MaxImportRows)
	}
	t.Logf("POST /api/v1/devices/import: %d devices, %d bytes of CSV in, %d bytes of JSON out, %s",
		res.Created, b.Len(), rec.Body.Len(), took.Round(time.Millisecond))
}
