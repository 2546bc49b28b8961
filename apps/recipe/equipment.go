package recipe

import (
	"context"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"

	"github.com/nxcloud/nxcloud/apps"
	"github.com/nxcloud/nxcloud/tenants"
)

// DownloadToLine downloads a released version to the devices of one more
// line. Errors: not_found, conflict (the version is not released), invalid
// (field line).
func (s *Service) DownloadToLine(ctx context.Context, recipeRef, versionRef string, in DownloadInput) ([]Download, error) {
	if in.Line == "" {
		return nil, apps.FieldError("line", "line is required (key or id)")
	}
	var out []Download
	err := tenants.InTx(ctx, s.db.App, func(tx pgx.Tx) error {
		v, err := loadVersion(ctx, tx, recipeRef, versionRef, true)
		if err != nil {
			return err
		}
		if v.Status != Released {
			return apps.Errorf(apps.Conflict, "recipe %s version %d is %s: only a released version is downloaded", v.Recipe, v.Number, v.Status)
		}
		out, err = s.createDownloads(ctx, tx, v, in.Line, "line")
		return err
	})
	if err != nil {
		return nil, err
	}
	return s.dispatchNow(ctx, out), nil
}

// DownloadQuery filters downloads; empty fields match all.
type DownloadQuery struct {
	Device  string // key or id
	Line    string
	Status  string
	Version string // a version id
	Limit   int
	// Cursor is next_cursor of the previous page.
	Cursor string
}

// DownloadPage is a page of downloads.
type DownloadPage struct {
	Items      []Download `json:"items"`
	NextCursor string     `json:"next_cursor,omitempty"`
}

// Downloads lists downloads, newest first, a page of at most Limit (default
// 100, at most 1000). Errors: invalid (field status, version_id, limit or
// cursor), not_found (the device or version of a filter).
func (s *Service) Downloads(ctx context.Context, q DownloadQuery) (DownloadPage, error) {
	page := DownloadPage{Items: []Download{}}
	cur, err := parseCursor(q.Cursor)
	if err != nil {
		return page, err
	}
	switch q.Status {
	case "", Pending, Sent, Applied, Rejected, TimedOut, Superseded:
	default:
		return page, apps.FieldError("status", "status is one of pending, sent, applied, rejected, timed_out, superseded")
	}
	var version *uuid.UUID
	if q.Version != "" {
		id, err := uuid.Parse(q.Version)
		if err != nil {
			return page, apps.FieldError("version_id", "version_id is a version id (UUID)")
		}
		version = &id
	}
	if q.Limit == 0 {
		q.Limit = 100
	}
	if q.Limit > 1000 {
		return page, apps.FieldError("limit", "limit is at most 1000")
	}
	err = tenants.InTx(ctx, s.db.App, func(tx pgx.Tx) error {
		device, err := resolveRef(ctx, tx, "devices", "device", q.Device)
		if err != nil {
			return err
		}
		if version != nil {
			if _, err := resolveRef(ctx, tx, "recipe_versions", "recipe version", version.String()); err != nil {
				return err
			}
		}
		rows, err := tx.Query(ctx, `SELECT `+downloadColumns+downloadFrom+`
			WHERE ($1::uuid IS NULL OR d.device_id = $1) AND ($2 = '' OR l.key = $2) AND ($3 = '' OR d.status = $3)
			  AND ($4::uuid IS NULL OR d.version_id = $4)
			  AND ($6::timestamptz IS NULL OR (d.created_at, d.id) < ($6, $7))
			ORDER BY d.created_at DESC, d.id DESC LIMIT $5`, device, q.Line, q.Status, version, q.Limit+1, cur.at, cur.id)
		if err != nil {
			return err
		}
		items, err := pgx.CollectRows(rows, scanDownload)
		if err != nil {
			return err
		}
		if len(items) > q.Limit {
			items = items[:q.Limit]
			last := items[len(items)-1]
			page.NextCursor = cursor{at: &last.CreatedAt, id: last.ID}.String()
		}
		page.Items = append(page.Items, items...)
		return nil
	})
	return page, err
}

// Download returns one download. Errors: not_found.
func (s *Service) Download(ctx context.Context, id string) (Download, error) {
	uid, err := uuid.Parse(id)
	if err != nil {
		return Download{}, apps.Errorf(apps.NotFound, "recipe download not found")
	}
	var out Download
	err = tenants.InTx(ctx, s.db.App, func(tx pgx.Tx) error {
		ds, err := downloadsByID(ctx, tx, []uuid.UUID{uid})
		if err != nil {
			return err
		}
		if len(ds) == 0 {
			return apps.Errorf(apps.NotFound, "recipe download not found")
		}
		out = ds[0]
		return nil
	})
	return out, err
}

// Running is the version a device last applied.
type Running struct {
	Recipe    string    `json:"recipe"`
	Version   int       `json:"version"`
	VersionID uuid.UUID `json:"version_id"`
	Download  uuid.UUID `json:"download"`
	AppliedAt time.Time `json:"applied_at"`
}

// Equipment is a device with the recipe version it runs (its last applied
// download) and its latest download.
type Equipment struct {
	Device   string    `json:"device"`
	DeviceID uuid.UUID `json:"device_id"`
	Line     string    `json:"line,omitempty"`
	Running  *Running  `json:"running,omitempty"`
	Latest   Download  `json:"latest"`
}

// Equipment lists the devices that were sent recipes, with the version each
// runs and its latest download.
func (s *Service) Equipment(ctx context.Context) ([]Equipment, error) {
	out := []Equipment{}
	err := tenants.InTx(ctx, s.db.App, func(tx pgx.Tx) error {
		rows, err := tx.Query(ctx, `SELECT `+downloadColumns+downloadFrom+`
			WHERE d.id IN (SELECT DISTINCT ON (device_id) id FROM recipe_downloads ORDER BY device_id, created_at DESC)
			ORDER BY dev.key`)
		if err != nil {
			return err
		}
		latest, err := pgx.CollectRows(rows, scanDownload)
		if err != nil {
			return err
		}
		rows, err = tx.Query(ctx, `SELECT DISTINCT ON (d.device_id) d.device_id, r.code, v.number, d.version_id, d.id, d.replied_at
			FROM recipe_downloads d JOIN recipe_versions v ON v.id = d.version_id JOIN recipes r ON r.id = v.recipe_id
			WHERE d.status = 'applied' ORDER BY d.device_id, d.replied_at DESC`)
		if err != nil {
			return err
		}
		running := map[uuid.UUID]*Running{}
		for rows.Next() {
			var dev uuid.UUID
			var r Running
			if err := rows.Scan(&dev, &r.Recipe, &r.Version, &r.VersionID, &r.Download, &r.AppliedAt); err != nil {
				rows.Close()
				return err
			}
			running[dev] = &r
		}
		rows.Close()
		if err := rows.Err(); err != nil {
			return err
		}
		for _, d := range latest {
			out = append(out, Equipment{Device: d.Device, DeviceID: d.DeviceID, Line: d.Line, Running: running[d.DeviceID], Latest: d})
		}
		return nil
	})
	return out, err
}

// resolveRef finds a row of table (devices, lots: by id or key/code;
// recipe_versions: by id) of the tenant for a query filter; nil for an empty
// ref. Errors: not_found (also for another tenant's).
func resolveRef(ctx context.Context, tx pgx.Tx, table, what, ref string) (*uuid.UUID, error) {
	if ref == "" {
		return nil, nil
	}
	queries := map[string]string{
		"devices":         `SELECT id FROM devices WHERE key = $1 OR id = $2`,
		"lots":            `SELECT id FROM lots WHERE code = $1 OR id = $2`,
		"recipe_versions": `SELECT id FROM recipe_versions WHERE $1 = '' AND id = $2`,
	}
	var byID *uuid.UUID
	if id, err := uuid.Parse(ref); err == nil {
		byID = &id
	}
	var id uuid.UUID
	if err := tx.QueryRow(ctx, queries[table]+` LIMIT 1`, ref, byID).Scan(&id); err != nil {
		return nil, tenants.StoreError(err, what)
	}
	return &id, nil
}
