package tenants

import (
	"encoding/csv"
	"encoding/json"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/labstack/echo/v4"

	"github.com/nxcloud/nxcloud/apps"
)

// registerGrants adds an enterprise's grant and audit routes to g.
func (h *Handler) registerGrants(g *echo.Group, r *Routes) {
	r.Add(g, http.MethodGet, "/grants", PermGrantsRead, h.grants)
	r.Add(g, http.MethodPost, "/grants", PermGrantsWrite, h.createGrant)
	r.Add(g, http.MethodGet, "/grants/:grant", PermGrantsRead, h.grant)
	r.Add(g, http.MethodDelete, "/grants/:grant", PermGrantsWrite, h.revokeGrant)
	r.Add(g, http.MethodGet, "/audit", PermAuditRead, h.auditLog)
	r.Add(g, http.MethodGet, "/audit/export", PermAuditRead, h.auditExport)
}

func (h *Handler) grants(c echo.Context) error {
	out, err := h.svc.Grants(c.Request().Context())
	if err != nil {
		return err
	}
	if out == nil {
		out = []Grant{}
	}
	return c.JSON(http.StatusOK, map[string]any{"items": out})
}

func (h *Handler) grant(c echo.Context) error {
	g, err := h.svc.Grant(c.Request().Context(), c.Param("grant"))
	if err != nil {
		return err
	}
	return c.JSON(http.StatusOK, g)
}

func (h *Handler) createGrant(c echo.Context) error {
	var in GrantInput
	if err := apps.Bind(c.Request().Body, &in); err != nil {
		return err
	}
	g, err := h.svc.CreateGrant(c.Request().Context(), in)
	if err != nil {
		return err
	}
	return c.JSON(http.StatusCreated, g)
}

func (h *Handler) revokeGrant(c echo.Context) error {
	g, err := h.svc.RevokeGrant(c.Request().Context(), c.Param("grant"))
	if err != nil {
		return err
	}
	return c.JSON(http.StatusOK, g)
}

// auditQuery reads the audit filters: action, actor, from, to (RFC 3339 or
// epoch milliseconds), limit, cursor.
func auditQuery(c echo.Context) (AuditQuery, error) {
	q := AuditQuery{Action: c.QueryParam("action"), Actor: c.QueryParam("actor"), Cursor: c.QueryParam("cursor")}
	var err error
	if q.From, err = apps.TimeParam(c, "from", time.Time{}); err != nil {
		return q, err
	}
	if q.To, err = apps.TimeParam(c, "to", time.Time{}); err != nil {
		return q, err
	}
	q.Limit, err = apps.IntParam(c, "limit")
	return q, err
}

func (h *Handler) auditLog(c echo.Context) error {
	q, err := auditQuery(c)
	if err != nil {
		return err
	}
	page, err := h.svc.AuditLog(c.Request().Context(), q)
	if err != nil {
		return err
	}
	return c.JSON(http.StatusOK, page)
}

// auditColumns is the header row of the CSV export.
var auditColumns = []string{"id", "at", "actor_kind", "actor_id", "actor_org", "actor_org_kind", "actor_name",
	"action", "resource", "result", "status", "ip", "request_id", "detail"}

func (h *Handler) auditExport(c echo.Context) error {
	q, err := auditQuery(c)
	if err != nil {
		return err
	}
	q.Limit, q.Cursor = 0, ""
	w := c.Response()
	cw := csv.NewWriter(w)
	started := false
	start := func() error {
		started = true
		w.Header().Set(echo.HeaderContentType, "text/csv; charset=utf-8")
		w.Header().Set(echo.HeaderContentDisposition,
			`attachment; filename="audit-`+time.Now().UTC().Format("20060102T150405Z")+`.csv"`)
		w.WriteHeader(http.StatusOK)
		return cw.Write(auditColumns)
	}
	n := 0
	err = h.svc.ExportAudit(c.Request().Context(), q, func(x AuditRecord) error {
		if !started {
			if err := start(); err != nil {
				return err
			}
		}
		detail, err := json.Marshal(x.Detail)
		if err != nil {
			return err
		}
		row := []string{strconv.FormatInt(x.ID, 10), x.At.Format(time.RFC3339Nano), x.ActorKind, uuidText(x.ActorID),
			uuidText(x.ActorOrg), x.ActorOrgKind, x.ActorName, x.Action, x.Resource, x.Result, strconv.Itoa(x.Status),
			x.IP, x.RequestID, string(detail)}
		for i := range row {
			row[i] = csvSafe(row[i])
		}
		if err := cw.Write(row); err != nil {
			return err
		}
		if n++; n%500 == 0 {
			cw.Flush()
			w.Flush()
		}
		return cw.Error()
	})
	if err != nil {
		// Before the first row the client gets a problem document; after,
		// the stream is cut short and the error handler logs it.
		return err
	}
	if !started {
		if err := start(); err != nil {
			return err
		}
	}
	cw.Flush()
	return cw.Error()
}

func uuidText[T interface{ String() string }](v *T) string {
	if v == nil {
		return ""
	}
	return (*v).String()
}

// csvSafe keeps a spreadsheet from reading a cell (an actor's name, a
// request path) as a formula.
func csvSafe(s string) string {
	if s != "" && strings.ContainsRune("=+-@\t\r", rune(s[0])) {
		return "'" + s
	}
	return s
}
