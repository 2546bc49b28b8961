package telemetry

import (
	"context"
	"encoding/base64"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/nxcloud/nxcloud/apps"
	"github.com/nxcloud/nxcloud/tenants"
)

// Point is one raw reading.
type Point struct {
	TS    time.Time `json:"ts"`
	Value float64   `json:"value"`
}

// RawQuery selects a raw series.
type RawQuery struct {
	Device string
	Metric string
	From   time.Time
	To     time.Time
	Limit  int
	Cursor string
}

// RawSeries is a page of one metric's raw points.
type RawSeries struct {
	Device     string    `json:"device"`
	Metric     string    `json:"metric"`
	Unit       string    `json:"unit"`
	From       time.Time `json:"from"`
	To         time.Time `json:"to"`
	Points     []Point   `json:"points"`
	NextCursor string    `json:"next_cursor,omitempty"`
}

// Query limits.
const (
	MaxRawLimit     = 10000
	DefaultRawLimit = 1000
	MaxBuckets      = 10000
)

func (s *Service) resolve(ctx context.Context, ref string, keys []string) (tenants.Device, []tenants.Metric, error) {
	d, err := s.devices.Device(ctx, ref)
	if err != nil {
		return d, nil, err
	}
	metrics, err := s.metricsByModel(ctx)
	if err != nil {
		return d, nil, err
	}
	all := metrics[d.ModelID]
	if len(keys) == 0 {
		return d, all, nil
	}
	var out []tenants.Metric
	for _, k := range keys {
		found := false
		for _, m := range all {
			if m.Key == k {
				out, found = append(out, m), true
				break
			}
		}
		if !found {
			return d, nil, apps.FieldError("metric", "device %s (model %s) has no metric %q", d.Key, d.ModelKey, k)
		}
	}
	return d, out, nil
}

func checkRange(from, to time.Time) error {
	if !from.Before(to) {
		return apps.FieldError("from", "from must be before to")
	}
	return nil
}

// Raw returns a page of a metric's raw points in [From, To), oldest first.
// Errors: invalid (unknown metric, bad range or cursor), not_found (device).
func (s *Service) Raw(ctx context.Context, q RawQuery) (RawSeries, error) {
	if q.Metric == "" {
		return RawSeries{}, apps.FieldError("metric", "metric is required")
	}
	if q.Limit <= 0 {
		q.Limit = DefaultRawLimit
	}
	if q.Limit > MaxRawLimit {
		return RawSeries{}, apps.FieldError("limit", "limit must be at most %d", MaxRawLimit)
	}
	if err := checkRange(q.From, q.To); err != nil {
		return RawSeries{}, err
	}
	// A cursor is the last point's time and how many points at exactly that
	// time were already returned: several points of a series may share a
	// timestamp, so "after the last time" would lose some.
	from, skip := q.From, 0
	if q.Cursor != "" {
		ts, n, err := decodeRawCursor(q.Cursor)
		if err != nil {
			return RawSeries{}, err
		}
		from, skip = ts, n
	}
	d, ms, err := s.resolve(ctx, q.Device, []string{q.Metric})
	if err != nil {
		return RawSeries{}, err
	}
	out := RawSeries{Device: d.Key, Metric: ms[0].Key, Unit: ms[0].Unit, From: q.From.UTC(), To: q.To.UTC(), Points: []Point{}}
	err = tenants.InTx(ctx, s.pool, func(tx pgx.Tx) error {
		rows, err := tx.Query(ctx, `SELECT ts, value FROM telemetry_raw($1, $2, $3, $4, $5)`, d.ID, ms[0].ID, from, q.To, q.Limit+skip+1)
		if err != nil {
			return err
		}
		out.Points, err = pgx.CollectRows(rows, func(r pgx.CollectableRow) (Point, error) {
			var p Point
			err := r.Scan(&p.TS, &p.Value)
			p.TS = p.TS.UTC()
			return p, err
		})
		return err
	})
	if err != nil {
		return RawSeries{}, err
	}
	if q.Cursor != "" {
		n := 0
		for n < skip && n < len(out.Points) && out.Points[n].TS.Equal(from) {
			n++
		}
		out.Points = out.Points[n:]
	}
	if len(out.Points) > q.Limit {
		out.Points = out.Points[:q.Limit]
		last := out.Points[q.Limit-1].TS
		same := 0
		for i := q.Limit - 1; i >= 0 && out.Points[i].TS.Equal(last); i-- {
			same++
		}
		if last.Equal(from) {
			same += skip
		}
		out.NextCursor = encodeCursor(last.UnixMicro()) + "." + strconv.Itoa(same)
	}
	return out, nil
}

func decodeRawCursor(c string) (time.Time, int, error) {
	tsPart, nPart, ok := strings.Cut(c, ".")
	n, err := strconv.Atoi(nPart)
	if !ok || err != nil || n < 1 || n > 1_000_000 {
		return time.Time{}, 0, apps.FieldError("cursor", "malformed cursor; pass next_cursor from the previous page unchanged")
	}
	us, err := decodeCursor(tsPart)
	if err != nil {
		return time.Time{}, 0, err
	}
	return time.UnixMicro(us).UTC(), n, nil
}

func encodeCursor(v int64) string {
	return base64.RawURLEncoding.EncodeToString([]byte(strconv.FormatInt(v, 10)))
}

func decodeCursor(c string) (int64, error) {
	b, err := base64.RawURLEncoding.DecodeString(c)
	if err == nil {
		if v, err := strconv.ParseInt(string(b), 10, 64); err == nil {
			return v, nil
		}
	}
	return 0, apps.FieldError("cursor", "malformed cursor; pass next_cursor from the previous page unchanged")
}

var reasonRE = regexp.MustCompile(`^[a-z_]{1,64}$`)

// Widths are the bucket widths the API offers.
var Widths = map[string]time.Duration{"1m": time.Minute, "1h": time.Hour, "1d": 24 * time.Hour}

// BucketQuery selects bucketed series of one device.
type BucketQuery struct {
	Device  string
	Metrics []string // empty: every metric of the device's model
	Width   string
	From    time.Time
	To      time.Time
}

// Bucket is one aggregated interval, starting at TS.
type Bucket struct {
	TS    time.Time `json:"ts"`
	Avg   float64   `json:"avg"`
	Min   float64   `json:"min"`
	Max   float64   `json:"max"`
	Count int64     `json:"count"`
	Last  float64   `json:"last"`
}

// BucketSeries is one metric's buckets.
type BucketSeries struct {
	Metric  string   `json:"metric"`
	Unit    string   `json:"unit"`
	Buckets []Bucket `json:"buckets"`
}

// Bucketed is the answer to a BucketQuery.
type Bucketed struct {
	Device string         `json:"device"`
	Width  string         `json:"width"`
	From   time.Time      `json:"from"`
	To     time.Time      `json:"to"`
	Series []BucketSeries `json:"series"`
}

// Buckets aggregates a device's metrics into buckets (avg, min, max, count,
// last) starting in [From, To); buckets without points are omitted. Errors:
// invalid (width, range, too many buckets, unknown metric), not_found.
func (s *Service) Buckets(ctx context.Context, q BucketQuery) (Bucketed, error) {
	w, ok := Widths[q.Width]
	if !ok {
		return Bucketed{}, apps.FieldError("width", "width must be 1m, 1h or 1d")
	}
	if err := checkRange(q.From, q.To); err != nil {
		return Bucketed{}, err
	}
	if n := q.To.Sub(q.From) / w; n > MaxBuckets {
		return Bucketed{}, apps.FieldError("to", "%d buckets of %s requested; at most %d: use a wider bucket or a shorter range", n, q.Width, MaxBuckets)
	}
	d, ms, err := s.resolve(ctx, q.Device, q.Metrics)
	if err != nil {
		return Bucketed{}, err
	}
	out := Bucketed{Device: d.Key, Width: q.Width, From: q.From.UTC(), To: q.To.UTC(), Series: make([]BucketSeries, len(ms))}
	ids := make([]int32, len(ms))
	index := map[int32]int{}
	for i, m := range ms {
		ids[i] = m.ID
		index[m.ID] = i
		out.Series[i] = BucketSeries{Metric: m.Key, Unit: m.Unit, Buckets: []Bucket{}}
	}
	err = tenants.InTx(ctx, s.pool, func(tx pgx.Tx) error {
		rows, err := tx.Query(ctx, `SELECT metric_id, bucket, avg, min, max, count, last
			FROM telemetry_buckets($1, $2, $3, $4, $5)`, q.Width, d.ID, ids, q.From, q.To)
		if err != nil {
			return err
		}
		defer rows.Close()
		for rows.Next() {
			var id int32
			var b Bucket
			if err := rows.Scan(&id, &b.TS, &b.Avg, &b.Min, &b.Max, &b.Count, &b.Last); err != nil {
				return err
			}
			b.TS = b.TS.UTC()
			i := index[id]
			out.Series[i].Buckets = append(out.Series[i].Buckets, b)
		}
		return rows.Err()
	})
	return out, err
}

// DeadLetter is a rejected part of a device message.
type DeadLetter struct {
	ID          int64     `json:"id"`
	Device      string    `json:"device"`
	ReceivedAt  time.Time `json:"received_at"`
	Topic       string    `json:"topic"`
	Reason      string    `json:"reason"`
	Detail      string    `json:"detail"`
	Payload     string    `json:"payload"`
	PayloadSize int       `json:"payload_size"`
}

// DeadLetterQuery selects dead letters, newest first.
type DeadLetterQuery struct {
	Device string
	Reason string
	Limit  int
	Cursor string
}

// DeadLetterPage is a page of dead letters.
type DeadLetterPage struct {
	Items      []DeadLetter `json:"items"`
	NextCursor string       `json:"next_cursor,omitempty"`
}

// DeadLetters lists the tenant's dead letters, newest first. Errors: invalid,
// not_found (device).
func (s *Service) DeadLetters(ctx context.Context, q DeadLetterQuery) (DeadLetterPage, error) {
	if q.Limit <= 0 {
		q.Limit = 100
	}
	if q.Limit > 1000 {
		return DeadLetterPage{}, apps.FieldError("limit", "limit must be at most 1000")
	}
	before := int64(1<<63 - 1)
	if q.Cursor != "" {
		c, err := decodeCursor(q.Cursor)
		if err != nil {
			return DeadLetterPage{}, err
		}
		before = c
	}
	if q.Reason != "" && !reasonRE.MatchString(q.Reason) {
		return DeadLetterPage{}, apps.FieldError("reason", "unknown reason %q (see docs/mqtt.md for the reason codes)", q.Reason)
	}
	var device *string
	if q.Device != "" {
		d, err := s.devices.Device(ctx, q.Device)
		if err != nil {
			return DeadLetterPage{}, err
		}
		id := d.ID.String()
		device = &id
	}
	page := DeadLetterPage{Items: []DeadLetter{}}
	err := tenants.InTx(ctx, s.pool, func(tx pgx.Tx) error {
		rows, err := tx.Query(ctx, `SELECT x.id, coalesce(d.key, ''), x.received_at, x.topic, x.reason, x.detail, x.payload, x.payload_size
			FROM dead_letters x LEFT JOIN devices d ON d.id = x.device_id
			WHERE x.id < $1 AND ($2::uuid IS NULL OR x.device_id = $2::uuid) AND ($3 = '' OR x.reason = $3)
			ORDER BY x.id DESC LIMIT $4`, before, device, q.Reason, q.Limit+1)
		if err != nil {
			return err
		}
		page.Items, err = pgx.CollectRows(rows, func(r pgx.CollectableRow) (DeadLetter, error) {
			var x DeadLetter
			err := r.Scan(&x.ID, &x.Device, &x.ReceivedAt, &x.Topic, &x.Reason, &x.Detail, &x.Payload, &x.PayloadSize)
			x.ReceivedAt = x.ReceivedAt.UTC()
			return x, err
		})
		return err
	})
	if err != nil {
		return DeadLetterPage{}, err
	}
	if len(page.Items) > q.Limit {
		page.Items = page.Items[:q.Limit]
		page.NextCursor = encodeCursor(page.Items[q.Limit-1].ID)
	}
	return page, nil
}
