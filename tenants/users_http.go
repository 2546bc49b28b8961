package tenants

import (
	"errors"
	"net/http"
	"strconv"
	"strings"

	"github.com/labstack/echo/v4"

	"github.com/nxcloud/nxcloud/apps"
)

// registerAuth adds the routes open without a principal: they authenticate
// by what they carry (a password, an invitation token, the session itself).
func (h *Handler) registerAuth(g *echo.Group, r *Routes) {
	r.AddPublic(g, http.MethodPost, "/login", h.login)
	r.AddPublic(g, http.MethodPost, "/logout", h.logout)
	r.AddPublic(g, http.MethodPost, "/accept-invitation", h.acceptInvitation)
}

// registerUsers adds the caller's own description and the management of an
// enterprise's people. /me requires self:read, which every role holds: a
// permission of its own (rather than a public route that authenticates
// inside) keeps Authorize the one place that decides, and lets the route
// table say that /me needs a principal.
func (h *Handler) registerUsers(g *echo.Group, r *Routes) {
	r.Add(g, http.MethodGet, "/me", PermSelfRead, h.me)
	r.Add(g, http.MethodGet, "/users", PermUsersRead, h.members)
	r.Add(g, http.MethodGet, "/invitations", PermUsersRead, h.invitations)
	r.Add(g, http.MethodPost, "/invitations", PermUsersWrite, h.invite)
	r.Add(g, http.MethodDelete, "/invitations/:invitation", PermUsersWrite, h.revokeInvitation)
	r.Add(g, http.MethodPatch, "/users/:user", PermUsersWrite, h.setRole)
	r.Add(g, http.MethodDelete, "/users/:user", PermUsersWrite, h.removeMember)
}

// registerOperatorOrgs adds the operator's management of organisations.
func (h *Handler) registerOperatorOrgs(g *echo.Group, r *Routes) {
	r.Add(g, http.MethodGet, "/orgs", PermOperate, h.orgs)
	r.Add(g, http.MethodPost, "/orgs", PermOperate, h.createOrg)
	r.Add(g, http.MethodGet, "/users", PermOperate, h.findUsers)
	r.Add(g, http.MethodPatch, "/users/:user", PermOperate, h.setUserStatus)
}

func client(c echo.Context) Client {
	return Client{IP: c.RealIP(), UserAgent: c.Request().UserAgent()}
}

// withRetryAfter sets Retry-After on a throttled answer.
func withRetryAfter(c echo.Context, err error) error {
	var t *Throttled
	if errors.As(err, &t) {
		c.Response().Header().Set("Retry-After", strconv.Itoa(t.After))
	}
	return err
}

func (h *Handler) login(c echo.Context) error {
	var in LoginInput
	if err := apps.Bind(c.Request().Body, &in); err != nil {
		return err
	}
	out, err := h.svc.Login(c.Request().Context(), in, client(c))
	if err != nil {
		return withRetryAfter(c, err)
	}
	return c.JSON(http.StatusOK, out)
}

// sessionToken is the bearer session of the request (logout needs no other
// authentication: holding the token is the right to end it).
func sessionToken(c echo.Context) (string, error) {
	h := c.Request().Header.Get(echo.HeaderAuthorization)
	if len(h) > 7 && strings.EqualFold(h[:7], "bearer ") {
		if tok := strings.TrimSpace(h[7:]); strings.HasPrefix(tok, sessionTag) {
			return tok, nil
		}
	}
	return "", apps.Errorf(apps.Unauthorized, "a session is required (Authorization: Bearer nxs_…)")
}

func (h *Handler) logout(c echo.Context) error {
	tok, err := sessionToken(c)
	if err != nil {
		return err
	}
	if err := h.svc.Logout(c.Request().Context(), tok); err != nil {
		return err
	}
	return c.JSON(http.StatusOK, map[string]bool{"revoked": true})
}

func (h *Handler) acceptInvitation(c echo.Context) error {
	var in AcceptInput
	if err := apps.Bind(c.Request().Body, &in); err != nil {
		return err
	}
	out, err := h.svc.AcceptInvitation(c.Request().Context(), in, client(c))
	if err != nil {
		return withRetryAfter(c, err)
	}
	return c.JSON(http.StatusOK, out)
}

func principal(c echo.Context) (Principal, error) {
	p, ok := PrincipalFrom(c.Request().Context())
	if !ok {
		return Principal{}, apps.Errorf(apps.Unauthorized, "authentication required")
	}
	return p, nil
}

func (h *Handler) me(c echo.Context) error {
	p, err := principal(c)
	if err != nil {
		return err
	}
	out, err := h.svc.Me(c.Request().Context(), p)
	if err != nil {
		return err
	}
	return c.JSON(http.StatusOK, out)
}

func (h *Handler) members(c echo.Context) error {
	p, err := principal(c)
	if err != nil {
		return err
	}
	out, err := h.svc.Members(c.Request().Context(), p)
	if err != nil {
		return err
	}
	return c.JSON(http.StatusOK, map[string]any{"items": out})
}

func (h *Handler) invite(c echo.Context) error {
	p, err := principal(c)
	if err != nil {
		return err
	}
	var in InvitationInput
	if err := apps.Bind(c.Request().Body, &in); err != nil {
		return err
	}
	out, err := h.svc.Invite(c.Request().Context(), p, in)
	if err != nil {
		return err
	}
	return c.JSON(http.StatusCreated, out)
}

func (h *Handler) setRole(c echo.Context) error {
	p, err := principal(c)
	if err != nil {
		return err
	}
	var in RoleInput
	if err := apps.Bind(c.Request().Body, &in); err != nil {
		return err
	}
	out, err := h.svc.SetRole(c.Request().Context(), p, c.Param("user"), in)
	if err != nil {
		return err
	}
	return c.JSON(http.StatusOK, out)
}

func (h *Handler) removeMember(c echo.Context) error {
	p, err := principal(c)
	if err != nil {
		return err
	}
	out, err := h.svc.RemoveMember(c.Request().Context(), p, c.Param("user"))
	if err != nil {
		return err
	}
	return c.JSON(http.StatusOK, out)
}

func (h *Handler) orgs(c echo.Context) error {
	out, err := h.svc.Orgs(c.Request().Context(), c.QueryParam("kind"))
	if err != nil {
		return err
	}
	return c.JSON(http.StatusOK, map[string]any{"items": out})
}

func (h *Handler) createOrg(c echo.Context) error {
	p, err := principal(c)
	if err != nil {
		return err
	}
	var in OrgInput
	if err := apps.Bind(c.Request().Body, &in); err != nil {
		return err
	}
	out, err := h.svc.CreateOrg(c.Request().Context(), p, in)
	if err != nil {
		return err
	}
	return c.JSON(http.StatusCreated, out)
}
