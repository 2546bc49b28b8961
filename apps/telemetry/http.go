package telemetry

import (
	"net/http"
	"strings"
	"time"

	"github.com/labstack/echo/v4"

	"github.com/nxcloud/nxcloud/apps"
	"github.com/nxcloud/nxcloud/tenants"
)

// Handler serves the telemetry API.
type Handler struct {
	svc *Service
	now func() time.Time
}

// NewHandler returns a Handler on svc.
func NewHandler(svc *Service) *Handler { return &Handler{svc: svc, now: time.Now} }

// Register adds the routes to g (the tenant API group).
func (h *Handler) Register(g *echo.Group, r *tenants.Routes) {
	r.Add(g, http.MethodGet, "/devices", tenants.PermDevicesRead, h.list)
	r.Add(g, http.MethodGet, "/devices/:device", tenants.PermDevicesRead, h.get)
	r.Add(g, http.MethodGet, "/devices/:device/series", tenants.PermTelemetryRead, h.raw)
	r.Add(g, http.MethodGet, "/devices/:device/buckets", tenants.PermTelemetryRead, h.buckets)
	r.Add(g, http.MethodGet, "/dead-letters", tenants.PermTelemetryRead, h.deadLetters)
}

func (h *Handler) list(c echo.Context) error {
	out, err := h.svc.States(c.Request().Context())
	if err != nil {
		return err
	}
	return c.JSON(http.StatusOK, map[string]any{"items": out})
}

func (h *Handler) get(c echo.Context) error {
	out, err := h.svc.State(c.Request().Context(), c.Param("device"))
	if err != nil {
		return err
	}
	return c.JSON(http.StatusOK, out)
}

func (h *Handler) raw(c echo.Context) error {
	from, to, err := timeRange(c, h.now(), time.Hour)
	if err != nil {
		return err
	}
	limit, err := apps.IntParam(c, "limit")
	if err != nil {
		return err
	}
	out, err := h.svc.Raw(c.Request().Context(), RawQuery{
		Device: c.Param("device"), Metric: c.QueryParam("metric"), From: from, To: to, Limit: limit, Cursor: c.QueryParam("cursor"),
	})
	if err != nil {
		return err
	}
	return c.JSON(http.StatusOK, out)
}

func (h *Handler) buckets(c echo.Context) error {
	width := c.QueryParam("width")
	if width == "" {
		width = "1m"
	}
	span := map[string]time.Duration{"1m": time.Hour, "1h": 24 * time.Hour, "1d": 30 * 24 * time.Hour}[width]
	from, to, err := timeRange(c, h.now(), span)
	if err != nil {
		return err
	}
	var metrics []string
	for _, v := range c.QueryParams()["metric"] {
		for _, k := range strings.Split(v, ",") {
			if k = strings.TrimSpace(k); k != "" {
				metrics = append(metrics, k)
			}
		}
	}
	out, err := h.svc.Buckets(c.Request().Context(), BucketQuery{Device: c.Param("device"), Metrics: metrics, Width: width, From: from, To: to})
	if err != nil {
		return err
	}
	return c.JSON(http.StatusOK, out)
}

func (h *Handler) deadLetters(c echo.Context) error {
	limit, err := apps.IntParam(c, "limit")
	if err != nil {
		return err
	}
	out, err := h.svc.DeadLetters(c.Request().Context(), DeadLetterQuery{
		Device: c.QueryParam("device"), Reason: c.QueryParam("reason"), Limit: limit, Cursor: c.QueryParam("cursor"),
	})
	if err != nil {
		return err
	}
	return c.JSON(http.StatusOK, out)
}

// timeRange reads from/to (RFC 3339 or epoch milliseconds); to defaults to
// now and from to `span` before to.
func timeRange(c echo.Context, now time.Time, span time.Duration) (time.Time, time.Time, error) {
	to, err := apps.TimeParam(c, "to", now)
	if err != nil {
		return to, to, err
	}
	from, err := apps.TimeParam(c, "from", to.Add(-span))
	return from, to, err
}
