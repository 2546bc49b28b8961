package api_test

import (
	"testing"

	"github.com/nxcloud/nxcloud/tenants/tenanttest"
)

// isolationSeed is what an N app adds to the generated isolation suite
// (TestTenantIsolation): tenant A's records, as markers that must never reach
// tenant B; the values of A's that fill the app's path parameters; and the
// query parameters its GET routes need to answer A 200.
type isolationSeed struct {
	Markers map[string]string
	Fills   map[string][]string
	Query   map[string]string
}

// appIsolationSeeds seed tenant A with each app's records through the API
// (s.do with credA, tenant A's API key). One function per app, each in the
// app's own test file (api/<app>_isolation_test.go).
var appIsolationSeeds = []func(t *testing.T, s *testServer, a tenanttest.Tenant, credA string) isolationSeed{
	seedBatchIsolation, seedDowngradeIsolation, seedQualityIsolation, seedRecipeIsolation, seedMeteringIsolation,
}
