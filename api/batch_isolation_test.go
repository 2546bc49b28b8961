package api_test

import (
	"context"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/nxcloud/nxcloud/apps/batch"
	"github.com/nxcloud/nxcloud/tenants"
	"github.com/nxcloud/nxcloud/tenants/tenanttest"
)

// seedBatchIsolation seeds tenant A with batch records for TestTenantIsolation:
// two linked lots (one run on a device), a customer, a shipment and label
// fields, all through the API.
func seedBatchIsolation(t *testing.T, s *testServer, a tenanttest.Tenant, credA string) isolationSeed {
	sfx := strings.ReplaceAll(uuid.NewString(), "-", "")[:10]
	dev, _, err := s.env.Tenants.RegisterDevice(context.Background(), a.ID, tenants.DeviceInput{Key: "iso-furnace-" + sfx, Model: "sintering-furnace"})
	if err != nil {
		t.Fatal(err)
	}
	product := "iso-product-" + sfx
	raw := decode[batch.Lot](t, "A's raw lot", s.do(t, "POST", "/api/v1/lots", credA,
		fmt.Sprintf(`{"code":"ISO-RAW-%s","kind":"raw","quantity":100,"product":%q,"supplier_lot":"iso-supplier-%s"}`, sfx, product, sfx)), http.StatusCreated)
	lot := decode[batch.Lot](t, "A's lot", s.do(t, "POST", "/api/v1/lots", credA,
		fmt.Sprintf(`{"code":"ISO-LOT-%s","product":%q,"grade":"N52","quantity":50}`, sfx, product)), http.StatusCreated)
	s.do(t, "POST", "/api/v1/lot-links", credA, fmt.Sprintf(`{"parent":%q,"child":%q,"kind":"consume","quantity":60}`, raw.Code, lot.Code))
	start := time.Now().UTC().Add(-time.Hour).Format(time.RFC3339)
	s.do(t, "POST", "/api/v1/lots/"+lot.Code+"/runs", credA, fmt.Sprintf(`{"device":%q,"started_at":%q}`, dev.Key, start))
	cust := decode[batch.Customer](t, "A's customer", s.do(t, "POST", "/api/v1/customers", credA,
		fmt.Sprintf(`{"code":"ISO-CUST-%s","name":"Iso customer %s"}`, sfx, sfx)), http.StatusCreated)
	ship := decode[batch.Shipment](t, "A's shipment", s.do(t, "POST", "/api/v1/shipments", credA,
		fmt.Sprintf(`{"code":"ISO-SHIP-%s","customer":%q,"shipped_at":%q,"lots":[{"lot":%q,"quantity":10}]}`, sfx, cust.Code, start, lot.Code)), http.StatusCreated)
	s.do(t, "PUT", "/api/v1/label-fields", credA, fmt.Sprintf(`{"product":%q,"fields":["code","grade"]}`, product))
	return isolationSeed{
		Markers: map[string]string{
			"A's lot code": lot.Code, "A's lot id": lot.ID.String(), "A's raw lot code": raw.Code, "A's supplier lot": "iso-supplier-" + sfx,
			"A's furnace": dev.Key, "A's customer": cust.Code, "A's customer name": cust.Name, "A's shipment": ship.Code,
			"A's shipment id": ship.ID.String(), "A's product": product,
		},
		Fills: map[string][]string{
			"lot":      {lot.Code, lot.ID.String(), strings.ToUpper(lot.ID.String())},
			"shipment": {ship.Code, ship.ID.String()},
		},
	}
}
