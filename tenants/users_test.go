package tenants_test

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"

	"github.com/google/uuid"

	"github.com/nxcloud/nxcloud/apps"
	"github.com/nxcloud/nxcloud/tenants"
	"github.com/nxcloud/nxcloud/tenants/tenanttest"
)

func wantCode(t *testing.T, what string, err error, code string) {
	t.Helper()
	if apps.Code(err) != code {
		t.Errorf("%s: %v, want %s", what, err, code)
	}
}

func freshEmail(what string) string {
	return fmt.Sprintf("%s-%s@test.example", what, uuid.NewString()[:12])
}

func TestInvitationFlow(t *testing.T) {
	t.Parallel()
	env := tenanttest.New(t)
	ctx := context.Background()
	a, b := env.NewTenant(t), env.NewTenant(t)
	owner := principalOf(t, env, env.Member(t, a.ID, "owner"), a.ID)

	email := freshEmail("invitee")
	inv, err := env.Tenants.Invite(ctx, owner, tenants.InvitationInput{Email: "  " + strings.ToUpper(email), Role: "engineer"})
	if err != nil {
		t.Fatal(err)
	}
	if inv.Invitation.Email != email || inv.Invitation.Role != "engineer" || !strings.HasPrefix(inv.Token, "nxi_") ||
		inv.AcceptURL != "/invitations/accept#token="+inv.Token {
		t.Errorf("invitation = %+v", inv)
	}
	// Accepting needs a valid name and password for a new account.
	for _, c := range []struct {
		in    tenants.AcceptInput
		field string
	}{
		{tenants.AcceptInput{Token: inv.Token, Name: "Ina", Password: "short"}, "password"},
		{tenants.AcceptInput{Token: inv.Token, Name: "Ina", Password: strings.Repeat("p", 257)}, "password"},
		{tenants.AcceptInput{Token: inv.Token, Password: "a long enough password"}, "name"},
		{tenants.AcceptInput{Token: "nxi_x", Name: "Ina", Password: "a long enough password"}, "token"},
		{tenants.AcceptInput{Token: "nxi_" + strings.Repeat("A", 43), Name: "Ina", Password: "a long enough password"}, "token"},
	} {
		_, err := env.Tenants.AcceptInvitation(ctx, c.in, tenants.Client{})
		var ae *apps.Error
		if !errors.As(err, &ae) || ae.Code != apps.Invalid || ae.Field != c.field {
			t.Errorf("accept %+v: %v, want invalid %s", c.in, err, c.field)
		}
	}
	s, err := env.Tenants.AcceptInvitation(ctx, tenants.AcceptInput{Token: inv.Token, Name: "Ina", Password: "a long enough password"}, tenants.Client{})
	if err != nil {
		t.Fatal(err)
	}
	if s.User.Email != email || s.User.Name != "Ina" || s.Org.ID != a.ID || s.Role != "engineer" {
		t.Errorf("session = %+v", s)
	}
	if p, err := env.Tenants.AuthenticateSession(ctx, s.Token); err != nil || p.TenantID != a.ID || p.Role != "engineer" {
		t.Errorf("the new session: %+v, %v", p, err)
	}
	// Single use.
	_, err = env.Tenants.AcceptInvitation(ctx, tenants.AcceptInput{Token: inv.Token, Name: "Ina", Password: "a long enough password"}, tenants.Client{})
	wantCode(t, "accept twice", err, apps.Invalid)
	// The new user logs in with its password.
	if _, err := env.Tenants.Login(ctx, tenants.LoginInput{Email: email, Password: "a long enough password"}, tenants.Client{}); err != nil {
		t.Errorf("login: %v", err)
	}
	// Already a member: no second invitation.
	_, err = env.Tenants.Invite(ctx, owner, tenants.InvitationInput{Email: email, Role: "viewer"})
	wantCode(t, "invite a member", err, apps.Conflict)

	// An existing account joins a second enterprise with its password.
	ownerB := principalOf(t, env, env.Member(t, b.ID, "owner"), b.ID)
	invB, err := env.Tenants.Invite(ctx, ownerB, tenants.InvitationInput{Email: email, Role: "viewer"})
	if err != nil {
		t.Fatal(err)
	}
	_, err = env.Tenants.AcceptInvitation(ctx, tenants.AcceptInput{Token: invB.Token, Password: "the wrong password"}, tenants.Client{})
	wantCode(t, "accept with a wrong password", err, apps.Unauthorized)
	s2, err := env.Tenants.AcceptInvitation(ctx, tenants.AcceptInput{Token: invB.Token, Password: "a long enough password"}, tenants.Client{})
	if err != nil || s2.Org.ID != b.ID || s2.Role != "viewer" || s2.User.Name != "Ina" {
		t.Fatalf("accept as an existing user: %+v, %v", s2, err)
	}
	// Now in two organisations, the login names one.
	_, err = env.Tenants.Login(ctx, tenants.LoginInput{Email: email, Password: "a long enough password"}, tenants.Client{})
	var ae *apps.Error
	if !errors.As(err, &ae) || ae.Field != "org" || !strings.Contains(ae.Message, a.ID.String()) || !strings.Contains(ae.Message, b.ID.String()) {
		t.Errorf("login without org: %v, want invalid org listing both", err)
	}
	sb, err := env.Tenants.Login(ctx, tenants.LoginInput{Email: email, Password: "a long enough password", Org: b.ID.String()}, tenants.Client{})
	if err != nil || sb.Org.ID != b.ID || sb.Role != "viewer" {
		t.Errorf("login to B: %+v, %v", sb, err)
	}

	// An expired invitation.
	old, err := env.Tenants.Invite(ctx, owner, tenants.InvitationInput{Email: freshEmail("late"), Role: "viewer"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := env.DB.System.Exec(ctx, `UPDATE invitations SET expires_at = now() - interval '1 second' WHERE id = $1`, old.Invitation.ID); err != nil {
		t.Fatal(err)
	}
	_, err = env.Tenants.AcceptInvitation(ctx, tenants.AcceptInput{Token: old.Token, Name: "Late", Password: "a long enough password"}, tenants.Client{})
	wantCode(t, "expired invitation", err, apps.Invalid)
	// Only the hash of a token is stored.
	var n int
	if err := env.DB.System.QueryRow(ctx, `SELECT count(*) FROM invitations WHERE token_hash = sha256($1::bytea)`, []byte(old.Token)).Scan(&n); err != nil || n != 1 {
		t.Errorf("invitation by the token's hash: %d, %v", n, err)
	}
}

func TestRoleRules(t *testing.T) {
	t.Parallel()
	env := tenanttest.New(t)
	ctx := context.Background()
	a, b := env.NewTenant(t), env.NewTenant(t)
	ownerM := env.Member(t, a.ID, "owner")
	owner := principalOf(t, env, ownerM, a.ID)
	admin := principalOf(t, env, env.Member(t, a.ID, "admin"), a.ID)
	key, err := env.Tenants.AuthenticateAPIKey(ctx, a.APIKey)
	if err != nil {
		t.Fatal(err)
	}
	viewer := env.Member(t, a.ID, "viewer")

	// Invitations: an admin or a key invites anyone but an owner.
	for name, p := range map[string]tenants.Principal{"admin": admin, "API key": key} {
		_, err := env.Tenants.Invite(ctx, p, tenants.InvitationInput{Email: freshEmail("o"), Role: "owner"})
		wantCode(t, name+" invites an owner", err, apps.Forbidden)
		if _, err := env.Tenants.Invite(ctx, p, tenants.InvitationInput{Email: freshEmail("e"), Role: "admin"}); err != nil {
			t.Errorf("%s invites an admin: %v", name, err)
		}
	}
	if _, err := env.Tenants.Invite(ctx, owner, tenants.InvitationInput{Email: freshEmail("o"), Role: "owner"}); err != nil {
		t.Errorf("owner invites an owner: %v", err)
	}
	_, err = env.Tenants.Invite(ctx, owner, tenants.InvitationInput{Email: freshEmail("x"), Role: "god"})
	wantCode(t, "unknown role", err, apps.Invalid)
	_, err = env.Tenants.Invite(ctx, owner, tenants.InvitationInput{Email: "not an email", Role: "viewer"})
	wantCode(t, "bad email", err, apps.Invalid)
	_, err = env.Tenants.Invite(ctx, tenants.Principal{Kind: tenants.KindUser, OrgKind: tenants.OrgContractor, TenantID: a.ID, Role: "member"},
		tenants.InvitationInput{Email: freshEmail("c"), Role: "viewer"})
	wantCode(t, "a contractor invites", err, apps.Forbidden)

	// Roles: an admin neither makes nor touches owners; the last owner stays.
	_, err = env.Tenants.SetRole(ctx, admin, viewer.ID.String(), tenants.RoleInput{Role: "owner"})
	wantCode(t, "admin makes an owner", err, apps.Forbidden)
	_, err = env.Tenants.SetRole(ctx, admin, ownerM.ID.String(), tenants.RoleInput{Role: "viewer"})
	wantCode(t, "admin demotes the owner", err, apps.Forbidden)
	_, err = env.Tenants.RemoveMember(ctx, admin, ownerM.ID.String())
	wantCode(t, "admin removes the owner", err, apps.Forbidden)
	_, err = env.Tenants.SetRole(ctx, owner, ownerM.ID.String(), tenants.RoleInput{Role: "admin"})
	wantCode(t, "the last owner demotes itself", err, apps.Conflict)
	_, err = env.Tenants.RemoveMember(ctx, owner, ownerM.ID.String())
	wantCode(t, "the last owner leaves", err, apps.Conflict)
	if m, err := env.Tenants.SetRole(ctx, admin, viewer.ID.String(), tenants.RoleInput{Role: "engineer"}); err != nil || m.Role != "engineer" || m.ID != viewer.ID {
		t.Errorf("admin promotes a viewer: %+v, %v", m, err)
	}
	m, err := env.Tenants.SetRole(ctx, owner, viewer.ID.String(), tenants.RoleInput{Role: "owner"})
	if err != nil || m.Role != "owner" {
		t.Fatalf("owner makes an owner: %+v, %v", m, err)
	}
	// With two owners, one may step down.
	if _, err := env.Tenants.SetRole(ctx, owner, ownerM.ID.String(), tenants.RoleInput{Role: "admin"}); err != nil {
		t.Errorf("an owner steps down: %v", err)
	}
	_, err = env.Tenants.SetRole(ctx, owner, viewer.ID.String(), tenants.RoleInput{Role: "nope"})
	wantCode(t, "unknown role", err, apps.Invalid)

	// Another enterprise's user is not found, by any reference.
	ownerB := principalOf(t, env, env.Member(t, b.ID, "owner"), b.ID)
	for _, ref := range []string{viewer.ID.String(), strings.ToUpper(viewer.ID.String()), viewer.Email, "x", ""} {
		_, err := env.Tenants.SetRole(ctx, ownerB, ref, tenants.RoleInput{Role: "viewer"})
		wantCode(t, "B changes A's user "+ref, err, apps.NotFound)
		_, err = env.Tenants.RemoveMember(ctx, ownerB, ref)
		wantCode(t, "B removes A's user "+ref, err, apps.NotFound)
	}
	members, err := env.Tenants.Members(ctx, ownerB)
	if err != nil || len(members) != 1 {
		t.Errorf("B's members: %+v, %v", members, err)
	}
	members, err = env.Tenants.Members(ctx, owner)
	if err != nil || !slices.ContainsFunc(members, func(x tenants.Member) bool { return x.ID == viewer.ID && x.Role == "owner" }) {
		t.Errorf("A's members: %+v, %v", members, err)
	}
}

func TestOnboardingWithOwner(t *testing.T) {
	t.Parallel()
	env := tenanttest.New(t)
	ctx := context.Background()
	slug := "onb-" + strings.ReplaceAll(uuid.NewString(), "-", "")[:12]
	email := freshEmail("owner")
	_, _, err := env.Tenants.CreateEnterprise(ctx, tenants.EnterpriseInput{Slug: slug, Name: "Onboarded", Sector: "magnetic-materials", OwnerEmail: email})
	wantCode(t, "CreateEnterprise with an owner", err, apps.Invalid)
	_, err = env.Tenants.CreateEnterpriseWithOwner(ctx, tenants.EnterpriseInput{Slug: slug, Name: "Onboarded", Sector: "magnetic-materials", OwnerEmail: "nope"})
	wantCode(t, "bad owner email", err, apps.Invalid)
	o, err := env.Tenants.CreateEnterpriseWithOwner(ctx, tenants.EnterpriseInput{Slug: slug, Name: "Onboarded", Sector: "magnetic-materials", OwnerEmail: email})
	if err != nil {
		t.Fatal(err)
	}
	if o.Tenant.Slug != slug || !strings.HasPrefix(o.APIKey, "nxk_") || !strings.HasPrefix(o.OwnerInvitation, "nxi_") {
		t.Fatalf("onboarded = %+v", o)
	}
	var kind string
	var tenant uuid.UUID
	if err := env.DB.System.QueryRow(ctx, `SELECT kind, tenant_id FROM orgs WHERE id = $1`, o.Tenant.ID).Scan(&kind, &tenant); err != nil ||
		kind != tenants.OrgEnterprise || tenant != o.Tenant.ID {
		t.Errorf("the enterprise's organisation: %s %s, %v", kind, tenant, err)
	}
	s, err := env.Tenants.AcceptInvitation(ctx, tenants.AcceptInput{Token: o.OwnerInvitation, Name: "Owner", Password: "owner's password"}, tenants.Client{})
	if err != nil || s.Role != "owner" || s.Org.ID != o.Tenant.ID {
		t.Fatalf("accept the owner invitation: %+v, %v", s, err)
	}
	me, err := env.Tenants.Me(ctx, principalOf(t, env, tenanttest.Member{UserRef: s.User, Password: "owner's password"}, o.Tenant.ID))
	if err != nil || me.User == nil || me.User.Email != email || me.Org.ID != o.Tenant.ID || me.TenantID == nil || *me.TenantID != o.Tenant.ID ||
		!slices.Contains(me.Permissions, tenants.PermUsersWrite) || slices.Contains(me.Permissions, tenants.PermOperate) {
		t.Errorf("me = %+v, %v", me, err)
	}
	// A failed onboarding leaves nothing behind (the slug is still free).
	_, err = env.Tenants.CreateEnterpriseWithOwner(ctx, tenants.EnterpriseInput{Slug: slug, Name: "Again", Sector: "magnetic-materials", OwnerEmail: freshEmail("x")})
	wantCode(t, "slug taken", err, apps.Conflict)
}

func TestOperatorOrganisations(t *testing.T) {
	t.Parallel()
	env := tenanttest.New(t)
	ctx := context.Background()
	a := env.NewTenant(t)
	for _, c := range []struct{ kind, role string }{
		{tenants.OrgContractor, "member"}, {tenants.OrgAssociation, "analyst"}, {tenants.OrgOperator, "admin"},
	} {
		email := freshEmail(c.kind)
		o, err := env.Tenants.CreateOrg(ctx, tenants.Principal{Kind: tenants.KindOperator}, tenants.OrgInput{Kind: c.kind, Name: "Org " + email, AdminEmail: email})
		if err != nil {
			t.Fatal(err)
		}
		if o.Org.Kind != c.kind || o.Org.TenantID != nil || o.Invitation.Role != c.role || o.Invitation.Email != email {
			t.Errorf("%s: %+v", c.kind, o)
		}
		s, err := env.Tenants.AcceptInvitation(ctx, tenants.AcceptInput{Token: o.Token, Name: "First", Password: "first member's password"}, tenants.Client{})
		if err != nil || s.Role != c.role || s.Org.Kind != c.kind {
			t.Fatalf("%s: accept: %+v, %v", c.kind, s, err)
		}
		p, err := env.Tenants.AuthenticateSession(ctx, s.Token)
		if err != nil || p.OrgKind != c.kind || p.TenantID != uuid.Nil || p.OrgID != o.Org.ID {
			t.Fatalf("%s: principal %+v, %v", c.kind, p, err)
		}
		// Nobody outside an enterprise reads its rows by role alone.
		wantCode(t, c.kind+" reads devices", tenants.Authorize(p, tenants.PermDevicesRead), apps.Forbidden)
		if err := tenants.Authorize(p, tenants.PermSelfRead); err != nil {
			t.Errorf("%s: self:read: %v", c.kind, err)
		}
		if got := tenants.Authorize(p, tenants.PermOperate) == nil; got != (c.kind == tenants.OrgOperator) {
			t.Errorf("%s: platform:operate allowed = %v", c.kind, got)
		}
		me, err := env.Tenants.Me(ctx, p)
		if err != nil || me.Org.ID != o.Org.ID || me.TenantID != nil || me.Role != c.role {
			t.Errorf("%s: me = %+v, %v", c.kind, me, err)
		}
	}
	for _, in := range []tenants.OrgInput{
		{Kind: tenants.OrgEnterprise, Name: "E", AdminEmail: freshEmail("e")},
		{Kind: "guild", Name: "G", AdminEmail: freshEmail("g")},
		{Kind: tenants.OrgContractor, Name: "", AdminEmail: freshEmail("c")},
		{Kind: tenants.OrgContractor, Name: "C", AdminEmail: "nope"},
	} {
		_, err := env.Tenants.CreateOrg(ctx, tenants.Principal{Kind: tenants.KindOperator}, in)
		wantCode(t, fmt.Sprintf("create %+v", in), err, apps.Invalid)
	}
	all, err := env.Tenants.Orgs(ctx, "")
	if err != nil || !slices.ContainsFunc(all, func(o tenants.Org) bool { return o.ID == a.ID && o.Kind == tenants.OrgEnterprise }) {
		t.Errorf("orgs lack enterprise %s: %v", a.ID, err)
	}
	contractors, err := env.Tenants.Orgs(ctx, tenants.OrgContractor)
	if err != nil || slices.ContainsFunc(contractors, func(o tenants.Org) bool { return o.Kind != tenants.OrgContractor }) || len(contractors) == 0 {
		t.Errorf("contractors: %d, %v", len(contractors), err)
	}
	_, err = env.Tenants.Orgs(ctx, "guild")
	wantCode(t, "orgs of an unknown kind", err, apps.Invalid)
}

func TestSeedDemoOwner(t *testing.T) {
	env := tenanttest.New(t)
	ctx := context.Background()
	for range 2 {
		if _, err := env.Tenants.SeedDemo(ctx, "magnetic-materials"); err != nil {
			t.Fatal(err)
		}
	}
	s, err := env.Tenants.Login(ctx, tenants.LoginInput{Email: tenants.DemoOwnerEmail, Password: tenants.DemoOwnerPassword}, tenants.Client{})
	if err != nil || s.Role != "owner" || s.Org.Kind != tenants.OrgEnterprise {
		t.Fatalf("demo owner login: %+v, %v", s, err)
	}
}
