package api_test

import (
	"testing"

	"github.com/nxcloud/nxcloud/tenants/tenanttest"
)

// seedRecipeIsolation seeds tenant A with recipe records for TestTenantIsolation.
func seedRecipeIsolation(t *testing.T, s *testServer, a tenanttest.Tenant, credA string) isolationSeed {
	return isolationSeed{}
}
