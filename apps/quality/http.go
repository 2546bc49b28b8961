package quality

import (
	"bytes"
	"errors"
	"io"
	"math"
	"mime"
	"net/http"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

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
	r.Add(g, http.MethodPost, "/quality/results/import", tenants.PermQualityWrite, h.importResults)
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

// importResults reads a CSV or JSON list of results. Whole-request problems
// (media type, size, header, syntax, row count) are a 400 (413 for size);
// problems of single rows are reported in the 200 answer.
func (h *Handler) importResults(c echo.Context) error {
	req := c.Request()
	dryRun := false
	if v := c.QueryParam("dry_run"); v != "" {
		b, err := strconv.ParseBool(v)
		if err != nil {
			return apps.FieldError("dry_run", "want true or false")
		}
		dryRun = b
	}
	var parse func([]byte) ([]ImportRow, error)
	mt, params, err := mime.ParseMediaType(req.Header.Get(echo.HeaderContentType))
	if err != nil {
		mt = ""
	}
	switch mt {
	case "text/csv":
		if cs := params["charset"]; cs != "" && !strings.EqualFold(cs, "utf-8") {
			return apps.Errorf(apps.Invalid, "a results CSV must be UTF-8, not %s", clip(cs, 32))
		}
		parse = ParseResultsCSV
	case "application/json":
		parse = ParseResultsJSON
	default:
		return apps.Errorf(apps.Invalid, "Content-Type must be text/csv or application/json")
	}
	body, err := io.ReadAll(io.LimitReader(req.Body, MaxImportBytes+1))
	if err != nil {
		var he *echo.HTTPError
		if errors.As(err, &he) {
			return he
		}
		return apps.Errorf(apps.Invalid, "could not read the request body: %v", err)
	}
	if len(body) > MaxImportBytes {
		return echo.ErrStatusRequestEntityTooLarge
	}
	if !utf8.Valid(body) || bytes.IndexByte(body, 0) >= 0 {
		return apps.Errorf(apps.Invalid, "the import must be UTF-8 text without NUL bytes")
	}
	rows, err := parse(body)
	if err != nil {
		return err
	}
	res, err := h.svc.ImportResults(req.Context(), rows, dryRun)
	if err != nil {
		return err
	}
	return c.JSON(http.StatusOK, res)
}
