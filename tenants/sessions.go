package tenants

import (
	"context"
	"encoding/hex"
	"encoding/json"
	"errors"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/redis/go-redis/v9"

	"github.com/nxcloud/nxcloud/apps"
)

// A session is resolved from three layers: an in-process cache of at most
// sessionLocalTTL (so a busy client costs no round trip), Redis (shared by the
// replicas, at most sessionRedisTTL) and PostgreSQL, the truth. Revoking
// writes the truth first, then replaces the Redis entry with a tombstone that
// refuses re-caching and publishes the hash on revokedChannel, so every
// replica drops its local entry at once; when Redis is away the local TTL
// alone bounds how long a revoked session lives on a replica.
//
// revokedChannel carries, comma-separated, the hex hashes of revoked
// sessions, "key:<prefix>" for a revoked API key and "tenant:<id>" for an
// enterprise whose status changed (every replica then drops what it cached
// of that tenant: sessions, API keys, devices, grant checks).
const (
	sessionLocalTTL  = time.Second
	sessionRedisTTL  = time.Minute
	tombstoneTTL     = sessionRedisTTL + 10*time.Second
	tombstone        = "-"
	revokedChannel   = "nx:revoked"
	sessionKeyPrefix = "nx:session:"
	// redisPause is how long Redis is left alone after a failed call, so an
	// outage costs one timeout per pause, not one per request.
	redisPause = 2 * time.Second

	defaultSessionLifetime = 12 * time.Hour
)

// identity is the Service's state for sessions and login throttling.
type identity struct {
	rdb       redis.UniversalClient
	downUntil atomic.Int64 // unix nanoseconds
	mu        sync.Mutex
	sessions  map[string]localSession // by hex token hash
}

type localSession struct {
	p       Principal
	expires time.Time
	at      time.Time
}

func newIdentity() *identity { return &identity{sessions: map[string]localSession{}} }

// UseRedis gives the Service its Redis client: sessions are cached there,
// revocations are broadcast through it and login throttling counts there.
// It subscribes to revocations until rdb is closed, and returns once
// subscribed (or after a few seconds if Redis is not there yet: the
// subscription is retried in the background). Call it once, before serving;
// without it, sessions and throttling use the database alone.
func (s *Service) UseRedis(rdb redis.UniversalClient) {
	s.ident.rdb = rdb
	ps := rdb.Subscribe(context.Background(), revokedChannel)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	_, _ = ps.Receive(ctx) // the subscription's confirmation; an error is retried below
	go s.watchRevocations(ps)
}

// redis returns the client, or nil when there is none or it failed within the
// last redisPause.
func (s *Service) redis() redis.UniversalClient {
	if s.ident.rdb == nil || time.Now().UnixNano() < s.ident.downUntil.Load() {
		return nil
	}
	return s.ident.rdb
}

// redisFailed notes a failed Redis call (not a miss, not the caller giving up).
func (s *Service) redisFailed(err error) {
	if err == nil || errors.Is(err, redis.Nil) || errors.Is(err, context.Canceled) {
		return
	}
	s.ident.downUntil.Store(time.Now().Add(redisPause).UnixNano())
}

func (s *Service) watchRevocations(ps *redis.PubSub) {
	ctx := context.Background()
	defer ps.Close()
	backoff := 50 * time.Millisecond
	for {
		msg, err := ps.ReceiveMessage(ctx)
		if errors.Is(err, redis.ErrClosed) {
			return
		}
		if err != nil {
			// Messages may have been missed while disconnected.
			s.dropRevoked(nil)
			time.Sleep(backoff)
			backoff = min(2*backoff, time.Second)
			continue
		}
		backoff = 50 * time.Millisecond
		s.dropRevoked(strings.Split(msg.Payload, ","))
	}
}

const (
	revokedKeyTag    = "key:"
	revokedTenantTag = "tenant:"
)

// dropRevoked forgets what this replica cached of the items of a revocation
// announcement. With nil (announcements may have been missed) it forgets the
// sessions and API key checks; device checks are left to their TTL, so that a
// Redis outage does not turn the broker's rechecks into a query per device.
func (s *Service) dropRevoked(items []string) {
	if items == nil {
		s.dropLocalSessions(nil)
		s.auth.forgetKeys()
		return
	}
	var sessions []string
	for _, it := range items {
		if prefix, ok := strings.CutPrefix(it, revokedKeyTag); ok {
			s.auth.forgetKey(prefix)
		} else if ref, ok := strings.CutPrefix(it, revokedTenantTag); ok {
			if id, err := uuid.Parse(ref); err == nil {
				s.forgetTenant(id)
			}
		} else {
			sessions = append(sessions, it)
		}
	}
	if len(sessions) > 0 {
		s.dropLocalSessions(sessions)
	}
}

// forgetTenant drops this replica's cached checks of a tenant: its members'
// sessions, its API keys and devices, and contractors' grant checks on it.
func (s *Service) forgetTenant(tenant uuid.UUID) {
	s.auth.forgetTenant(tenant)
	s.grants.cache.forgetTenant(tenant)
	s.ident.mu.Lock()
	defer s.ident.mu.Unlock()
	for k, e := range s.ident.sessions {
		if e.p.TenantID == tenant {
			delete(s.ident.sessions, k)
		}
	}
}

// announceRevoked tells the other replicas (see revokedChannel). When Redis
// is away they learn within their cache TTLs anyway: the change itself is
// committed, so a failure is not returned.
func (s *Service) announceRevoked(ctx context.Context, items ...string) {
	rdb := s.redis()
	if rdb == nil || len(items) == 0 {
		return
	}
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Second)
	defer cancel()
	s.redisFailed(rdb.Publish(ctx, revokedChannel, strings.Join(items, ",")).Err())
}

// dropLocalSessions forgets the given cached sessions (all when keys is nil).
func (s *Service) dropLocalSessions(keys []string) {
	s.ident.mu.Lock()
	defer s.ident.mu.Unlock()
	if keys == nil {
		clear(s.ident.sessions)
		return
	}
	for _, k := range keys {
		delete(s.ident.sessions, k)
	}
}

var errBadSession = apps.Errorf(apps.Unauthorized, "invalid or expired session")

// cachedSession is the Redis form of a resolved session.
type cachedSession struct {
	UserID    uuid.UUID `json:"user_id"`
	OrgID     uuid.UUID `json:"org_id"`
	OrgKind   string    `json:"org_kind"`
	Role      string    `json:"role"`
	Name      string    `json:"name"`
	TenantID  uuid.UUID `json:"tenant_id"`
	ExpiresAt time.Time `json:"expires_at"`
}

func (c cachedSession) principal() Principal {
	return Principal{Kind: KindUser, UserID: c.UserID, OrgID: c.OrgID, OrgKind: c.OrgKind, Role: c.Role,
		Name: c.Name, TenantID: c.TenantID}
}

// AuthenticateSession resolves a session token ("nxs_..."): the user, its
// organisation and role, and for an enterprise organisation its tenant.
// Errors: unauthorized (malformed, unknown, expired or revoked token, disabled
// user, removed membership, suspended enterprise — all alike).
func (s *Service) AuthenticateSession(ctx context.Context, token string) (Principal, error) {
	hash, ok := parseToken(sessionTag, token)
	if !ok {
		return Principal{}, errBadSession
	}
	key := hex.EncodeToString(hash)
	now := time.Now()
	s.ident.mu.Lock()
	e, ok := s.ident.sessions[key]
	s.ident.mu.Unlock()
	if ok && now.Sub(e.at) <= sessionLocalTTL && now.Before(e.expires) {
		return e.p, nil
	}
	var cs cachedSession
	cached := false
	if rdb := s.redis(); rdb != nil {
		v, err := rdb.Get(ctx, sessionKeyPrefix+key).Bytes()
		s.redisFailed(err)
		if err == nil && string(v) != tombstone && json.Unmarshal(v, &cs) == nil && now.Before(cs.ExpiresAt) {
			cached = true
		}
	}
	if !cached {
		var err error
		if cs, err = s.sessionFromDB(ctx, hash); err != nil {
			return Principal{}, err
		}
		if rdb := s.redis(); rdb != nil {
			if ttl := min(sessionRedisTTL, time.Until(cs.ExpiresAt)); ttl > 0 {
				body, _ := json.Marshal(cs)
				// NX: a tombstone written by a revocation is never overwritten
				// by a lookup that read the database before it.
				s.redisFailed(rdb.SetNX(ctx, sessionKeyPrefix+key, body, ttl).Err())
			}
		}
	}
	p := cs.principal()
	s.ident.mu.Lock()
	if len(s.ident.sessions) > 8192 {
		for k, x := range s.ident.sessions {
			if now.Sub(x.at) > sessionLocalTTL {
				delete(s.ident.sessions, k)
			}
		}
	}
	s.ident.sessions[key] = localSession{p: p, expires: cs.ExpiresAt, at: now}
	s.ident.mu.Unlock()
	return p, nil
}

func (s *Service) sessionFromDB(ctx context.Context, hash []byte) (cachedSession, error) {
	var cs cachedSession
	var tenant *uuid.UUID
	err := s.db.System.QueryRow(ctx, `
		SELECT s.user_id, s.org_id, o.kind, m.role, u.name, o.tenant_id, s.expires_at
		FROM sessions s
		JOIN users u ON u.id = s.user_id
		JOIN orgs o ON o.id = s.org_id
		JOIN memberships m ON m.org_id = s.org_id AND m.user_id = s.user_id
		LEFT JOIN tenants t ON t.id = o.tenant_id
		WHERE s.token_hash = $1 AND s.revoked_at IS NULL AND s.expires_at > now()
		  AND u.status = 'active' AND (o.tenant_id IS NULL OR t.status = 'active')`, hash).
		Scan(&cs.UserID, &cs.OrgID, &cs.OrgKind, &cs.Role, &cs.Name, &tenant, &cs.ExpiresAt)
	if errors.Is(err, pgx.ErrNoRows) {
		return cs, errBadSession
	}
	if err != nil {
		return cs, err
	}
	if tenant != nil && cs.OrgKind == OrgEnterprise {
		cs.TenantID = *tenant
	}
	return cs, nil
}

// Logout revokes the session of token and records it in the audit log
// (auth.logout; a token that is not a live session is refused and not
// recorded). Errors: unauthorized (not a live session).
func (s *Service) Logout(ctx context.Context, token string) error {
	hash, ok := parseToken(sessionTag, token)
	if !ok {
		return errBadSession
	}
	ev := newAuthEvent(ActionLogout, "", "")
	var user uuid.UUID
	var name string
	var org OrgRef
	var role string
	err := s.db.System.QueryRow(ctx, `UPDATE sessions s SET revoked_at = now() FROM users u, orgs o
		WHERE s.token_hash = $1 AND s.revoked_at IS NULL AND s.expires_at > now() AND u.id = s.user_id AND o.id = s.org_id
		RETURNING s.user_id, u.name, o.id, o.kind, o.name,
			coalesce((SELECT m.role FROM memberships m WHERE m.org_id = s.org_id AND m.user_id = s.user_id), '')`, hash).
		Scan(&user, &name, &org.ID, &org.Kind, &org.Name, &role)
	if errors.Is(err, pgx.ErrNoRows) {
		return errBadSession
	}
	if err != nil {
		return err
	}
	s.forgetSessions(ctx, [][]byte{hash})
	ev.user(user, name)
	ev.member(org, role)
	s.auditAuth(ctx, ev, nil)
	return nil
}

// revokeSessions revokes a user's live sessions (in one organisation, unless
// org is Nil) and makes every replica forget them.
func (s *Service) revokeSessions(ctx context.Context, q Querier, user, org uuid.UUID) ([][]byte, error) {
	rows, err := q.Query(ctx, `UPDATE sessions SET revoked_at = now()
		WHERE user_id = $1 AND ($2::uuid IS NULL OR org_id = $2) AND revoked_at IS NULL AND expires_at > now()
		RETURNING token_hash`, user, nullID(org))
	if err != nil {
		return nil, err
	}
	return pgx.CollectRows(rows, pgx.RowTo[[]byte])
}

// liveSessions returns the hashes of a user's live sessions (in one
// organisation, unless org is Nil), whose cached principals a change of role
// or status makes stale.
func (s *Service) liveSessions(ctx context.Context, user, org uuid.UUID) ([][]byte, error) {
	rows, err := s.db.System.Query(ctx, `SELECT token_hash FROM sessions
		WHERE user_id = $1 AND ($2::uuid IS NULL OR org_id = $2) AND revoked_at IS NULL AND expires_at > now()`,
		user, nullID(org))
	if err != nil {
		return nil, err
	}
	return pgx.CollectRows(rows, pgx.RowTo[[]byte])
}

func nullID(id uuid.UUID) *uuid.UUID {
	if id == uuid.Nil {
		return nil
	}
	return &id
}

// forgetSessions drops cached sessions here, in Redis and, through
// revokedChannel, on every other replica. Call it after the database change
// is committed.
func (s *Service) forgetSessions(ctx context.Context, hashes [][]byte) {
	if len(hashes) == 0 {
		return
	}
	keys := make([]string, len(hashes))
	for i, h := range hashes {
		keys[i] = hex.EncodeToString(h)
	}
	s.dropLocalSessions(keys)
	rdb := s.redis()
	if rdb == nil {
		return
	}
	ctx = context.WithoutCancel(ctx) // the change is committed: tell the others even if the client left
	_, err := rdb.Pipelined(ctx, func(pipe redis.Pipeliner) error {
		for _, k := range keys {
			pipe.Set(ctx, sessionKeyPrefix+k, tombstone, tombstoneTTL)
		}
		for i := 0; i < len(keys); i += 100 {
			pipe.Publish(ctx, revokedChannel, strings.Join(keys[i:min(i+100, len(keys))], ","))
		}
		return nil
	})
	s.redisFailed(err)
}

// createSession stores a new session of user in org and returns its token
// and expiry.
func (s *Service) createSession(ctx context.Context, q Querier, user, org uuid.UUID, c Client) (string, time.Time, error) {
	life := s.SessionLifetime
	if life <= 0 {
		life = defaultSessionLifetime
	}
	token, hash := newToken(sessionTag)
	var exp time.Time
	err := q.QueryRow(ctx, `INSERT INTO sessions (user_id, org_id, token_hash, expires_at, ip, user_agent)
		VALUES ($1, $2, $3, now() + make_interval(secs => $4), $5, $6) RETURNING expires_at`,
		user, org, hash, life.Seconds(), cleanText(c.IP, 64), cleanText(c.UserAgent, 512)).Scan(&exp)
	if err != nil {
		return "", time.Time{}, StoreError(err, "session")
	}
	// Expired sessions are kept a while for the record, then dropped.
	if _, err := q.Exec(ctx, `DELETE FROM sessions WHERE user_id = $1 AND expires_at < now() - interval '30 days'`, user); err != nil {
		return "", time.Time{}, err
	}
	return token, exp, nil
}

// cleanText makes client-supplied text storable: valid UTF-8, no NUL, at most
// n bytes.
func cleanText(s string, n int) string {
	return clip(strings.ReplaceAll(s, "\x00", ""), n)
}
