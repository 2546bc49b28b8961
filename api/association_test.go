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

	"github.com/nxcloud/nxcloud/tenants"
)

// The association gets no raw rows: an analyst, signed in through the real
// onboarding (the operator creates the association, the analyst accepts the
// invitation), asks every tenant route of the route table for tenant A's
// resources, with and without naming A, and gets 403 or 404 and nothing of
// A's; only the routes its role holds (self:read, benchmarks:read: about
// itself, or sector aggregates) answer, and they show nothing of A's either.
func TestAssociationGetsNoRawRows(t *testing.T) {
	t.Parallel()
	const token = "operator-token-association"
	s := newServer(t, nil, token)
	env := s.env
	a := env.NewTenant(t)
	keyA := bearer(a.APIKey)
	devA, _ := env.Device(t, a, "asc-mill-1", "jet-mill")
	d50 := metricOf(t, env, a, "jet-mill", "d50_um")
	seedPoints(t, env, a.ID, devA.ID, d50.ID, []time.Time{time.Now().Add(-time.Minute)}, []float64{4.2})
	seedDeadLetter(t, env, a.ID, &devA.ID, "v1/"+a.Slug+"/"+devA.Key+"/telemetry", "unknown_metric")
	ownerA := env.Member(t, a.ID, "owner")
	grantA := decode[tenants.Grant](t, "grant", s.do(t, "POST", "/api/v1/grants", keyA,
		grantBody(env.Org(t, tenants.OrgContractor), time.Now().Add(time.Hour), tenants.PermDevicesRead)), 201)
	apiKeyA := decode[tenants.APIKeyCreated](t, "key", s.do(t, "POST", "/api/v1/api-keys", keyA, keyBody("asc", "devices:read")), 201)
	invA := decode[tenants.InvitationCreated](t, "invitation", s.do(t, "POST", "/api/v1/invitations", keyA,
		`{"email":"asc-invitee-`+uuid.NewString()[:8]+`@test.example","role":"viewer"}`), 201)
	markers := map[string]string{
		"A's id": a.ID.String(), "A's slug": a.Slug, "A's device id": devA.ID.String(), "A's device key": devA.Key,
		"A's owner": ownerA.ID.String(), "A's owner's email": ownerA.Email, "A's grant": grantA.ID.String(),
		"A's API key id": apiKeyA.APIKey.ID.String(), "A's API key prefix": apiKeyA.APIKey.Prefix, "A's metric": d50.Key,
		"A's invitation": invA.Invitation.ID.String(), "A's invitee": invA.Invitation.Email,
	}
	fills := map[string]string{"device": devA.Key, "grant": grantA.ID.String(), "key": apiKeyA.APIKey.ID.String(),
		"user": ownerA.ID.String(), "invitation": invA.Invitation.ID.String()}
	// The N apps' records of A, seeded as for the isolation suite.
	for _, seed := range appIsolationSeeds {
		x := seed(t, s, a, keyA)
		for k, v := range x.Fills {
			if len(v) > 0 && fills[k] == "" {
				fills[k] = v[0]
			}
		}
		for k, v := range x.Markers {
			markers[k] = v
		}
	}

	body := fmt.Sprintf(`{"kind":"association","name":"Magnet makers' association","admin_email":"analyst-%s@test.example"}`, uuid.NewString()[:8])
	asc := decode[tenants.OrgCreated](t, "association", s.do(t, "POST", "/api/v1/operator/orgs", bearer(token), body), http.StatusCreated)
	joined := s.accept(t, asc.Token, "Analyst")
	if joined.Role != "analyst" || joined.Org.Kind != tenants.OrgAssociation {
		t.Fatalf("joined = %+v", joined)
	}
	analyst := bearer(joined.Token)
	holds := tenants.Permissions(tenants.Principal{Kind: tenants.KindUser, OrgKind: tenants.OrgAssociation, Role: "analyst"})

	var checked int
	for _, rt := range s.routes() {
		if !isTenantRoute(rt) && !isOperatorRoute(rt) {
			continue
		}
		perm, _ := s.srv.Permission(rt.Method, rt.Path)
		target := fill(rt.Path, func(p string) string {
			switch {
			case p == "tenant":
				return a.Slug
			case fills[p] != "":
				return fills[p]
			case rt.Method != http.MethodGet:
				// Writes are refused on the permission before any lookup;
				// an id of A's is not needed to prove it.
				return "1"
			}
			t.Errorf("%s %s: the test cannot fill :%s; teach it (fills) which of A's values to use", rt.Method, rt.Path, p)
			return "x"
		})
		if rt.Path == "/api/v1/devices/:device/series" {
			target += "?metric=" + d50.Key
		}
		for _, named := range []string{"", a.Slug, a.ID.String()} {
			checked++
			what := rt.Method + " " + target + " as the analyst"
			if named != "" {
				what += " naming A"
			}
			r := s.as(t, rt.Method, target, analyst, named, bodyFor(rt.Method))
			switch {
			case r.status == http.StatusForbidden || r.status == http.StatusNotFound:
				problemOf(t, what, r)
			case slices.Contains(holds, perm) && !isOperatorRoute(rt) && r.status == http.StatusOK:
				// About the analyst itself, or an aggregate: allowed, but
				// nothing of A's may show.
			default:
				t.Errorf("%s = %v, want 403 or 404", what, r)
			}
			for name, v := range markers {
				if bytes.Contains(r.body, []byte(v)) && !strings.Contains(target, v) && !strings.Contains(target, url.PathEscape(v)) {
					t.Errorf("%s shows %s: %s", what, name, r.body)
				}
			}
		}
	}
	t.Logf("%d requests checked", checked)
	if checked < 30 {
		t.Errorf("only %d requests checked", checked)
	}
	// The analyst's attempts changed nothing of A's.
	if got := decode[tenants.APIKey](t, "A's key", s.do(t, "GET", "/api/v1/api-keys/"+apiKeyA.APIKey.ID.String(), keyA, ""), 200); got.Status != "active" {
		t.Errorf("A's key after the analyst's attempts: %+v", got)
	}
	if got := decode[tenants.Grant](t, "A's grant", s.do(t, "GET", "/api/v1/grants/"+grantA.ID.String(), keyA, ""), 200); got.Status != "active" {
		t.Errorf("A's grant after the analyst's attempts: %+v", got)
	}
}

// A contractor's member reads who it is without naming a tenant; every
// other tenant route still wants a tenant with a live grant.
func TestContractorReadsMeWithoutTenant(t *testing.T) {
	t.Parallel()
	s := newServer(t, nil, "")
	a := s.env.NewTenant(t)
	org, tok := contractorOrg(t, s.env)
	c := bearer(tok)

	me := decode[tenants.Me](t, "me", s.do(t, "GET", "/api/v1/me", c, ""), 200)
	if me.Kind != "user" || me.Org.ID != org || me.Org.Kind != tenants.OrgContractor || me.Role != "member" || me.TenantID != nil ||
		!slices.Equal(me.Permissions, []string{tenants.PermSelfRead}) || me.User == nil {
		t.Errorf("contractor's me = %+v", me)
	}
	var checked int
	for _, rt := range s.routes() {
		perm, _ := s.srv.Permission(rt.Method, rt.Path)
		if !isTenantRoute(rt) || perm == tenants.PermSelfRead {
			continue
		}
		checked++
		target := fill(rt.Path, func(string) string { return uuid.NewString() })
		wantProblem(t, rt.Method+" "+rt.Path+" without a tenant", s.as(t, rt.Method, target, c, "", bodyFor(rt.Method)), 403, "forbidden", "")
	}
	if checked < 10 {
		t.Errorf("only %d routes checked", checked)
	}
	// Naming a tenant on /me still takes a live grant from it.
	wantProblem(t, "me naming a tenant without a grant", s.as(t, "GET", "/api/v1/me", c, a.Slug, ""), 403, "forbidden", "")
	s.do(t, "POST", "/api/v1/grants", bearer(a.APIKey), grantBody(org, time.Now().Add(time.Hour), tenants.PermDevicesRead))
	r := s.as(t, "GET", "/api/v1/me", c, a.Slug, "")
	named := decode[tenants.Me](t, "me naming A", r, 200)
	if named.TenantID == nil || *named.TenantID != a.ID || !slices.Contains(named.Permissions, tenants.PermDevicesRead) {
		t.Errorf("me naming A = %+v", named)
	}
	// Still nothing else without naming it.
	wantProblem(t, "devices without a tenant", s.do(t, "GET", "/api/v1/devices", c, ""), 403, "forbidden", "")
}
