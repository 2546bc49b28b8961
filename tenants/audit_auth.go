package tenants

// Auditing of signing in and out: auth.login, auth.logout and
// auth.accept_invitation rows, on the tenant of the organisation concerned
// when there is one (so an enterprise's owners see their members' logins),
// on no tenant otherwise.
//
// A row names a user only when the user belongs to that organisation; an
// attempt on an unknown account records no user and, instead of the email
// typed, its hash (accountKey: the throttling key). Malformed requests (400
// before any account is looked at) are not attempts on an account and are
// not recorded; of the attempts refused by throttling (429), only the first
// of its window is (the first refusal of a client address, and the failure
// that locks an account, marked locked), so a flood cannot grow the log
// faster than the throttle lets attempts through.

import (
	"context"
	"errors"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"

	"github.com/nxcloud/nxcloud/apps"
)

// Audit actions of signing in and out.
const (
	ActionLogin            = "auth.login"
	ActionLogout           = "auth.logout"
	ActionAcceptInvitation = "auth.accept_invitation"
)

// authEvent is what a sign-in step learns as it goes, for its audit row.
type authEvent struct {
	action string
	actor  Principal // KindAnonymous until the account is known
	tenant uuid.UUID
	ip     string
	email  string // hashed into the detail of a failure
	reason string // why a failure failed
	locked bool   // this failure locked the account
	detail map[string]any
}

func newAuthEvent(action, email, ip string) *authEvent {
	return &authEvent{action: action, actor: Principal{Kind: KindAnonymous}, email: email, ip: ip, detail: map[string]any{}}
}

// user names the account the event is about.
func (ev *authEvent) user(id uuid.UUID, name string) {
	ev.actor.Kind, ev.actor.UserID, ev.actor.Name = KindUser, id, name
}

// member names the organisation (and so the tenant) the account acts in.
func (ev *authEvent) member(org OrgRef, role string) {
	ev.actor.OrgID, ev.actor.OrgKind, ev.actor.Role = org.ID, org.Kind, role
	ev.tenant = uuid.Nil
	if org.Kind == OrgEnterprise {
		ev.tenant = org.ID // an enterprise's organisation is its tenant
	}
}

// authOutcome is the result and HTTP status an auth step's error answers.
func authOutcome(err error) (string, int) {
	switch apps.Code(err) {
	case "":
		return AuditOK, 200
	case apps.Unauthorized:
		return AuditDenied, 401
	case apps.Forbidden:
		return AuditDenied, 403
	case apps.QuotaExceeded:
		return AuditDenied, 429
	case apps.Invalid:
		return AuditError, 400
	case apps.Conflict:
		return AuditError, 409
	}
	return AuditError, 500
}

// auditAuth writes the row of an auth step that ended with err.
func (s *Service) auditAuth(ctx context.Context, ev *authEvent, err error) {
	var th *Throttled
	if errors.As(err, &th) && !th.first {
		return
	}
	result, status := authOutcome(err)
	if err != nil {
		if ev.email != "" {
			ev.detail["email_hash"] = accountKey(ev.email)
		}
		if th != nil {
			ev.reason = "throttled"
		}
		if ev.reason != "" {
			ev.detail["reason"] = ev.reason
		}
		if ev.locked {
			ev.detail["locked"] = true
		}
	}
	resource := ""
	if ev.actor.UserID != uuid.Nil {
		resource = "users/" + ev.actor.UserID.String()
	}
	actor := ev.actor
	s.auditEvent(ctx, AuditEntry{Tenant: ev.tenant, Actor: &actor, Action: ev.action, Resource: resource,
		Result: result, Status: status, IP: ev.ip, Detail: ev.detail})
}

// attribute puts on ev the organisation a failed login of user concerns: the
// one the login named, or the user's only one; none when that is ambiguous,
// the user is not a member of the one named, or user is Nil (no account).
func (s *Service) attribute(ctx context.Context, ev *authEvent, user, org uuid.UUID) {
	rows, err := s.db.System.Query(ctx, `SELECT o.id, o.kind, o.name, m.role
		FROM memberships m JOIN orgs o ON o.id = m.org_id
		WHERE m.user_id = $1 AND ($2::uuid IS NULL OR o.id = $2) ORDER BY o.id LIMIT 2`, user, nullID(org))
	if err == nil {
		var ms []membershipOf
		ms, err = pgx.CollectRows(rows, func(r pgx.CollectableRow) (membershipOf, error) {
			var m membershipOf
			return m, r.Scan(&m.org.ID, &m.org.Kind, &m.org.Name, &m.role)
		})
		if err == nil && len(ms) == 1 {
			ev.member(ms[0].org, ms[0].role)
		}
	}
	if err != nil {
		// The login's answer does not depend on it: the row goes without
		// a tenant.
		_, log := s.grants.bus()
		ip, id := requestFrom(ctx)
		log.Warn("audit: organisation of a failed login", "user", user, "request_id", id, "ip", ip, "err", err)
	}
}
