package api_test

import (
	"fmt"
	"math/rand/v2"
	"net/http"
	"strconv"
	"strings"
	"testing"

	"github.com/google/uuid"

	"github.com/nxcloud/nxcloud/apps/downgrade"
	"github.com/nxcloud/nxcloud/tenants/tenanttest"
)

// seedDowngradeIsolation seeds tenant A with downgrade records for
// TestTenantIsolation: a price list and a recorded downgrade of a lot on its
// own line.
func seedDowngradeIsolation(t *testing.T, s *testServer, a tenanttest.Tenant, credA string) isolationSeed {
	sfx := strings.ReplaceAll(uuid.NewString(), "-", "")[:10]
	line := "iso-dg-line-" + sfx
	s.do(t, "POST", "/api/v1/lines", credA, fmt.Sprintf(`{"key":%q,"name":"Iso line"}`, line))
	price := 9000 + float64(rand.IntN(9000)+1000)/10000
	priceText := strconv.FormatFloat(price, 'f', -1, 64)
	s.do(t, "PUT", "/api/v1/grade-prices", credA, fmt.Sprintf(`{"prices":[{"grade":"N52","price":%s},{"grade":"N50","price":700}]}`, priceText))
	code := "ISO-DG-" + sfx
	s.do(t, "POST", "/api/v1/lots", credA, fmt.Sprintf(`{"code":%q,"grade":"N52","quantity":80,"line":%q}`, code, line))
	dg := decode[downgrade.Downgrade](t, "A's downgrade", s.do(t, "POST", "/api/v1/downgrades", credA,
		fmt.Sprintf(`{"lot":%q,"assigned_grade":"N50","quantity":20,"reason_code":"LOW_BR","disposition":"sell_lower","note":"iso-note-%s"}`, code, sfx)), http.StatusCreated)
	return isolationSeed{
		Markers: map[string]string{"A's downgrade": dg.ID.String(), "A's downgraded lot": code, "A's downgrade note": "iso-note-" + sfx,
			"A's line for downgrades": line, "A's N52 price": priceText},
		Fills: map[string][]string{"downgrade": {dg.ID.String(), strings.ToUpper(dg.ID.String())}},
		Query: map[string]string{"/api/v1/downgrade-analytics": "group_by=line"},
	}
}
