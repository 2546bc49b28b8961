package downgrade

import (
	"net/http"
	"time"

	"github.com/labstack/echo/v4"

	"github.com/nxcloud/nxcloud/apps"
	"github.com/nxcloud/nxcloud/tenants"
)

// Handler serves the downgrade API.
type Handler struct {
	svc *Service
	now func() time.Time
}

// NewHandler returns a Handler on svc.
func NewHandler(svc *Service) *Handler { return &Handler{svc: svc, now: time.Now} }

// Register adds the routes to g (the tenant API group).
func (h *Handler) Register(g *echo.Group, r *tenants.Routes) {
	r.Add(g, http.MethodGet, "/downgrades", tenants.PermDowngradeRead, h.list)
	r.Add(g, http.MethodPost, "/downgrades", tenants.PermDowngradeWrite, h.record)
	r.Add(g, http.MethodGet, "/downgrade-analytics", tenants.PermDowngradeRead, h.analytics)
	r.Add(g, http.MethodPost, "/downgrades/evaluate", tenants.PermDowngradeWrite, h.evaluate)
	r.Add(g, http.MethodGet, "/downgrades/:downgrade", tenants.PermDowngradeRead, h.get)
	r.Add(g, http.MethodPost, "/downgrades/:downgrade/approve", tenants.PermDowngradeApprove, h.approve)
	r.Add(g, http.MethodPost, "/downgrades/:downgrade/reject", tenants.PermDowngradeApprove, h.reject)
	r.Add(g, http.MethodGet, "/grade-prices", tenants.PermDowngradeRead, h.prices)
	r.Add(g, http.MethodPut, "/grade-prices", tenants.PermDowngradeApprove, h.setPrices)
}

func (h *Handler) list(c echo.Context) error {
	limit, err := apps.IntParam(c, "limit")
	if err != nil {
		return err
	}
	q := Query{Status: c.QueryParam("status"), Lot: c.QueryParam("lot"), Grade: c.QueryParam("grade"), Limit: limit}
	for name, dst := range map[string]**time.Time{"from": &q.From, "to": &q.To} {
		if c.QueryParam(name) != "" {
			t, err := apps.TimeParam(c, name, time.Time{})
			if err != nil {
				return err
			}
			*dst = &t
		}
	}
	if cur := c.QueryParam("cursor"); cur != "" {
		t, err := time.Parse(time.RFC3339Nano, cur)
		if err != nil {
			return apps.FieldError("cursor", "malformed cursor; pass next_cursor from the previous page unchanged")
		}
		q.Before = &t
	}
	out, err := h.svc.Downgrades(c.Request().Context(), q)
	if err != nil {
		return err
	}
	return c.JSON(http.StatusOK, out)
}

func (h *Handler) record(c echo.Context) error {
	var in DowngradeInput
	if err := apps.Bind(c.Request().Body, &in); err != nil {
		return err
	}
	out, err := h.svc.Record(c.Request().Context(), in)
	if err != nil {
		return err
	}
	return c.JSON(http.StatusCreated, out)
}

func (h *Handler) get(c echo.Context) error {
	out, err := h.svc.Downgrade(c.Request().Context(), c.Param("downgrade"))
	if err != nil {
		return err
	}
	return c.JSON(http.StatusOK, out)
}

func (h *Handler) decide(c echo.Context, approve bool) error {
	var in DecisionInput
	if err := apps.Bind(c.Request().Body, &in); err != nil {
		return err
	}
	out, err := h.svc.DecideProposal(c.Request().Context(), c.Param("downgrade"), approve, in)
	if err != nil {
		return err
	}
	return c.JSON(http.StatusOK, out)
}

func (h *Handler) approve(c echo.Context) error { return h.decide(c, true) }

func (h *Handler) reject(c echo.Context) error { return h.decide(c, false) }

func (h *Handler) evaluate(c echo.Context) error {
	var in EvaluateInput
	if err := apps.Bind(c.Request().Body, &in); err != nil {
		return err
	}
	out, err := h.svc.Evaluate(c.Request().Context(), in)
	if err != nil {
		return err
	}
	return c.JSON(http.StatusOK, out)
}

func (h *Handler) analytics(c echo.Context) error {
	to, err := apps.TimeParam(c, "to", h.now().UTC())
	if err != nil {
		return err
	}
	from, err := apps.TimeParam(c, "from", to.AddDate(0, 0, -90))
	if err != nil {
		return err
	}
	out, err := h.svc.Analytics(c.Request().Context(), AnalyticsQuery{GroupBy: c.QueryParam("group_by"), From: from, To: to})
	if err != nil {
		return err
	}
	return c.JSON(http.StatusOK, out)
}

func (h *Handler) prices(c echo.Context) error {
	out, err := h.svc.Prices(c.Request().Context())
	if err != nil {
		return err
	}
	return c.JSON(http.StatusOK, out)
}

func (h *Handler) setPrices(c echo.Context) error {
	var in PriceListInput
	if err := apps.Bind(c.Request().Body, &in); err != nil {
		return err
	}
	out, err := h.svc.SetPrices(c.Request().Context(), in)
	if err != nil {
		return err
	}
	return c.JSON(http.StatusOK, out)
}
