package tenants

import (
	"context"
	"fmt"
	"strings"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"

	"github.com/nxcloud/nxcloud/apps"
)

// checkOnboardRows checks the lines and devices of a new enterprise before
// anything is written: each line's fields and unique keys, and each device
// row as an import checks it (ImportDevices) with the models of the sector's
// template and the keys of lines. It returns the normalized lines and the
// device rows. Errors: invalid, naming the first bad line or device row
// (1-based).
func checkOnboardRows(tpl *Template, lines []LineInput, devices []DeviceInput) ([]LineInput, []ImportRow, error) {
	if len(devices) > MaxImportRows {
		return nil, nil, apps.FieldError("devices", "at most %d devices", MaxImportRows)
	}
	seen := map[string]int{}
	out := make([]LineInput, len(lines))
	for i, l := range lines {
		if err := l.normalize(); err != nil {
			e := appError(err)
			return nil, nil, apps.FieldError("lines", "line row %d (key %q), field %s: %s", i+1, clip(l.Key, 64), e.Field, e.Message)
		}
		if j, dup := seen[l.Key]; dup {
			return nil, nil, apps.FieldError("lines", "line row %d (key %q): the key appears on row %d too", i+1, l.Key, j)
		}
		seen[l.Key] = i + 1
		out[i] = l
	}
	models := map[string]bool{}
	for _, m := range tpl.DeviceModels {
		models[m.Key] = true
	}
	rows := make([]ImportRow, len(devices))
	for i, d := range devices {
		rows[i] = ImportRow{Row: i + 1, Input: d}
	}
	in, bad := checkImportRows(rows)
	for i := range in {
		if bad[i] != nil {
			continue
		}
		if !models[in[i].Model] {
			bad[i] = apps.FieldError("model", "unknown device model %q of sector %s", clip(in[i].Model, 64), tpl.ID)
		} else if _, ok := seen[in[i].Line]; in[i].Line != "" && !ok {
			bad[i] = apps.FieldError("line", "unknown line %q (not in lines)", clip(in[i].Line, 64))
		}
	}
	for i, e := range bad {
		if e != nil {
			msg := fmt.Sprintf("device row %d (key %q)", i+1, clip(devices[i].Key, 64))
			if e.Field != "" {
				msg += ", field " + e.Field
			}
			return nil, nil, apps.FieldError("devices", "%s: %s", msg, e.Message)
		}
	}
	return out, rows, nil
}

// onboardRows creates checked lines and device rows in a new tenant, in tx
// (the onboarding transaction). A row the database refuses fails the whole
// transaction.
func onboardRows(ctx context.Context, tx pgx.Tx, tenant uuid.UUID, lines []LineInput, rows []ImportRow) ([]Line, []DeviceCredentials, error) {
	if len(lines) == 0 && len(rows) == 0 {
		return nil, nil, nil
	}
	if _, err := tx.Exec(ctx, `SELECT set_config('nx.tenant_id', $1, true)`, tenant.String()); err != nil {
		return nil, nil, fmt.Errorf("scope transaction to tenant: %w", err)
	}
	out := make([]Line, 0, len(lines))
	for _, in := range lines {
		l, err := createLineTx(ctx, tx, in)
		if err != nil {
			return nil, nil, err
		}
		out = append(out, l)
	}
	if len(rows) == 0 {
		return out, nil, nil
	}
	in, bad := checkImportRows(rows)
	res, err := importTx(ctx, tx, tenant, rows, in, bad, false)
	if err != nil {
		return nil, nil, fmt.Errorf("create devices: %w", err)
	}
	devices := make([]DeviceCredentials, 0, len(res.Rows))
	var failed []string
	for _, r := range res.Rows {
		if r.Status != RowCreated {
			msg := fmt.Sprintf("device row %d (key %q)", r.Row, r.Key)
			if r.Error != nil {
				msg += ": " + r.Error.Message
			}
			failed = append(failed, msg)
			continue
		}
		devices = append(devices, DeviceCredentials{Device: *r.Device, Username: r.Username, Secret: r.Secret})
	}
	if len(failed) > 0 {
		return nil, nil, apps.FieldError("devices", "%s", strings.Join(failed, "; "))
	}
	return out, devices, nil
}
