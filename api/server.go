// Package api is nxcloud's HTTP surface: the echo instance with its timeouts,
// problem+json errors, authentication, health, readiness, metrics and the
// OpenAPI document; the N apps register their routes on it.
package api

import (
	"context"
	"crypto/subtle"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/labstack/echo/v4"
	"github.com/labstack/echo/v4/middleware"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/nxcloud/nxcloud/apps"
	"github.com/nxcloud/nxcloud/apps/telemetry"
	"github.com/nxcloud/nxcloud/tenants"
)

// Config configures the HTTP server.
type Config struct {
	// OperatorToken guards the operator API until the identity work lands; empty
	// disables the operator API.
	OperatorToken string
	// TrustedProxies are CIDRs whose X-Forwarded-For is believed; without them
	// the client address is the socket's peer.
	TrustedProxies []string
	Logger         *slog.Logger
}

// Deps are what the server serves. New registers every route from them, so
// the process and the tests serve the same route table.
type Deps struct {
	Tenants   *tenants.Service
	Telemetry *telemetry.Service
	// Apps are the N apps (batch, downgrade, quality, recipe).
	Apps     *Apps
	Registry *prometheus.Registry
	// Ready reports whether the process can serve (database, Redis, broker,
	// ingest backlog); the map holds each check's state.
	Ready func(ctx context.Context) (map[string]string, bool)
	// ExtraTenant registers more tenant routes (tests use it to prove that a
	// new route is covered by the isolation suite).
	ExtraTenant []func(g *echo.Group, r *tenants.Routes)
}

// Server is the HTTP server.
type Server struct {
	e       *echo.Echo
	srv     *http.Server
	log     *slog.Logger
	routes  *tenants.Routes
	tenants *tenants.Service
}

// New builds the server and its routes.
func New(cfg Config, deps Deps) (*Server, error) {
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	doc, err := openapiMerged()
	if err != nil {
		return nil, fmt.Errorf("OpenAPI document: %w", err)
	}
	e := echo.New()
	e.HideBanner, e.HidePort = true, true
	e.IPExtractor = echo.ExtractIPDirect()
	if len(cfg.TrustedProxies) > 0 {
		var opts []echo.TrustOption
		opts = append(opts, echo.TrustLoopback(false), echo.TrustLinkLocal(false), echo.TrustPrivateNet(false))
		for _, c := range cfg.TrustedProxies {
			_, n, err := net.ParseCIDR(strings.TrimSpace(c))
			if err != nil {
				return nil, errors.New("trusted proxy " + c + ": want a CIDR such as 10.0.0.0/8")
			}
			opts = append(opts, echo.TrustIPRange(n))
		}
		e.IPExtractor = echo.ExtractIPFromXFFHeader(opts...)
	}
	s := &Server{e: e, log: log, routes: tenants.NewRoutes(), tenants: deps.Tenants}
	e.HTTPErrorHandler = s.handleError
	httpMetrics := newHTTPMetrics(deps.Registry)
	e.Use(middleware.RequestID())
	e.Use(s.requestContext)
	e.Use(middleware.BodyLimit("2MiB")) // "2M" would be 2,000,000 bytes
	e.Use(s.recoverer)
	e.Use(httpMetrics.middleware)
	e.Use(s.accessLog)

	e.GET("/healthz", func(c echo.Context) error {
		return c.JSON(http.StatusOK, map[string]string{"status": "ok"})
	})
	e.GET("/readyz", func(c echo.Context) error {
		checks, ok := deps.Ready(c.Request().Context())
		status := http.StatusOK
		if !ok {
			status = http.StatusServiceUnavailable
		}
		return c.JSON(status, map[string]any{"ready": ok, "checks": checks})
	})
	if deps.Registry != nil {
		e.GET("/metrics", echo.WrapHandler(promhttp.HandlerFor(deps.Registry, promhttp.HandlerOpts{Registry: deps.Registry})))
	}
	v1 := e.Group("/api/v1")
	v1.GET("/openapi.json", func(c echo.Context) error {
		return c.Blob(http.StatusOK, "application/json", doc)
	})
	th := tenants.NewHandler(deps.Tenants)
	th.RegisterPublic(v1.Group("/auth"), s.routes)
	op := v1.Group("/operator", operatorAuth(cfg.OperatorToken, deps.Tenants), s.audit)
	th.RegisterOperator(op, s.routes)
	tg := v1.Group("", tenantAuth(deps.Tenants, s.routes), s.audit, meterAPI(deps.Apps, s.routes))
	th.RegisterTenant(tg, s.routes)
	telemetry.NewHandler(deps.Telemetry).Register(tg, s.routes)
	deps.Apps.register(tg, v1.Group("/public"), s.routes)
	deps.Apps.registerMetering(tg, op, s.routes, deps.Tenants)
	for _, r := range deps.ExtraTenant {
		r(tg, s.routes)
	}
	s.srv = &http.Server{
		Handler:           e,
		ReadHeaderTimeout: 10 * time.Second,
		ReadTimeout:       30 * time.Second,
		WriteTimeout:      60 * time.Second,
		IdleTimeout:       120 * time.Second,
		MaxHeaderBytes:    64 << 10,
	}
	return s, nil
}

// Handler returns the HTTP handler (for tests).
func (s *Server) Handler() http.Handler { return s.e }

// Routes returns the route table.
func (s *Server) Routes() []*echo.Route { return s.e.Routes() }

// Permission returns the permission a route requires ("" and false for the
// routes open to all: health, metrics, the OpenAPI document).
func (s *Server) Permission(method, path string) (string, bool) {
	return s.routes.Permission(method, path)
}

// Serve serves on ln until Shutdown.
func (s *Server) Serve(ln net.Listener) error {
	err := s.srv.Serve(ln)
	if errors.Is(err, http.ErrServerClosed) {
		return nil
	}
	return err
}

// Shutdown stops accepting and waits for requests in flight until ctx ends.
func (s *Server) Shutdown(ctx context.Context) error { return s.srv.Shutdown(ctx) }

func bearer(c echo.Context) string {
	h := c.Request().Header.Get(echo.HeaderAuthorization)
	if len(h) > 7 && strings.EqualFold(h[:7], "bearer ") {
		return strings.TrimSpace(h[7:])
	}
	return ""
}

// operatorAuth admits the bootstrap operator token or a session of a member of
// an operator organisation.
func operatorAuth(token string, svc *tenants.Service) echo.MiddlewareFunc {
	return func(next echo.HandlerFunc) echo.HandlerFunc {
		return func(c echo.Context) error {
			got := bearer(c)
			var p tenants.Principal
			switch {
			case strings.HasPrefix(got, sessionTag):
				sp, err := svc.AuthenticateSession(c.Request().Context(), got)
				if err != nil {
					return err
				}
				if sp.OrgKind != tenants.OrgOperator {
					return apps.Errorf(apps.Forbidden, "the operator API is for platform operators")
				}
				p = sp
			case token == "":
				return apps.Errorf(apps.Forbidden, "the operator API is disabled: set NXCLOUD_OPERATOR_TOKEN or sign in as an operator")
			case got == "" || subtle.ConstantTimeCompare([]byte(got), []byte(token)) != 1:
				return apps.Errorf(apps.Unauthorized, "operator token required (Authorization: Bearer <token>)")
			default:
				p = tenants.Principal{Kind: tenants.KindOperator, OrgKind: tenants.OrgOperator, Role: "admin", Name: "bootstrap operator"}
			}
			c.SetRequest(c.Request().WithContext(tenants.WithPrincipal(c.Request().Context(), p)))
			return next(c)
		}
	}
}

const (
	apiKeyTag  = "nxk_"
	sessionTag = "nxs_"
	// TenantHeader names the tenant a contractor acts on.
	TenantHeader = "X-Nx-Tenant"
)

// tenantAuth resolves the principal of a tenant request: an API key, or a
// user's session; a contractor names the granting tenant in X-Nx-Tenant and
// is admitted only through a live grant. The one exception is a route about
// the caller itself (self:read, GET /me): a contractor reads it without
// naming a tenant, and then acts on none.
func tenantAuth(svc *tenants.Service, routes *tenants.Routes) echo.MiddlewareFunc {
	return func(next echo.HandlerFunc) echo.HandlerFunc {
		return func(c echo.Context) error {
			ctx := c.Request().Context()
			tok := bearer(c)
			var p tenants.Principal
			var err error
			switch {
			case strings.HasPrefix(tok, apiKeyTag):
				p, err = svc.AuthenticateAPIKey(ctx, tok)
			case strings.HasPrefix(tok, sessionTag):
				p, err = svc.AuthenticateSession(ctx, tok)
			default:
				return apps.Errorf(apps.Unauthorized, "credentials required (Authorization: Bearer nxk_… API key or nxs_… session)")
			}
			if err != nil {
				return err
			}
			if p.OrgKind == tenants.OrgContractor {
				ref := c.Request().Header.Get(TenantHeader)
				switch perm, _ := routes.Permission(c.Request().Method, c.Path()); {
				case ref != "":
					if p, err = svc.ContractorTenant(ctx, p, ref); err != nil {
						return err
					}
				case perm != tenants.PermSelfRead:
					return apps.Errorf(apps.Forbidden, "a contractor names the tenant it acts on in the %s header", TenantHeader)
				}
			}
			c.SetRequest(c.Request().WithContext(tenants.WithPrincipal(ctx, p)))
			return next(c)
		}
	}
}

// Problem is an RFC 9457 problem document with nxcloud's stable code.
type Problem struct {
	Type      string `json:"type"`
	Title     string `json:"title"`
	Status    int    `json:"status"`
	Detail    string `json:"detail"`
	Code      string `json:"code"`
	Field     string `json:"field,omitempty"`
	RequestID string `json:"request_id,omitempty"`
}

var codeStatus = map[string]int{
	apps.Invalid:       http.StatusBadRequest,
	apps.NotFound:      http.StatusNotFound,
	apps.Conflict:      http.StatusConflict,
	apps.Unauthorized:  http.StatusUnauthorized,
	apps.Forbidden:     http.StatusForbidden,
	apps.QuotaExceeded: http.StatusTooManyRequests,
	apps.Unavailable:   http.StatusServiceUnavailable,
	apps.Internal:      http.StatusInternalServerError,
}

// statusOf is the HTTP status handleError answers err with (499, nginx's
// "client closed request", when the client went away).
func statusOf(err error) int {
	var ae *apps.Error
	var he *echo.HTTPError
	switch {
	case errors.As(err, &ae):
		if st := codeStatus[ae.Code]; st != 0 {
			return st
		}
	case errors.As(err, &he):
		return he.Code
	case errors.Is(err, context.Canceled):
		return 499
	}
	return http.StatusInternalServerError
}

func (s *Server) handleError(err error, c echo.Context) {
	if c.Response().Committed {
		// A streamed answer cut short: the client sees a truncated body.
		if !errors.Is(err, context.Canceled) {
			s.log.Warn("request failed after its answer began", "err", err, "route", c.Path(),
				"request_id", c.Response().Header().Get(echo.HeaderXRequestID))
		}
		return
	}
	p := Problem{RequestID: c.Response().Header().Get(echo.HeaderXRequestID), Status: statusOf(err)}
	var ae *apps.Error
	var he *echo.HTTPError
	switch {
	case errors.As(err, &ae):
		p.Code, p.Detail, p.Field = ae.Code, ae.Message, ae.Field
	case errors.As(err, &he):
		p.Detail = http.StatusText(he.Code)
		if m, ok := he.Message.(string); ok {
			p.Detail = m
		}
		switch he.Code {
		case http.StatusNotFound:
			p.Code = apps.NotFound
		case http.StatusMethodNotAllowed:
			p.Code = "method_not_allowed"
		case http.StatusRequestEntityTooLarge:
			p.Code = apps.Invalid
		case http.StatusUnauthorized:
			p.Code = apps.Unauthorized
		case http.StatusTooManyRequests:
			p.Code = apps.QuotaExceeded
		default:
			p.Code = apps.Invalid
			if he.Code >= 500 {
				p.Code = apps.Internal
			}
		}
	case errors.Is(err, context.Canceled):
		return
	default:
		p.Status, p.Code, p.Detail = http.StatusInternalServerError, apps.Internal, "internal error"
		tenant, _ := tenants.FromContext(c.Request().Context())
		s.log.Error("request failed", "err", err, "request_id", p.RequestID, "tenant", tenant, "route", c.Path(),
			"method", c.Request().Method)
	}
	p.Type = "https://nxcloud.dev/problems/" + p.Code
	p.Title = http.StatusText(p.Status)
	if p.Code == apps.Unauthorized {
		c.Response().Header().Set("WWW-Authenticate", `Bearer realm="nxcloud"`)
	}
	c.Response().Header().Set(echo.HeaderContentType, "application/problem+json")
	c.Response().WriteHeader(p.Status)
	if c.Request().Method == http.MethodHead {
		return
	}
	_ = writeJSON(c.Response(), p)
}

func (s *Server) recoverer(next echo.HandlerFunc) echo.HandlerFunc {
	return func(c echo.Context) (err error) {
		defer func() {
			if r := recover(); r != nil {
				if r == http.ErrAbortHandler {
					panic(r)
				}
				err = errors.New("panic: " + strconv.Quote(toString(r)))
			}
		}()
		return next(c)
	}
}

func (s *Server) accessLog(next echo.HandlerFunc) echo.HandlerFunc {
	return func(c echo.Context) error {
		start := time.Now()
		err := next(c)
		if err != nil {
			c.Error(err)
		}
		status := c.Response().Status
		level := slog.LevelDebug
		if status >= 500 {
			level = slog.LevelWarn
		}
		s.log.Log(c.Request().Context(), level, "http", "method", c.Request().Method, "route", c.Path(),
			"status", status, "took", time.Since(start).Round(time.Microsecond), "ip", c.RealIP(),
			"request_id", c.Response().Header().Get(echo.HeaderXRequestID))
		return nil
	}
}
