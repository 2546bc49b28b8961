package api_test

import (
	"bytes"
	"fmt"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/nxcloud/nxcloud/apps"
	"github.com/nxcloud/nxcloud/tenants"
)

func keyBody(name string, scopes ...string) string {
	return fmt.Sprintf(`{"name":%q,"scopes":["%s"]}`, name, strings.Join(scopes, `","`))
}

func TestAPIKeysAPI(t *testing.T) {
	t.Parallel()
	s := newServer(t, nil, "")
	a, b := s.env.NewTenant(t), s.env.NewTenant(t)
	owner, admin := s.session(t, s.env.Member(t, a.ID, "owner")), s.session(t, s.env.Member(t, a.ID, "admin"))
	viewer, engineer := s.session(t, s.env.Member(t, a.ID, "viewer")), s.session(t, s.env.Member(t, a.ID, "engineer"))
	keyB := bearer(b.APIKey)
	d, _ := s.env.Device(t, a, "mill-1", "jet-mill")

	// An owner makes a read-only key for a machine; the key is shown once.
	expires := time.Now().Add(48 * time.Hour).UTC().Truncate(time.Second)
	r := s.do(t, "POST", "/api/v1/api-keys", owner,
		fmt.Sprintf(`{"name":"line-1 PLC","scopes":["devices:read","devices:read"],"expires_at":%q}`, expires.Format(time.RFC3339)))
	created := decode[tenants.APIKeyCreated](t, "create", r, http.StatusCreated)
	k := created.APIKey
	if k.Name != "line-1 PLC" || !slices.Equal(k.Scopes, []string{"devices:read"}) || k.Status != "active" || k.ExpiresAt == nil ||
		!k.ExpiresAt.Equal(expires) || k.RevokedAt != nil || k.CreatedBy == nil || !strings.HasPrefix(created.Key, "nxk_"+k.Prefix+"_") {
		t.Errorf("created = %+v", created)
	}
	createID := r.header.Get("X-Request-Id")
	machine := bearer(created.Key)
	secret := strings.TrimPrefix(created.Key, "nxk_"+k.Prefix+"_")

	// It does what its scope allows and nothing else.
	if r := s.do(t, "GET", "/api/v1/devices", machine, ""); r.status != 200 || !bytes.Contains(r.body, []byte(d.ID.String())) {
		t.Errorf("the key reads devices: %v", r)
	}
	me := decode[tenants.Me](t, "me", s.do(t, "GET", "/api/v1/me", machine, ""), 200)
	if me.Kind != "api_key" || !slices.Equal(me.Permissions, []string{"devices:read", "self:read"}) {
		t.Errorf("the key's me = %+v", me)
	}
	for _, c := range []struct{ method, target, body string }{
		{"GET", "/api/v1/tenant", ""}, {"GET", "/api/v1/devices/mill-1/series?metric=d50_um", ""}, {"GET", "/api/v1/audit", ""},
		{"GET", "/api/v1/api-keys", ""}, {"POST", "/api/v1/api-keys", keyBody("x", "devices:read")},
		{"PATCH", "/api/v1/devices/mill-1", `{"status":"disabled"}`}, {"GET", "/api/v1/users", ""},
	} {
		wantProblem(t, c.method+" "+c.target+" with a devices:read key", s.do(t, c.method, c.target, machine, c.body), 403, apps.Forbidden, "")
	}

	// Who manages keys: owners, admins and the onboarding key; not other
	// roles, and not a key (keys:write is never a key's).
	if r := s.do(t, "POST", "/api/v1/api-keys", admin, keyBody("by admin", "telemetry:read", "tenant:read")); r.status != 201 {
		t.Errorf("an admin creates a key: %v", r)
	}
	lister := decode[tenants.APIKeyCreated](t, "by key", s.do(t, "POST", "/api/v1/api-keys", bearer(a.APIKey), keyBody("lister", "keys:read")), 201)
	for name, auth := range map[string]string{"viewer": viewer, "engineer": engineer, "keys:read key": bearer(lister.Key)} {
		wantProblem(t, name+" creates a key", s.do(t, "POST", "/api/v1/api-keys", auth, keyBody("x", "devices:read")), 403, apps.Forbidden, "")
		wantProblem(t, name+" revokes a key", s.do(t, "DELETE", "/api/v1/api-keys/"+k.ID.String(), auth, ""), 403, apps.Forbidden, "")
	}
	for name, auth := range map[string]string{"viewer": viewer, "engineer": engineer} {
		wantProblem(t, name+" lists keys", s.do(t, "GET", "/api/v1/api-keys", auth, ""), 403, apps.Forbidden, "")
	}

	// Listing shows no secret, to owners and to a keys:read key alike.
	for name, auth := range map[string]string{"owner": owner, "keys:read key": bearer(lister.Key)} {
		r := s.do(t, "GET", "/api/v1/api-keys", auth, "")
		list := decode[struct{ Items []tenants.APIKey }](t, "list", r, 200)
		if len(list.Items) != 4 || list.Items[3].Scopes[0] != "*" || list.Items[3].CreatedBy != nil || !slices.ContainsFunc(list.Items, func(x tenants.APIKey) bool { return x.ID == k.ID }) {
			t.Errorf("%s lists %+v", name, list.Items)
		}
		if bytes.Contains(r.body, []byte(secret)) || bytes.Contains(r.body, []byte(created.Key)) || bytes.Contains(r.body, []byte(a.APIKey)) {
			t.Errorf("%s's list shows a secret", name)
		}
	}
	if got := decode[tenants.APIKey](t, "get", s.do(t, "GET", "/api/v1/api-keys/"+k.ID.String(), owner, ""), 200); got.ID != k.ID || got.Prefix != k.Prefix {
		t.Errorf("get = %+v", got)
	}

	// Refused input.
	for _, c := range []struct{ name, body, field string }{
		{"star", keyBody("x", "*"), "scopes"},
		{"users:write", keyBody("x", "devices:read", "users:write"), "scopes"},
		{"keys:write", keyBody("x", "keys:write"), "scopes"},
		{"grants:write", keyBody("x", "grants:write"), "scopes"},
		{"operator", keyBody("x", "platform:operate"), "scopes"},
		{"unknown", keyBody("x", "devices:delete"), "scopes"},
		{"no scopes", `{"name":"x","scopes":[]}`, "scopes"},
		{"scopes missing", `{"name":"x"}`, "scopes"},
		{"scopes not a list", `{"name":"x","scopes":"devices:read"}`, "scopes"},
		{"no name", `{"scopes":["devices:read"]}`, "name"},
		{"past", fmt.Sprintf(`{"name":"x","scopes":["devices:read"],"expires_at":%q}`, time.Now().Add(-time.Hour).Format(time.RFC3339)), "expires_at"},
		{"three years", fmt.Sprintf(`{"name":"x","scopes":["devices:read"],"expires_at":%q}`, time.Now().AddDate(3, 0, 0).Format(time.RFC3339)), "expires_at"},
		{"not a time", `{"name":"x","scopes":["devices:read"],"expires_at":"tomorrow"}`, "expires_at"},
		{"tenant in the body", fmt.Sprintf(`{"name":"x","scopes":["devices:read"],"tenant_id":%q}`, b.ID), "tenant_id"},
	} {
		wantProblem(t, "create key, "+c.name, s.do(t, "POST", "/api/v1/api-keys", owner, c.body), 400, apps.Invalid, c.field)
	}

	// Another enterprise neither sees nor revokes A's keys.
	for _, ref := range []string{k.ID.String(), strings.ToUpper(k.ID.String())} {
		wantProblem(t, "B reads A's key", s.do(t, "GET", "/api/v1/api-keys/"+ref, keyB, ""), 404, apps.NotFound, "")
		wantProblem(t, "B revokes A's key", s.do(t, "DELETE", "/api/v1/api-keys/"+ref, keyB, ""), 404, apps.NotFound, "")
	}
	if r := s.do(t, "GET", "/api/v1/api-keys", keyB, ""); bytes.Contains(r.body, []byte(k.ID.String())) || bytes.Contains(r.body, []byte(k.Prefix)) {
		t.Errorf("B's list shows A's key: %v", r)
	}
	for _, ref := range []string{"nope", uuid.NewString(), k.Prefix} {
		wantProblem(t, "revoke "+ref, s.do(t, "DELETE", "/api/v1/api-keys/"+ref, owner, ""), 404, apps.NotFound, "")
	}
	if r := s.do(t, "GET", "/api/v1/devices", machine, ""); r.status != 200 {
		t.Errorf("B's attempts touched A's key: %v", r)
	}

	// Revoked: refused at once on this replica (every replica within
	// seconds: tenants/apikeys_test.go); revoking again changes nothing.
	revoked := decode[tenants.APIKey](t, "revoke", s.do(t, "DELETE", "/api/v1/api-keys/"+k.ID.String(), admin, ""), 200)
	if revoked.Status != "revoked" || revoked.RevokedAt == nil {
		t.Errorf("revoked = %+v", revoked)
	}
	wantProblem(t, "the revoked key", s.do(t, "GET", "/api/v1/devices", machine, ""), 401, apps.Unauthorized, "")
	again := decode[tenants.APIKey](t, "revoke again", s.do(t, "DELETE", "/api/v1/api-keys/"+k.ID.String(), owner, ""), 200)
	if again.RevokedAt == nil || !again.RevokedAt.Equal(*revoked.RevokedAt) {
		t.Errorf("revoking twice moved revoked_at: %+v", again)
	}

	// The audit log records the changes with the key's prefix and scopes,
	// never its secret.
	rows := auditRows(t, s, owner, "action=api_key.create")
	if len(rows) != 3 {
		t.Fatalf("api_key.create rows = %+v, want 3", rows)
	}
	first := rows[len(rows)-1]
	if first.RequestID != createID || first.Status != 201 || first.Result != "ok" || first.ActorKind != "user" ||
		first.Resource != "api-keys/"+k.ID.String() || first.Detail["prefix"] != k.Prefix || first.Detail["key"] != k.ID.String() ||
		fmt.Sprint(first.Detail["scopes"]) != "[devices:read]" || first.Detail["route"] != "POST /api/v1/api-keys" {
		t.Errorf("api_key.create row = %+v", first)
	}
	if rows := auditRows(t, s, owner, "action=api_key.revoke"); len(rows) != 1 || rows[0].Detail["prefix"] != k.Prefix {
		t.Errorf("api_key.revoke rows = %+v (revoking twice records one change)", rows)
	}
	if rows := auditRows(t, s, owner, "action="+url.QueryEscape("POST /api/v1/api-keys")); len(rows) != 14+4 {
		t.Errorf("refused creations = %d rows, want 18 (14 invalid, 4 forbidden)", len(rows))
	}
	if r := s.do(t, "GET", "/api/v1/audit/export", owner, ""); bytes.Contains(r.body, []byte(secret)) {
		t.Error("the audit log holds a key's secret")
	}
}

// The scopes the document lists for a new key are the ones the code allows.
func TestAPIKeyScopesDocumented(t *testing.T) {
	doc := loadDoc(t)
	input := obj(obj(obj(doc["components"])["schemas"])["APIKeyInput"])
	items := obj(obj(obj(input["properties"])["scopes"])["items"])
	var documented []string
	for _, e := range items["enum"].([]any) {
		documented = append(documented, str(e))
	}
	slices.Sort(documented)
	if want := tenants.APIKeyScopes(); !slices.Equal(documented, want) {
		t.Errorf("APIKeyInput.scopes enum = %v, want tenants.APIKeyScopes() = %v", documented, want)
	}
}
