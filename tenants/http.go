package tenants

import (
	"context"
	"net/http"

	"github.com/google/uuid"
	"github.com/labstack/echo/v4"

	"github.com/nxcloud/nxcloud/apps"
)

// Handler serves the tenant registry: the operator's onboarding API and a
// tenant's view of itself.
type Handler struct{ svc *Service }

// NewHandler returns a Handler on svc.
func NewHandler(svc *Service) *Handler { return &Handler{svc: svc} }

// RegisterOperator adds the operator routes to g.
func (h *Handler) RegisterOperator(g *echo.Group, r *Routes) {
	r.Add(g, http.MethodGet, "/sectors", PermOperate, h.sectors)
	r.Add(g, http.MethodGet, "/enterprises", PermOperate, h.enterprises)
	r.Add(g, http.MethodPost, "/enterprises", PermOperate, h.createEnterprise)
	r.Add(g, http.MethodGet, "/enterprises/:tenant", PermOperate, h.enterprise)
	r.Add(g, http.MethodPatch, "/enterprises/:tenant", PermOperate, h.setEnterpriseStatus)
	r.Add(g, http.MethodPost, "/enterprises/:tenant/lines", PermOperate, h.createLine(h.tenantParam))
	r.Add(g, http.MethodPost, "/enterprises/:tenant/devices", PermOperate, h.registerDevice(h.tenantParam))
	r.Add(g, http.MethodPatch, "/enterprises/:tenant/devices/:device", PermOperate, h.setDeviceStatus)
	r.Add(g, http.MethodPost, "/enterprises/:tenant/devices/:device/rotate-secret", PermOperate, h.rotateSecret(h.tenantParam))
	h.registerOperatorOrgs(g, r)
	h.registerOperatorImport(g, r)
}

// RegisterPublic adds the routes open without authentication to g.
func (h *Handler) RegisterPublic(g *echo.Group, r *Routes) {
	h.registerAuth(g, r)
}

// RegisterTenant adds the tenant routes to g.
func (h *Handler) RegisterTenant(g *echo.Group, r *Routes) {
	r.Add(g, http.MethodGet, "/tenant", PermTenantRead, h.current)
	r.Add(g, http.MethodGet, "/models", PermDevicesRead, h.models)
	r.Add(g, http.MethodGet, "/lines", PermDevicesRead, h.lines)
	h.registerUsers(g, r)
	h.registerGrants(g, r)
	h.registerAPIKeys(g, r)
	h.registerDeviceAdmin(g, r)
}

func (h *Handler) sectors(c echo.Context) error {
	out, err := h.svc.Sectors(c.Request().Context())
	if err != nil {
		return err
	}
	return c.JSON(http.StatusOK, map[string]any{"items": out})
}

func (h *Handler) enterprises(c echo.Context) error {
	out, err := h.svc.Enterprises(c.Request().Context())
	if err != nil {
		return err
	}
	return c.JSON(http.StatusOK, map[string]any{"items": out})
}

func (h *Handler) enterprise(c echo.Context) error {
	t, err := h.svc.EnterpriseBySlug(c.Request().Context(), c.Param("tenant"))
	if err != nil {
		return err
	}
	return c.JSON(http.StatusOK, t)
}

func (h *Handler) createEnterprise(c echo.Context) error {
	var in EnterpriseInput
	if err := apps.Bind(c.Request().Body, &in); err != nil {
		return err
	}
	o, err := h.svc.CreateEnterpriseWithOwner(c.Request().Context(), in)
	if err != nil {
		return err
	}
	out := map[string]any{"enterprise": o.Tenant, "api_key": o.APIKey}
	if o.OwnerInvitation != "" {
		out["owner_invitation"] = o.OwnerInvitation
	}
	if len(in.Lines) > 0 {
		out["lines"] = o.Lines
	}
	if len(in.Devices) > 0 {
		out["devices"] = o.Devices
	}
	return c.JSON(http.StatusCreated, out)
}

// tenantParam resolves the :tenant path parameter (slug or id).
func (h *Handler) tenantParam(ctx context.Context, c echo.Context) (uuid.UUID, error) {
	ref := c.Param("tenant")
	if id, err := uuid.Parse(ref); err == nil {
		var exists bool
		if err := h.svc.db.System.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM tenants WHERE id = $1)`, id).Scan(&exists); err != nil {
			return uuid.Nil, err
		}
		if !exists {
			return uuid.Nil, apps.Errorf(apps.NotFound, "enterprise not found")
		}
		return id, nil
	}
	t, err := h.svc.EnterpriseBySlug(ctx, ref)
	return t.ID, err
}

func (h *Handler) username(ctx context.Context, d Device) string {
	var slug string
	_ = h.svc.db.System.QueryRow(ctx, `SELECT slug FROM tenants WHERE id = $1`, d.TenantID).Scan(&slug)
	return MQTTUsername(d.Key, slug)
}

type statusInput struct {
	Status string `json:"status"`
}

func (h *Handler) setDeviceStatus(c echo.Context) error {
	ctx := c.Request().Context()
	tenant, err := h.tenantParam(ctx, c)
	if err != nil {
		return err
	}
	var in statusInput
	if err := apps.Bind(c.Request().Body, &in); err != nil {
		return err
	}
	d, err := h.svc.SetDeviceStatus(ctx, tenant, c.Param("device"), in.Status)
	if err != nil {
		return err
	}
	return c.JSON(http.StatusOK, d)
}

func (h *Handler) current(c echo.Context) error {
	t, err := h.svc.Current(c.Request().Context())
	if err != nil {
		return err
	}
	return c.JSON(http.StatusOK, t)
}

func (h *Handler) models(c echo.Context) error {
	out, err := h.svc.Models(c.Request().Context())
	if err != nil {
		return err
	}
	return c.JSON(http.StatusOK, map[string]any{"items": out})
}

func (h *Handler) lines(c echo.Context) error {
	out, err := h.svc.Lines(c.Request().Context())
	if err != nil {
		return err
	}
	return c.JSON(http.StatusOK, map[string]any{"items": out})
}
