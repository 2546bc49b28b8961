package api

import (
	"context"
	"log/slog"
	"net/http"
	"slices"

	"github.com/google/uuid"
	"github.com/labstack/echo/v4"

	"github.com/nxcloud/nxcloud/tenants"
)

// requestContext puts the client address and the request id in the request
// context, so whatever a request audits (a login, a refused contractor, a
// write) carries them.
func (s *Server) requestContext(next echo.HandlerFunc) echo.HandlerFunc {
	return func(c echo.Context) error {
		ctx := tenants.WithRequest(c.Request().Context(), c.RealIP(), c.Response().Header().Get(echo.HeaderXRequestID))
		c.SetRequest(c.Request().WithContext(ctx))
		return next(c)
	}
}

// audit records a request in the audit log: every write (POST, PUT, PATCH,
// DELETE) with its outcome, and every read by a contractor or an operator.
// It runs after authentication (the principal is in the context) and before
// authorisation, so refusals are recorded too. The row is written after the
// handler, whatever it returned (a panic included); a failed audit write does
// not fail the request, but is logged at error level with the request id.
func (s *Server) audit(next echo.HandlerFunc) echo.HandlerFunc {
	return func(c echo.Context) (err error) {
		req := c.Request()
		p, _ := tenants.PrincipalFrom(req.Context())
		write := !slices.Contains([]string{http.MethodGet, http.MethodHead, http.MethodOptions}, req.Method)
		if !write && p.OrgKind != tenants.OrgContractor && p.OrgKind != tenants.OrgOperator && p.Kind != tenants.KindOperator {
			return next(c)
		}
		ctx, note := tenants.WithAuditNote(req.Context())
		c.SetRequest(req.WithContext(ctx))
		done := false
		defer func() {
			if !done { // a panic: the recoverer answers 500
				s.record(c, p, note, write, http.StatusInternalServerError)
			}
		}()
		err = next(c)
		done = true
		status := c.Response().Status
		if err != nil {
			status = statusOf(err)
		}
		s.record(c, p, note, write, status)
		return err
	}
}

// auditResult classifies an answer: refused (401, 403, 404), failed (any
// other error status) or done.
func auditResult(status int) string {
	switch {
	case status == http.StatusUnauthorized || status == http.StatusForbidden || status == http.StatusNotFound:
		return tenants.AuditDenied
	case status >= 400:
		return tenants.AuditError
	}
	return tenants.AuditOK
}

func (s *Server) record(c echo.Context, p tenants.Principal, note *tenants.AuditNote, write bool, status int) {
	req := c.Request()
	ctx := req.Context()
	e := tenants.AuditEntry{
		Tenant:   p.TenantID,
		Action:   req.Method + " " + c.Path(),
		Resource: req.URL.Path,
		Result:   auditResult(status),
		Status:   status,
	}
	if q := req.URL.RawQuery; q != "" {
		e.Detail = map[string]any{"query": q}
	}
	if action, resource, detail := note.Get(); action != "" {
		e.Action = action
		if resource != "" {
			e.Resource = resource
		}
		e.Detail = map[string]any{"route": req.Method + " " + c.Path()}
		for k, v := range detail {
			e.Detail[k] = v
		}
	}
	if e.Tenant == uuid.Nil && slices.Contains(c.ParamNames(), "tenant") {
		// An operator acting on an enterprise: the enterprise sees it.
		if id, err := s.tenants.ResolveTenant(ctx, c.Param("tenant")); err == nil {
			e.Tenant = id
		}
	}
	if err := s.tenants.Audit(ctx, e); err != nil {
		level := slog.LevelWarn
		if write {
			level = slog.LevelError
		}
		s.log.Log(context.WithoutCancel(ctx), level, "audit write failed", "err", err, "action", e.Action,
			"status", status, "tenant", e.Tenant, "request_id", c.Response().Header().Get(echo.HeaderXRequestID))
	}
}
