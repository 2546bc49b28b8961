package tenants

import "time"

// SetGrantCacheTTL lets a test keep grant checks cached far longer than
// production allows, to prove that a revocation reaches a replica through
// Redis rather than by the cache expiring.
func SetGrantCacheTTL(s *Service, ttl time.Duration) { s.grants.cache.ttl = ttl }
