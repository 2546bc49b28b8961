package api_test

import (
	"bytes"
	"fmt"
	"net/http"
	"net/http/httptest"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/google/uuid"

	"github.com/nxcloud/nxcloud/apps"
	"github.com/nxcloud/nxcloud/tenants"
	"github.com/nxcloud/nxcloud/tenants/tenanttest"
)

func loginBody(email, password string) string {
	return fmt.Sprintf(`{"email":%q,"password":%q}`, email, password)
}

// session logs m in over HTTP and returns the Authorization header value.
func (s *testServer) session(t *testing.T, m tenanttest.Member) string {
	t.Helper()
	r := s.do(t, "POST", "/api/v1/auth/login", "", loginBody(m.Email, m.Password))
	return bearer(decode[tenants.SessionCreated](t, "login "+m.Email, r, http.StatusOK).Token)
}

// accept accepts an invitation over HTTP and returns the session.
func (s *testServer) accept(t *testing.T, token, name string) tenants.SessionCreated {
	t.Helper()
	body := fmt.Sprintf(`{"token":%q,"name":%q,"password":"a long enough password"}`, token, name)
	return decode[tenants.SessionCreated](t, "accept invitation", s.do(t, "POST", "/api/v1/auth/accept-invitation", "", body), http.StatusOK)
}

// doHeader is do with one more request header.
func (s *testServer) doHeader(t *testing.T, method, target, auth, header, value string) *response {
	t.Helper()
	req := httptest.NewRequest(method, target, nil)
	req.Header.Set("Authorization", auth)
	req.Header.Set(header, value)
	rec := httptest.NewRecorder()
	s.srv.Handler().ServeHTTP(rec, req)
	r := &response{status: rec.Code, header: rec.Header(), body: rec.Body.Bytes()}
	s.check(t, method, target, r)
	return r
}

func TestLoginAndLogout(t *testing.T) {
	t.Parallel()
	s := newServer(t, nil, "")
	s.env.Tenants.LoginLimits.MaxFailures = 2
	a := s.env.NewTenant(t)
	m := s.env.Member(t, a.ID, "viewer")

	sess := decode[tenants.SessionCreated](t, "login", s.do(t, "POST", "/api/v1/auth/login", "", loginBody(strings.ToUpper(m.Email), m.Password)), 200)
	if sess.User.ID != m.ID || sess.Org.ID != a.ID || sess.Role != "viewer" || !strings.HasPrefix(sess.Token, "nxs_") {
		t.Errorf("session = %+v", sess)
	}
	auth := bearer(sess.Token)
	if got := decode[tenants.Tenant](t, "tenant", s.do(t, "GET", "/api/v1/tenant", auth, ""), 200); got.ID != a.ID {
		t.Errorf("the session reads tenant %s, want %s", got.ID, a.ID)
	}
	me := decode[tenants.Me](t, "me", s.do(t, "GET", "/api/v1/me", auth, ""), 200)
	if me.Kind != "user" || me.User == nil || me.User.Email != m.Email || me.Org.ID != a.ID || me.Role != "viewer" ||
		!slices.Contains(me.Permissions, tenants.PermDevicesRead) || slices.Contains(me.Permissions, tenants.PermUsersWrite) {
		t.Errorf("me = %+v", me)
	}
	keyMe := decode[tenants.Me](t, "me (API key)", s.do(t, "GET", "/api/v1/me", bearer(a.APIKey), ""), 200)
	if keyMe.Kind != "api_key" || keyMe.User != nil || keyMe.Org.ID != a.ID || keyMe.TenantID == nil || *keyMe.TenantID != a.ID {
		t.Errorf("me with an API key = %+v", keyMe)
	}
	// A viewer neither lists nor invites people.
	wantProblem(t, "viewer lists users", s.do(t, "GET", "/api/v1/users", auth, ""), 403, apps.Forbidden, "")
	wantProblem(t, "viewer invites", s.do(t, "POST", "/api/v1/invitations", auth, `{"email":"x@test.example","role":"viewer"}`), 403, apps.Forbidden, "")

	// Failures look alike.
	wrong := wantProblem(t, "wrong password", s.do(t, "POST", "/api/v1/auth/login", "", loginBody(m.Email, m.Password+"x")), 401, apps.Unauthorized, "")
	unknown := wantProblem(t, "unknown email", s.do(t, "POST", "/api/v1/auth/login", "", loginBody("nobody-"+uuid.NewString()+"@test.example", m.Password)), 401, apps.Unauthorized, "")
	if wrong.Detail != "invalid email or password" || unknown.Detail != wrong.Detail {
		t.Errorf("details %q and %q, want both \"invalid email or password\"", wrong.Detail, unknown.Detail)
	}
	for _, c := range []struct{ body, field string }{
		{`{}`, "email"}, {`{"email":"x"}`, "email"}, {`{"email":"a@b.example"}`, "password"},
		{`{"email":"a@b.example","password":"x","org":"acme"}`, "org"}, {`{"email":"a@b.example","password":"x","Org":""}`, "Org"},
	} {
		wantProblem(t, "login "+c.body, s.do(t, "POST", "/api/v1/auth/login", "", c.body), 400, apps.Invalid, c.field)
	}

	// After MaxFailures (2 here) the account is locked: 429 with Retry-After,
	// for an existing and an unknown account alike (the wrong password above
	// counted once already).
	s.do(t, "POST", "/api/v1/auth/login", "", loginBody(m.Email, "wrong password!"))
	ghost := "ghost-" + uuid.NewString() + "@test.example"
	for range 2 {
		s.do(t, "POST", "/api/v1/auth/login", "", loginBody(ghost, "wrong password!"))
	}
	for _, email := range []string{m.Email, ghost} {
		r := s.do(t, "POST", "/api/v1/auth/login", "", loginBody(email, m.Password))
		p := wantProblem(t, "locked "+email, r, 429, apps.QuotaExceeded, "")
		after, err := strconv.Atoi(r.header.Get("Retry-After"))
		if err != nil || after < 1 || after > 900 || p.Detail != fmt.Sprintf("too many attempts; retry after %d seconds", after) {
			t.Errorf("locked %s: Retry-After %q, detail %q", email, r.header.Get("Retry-After"), p.Detail)
		}
	}
	// The session from before the lock still works; logging out ends it.
	if r := s.do(t, "POST", "/api/v1/auth/logout", auth, ""); r.status != 200 || !bytes.Contains(r.body, []byte(`"revoked":true`)) {
		t.Errorf("logout = %v", r)
	}
	wantProblem(t, "after logout", s.do(t, "GET", "/api/v1/tenant", auth, ""), 401, apps.Unauthorized, "")
	for name, cred := range map[string]string{"twice": auth, "API key": bearer(a.APIKey), "none": "", "garbage": bearer("nxs_x")} {
		wantProblem(t, "logout "+name, s.do(t, "POST", "/api/v1/auth/logout", cred, ""), 401, apps.Unauthorized, "")
	}
}

func TestManagingUsers(t *testing.T) {
	t.Parallel()
	s := newServer(t, nil, "")
	a, b := s.env.NewTenant(t), s.env.NewTenant(t)
	ownerM := s.env.Member(t, a.ID, "owner")
	owner, admin := s.session(t, ownerM), s.session(t, s.env.Member(t, a.ID, "admin"))
	ownerB := s.session(t, s.env.Member(t, b.ID, "owner"))

	email := "eng-" + uuid.NewString()[:8] + "@test.example"
	inv := decode[tenants.InvitationCreated](t, "invite", s.do(t, "POST", "/api/v1/invitations", owner, `{"email":"`+email+`","role":"engineer"}`), 201)
	eng := s.accept(t, inv.Token, "Eng")
	if eng.Role != "engineer" || eng.Org.ID != a.ID || eng.User.Email != email {
		t.Fatalf("accepted = %+v", eng)
	}
	wantProblem(t, "accept twice", s.do(t, "POST", "/api/v1/auth/accept-invitation", "", `{"token":"`+inv.Token+`","name":"X","password":"a long enough password"}`), 400, apps.Invalid, "token")
	engAuth := bearer(eng.Token)
	if r := s.do(t, "GET", "/api/v1/devices", engAuth, ""); r.status != 200 {
		t.Errorf("the engineer reads devices: %v", r)
	}
	wantProblem(t, "admin invites an owner", s.do(t, "POST", "/api/v1/invitations", admin, `{"email":"o@test.example","role":"owner"}`), 403, apps.Forbidden, "")
	wantProblem(t, "bad role", s.do(t, "POST", "/api/v1/invitations", admin, `{"email":"o@test.example","role":"root"}`), 400, apps.Invalid, "role")
	wantProblem(t, "invite a member", s.do(t, "POST", "/api/v1/invitations", admin, `{"email":"`+email+`","role":"viewer"}`), 409, apps.Conflict, "")

	users := decode[struct{ Items []tenants.Member }](t, "users", s.do(t, "GET", "/api/v1/users", admin, ""), 200)
	if len(users.Items) != 3 || !slices.ContainsFunc(users.Items, func(x tenants.Member) bool { return x.ID == eng.User.ID && x.Role == "engineer" }) {
		t.Errorf("users = %+v", users.Items)
	}
	engPath := "/api/v1/users/" + eng.User.ID.String()
	if got := decode[tenants.Member](t, "demote", s.do(t, "PATCH", engPath, admin, `{"role":"viewer"}`), 200); got.Role != "viewer" {
		t.Errorf("demoted = %+v", got)
	}
	if me := decode[tenants.Me](t, "demoted me", s.do(t, "GET", "/api/v1/me", engAuth, ""), 200); me.Role != "viewer" || slices.Contains(me.Permissions, tenants.PermDevicesWrite) {
		t.Errorf("the demoted session = %+v, want a viewer at once", me)
	}
	ownerPath := "/api/v1/users/" + ownerM.ID.String()
	wantProblem(t, "admin demotes the owner", s.do(t, "PATCH", ownerPath, admin, `{"role":"viewer"}`), 403, apps.Forbidden, "")
	wantProblem(t, "admin removes the owner", s.do(t, "DELETE", ownerPath, admin, ""), 403, apps.Forbidden, "")
	wantProblem(t, "last owner steps down", s.do(t, "PATCH", ownerPath, owner, `{"role":"admin"}`), 409, apps.Conflict, "")
	wantProblem(t, "viewer changes roles", s.do(t, "PATCH", engPath, engAuth, `{"role":"owner"}`), 403, apps.Forbidden, "")
	// Another enterprise's user is not found.
	for _, p := range []string{engPath, ownerPath, "/api/v1/users/x", "/api/v1/users/" + uuid.NewString()} {
		wantProblem(t, "B patches "+p, s.do(t, "PATCH", p, ownerB, `{"role":"viewer"}`), 404, apps.NotFound, "")
		wantProblem(t, "B removes "+p, s.do(t, "DELETE", p, ownerB, ""), 404, apps.NotFound, "")
	}
	removed := decode[tenants.MemberRemoved](t, "remove", s.do(t, "DELETE", engPath, owner, ""), 200)
	if !removed.Removed || removed.ID != eng.User.ID || removed.SessionsRevoked != 1 {
		t.Errorf("removed = %+v", removed)
	}
	wantProblem(t, "the removed user's session", s.do(t, "GET", "/api/v1/devices", engAuth, ""), 401, apps.Unauthorized, "")
	wantProblem(t, "remove again", s.do(t, "DELETE", engPath, owner, ""), 404, apps.NotFound, "")
}

func TestOrganisationsAndOnboardingOverHTTP(t *testing.T) {
	t.Parallel()
	const token = "operator-token-orgs"
	s := newServer(t, nil, token)
	op := bearer(token)
	a := s.env.NewTenant(t)

	org := func(auth, kind string) tenants.OrgCreated {
		t.Helper()
		body := fmt.Sprintf(`{"kind":%q,"name":"Test %s","admin_email":"%s-%s@test.example"}`, kind, kind, kind, uuid.NewString()[:8])
		return decode[tenants.OrgCreated](t, "create "+kind, s.do(t, "POST", "/api/v1/operator/orgs", auth, body), 201)
	}
	opOrg := org(op, tenants.OrgOperator)
	opUser := bearer(s.accept(t, opOrg.Token, "Op").Token)
	if r := s.do(t, "GET", "/api/v1/operator/sectors", opUser, ""); r.status != 200 {
		t.Errorf("an operator's session on the operator API: %v", r)
	}
	con := org(opUser, tenants.OrgContractor)
	if con.Invitation.Role != "member" || con.Org.Kind != tenants.OrgContractor {
		t.Errorf("contractor = %+v", con)
	}
	conUser := bearer(s.accept(t, con.Token, "Con").Token)
	asc := org(op, tenants.OrgAssociation)
	ascUser := bearer(s.accept(t, asc.Token, "Asc").Token)
	entUser := s.session(t, s.env.Member(t, a.ID, "owner"))
	for name, auth := range map[string]string{"contractor": conUser, "association": ascUser, "enterprise owner": entUser} {
		wantProblem(t, name+" on the operator API", s.do(t, "GET", "/api/v1/operator/orgs", auth, ""), 403, apps.Forbidden, "")
	}
	// Outside an enterprise, no tenant rows; /me still answers.
	me := decode[tenants.Me](t, "association me", s.do(t, "GET", "/api/v1/me", ascUser, ""), 200)
	if me.Org.ID != asc.Org.ID || me.TenantID != nil || me.Role != "analyst" || !slices.Contains(me.Permissions, tenants.PermBenchmarksRead) {
		t.Errorf("association me = %+v", me)
	}
	wantProblem(t, "association reads devices", s.do(t, "GET", "/api/v1/devices", ascUser, ""), 403, apps.Forbidden, "")
	wantProblem(t, "contractor without a tenant", s.do(t, "GET", "/api/v1/devices", conUser, ""), 403, apps.Forbidden, "")
	wantProblem(t, "contractor without a grant", s.doHeader(t, "GET", "/api/v1/devices", conUser, "X-Nx-Tenant", a.Slug), 403, apps.Forbidden, "")
	wantProblem(t, "operator session on tenant data", s.do(t, "GET", "/api/v1/devices", opUser, ""), 403, apps.Forbidden, "")

	list := decode[struct{ Items []tenants.Org }](t, "orgs", s.do(t, "GET", "/api/v1/operator/orgs?kind=contractor", op, ""), 200)
	if !slices.ContainsFunc(list.Items, func(o tenants.Org) bool { return o.ID == con.Org.ID && o.Members == 1 }) ||
		slices.ContainsFunc(list.Items, func(o tenants.Org) bool { return o.Kind != tenants.OrgContractor }) {
		t.Errorf("contractors = %+v", list.Items)
	}
	wantProblem(t, "orgs of a bad kind", s.do(t, "GET", "/api/v1/operator/orgs?kind=guild", op, ""), 400, apps.Invalid, "kind")
	wantProblem(t, "an enterprise org", s.do(t, "POST", "/api/v1/operator/orgs", op, `{"kind":"enterprise","name":"E","admin_email":"e@test.example"}`), 400, apps.Invalid, "kind")
	wantProblem(t, "bad admin email", s.do(t, "POST", "/api/v1/operator/orgs", op, `{"kind":"contractor","name":"E","admin_email":"e"}`), 400, apps.Invalid, "admin_email")

	// Onboarding with an owner: one call, then the owner accepts.
	slug := randomSlug("own")
	r := s.do(t, "POST", "/api/v1/operator/enterprises", op, fmt.Sprintf(`{"slug":%q,"name":"Owned","sector":"magnetic-materials","owner_email":"boss-%s@test.example"}`, slug, slug))
	created := decode[struct {
		Enterprise      tenants.Tenant `json:"enterprise"`
		OwnerInvitation string         `json:"owner_invitation"`
	}](t, "onboard", r, 201)
	boss := s.accept(t, created.OwnerInvitation, "Boss")
	if boss.Role != "owner" || boss.Org.ID != created.Enterprise.ID {
		t.Errorf("owner = %+v", boss)
	}
	if got := decode[tenants.Tenant](t, "owner's tenant", s.do(t, "GET", "/api/v1/tenant", bearer(boss.Token), ""), 200); got.Slug != slug {
		t.Errorf("the owner sees %s, want %s", got.Slug, slug)
	}
	wantProblem(t, "bad owner email", s.do(t, "POST", "/api/v1/operator/enterprises", op,
		`{"slug":"`+randomSlug("own")+`","name":"X","sector":"magnetic-materials","owner_email":"boss"}`), 400, apps.Invalid, "owner_email")
}

// The sign-in routes answer hostile input with 4xx, never a server error.
func TestAuthRoutesRefuseHostileInput(t *testing.T) {
	t.Parallel()
	s := newServer(t, nil, "")
	for _, target := range []string{"/api/v1/auth/login", "/api/v1/auth/accept-invitation"} {
		for _, body := range []string{``, `{}`, `[]`, `null`, `{"email":1}`, `{"token":"nxi_` + strings.Repeat("A", 43) + `","password":"` + strings.Repeat("p", 5000) + `"}`,
			`{"email":"` + strings.Repeat("a", 300) + `@x.example","password":"x"}`, `{"email":"a@b.example","password":"` + strings.Repeat("p", 2000) + `"}`,
			`{"token":"nxi_\u00e9` + strings.Repeat("A", 42) + `","name":"x","password":"a long enough password"}`} {
			r := s.do(t, "POST", target, "", body)
			if r.status < 400 || r.status >= 500 {
				t.Errorf("POST %s %.60s = %v", target, body, r)
			}
		}
	}
}

func TestIdentitySchemasMatchGoTypes(t *testing.T) {
	doc := loadDoc(t)
	schemas := obj(obj(doc["components"])["schemas"])
	for name, c := range map[string]struct {
		v        any
		response bool
	}{
		"LoginInput": {tenants.LoginInput{}, false}, "AcceptInvitationInput": {tenants.AcceptInput{}, false},
		"Session": {tenants.SessionCreated{}, true}, "UserRef": {tenants.UserRef{}, true}, "OrgRef": {tenants.OrgRef{}, true},
		"Me": {tenants.Me{}, true}, "Member": {tenants.Member{}, true}, "MemberRemoved": {tenants.MemberRemoved{}, true},
		"RoleInput": {tenants.RoleInput{}, false}, "InvitationInput": {tenants.InvitationInput{}, false},
		"Invitation": {tenants.Invitation{}, true}, "InvitationCreated": {tenants.InvitationCreated{}, true},
		"Org": {tenants.Org{}, true}, "OrgInput": {tenants.OrgInput{}, false}, "OrgCreated": {tenants.OrgCreated{}, true},
		"InvitationRevoked": {tenants.InvitationRevoked{}, true}, "UserAccount": {tenants.UserAccount{}, true},
		"UserMembership": {tenants.UserMembership{}, true}, "UserStatusInput": {tenants.UserStatusInput{}, false},
	} {
		props, required := doc.flatten(obj(schemas[name]))
		fields := map[string]bool{}
		jsonFieldsOf(reflect.TypeOf(c.v), fields)
		if len(props) != len(fields) {
			t.Errorf("schema %s has %d properties, %T %d fields", name, len(props), c.v, len(fields))
		}
		for f, omit := range fields {
			if _, ok := props[f]; !ok {
				t.Errorf("schema %s lacks %q", name, f)
			} else if c.response && required[f] == omit {
				t.Errorf("schema %s: %q required=%v, omitempty=%v", name, f, required[f], omit)
			}
		}
	}
}
