package tenants

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"

	"github.com/nxcloud/nxcloud/apps"
)

// authCache remembers credential checks briefly, so a reconnect storm does not
// become a query storm, while a disabled device or a revoked key is refused
// within ttl.
type authCache struct {
	ttl time.Duration
	// keyTTL bounds API key checks: at most maxKeyCacheTTL, whatever ttl the
	// devices use, so a revoked key is refused within seconds even when
	// Redis cannot tell the replicas.
	keyTTL  time.Duration
	mu      sync.Mutex
	creds   map[string]credEntry     // by MQTT username
	devices map[uuid.UUID]identEntry // by device id
	keys    map[string]keyEntry      // by API key prefix
}

type credEntry struct {
	id         Identity
	salt, hash []byte
	at         time.Time
}

type identEntry struct {
	id Identity
	at time.Time
}

type keyEntry struct {
	p          Principal
	salt, hash []byte
	expires    *time.Time
	active     bool
	at         time.Time
}

// maxKeyCacheTTL bounds how long a replica trusts an API key check it made.
const maxKeyCacheTTL = 3 * time.Second

func newAuthCache(ttl time.Duration) *authCache {
	if ttl <= 0 {
		ttl = 3 * time.Second
	}
	return &authCache{ttl: ttl, keyTTL: min(ttl, maxKeyCacheTTL), creds: map[string]credEntry{},
		devices: map[uuid.UUID]identEntry{}, keys: map[string]keyEntry{}}
}

// forgetKey drops the cached check of the API key with prefix.
func (c *authCache) forgetKey(prefix string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	delete(c.keys, prefix)
}

// forgetKeys drops every cached API key check.
func (c *authCache) forgetKeys() {
	c.mu.Lock()
	defer c.mu.Unlock()
	clear(c.keys)
}

// forgetTenant drops every cached check of a tenant's keys and devices.
func (c *authCache) forgetTenant(tenant uuid.UUID) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for k, e := range c.keys {
		if e.p.TenantID == tenant {
			delete(c.keys, k)
		}
	}
	for k, e := range c.creds {
		if e.id.TenantID == tenant {
			delete(c.creds, k)
		}
	}
	for k, e := range c.devices {
		if e.id.TenantID == tenant {
			delete(c.devices, k)
		}
	}
}

func (c *authCache) forgetDevice(id uuid.UUID) {
	c.mu.Lock()
	defer c.mu.Unlock()
	delete(c.devices, id)
	for k, e := range c.creds {
		if e.id.DeviceID == id {
			delete(c.creds, k)
		}
	}
}

// prune drops expired entries; called on insert so the maps stay bounded by the
// number of credentials seen within one ttl.
func (c *authCache) prune(now time.Time) {
	if len(c.creds)+len(c.devices)+len(c.keys) < 4096 {
		return
	}
	for k, e := range c.creds {
		if now.Sub(e.at) > c.ttl {
			delete(c.creds, k)
		}
	}
	for k, e := range c.devices {
		if now.Sub(e.at) > c.ttl {
			delete(c.devices, k)
		}
	}
	for k, e := range c.keys {
		if now.Sub(e.at) > c.ttl {
			delete(c.keys, k)
		}
	}
}

var errBadCredentials = apps.Errorf(apps.Unauthorized, "bad username or password")

const identitySelect = `SELECT d.tenant_id, t.slug, d.id, d.key, d.device_model_id,
	d.status = 'active' AND t.status = 'active', d.secret_salt, d.secret_hash
	FROM devices d JOIN tenants t ON t.id = d.tenant_id`

// Authenticate checks a device's MQTT credentials: username
// "<device-key>@<tenant-slug>", password the device secret. Errors:
// unauthorized (the same for an unknown device and a wrong secret).
func (s *Service) Authenticate(ctx context.Context, username string, password []byte) (Identity, error) {
	now := s.now()
	s.auth.mu.Lock()
	e, ok := s.auth.creds[username]
	s.auth.mu.Unlock()
	if !ok || now.Sub(e.at) > s.auth.ttl {
		key, slug, valid := splitUsername(username)
		if !valid {
			return Identity{}, errBadCredentials
		}
		err := s.db.System.QueryRow(ctx, identitySelect+` WHERE t.slug = $1 AND d.key = $2`, slug, key).
			Scan(&e.id.TenantID, &e.id.TenantSlug, &e.id.DeviceID, &e.id.DeviceKey, &e.id.ModelID, &e.id.Active, &e.salt, &e.hash)
		if errors.Is(err, pgx.ErrNoRows) {
			checkSecret(make([]byte, 16), make([]byte, 32), string(password)) // same work as a real check
			return Identity{}, errBadCredentials
		}
		if err != nil {
			return Identity{}, err
		}
		e.at = now
		s.auth.mu.Lock()
		s.auth.prune(now)
		s.auth.creds[username] = e
		s.auth.devices[e.id.DeviceID] = identEntry{id: e.id, at: now}
		s.auth.mu.Unlock()
	}
	if !checkSecret(e.salt, e.hash, string(password)) {
		return Identity{}, errBadCredentials
	}
	if !e.id.Active {
		return e.id, apps.Errorf(apps.Forbidden, "device or enterprise is disabled")
	}
	return e.id, nil
}

// Lookup resolves an MQTT username ("<device-key>@<tenant-slug>") to its
// device's identity without checking a secret: the broker uses it to
// re-attach persistent sessions restored after a restart. Errors: not_found.
func (s *Service) Lookup(ctx context.Context, username string) (Identity, error) {
	key, slug, valid := splitUsername(username)
	if !valid {
		return Identity{}, apps.Errorf(apps.NotFound, "no device %q", username)
	}
	var id Identity
	var salt, hash []byte
	err := s.db.System.QueryRow(ctx, identitySelect+` WHERE t.slug = $1 AND d.key = $2`, slug, key).
		Scan(&id.TenantID, &id.TenantSlug, &id.DeviceID, &id.DeviceKey, &id.ModelID, &id.Active, &salt, &hash)
	if err != nil {
		return Identity{}, StoreError(err, "device")
	}
	return id, nil
}

// Identity returns a device's identity and whether it is active, cached for at
// most the cache TTL. Errors: not_found.
func (s *Service) Identity(ctx context.Context, device uuid.UUID) (Identity, error) {
	now := s.now()
	s.auth.mu.Lock()
	e, ok := s.auth.devices[device]
	s.auth.mu.Unlock()
	if ok && now.Sub(e.at) <= s.auth.ttl {
		return e.id, nil
	}
	var id Identity
	var salt, hash []byte
	err := s.db.System.QueryRow(ctx, identitySelect+` WHERE d.id = $1`, device).
		Scan(&id.TenantID, &id.TenantSlug, &id.DeviceID, &id.DeviceKey, &id.ModelID, &id.Active, &salt, &hash)
	if err != nil {
		return Identity{}, StoreError(err, "device")
	}
	s.auth.mu.Lock()
	s.auth.prune(now)
	s.auth.devices[device] = identEntry{id: id, at: now}
	s.auth.mu.Unlock()
	return id, nil
}

// Identities returns the current identity of each of the given devices in
// one query (the broker re-validates every connected device this way each
// round); a device that no longer exists is absent from the map. The answers
// refresh the cache Identity reads.
func (s *Service) Identities(ctx context.Context, devices []uuid.UUID) (map[uuid.UUID]Identity, error) {
	rows, err := s.db.System.Query(ctx, identitySelect+` WHERE d.id = ANY($1)`, devices)
	if err != nil {
		return nil, fmt.Errorf("device identities: %w", err)
	}
	defer rows.Close()
	out := make(map[uuid.UUID]Identity, len(devices))
	for rows.Next() {
		var id Identity
		var salt, hash []byte
		if err := rows.Scan(&id.TenantID, &id.TenantSlug, &id.DeviceID, &id.DeviceKey, &id.ModelID, &id.Active, &salt, &hash); err != nil {
			return nil, err
		}
		out[id.DeviceID] = id
	}
	if err := rows.Err(); err != nil {
		return nil, err
	}
	now := s.now()
	s.auth.mu.Lock()
	s.auth.prune(now)
	for d, id := range out {
		s.auth.devices[d] = identEntry{id: id, at: now}
	}
	s.auth.mu.Unlock()
	return out, nil
}

// AuthenticateAPIKey resolves a tenant API key ("nxk_<prefix>_<secret>") to a
// principal carrying the key's scopes. A check is cached for at most three
// seconds; a revocation or a suspension drops it at once on every replica
// through Redis. Errors: unauthorized (unknown, wrong, expired or revoked
// key, or suspended tenant — all alike).
func (s *Service) AuthenticateAPIKey(ctx context.Context, token string) (Principal, error) {
	prefix, secret, ok := splitAPIKey(token)
	if !ok {
		return Principal{}, apps.Errorf(apps.Unauthorized, "invalid API key")
	}
	now := s.now()
	s.auth.mu.Lock()
	e, ok := s.auth.keys[prefix]
	s.auth.mu.Unlock()
	if !ok || now.Sub(e.at) > s.auth.keyTTL {
		e = keyEntry{}
		err := s.db.System.QueryRow(ctx, `SELECT k.id, k.tenant_id, k.name, k.scopes, k.expires_at, k.salt, k.hash,
			k.revoked_at IS NULL AND (k.expires_at IS NULL OR k.expires_at > now()) AND t.status = 'active'
			FROM api_keys k JOIN tenants t ON t.id = k.tenant_id WHERE k.prefix = $1`, prefix).
			Scan(&e.p.KeyID, &e.p.TenantID, &e.p.Name, &e.p.Scopes, &e.expires, &e.salt, &e.hash, &e.active)
		if errors.Is(err, pgx.ErrNoRows) {
			checkSecret(make([]byte, 16), make([]byte, 32), secret)
			return Principal{}, apps.Errorf(apps.Unauthorized, "invalid API key")
		}
		if err != nil {
			return Principal{}, err
		}
		e.p.Kind = KindAPIKey
		e.p.OrgKind = OrgEnterprise
		e.at = now
		s.auth.mu.Lock()
		s.auth.prune(now)
		s.auth.keys[prefix] = e
		s.auth.mu.Unlock()
	}
	// A key stops working when it expires, not a cache period later.
	expired := e.expires != nil && !now.Before(*e.expires)
	if !checkSecret(e.salt, e.hash, secret) || !e.active || expired {
		return Principal{}, apps.Errorf(apps.Unauthorized, "invalid API key")
	}
	p := e.p
	p.Scopes = slices.Clone(e.p.Scopes) // the cached entry is shared
	return p, nil
}
