package quality

import (
	"github.com/labstack/echo/v4"

	"github.com/nxcloud/nxcloud/tenants"
)

// Handler serves the quality API.
type Handler struct {
	svc *Service
}

// NewHandler returns a Handler on svc.
func NewHandler(svc *Service) *Handler { return &Handler{svc: svc} }

// Register adds the routes to g (the tenant API group).
func (h *Handler) Register(g *echo.Group, r *tenants.Routes) {}
