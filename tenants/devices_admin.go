package tenants

// Device administration by the enterprise itself (its owners, admins and
// engineers, or an API key): register, rename, disable/enable, rotate the
// secret, create lines, and import devices in bulk. The operator API offers
// the same on any enterprise (http.go), plus the bulk import.

import (
	"context"
	"errors"
	"io"
	"mime"
	"net/http"
	"strconv"
	"strings"
	"unicode/utf8"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/labstack/echo/v4"

	"github.com/nxcloud/nxcloud/apps"
)

// DevicePatch changes a device: its status, and its name when given.
type DevicePatch struct {
	Status string  `json:"status"`
	Name   *string `json:"name,omitempty"`
}

// UpdateDevice sets the status ("active" or "disabled") and optionally the
// name of a device of a tenant. A disabled device is refused by the broker
// within the auth cache's TTL, connected or not. Errors: invalid, not_found
// (also for another tenant's device).
func (s *Service) UpdateDevice(ctx context.Context, tenant uuid.UUID, ref string, p DevicePatch) (Device, error) {
	if p.Status != "active" && p.Status != "disabled" {
		return Device{}, apps.FieldError("status", "want active or disabled")
	}
	if p.Name != nil && (*p.Name == "" || utf8.RuneCountInString(*p.Name) > 200) {
		return Device{}, apps.FieldError("name", "a name of 1 to 200 characters")
	}
	var d Device
	ctx = WithTenant(ctx, tenant)
	err := InTx(ctx, s.db.App, func(tx pgx.Tx) error {
		cur, err := deviceByRef(ctx, tx, ref)
		if err != nil {
			return err
		}
		if _, err := tx.Exec(ctx, `UPDATE devices SET status = $2, name = coalesce($3, name), updated_at = now() WHERE id = $1`,
			cur.ID, p.Status, p.Name); err != nil {
			return err
		}
		d, err = deviceByID(ctx, tx, cur.ID)
		return err
	})
	if err == nil {
		s.auth.forgetDevice(d.ID)
	}
	return d, err
}

func (h *Handler) registerDeviceAdmin(g *echo.Group, r *Routes) {
	r.Add(g, http.MethodPost, "/devices", PermDevicesWrite, h.registerDevice(ownTenantOf))
	r.Add(g, http.MethodPost, "/devices/import", PermDevicesWrite, h.ownImportDevices)
	r.Add(g, http.MethodPatch, "/devices/:device", PermDevicesWrite, h.ownUpdateDevice)
	r.Add(g, http.MethodPost, "/devices/:device/rotate-secret", PermDevicesWrite, h.rotateSecret(ownTenantOf))
	r.Add(g, http.MethodPost, "/lines", PermDevicesWrite, h.createLine(ownTenantOf))
}

func (h *Handler) registerOperatorImport(g *echo.Group, r *Routes) {
	r.Add(g, http.MethodPost, "/enterprises/:tenant/devices/import", PermOperate, h.operatorImportDevices)
}

// tenantOf resolves the tenant a request acts on: the operator names it in
// the path (Handler.tenantParam), an enterprise acts on its own (ownTenantOf).
type tenantOf func(ctx context.Context, c echo.Context) (uuid.UUID, error)

func ownTenantOf(ctx context.Context, _ echo.Context) (uuid.UUID, error) { return ownTenant(ctx) }

func (h *Handler) registerDevice(of tenantOf) echo.HandlerFunc {
	return func(c echo.Context) error {
		ctx := c.Request().Context()
		tenant, err := of(ctx, c)
		if err != nil {
			return err
		}
		var in DeviceInput
		if err := apps.Bind(c.Request().Body, &in); err != nil {
			return err
		}
		d, secret, err := h.svc.RegisterDevice(ctx, tenant, in)
		if err != nil {
			return err
		}
		return c.JSON(http.StatusCreated, DeviceCredentials{Device: d, Username: h.username(ctx, d), Secret: secret})
	}
}

func (h *Handler) rotateSecret(of tenantOf) echo.HandlerFunc {
	return func(c echo.Context) error {
		ctx := c.Request().Context()
		tenant, err := of(ctx, c)
		if err != nil {
			return err
		}
		d, secret, err := h.svc.RotateSecret(ctx, tenant, c.Param("device"))
		if err != nil {
			return err
		}
		return c.JSON(http.StatusOK, DeviceCredentials{Device: d, Username: h.username(ctx, d), Secret: secret})
	}
}

func (h *Handler) createLine(of tenantOf) echo.HandlerFunc {
	return func(c echo.Context) error {
		ctx := c.Request().Context()
		tenant, err := of(ctx, c)
		if err != nil {
			return err
		}
		var in LineInput
		if err := apps.Bind(c.Request().Body, &in); err != nil {
			return err
		}
		l, err := h.svc.CreateLine(ctx, tenant, in)
		if err != nil {
			return err
		}
		return c.JSON(http.StatusCreated, l)
	}
}

// ownTenant is the tenant the request's principal acts on.
func ownTenant(ctx context.Context) (uuid.UUID, error) {
	id, ok := FromContext(ctx)
	if !ok {
		return uuid.Nil, apps.Errorf(apps.Unauthorized, "no tenant in this request")
	}
	return id, nil
}

func (h *Handler) ownUpdateDevice(c echo.Context) error {
	ctx := c.Request().Context()
	tenant, err := ownTenant(ctx)
	if err != nil {
		return err
	}
	var in DevicePatch
	if err := apps.Bind(c.Request().Body, &in); err != nil {
		return err
	}
	d, err := h.svc.UpdateDevice(ctx, tenant, c.Param("device"), in)
	if err != nil {
		return err
	}
	return c.JSON(http.StatusOK, d)
}

func (h *Handler) ownImportDevices(c echo.Context) error {
	tenant, err := ownTenant(c.Request().Context())
	if err != nil {
		return err
	}
	return h.importDevices(c, tenant)
}

func (h *Handler) operatorImportDevices(c echo.Context) error {
	tenant, err := h.tenantParam(c.Request().Context(), c)
	if err != nil {
		return err
	}
	return h.importDevices(c, tenant)
}

// importDevices reads a CSV or JSON device list and imports it into tenant.
// Whole-request problems (media type, size, encoding, header, syntax, row
// count) are a 400; problems of single rows are reported in the 200 answer.
func (h *Handler) importDevices(c echo.Context, tenant uuid.UUID) error {
	req := c.Request()
	dryRun := false
	if v := c.QueryParam("dry_run"); v != "" {
		b, err := strconv.ParseBool(v)
		if err != nil {
			return apps.FieldError("dry_run", "want true or false")
		}
		dryRun = b
	}
	parse, err := importParser(req.Header.Get(echo.HeaderContentType))
	if err != nil {
		return err
	}
	body, err := io.ReadAll(io.LimitReader(req.Body, MaxImportBytes+1))
	if err != nil {
		var he *echo.HTTPError
		if errors.As(err, &he) {
			return he // the server's body limit: 413
		}
		return apps.Errorf(apps.Invalid, "could not read the request body: %v", err)
	}
	if len(body) > MaxImportBytes {
		return echo.ErrStatusRequestEntityTooLarge
	}
	rows, err := parse(body)
	if err != nil {
		return err
	}
	res, err := h.svc.ImportDevices(req.Context(), tenant, rows, dryRun)
	if err != nil {
		return err
	}
	return c.JSON(http.StatusOK, res)
}

// importParser picks the parser of a Content-Type: text/csv (UTF-8) or
// application/json.
func importParser(contentType string) (func([]byte) ([]ImportRow, error), error) {
	mt, params, err := mime.ParseMediaType(contentType)
	if err != nil {
		mt = ""
	}
	switch mt {
	case "text/csv":
		if cs := params["charset"]; cs != "" && !strings.EqualFold(cs, "utf-8") {
			return nil, apps.Errorf(apps.Invalid, "a device CSV must be UTF-8, not %s", clip(cs, 32))
		}
		return ParseDeviceCSV, nil
	case "application/json":
		return ParseDeviceJSON, nil
	}
	return nil, apps.Errorf(apps.Invalid, "Content-Type must be text/csv or application/json")
}
