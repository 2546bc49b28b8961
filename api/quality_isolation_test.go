package api_test

import (
	"fmt"
	"net/http"
	"strings"
	"testing"

	"github.com/google/uuid"

	"github.com/nxcloud/nxcloud/apps/quality"
	"github.com/nxcloud/nxcloud/tenants/tenanttest"
)

// seedQualityIsolation seeds tenant A with quality records for
// TestTenantIsolation, through the API: a lot (batch API), an inspection
// plan, results of the lot (one failing, which raises a nonconformance) and a
// manual nonconformance.
func seedQualityIsolation(t *testing.T, s *testServer, a tenanttest.Tenant, credA string) isolationSeed {
	sfx := strings.ReplaceAll(uuid.NewString(), "-", "")[:10]
	product := "iso-q-product-" + sfx
	lot := qualityLot(t, s, credA, "ISO-Q-LOT-"+sfx, product, "N52")
	plan := decode[quality.Plan](t, "A's plan", s.do(t, "POST", "/api/v1/quality/plans", credA,
		fmt.Sprintf(`{"code":"ISO-Q-PLAN-%s","product":%q,"characteristics":[{"characteristic":"br","sample_size":3}]}`, sfx, product)), http.StatusCreated)
	s.do(t, "POST", "/api/v1/quality/lots/"+lot.Code+"/results", credA,
		`{"results":[{"characteristic":"br","value":1.452},{"characteristic":"br","value":1.447},{"characteristic":"br","value":1.401}]}`)
	nc := decode[quality.Nonconformance](t, "A's nonconformance", s.do(t, "POST", "/api/v1/quality/lots/"+lot.ID.String()+"/nonconformances", credA,
		`{"reason_code":"CRACK","description":"iso-q-crack-`+sfx+`"}`), http.StatusCreated)
	return isolationSeed{
		Markers: map[string]string{
			"A's inspected lot": lot.Code, "A's inspected lot id": lot.ID.String(), "A's plan": plan.Code, "A's plan id": plan.ID.String(),
			"A's nonconformance": nc.ID.String(), "A's crack": "iso-q-crack-" + sfx,
		},
		Fills: map[string][]string{
			"inspected_lot":   {lot.Code, lot.ID.String(), strings.ToUpper(lot.ID.String())},
			"inspection_plan": {plan.Code, plan.ID.String()},
			"nonconformance":  {nc.ID.String()},
		},
		Query: map[string]string{"/api/v1/quality/spc": "characteristic=br&chart=imr"},
	}
}

// qualityLotRef is what the quality tests need of a lot made through the
// batch API.
type qualityLotRef struct {
	ID   uuid.UUID `json:"id"`
	Code string    `json:"code"`
}

func qualityLot(t *testing.T, s *testServer, cred, code, product, grade string) qualityLotRef {
	t.Helper()
	body := fmt.Sprintf(`{"code":%q,"product":%q,"quantity":10}`, code, product)
	if grade != "" {
		body = fmt.Sprintf(`{"code":%q,"product":%q,"grade":%q,"quantity":10}`, code, product, grade)
	}
	return decode[qualityLotRef](t, "lot "+code, s.do(t, "POST", "/api/v1/lots", cred, body), http.StatusCreated)
}
