package api_test

import (
	"bytes"
	"fmt"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"testing"

	"github.com/google/uuid"

	"github.com/nxcloud/nxcloud/apps"
	"github.com/nxcloud/nxcloud/tenants"
)

func TestInvitationsOverHTTP(t *testing.T) {
	t.Parallel()
	s := newServer(t, nil, "")
	a, b := s.env.NewTenant(t), s.env.NewTenant(t)
	owner := s.session(t, s.env.Member(t, a.ID, "owner"))
	admin := s.session(t, s.env.Member(t, a.ID, "admin"))
	viewer := s.session(t, s.env.Member(t, a.ID, "viewer"))
	ownerB := s.session(t, s.env.Member(t, b.ID, "owner"))
	invite := func(auth, role string) tenants.InvitationCreated {
		t.Helper()
		body := fmt.Sprintf(`{"email":"%s-%s@test.example","role":%q}`, role, uuid.NewString()[:8], role)
		return decode[tenants.InvitationCreated](t, "invite", s.do(t, "POST", "/api/v1/invitations", auth, body), 201)
	}
	eng, boss := invite(admin, "engineer"), invite(owner, "owner")
	invite(ownerB, "viewer")

	r := s.do(t, "GET", "/api/v1/invitations", admin, "")
	list := decode[struct{ Items []tenants.Invitation }](t, "list", r, 200)
	if len(list.Items) != 2 || list.Items[0].ID != boss.Invitation.ID || list.Items[1].ID != eng.Invitation.ID ||
		list.Items[1].Email != eng.Invitation.Email || list.Items[1].CreatedAt.IsZero() {
		t.Errorf("invitations = %+v", list.Items)
	}
	for _, secret := range []string{eng.Token, boss.Token, "nxi_", "token"} {
		if bytes.Contains(r.body, []byte(secret)) {
			t.Errorf("the list shows %q: %s", secret, r.body)
		}
	}
	// A scoped API key with users:read lists them; the viewer does not.
	key := decode[tenants.APIKeyCreated](t, "key", s.do(t, "POST", "/api/v1/api-keys", bearer(a.APIKey), `{"name":"hr","scopes":["users:read"]}`), 201)
	if l := decode[struct{ Items []tenants.Invitation }](t, "list by key", s.do(t, "GET", "/api/v1/invitations", bearer(key.Key), ""), 200); len(l.Items) != 2 {
		t.Errorf("list by key = %+v", l.Items)
	}
	wantProblem(t, "key revokes", s.do(t, "DELETE", "/api/v1/invitations/"+eng.Invitation.ID.String(), bearer(key.Key), ""), 403, apps.Forbidden, "")
	wantProblem(t, "viewer lists", s.do(t, "GET", "/api/v1/invitations", viewer, ""), 403, apps.Forbidden, "")
	wantProblem(t, "viewer revokes", s.do(t, "DELETE", "/api/v1/invitations/"+eng.Invitation.ID.String(), viewer, ""), 403, apps.Forbidden, "")
	// B neither sees nor revokes A's invitations.
	lb := s.do(t, "GET", "/api/v1/invitations", ownerB, "")
	if bytes.Contains(lb.body, []byte(eng.Invitation.ID.String())) || bytes.Contains(lb.body, []byte(eng.Invitation.Email)) {
		t.Errorf("B lists A's invitation: %s", lb.body)
	}
	for _, ref := range []string{eng.Invitation.ID.String(), boss.Invitation.ID.String(), "x", uuid.NewString()} {
		wantProblem(t, "B revokes "+ref, s.do(t, "DELETE", "/api/v1/invitations/"+url.PathEscape(ref), ownerB, ""), 404, apps.NotFound, "")
	}
	wantProblem(t, "admin revokes an owner's invitation", s.do(t, "DELETE", "/api/v1/invitations/"+boss.Invitation.ID.String(), admin, ""), 403, apps.Forbidden, "")

	for _, c := range []struct {
		auth string
		inv  tenants.InvitationCreated
	}{{admin, eng}, {owner, boss}} {
		path := "/api/v1/invitations/" + c.inv.Invitation.ID.String()
		out := decode[tenants.InvitationRevoked](t, "revoke", s.do(t, "DELETE", path, c.auth, ""), 200)
		if out.ID != c.inv.Invitation.ID || !out.Revoked {
			t.Errorf("revoked = %+v", out)
		}
		wantProblem(t, "revoke twice", s.do(t, "DELETE", path, c.auth, ""), 404, apps.NotFound, "")
		body := fmt.Sprintf(`{"token":%q,"name":"Late","password":"a long enough password"}`, c.inv.Token)
		wantProblem(t, "accept a revoked invitation", s.do(t, "POST", "/api/v1/auth/accept-invitation", "", body), 400, apps.Invalid, "token")
	}
	if l := decode[struct{ Items []tenants.Invitation }](t, "list after", s.do(t, "GET", "/api/v1/invitations", owner, ""), 200); len(l.Items) != 0 {
		t.Errorf("pending after revoking = %+v", l.Items)
	}
	// B's own invitation is untouched.
	if l := decode[struct{ Items []tenants.Invitation }](t, "B's list", lb, 200); len(l.Items) != 1 {
		t.Errorf("B's invitations = %+v", l.Items)
	}
}

func TestOperatorManagesUserAccounts(t *testing.T) {
	t.Parallel()
	const token = "operator-token-users"
	s := newServer(t, nil, token)
	op := bearer(token)
	a := s.env.NewTenant(t)
	m := s.env.Member(t, a.ID, "engineer")
	sess := s.session(t, m)
	if r := s.do(t, "GET", "/api/v1/devices", sess, ""); r.status != 200 {
		t.Fatalf("before: %v", r)
	}

	find := func(email string) []tenants.UserAccount {
		t.Helper()
		r := s.do(t, "GET", "/api/v1/operator/users?email="+url.QueryEscape(email), op, "")
		return decode[struct{ Items []tenants.UserAccount }](t, "find "+email, r, 200).Items
	}
	got := find(strings.ToUpper(m.Email))
	if len(got) != 1 || got[0].ID != m.ID || got[0].Status != "active" || len(got[0].Memberships) != 1 ||
		got[0].Memberships[0] != (tenants.UserMembership{OrgID: a.ID, Kind: tenants.OrgEnterprise, Name: got[0].Memberships[0].Name, Role: "engineer"}) {
		t.Errorf("found = %+v", got)
	}
	if none := find("nobody-" + uuid.NewString()[:8] + "@test.example"); len(none) != 0 {
		t.Errorf("unknown email = %+v", none)
	}
	for _, q := range []string{"", "?email=", "?email=nope"} {
		wantProblem(t, "find "+q, s.do(t, "GET", "/api/v1/operator/users"+q, op, ""), 400, apps.Invalid, "email")
	}

	path := "/api/v1/operator/users/" + m.ID.String()
	off := decode[tenants.UserAccount](t, "disable", s.do(t, "PATCH", path, op, `{"status":"disabled"}`), 200)
	if off.ID != m.ID || off.Status != "disabled" {
		t.Errorf("disabled = %+v", off)
	}
	wantProblem(t, "the disabled user's session", s.do(t, "GET", "/api/v1/devices", sess, ""), 401, apps.Unauthorized, "")
	wantProblem(t, "the disabled user logs in", s.do(t, "POST", "/api/v1/auth/login", "", loginBody(m.Email, m.Password)), 401, apps.Unauthorized, "")
	on := decode[tenants.UserAccount](t, "enable", s.do(t, "PATCH", path, op, `{"status":"active"}`), 200)
	if on.Status != "active" {
		t.Errorf("enabled = %+v", on)
	}
	if r := s.do(t, "GET", "/api/v1/devices", sess, ""); r.status != 200 {
		t.Errorf("the session after enabling: %v", r)
	}

	wantProblem(t, "bad status", s.do(t, "PATCH", path, op, `{"status":"locked"}`), 400, apps.Invalid, "status")
	wantProblem(t, "unknown field", s.do(t, "PATCH", path, op, `{"status":"disabled","Status":"x"}`), 400, apps.Invalid, "Status")
	wantProblem(t, "unknown user", s.do(t, "PATCH", "/api/v1/operator/users/"+uuid.NewString(), op, `{"status":"disabled"}`), 404, apps.NotFound, "")
	wantProblem(t, "malformed id", s.do(t, "PATCH", "/api/v1/operator/users/x", op, `{"status":"disabled"}`), 404, apps.NotFound, "")

	// An operator's own session: it finds users, cannot disable itself; an
	// enterprise owner reaches neither route.
	opOrg := s.env.Org(t, tenants.OrgOperator)
	opM := s.env.Member(t, opOrg, "admin")
	opSess := s.session(t, opM)
	if l := decode[struct{ Items []tenants.UserAccount }](t, "operator session finds", s.do(t, "GET", "/api/v1/operator/users?email="+url.QueryEscape(opM.Email), opSess, ""), 200); len(l.Items) != 1 ||
		!slices.ContainsFunc(l.Items[0].Memberships, func(x tenants.UserMembership) bool { return x.OrgID == opOrg && x.Kind == tenants.OrgOperator }) {
		t.Errorf("operator finds itself = %+v", l.Items)
	}
	wantProblem(t, "disable oneself", s.do(t, "PATCH", "/api/v1/operator/users/"+opM.ID.String(), opSess, `{"status":"disabled"}`), 409, apps.Conflict, "")
	ownerA := s.session(t, s.env.Member(t, a.ID, "owner"))
	wantProblem(t, "owner finds users", s.do(t, "GET", "/api/v1/operator/users?email="+url.QueryEscape(m.Email), ownerA, ""), 403, apps.Forbidden, "")
	wantProblem(t, "owner disables a user", s.do(t, "PATCH", path, ownerA, `{"status":"disabled"}`), 403, apps.Forbidden, "")
	if r := s.do(t, "GET", "/api/v1/devices", sess, ""); r.status != http.StatusOK {
		t.Errorf("the session after refused attempts: %v", r)
	}
}
