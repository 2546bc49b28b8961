package api_test

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"net/http"
	"slices"
	"testing"

	"github.com/google/uuid"

	"github.com/nxcloud/nxcloud/tenants"
)

// auditRowsByRequest reads, as the system, the audit rows of one request
// (those without a tenant included).
func auditRowsByRequest(t *testing.T, s *testServer, requestID string) []tenants.AuditRecord {
	t.Helper()
	rows, err := s.env.DB.System.Query(context.Background(), `SELECT id, at, actor_kind, actor_id, actor_org, actor_org_kind,
		actor_name, action, resource, result, status, ip, request_id, detail, tenant_id
		FROM audit_log WHERE request_id = $1 ORDER BY id`, requestID)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	var out []tenants.AuditRecord
	for rows.Next() {
		var x tenants.AuditRecord
		var tenant *uuid.UUID
		if err := rows.Scan(&x.ID, &x.At, &x.ActorKind, &x.ActorID, &x.ActorOrg, &x.ActorOrgKind, &x.ActorName, &x.Action,
			&x.Resource, &x.Result, &x.Status, &x.IP, &x.RequestID, &x.Detail, &tenant); err != nil {
			t.Fatal(err)
		}
		if tenant != nil {
			x.Detail["(tenant)"] = tenant.String()
		}
		out = append(out, x)
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	return out
}

// oneRow returns the single audit row of the request r answered.
func oneRow(t *testing.T, s *testServer, what string, r *response) tenants.AuditRecord {
	t.Helper()
	rows := auditRowsByRequest(t, s, r.header.Get("X-Request-Id"))
	if len(rows) != 1 {
		t.Fatalf("%s: %d audit rows, want 1: %+v", what, len(rows), rows)
	}
	return rows[0]
}

func emailHash(email string) string {
	h := sha256.Sum256([]byte(email))
	return hex.EncodeToString(h[:16])
}

// Signing in, out and accepting an invitation are audited on the enterprise
// concerned, with the client address and request id; the enterprise's owner
// sees its members' sign-ins and no one else's; an unknown account leaves
// no email behind.
func TestSignInsAreAudited(t *testing.T) {
	t.Parallel()
	s := newServer(t, nil, "")
	a, b := s.env.NewTenant(t), s.env.NewTenant(t)
	owner := s.session(t, s.env.Member(t, a.ID, "owner"))
	ownerB := s.session(t, s.env.Member(t, b.ID, "owner"))
	m, mB := s.env.Member(t, a.ID, "viewer"), s.env.Member(t, b.ID, "viewer")

	// A member's sign-in, failed and successful, and sign-out.
	r := s.do(t, "POST", "/api/v1/auth/login", "", loginBody(m.Email, "not the password"))
	failed := oneRow(t, s, "failed login", r)
	if failed.Action != "auth.login" || failed.Result != "denied" || failed.Status != 401 || failed.ActorKind != "user" ||
		failed.ActorID == nil || *failed.ActorID != m.ID || failed.ActorOrg == nil || *failed.ActorOrg != a.ID ||
		failed.IP != "192.0.2.1" || failed.Detail["reason"] != "wrong_password" || failed.Detail["email_hash"] != emailHash(m.Email) ||
		failed.Detail["(tenant)"] != a.ID.String() {
		t.Errorf("failed login row = %+v", failed)
	}
	r = s.do(t, "POST", "/api/v1/auth/login", "", loginBody(m.Email, m.Password))
	sess := decode[tenants.SessionCreated](t, "login", r, http.StatusOK)
	ok := oneRow(t, s, "login", r)
	if ok.Action != "auth.login" || ok.Result != "ok" || ok.Status != 200 || ok.ActorID == nil || *ok.ActorID != m.ID ||
		ok.ActorOrgKind != "enterprise" || ok.ActorName != m.Name || ok.IP != "192.0.2.1" || ok.Detail["(tenant)"] != a.ID.String() ||
		ok.Detail["email_hash"] != nil {
		t.Errorf("login row = %+v", ok)
	}
	r = s.do(t, "POST", "/api/v1/auth/logout", bearer(sess.Token), "")
	if out := oneRow(t, s, "logout", r); out.Action != "auth.logout" || out.Result != "ok" || out.ActorID == nil || *out.ActorID != m.ID ||
		out.Detail["(tenant)"] != a.ID.String() {
		t.Errorf("logout row = %+v", out)
	}

	// An unknown account: no user, the email's hash, never the email.
	ghost := "ghost-" + uuid.NewString() + "@test.example"
	r = s.do(t, "POST", "/api/v1/auth/login", "", loginBody(ghost, "whatever it is"))
	unknown := oneRow(t, s, "unknown account", r)
	if unknown.ActorKind != "anonymous" || unknown.ActorID != nil || unknown.ActorOrg != nil || unknown.Result != "denied" ||
		unknown.Status != 401 || unknown.Detail["reason"] != "unknown_account" || unknown.Detail["email_hash"] != emailHash(ghost) ||
		unknown.Detail["(tenant)"] != nil {
		t.Errorf("unknown account row = %+v", unknown)
	}
	var leaked int
	if err := s.env.DB.System.QueryRow(context.Background(), `SELECT count(*) FROM audit_log
		WHERE strpos(detail::text || resource || actor_name || action, $1) > 0`, ghost).Scan(&leaked); err != nil || leaked != 0 {
		t.Errorf("the unknown email is in %d audit rows (%v)", leaked, err)
	}
	// Malformed requests are no attempt on an account.
	if r := s.do(t, "POST", "/api/v1/auth/login", "", `{"email":"not-an-email","password":"x"}`); len(auditRowsByRequest(t, s, r.header.Get("X-Request-Id"))) != 0 {
		t.Error("a malformed login was recorded")
	}

	// B's member signs in too.
	s.do(t, "POST", "/api/v1/auth/login", "", loginBody(mB.Email, mB.Password))
	s.do(t, "POST", "/api/v1/auth/login", "", loginBody(mB.Email, "wrong again!"))

	// Accepting an invitation to A, then replaying its token.
	email := "new-" + uuid.NewString()[:8] + "@test.example"
	inv := decode[tenants.InvitationCreated](t, "invite", s.do(t, "POST", "/api/v1/invitations", owner, `{"email":"`+email+`","role":"engineer"}`), 201)
	body := fmt.Sprintf(`{"token":%q,"name":"Newcomer","password":"a long enough password"}`, inv.Token)
	r = s.do(t, "POST", "/api/v1/auth/accept-invitation", "", body)
	joined := decode[tenants.SessionCreated](t, "accept", r, 200)
	if row := oneRow(t, s, "accept", r); row.Action != "auth.accept_invitation" || row.Result != "ok" || row.ActorID == nil ||
		*row.ActorID != joined.User.ID || row.Detail["(tenant)"] != a.ID.String() || row.Detail["new_account"] != true ||
		row.Detail["invitation"] != inv.Invitation.ID.String() || row.Detail["role"] != "engineer" {
		t.Errorf("accept row = %+v", row)
	}
	r = s.do(t, "POST", "/api/v1/auth/accept-invitation", "", body)
	if row := oneRow(t, s, "replayed invitation", r); row.Result != "error" || row.Status != 400 || row.ActorKind != "anonymous" ||
		row.Detail["reason"] != "unknown_invitation" || row.Detail["(tenant)"] != nil {
		t.Errorf("replayed invitation row = %+v", row)
	}

	// Each owner sees its own members' sign-ins, and no one else's.
	actors := func(auth, action string) map[uuid.UUID][]string {
		out := map[uuid.UUID][]string{}
		for _, x := range auditRows(t, s, auth, "action="+action+"&limit=1000") {
			if x.ActorID == nil {
				t.Errorf("%s without a user on an enterprise's log: %+v", action, x)
				continue
			}
			out[*x.ActorID] = append(out[*x.ActorID], x.Result)
		}
		return out
	}
	logins := actors(owner, "auth.login")
	if !slices.Equal(logins[m.ID], []string{"ok", "denied"}) {
		t.Errorf("A's owner sees %v of its member's logins, want ok and denied", logins[m.ID])
	}
	if _, seen := logins[mB.ID]; seen {
		t.Error("A's owner sees B's member's logins")
	}
	if got := actors(owner, "auth.logout"); len(got[m.ID]) != 1 {
		t.Errorf("A's logouts = %v", got)
	}
	if got := actors(owner, "auth.accept_invitation"); len(got[joined.User.ID]) != 1 {
		t.Errorf("A's accepted invitations = %v", got)
	}
	loginsB := actors(ownerB, "auth.login")
	if !slices.Equal(loginsB[mB.ID], []string{"denied", "ok"}) {
		t.Errorf("B's owner sees %v of its member's logins", loginsB[mB.ID])
	}
	if _, seen := loginsB[m.ID]; seen {
		t.Error("B's owner sees A's member's logins")
	}
}
