package metering

import (
	"context"
	"fmt"
	"log/slog"
	"sort"
	"strings"
	"sync/atomic"
	"time"
	"unicode/utf8"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/nxcloud/nxcloud/apps"
	"github.com/nxcloud/nxcloud/tenants"
)

// TelemetryUsage is what one ingest batch stored for one device: the same
// shape as ingest.Usage, which the writer hands to its OnStored hook.
type TelemetryUsage struct {
	Tenant, Device uuid.UUID
	// Stored counts telemetry rows actually inserted (duplicates not counted).
	Stored int64
	// Rejected counts points or message parts dead-lettered.
	Rejected int64
	// Events counts device events stored.
	Events int64
}

// RecordTelemetry adds a batch's telemetry counts to the ledger inside tx,
// the transaction that stores the batch: the counts become durable exactly
// when the points do, and a rolled-back batch counts nothing. One row per
// tenant per batch (its devices' counts as arrays), append-only, so
// concurrent writers never wait on each other and a batch of many devices
// costs one row; the metering job folds the rows per device and hour.
func (s *Service) RecordTelemetry(ctx context.Context, tx pgx.Tx, usage []TelemetryUsage) error {
	type acc struct {
		devs       []uuid.UUID
		st, rj, ev []int64
		at         map[uuid.UUID]int
	}
	var order []uuid.UUID
	byTenant := map[uuid.UUID]*acc{}
	for _, u := range usage {
		if u.Stored == 0 && u.Rejected == 0 && u.Events == 0 {
			continue
		}
		a := byTenant[u.Tenant]
		if a == nil {
			a = &acc{at: map[uuid.UUID]int{}}
			byTenant[u.Tenant] = a
			order = append(order, u.Tenant)
		}
		i, ok := a.at[u.Device]
		if !ok {
			i = len(a.devs)
			a.at[u.Device] = i
			a.devs, a.st, a.rj, a.ev = append(a.devs, u.Device), append(a.st, 0), append(a.rj, 0), append(a.ev, 0)
		}
		a.st[i] += u.Stored
		a.rj[i] += u.Rejected
		a.ev[i] += u.Events
	}
	const insert = `INSERT INTO usage_telemetry_batches (tenant_id, hour, devices, stored, rejected, events)
		VALUES ($1, date_trunc('hour', now(), 'UTC'), $2, $3, $4, $5)`
	switch len(order) {
	case 0:
		return nil
	case 1:
		a := byTenant[order[0]]
		if _, err := tx.Exec(ctx, insert, order[0], a.devs, a.st, a.rj, a.ev); err != nil {
			return fmt.Errorf("metering: record telemetry usage: %w", err)
		}
	default:
		var b pgx.Batch
		for _, t := range order {
			a := byTenant[t]
			b.Queue(insert, t, a.devs, a.st, a.rj, a.ev)
		}
		if err := tx.SendBatch(ctx, &b).Close(); err != nil {
			return fmt.Errorf("metering: record telemetry usage: %w", err)
		}
	}
	s.met.telemetryRows.Add(float64(len(order)))
	return nil
}

// telemetryFlat is the telemetry ledger, folded and not yet folded, one row
// per (tenant, device, hour) or (batch, device).
const telemetryFlat = `(
	SELECT tenant_id, device_id, hour, stored, rejected, events FROM usage_telemetry
	UNION ALL
	SELECT b.tenant_id, u.d, b.hour, u.s, u.r, u.e
	FROM usage_telemetry_batches b, unnest(b.devices, b.stored, b.rejected, b.events) AS u(d, s, r, e)
)`

// Use is one metered unit (or quantity of units) with its idempotency key:
// recording the same (tenant, meter, key) twice counts it once.
type Use struct {
	Meter   string
	Subject string
	// Quantity is the number of units (≥ 0; 1 for one use).
	Quantity int64
	// Key is the idempotency key: the id of the effect (the trace request,
	// the SPC computation, the download), stable across retries.
	Key string
	// At is when the use happened (zero: now). A use of a month whose
	// invoice is final is billed as an adjustment on the next invoice.
	At time.Time
}

func (u *Use) check() error {
	switch {
	case !validMeter(u.Meter):
		return apps.FieldError("meter", "unknown meter %q (want one of %s)", clipText(u.Meter), strings.Join(Meters, ", "))
	case u.Quantity < 0:
		return apps.FieldError("quantity", "quantity must not be negative")
	case u.Key == "" || len(u.Key) > 200 || !cleanText(u.Key):
		return apps.FieldError("key", "an idempotency key of 1 to 200 characters (valid UTF-8, no NUL) is required")
	case len(u.Subject) > 200 || !cleanText(u.Subject):
		return apps.FieldError("subject", "a subject of at most 200 characters (valid UTF-8, no NUL) is required")
	}
	return nil
}

func cleanText(s string) bool { return utf8.ValidString(s) && !strings.ContainsRune(s, 0) }

func clipText(s string) string {
	s = strings.ToValidUTF8(strings.ReplaceAll(s, "\x00", ""), "?")
	if len(s) > 40 {
		return s[:40] + "…"
	}
	return s
}

const insertUse = `
	INSERT INTO usage_events (tenant_id, meter, subject, quantity, occurred_at, idem_key)
	VALUES ($1, $2, $3, $4, coalesce($5, clock_timestamp()), $6)
	ON CONFLICT (tenant_id, meter, idem_key) DO NOTHING`

// RecordUse records a use on its own transaction (the schema owner's pool):
// for effects that are already durable (or that live outside PostgreSQL),
// called after the effect. Idempotent on (tenant, meter, key). Errors:
// invalid (meter, quantity, key, subject), or a database error.
func (s *Service) RecordUse(ctx context.Context, tenant uuid.UUID, u Use) error {
	return s.RecordUseTx(ctx, s.sys, tenant, u)
}

// RecordUseTx records a use in q, the transaction of the use's effect (an N
// app's tenants.InTx transaction, say): the use counts exactly when the
// effect commits. Idempotent on (tenant, meter, key). Errors: invalid, or a
// database error.
func (s *Service) RecordUseTx(ctx context.Context, q tenants.Querier, tenant uuid.UUID, u Use) error {
	if err := u.check(); err != nil {
		return err
	}
	var at *time.Time
	if !u.At.IsZero() {
		t := u.At.UTC()
		at = &t
	}
	if _, err := q.Exec(ctx, insertUse, tenant, u.Meter, u.Subject, u.Quantity, at, u.Key); err != nil {
		return tenants.StoreError(err, "usage")
	}
	return nil
}

// RecordAppUse records one use of an N app: app is "batch", "quality",
// "recipe" or "downgrade", use names what was done ("trace", "spc",
// "download"), key identifies the effect (stable across retries). The
// tenant is the one of ctx. It is RecordUse with meter app.uses and subject
// "<app>.<use>". Errors: unauthorized (no tenant in ctx), invalid.
func (s *Service) RecordAppUse(ctx context.Context, app, use, key string) error {
	tenant, ok := tenants.FromContext(ctx)
	if !ok {
		return apps.Errorf(apps.Unauthorized, "no tenant in this request")
	}
	return s.RecordUse(ctx, tenant, Use{Meter: MeterAppUses, Subject: app + "." + use, Quantity: 1, Key: app + "." + use + ":" + key})
}

// RecordModuleInvocation records one X-module invocation (subject: the
// module id; key: the invocation id). Errors: invalid.
func (s *Service) RecordModuleInvocation(ctx context.Context, tenant uuid.UUID, module, invocation string) error {
	return s.RecordUse(ctx, tenant, Use{Meter: MeterModuleInvocations, Subject: module, Quantity: 1, Key: invocation})
}

// apiRecorder writes API calls to the ledger by group commit: a request's
// row is committed before its answer is sent, together with the rows of the
// requests answered within the same few milliseconds.
type apiRecorder struct {
	log     *slog.Logger
	pool    *pgxpool.Pool
	wait    time.Duration
	size    int
	ch      chan *apiRec
	met     *metrics
	pending []*apiRec // rows of failed commits, retried
	running atomic.Bool
}

type apiRec struct {
	tenant     uuid.UUID
	class, key string
	at         time.Time
	done       chan error
}

func newAPIRecorder(log *slog.Logger, pool *pgxpool.Pool, wait time.Duration, size int, met *metrics) *apiRecorder {
	return &apiRecorder{log: log, pool: pool, wait: wait, size: size, ch: make(chan *apiRec, 4*size), met: met}
}

// RecordAPICall writes one answered API call to the ledger and returns when
// it is committed (or when the commit failed: the row is then kept and
// retried). key is the call's idempotency key. Errors: the commit's failure.
func (s *Service) RecordAPICall(ctx context.Context, tenant uuid.UUID, class, key string) error {
	done := make(chan error, 1)
	r := &apiRec{tenant: tenant, class: class, key: key, at: s.now().UTC(), done: done}
	if !s.api.running.Load() {
		// No group commit running (a test, or shutdown): one row, now.
		return s.RecordUse(ctx, tenant, Use{Meter: MeterAPICalls, Subject: class, Quantity: 1, Key: key, At: r.at})
	}
	select {
	case s.api.ch <- r:
	case <-ctx.Done():
		return ctx.Err()
	}
	// done, not r.done: the recorder clears r.done once it has answered.
	return <-done
}

func (a *apiRecorder) run(ctx context.Context) {
	a.running.Store(true)
	timer := time.NewTimer(time.Hour)
	timer.Stop()
	retry := time.NewTicker(time.Second)
	defer retry.Stop()
	var batch []*apiRec
	for {
		var r *apiRec
		select {
		case r = <-a.ch:
		case <-retry.C:
			if len(a.pending) > 0 {
				a.flush(nil)
			}
			continue
		case <-ctx.Done():
			// Drain what was queued: those requests are waiting to answer.
			a.running.Store(false)
			for {
				select {
				case r := <-a.ch:
					batch = append(batch, r)
				default:
					a.flush(batch)
					return
				}
			}
		}
		batch = append(batch[:0], r)
		// Group commit: take what queued while the previous commit ran; with
		// a wait configured, also what arrives within it.
		if a.wait > 0 {
			timer.Reset(a.wait)
		}
	fill:
		for len(batch) < a.size {
			if a.wait <= 0 {
				select {
				case r := <-a.ch:
					batch = append(batch, r)
					continue
				default:
					break fill
				}
			}
			select {
			case r := <-a.ch:
				batch = append(batch, r)
			case <-timer.C:
				break fill
			}
		}
		timer.Stop()
		a.flush(batch)
		batch = batch[:0]
	}
}

func (a *apiRecorder) flush(batch []*apiRec) {
	all := append(a.pending, batch...)
	a.pending = nil
	if len(all) == 0 {
		return
	}
	// A key may come twice in one batch (a client retry racing itself).
	sort.Slice(all, func(i, j int) bool { return all[i].key < all[j].key })
	n := len(all)
	ts, cls, keys, ats := make([]uuid.UUID, 0, n), make([]string, 0, n), make([]string, 0, n), make([]time.Time, 0, n)
	for _, r := range all {
		ts, cls, keys, ats = append(ts, r.tenant), append(cls, r.class), append(keys, r.key), append(ats, r.at)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_, err := a.pool.Exec(ctx, `
		INSERT INTO usage_events (tenant_id, meter, subject, quantity, occurred_at, idem_key)
		SELECT t, 'api.calls', c, 1, at, k FROM unnest($1::uuid[], $2::text[], $3::text[], $4::timestamptz[]) AS u(t, c, k, at)
		ON CONFLICT (tenant_id, meter, idem_key) DO NOTHING`, ts, cls, keys, ats)
	a.met.apiBatch.Observe(float64(n))
	if err != nil {
		a.met.apiFailed.Inc()
		a.log.Error("metering: API calls not yet in the ledger (kept in memory and retried)", "rows", len(all), "err", err)
		a.pending = all
	} else {
		a.met.apiRecorded.Add(float64(n))
	}
	for _, r := range all {
		if r.done != nil {
			r.done <- err
			r.done = nil
		}
	}
}
