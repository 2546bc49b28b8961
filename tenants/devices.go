package tenants

import (
	"context"
	"strings"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"

	"github.com/nxcloud/nxcloud/apps"
)

// DeviceInput registers a device.
type DeviceInput struct {
	Key   string `json:"key"`
	Name  string `json:"name"`
	Model string `json:"model"`
	Line  string `json:"line,omitempty"`
	// Secret is the device's MQTT password; generated when empty.
	Secret string `json:"secret,omitempty"`
}

const deviceColumns = `d.id, d.tenant_id, d.key, d.name, d.device_model_id, m.key, d.line_id, coalesce(l.key, ''), d.status, d.created_at`
const deviceFrom = ` FROM devices d JOIN device_models m ON m.id = d.device_model_id LEFT JOIN lines l ON l.id = d.line_id`

func scanDevice(r pgx.CollectableRow) (Device, error) {
	var d Device
	err := r.Scan(&d.ID, &d.TenantID, &d.Key, &d.Name, &d.ModelID, &d.ModelKey, &d.LineID, &d.LineKey, &d.Status, &d.CreatedAt)
	return d, err
}

// RegisterDevice adds a device to a tenant and returns it with its secret
// (shown once). Errors: invalid (bad key, unknown model or line), conflict.
func (s *Service) RegisterDevice(ctx context.Context, tenant uuid.UUID, in DeviceInput) (Device, string, error) {
	if err := in.normalize(); err != nil {
		return Device{}, "", err
	}
	secret := in.Secret
	if secret == "" {
		secret = NewSecret()
	}
	var d Device
	ctx = WithTenant(ctx, tenant)
	err := InTx(ctx, s.db.App, func(tx pgx.Tx) error {
		var model uuid.UUID
		if err := tx.QueryRow(ctx, `SELECT id FROM device_models WHERE key = $1`, in.Model).Scan(&model); err != nil {
			if err == pgx.ErrNoRows {
				return apps.FieldError("model", "unknown device model %q", in.Model)
			}
			return err
		}
		var line *uuid.UUID
		if in.Line != "" {
			var id uuid.UUID
			if err := tx.QueryRow(ctx, `SELECT id FROM lines WHERE key = $1`, in.Line).Scan(&id); err != nil {
				if err == pgx.ErrNoRows {
					return apps.FieldError("line", "unknown line %q", in.Line)
				}
				return err
			}
			line = &id
		}
		salt := newSalt()
		var id uuid.UUID
		err := tx.QueryRow(ctx, `INSERT INTO devices (tenant_id, key, name, device_model_id, line_id, secret_salt, secret_hash)
			VALUES (nx_tenant(), $1, $2, $3, $4, $5, $6) RETURNING id`,
			in.Key, in.Name, model, line, salt, hashSecret(salt, secret)).Scan(&id)
		if err != nil {
			return StoreError(err, "device "+in.Key)
		}
		d, err = deviceByID(ctx, tx, id)
		return err
	})
	return d, secret, err
}

func deviceByID(ctx context.Context, q Querier, id uuid.UUID) (Device, error) {
	rows, err := q.Query(ctx, `SELECT `+deviceColumns+deviceFrom+` WHERE d.id = $1`, id)
	if err != nil {
		return Device{}, err
	}
	d, err := pgx.CollectExactlyOneRow(rows, scanDevice)
	return d, StoreError(err, "device")
}

// Devices lists the devices of the tenant of ctx, by key.
func (s *Service) Devices(ctx context.Context) ([]Device, error) {
	var out []Device
	err := InTx(ctx, s.db.App, func(tx pgx.Tx) error {
		rows, err := tx.Query(ctx, `SELECT `+deviceColumns+deviceFrom+` ORDER BY d.key`)
		if err != nil {
			return err
		}
		out, err = pgx.CollectRows(rows, scanDevice)
		return err
	})
	return out, err
}

// Device returns a device of the tenant of ctx by id or key. Errors: not_found.
func (s *Service) Device(ctx context.Context, ref string) (Device, error) {
	var d Device
	err := InTx(ctx, s.db.App, func(tx pgx.Tx) error {
		var err error
		d, err = deviceByRef(ctx, tx, ref)
		return err
	})
	return d, err
}

func deviceByRef(ctx context.Context, q Querier, ref string) (Device, error) {
	if id, err := uuid.Parse(ref); err == nil {
		return deviceByID(ctx, q, id)
	}
	if !keyPattern.MatchString(ref) {
		return Device{}, apps.Errorf(apps.NotFound, "device not found")
	}
	rows, err := q.Query(ctx, `SELECT `+deviceColumns+deviceFrom+` WHERE d.key = $1`, ref)
	if err != nil {
		return Device{}, err
	}
	d, err := pgx.CollectExactlyOneRow(rows, scanDevice)
	return d, StoreError(err, "device")
}

// SetDeviceStatus enables ("active") or disables ("disabled") a device of a
// tenant. A disabled device is refused by the broker within the auth cache's
// TTL, connected or not. Errors: invalid, not_found.
func (s *Service) SetDeviceStatus(ctx context.Context, tenant uuid.UUID, ref, status string) (Device, error) {
	return s.UpdateDevice(ctx, tenant, ref, DevicePatch{Status: status})
}

// RotateSecret gives a device a new secret and returns it (shown once).
// Errors: not_found.
func (s *Service) RotateSecret(ctx context.Context, tenant uuid.UUID, ref string) (Device, string, error) {
	secret := NewSecret()
	var d Device
	ctx = WithTenant(ctx, tenant)
	err := InTx(ctx, s.db.App, func(tx pgx.Tx) error {
		var err error
		d, err = deviceByRef(ctx, tx, ref)
		if err != nil {
			return err
		}
		salt := newSalt()
		_, err = tx.Exec(ctx, `UPDATE devices SET secret_salt = $2, secret_hash = $3, updated_at = now() WHERE id = $1`,
			d.ID, salt, hashSecret(salt, secret))
		return err
	})
	if err == nil {
		s.auth.forgetDevice(d.ID)
	}
	return d, secret, err
}

// MQTTUsername is the MQTT username of a device: "<device-key>@<tenant-slug>".
func MQTTUsername(deviceKey, tenantSlug string) string { return deviceKey + "@" + tenantSlug }

func splitUsername(u string) (device, tenant string, ok bool) {
	i := strings.LastIndexByte(u, '@')
	if i <= 0 || i == len(u)-1 {
		return "", "", false
	}
	return u[:i], u[i+1:], true
}
