package tenants_test

import (
	"context"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/nxcloud/nxcloud/apps"
	"github.com/nxcloud/nxcloud/tenants"
	"github.com/nxcloud/nxcloud/tenants/tenanttest"
)

func TestPendingInvitationsAndRevocation(t *testing.T) {
	t.Parallel()
	env := tenanttest.New(t)
	ctx := context.Background()
	a, b := env.NewTenant(t), env.NewTenant(t)
	owner := principalOf(t, env, env.Member(t, a.ID, "owner"), a.ID)
	admin := principalOf(t, env, env.Member(t, a.ID, "admin"), a.ID)
	ownerB := principalOf(t, env, env.Member(t, b.ID, "owner"), b.ID)

	before := time.Now().Add(-time.Minute)
	eng, err := env.Tenants.Invite(ctx, admin, tenants.InvitationInput{Email: freshEmail("eng"), Role: "engineer"})
	if err != nil {
		t.Fatal(err)
	}
	boss, err := env.Tenants.Invite(ctx, owner, tenants.InvitationInput{Email: freshEmail("boss"), Role: "owner"})
	if err != nil {
		t.Fatal(err)
	}
	accepted, err := env.Tenants.Invite(ctx, admin, tenants.InvitationInput{Email: freshEmail("acc"), Role: "viewer"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := env.Tenants.AcceptInvitation(ctx, tenants.AcceptInput{Token: accepted.Token, Name: "Acc", Password: "a long enough password"}, tenants.Client{}); err != nil {
		t.Fatal(err)
	}
	expired, err := env.Tenants.Invite(ctx, admin, tenants.InvitationInput{Email: freshEmail("exp"), Role: "viewer"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := env.DB.System.Exec(ctx, `UPDATE invitations SET expires_at = now() - interval '1 second' WHERE id = $1`, expired.Invitation.ID); err != nil {
		t.Fatal(err)
	}
	if _, err := env.Tenants.Invite(ctx, ownerB, tenants.InvitationInput{Email: freshEmail("b"), Role: "viewer"}); err != nil {
		t.Fatal(err)
	}

	// Only the pending ones of the caller's enterprise, newest first.
	list, err := env.Tenants.Invitations(ctx, admin)
	if err != nil {
		t.Fatal(err)
	}
	ids := func(l []tenants.Invitation) []uuid.UUID {
		var out []uuid.UUID
		for _, x := range l {
			out = append(out, x.ID)
		}
		return out
	}
	if want := []uuid.UUID{boss.Invitation.ID, eng.Invitation.ID}; !slices.Equal(ids(list), want) {
		t.Fatalf("pending = %v, want %v", ids(list), want)
	}
	if got := list[1]; got.Email != eng.Invitation.Email || got.Role != "engineer" || got.CreatedAt.Before(before) ||
		!got.ExpiresAt.Equal(eng.Invitation.ExpiresAt) || !got.CreatedAt.Equal(eng.Invitation.CreatedAt) ||
		got.ExpiresAt.Sub(got.CreatedAt) != tenants.InvitationLifetime {
		t.Errorf("pending invitation = %+v, created %+v", got, eng.Invitation)
	}
	if l, err := env.Tenants.Invitations(ctx, ownerB); err != nil || slices.Contains(ids(l), eng.Invitation.ID) || len(l) != 1 {
		t.Errorf("B's invitations = %v, %v", ids(l), err)
	}
	for name, p := range map[string]tenants.Principal{
		"contractor": {Kind: tenants.KindUser, OrgKind: tenants.OrgContractor, Role: "member", TenantID: a.ID, Scopes: []string{tenants.PermUsersRead}},
		"operator":   {Kind: tenants.KindOperator},
	} {
		if _, err := env.Tenants.Invitations(ctx, p); apps.Code(err) != apps.Forbidden {
			t.Errorf("%s lists invitations: %v", name, err)
		}
		if _, err := env.Tenants.RevokeInvitation(ctx, p, eng.Invitation.ID.String()); apps.Code(err) != apps.Forbidden {
			t.Errorf("%s revokes an invitation: %v", name, err)
		}
	}

	// Another enterprise's, unknown, malformed, accepted or expired: not found.
	for name, ref := range map[string]string{
		"B revokes A's": eng.Invitation.ID.String(), "unknown": uuid.NewString(), "malformed": "x",
		"upper-case": strings.ToUpper(eng.Invitation.ID.String()) + "x",
	} {
		p := admin
		if strings.HasPrefix(name, "B ") {
			p = ownerB
		}
		if _, err := env.Tenants.RevokeInvitation(ctx, p, ref); apps.Code(err) != apps.NotFound {
			t.Errorf("%s: %v, want not_found", name, err)
		}
	}
	for name, inv := range map[string]tenants.InvitationCreated{"accepted": accepted, "expired": expired} {
		if _, err := env.Tenants.RevokeInvitation(ctx, admin, inv.Invitation.ID.String()); apps.Code(err) != apps.NotFound {
			t.Errorf("revoke %s: %v, want not_found", name, err)
		}
	}
	// Only an owner revokes an owner's invitation.
	wantCode(t, "admin revokes an owner's invitation", func() error {
		_, err := env.Tenants.RevokeInvitation(ctx, admin, boss.Invitation.ID.String())
		return err
	}(), apps.Forbidden)
	for _, c := range []struct {
		p   tenants.Principal
		inv tenants.InvitationCreated
	}{{owner, boss}, {admin, eng}} {
		out, err := env.Tenants.RevokeInvitation(ctx, c.p, c.inv.Invitation.ID.String())
		if err != nil || out.ID != c.inv.Invitation.ID || !out.Revoked {
			t.Errorf("revoke %s: %+v, %v", c.inv.Invitation.Email, out, err)
		}
		// A revoked invitation can no longer be accepted, nor revoked again.
		_, err = env.Tenants.AcceptInvitation(ctx, tenants.AcceptInput{Token: c.inv.Token, Name: "Late", Password: "a long enough password"}, tenants.Client{})
		wantCode(t, "accept a revoked invitation", err, apps.Invalid)
		_, err = env.Tenants.RevokeInvitation(ctx, c.p, c.inv.Invitation.ID.String())
		wantCode(t, "revoke twice", err, apps.NotFound)
	}
	if l, err := env.Tenants.Invitations(ctx, owner); err != nil || len(l) != 0 {
		t.Errorf("pending after revocations = %+v, %v", l, err)
	}
	var n int
	if err := env.DB.System.QueryRow(ctx, `SELECT count(*) FROM users WHERE email = $1`, eng.Invitation.Email).Scan(&n); err != nil || n != 0 {
		t.Errorf("the revoked invitee has an account: %d, %v", n, err)
	}
}

func TestOperatorFindsAndDisablesUsers(t *testing.T) {
	t.Parallel()
	env := tenanttest.New(t)
	ctx := context.Background()
	a, b := env.NewTenant(t), env.NewTenant(t)
	m := env.Member(t, a.ID, "engineer")
	if _, err := env.Tenants.EnsureMember(ctx, b.ID, m.Email, "", "", "viewer"); err != nil {
		t.Fatal(err)
	}
	con := env.Org(t, tenants.OrgContractor)
	if _, err := env.Tenants.EnsureMember(ctx, con, m.Email, "", "", "member"); err != nil {
		t.Fatal(err)
	}

	found, err := env.Tenants.FindUsers(ctx, "  "+strings.ToUpper(m.Email)+" ")
	if err != nil || len(found) != 1 {
		t.Fatalf("find = %+v, %v", found, err)
	}
	u := found[0]
	if u.ID != m.ID || u.Email != m.Email || u.Name != m.Name || u.Status != "active" || len(u.Memberships) != 3 {
		t.Errorf("user = %+v", u)
	}
	roles := map[uuid.UUID]string{}
	for _, x := range u.Memberships {
		roles[x.OrgID] = x.Kind + "/" + x.Role
		if x.Name == "" {
			t.Errorf("membership without the organisation's name: %+v", x)
		}
	}
	if roles[a.ID] != "enterprise/engineer" || roles[b.ID] != "enterprise/viewer" || roles[con] != "contractor/member" {
		t.Errorf("memberships = %v", roles)
	}
	if none, err := env.Tenants.FindUsers(ctx, freshEmail("nobody")); err != nil || none == nil || len(none) != 0 {
		t.Errorf("unknown email = %#v, %v", none, err)
	}
	for _, bad := range []string{"", "x", "a@b@c", strings.Repeat("a", 300) + "@x.example"} {
		_, err := env.Tenants.FindUsers(ctx, bad)
		wantCode(t, "find "+bad, err, apps.Invalid)
	}

	// Disabling refuses the user's sessions in every organisation at once,
	// on every replica; enabling brings them back.
	other := newReplica(t, env)
	tokA, tokB := env.Session(t, m, a.ID), env.Session(t, m, b.ID)
	for _, tok := range []string{tokA, tokB} {
		if _, err := other.AuthenticateSession(ctx, tok); err != nil {
			t.Fatal(err)
		}
	}
	op := tenants.Principal{Kind: tenants.KindOperator}
	got, err := env.Tenants.SetAccountStatus(ctx, op, m.ID.String(), tenants.UserStatusInput{Status: "disabled"})
	if err != nil || got.Status != "disabled" || got.ID != m.ID || len(got.Memberships) != 3 {
		t.Fatalf("disable = %+v, %v", got, err)
	}
	for _, tok := range []string{tokA, tokB} {
		if v, err := env.Redis.Get(ctx, "nx:session:"+sha256hex(tok)).Result(); err != nil || v != "-" {
			t.Errorf("Redis entry after disabling = %q, %v; want the tombstone", v, err)
		}
		within5s(t, "disabled user refused on the other replica", func() bool {
			_, err := other.AuthenticateSession(ctx, tok)
			return apps.Code(err) == apps.Unauthorized
		})
		if _, err := env.Tenants.AuthenticateSession(ctx, tok); apps.Code(err) != apps.Unauthorized {
			t.Errorf("disabled user's session here: %v", err)
		}
	}
	if _, err := loginAs(env, m, a.ID); apps.Code(err) != apps.Unauthorized {
		t.Errorf("a disabled user logs in: %v", err)
	}
	if f, _ := env.Tenants.FindUsers(ctx, m.Email); len(f) != 1 || f[0].Status != "disabled" {
		t.Errorf("found after disabling = %+v", f)
	}
	if got, err := env.Tenants.SetAccountStatus(ctx, op, m.ID.String(), tenants.UserStatusInput{Status: "active"}); err != nil || got.Status != "active" {
		t.Fatalf("enable = %+v, %v", got, err)
	}
	within5s(t, "enabled again", func() bool {
		_, err := other.AuthenticateSession(ctx, tokA)
		return err == nil
	})

	for name, c := range map[string]struct {
		ref, status, code string
	}{
		"bad status":   {m.ID.String(), "locked", apps.Invalid},
		"empty status": {m.ID.String(), "", apps.Invalid},
		"unknown user": {uuid.NewString(), "disabled", apps.NotFound},
		"malformed id": {"x", "disabled", apps.NotFound},
	} {
		_, err := env.Tenants.SetAccountStatus(ctx, op, c.ref, tenants.UserStatusInput{Status: c.status})
		wantCode(t, name, err, c.code)
	}
	// An operator user does not lock itself out.
	opOrg := env.Org(t, tenants.OrgOperator)
	opUser := env.Member(t, opOrg, "admin")
	self := principalOf(t, env, opUser, opOrg)
	_, err = env.Tenants.SetAccountStatus(ctx, self, opUser.ID.String(), tenants.UserStatusInput{Status: "disabled"})
	wantCode(t, "disable oneself", err, apps.Conflict)
}
