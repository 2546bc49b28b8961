package main

import (
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/nxcloud/nxcloud/tenants"
	"github.com/nxcloud/nxcloud/tenants/tenanttest"
)

// do sends one request to the platform's HTTP listener and returns the status.
func do(t *testing.T, p *platform, method, auth, path, body string) int {
	t.Helper()
	req, err := http.NewRequest(method, "http://"+p.httpLn.Addr().String()+path, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Authorization", "Bearer "+auth)
	if body != "" {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	_, _ = io.Copy(io.Discard, resp.Body)
	return resp.StatusCode
}

// within5s polls f until it returns "", failing after 5 s (the bound issue 3
// sets for a suspension to take effect).
func within5s(t *testing.T, what string, f func() string) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		msg := f()
		if msg == "" {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s, not within 5 s: %s", what, msg)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// The operator suspends an enterprise through the API: its connected device
// is cut off by the broker and cannot reconnect, its API key and its
// member's session are refused; reactivated, all of them work again.
func TestSuspendedEnterprise(t *testing.T) {
	p := startTestPlatform(t)
	env := &tenanttest.Env{Tenants: p.tenants}
	tn := env.NewTenant(t)
	_, secret := env.Device(t, tn, "press-1", "jet-mill")
	user := tenants.MQTTUsername("press-1", tn.Slug)
	session := env.Session(t, env.Member(t, tn.ID, "viewer"), tn.ID)
	other := env.NewTenant(t)
	_, otherSecret := env.Device(t, other, "press-1", "jet-mill")
	op := p.cfg.OperatorToken

	c, err := connect(t, p, user, secret)
	if err != nil {
		t.Fatal(err)
	}
	bystander, err := connect(t, p, tenants.MQTTUsername("press-1", other.Slug), otherSecret)
	if err != nil {
		t.Fatal(err)
	}
	if code := do(t, p, "PATCH", op, "/api/v1/operator/enterprises/"+tn.Slug, `{"status":"suspended"}`); code != 200 {
		t.Fatalf("suspend: %d", code)
	}
	within5s(t, "suspension", func() string {
		var open []string
		if c.IsConnectionOpen() {
			open = append(open, "the connected device is still connected")
		}
		if code := getJSON(t, p, tn.APIKey, "/api/v1/devices", nil); code != 401 {
			open = append(open, "the API key answers "+http.StatusText(code))
		}
		if code := getJSON(t, p, session, "/api/v1/devices", nil); code != 401 {
			open = append(open, "the session answers "+http.StatusText(code))
		}
		return strings.Join(open, "; ")
	})
	if _, err := connect(t, p, user, secret); err == nil {
		t.Error("a device of a suspended enterprise reconnected")
	}
	if !bystander.IsConnectionOpen() {
		t.Error("another enterprise's device was disconnected")
	}

	if code := do(t, p, "PATCH", op, "/api/v1/operator/enterprises/"+tn.ID.String(), `{"status":"active"}`); code != 200 {
		t.Fatalf("reactivate: %d", code)
	}
	within5s(t, "reactivation", func() string {
		var refused []string
		if code := getJSON(t, p, tn.APIKey, "/api/v1/devices", nil); code != 200 {
			refused = append(refused, "the API key answers "+http.StatusText(code))
		}
		if code := getJSON(t, p, session, "/api/v1/devices", nil); code != 200 {
			refused = append(refused, "the session answers "+http.StatusText(code))
		}
		if _, err := connect(t, p, user, secret); err != nil {
			refused = append(refused, "the device cannot connect: "+err.Error())
		}
		return strings.Join(refused, "; ")
	})
}
