package tenants

// Scaffolding while tenant-side device administration and bulk import are
// being written (issue 3).

import "github.com/labstack/echo/v4"

func (h *Handler) registerDeviceAdmin(g *echo.Group, r *Routes)    {}
func (h *Handler) registerOperatorImport(g *echo.Group, r *Routes) {}
