package batch

import (
	"bytes"
	"net/http"
	"strconv"
	"time"

	"github.com/labstack/echo/v4"

	"github.com/nxcloud/nxcloud/apps"
	"github.com/nxcloud/nxcloud/tenants"
)

// Handler serves the batch API.
type Handler struct {
	svc *Service
}

// NewHandler returns a Handler on svc.
func NewHandler(svc *Service) *Handler { return &Handler{svc: svc} }

// Register adds the routes to g (the tenant API group).
func (h *Handler) Register(g *echo.Group, r *tenants.Routes) {
	r.Add(g, http.MethodGet, "/lots", tenants.PermBatchRead, h.lots)
	r.Add(g, http.MethodPost, "/lots", tenants.PermBatchWrite, h.createLot)
	r.Add(g, http.MethodGet, "/lots/:lot", tenants.PermBatchRead, h.lot)
	r.Add(g, http.MethodPatch, "/lots/:lot", tenants.PermBatchWrite, h.updateLot)
	r.Add(g, http.MethodGet, "/lots/:lot/runs", tenants.PermBatchRead, h.runs)
	r.Add(g, http.MethodPost, "/lots/:lot/runs", tenants.PermBatchWrite, h.startRun)
	r.Add(g, http.MethodPost, "/lots/:lot/runs/:run/end", tenants.PermBatchWrite, h.endRun)
	r.Add(g, http.MethodGet, "/lots/:lot/links", tenants.PermBatchRead, h.links)
	r.Add(g, http.MethodPost, "/lot-links", tenants.PermBatchWrite, h.createLink)
	r.Add(g, http.MethodGet, "/lots/:lot/trace", tenants.PermBatchRead, h.trace)
	r.Add(g, http.MethodGet, "/lots/:lot/trace.csv", tenants.PermBatchRead, h.traceCSV)
	r.Add(g, http.MethodGet, "/lots/:lot/trace.html", tenants.PermBatchRead, h.traceHTML)
	r.Add(g, http.MethodGet, "/customers", tenants.PermBatchRead, h.customers)
	r.Add(g, http.MethodPost, "/customers", tenants.PermBatchWrite, h.createCustomer)
	r.Add(g, http.MethodGet, "/shipments", tenants.PermBatchRead, h.shipments)
	r.Add(g, http.MethodPost, "/shipments", tenants.PermBatchWrite, h.createShipment)
	r.Add(g, http.MethodGet, "/shipments/:shipment", tenants.PermBatchRead, h.shipment)
	r.Add(g, http.MethodGet, "/label-fields", tenants.PermBatchRead, h.publicFields)
	r.Add(g, http.MethodPut, "/label-fields", tenants.PermBatchWrite, h.setPublicFields)
}

// RegisterPublic adds the unauthenticated label resolve to g (the
// /api/v1/public group).
func (h *Handler) RegisterPublic(g *echo.Group, r *tenants.Routes) {
	r.AddPublic(g, http.MethodGet, "/lots/:tenant_slug/:code", h.resolve)
}

func (h *Handler) lots(c echo.Context) error {
	limit, err := apps.IntParam(c, "limit")
	if err != nil {
		return err
	}
	q := LotQuery{Status: c.QueryParam("status"), Kind: c.QueryParam("kind"), Product: c.QueryParam("product"),
		Grade: c.QueryParam("grade"), Line: c.QueryParam("line"), Limit: limit, Cursor: c.QueryParam("cursor")}
	for name, dst := range map[string]**time.Time{"from": &q.From, "to": &q.To} {
		if c.QueryParam(name) != "" {
			t, err := apps.TimeParam(c, name, time.Time{})
			if err != nil {
				return err
			}
			*dst = &t
		}
	}
	out, err := h.svc.Lots(c.Request().Context(), q)
	if err != nil {
		return err
	}
	return c.JSON(http.StatusOK, out)
}

func (h *Handler) createLot(c echo.Context) error {
	var in LotInput
	if err := apps.Bind(c.Request().Body, &in); err != nil {
		return err
	}
	out, err := h.svc.CreateLot(c.Request().Context(), in)
	if err != nil {
		return err
	}
	return c.JSON(http.StatusCreated, out)
}

func (h *Handler) lot(c echo.Context) error {
	out, err := h.svc.Lot(c.Request().Context(), c.Param("lot"))
	if err != nil {
		return err
	}
	return c.JSON(http.StatusOK, out)
}

func (h *Handler) updateLot(c echo.Context) error {
	var in LotPatch
	if err := apps.Bind(c.Request().Body, &in); err != nil {
		return err
	}
	out, err := h.svc.UpdateLot(c.Request().Context(), c.Param("lot"), in)
	if err != nil {
		return err
	}
	return c.JSON(http.StatusOK, out)
}

func (h *Handler) runs(c echo.Context) error {
	out, err := h.svc.Runs(c.Request().Context(), c.Param("lot"))
	if err != nil {
		return err
	}
	return c.JSON(http.StatusOK, map[string]any{"items": out})
}

func (h *Handler) startRun(c echo.Context) error {
	var in RunInput
	if err := apps.Bind(c.Request().Body, &in); err != nil {
		return err
	}
	out, err := h.svc.StartRun(c.Request().Context(), c.Param("lot"), in)
	if err != nil {
		return err
	}
	return c.JSON(http.StatusCreated, out)
}

func (h *Handler) endRun(c echo.Context) error {
	run, err := strconv.ParseInt(c.Param("run"), 10, 64)
	if err != nil || run < 1 {
		return apps.Errorf(apps.NotFound, "unknown run %q", clip(c.Param("run")))
	}
	var in RunEnd
	if err := apps.Bind(c.Request().Body, &in); err != nil {
		return err
	}
	out, err := h.svc.EndRun(c.Request().Context(), c.Param("lot"), run, in)
	if err != nil {
		return err
	}
	return c.JSON(http.StatusOK, out)
}

func (h *Handler) links(c echo.Context) error {
	out, err := h.svc.Links(c.Request().Context(), c.Param("lot"))
	if err != nil {
		return err
	}
	return c.JSON(http.StatusOK, out)
}

func (h *Handler) createLink(c echo.Context) error {
	var in LinkInput
	if err := apps.Bind(c.Request().Body, &in); err != nil {
		return err
	}
	out, err := h.svc.CreateLink(c.Request().Context(), in)
	if err != nil {
		return err
	}
	return c.JSON(http.StatusCreated, out)
}

func (h *Handler) traceQuery(c echo.Context) (TraceQuery, error) {
	depth, err := apps.IntParam(c, "depth")
	if err != nil {
		return TraceQuery{}, err
	}
	q := TraceQuery{Lot: c.Param("lot"), Direction: c.QueryParam("direction"), MaxDepth: depth, Telemetry: true, Details: true}
	for name, dst := range map[string]*bool{"telemetry": &q.Telemetry, "details": &q.Details} {
		switch c.QueryParam(name) {
		case "", "true":
		case "false":
			*dst = false
		default:
			return q, apps.FieldError(name, "%s must be true or false", name)
		}
	}
	return q, nil
}

func (h *Handler) trace(c echo.Context) error {
	q, err := h.traceQuery(c)
	if err != nil {
		return err
	}
	out, err := h.svc.Trace(c.Request().Context(), q)
	if err != nil {
		return err
	}
	return c.JSON(http.StatusOK, out)
}

func (h *Handler) traceCSV(c echo.Context) error {
	q, err := h.traceQuery(c)
	if err != nil {
		return err
	}
	out, err := h.svc.Trace(c.Request().Context(), q)
	if err != nil {
		return err
	}
	var buf bytes.Buffer
	if err := WriteCSV(&buf, out); err != nil {
		return err
	}
	c.Response().Header().Set("Content-Disposition", `attachment; filename="trace-`+q.Direction+`.csv"`)
	return c.Blob(http.StatusOK, "text/csv; charset=utf-8", buf.Bytes())
}

func (h *Handler) traceHTML(c echo.Context) error {
	q, err := h.traceQuery(c)
	if err != nil {
		return err
	}
	out, err := h.svc.Trace(c.Request().Context(), q)
	if err != nil {
		return err
	}
	var buf bytes.Buffer
	if err := WriteHTML(&buf, out); err != nil {
		return err
	}
	c.Response().Header().Set("Content-Security-Policy", "default-src 'none'; style-src 'unsafe-inline'")
	return c.Blob(http.StatusOK, "text/html; charset=utf-8", buf.Bytes())
}

func (h *Handler) customers(c echo.Context) error {
	out, err := h.svc.Customers(c.Request().Context())
	if err != nil {
		return err
	}
	return c.JSON(http.StatusOK, map[string]any{"items": out})
}

func (h *Handler) createCustomer(c echo.Context) error {
	var in CustomerInput
	if err := apps.Bind(c.Request().Body, &in); err != nil {
		return err
	}
	out, err := h.svc.CreateCustomer(c.Request().Context(), in)
	if err != nil {
		return err
	}
	return c.JSON(http.StatusCreated, out)
}

func (h *Handler) shipments(c echo.Context) error {
	limit, err := apps.IntParam(c, "limit")
	if err != nil {
		return err
	}
	out, err := h.svc.Shipments(c.Request().Context(), c.QueryParam("customer"), limit)
	if err != nil {
		return err
	}
	return c.JSON(http.StatusOK, map[string]any{"items": out})
}

func (h *Handler) createShipment(c echo.Context) error {
	var in ShipmentInput
	if err := apps.Bind(c.Request().Body, &in); err != nil {
		return err
	}
	out, err := h.svc.CreateShipment(c.Request().Context(), in)
	if err != nil {
		return err
	}
	return c.JSON(http.StatusCreated, out)
}

func (h *Handler) shipment(c echo.Context) error {
	out, err := h.svc.Shipment(c.Request().Context(), c.Param("shipment"))
	if err != nil {
		return err
	}
	return c.JSON(http.StatusOK, out)
}

func (h *Handler) publicFields(c echo.Context) error {
	out, err := h.svc.PublicFieldsList(c.Request().Context())
	if err != nil {
		return err
	}
	return c.JSON(http.StatusOK, map[string]any{"items": out})
}

func (h *Handler) setPublicFields(c echo.Context) error {
	var in PublicFieldsInput
	if err := apps.Bind(c.Request().Body, &in); err != nil {
		return err
	}
	out, err := h.svc.SetPublicFields(c.Request().Context(), in)
	if err != nil {
		return err
	}
	return c.JSON(http.StatusOK, out)
}

func (h *Handler) resolve(c echo.Context) error {
	out, err := h.svc.Resolve(c.Request().Context(), c.Param("tenant_slug"), c.Param("code"))
	if err != nil {
		return err
	}
	c.Response().Header().Set("Cache-Control", "no-store")
	return c.JSON(http.StatusOK, out)
}
