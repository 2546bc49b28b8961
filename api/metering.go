package api

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"net/http"
	"strconv"

	"github.com/google/uuid"
	"github.com/labstack/echo/v4"

	"github.com/nxcloud/nxcloud/apps"
	"github.com/nxcloud/nxcloud/metering"
	"github.com/nxcloud/nxcloud/tenants"
)

// IdempotencyHeader names the client's idempotency key: a retried request
// with the same key (same method and route) is metered once.
const IdempotencyHeader = "Idempotency-Key"

// meterAPI checks the tenant's API quota before a tenant request (429 with
// Retry-After when a hard quota is used up) and meters the request once it
// is answered without error: the usage row is committed (group commit)
// before the answer's first byte is sent, under an idempotency key (the
// client's Idempotency-Key, else the request id), so a request answered is
// metered, and a request retried after a crash with the same key is not
// metered twice. The route class is the permission the route requires.
func meterAPI(a *Apps, routes *tenants.Routes) echo.MiddlewareFunc {
	return func(next echo.HandlerFunc) echo.HandlerFunc {
		if a == nil || a.Meter == nil {
			return next
		}
		m := a.Meter
		return func(c echo.Context) error {
			req := c.Request()
			tenant, ok := tenants.FromContext(req.Context())
			if !ok {
				return next(c)
			}
			if wait, err := m.AdmitAPI(req.Context(), tenant); err != nil {
				c.Response().Header().Set("Retry-After", strconv.Itoa(max(1, int(wait.Seconds()+0.999))))
				return err
			}
			class, _ := routes.Permission(req.Method, c.Path())
			key := req.Header.Get(IdempotencyHeader)
			if key == "" {
				key = c.Response().Header().Get(echo.HeaderXRequestID)
			}
			if key == "" {
				key = uuid.NewString()
			}
			sum := sha256.Sum256([]byte(req.Method + " " + c.Path() + "\x00" + key))
			idem := "api:" + hex.EncodeToString(sum[:16])
			ctx := context.WithoutCancel(req.Context())
			c.Response().Before(func() {
				if c.Response().Status >= http.StatusBadRequest {
					return // refused or failed: not billed
				}
				// A failed commit is logged, kept and retried by the recorder.
				_ = m.RecordAPICall(ctx, tenant, class, idem)
			})
			return next(c)
		}
	}
}

// enterpriseParam resolves an operator route's :tenant (slug or id).
func enterpriseParam(svc *tenants.Service, m *metering.Service) func(c echo.Context) (uuid.UUID, error) {
	return func(c echo.Context) (uuid.UUID, error) {
		ref := c.Param("tenant")
		if id, err := uuid.Parse(ref); err == nil {
			return id, m.TenantExists(c.Request().Context(), id)
		}
		t, err := svc.EnterpriseBySlug(c.Request().Context(), ref)
		if err != nil && apps.Code(err) == apps.Invalid {
			return uuid.Nil, apps.Errorf(apps.NotFound, "enterprise not found")
		}
		return t.ID, err
	}
}

// registerMetering adds the usage and billing routes: tenant routes on tg,
// operator routes on op.
func (a *Apps) registerMetering(tg, op *echo.Group, r *tenants.Routes, svc *tenants.Service) {
	if a == nil || a.Meter == nil {
		return
	}
	h := metering.NewHandler(a.Meter, enterpriseParam(svc, a.Meter))
	h.RegisterTenant(tg, r)
	h.RegisterOperator(op, r)
}
