package recipe

import (
	"net/http"

	"github.com/labstack/echo/v4"

	"github.com/nxcloud/nxcloud/apps"
	"github.com/nxcloud/nxcloud/tenants"
)

// Handler serves the recipe API.
type Handler struct {
	svc *Service
}

// NewHandler returns a Handler on svc.
func NewHandler(svc *Service) *Handler { return &Handler{svc: svc} }

// Register adds the routes to g (the tenant API group). Each workflow step
// has its own route, so the audit row of the request names the step and the
// version (action "POST /api/v1/recipes/:recipe/versions/:version/approve",
// resource the request path).
func (h *Handler) Register(g *echo.Group, r *tenants.Routes) {
	r.Add(g, http.MethodGet, "/recipes", tenants.PermRecipesRead, h.list)
	r.Add(g, http.MethodPost, "/recipes", tenants.PermRecipesWrite, h.create)
	r.Add(g, http.MethodGet, "/recipes/:recipe", tenants.PermRecipesRead, h.get)
	r.Add(g, http.MethodGet, "/recipes/:recipe/diff", tenants.PermRecipesRead, h.diff)
	r.Add(g, http.MethodPost, "/recipes/:recipe/versions", tenants.PermRecipesWrite, h.newVersion)
	r.Add(g, http.MethodGet, "/recipes/:recipe/versions/:version", tenants.PermRecipesRead, h.version)
	r.Add(g, http.MethodPut, "/recipes/:recipe/versions/:version", tenants.PermRecipesWrite, h.update)
	r.Add(g, http.MethodPost, "/recipes/:recipe/versions/:version/submit", tenants.PermRecipesWrite, h.submit)
	r.Add(g, http.MethodPost, "/recipes/:recipe/versions/:version/return", tenants.PermRecipesApprove, h.sendBack)
	r.Add(g, http.MethodPost, "/recipes/:recipe/versions/:version/approve", tenants.PermRecipesApprove, h.approve)
	r.Add(g, http.MethodPost, "/recipes/:recipe/versions/:version/release", tenants.PermRecipesApprove, h.release)
	r.Add(g, http.MethodPost, "/recipes/:recipe/versions/:version/retire", tenants.PermRecipesApprove, h.retire)
	r.Add(g, http.MethodPost, "/recipes/:recipe/versions/:version/downloads", tenants.PermRecipesApprove, h.download)
	r.Add(g, http.MethodGet, "/recipe-parameter-sets", tenants.PermRecipesRead, h.parameterSets)
	r.Add(g, http.MethodGet, "/recipe-downloads", tenants.PermRecipesRead, h.downloads)
	r.Add(g, http.MethodGet, "/recipe-downloads/:download", tenants.PermRecipesRead, h.getDownload)
	r.Add(g, http.MethodGet, "/recipe-equipment", tenants.PermRecipesRead, h.equipment)
	r.Add(g, http.MethodGet, "/recipe-deviations", tenants.PermRecipesRead, h.deviations)
	r.Add(g, http.MethodGet, "/recipe-deviations/:deviation", tenants.PermRecipesRead, h.getDeviation)
	r.Add(g, http.MethodPost, "/recipe-deviations/:deviation/acknowledge", tenants.PermRecipesWrite, h.acknowledge)
}

func items[T any](c echo.Context, v []T, err error) error {
	if err != nil {
		return err
	}
	return c.JSON(http.StatusOK, map[string]any{"items": v})
}

func one[T any](c echo.Context, status int, v T, err error) error {
	if err != nil {
		return err
	}
	return c.JSON(status, v)
}

func (h *Handler) list(c echo.Context) error {
	out, err := h.svc.Recipes(c.Request().Context(), c.QueryParam("grade"), c.QueryParam("product"))
	return items(c, out, err)
}

func (h *Handler) create(c echo.Context) error {
	var in RecipeInput
	if err := apps.Bind(c.Request().Body, &in); err != nil {
		return err
	}
	out, err := h.svc.CreateRecipe(c.Request().Context(), in)
	return one(c, http.StatusCreated, out, err)
}

func (h *Handler) get(c echo.Context) error {
	out, err := h.svc.Recipe(c.Request().Context(), c.Param("recipe"))
	return one(c, http.StatusOK, out, err)
}

func (h *Handler) diff(c echo.Context) error {
	out, err := h.svc.Diff(c.Request().Context(), c.Param("recipe"), c.QueryParam("from"), c.QueryParam("to"))
	return one(c, http.StatusOK, out, err)
}

func (h *Handler) newVersion(c echo.Context) error {
	var in NewVersionInput
	if err := apps.Bind(c.Request().Body, &in); err != nil {
		return err
	}
	out, err := h.svc.NewVersion(c.Request().Context(), c.Param("recipe"), in)
	return one(c, http.StatusCreated, out, err)
}

func (h *Handler) version(c echo.Context) error {
	out, err := h.svc.Version(c.Request().Context(), c.Param("recipe"), c.Param("version"))
	return one(c, http.StatusOK, out, err)
}

func (h *Handler) update(c echo.Context) error {
	var in ContentInput
	if err := apps.Bind(c.Request().Body, &in); err != nil {
		return err
	}
	out, err := h.svc.UpdateDraft(c.Request().Context(), c.Param("recipe"), c.Param("version"), in)
	return one(c, http.StatusOK, out, err)
}

func (h *Handler) submit(c echo.Context) error {
	var in TransitionInput
	if err := apps.Bind(c.Request().Body, &in); err != nil {
		return err
	}
	out, err := h.svc.Submit(c.Request().Context(), c.Param("recipe"), c.Param("version"), in)
	return one(c, http.StatusOK, out, err)
}

func (h *Handler) sendBack(c echo.Context) error {
	var in ReturnInput
	if err := apps.Bind(c.Request().Body, &in); err != nil {
		return err
	}
	out, err := h.svc.Return(c.Request().Context(), c.Param("recipe"), c.Param("version"), in)
	return one(c, http.StatusOK, out, err)
}

func (h *Handler) approve(c echo.Context) error {
	var in TransitionInput
	if err := apps.Bind(c.Request().Body, &in); err != nil {
		return err
	}
	out, err := h.svc.Approve(c.Request().Context(), c.Param("recipe"), c.Param("version"), in)
	return one(c, http.StatusOK, out, err)
}

// ReleaseResult is the answer to a release: the version and its downloads.
type ReleaseResult struct {
	Version   Version    `json:"version"`
	Downloads []Download `json:"downloads"`
}

func (h *Handler) release(c echo.Context) error {
	var in ReleaseInput
	if err := apps.Bind(c.Request().Body, &in); err != nil {
		return err
	}
	v, ds, err := h.svc.Release(c.Request().Context(), c.Param("recipe"), c.Param("version"), in)
	return one(c, http.StatusOK, ReleaseResult{Version: v, Downloads: ds}, err)
}

func (h *Handler) retire(c echo.Context) error {
	var in TransitionInput
	if err := apps.Bind(c.Request().Body, &in); err != nil {
		return err
	}
	out, err := h.svc.Retire(c.Request().Context(), c.Param("recipe"), c.Param("version"), in)
	return one(c, http.StatusOK, out, err)
}

func (h *Handler) download(c echo.Context) error {
	var in DownloadInput
	if err := apps.Bind(c.Request().Body, &in); err != nil {
		return err
	}
	out, err := h.svc.DownloadToLine(c.Request().Context(), c.Param("recipe"), c.Param("version"), in)
	if err != nil {
		return err
	}
	return c.JSON(http.StatusCreated, map[string]any{"items": out})
}

func (h *Handler) parameterSets(c echo.Context) error {
	out, err := h.svc.ParameterSets(c.Request().Context())
	return items(c, out, err)
}

func (h *Handler) downloads(c echo.Context) error {
	limit, err := apps.IntParam(c, "limit")
	if err != nil {
		return err
	}
	out, err := h.svc.Downloads(c.Request().Context(), DownloadQuery{Device: c.QueryParam("device"), Line: c.QueryParam("line"),
		Status: c.QueryParam("status"), Version: c.QueryParam("version_id"), Limit: limit, Cursor: c.QueryParam("cursor")})
	return one(c, http.StatusOK, out, err)
}

func (h *Handler) getDownload(c echo.Context) error {
	out, err := h.svc.Download(c.Request().Context(), c.Param("download"))
	return one(c, http.StatusOK, out, err)
}

func (h *Handler) equipment(c echo.Context) error {
	out, err := h.svc.Equipment(c.Request().Context())
	return items(c, out, err)
}

func (h *Handler) deviations(c echo.Context) error {
	limit, err := apps.IntParam(c, "limit")
	if err != nil {
		return err
	}
	out, err := h.svc.Deviations(c.Request().Context(), DeviationQuery{Lot: c.QueryParam("lot"), Device: c.QueryParam("device"),
		State: c.QueryParam("state"), Acknowledged: c.QueryParam("acknowledged"), Limit: limit, Cursor: c.QueryParam("cursor")})
	return one(c, http.StatusOK, out, err)
}

func (h *Handler) getDeviation(c echo.Context) error {
	out, err := h.svc.Deviation(c.Request().Context(), c.Param("deviation"))
	return one(c, http.StatusOK, out, err)
}

func (h *Handler) acknowledge(c echo.Context) error {
	var in AcknowledgeInput
	if err := apps.Bind(c.Request().Body, &in); err != nil {
		return err
	}
	out, err := h.svc.Acknowledge(c.Request().Context(), c.Param("deviation"), in)
	return one(c, http.StatusOK, out, err)
}
