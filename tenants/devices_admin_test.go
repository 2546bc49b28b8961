package tenants_test

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/labstack/echo/v4"

	"github.com/nxcloud/nxcloud/apps"
	"github.com/nxcloud/nxcloud/tenants"
	"github.com/nxcloud/nxcloud/tenants/tenanttest"
)

// wantRow checks one row of an import result.
func wantRow(t *testing.T, res tenants.ImportResult, i, row int, key, status, code, field string) tenants.ImportOutcome {
	t.Helper()
	if i >= len(res.Rows) {
		t.Fatalf("result has %d rows, want row %d", len(res.Rows), i)
	}
	o := res.Rows[i]
	if o.Row != row || o.Key != key || o.Status != status {
		t.Errorf("rows[%d] = row %d key %q %s (%+v), want row %d key %q %s", i, o.Row, o.Key, o.Status, o.Error, row, key, status)
	}
	switch {
	case code == "" && o.Error != nil:
		t.Errorf("rows[%d] (%s) has error %+v", i, key, o.Error)
	case code != "" && (o.Error == nil || o.Error.Code != code || o.Error.Field != field || o.Error.Message == ""):
		t.Errorf("rows[%d] (%s) error = %+v, want %s on %q", i, key, o.Error, code, field)
	}
	if status == tenants.RowCreated && (o.Device == nil || o.Device.Key != key || o.Secret == "" || o.Username == "") {
		t.Errorf("rows[%d] created without device or credentials: %+v", i, o)
	}
	if status != tenants.RowCreated && (o.Device != nil || o.Secret != "") {
		t.Errorf("rows[%d] (%s) not created but shows a device or secret: %+v", i, status, o)
	}
	return o
}

func importCSV(t *testing.T, env *tenanttest.Env, tn uuid.UUID, csv string, dryRun bool) tenants.ImportResult {
	t.Helper()
	rows, err := tenants.ParseDeviceCSV([]byte(csv))
	if err != nil {
		t.Fatalf("parse CSV: %v", err)
	}
	res, err := env.Tenants.ImportDevices(context.Background(), tn, rows, dryRun)
	if err != nil {
		t.Fatalf("import: %v", err)
	}
	return res
}

// sameDevice compares devices by value (LineID is a pointer).
func sameDevice(a, b tenants.Device) bool {
	ja, _ := json.Marshal(a)
	jb, _ := json.Marshal(b)
	return string(ja) == string(jb)
}

func deviceCount(t *testing.T, env *tenanttest.Env, tn uuid.UUID) int {
	t.Helper()
	var n int
	if err := env.DB.System.QueryRow(context.Background(), `SELECT count(*) FROM devices WHERE tenant_id = $1`, tn).Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n
}

func TestImportCSVMixedRows(t *testing.T) {
	t.Parallel()
	env := tenanttest.New(t)
	a := env.NewTenant(t)
	ctx := context.Background()
	if _, err := env.Tenants.CreateLine(ctx, a.ID, tenants.LineInput{Key: "line-1"}); err != nil {
		t.Fatal(err)
	}
	env.Device(t, a, "taken-01", "jet-mill")
	csv := "\ufeffkey,name,model,line,secret\r\n" + // line 1, with a byte-order mark and CRLF
		"mill-01,Jet mill 1,jet-mill,line-1,\r\n" + // 2: created, generated secret
		"press-01,,orientation-press,,a-long-enough-secret\r\n" + // 3: created, chosen secret, name = key
		"bad/key,x,jet-mill,,\r\n" + // 4: invalid key
		"mill-02,x,no-such-model,,\r\n" + // 5: unknown model
		"mill-03,x,jet-mill,no-such-line,\r\n" + // 6: unknown line
		"mill-04,x,jet-mill,,short\r\n" + // 7: secret policy
		"dup-01,x,jet-mill,,\r\n" + // 8: duplicate within the file
		",,,,\r\n" + // 9: blank, skipped
		"dup-01,y,jet-mill,,\r\n" + // 10: duplicate
		"taken-01,x,jet-mill,,\r\n" + // 11: exists already
		"mill-05,x,jet-mill\r\n" + // 12: wrong field count
		"\"mill-06\",\"Mill, \"\"six\"\"\nsecond line\",jet-mill,line-1,\r\n" + // 13-14: quoted, multi-line name
		"mill-07,x,,,\r\n" // 15: no model
	res := importCSV(t, env, a.ID, csv, false)
	if res.Created != 3 || res.Failed != 9 || len(res.Rows) != 12 || res.DryRun {
		t.Fatalf("created %d failed %d rows %d, want 3, 9, 12", res.Created, res.Failed, len(res.Rows))
	}
	mill := wantRow(t, res, 0, 2, "mill-01", tenants.RowCreated, "", "")
	press := wantRow(t, res, 1, 3, "press-01", tenants.RowCreated, "", "")
	wantRow(t, res, 2, 4, "bad/key", tenants.RowFailed, apps.Invalid, "key")
	wantRow(t, res, 3, 5, "mill-02", tenants.RowFailed, apps.Invalid, "model")
	wantRow(t, res, 4, 6, "mill-03", tenants.RowFailed, apps.Invalid, "line")
	wantRow(t, res, 5, 7, "mill-04", tenants.RowFailed, apps.Invalid, "secret")
	d1 := wantRow(t, res, 6, 8, "dup-01", tenants.RowFailed, apps.Conflict, "key")
	wantRow(t, res, 7, 10, "dup-01", tenants.RowFailed, apps.Conflict, "key")
	wantRow(t, res, 8, 11, "taken-01", tenants.RowFailed, apps.Conflict, "key")
	wantRow(t, res, 9, 12, "mill-05", tenants.RowFailed, apps.Invalid, "")
	six := wantRow(t, res, 10, 13, "mill-06", tenants.RowCreated, "", "")
	wantRow(t, res, 11, 15, "mill-07", tenants.RowFailed, apps.Invalid, "model")
	if !strings.Contains(d1.Error.Message, "8, 10") {
		t.Errorf("duplicate message %q does not name rows 8 and 10", d1.Error.Message)
	}
	if mill.Device.LineKey != "line-1" || mill.Device.Name != "Jet mill 1" || mill.Device.Status != "active" || mill.Device.TenantID != a.ID {
		t.Errorf("mill-01 = %+v", mill.Device)
	}
	if press.Secret != "a-long-enough-secret" || press.Device.Name != "press-01" || press.Device.LineID != nil {
		t.Errorf("press-01 = %+v, secret %q", press.Device, press.Secret)
	}
	if six.Device.Name != "Mill, \"six\"\nsecond line" {
		t.Errorf("mill-06 name = %q", six.Device.Name)
	}
	if deviceCount(t, env, a.ID) != 4 {
		t.Errorf("tenant has %d devices, want 4", deviceCount(t, env, a.ID))
	}
	// What the import returns is what the store holds, and the credentials
	// work over MQTT.
	for _, o := range []tenants.ImportOutcome{mill, press, six} {
		got, err := env.Tenants.Device(a.Ctx(), o.Key)
		if err != nil || !sameDevice(got, *o.Device) {
			t.Errorf("stored %s = %+v, %v; import said %+v", o.Key, got, err, *o.Device)
		}
		if o.Username != o.Key+"@"+a.Slug {
			t.Errorf("%s: mqtt_username %q", o.Key, o.Username)
		}
		id, err := env.Tenants.Authenticate(ctx, o.Username, []byte(o.Secret))
		if err != nil || id.DeviceID != o.Device.ID || id.TenantID != a.ID || !id.Active {
			t.Errorf("%s cannot log in with its imported secret: %+v, %v", o.Key, id, err)
		}
		if _, err := env.Tenants.Authenticate(ctx, o.Username, []byte(o.Secret+"x")); apps.Code(err) != apps.Unauthorized {
			t.Errorf("%s logs in with a wrong secret: %v", o.Key, err)
		}
	}
	var stored []byte
	if err := env.DB.System.QueryRow(ctx, `SELECT secret_hash FROM devices WHERE id = $1`, mill.Device.ID).Scan(&stored); err != nil {
		t.Fatal(err)
	}
	if len(stored) != 32 || strings.Contains(string(stored), mill.Secret) {
		t.Errorf("the secret is not stored as a SHA-256 hash")
	}
}

func TestImportJSON(t *testing.T) {
	t.Parallel()
	env := tenanttest.New(t)
	a := env.NewTenant(t)
	body := `[
		{"key":"mill-01","model":"jet-mill"},
		{"key":"mill-02","model":"jet-mill","Name":"wrong case"},
		{"key":"mill-03","model":"jet-mill","plan":"gold"},
		{"key":"mill-04","model":5},
		{"key":"mill-05","model":"jet-mill","model":"jet-mill"},
		"mill-06",
		{"key":"mill-07","model":"jet-mill","name":"\u0000"},
		{"key":"mill-08","name":"Mill 8","model":"jet-mill","secret":"a-long-enough-secret"}
	]`
	rows, err := tenants.ParseDeviceJSON([]byte(body))
	if err != nil {
		t.Fatal(err)
	}
	res, err := env.Tenants.ImportDevices(context.Background(), a.ID, rows, false)
	if err != nil {
		t.Fatal(err)
	}
	if res.Created != 2 || res.Failed != 6 {
		t.Errorf("created %d failed %d, want 2 and 6", res.Created, res.Failed)
	}
	wantRow(t, res, 0, 1, "mill-01", tenants.RowCreated, "", "")
	wantRow(t, res, 1, 2, "mill-02", tenants.RowFailed, apps.Invalid, "Name")
	wantRow(t, res, 2, 3, "mill-03", tenants.RowFailed, apps.Invalid, "plan")
	wantRow(t, res, 3, 4, "mill-04", tenants.RowFailed, apps.Invalid, "model")
	wantRow(t, res, 4, 5, "mill-05", tenants.RowFailed, apps.Invalid, "model")
	wantRow(t, res, 5, 6, "", tenants.RowFailed, apps.Invalid, "")
	wantRow(t, res, 6, 7, "mill-07", tenants.RowFailed, apps.Invalid, "")
	o := wantRow(t, res, 7, 8, "mill-08", tenants.RowCreated, "", "")
	if o.Secret != "a-long-enough-secret" || o.Device.Name != "Mill 8" {
		t.Errorf("mill-08 = %+v", o)
	}
	if _, err := env.Tenants.Authenticate(context.Background(), o.Username, []byte(o.Secret)); err != nil {
		t.Errorf("mill-08 cannot log in: %v", err)
	}
}

func TestImportDryRunWritesNothing(t *testing.T) {
	t.Parallel()
	env := tenanttest.New(t)
	a := env.NewTenant(t)
	env.Device(t, a, "taken-01", "jet-mill")
	res := importCSV(t, env, a.ID, "key,name,model,line\nmill-01,,jet-mill,\ntaken-01,,jet-mill,\nmill-02,,nope,\n", true)
	if !res.DryRun || res.Created != 0 || res.Failed != 2 {
		t.Errorf("dry run = %+v", res)
	}
	o := wantRow(t, res, 0, 2, "mill-01", tenants.RowValid, "", "")
	if o.Username != "mill-01@"+a.Slug {
		t.Errorf("dry run mqtt_username = %q", o.Username)
	}
	wantRow(t, res, 1, 3, "taken-01", tenants.RowFailed, apps.Conflict, "key")
	wantRow(t, res, 2, 4, "mill-02", tenants.RowFailed, apps.Invalid, "model")
	if n := deviceCount(t, env, a.ID); n != 1 {
		t.Errorf("after a dry run the tenant has %d devices, want 1", n)
	}
	// The same file for real creates the valid row.
	res = importCSV(t, env, a.ID, "key,name,model,line\nmill-01,,jet-mill,\n", false)
	wantRow(t, res, 0, 2, "mill-01", tenants.RowCreated, "", "")
}

// A database failure creates none of the rows: the import is one transaction.
func TestImportIsAllOrNothing(t *testing.T) {
	t.Parallel()
	env := tenanttest.New(t)
	a := env.NewTenant(t)
	ctx := context.Background()
	// A trigger that fails the insert of one device of this tenant only.
	name := "test_import_fail_" + strings.ReplaceAll(uuid.NewString(), "-", "")
	for _, q := range []string{
		fmt.Sprintf(`CREATE FUNCTION %s() RETURNS trigger LANGUAGE plpgsql AS $$
			BEGIN
				IF NEW.tenant_id = '%s' AND NEW.key = 'boom' THEN RAISE EXCEPTION 'boom'; END IF;
				RETURN NEW;
			END $$`, name, a.ID),
		fmt.Sprintf(`CREATE TRIGGER %s BEFORE INSERT ON devices FOR EACH ROW EXECUTE FUNCTION %s()`, name, name),
	} {
		if _, err := env.DB.System.Exec(ctx, q); err != nil {
			t.Fatal(err)
		}
	}
	t.Cleanup(func() {
		env.DB.System.Exec(ctx, fmt.Sprintf(`DROP TRIGGER %s ON devices`, name))
		env.DB.System.Exec(ctx, fmt.Sprintf(`DROP FUNCTION %s()`, name))
	})
	rows, err := tenants.ParseDeviceCSV([]byte("key,name,model,line\nmill-01,,jet-mill,\nboom,,jet-mill,\nmill-02,,jet-mill,\n"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := env.Tenants.ImportDevices(ctx, a.ID, rows, false); err == nil || apps.Code(err) != apps.Internal {
		t.Errorf("import with a failing insert = %v, want an internal error", err)
	}
	if n := deviceCount(t, env, a.ID); n != 0 {
		t.Errorf("a failed import left %d devices", n)
	}
}

func TestImportRefusesFiles(t *testing.T) {
	t.Parallel()
	many := func(n int) string {
		var b strings.Builder
		b.WriteString("key,name,model,line\n")
		for i := range n {
			fmt.Fprintf(&b, "d-%d,,jet-mill,\n", i)
		}
		return b.String()
	}
	for name, body := range map[string]string{
		"empty":              "",
		"header only":        "key,name,model,line\n",
		"blank rows only":    "key,name,model,line\n,,,\n",
		"no header":          "mill-01,,jet-mill,\n",
		"wrong-case header":  "Key,name,model,line\nmill-01,,jet-mill,\n",
		"missing column":     "key,name,model\nmill-01,,jet-mill\n",
		"unknown column":     "key,name,model,line,tenant\nmill-01,,jet-mill,,x\n",
		"duplicate column":   "key,name,model,line,key\nmill-01,,jet-mill,,x\n",
		"semicolons":         "key;name;model;line\nmill-01;;jet-mill;\n",
		"spaced header":      "key, name, model, line\nmill-01,,jet-mill,\n",
		"not UTF-8":          "key,name,model,line\nmill-01,M\xfchle,jet-mill,\n",
		"Latin-1 BOM-less":   "key,name,model,line\nmill-01,\xe9,jet-mill,\n",
		"NUL byte":           "key,name,model,line\nmill-01,a\x00b,jet-mill,\n",
		"bare quote":         "key,name,model,line\nmill-01,a\"b,jet-mill,\n",
		"unterminated quote": "key,name,model,line\nmill-01,\"ab,jet-mill,\n",
		"over 10000 rows":    many(tenants.MaxImportRows + 1),
	} {
		rows, err := tenants.ParseDeviceCSV([]byte(body))
		if err == nil && len(rows) == 0 {
			_, err = (&tenants.Service{}).ImportDevices(context.Background(), uuid.New(), rows, true)
		}
		if apps.Code(err) != apps.Invalid {
			t.Errorf("CSV %s: %d rows, %v; want invalid", name, len(rows), err)
		}
	}
	if rows, err := tenants.ParseDeviceCSV([]byte(many(tenants.MaxImportRows))); err != nil || len(rows) != tenants.MaxImportRows {
		t.Errorf("10000 rows: %d, %v", len(rows), err)
	}
	for name, body := range map[string]string{
		"empty":          "",
		"object":         `{"key":"mill-01","model":"jet-mill"}`,
		"null":           `null`,
		"truncated":      `[{"key":"mill-01","model":"jet-mill"}`,
		"trailing data":  `[{"key":"mill-01","model":"jet-mill"}] x`,
		"second array":   `[][]`,
		"malformed":      `[{"key":"mill-01",}]`,
		"not UTF-8":      "[{\"key\":\"mill-01\",\"name\":\"\xff\",\"model\":\"jet-mill\"}]",
		"empty array":    `[]`,
		"over 10000":     "[" + strings.Repeat(`{},`, tenants.MaxImportRows) + "{}]",
		"deeply nested":  "[" + strings.Repeat("[", 20000) + strings.Repeat("]", 20000) + "]",
		"unquoted names": `[{key:"mill-01"}]`,
	} {
		rows, err := tenants.ParseDeviceJSON([]byte(body))
		if err == nil && len(rows) == 0 {
			_, err = (&tenants.Service{}).ImportDevices(context.Background(), uuid.New(), rows, true)
		}
		if apps.Code(err) != apps.Invalid {
			t.Errorf("JSON %s: %d rows, %v; want invalid", name, len(rows), err)
		}
	}
}

// Tenant B can neither import into, nor rotate, disable or rename tenant A's
// device: B's keys are its own namespace, A's devices are not found.
func TestDeviceAdminIsolation(t *testing.T) {
	t.Parallel()
	env := tenanttest.New(t)
	a, b := env.NewTenant(t), env.NewTenant(t)
	ctx := context.Background()
	devA, secretA := env.Device(t, a, "mill-01", "jet-mill")
	res := importCSV(t, env, b.ID, "key,name,model,line\nmill-01,B's mill,jet-mill,\n", false)
	o := wantRow(t, res, 0, 2, "mill-01", tenants.RowCreated, "", "")
	if o.Device.TenantID != b.ID || o.Device.ID == devA.ID || o.Username != "mill-01@"+b.Slug {
		t.Errorf("B's import = %+v", o)
	}
	name := "renamed by B"
	for _, ref := range []string{devA.ID.String(), strings.ToUpper(devA.ID.String())} {
		if _, err := env.Tenants.UpdateDevice(ctx, b.ID, ref, tenants.DevicePatch{Status: "disabled", Name: &name}); apps.Code(err) != apps.NotFound {
			t.Errorf("B updates A's device %s: %v, want not_found", ref, err)
		}
		if _, _, err := env.Tenants.RotateSecret(ctx, b.ID, ref); apps.Code(err) != apps.NotFound {
			t.Errorf("B rotates A's device %s: %v, want not_found", ref, err)
		}
	}
	// B's calls by key reach B's own device of the same key, not A's.
	if d, err := env.Tenants.UpdateDevice(ctx, b.ID, "mill-01", tenants.DevicePatch{Status: "disabled"}); err != nil || d.ID != o.Device.ID {
		t.Errorf("B disables its mill-01: %+v, %v", d, err)
	}
	got, err := env.Tenants.Device(a.Ctx(), devA.Key)
	if err != nil || got != devA {
		t.Errorf("A's device after B's attempts = %+v, %v; want %+v", got, err, devA)
	}
	if _, err := env.Tenants.Authenticate(ctx, "mill-01@"+a.Slug, []byte(secretA)); err != nil {
		t.Errorf("A's device no longer logs in: %v", err)
	}
}

func TestUpdateDevice(t *testing.T) {
	t.Parallel()
	env := tenanttest.New(t)
	a := env.NewTenant(t)
	ctx := context.Background()
	d, secret := env.Device(t, a, "mill-01", "jet-mill")
	name := "Jet mill one"
	got, err := env.Tenants.UpdateDevice(ctx, a.ID, d.Key, tenants.DevicePatch{Status: "disabled", Name: &name})
	if err != nil || got.Name != name || got.Status != "disabled" {
		t.Fatalf("update = %+v, %v", got, err)
	}
	if _, err := env.Tenants.Authenticate(ctx, "mill-01@"+a.Slug, []byte(secret)); apps.Code(err) != apps.Forbidden {
		t.Errorf("a disabled device logs in: %v", err)
	}
	got, err = env.Tenants.UpdateDevice(ctx, a.ID, d.ID.String(), tenants.DevicePatch{Status: "active"})
	if err != nil || got.Name != name || got.Status != "active" {
		t.Errorf("enable keeps the name: %+v, %v", got, err)
	}
	empty, long := "", strings.Repeat("n", 201)
	for _, c := range []struct {
		p     tenants.DevicePatch
		field string
	}{
		{tenants.DevicePatch{Status: "paused"}, "status"},
		{tenants.DevicePatch{}, "status"},
		{tenants.DevicePatch{Status: "active", Name: &empty}, "name"},
		{tenants.DevicePatch{Status: "active", Name: &long}, "name"},
	} {
		if _, err := env.Tenants.UpdateDevice(ctx, a.ID, d.Key, c.p); apps.Code(err) != apps.Invalid || !strings.Contains(err.Error(), c.field) {
			t.Errorf("update %+v: %v, want invalid %s", c.p, err, c.field)
		}
	}
}

// The device administration routes require devices:write: a viewer or an
// operator-role member is refused 403 and nothing changes; an engineer may.
func TestDeviceAdminRoutesRequireDevicesWrite(t *testing.T) {
	t.Parallel()
	env := tenanttest.New(t)
	a := env.NewTenant(t)
	d, _ := env.Device(t, a, "mill-01", "jet-mill")
	serve := func(role, method, target, ctype, body string) *httptest.ResponseRecorder {
		e := echo.New()
		e.HTTPErrorHandler = func(err error, c echo.Context) {
			status := map[string]int{apps.Forbidden: 403, apps.Invalid: 400, apps.NotFound: 404, apps.Conflict: 409}[apps.Code(err)]
			if status == 0 {
				status = 500
				t.Logf("%s %s as %s: %v", method, target, role, err)
			}
			c.JSON(status, map[string]string{"code": apps.Code(err)})
		}
		p := tenants.Principal{Kind: tenants.KindUser, UserID: uuid.New(), OrgID: a.ID, OrgKind: tenants.OrgEnterprise, Role: role, TenantID: a.ID}
		g := e.Group("/api/v1", func(next echo.HandlerFunc) echo.HandlerFunc {
			return func(c echo.Context) error {
				c.SetRequest(c.Request().WithContext(tenants.WithPrincipal(c.Request().Context(), p)))
				return next(c)
			}
		})
		tenants.NewHandler(env.Tenants).RegisterTenant(g, tenants.NewRoutes())
		req := httptest.NewRequest(method, target, strings.NewReader(body))
		req.Header.Set("Content-Type", ctype)
		rec := httptest.NewRecorder()
		e.ServeHTTP(rec, req)
		return rec
	}
	const js, csv = "application/json", "text/csv"
	requests := []struct{ method, target, ctype, body string }{
		{"POST", "/api/v1/devices", js, `{"key":"mill-02","model":"jet-mill"}`},
		{"PATCH", "/api/v1/devices/" + d.Key, js, `{"status":"disabled","name":"x"}`},
		{"POST", "/api/v1/devices/" + d.ID.String() + "/rotate-secret", "", ""},
		{"POST", "/api/v1/lines", js, `{"key":"line-9"}`},
		{"POST", "/api/v1/devices/import", csv, "key,name,model,line\nmill-03,,jet-mill,\n"},
		{"POST", "/api/v1/devices/import?dry_run=true", js, `[{"key":"mill-04","model":"jet-mill"}]`},
	}
	for _, role := range []string{"viewer", "operator"} {
		for _, r := range requests {
			if rec := serve(role, r.method, r.target, r.ctype, r.body); rec.Code != http.StatusForbidden {
				t.Errorf("%s %s as %s = %d %s, want 403", r.method, r.target, role, rec.Code, rec.Body)
			}
		}
	}
	if got, err := env.Tenants.Device(a.Ctx(), d.Key); err != nil || got != d || deviceCount(t, env, a.ID) != 1 {
		t.Errorf("refused requests changed something: %+v, %v, %d devices", got, err, deviceCount(t, env, a.ID))
	}
	want := []int{201, 200, 200, 201, 200, 200}
	for i, r := range requests {
		if rec := serve("engineer", r.method, r.target, r.ctype, r.body); rec.Code != want[i] {
			t.Errorf("%s %s as engineer = %d %s, want %d", r.method, r.target, rec.Code, rec.Body, want[i])
		}
	}
	if n := deviceCount(t, env, a.ID); n != 3 {
		t.Errorf("after the engineer's requests the tenant has %d devices, want 3", n)
	}
}

// The largest import, 10,000 rows, in one call; its duration is logged (no
// threshold).
func TestImportTenThousandRows(t *testing.T) {
	if testing.Short() {
		t.Skip("short")
	}
	t.Parallel()
	env := tenanttest.New(t)
	a := env.NewTenant(t)
	var b strings.Builder
	b.WriteString("key,name,model,line\n")
	for i := range tenants.MaxImportRows {
		fmt.Fprintf(&b, "dev-%05d,Device %d,jet-mill,\n", i, i)
	}
	start := time.Now()
	rows, err := tenants.ParseDeviceCSV([]byte(b.String()))
	if err != nil {
		t.Fatal(err)
	}
	res, err := env.Tenants.ImportDevices(context.Background(), a.ID, rows, false)
	if err != nil {
		t.Fatal(err)
	}
	took := time.Since(start)
	if res.Created != tenants.MaxImportRows || res.Failed != 0 || deviceCount(t, env, a.ID) != tenants.MaxImportRows {
		t.Fatalf("created %d, failed %d", res.Created, res.Failed)
	}
	t.Logf("imported %d devices (%d bytes of CSV) in %s", res.Created, b.Len(), took.Round(time.Millisecond))
	last := res.Rows[len(res.Rows)-1]
	if _, err := env.Tenants.Authenticate(context.Background(), last.Username, []byte(last.Secret)); err != nil {
		t.Errorf("the last imported device cannot log in: %v", err)
	}
}
