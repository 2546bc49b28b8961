package tenants

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"math"
	"net/mail"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/redis/go-redis/v9"

	"github.com/nxcloud/nxcloud/apps"
)

// LoginLimits throttle password attempts. Zero fields take the defaults.
type LoginLimits struct {
	// MaxFailures failed attempts on one account (an email, whether or not an
	// account has it) within Window lock it for Lockout. Defaults: 5, 15 min,
	// 15 min.
	MaxFailures int
	Window      time.Duration
	Lockout     time.Duration
	// PerIP is how many attempts one client address may make a minute
	// (default 30).
	PerIP int
}

func (s *Service) limits() LoginLimits {
	l := s.LoginLimits
	if l.MaxFailures <= 0 {
		l.MaxFailures = 5
	}
	if l.Window <= 0 {
		l.Window = 15 * time.Minute
	}
	if l.Lockout <= 0 {
		l.Lockout = 15 * time.Minute
	}
	if l.PerIP <= 0 {
		l.PerIP = 30
	}
	return l
}

// Client is where a request comes from: the throttling key and the session's
// record.
type Client struct {
	IP        string
	UserAgent string
}

// LoginInput is a login request. Org (an organisation id) chooses among the
// user's organisations when there are several.
type LoginInput struct {
	Email    string `json:"email"`
	Password string `json:"password"`
	Org      string `json:"org,omitempty"`
}

// UserRef names a user.
type UserRef struct {
	ID    uuid.UUID `json:"id"`
	Email string    `json:"email"`
	Name  string    `json:"name"`
}

// OrgRef names an organisation.
type OrgRef struct {
	ID   uuid.UUID `json:"id"`
	Kind string    `json:"kind"`
	Name string    `json:"name"`
}

// SessionCreated is a new session: its token (shown once) and whom it speaks
// for.
type SessionCreated struct {
	Token     string    `json:"token"`
	ExpiresAt time.Time `json:"expires_at"`
	User      UserRef   `json:"user"`
	Org       OrgRef    `json:"org"`
	Role      string    `json:"role"`
}

var errBadLogin = apps.Errorf(apps.Unauthorized, "invalid email or password")

// Throttled is a quota_exceeded error that says when to retry (the
// Retry-After header).
type Throttled struct {
	Err   *apps.Error
	After int // seconds
	// first marks the first refusal of its window (the audit log records
	// that one only).
	first bool
}

func (t *Throttled) Error() string { return t.Err.Error() }
func (t *Throttled) Unwrap() error { return t.Err }

func throttled(d time.Duration) error {
	secs := max(1, int(math.Ceil(d.Seconds())))
	return &Throttled{Err: apps.Errorf(apps.QuotaExceeded, "too many attempts; retry after %d seconds", secs), After: secs}
}

// normalEmail is the form emails are stored and compared in. Invalid UTF-8
// is left as it is (ToLower would replace it), for validEmail to refuse.
func normalEmail(s string) string {
	if !utf8.ValidString(s) {
		return s
	}
	return strings.ToLower(strings.TrimSpace(s))
}

// validEmail checks the shape of a normalised email (field names the field).
func validEmail(email, field string) error {
	a, err := mail.ParseAddress(email)
	if err != nil || a.Address != email || len(email) > 254 || !utf8.ValidString(email) || strings.ContainsAny(email, "\x00 \t\r\n") {
		return apps.FieldError(field, "want an email address such as name@example.com")
	}
	return nil
}

type loginUser struct {
	id         uuid.UUID
	email      string
	name       string
	hash       string
	active     bool
	lockedSecs int // > 0: locked (database fallback) for that long
}

// Login checks an email and password and opens a session in one of the
// user's organisations. Errors: invalid (malformed input; org missing when
// the user belongs to several organisations), unauthorized (wrong password,
// unknown email, disabled user, no membership — all alike, after the same
// password work), quota_exceeded (*Throttled: too many attempts for the
// account or from the client address). Every attempt past the input checks
// is recorded in the audit log (auth.login, audit_auth.go).
func (s *Service) Login(ctx context.Context, in LoginInput, c Client) (SessionCreated, error) {
	var out SessionCreated
	email := normalEmail(in.Email)
	if err := validEmail(email, "email"); err != nil {
		return out, err
	}
	if in.Password == "" || len(in.Password) > 4*maxPassword {
		return out, apps.FieldError("password", "a password of 1 to %d characters is required", maxPassword)
	}
	var org uuid.UUID
	if in.Org != "" {
		id, err := uuid.Parse(in.Org)
		if err != nil {
			return out, apps.FieldError("org", "want an organisation id")
		}
		org = id
	}
	ev := newAuthEvent(ActionLogin, email, c.IP)
	out, err := s.login(ctx, email, in.Password, org, c, ev)
	s.auditAuth(ctx, ev, err)
	return out, err
}

// login is Login after the input checks, noting on ev what it learns.
func (s *Service) login(ctx context.Context, email, password string, org uuid.UUID, c Client, ev *authEvent) (SessionCreated, error) {
	var out SessionCreated
	if err := s.throttleIP(ctx, c.IP); err != nil {
		return out, err
	}
	u, found, err := s.userByEmail(ctx, s.db.System, email)
	if err != nil {
		return out, err
	}
	if err := s.accountLocked(ctx, email, u); err != nil {
		return out, err
	}
	hash := dummyPasswordHash
	if found {
		hash = u.hash
	}
	ok := verifyPassword(hash, password) && found && u.active
	switch {
	case !found:
		ev.reason = "unknown_account"
	case !ok && u.active:
		ev.reason = "wrong_password"
	case !ok:
		ev.reason = "disabled"
	}
	var m membershipOf
	if ok {
		m, err = s.loginOrg(ctx, u.id, org)
		switch {
		case errors.Is(err, errNoMembership):
			ok, ev.reason = false, "no_membership"
		case err != nil:
			ev.user(u.id, u.name)
			return out, err
		}
	}
	if !ok {
		if found {
			ev.user(u.id, u.name)
		}
		// The same query whether or not the account exists (u.id is Nil
		// then, matching nothing), so its time tells nothing.
		s.attribute(ctx, ev, u.id, org)
		ev.locked, err = s.loginFailed(ctx, email, u, found)
		return out, err
	}
	ev.user(u.id, u.name)
	ev.member(m.org, m.role)
	token, exp, err := s.createSession(ctx, s.db.System, u.id, m.org.ID, c)
	if err != nil {
		return out, err
	}
	if err := s.loginSucceeded(ctx, email, u.id); err != nil {
		return out, err
	}
	return SessionCreated{Token: token, ExpiresAt: exp, User: UserRef{ID: u.id, Email: u.email, Name: u.name}, Org: m.org, Role: m.role}, nil
}

func (s *Service) userByEmail(ctx context.Context, q Querier, email string) (loginUser, bool, error) {
	var u loginUser
	err := q.QueryRow(ctx, `SELECT id, email, name, password_hash, status = 'active',
		CASE WHEN locked_until > now() THEN ceil(extract(epoch FROM locked_until - now()))::int ELSE 0 END
		FROM users WHERE email = $1`, email).Scan(&u.id, &u.email, &u.name, &u.hash, &u.active, &u.lockedSecs)
	if errors.Is(err, pgx.ErrNoRows) {
		return u, false, nil
	}
	return u, err == nil, err
}

type membershipOf struct {
	org  OrgRef
	role string
}

var errNoMembership = errors.New("no membership")

// loginOrg returns the membership a login opens: the one in org, or the only
// one. Organisations of suspended enterprises do not count.
func (s *Service) loginOrg(ctx context.Context, user, org uuid.UUID) (membershipOf, error) {
	rows, err := s.db.System.Query(ctx, `SELECT o.id, o.kind, o.name, m.role
		FROM memberships m JOIN orgs o ON o.id = m.org_id LEFT JOIN tenants t ON t.id = o.tenant_id
		WHERE m.user_id = $1 AND (o.tenant_id IS NULL OR t.status = 'active')
		ORDER BY o.name, o.id`, user)
	if err != nil {
		return membershipOf{}, err
	}
	all, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (membershipOf, error) {
		var m membershipOf
		return m, r.Scan(&m.org.ID, &m.org.Kind, &m.org.Name, &m.role)
	})
	if err != nil {
		return membershipOf{}, err
	}
	if org != uuid.Nil {
		for _, m := range all {
			if m.org.ID == org {
				return m, nil
			}
		}
		return membershipOf{}, errNoMembership
	}
	switch len(all) {
	case 0:
		return membershipOf{}, errNoMembership
	case 1:
		return all[0], nil
	}
	var names []string
	for _, m := range all {
		names = append(names, fmt.Sprintf("%s (%s %q)", m.org.ID, m.org.Kind, m.org.Name))
	}
	return membershipOf{}, apps.FieldError("org", "this account belongs to several organisations; name one: %s", strings.Join(names, ", "))
}

// Redis keys of login throttling (all expiring):
//
//	nx:login:ip:<address>      attempts from a client address this minute
//	nx:login:fail:<account>    failures on an account within the window
//	nx:login:lock:<account>    present while the account is locked
//
// accountKey is the <account> part: a hash of the normalised email, so keys
// hold no addresses and unknown emails are counted like real ones.
func accountKey(email string) string {
	h := sha256.Sum256([]byte(email))
	return hex.EncodeToString(h[:16])
}

// throttleIP counts an attempt from ip within the current minute.
func (s *Service) throttleIP(ctx context.Context, ip string) error {
	rdb := s.redis()
	if rdb == nil || ip == "" {
		return nil
	}
	key := "nx:login:ip:" + cleanText(ip, 64)
	var n *redis.IntCmd
	var ttl *redis.DurationCmd
	_, err := rdb.TxPipelined(ctx, func(p redis.Pipeliner) error {
		p.SetNX(ctx, key, 0, time.Minute) // the window starts with its first attempt
		n = p.Incr(ctx, key)
		ttl = p.PTTL(ctx, key)
		return nil
	})
	if err != nil {
		s.redisFailed(err)
		return nil
	}
	if limit := int64(s.limits().PerIP); n.Val() > limit {
		err := throttled(ttl.Val())
		err.(*Throttled).first = n.Val() == limit+1
		return err
	}
	return nil
}

// accountLocked refuses a locked account: locked in Redis, or, for an
// existing user, in the database (the fallback counters).
func (s *Service) accountLocked(ctx context.Context, email string, u loginUser) error {
	if rdb := s.redis(); rdb != nil {
		ttl, err := rdb.PTTL(ctx, "nx:login:lock:"+accountKey(email)).Result()
		s.redisFailed(err)
		if err == nil && ttl > 0 {
			return throttled(ttl)
		}
	}
	if u.lockedSecs > 0 {
		return throttled(time.Duration(u.lockedSecs) * time.Second)
	}
	return nil
}

// loginFailed counts a failure on the account and answers errBadLogin; the
// failure that reaches the limit locks the account (and reports locked). With
// Redis the window counts there (and the lock is mirrored into the database
// for existing users); without it, the database counts for existing users.
func (s *Service) loginFailed(ctx context.Context, email string, u loginUser, found bool) (locked bool, err error) {
	l := s.limits()
	counted := false
	if rdb := s.redis(); rdb != nil {
		failKey, lockKey := "nx:login:fail:"+accountKey(email), "nx:login:lock:"+accountKey(email)
		var n *redis.IntCmd
		_, err := rdb.TxPipelined(ctx, func(p redis.Pipeliner) error {
			p.SetNX(ctx, failKey, 0, l.Window)
			n = p.Incr(ctx, failKey)
			return nil
		})
		s.redisFailed(err)
		if err == nil {
			counted = true
			if n.Val() >= int64(l.MaxFailures) {
				locked = true
				_, err = rdb.TxPipelined(ctx, func(p redis.Pipeliner) error {
					p.Set(ctx, lockKey, 1, l.Lockout)
					p.Del(ctx, failKey)
					return nil
				})
				s.redisFailed(err)
			}
		}
	}
	if !found {
		return locked, errBadLogin
	}
	switch {
	case locked:
		_, err = s.db.System.Exec(ctx, `UPDATE users SET failed_logins = 0, locked_until = now() + make_interval(secs => $2)
			WHERE id = $1`, u.id, l.Lockout.Seconds())
	case !counted:
		err = s.db.System.QueryRow(ctx, `UPDATE users SET
			failed_logins = CASE WHEN failed_logins + 1 >= $2 THEN 0 ELSE failed_logins + 1 END,
			locked_until = CASE WHEN failed_logins + 1 >= $2 THEN now() + make_interval(secs => $3) ELSE locked_until END
			WHERE id = $1 RETURNING coalesce(locked_until > now(), false)`, u.id, l.MaxFailures, l.Lockout.Seconds()).Scan(&locked)
	}
	if err != nil {
		return locked, fmt.Errorf("count failed login: %w", err)
	}
	return locked, errBadLogin
}

// loginSucceeded resets the account's counters.
func (s *Service) loginSucceeded(ctx context.Context, email string, user uuid.UUID) error {
	if rdb := s.redis(); rdb != nil {
		s.redisFailed(rdb.Del(ctx, "nx:login:fail:"+accountKey(email)).Err())
	}
	_, err := s.db.System.Exec(ctx, `UPDATE users SET failed_logins = 0, locked_until = NULL
		WHERE id = $1 AND (failed_logins <> 0 OR locked_until IS NOT NULL)`, user)
	return err
}
