package tenants

import (
	"context"
	"errors"
	"fmt"
	"time"
	"unicode/utf8"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"

	"github.com/nxcloud/nxcloud/apps"
)

// InvitationLifetime is how long an invitation can be accepted.
const InvitationLifetime = 7 * 24 * time.Hour

// acceptPath is where the web console accepts an invitation; the token goes
// in the fragment, which browsers never send to a server (nor to logs).
const acceptPath = "/invitations/accept#token="

// Member is a user of an organisation with its role there.
type Member struct {
	ID       uuid.UUID `json:"id"`
	Email    string    `json:"email"`
	Name     string    `json:"name"`
	Status   string    `json:"status"`
	Role     string    `json:"role"`
	JoinedAt time.Time `json:"joined_at"`
}

// Invitation is an invitation to join an organisation.
type Invitation struct {
	ID        uuid.UUID `json:"id"`
	Email     string    `json:"email"`
	Role      string    `json:"role"`
	CreatedAt time.Time `json:"created_at"`
	ExpiresAt time.Time `json:"expires_at"`
}

// InvitationCreated is a new invitation with its token, shown once.
type InvitationCreated struct {
	Invitation Invitation `json:"invitation"`
	Token      string     `json:"token"`
	AcceptURL  string     `json:"accept_url"`
}

// InvitationInput invites someone to the caller's enterprise.
type InvitationInput struct {
	Email string `json:"email"`
	Role  string `json:"role"`
}

// RoleInput changes a member's role.
type RoleInput struct {
	Role string `json:"role"`
}

// AcceptInput accepts an invitation. Name and password create the account
// when the email is new; for an existing account the password proves it is
// the invitee's (name is then ignored).
type AcceptInput struct {
	Token    string `json:"token"`
	Name     string `json:"name,omitempty"`
	Password string `json:"password"`
}

// enterpriseOrg returns the organisation whose members p manages: its own
// enterprise. Contractors, whatever their grant, manage no enterprise's
// people. Errors: forbidden.
func enterpriseOrg(p Principal) (uuid.UUID, error) {
	if p.OrgKind != OrgEnterprise || p.TenantID == uuid.Nil {
		return uuid.Nil, apps.Errorf(apps.Forbidden, "only an enterprise's own users and keys manage its members")
	}
	return p.TenantID, nil
}

// isOwner reports whether p is an owner of its enterprise: only owners make or
// unmake owners. API keys act as admins.
func isOwner(p Principal) bool {
	return p.Kind == KindUser && p.OrgKind == OrgEnterprise && p.Role == "owner"
}

// Members lists the users of the caller's enterprise with their roles.
// Errors: forbidden.
func (s *Service) Members(ctx context.Context, p Principal) ([]Member, error) {
	org, err := enterpriseOrg(p)
	if err != nil {
		return nil, err
	}
	rows, err := s.db.System.Query(ctx, `SELECT u.id, u.email, u.name, u.status, m.role, m.created_at
		FROM memberships m JOIN users u ON u.id = m.user_id WHERE m.org_id = $1 ORDER BY u.email`, org)
	if err != nil {
		return nil, err
	}
	return pgx.CollectRows(rows, scanMember)
}

func scanMember(r pgx.CollectableRow) (Member, error) {
	var m Member
	return m, r.Scan(&m.ID, &m.Email, &m.Name, &m.Status, &m.Role, &m.JoinedAt)
}

// Invite invites an email to the caller's enterprise with a role; only an
// owner may invite an owner. Errors: invalid, forbidden, conflict (already a
// member).
func (s *Service) Invite(ctx context.Context, p Principal, in InvitationInput) (InvitationCreated, error) {
	org, err := enterpriseOrg(p)
	if err != nil {
		return InvitationCreated{}, err
	}
	email := normalEmail(in.Email)
	if err := validEmail(email, "email"); err != nil {
		return InvitationCreated{}, err
	}
	if !ValidRole(OrgEnterprise, in.Role) {
		return InvitationCreated{}, apps.FieldError("role", "unknown role %q; roles: %v", clip(in.Role, 32), Roles(OrgEnterprise))
	}
	if in.Role == "owner" && !isOwner(p) {
		return InvitationCreated{}, apps.Errorf(apps.Forbidden, "only an owner may make an owner")
	}
	var out InvitationCreated
	err = pgx.BeginFunc(ctx, s.db.System, func(tx pgx.Tx) error {
		var member bool
		if err := tx.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM memberships m JOIN users u ON u.id = m.user_id
			WHERE m.org_id = $1 AND u.email = $2)`, org, email).Scan(&member); err != nil {
			return err
		}
		if member {
			return apps.Errorf(apps.Conflict, "%s is already a member", email)
		}
		out, err = createInvitation(ctx, tx, org, email, in.Role, p.UserID)
		return err
	})
	return out, err
}

// createInvitation stores an invitation to org (by is the inviting user, or
// Nil) and returns it with its token.
func createInvitation(ctx context.Context, q Querier, org uuid.UUID, email, role string, by uuid.UUID) (InvitationCreated, error) {
	email = normalEmail(email)
	if err := validEmail(email, "email"); err != nil {
		return InvitationCreated{}, err
	}
	token, hash := newToken(invitationTag)
	inv := Invitation{Email: email, Role: role}
	err := q.QueryRow(ctx, `INSERT INTO invitations (org_id, email, role, token_hash, expires_at, created_by)
		VALUES ($1, $2, $3, $4, now() + make_interval(secs => $5), $6) RETURNING id, created_at, expires_at`,
		org, email, role, hash, InvitationLifetime.Seconds(), nullID(by)).Scan(&inv.ID, &inv.CreatedAt, &inv.ExpiresAt)
	if err != nil {
		return InvitationCreated{}, StoreError(err, "invitation")
	}
	return InvitationCreated{Invitation: inv, Token: token, AcceptURL: acceptPath + token}, nil
}

// memberRef parses a user id from a path; anything else is not found.
func memberRef(ref string) (uuid.UUID, error) {
	id, err := uuid.Parse(ref)
	if err != nil || len(ref) != 36 {
		return uuid.Nil, apps.Errorf(apps.NotFound, "user not found")
	}
	return id, nil
}

// changeMember runs fn on the membership of user in the caller's enterprise,
// with the enterprise's memberships locked, so two owners demoting each
// other cannot leave it without one. fn gets the member's role and the
// number of owners. Errors: not_found (not a member of this enterprise),
// forbidden (an owner's membership, unless p is an owner), conflict (the
// last owner), and fn's.
func (s *Service) changeMember(ctx context.Context, p Principal, userRef string, fn func(tx pgx.Tx, org, user uuid.UUID, role string, owners int) error) error {
	org, err := enterpriseOrg(p)
	if err != nil {
		return err
	}
	user, err := memberRef(userRef)
	if err != nil {
		return err
	}
	return pgx.BeginFunc(ctx, s.db.System, func(tx pgx.Tx) error {
		rows, err := tx.Query(ctx, `SELECT user_id, role FROM memberships WHERE org_id = $1 ORDER BY user_id FOR UPDATE`, org)
		if err != nil {
			return err
		}
		role, owners := "", 0
		var id uuid.UUID
		var r string
		_, err = pgx.ForEachRow(rows, []any{&id, &r}, func() error {
			if r == "owner" {
				owners++
			}
			if id == user {
				role = r
			}
			return nil
		})
		if err != nil {
			return err
		}
		if role == "" {
			return apps.Errorf(apps.NotFound, "user not found")
		}
		if role == "owner" && !isOwner(p) {
			return apps.Errorf(apps.Forbidden, "only an owner may change an owner")
		}
		return fn(tx, org, user, role, owners)
	})
}

// SetRole changes the role of a member of the caller's enterprise. Only an
// owner makes, demotes or changes an owner; the last owner stays owner. The
// member's sessions pick up the new role at once. Errors: invalid, not_found,
// forbidden, conflict.
func (s *Service) SetRole(ctx context.Context, p Principal, userRef string, in RoleInput) (Member, error) {
	if !ValidRole(OrgEnterprise, in.Role) {
		return Member{}, apps.FieldError("role", "unknown role %q; roles: %v", clip(in.Role, 32), Roles(OrgEnterprise))
	}
	if in.Role == "owner" && !isOwner(p) {
		return Member{}, apps.Errorf(apps.Forbidden, "only an owner may make an owner")
	}
	var m Member
	var org, user uuid.UUID
	err := s.changeMember(ctx, p, userRef, func(tx pgx.Tx, o, u uuid.UUID, role string, owners int) error {
		org, user = o, u
		if role == "owner" && in.Role != "owner" && owners == 1 {
			return apps.Errorf(apps.Conflict, "the last owner cannot be demoted; make another owner first")
		}
		rows, err := tx.Query(ctx, `WITH m AS (UPDATE memberships SET role = $3 WHERE org_id = $1 AND user_id = $2 RETURNING user_id, role, created_at)
			SELECT u.id, u.email, u.name, u.status, m.role, m.created_at FROM m JOIN users u ON u.id = m.user_id`, o, u, in.Role)
		if err != nil {
			return err
		}
		m, err = pgx.CollectExactlyOneRow(rows, scanMember)
		return err
	})
	if err != nil {
		return Member{}, err
	}
	hashes, err := s.liveSessions(ctx, user, org)
	if err != nil {
		return m, err
	}
	s.forgetSessions(ctx, hashes)
	return m, nil
}

// MemberRemoved reports a removed membership.
type MemberRemoved struct {
	ID              uuid.UUID `json:"id"`
	Removed         bool      `json:"removed"`
	SessionsRevoked int       `json:"sessions_revoked"`
}

// RemoveMember removes a user from the caller's enterprise and revokes the
// user's sessions there (the account itself stays: it may belong to other
// organisations). Only an owner removes an owner; the last owner stays.
// Errors: not_found, forbidden, conflict.
func (s *Service) RemoveMember(ctx context.Context, p Principal, userRef string) (MemberRemoved, error) {
	var hashes [][]byte
	var out MemberRemoved
	err := s.changeMember(ctx, p, userRef, func(tx pgx.Tx, org, user uuid.UUID, role string, owners int) error {
		if role == "owner" && owners == 1 {
			return apps.Errorf(apps.Conflict, "the last owner cannot be removed; make another owner first")
		}
		if _, err := tx.Exec(ctx, `DELETE FROM memberships WHERE org_id = $1 AND user_id = $2`, org, user); err != nil {
			return err
		}
		var err error
		hashes, err = s.revokeSessions(ctx, tx, user, org)
		out = MemberRemoved{ID: user, Removed: true, SessionsRevoked: len(hashes)}
		return err
	})
	if err != nil {
		return MemberRemoved{}, err
	}
	s.forgetSessions(ctx, hashes)
	return out, nil
}

// AcceptInvitation accepts an invitation: it creates the account when the
// email is new (name and password required, password policy applies), or
// checks the existing account's password; adds the membership, marks the
// invitation used and opens a session in the organisation. Errors: invalid
// (malformed input; unknown, expired or used invitation), unauthorized (wrong
// password or disabled account), conflict (already a member),
// quota_exceeded (*Throttled). Every attempt with a well-formed token is
// recorded in the audit log (auth.accept_invitation): on the inviting
// enterprise, naming the user once it is a member.
func (s *Service) AcceptInvitation(ctx context.Context, in AcceptInput, c Client) (SessionCreated, error) {
	hash, ok := parseToken(invitationTag, in.Token)
	if !ok {
		return SessionCreated{}, apps.FieldError("token", "not an invitation token")
	}
	ev := newAuthEvent(ActionAcceptInvitation, "", c.IP)
	out, err := s.acceptInvitation(ctx, hash, in, c, ev)
	s.auditAuth(ctx, ev, err)
	return out, err
}

// acceptInvitation is AcceptInvitation after the token's check, noting on ev
// what it learns.
func (s *Service) acceptInvitation(ctx context.Context, hash []byte, in AcceptInput, c Client, ev *authEvent) (SessionCreated, error) {
	var out SessionCreated
	if err := s.throttleIP(ctx, c.IP); err != nil {
		return out, err
	}
	var failedEmail string
	var failedUser loginUser
	newAccount := false
	err := pgx.BeginFunc(ctx, s.db.System, func(tx pgx.Tx) error {
		var inv Invitation
		var live bool
		err := tx.QueryRow(ctx, `SELECT i.id, i.org_id, o.kind, o.name, i.email, i.role,
			i.accepted_at IS NULL AND i.revoked_at IS NULL AND i.expires_at > now()
			FROM invitations i JOIN orgs o ON o.id = i.org_id WHERE i.token_hash = $1 FOR UPDATE OF i`, hash).
			Scan(&inv.ID, &out.Org.ID, &out.Org.Kind, &out.Org.Name, &inv.Email, &inv.Role, &live)
		if errors.Is(err, pgx.ErrNoRows) || (err == nil && !live) {
			ev.reason = "unknown_invitation"
			return apps.FieldError("token", "this invitation is unknown, expired, revoked or already used")
		}
		if err != nil {
			return err
		}
		// The row goes to the inviting enterprise, but names the user only
		// once it is a member (below).
		ev.email = inv.Email
		if out.Org.Kind == OrgEnterprise {
			ev.tenant = out.Org.ID
		}
		ev.detail["invitation"], ev.detail["role"] = inv.ID.String(), inv.Role
		u, found, err := s.userByEmail(ctx, tx, inv.Email)
		if err != nil {
			return err
		}
		if found {
			if err := s.accountLocked(ctx, inv.Email, u); err != nil {
				return err
			}
			if !verifyPassword(u.hash, in.Password) || !u.active {
				failedEmail, failedUser = inv.Email, u
				ev.reason = "wrong_password"
				if !u.active {
					ev.reason = "disabled"
				}
				return errBadLogin
			}
		} else {
			if err := validName(in.Name); err != nil {
				return err
			}
			if err := validPassword(in.Password); err != nil {
				return err
			}
			u = loginUser{email: inv.Email, name: in.Name}
			err := tx.QueryRow(ctx, `INSERT INTO users (email, name, password_hash) VALUES ($1, $2, $3) RETURNING id`,
				inv.Email, in.Name, hashPassword(in.Password)).Scan(&u.id)
			if err != nil {
				return StoreError(err, "user "+inv.Email)
			}
			newAccount = true
		}
		tag, err := tx.Exec(ctx, `INSERT INTO memberships (org_id, user_id, role) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING`,
			out.Org.ID, u.id, inv.Role)
		if err != nil {
			return err
		}
		if tag.RowsAffected() == 0 {
			ev.reason = "already_member"
			return apps.Errorf(apps.Conflict, "you are already a member of %s", out.Org.Name)
		}
		if _, err := tx.Exec(ctx, `UPDATE invitations SET accepted_at = now() WHERE id = $1`, inv.ID); err != nil {
			return err
		}
		out.Token, out.ExpiresAt, err = s.createSession(ctx, tx, u.id, out.Org.ID, c)
		out.User, out.Role = UserRef{ID: u.id, Email: u.email, Name: u.name}, inv.Role
		return err
	})
	if failedEmail != "" {
		ev.locked, err = s.loginFailed(ctx, failedEmail, failedUser, true)
		return SessionCreated{}, err
	}
	if err != nil {
		return SessionCreated{}, err
	}
	ev.user(out.User.ID, out.User.Name)
	ev.member(out.Org, out.Role)
	ev.detail["new_account"] = newAccount
	return out, nil
}

func validName(name string) error {
	if n := utf8.RuneCountInString(name); n == 0 || n > 200 {
		return apps.FieldError("name", "a name of 1 to 200 characters is required")
	}
	return nil
}

// EnsureMember makes sure a user with email belongs to org with a role: it
// creates the account (with name and password) when the email is new and the
// membership when there is none. An existing account keeps its password and
// an existing membership its role (so seeding twice changes nothing). For the
// demo, the command line and tests; people join through invitations.
// Errors: invalid.
func (s *Service) EnsureMember(ctx context.Context, org uuid.UUID, email, name, password, role string) (UserRef, error) {
	email = normalEmail(email)
	if err := validEmail(email, "email"); err != nil {
		return UserRef{}, err
	}
	var kind string
	if err := s.db.System.QueryRow(ctx, `SELECT kind FROM orgs WHERE id = $1`, org).Scan(&kind); err != nil {
		return UserRef{}, StoreError(err, "organisation")
	}
	if !ValidRole(kind, role) {
		return UserRef{}, apps.FieldError("role", "unknown role %q for a %s; roles: %v", clip(role, 32), kind, Roles(kind))
	}
	u := UserRef{Email: email}
	err := pgx.BeginFunc(ctx, s.db.System, func(tx pgx.Tx) error {
		err := tx.QueryRow(ctx, `SELECT id, name FROM users WHERE email = $1`, email).Scan(&u.ID, &u.Name)
		if errors.Is(err, pgx.ErrNoRows) {
			if err := validName(name); err != nil {
				return err
			}
			if err := validPassword(password); err != nil {
				return err
			}
			err = tx.QueryRow(ctx, `INSERT INTO users (email, name, password_hash) VALUES ($1, $2, $3)
				ON CONFLICT (email) DO NOTHING RETURNING id, name`, email, name, hashPassword(password)).Scan(&u.ID, &u.Name)
			if errors.Is(err, pgx.ErrNoRows) { // created meanwhile by a concurrent seed
				err = tx.QueryRow(ctx, `SELECT id, name FROM users WHERE email = $1`, email).Scan(&u.ID, &u.Name)
			}
		}
		if err != nil {
			return StoreError(err, "user "+email)
		}
		_, err = tx.Exec(ctx, `INSERT INTO memberships (org_id, user_id, role) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING`, org, u.ID, role)
		return err
	})
	return u, err
}

// SetUserStatus enables ("active") or disables ("disabled") an account on
// the whole platform; a disabled user cannot log in and its sessions are
// refused at once on every replica (they work again when it is enabled
// before they expire). Errors: invalid, not_found.
func (s *Service) SetUserStatus(ctx context.Context, user uuid.UUID, status string) error {
	if status != "active" && status != "disabled" {
		return apps.FieldError("status", "want active or disabled")
	}
	tag, err := s.db.System.Exec(ctx, `UPDATE users SET status = $2 WHERE id = $1`, user, status)
	if err != nil {
		return err
	}
	if tag.RowsAffected() == 0 {
		return apps.Errorf(apps.NotFound, "user not found")
	}
	hashes, err := s.liveSessions(ctx, user, uuid.Nil)
	if err != nil {
		return fmt.Errorf("sessions of a disabled user: %w", err)
	}
	s.forgetSessions(ctx, hashes)
	return nil
}
