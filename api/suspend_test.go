package api_test

import (
	"context"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/nxcloud/nxcloud/apps"
	"github.com/nxcloud/nxcloud/tenants"
)

// within5s polls cond until it returns "", failing the test after 5 s (the
// bound issue 3 sets for revocations and suspensions to take effect).
func within5s(t *testing.T, what string, cond func() string) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		msg := cond()
		if msg == "" {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s, not within 5 s: %s", what, msg)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// The operator suspends an enterprise: its key, its members' sessions and
// its devices' MQTT logins are refused; reactivated, they work again. The
// MQTT broker itself is exercised in cmd/nxcloud (TestSuspendedEnterprise).
func TestOperatorSuspendsEnterprise(t *testing.T) {
	t.Parallel()
	const token = "operator-token-suspend"
	s := newServer(t, nil, token)
	op := bearer(token)
	a, b := s.env.NewTenant(t), s.env.NewTenant(t)
	member := s.session(t, s.env.Member(t, a.ID, "engineer"))
	ownerB := s.session(t, s.env.Member(t, b.ID, "owner"))
	d, secret := s.env.Device(t, a, "press-1", "jet-mill")
	mqttUser := tenants.MQTTUsername(d.Key, a.Slug)
	ctx := context.Background()

	// state says which of A's credentials are refused ("" when all are as
	// want says).
	state := func(wantRefused bool) string {
		var wrong []string
		for name, auth := range map[string]string{"API key": bearer(a.APIKey), "member's session": member} {
			r := s.do(t, "GET", "/api/v1/devices", auth, "")
			if refused := r.status == http.StatusUnauthorized; refused != wantRefused {
				wrong = append(wrong, name+" "+r.String())
			} else if refused {
				wantProblem(t, name, r, 401, apps.Unauthorized, "")
			}
		}
		_, err := s.env.Tenants.Authenticate(ctx, mqttUser, []byte(secret))
		if refused := err != nil; refused != wantRefused {
			wrong = append(wrong, "device login: "+apps.Code(err))
		}
		return strings.Join(wrong, "; ")
	}
	if msg := state(false); msg != "" {
		t.Fatalf("before suspension: %s", msg)
	}

	got := decode[tenants.Tenant](t, "suspend", s.do(t, "PATCH", "/api/v1/operator/enterprises/"+a.Slug, op, `{"status":"suspended"}`), 200)
	if got.ID != a.ID || got.Status != "suspended" {
		t.Errorf("suspended = %+v", got)
	}
	within5s(t, "the suspended enterprise's credentials refused", func() string { return state(true) })
	wantProblem(t, "a member signs in", s.do(t, "POST", "/api/v1/auth/login", "", loginBody(s.env.Member(t, a.ID, "viewer").Email, "x")), 401, apps.Unauthorized, "")
	if got := decode[tenants.Tenant](t, "operator view", s.do(t, "GET", "/api/v1/operator/enterprises/"+a.Slug, op, ""), 200); got.Status != "suspended" {
		t.Errorf("the operator sees %+v", got)
	}
	// Another enterprise goes on.
	if r := s.do(t, "GET", "/api/v1/devices", ownerB, ""); r.status != 200 {
		t.Errorf("B during A's suspension: %v", r)
	}

	// Reactivated (by id): everything works again, nothing was revoked.
	got = decode[tenants.Tenant](t, "reactivate", s.do(t, "PATCH", "/api/v1/operator/enterprises/"+a.ID.String(), op, `{"status":"active"}`), 200)
	if got.Status != "active" {
		t.Errorf("reactivated = %+v", got)
	}
	within5s(t, "the reactivated enterprise's credentials admitted", func() string { return state(false) })

	for _, c := range []struct{ name, body, field string }{
		{"unknown status", `{"status":"paused"}`, "status"},
		{"upper case", `{"status":"SUSPENDED"}`, "status"},
		{"empty", `{}`, "status"},
		{"device status", `{"status":"disabled"}`, "status"},
		{"extra field", `{"status":"active","name":"x"}`, "name"},
	} {
		wantProblem(t, "set status, "+c.name, s.do(t, "PATCH", "/api/v1/operator/enterprises/"+a.Slug, op, c.body), 400, apps.Invalid, c.field)
	}
	for _, ref := range []string{"no-such-enterprise", "00000000-0000-0000-0000-000000000000", "%00"} {
		wantProblem(t, "set status of "+ref, s.do(t, "PATCH", "/api/v1/operator/enterprises/"+ref, op, `{"status":"suspended"}`), 404, apps.NotFound, "")
	}
	// Only the operator sets it.
	for name, auth := range map[string]string{"the enterprise's key": bearer(a.APIKey), "its member": member} {
		r := s.do(t, "PATCH", "/api/v1/operator/enterprises/"+a.Slug, auth, `{"status":"suspended"}`)
		if r.status != 401 && r.status != 403 {
			t.Errorf("%s suspends its enterprise: %v", name, r)
		}
	}

	// The enterprise sees both changes in its audit log.
	rows := auditRows(t, s, bearer(a.APIKey), "action=enterprise.status")
	if len(rows) != 2 || rows[0].Detail["status"] != "active" || rows[0].Detail["previous"] != "suspended" ||
		rows[1].Detail["status"] != "suspended" || rows[1].ActorKind != "operator" || rows[1].Status != 200 {
		t.Errorf("enterprise.status rows = %+v", rows)
	}
}
