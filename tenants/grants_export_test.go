package tenants

import "time"

// SetGrantCacheTTL lets a test keep grant checks cached far longer than
// production allows, to prove that a revocation reaches a replica through
// Redis rather than by the cache expiring.
func SetGrantCacheTTL(s *Service, ttl time.Duration) { s.grants.cache.ttl = ttl }

// SetKeyCacheTTL lets a test keep API key checks cached far longer than
// production allows, to prove that a revocation or a suspension reaches a
// replica through Redis rather than by the cache expiring.
func SetKeyCacheTTL(s *Service, ttl time.Duration) { s.auth.keyTTL = ttl }
