package tenants

import (
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"slices"
	"sync"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/redis/go-redis/v9"

	"github.com/nxcloud/nxcloud/apps"
)

// GrantChannel is the Redis channel on which a replica announces a grant
// change; every replica drops what it cached for that contractor and tenant.
const GrantChannel = "nx:grants"

// maxGrantCacheTTL bounds how long a replica trusts a grant check it made. It
// is what guarantees that a revocation takes effect everywhere within
// seconds, Redis or not; the Redis announcement only makes it immediate.
const maxGrantCacheTTL = 2 * time.Second

// errNoGrant is the one answer to a contractor without access, whether the
// tenant exists or not, so tenants cannot be enumerated.
var errNoGrant = apps.Errorf(apps.Forbidden, "no active grant from this tenant")

// grantState is a Service's grant machinery: the cache of grant checks and
// the Redis client that announces changes to the other replicas.
type grantState struct {
	cache *grantCache
	mu    sync.Mutex
	rdb   redis.UniversalClient
	log   *slog.Logger
}

func newGrantState(ttl time.Duration) *grantState {
	return &grantState{cache: newGrantCache(ttl), log: slog.New(slog.DiscardHandler)}
}

func (g *grantState) bus() (redis.UniversalClient, *slog.Logger) {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.rdb, g.log
}

// grantCache remembers, per contractor organisation and tenant reference,
// whether a live grant admits it and with which scopes.
type grantCache struct {
	ttl     time.Duration
	mu      sync.Mutex
	entries map[grantKey]grantEntry
}

type grantKey struct {
	org uuid.UUID
	ref string
}

type grantEntry struct {
	tenant uuid.UUID // the tenant ref names, when it exists
	scopes []string  // nil: no live grant
	until  time.Time
}

func newGrantCache(ttl time.Duration) *grantCache {
	if ttl <= 0 || ttl > maxGrantCacheTTL {
		ttl = maxGrantCacheTTL
	}
	return &grantCache{ttl: ttl, entries: map[grantKey]grantEntry{}}
}

func (c *grantCache) get(k grantKey, now time.Time) (grantEntry, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	e, ok := c.entries[k]
	if !ok || !now.Before(e.until) {
		return grantEntry{}, false
	}
	return e, true
}

func (c *grantCache) put(k grantKey, e grantEntry, now time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.entries) >= 4096 {
		for k, e := range c.entries {
			if !now.Before(e.until) {
				delete(c.entries, k)
			}
		}
	}
	c.entries[k] = e
}

// forgetTenant drops every cached check on tenant.
func (c *grantCache) forgetTenant(tenant uuid.UUID) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for k, e := range c.entries {
		if e.tenant == tenant {
			delete(c.entries, k)
		}
	}
}

// forget drops what is cached for org on tenant (every org when org is Nil).
func (c *grantCache) forget(org, tenant uuid.UUID) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for k, e := range c.entries {
		if org == uuid.Nil || (k.org == org && (e.tenant == tenant || e.tenant == uuid.Nil)) {
			delete(c.entries, k)
		}
	}
}

// ContractorTenant admits a contractor principal to the tenant it names (ref:
// slug or id, from the X-Nx-Tenant header) through a live grant — not revoked,
// not expired, from an active tenant — and returns the principal acting on that
// tenant with the grant's scopes (the union of its live grants'). The answer is
// cached for at most two seconds; a revocation on any replica drops it at once
// through Redis. A refusal is audited on the named tenant. Errors: forbidden
// (the same for an unknown tenant).
func (s *Service) ContractorTenant(ctx context.Context, p Principal, ref string) (Principal, error) {
	if p.OrgKind != OrgContractor || p.OrgID == uuid.Nil {
		return Principal{}, errNoGrant
	}
	// One of id and slug is set: the canonical id form, or a slug.
	var id *uuid.UUID
	var slug *string
	k := grantKey{org: p.OrgID, ref: ref}
	if u, err := uuid.Parse(ref); err == nil && len(ref) == 36 {
		id, k.ref = &u, u.String()
	} else if slugRE.MatchString(ref) {
		slug = &ref
	} else {
		s.auditDenied(ctx, p, uuid.Nil, ref)
		return Principal{}, errNoGrant
	}
	now := s.now()
	e, ok := s.grants.cache.get(k, now)
	if !ok {
		var err error
		if e, err = s.lookupGrant(ctx, p.OrgID, id, slug, now); err != nil {
			return Principal{}, err
		}
		s.grants.cache.put(k, e, now)
	}
	if e.scopes == nil {
		s.auditDenied(ctx, p, e.tenant, ref)
		return Principal{}, errNoGrant
	}
	p.TenantID = e.tenant
	p.Scopes = slices.Clone(e.scopes)
	return p, nil
}

// ResolveTenant returns the id of the tenant ref names (slug or id), read as
// the system. Errors: not_found.
func (s *Service) ResolveTenant(ctx context.Context, ref string) (uuid.UUID, error) {
	var id uuid.UUID
	var err error
	if u, perr := uuid.Parse(ref); perr == nil && len(ref) == 36 {
		err = s.db.System.QueryRow(ctx, `SELECT id FROM tenants WHERE id = $1`, u).Scan(&id)
	} else if slugRE.MatchString(ref) {
		err = s.db.System.QueryRow(ctx, `SELECT id FROM tenants WHERE slug = $1`, ref).Scan(&id)
	} else {
		err = pgx.ErrNoRows
	}
	return id, StoreError(err, "enterprise")
}

// lookupGrant reads, as the system, the live grants of org on the tenant
// with id or slug (one of them nil, so each side of the OR uses its index).
func (s *Service) lookupGrant(ctx context.Context, org uuid.UUID, id *uuid.UUID, slug *string, now time.Time) (grantEntry, error) {
	var e grantEntry
	var expires *time.Time
	var active bool
	err := s.db.System.QueryRow(ctx, `
		SELECT t.id, t.status = 'active',
			(SELECT array_agg(DISTINCT s ORDER BY s) FROM grants g, unnest(g.scopes) s
			 WHERE g.tenant_id = t.id AND g.contractor_org_id = $1 AND g.revoked_at IS NULL AND g.expires_at > now()),
			(SELECT min(g.expires_at) FROM grants g
			 WHERE g.tenant_id = t.id AND g.contractor_org_id = $1 AND g.revoked_at IS NULL AND g.expires_at > now())
		FROM tenants t WHERE t.id = $2 OR t.slug = $3`,
		org, id, slug).Scan(&e.tenant, &active, &e.scopes, &expires)
	if err != nil && !errors.Is(err, pgx.ErrNoRows) {
		return grantEntry{}, err
	}
	if !active {
		e.scopes = nil
	}
	e.until = now.Add(s.grants.cache.ttl)
	// A grant stops admitting when it expires, not a cache period later.
	if expires != nil && expires.Before(e.until) {
		e.until = *expires
	}
	return e, nil
}

// auditDenied records a refused contractor on the tenant it named (when that
// exists), so the enterprise sees attempts after a revocation or expiry.
func (s *Service) auditDenied(ctx context.Context, p Principal, tenant uuid.UUID, ref string) {
	ref = clip(ref, 100)
	s.auditEvent(ctx, AuditEntry{Tenant: tenant, Actor: &p, Action: "contractor.access", Resource: "tenants/" + ref,
		Result: AuditDenied, Status: 403, Detail: map[string]any{"reason": "no active grant", "tenant": ref}})
}

type grantChange struct {
	Org    uuid.UUID `json:"org"`
	Tenant uuid.UUID `json:"tenant"`
}

// UseRedisGrants announces grant changes on GrantChannel through rdb and
// listens for other replicas' until ctx ends, dropping cached grant checks
// as they come (and all of them whenever the subscription is re-established,
// since announcements may have been missed meanwhile). log may be nil.
func (s *Service) UseRedisGrants(ctx context.Context, rdb redis.UniversalClient, log *slog.Logger) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	s.grants.mu.Lock()
	s.grants.rdb, s.grants.log = rdb, log
	s.grants.mu.Unlock()
	ps := rdb.Subscribe(ctx, GrantChannel)
	// Wait for the subscription, so that announcements made after this
	// returns are heard; when Redis is away the channel resubscribes later.
	wctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	if _, err := ps.Receive(wctx); err != nil {
		log.Warn("not subscribed to grant announcements yet; revocations reach this replica within the grant cache TTL meanwhile",
			"channel", GrantChannel, "err", err)
	}
	cancel()
	ch := ps.ChannelWithSubscriptions()
	go func() {
		defer ps.Close()
		for {
			select {
			case <-ctx.Done():
				return
			case m, ok := <-ch:
				if !ok {
					return
				}
				switch m := m.(type) {
				case *redis.Subscription:
					s.grants.cache.forget(uuid.Nil, uuid.Nil)
				case *redis.Message:
					var c grantChange
					if err := json.Unmarshal([]byte(m.Payload), &c); err != nil || c.Org == uuid.Nil {
						log.Warn("unreadable grant announcement; dropping every cached grant check", "payload", clip(m.Payload, 200))
						c = grantChange{}
					}
					s.grants.cache.forget(c.Org, c.Tenant)
				}
			}
		}
	}()
}

// publishGrantChange tells the other replicas. When Redis is away they learn
// within the cache TTL anyway, so a failure is logged, not returned: the
// change itself is committed.
func (s *Service) publishGrantChange(ctx context.Context, org, tenant uuid.UUID) {
	rdb, log := s.grants.bus()
	if rdb == nil {
		return
	}
	body, _ := json.Marshal(grantChange{Org: org, Tenant: tenant})
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Second)
	defer cancel()
	if err := rdb.Publish(ctx, GrantChannel, body).Err(); err != nil {
		log.Warn("announce grant change (other replicas see it within the cache TTL)", "org", org, "tenant", tenant, "err", err)
	}
}
