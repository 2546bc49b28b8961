package quality

import (
	"math"
	"net/http"
	"strconv"
	"time"

	"github.com/labstack/echo/v4"

	"github.com/nxcloud/nxcloud/apps"
	"github.com/nxcloud/nxcloud/tenants"
)

// Handler serves the quality API.
type Handler struct {
	svc *Service
}

// NewHandler returns a Handler on svc.
func NewHandler(svc *Service) *Handler { return &Handler{svc: svc} }

// Register adds the routes to g (the tenant API group).
func (h *Handler) Register(g *echo.Group, r *tenants.Routes) {
	r.Add(g, http.MethodGet, "/quality/plans", tenants.PermQualityRead, h.plans)
	r.Add(g, http.MethodPost, "/quality/plans", tenants.PermQualityWrite, h.createPlan)
	r.Add(g, http.MethodGet, "/quality/plans/:inspection_plan", tenants.PermQualityRead, h.plan)
	r.Add(g, http.MethodPut, "/quality/plans/:inspection_plan", tenants.PermQualityWrite, h.updatePlan)
	r.Add(g, http.MethodGet, "/quality/lots/:inspected_lot", tenants.PermQualityRead, h.lot)
	r.Add(g, http.MethodGet, "/quality/lots/:inspected_lot/results", tenants.PermQualityRead, h.results)
	r.Add(g, http.MethodPost, "/quality/lots/:inspected_lot/results", tenants.PermQualityWrite, h.addResults)
	r.Add(g, http.MethodPost, "/quality/lots/:inspected_lot/nonconformances", tenants.PermQualityWrite, h.recordNC)
	r.Add(g, http.MethodGet, "/quality/nonconformances", tenants.PermQualityRead, h.ncs)
	r.Add(g, http.MethodGet, "/quality/nonconformances/:nonconformance", tenants.PermQualityRead, h.nc)
	r.Add(g, http.MethodPatch, "/quality/nonconformances/:nonconformance", tenants.PermQualityWrite, h.updateNC)
	r.Add(g, http.MethodGet, "/quality/spc", tenants.PermQualityRead, h.spc)
}

func (h *Handler) plans(c echo.Context) error {
	out, err := h.svc.Plans(c.Request().Context())
	if err != nil {
		return err
	}
	return c.JSON(http.StatusOK, map[string]any{"items": out})
}

func (h *Handler) createPlan(c echo.Context) error {
	var in PlanInput
	if err := apps.Bind(c.Request().Body, &in); err != nil {
		return err
	}
	out, err := h.svc.CreatePlan(c.Request().Context(), in)
	if err != nil {
		return err
	}
	return c.JSON(http.StatusCreated, out)
}

func (h *Handler) plan(c echo.Context) error {
	out, err := h.svc.Plan(c.Request().Context(), c.Param("inspection_plan"))
	if err != nil {
		return err
	}
	return c.JSON(http.StatusOK, out)
}

func (h *Handler) updatePlan(c echo.Context) error {
	var in PlanInput
	if err := apps.Bind(c.Request().Body, &in); err != nil {
		return err
	}
	out, err := h.svc.UpdatePlan(c.Request().Context(), c.Param("inspection_plan"), in)
	if err != nil {
		return err
	}
	return c.JSON(http.StatusOK, out)
}

func (h *Handler) lot(c echo.Context) error {
	out, err := h.svc.LotInspection(c.Request().Context(), c.Param("inspected_lot"))
	if err != nil {
		return err
	}
	return c.JSON(http.StatusOK, out)
}

func (h *Handler) results(c echo.Context) error {
	out, err := h.svc.Results(c.Request().Context(), c.Param("inspected_lot"))
	if err != nil {
		return err
	}
	return c.JSON(http.StatusOK, map[string]any{"items": out})
}

func (h *Handler) addResults(c echo.Context) error {
	var in ResultsInput
	if err := apps.Bind(c.Request().Body, &in); err != nil {
		return err
	}
	out, err := h.svc.AddResults(c.Request().Context(), c.Param("inspected_lot"), in)
	if err != nil {
		return err
	}
	return c.JSON(http.StatusCreated, out)
}

func (h *Handler) recordNC(c echo.Context) error {
	var in NCInput
	if err := apps.Bind(c.Request().Body, &in); err != nil {
		return err
	}
	out, err := h.svc.RecordNonconformance(c.Request().Context(), c.Param("inspected_lot"), in)
	if err != nil {
		return err
	}
	return c.JSON(http.StatusCreated, out)
}

func (h *Handler) ncs(c echo.Context) error {
	limit, err := apps.IntParam(c, "limit")
	if err != nil {
		return err
	}
	out, err := h.svc.Nonconformances(c.Request().Context(), NCQuery{
		Lot: c.QueryParam("lot"), Status: c.QueryParam("status"), Reason: c.QueryParam("reason_code"), Limit: limit,
	})
	if err != nil {
		return err
	}
	return c.JSON(http.StatusOK, map[string]any{"items": out})
}

func (h *Handler) nc(c echo.Context) error {
	out, err := h.svc.Nonconformance(c.Request().Context(), c.Param("nonconformance"))
	if err != nil {
		return err
	}
	return c.JSON(http.StatusOK, out)
}

func (h *Handler) updateNC(c echo.Context) error {
	var in NCUpdate
	if err := apps.Bind(c.Request().Body, &in); err != nil {
		return err
	}
	out, err := h.svc.UpdateNonconformance(c.Request().Context(), c.Param("nonconformance"), in)
	if err != nil {
		return err
	}
	return c.JSON(http.StatusOK, out)
}

func (h *Handler) spc(c echo.Context) error {
	q := SPCQuery{Characteristic: c.QueryParam("characteristic"), Chart: c.QueryParam("chart"),
		Product: c.QueryParam("product"), Grade: c.QueryParam("grade"), Line: c.QueryParam("line"), Rules: c.QueryParam("rules")}
	var err error
	if q.N, err = apps.IntParam(c, "n"); err != nil {
		return err
	}
	if q.Points, err = apps.IntParam(c, "points"); err != nil {
		return err
	}
	if q.From, err = apps.TimeParam(c, "from", time.Time{}); err != nil {
		return err
	}
	if q.To, err = apps.TimeParam(c, "to", time.Time{}); err != nil {
		return err
	}
	if q.LSL, err = floatParam(c, "lsl"); err != nil {
		return err
	}
	if q.USL, err = floatParam(c, "usl"); err != nil {
		return err
	}
	out, err := h.svc.SPC(c.Request().Context(), q)
	if err != nil {
		return err
	}
	return c.JSON(http.StatusOK, out)
}

// floatParam reads a finite number query parameter; nil when absent.
func floatParam(c echo.Context, name string) (*float64, error) {
	v := c.QueryParam(name)
	if v == "" {
		return nil, nil
	}
	f, err := strconv.ParseFloat(v, 64)
	if err != nil || math.IsNaN(f) || math.IsInf(f, 0) {
		return nil, apps.FieldError(name, "want a finite number, not %q", clip(v, 40))
	}
	return &f, nil
}
