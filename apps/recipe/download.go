package recipe

import (
	"bytes"
	"context"
	"encoding/json"
	"strconv"
	"strings"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"

	"github.com/nxcloud/nxcloud/apps"
	"github.com/nxcloud/nxcloud/ingest"
	"github.com/nxcloud/nxcloud/tenants"
)

// Download statuses.
const (
	Pending    = "pending"
	Sent       = "sent"
	Applied    = "applied"
	Rejected   = "rejected"
	TimedOut   = "timed_out"
	Superseded = "superseded"
)

// Command is the payload published on v1/{tenant}/{device}/cmd/recipe: the
// parameters of the version for that device's model.
type Command struct {
	Download   uuid.UUID          `json:"download"`
	Recipe     string             `json:"recipe"`
	Grade      string             `json:"grade"`
	Version    int                `json:"version"`
	VersionID  uuid.UUID          `json:"version_id"`
	IssuedAt   time.Time          `json:"issued_at"`
	Parameters []CommandParameter `json:"parameters"`
}

// CommandParameter is one parameter as a device receives it.
type CommandParameter struct {
	Key      string  `json:"key"`
	Setpoint float64 `json:"setpoint"`
	Lower    float64 `json:"lower"`
	Upper    float64 `json:"upper"`
	Unit     string  `json:"unit"`
	Step     string  `json:"step,omitempty"`
}

// Download is one download of a version to one device, with the device's
// acknowledgement.
type Download struct {
	ID            uuid.UUID  `json:"id"`
	Recipe        string     `json:"recipe"`
	Version       int        `json:"version"`
	VersionID     uuid.UUID  `json:"version_id"`
	Line          string     `json:"line,omitempty"`
	Device        string     `json:"device"`
	DeviceID      uuid.UUID  `json:"device_id"`
	Status        string     `json:"status"`
	Reason        string     `json:"reason,omitempty"`
	Attempts      int        `json:"attempts"`
	MaxAttempts   int        `json:"max_attempts"`
	NextAttemptAt *time.Time `json:"next_attempt_at,omitempty"`
	CreatedAt     time.Time  `json:"created_at"`
	CreatedBy     Actor      `json:"created_by"`
	FirstSentAt   *time.Time `json:"first_sent_at,omitempty"`
	LastSentAt    *time.Time `json:"last_sent_at,omitempty"`
	RepliedAt     *time.Time `json:"replied_at,omitempty"`
	Command       Command    `json:"command"`
}

const downloadColumns = `d.id, r.code, v.number, d.version_id, coalesce(l.key, ''), dev.key, d.device_id, d.status, d.reason,
	d.attempts, d.max_attempts, d.next_attempt_at, d.created_at, d.created_by, d.first_sent_at, d.last_sent_at, d.replied_at, d.payload`

const downloadFrom = ` FROM recipe_downloads d
	JOIN recipe_versions v ON v.id = d.version_id
	JOIN recipes r ON r.id = v.recipe_id
	JOIN devices dev ON dev.id = d.device_id
	LEFT JOIN lines l ON l.id = d.line_id`

func scanDownload(row pgx.CollectableRow) (Download, error) {
	var d Download
	var by, payload []byte
	if err := row.Scan(&d.ID, &d.Recipe, &d.Version, &d.VersionID, &d.Line, &d.Device, &d.DeviceID, &d.Status, &d.Reason,
		&d.Attempts, &d.MaxAttempts, &d.NextAttemptAt, &d.CreatedAt, &by, &d.FirstSentAt, &d.LastSentAt, &d.RepliedAt, &payload); err != nil {
		return d, err
	}
	if err := json.Unmarshal(by, &d.CreatedBy); err != nil {
		return d, err
	}
	if d.Status != Pending && d.Status != Sent {
		d.NextAttemptAt = nil
	}
	return d, json.Unmarshal(payload, &d.Command)
}

// Topic is the command topic of a device.
func Topic(tenantSlug, deviceKey string) string {
	return "v1/" + tenantSlug + "/" + deviceKey + "/cmd/recipe"
}

// createDownloads records a download of v to every active device of a line
// whose model has parameters in v, superseding the devices' downloads still
// waiting for a reply. field names the input for errors.
func (s *Service) createDownloads(ctx context.Context, tx pgx.Tx, v Version, lineRef, field string) ([]Download, error) {
	var lineID uuid.UUID
	q := `SELECT id FROM lines WHERE key = $1`
	var arg any = lineRef
	if id, err := uuid.Parse(lineRef); err == nil {
		q, arg = `SELECT id FROM lines WHERE id = $1`, id
	}
	if err := tx.QueryRow(ctx, q, arg).Scan(&lineID); err != nil {
		if err == pgx.ErrNoRows {
			return nil, apps.FieldError(field, "unknown line %q", clipText(lineRef, 64))
		}
		return nil, err
	}
	rows, err := tx.Query(ctx, `SELECT dev.id, m.key FROM devices dev JOIN device_models m ON m.id = dev.device_model_id
		WHERE dev.line_id = $1 AND dev.status = 'active' ORDER BY dev.key`, lineID)
	if err != nil {
		return nil, err
	}
	type target struct {
		id    uuid.UUID
		model string
	}
	targets, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (target, error) {
		var t target
		return t, r.Scan(&t.id, &t.model)
	})
	if err != nil {
		return nil, err
	}
	by := actorJSON(ctx)
	var ids []uuid.UUID
	for _, t := range targets {
		cmd := Command{Download: uuid.New(), Recipe: v.Recipe, Grade: v.Grade, Version: v.Number, VersionID: v.ID,
			IssuedAt: s.Now().UTC().Truncate(time.Millisecond)}
		for _, p := range v.Parameters {
			if p.Model == t.model {
				cmd.Parameters = append(cmd.Parameters, CommandParameter{Key: p.Metric, Setpoint: p.Setpoint,
					Lower: p.Lower, Upper: p.Upper, Unit: p.Unit, Step: p.Step})
			}
		}
		if len(cmd.Parameters) == 0 {
			continue
		}
		if _, err := supersedeOpen(ctx, tx, uuid.Nil, t.id, "a newer download replaced it"); err != nil {
			return nil, err
		}
		if _, err := tx.Exec(ctx, `INSERT INTO recipe_downloads (tenant_id, id, version_id, line_id, device_id, payload,
			max_attempts, next_attempt_at, created_by) VALUES (nx_require_tenant(), $1, $2, $3, $4, $5, $6, now(), $7)`,
			cmd.Download, v.ID, lineID, t.id, mustJSON(cmd), s.MaxAttempts, by); err != nil {
			return nil, tenants.StoreError(err, "recipe download")
		}
		ids = append(ids, cmd.Download)
	}
	if len(ids) == 0 {
		return nil, apps.FieldError(field, "no active device of line %q has parameters in recipe %s version %d", clipText(lineRef, 64), v.Recipe, v.Number)
	}
	return downloadsByID(ctx, tx, ids)
}

func downloadsByID(ctx context.Context, q tenants.Querier, ids []uuid.UUID) ([]Download, error) {
	rows, err := q.Query(ctx, `SELECT `+downloadColumns+downloadFrom+` WHERE d.id = ANY($1) ORDER BY dev.key`, ids)
	if err != nil {
		return nil, err
	}
	return pgx.CollectRows(rows, scanDownload)
}

// openDownload is a download whose retained command must be cleared.
type openDownload struct {
	slug, device string
}

// supersedeOpen marks the downloads still waiting for a reply of a version
// (or of a device) superseded, and returns the devices whose retained command
// should be cleared.
func supersedeOpen(ctx context.Context, tx pgx.Tx, version, device uuid.UUID, reason string) ([]openDownload, error) {
	if version == uuid.Nil && device == uuid.Nil {
		return nil, nil // never every download of the tenant
	}
	rows, err := tx.Query(ctx, `UPDATE recipe_downloads d SET status = 'superseded', reason = $3, next_attempt_at = NULL
		FROM devices dev, tenants t
		WHERE dev.id = d.device_id AND t.id = d.tenant_id AND d.status IN ('pending', 'sent')
		  AND ($1 = '00000000-0000-0000-0000-000000000000'::uuid OR d.version_id = $1)
		  AND ($2 = '00000000-0000-0000-0000-000000000000'::uuid OR d.device_id = $2)
		RETURNING t.slug, dev.key`, version, device, reason)
	if err != nil {
		return nil, err
	}
	return pgx.CollectRows(rows, func(r pgx.CollectableRow) (openDownload, error) {
		var o openDownload
		return o, r.Scan(&o.slug, &o.device)
	})
}

// clearRetained removes the retained command of devices (an empty retained
// publish: devices ignore empty payloads).
func (s *Service) clearRetained(_ context.Context, devs []openDownload) {
	for _, d := range devs {
		if err := s.downlink.Publish(Topic(d.slug, d.device), nil, true, 1); err != nil {
			s.log.Warn("recipe: clear retained command", "device", d.device, "err", err)
		}
	}
}

// backoff is the wait after the nth publish of a download.
func (s *Service) backoff(n int) time.Duration {
	d := s.RetryBase
	for i := 1; i < n && d < s.RetryMax; i++ {
		d *= 2
	}
	return min(d, s.RetryMax)
}

// dispatchNow publishes fresh downloads at once (the background job retries
// what fails) and returns them as they stand.
func (s *Service) dispatchNow(ctx context.Context, ds []Download) []Download {
	if len(ds) == 0 {
		return []Download{}
	}
	ids := make([]uuid.UUID, len(ds))
	for i, d := range ds {
		ids[i] = d.ID
	}
	if err := s.dispatch(context.WithoutCancel(ctx), ids, false); err != nil {
		s.log.Warn("recipe: dispatch downloads", "err", err)
	}
	var out []Download
	err := tenants.InTx(ctx, s.db.App, func(tx pgx.Tx) error {
		var err error
		out, err = downloadsByID(ctx, tx, ids)
		return err
	})
	if err != nil {
		return ds
	}
	return out
}

// dispatch publishes the given downloads that are due (all of them when
// restore is set, without counting an attempt: the broker lost its retained
// messages in a restart) and times out those out of attempts. It runs on the
// system pool: the job works for every tenant, each row by its own ids.
func (s *Service) dispatch(ctx context.Context, ids []uuid.UUID, restore bool) error {
	return pgx.BeginFunc(ctx, s.db.System, func(tx pgx.Tx) error {
		rows, err := tx.Query(ctx, `SELECT d.id, t.slug, dev.key, d.payload, d.attempts, d.max_attempts
			FROM recipe_downloads d JOIN tenants t ON t.id = d.tenant_id JOIN devices dev ON dev.id = d.device_id
			WHERE d.id = ANY($1) AND d.status IN ('pending', 'sent') AND ($2 OR d.next_attempt_at <= now())
			ORDER BY d.created_at
			FOR UPDATE OF d SKIP LOCKED`, ids, restore)
		if err != nil {
			return err
		}
		type due struct {
			id                 uuid.UUID
			slug, device       string
			payload            []byte
			attempts, maxTries int
		}
		list, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (due, error) {
			var d due
			return d, r.Scan(&d.id, &d.slug, &d.device, &d.payload, &d.attempts, &d.maxTries)
		})
		if err != nil {
			return err
		}
		for _, d := range list {
			topic := Topic(d.slug, d.device)
			if !restore && d.attempts >= d.maxTries {
				if _, err := tx.Exec(ctx, `UPDATE recipe_downloads SET status = 'timed_out', next_attempt_at = NULL,
					reason = $2 WHERE id = $1`, d.id, "no reply after "+strconv.Itoa(d.attempts)+" attempts"); err != nil {
					return err
				}
				s.clearRetained(ctx, []openDownload{{slug: d.slug, device: d.device}})
				continue
			}
			// jsonb reorders keys: publish the command as the struct encodes it.
			var cmd Command
			if err := json.Unmarshal(d.payload, &cmd); err != nil {
				return err
			}
			if err := s.downlink.Publish(topic, mustJSON(cmd), true, 1); err != nil {
				s.log.Warn("recipe: publish download", "download", d.id, "topic", topic, "err", err)
				if _, err := tx.Exec(ctx, `UPDATE recipe_downloads SET next_attempt_at = now() + make_interval(secs => $2)
					WHERE id = $1`, d.id, s.RetryBase.Seconds()); err != nil {
					return err
				}
				continue
			}
			if restore {
				continue
			}
			if _, err := tx.Exec(ctx, `UPDATE recipe_downloads SET status = 'sent', attempts = attempts + 1,
				first_sent_at = coalesce(first_sent_at, now()), last_sent_at = now(),
				next_attempt_at = now() + make_interval(secs => $2) WHERE id = $1`,
				d.id, s.backoff(d.attempts+1).Seconds()); err != nil {
				return err
			}
		}
		return nil
	})
}

// RunDownloads re-publishes the retained commands of downloads still waiting
// for a reply (the embedded broker keeps retained messages in memory only),
// then publishes due downloads, retries with backoff and times out, every
// interval until ctx ends.
func (s *Service) RunDownloads(ctx context.Context, every time.Duration) {
	if ids, err := s.openDownloads(ctx, false); err == nil && len(ids) > 0 {
		if err := s.dispatch(ctx, ids, true); err != nil && ctx.Err() == nil {
			s.log.Warn("recipe: restore retained downloads", "err", err)
		}
	}
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		if _, err := s.DispatchDue(ctx); err != nil && ctx.Err() == nil {
			s.log.Warn("recipe: dispatch downloads", "err", err)
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// DispatchDue publishes (or times out) every download whose next attempt is
// due and returns how many it looked at. The job runs it for every tenant;
// with a tenant in ctx it handles only that tenant's downloads (tests step
// the job that way).
func (s *Service) DispatchDue(ctx context.Context) (int, error) {
	ids, err := s.openDownloads(ctx, true)
	if err != nil || len(ids) == 0 {
		return 0, err
	}
	return len(ids), s.dispatch(ctx, ids, false)
}

func (s *Service) openDownloads(ctx context.Context, dueOnly bool) ([]uuid.UUID, error) {
	only, _ := tenants.FromContext(ctx)
	rows, err := s.db.System.Query(ctx, `SELECT id FROM recipe_downloads
		WHERE status IN ('pending', 'sent') AND (NOT $1 OR next_attempt_at <= now())
		  AND ($2 = '00000000-0000-0000-0000-000000000000'::uuid OR tenant_id = $2)
		ORDER BY next_attempt_at LIMIT 1000`, dueOnly, only)
	if err != nil {
		return nil, err
	}
	return pgx.CollectRows(rows, pgx.RowTo[uuid.UUID])
}

// Reply is what a device publishes on v1/{tenant}/{device}/cmd/recipe/reply.
type Reply struct {
	Download string `json:"download"`
	Status   string `json:"status"`
	Reason   string `json:"reason,omitempty"`
}

// HandleReply applies a device's reply to a download (the device_events
// feed, consumer "recipe.replies"): applied or rejected with a reason. A reply
// for another command name is ignored. Errors: invalid (payload), not_found
// (no such download of that device), conflict (a different answer already
// recorded).
func (s *Service) HandleReply(ctx context.Context, tx pgx.Tx, ev ingest.DeviceEvent) error {
	if ev.Name != "recipe" {
		return nil
	}
	var r Reply
	// Strict: exact field names, no unknown or duplicate keys.
	if err := apps.Bind(bytes.NewReader(ev.Payload), &r); err != nil {
		return err
	}
	id, err := uuid.Parse(r.Download)
	if err != nil {
		return apps.FieldError("download", "recipe reply: download must be the id of the download")
	}
	if r.Status != Applied && r.Status != Rejected {
		return apps.FieldError("status", "recipe reply: status must be applied or rejected")
	}
	reason := clipText(strings.TrimSpace(r.Reason), 500)
	var status, slug string
	var newer bool
	err = tx.QueryRow(ctx, `SELECT d.status, t.slug, EXISTS (SELECT 1 FROM recipe_downloads n
			WHERE n.device_id = d.device_id AND n.created_at > d.created_at)
		FROM recipe_downloads d JOIN tenants t ON t.id = d.tenant_id
		WHERE d.id = $1 AND d.tenant_id = $2 AND d.device_id = $3 FOR UPDATE OF d`, id, ev.TenantID, ev.DeviceID).Scan(&status, &slug, &newer)
	if err != nil {
		return tenants.StoreError(err, "recipe download "+id.String()+" of device "+ev.DeviceKey)
	}
	if status == Applied || status == Rejected {
		if status == r.Status {
			return nil // a repeated reply
		}
		return apps.Errorf(apps.Conflict, "recipe download %s was already %s", id, status)
	}
	if _, err := tx.Exec(ctx, `UPDATE recipe_downloads SET status = $2, reason = $3, replied_at = $4, next_attempt_at = NULL
		WHERE id = $1 AND tenant_id = $5`, id, r.Status, reason, ev.ReceivedAt, ev.TenantID); err != nil {
		return err
	}
	if !newer {
		s.clearRetained(ctx, []openDownload{{slug: slug, device: ev.DeviceKey}})
	}
	return nil
}

// ReplyFeed is the feed of device replies the process runs (and tests poll).
func (s *Service) ReplyFeed() *ingest.Feed {
	return ingest.NewFeed(s.db.System, "recipe.replies", []string{"cmd_reply"}, s.HandleReply, s.log)
}
