package main

import (
	"context"
	"sync"
	"sync/atomic"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"
	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"

	"github.com/nxcloud/nxcloud/ingest"
)

// floodLoop publishes arrays of n points as fast as the broker acknowledges,
// with up to 16 messages in flight.
func floodLoop(ctx context.Context, c mqtt.Client, topic string, keys []benchMetric, n int, acked, failed *atomic.Int64) {
	inflight := make(chan struct{}, 16)
	var wg sync.WaitGroup
	defer wg.Wait()
	cursor := time.Now().Add(-6 * time.Hour).Truncate(time.Millisecond)
	for ctx.Err() == nil {
		per := max(1, n/len(keys))
		buf := make([]byte, 0, n*40)
		buf = append(buf, '[')
		for j := 0; j < per; j++ {
			if j > 0 {
				buf = append(buf, ',')
			}
			// Every reading of this connection has its own millisecond, so
			// none is a duplicate of another (the store keeps one row per
			// device, metric and ts).
			cursor = cursor.Add(time.Millisecond)
			buf = appendReading(buf, cursor, keys, func(benchMetric) float64 { return float64(j%100) / 100 })
		}
		buf = append(buf, ']')
		select {
		case inflight <- struct{}{}:
		case <-ctx.Done():
			return
		}
		tok := c.Publish(topic, 1, false, buf)
		wg.Add(1)
		go func() {
			defer func() { <-inflight; wg.Done() }()
			if tok.WaitTimeout(time.Minute) && tok.Error() == nil {
				acked.Add(1)
			} else {
				failed.Add(1)
			}
		}()
	}
}

// rawCopyLimit measures CopyFrom of telemetry rows shaped like ingest's (the
// same devices, metrics and interleaving as the phase it is compared with),
// with conns connections in batches of batch rows, for d.
func rawCopyLimit(ctx context.Context, p *benchTarget, tenant uuid.UUID, keys []string, metrics, perMessage, conns, batch int, d time.Duration) (float64, error) {
	var ids []int32
	rows, err := p.sys.Query(ctx, `SELECT id FROM metrics WHERE tenant_id = $1 ORDER BY id LIMIT $2`, tenant, metrics)
	if err != nil {
		return 0, err
	}
	ids, err = pgx.CollectRows(rows, pgx.RowTo[int32])
	if err != nil {
		return 0, err
	}
	var devs []uuid.UUID
	rows, err = p.sys.Query(ctx, `SELECT id FROM devices WHERE tenant_id = $1 AND key = ANY($2) ORDER BY key`, tenant, keys)
	if err != nil {
		return 0, err
	}
	if devs, err = pgx.CollectRows(rows, pgx.RowTo[uuid.UUID]); err != nil {
		return 0, err
	}
	// Rows are built before the clock starts, grouped per message as ingest
	// queues them, and written by ingest's own COPY code: what is timed is
	// COPY itself, the limit ingest is compared against.
	const batches = 8
	work := make([][]ingest.Item, conns*batches)
	base := time.Now().Add(-time.Hour)
	k := 0
	for b := range work {
		var items []ingest.Item
		for n := 0; n < batch; n += perMessage {
			it := ingest.Item{Tenant: tenant, Device: devs[(k/perMessage)%len(devs)]}
			for j := 0; j < perMessage; j++ {
				it.Points = append(it.Points, ingest.Point{TS: base.Add(time.Duration(k) * time.Microsecond), MetricID: ids[j%len(ids)], Value: float64(k % 1000)})
				k++
			}
			items = append(items, it)
		}
		work[b] = items
	}
	span := time.Duration(k) * time.Microsecond
	var written atomic.Int64
	deadline := time.Now().Add(d)
	var wg sync.WaitGroup
	errs := make(chan error, conns)
	start := time.Now()
	for w := 0; w < conns; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for n := 0; time.Now().Before(deadline); n++ {
				if n > 0 && n%batches == 0 {
					// The table's key is unique: each round moves this
					// writer's rows past every row written so far.
					for b := 0; b < batches; b++ {
						for _, it := range work[(w*batches+b)%len(work)] {
							for j := range it.Points {
								it.Points[j].TS = it.Points[j].TS.Add(span)
							}
						}
					}
				}
				items := work[(w*batches+n%batches)%len(work)]
				err := pgx.BeginFunc(ctx, p.sys, func(tx pgx.Tx) error {
					_, _, err := ingest.CopyItems(ctx, tx, items)
					return err
				})
				if err != nil {
					errs <- err
					return
				}
				written.Add(int64(len(items) * perMessage))
			}
		}()
	}
	wg.Wait()
	close(errs)
	if err := <-errs; err != nil {
		return 0, err
	}
	return float64(written.Load()) / time.Since(start).Seconds(), nil
}
