package ingest

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"hash/fnv"
	"log/slog"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/nxcloud/nxcloud/apps"
)

// DeviceEvent is a committed row of device_events: an event, a state change
// or a command reply, as a device published it.
type DeviceEvent struct {
	ID        int64
	TenantID  uuid.UUID
	DeviceID  uuid.UUID
	DeviceKey string
	// Kind is "event", "state" or "cmd_reply".
	Kind string
	// Name is the command name of a reply ("recipe" for cmd/recipe/reply),
	// empty otherwise.
	Name       string
	TS         time.Time
	ReceivedAt time.Time
	Payload    json.RawMessage
}

// FeedHandler applies one event. tx is scoped to the event's tenant
// (nx.tenant_id is set) and is the transaction that records the event as
// seen, so an effect written through tx happens exactly once. Returning an
// apps.Error with code invalid or not_found refuses the event for good (it is
// recorded with the reason and never retried); any other error rolls back and
// the event is offered again later.
type FeedHandler func(ctx context.Context, tx pgx.Tx, ev DeviceEvent) error

// Feed delivers committed device events of some kinds to one consumer, in id
// order, at least once, each effect exactly once. Several replicas may run the
// same consumer: a transaction-level advisory lock lets one apply at a time.
type Feed struct {
	pool     *pgxpool.Pool
	consumer string
	kinds    []string
	handle   FeedHandler
	log      *slog.Logger
	// Settle is how long after an event's arrival the feed still expects an
	// older id to commit (writers' transactions are short); the low watermark
	// stays that far behind.
	Settle time.Duration
	// Batch is how many events one pass reads.
	Batch int
}

// NewFeed returns a feed of the given kinds of events for consumer (a stable
// name such as "batch.lots"), applied by handle, on the system pool.
func NewFeed(pool *pgxpool.Pool, consumer string, kinds []string, handle FeedHandler, log *slog.Logger) *Feed {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Feed{pool: pool, consumer: consumer, kinds: kinds, handle: handle, log: log,
		Settle: 2 * time.Minute, Batch: 500}
}

// Run applies events every interval until ctx ends.
func (f *Feed) Run(ctx context.Context, every time.Duration) {
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		if _, err := f.Poll(ctx); err != nil && ctx.Err() == nil {
			f.log.Warn("event feed", "consumer", f.consumer, "err", err)
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// Poll applies the events not yet seen and returns how many it applied or
// refused. Tests call it to make the feed catch up.
func (f *Feed) Poll(ctx context.Context) (int, error) {
	if _, err := f.pool.Exec(ctx, `INSERT INTO event_feed_consumers (consumer) VALUES ($1) ON CONFLICT DO NOTHING`, f.consumer); err != nil {
		return 0, fmt.Errorf("register feed consumer %s: %w", f.consumer, err)
	}
	total := 0
	for {
		n, more, err := f.pass(ctx)
		total += n
		if err != nil || !more {
			return total, err
		}
	}
}

func (f *Feed) lockKey() int64 {
	h := fnv.New64a()
	h.Write([]byte("nxcloud.feed." + f.consumer))
	return int64(h.Sum64())
}

// pass applies one batch in one transaction, each event in a savepoint so a
// refused event does not undo the others.
func (f *Feed) pass(ctx context.Context) (applied int, more bool, err error) {
	err = pgx.BeginFunc(ctx, f.pool, func(tx pgx.Tx) error {
		var locked bool
		if err := tx.QueryRow(ctx, `SELECT pg_try_advisory_xact_lock($1)`, f.lockKey()).Scan(&locked); err != nil {
			return err
		}
		if !locked {
			return nil // another replica is applying this consumer's events
		}
		var low int64
		if err := tx.QueryRow(ctx, `SELECT low_id FROM event_feed_consumers WHERE consumer = $1`, f.consumer).Scan(&low); err != nil {
			return err
		}
		rows, err := tx.Query(ctx, `
			SELECT e.id, e.tenant_id, e.device_id, d.key, e.kind, e.name, e.ts, e.received_at, e.payload
			FROM device_events e
			JOIN devices d ON d.id = e.device_id
			WHERE e.id > $1 AND e.kind = ANY($2)
			  AND NOT EXISTS (SELECT 1 FROM event_feed_seen s WHERE s.consumer = $3 AND s.event_id = e.id)
			ORDER BY e.id
			LIMIT $4`, low, f.kinds, f.consumer, f.Batch)
		if err != nil {
			return err
		}
		evs, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (DeviceEvent, error) {
			var ev DeviceEvent
			err := r.Scan(&ev.ID, &ev.TenantID, &ev.DeviceID, &ev.DeviceKey, &ev.Kind, &ev.Name, &ev.TS, &ev.ReceivedAt, &ev.Payload)
			return ev, err
		})
		if err != nil {
			return err
		}
		more = len(evs) == f.Batch
		for _, ev := range evs {
			if err := f.apply(ctx, tx, ev); err != nil {
				return err
			}
			applied++
		}
		// Advance the low watermark to just below the oldest event that may
		// still be followed by a late commit of a smaller id, and prune.
		if _, err := tx.Exec(ctx, `
			WITH settled AS (
				SELECT coalesce(max(id), $2) AS id FROM device_events
				WHERE id > $2 AND received_at < now() - make_interval(secs => $3)
			)
			UPDATE event_feed_consumers c SET low_id = GREATEST(c.low_id, (
				-- the highest settled id below which every feed-kind event is seen
				SELECT coalesce(min(e.id) - 1, (SELECT id FROM settled))
				FROM device_events e
				WHERE e.id > $2 AND e.id <= (SELECT id FROM settled) AND e.kind = ANY($4)
				  AND NOT EXISTS (SELECT 1 FROM event_feed_seen s WHERE s.consumer = $1 AND s.event_id = e.id)
			)), updated_at = now()
			WHERE c.consumer = $1`, f.consumer, low, f.Settle.Seconds(), f.kinds); err != nil {
			return fmt.Errorf("advance feed watermark: %w", err)
		}
		_, err = tx.Exec(ctx, `
			DELETE FROM event_feed_seen s USING event_feed_consumers c
			WHERE c.consumer = $1 AND s.consumer = $1 AND s.event_id <= c.low_id`, f.consumer)
		return err
	})
	return applied, more && err == nil, err
}

func (f *Feed) apply(ctx context.Context, tx pgx.Tx, ev DeviceEvent) error {
	sp, err := tx.Begin(ctx)
	if err != nil {
		return err
	}
	if _, err := sp.Exec(ctx, `SELECT set_config('nx.tenant_id', $1, true)`, ev.TenantID.String()); err != nil {
		return err
	}
	herr := f.handle(ctx, sp, ev)
	var refusal string
	if herr != nil {
		var ae *apps.Error
		if !errors.As(herr, &ae) || (ae.Code != apps.Invalid && ae.Code != apps.NotFound && ae.Code != apps.Conflict) {
			_ = sp.Rollback(ctx)
			return fmt.Errorf("consumer %s, event %d: %w", f.consumer, ev.ID, herr)
		}
		// Refused for good: undo its partial effect, keep the reason.
		if err := sp.Rollback(ctx); err != nil {
			return err
		}
		if sp, err = tx.Begin(ctx); err != nil {
			return err
		}
		if _, err := sp.Exec(ctx, `SELECT set_config('nx.tenant_id', $1, true)`, ev.TenantID.String()); err != nil {
			return err
		}
		refusal = herr.Error()
		f.log.Info("event refused", "consumer", f.consumer, "event", ev.ID, "tenant", ev.TenantID, "reason", refusal)
	}
	if _, err := sp.Exec(ctx, `
		INSERT INTO event_feed_seen (consumer, event_id, tenant_id, error) VALUES ($1, $2, $3, nullif($4, ''))`,
		f.consumer, ev.ID, ev.TenantID, refusal); err != nil {
		return err
	}
	return sp.Commit(ctx)
}
