// Package telemetry serves a tenant's devices and their telemetry: online
// state and latest values, raw series, bucketed series and dead letters. All
// reads run in tenants.InTx and go through the SQL functions of migration 0003,
// so they answer the same on TimescaleDB and on plain PostgreSQL.
package telemetry

import (
	"context"
	"errors"
	"log/slog"
	"strconv"
	"strings"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/redis/go-redis/v9"

	"github.com/nxcloud/nxcloud/ingest"
	"github.com/nxcloud/nxcloud/tenants"
)

// Devices is what the service needs of the tenant registry.
type Devices interface {
	Devices(ctx context.Context) ([]tenants.Device, error)
	Device(ctx context.Context, ref string) (tenants.Device, error)
	Models(ctx context.Context) ([]tenants.Model, error)
}

// Service answers telemetry queries.
type Service struct {
	pool    *pgxpool.Pool
	rdb     redis.UniversalClient
	devices Devices
	log     *slog.Logger
	// OnlineWindow: a device that sent a message within it counts as online
	// even when its connection is not known (e.g. after a Redis restart).
	OnlineWindow time.Duration
	now          func() time.Time
}

// NewService returns a Service reading from pool (the App pool, under RLS)
// and Redis (may be nil: then latest values come from the database).
func NewService(pool *pgxpool.Pool, rdb redis.UniversalClient, devices Devices, log *slog.Logger) *Service {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Service{pool: pool, rdb: rdb, devices: devices, log: log, OnlineWindow: 2 * time.Minute, now: time.Now}
}

// Value is a metric's latest reading.
type Value struct {
	Metric string    `json:"metric"`
	Unit   string    `json:"unit"`
	TS     time.Time `json:"ts"`
	Value  float64   `json:"value"`
}

// DeviceState is a device with its online state and latest values.
type DeviceState struct {
	tenants.Device
	Online   bool       `json:"online"`
	LastSeen *time.Time `json:"last_seen,omitempty"`
	Latest   []Value    `json:"latest"`
	// LatestSource says where Latest came from: "cache" (Redis) or "database".
	LatestSource string `json:"latest_source"`
}

func (s *Service) metricsByModel(ctx context.Context) (map[uuid.UUID][]tenants.Metric, error) {
	models, err := s.devices.Models(ctx)
	if err != nil {
		return nil, err
	}
	out := make(map[uuid.UUID][]tenants.Metric, len(models))
	for _, m := range models {
		out[m.ID] = m.Metrics
	}
	return out, nil
}

// States lists the tenant's devices with online state and latest values.
func (s *Service) States(ctx context.Context) ([]DeviceState, error) {
	devs, err := s.devices.Devices(ctx)
	if err != nil {
		return nil, err
	}
	return s.states(ctx, devs)
}

// State returns one device with its online state and latest values.
// Errors: not_found.
func (s *Service) State(ctx context.Context, ref string) (DeviceState, error) {
	d, err := s.devices.Device(ctx, ref)
	if err != nil {
		return DeviceState{}, err
	}
	out, err := s.states(ctx, []tenants.Device{d})
	if err != nil {
		return DeviceState{}, err
	}
	return out[0], nil
}

func (s *Service) states(ctx context.Context, devs []tenants.Device) ([]DeviceState, error) {
	tenant, _ := tenants.FromContext(ctx)
	metrics, err := s.metricsByModel(ctx)
	if err != nil {
		return nil, err
	}
	out := make([]DeviceState, len(devs))
	for i, d := range devs {
		out[i] = DeviceState{Device: d, Latest: []Value{}}
	}
	cached := false
	if s.rdb != nil {
		cached = s.fromCache(ctx, tenant, out, metrics)
	}
	if !cached {
		if err := s.fromDatabase(ctx, out, metrics); err != nil {
			return nil, err
		}
	}
	return out, nil
}

// fromCache fills states from Redis; it reports false when Redis is away, so
// the caller falls back to the database.
func (s *Service) fromCache(ctx context.Context, tenant uuid.UUID, out []DeviceState, metrics map[uuid.UUID][]tenants.Metric) bool {
	ctx, cancel := context.WithTimeout(ctx, 500*time.Millisecond)
	defer cancel()
	pipe := s.rdb.Pipeline()
	online := pipe.HGetAll(ctx, ingest.OnlineKey(tenant))
	seen := make([]*redis.FloatCmd, len(out))
	latest := make([]*redis.MapStringStringCmd, len(out))
	for i, d := range out {
		seen[i] = pipe.ZScore(ctx, ingest.SeenKey(tenant), d.ID.String())
		latest[i] = pipe.HGetAll(ctx, ingest.LatestKey(tenant, d.ID))
	}
	if _, err := pipe.Exec(ctx); err != nil && !errors.Is(err, redis.Nil) {
		s.log.Warn("telemetry: Redis unavailable, reading latest values from the database", "err", err)
		return false
	}
	now := s.now()
	conn := online.Val()
	for i := range out {
		d := &out[i]
		d.LatestSource = "cache"
		if ms, err := seen[i].Result(); err == nil {
			t := time.UnixMilli(int64(ms)).UTC()
			d.LastSeen = &t
		}
		_, connected := conn[d.ID.String()]
		d.Online = connected || (d.LastSeen != nil && now.Sub(*d.LastSeen) < s.OnlineWindow)
		vals := latest[i].Val()
		for _, m := range metrics[d.ModelID] {
			raw, ok := vals[strconv.Itoa(int(m.ID))]
			if !ok {
				continue
			}
			msStr, vStr, ok := strings.Cut(raw, ":")
			ms, err1 := strconv.ParseInt(msStr, 10, 64)
			v, err2 := strconv.ParseFloat(vStr, 64)
			if !ok || err1 != nil || err2 != nil {
				continue
			}
			d.Latest = append(d.Latest, Value{Metric: m.Key, Unit: m.Unit, TS: time.UnixMilli(ms).UTC(), Value: v})
		}
	}
	return true
}

// latestWithin bounds the database fallback's search for latest values.
const latestWithin = 7 * 24 * time.Hour

func (s *Service) fromDatabase(ctx context.Context, out []DeviceState, metrics map[uuid.UUID][]tenants.Metric) error {
	now := s.now()
	return tenants.InTx(ctx, s.pool, func(tx pgx.Tx) error {
		for i := range out {
			d := &out[i]
			d.LatestSource = "database"
			ms := metrics[d.ModelID]
			ids := make([]int32, len(ms))
			byID := make(map[int32]tenants.Metric, len(ms))
			for j, m := range ms {
				ids[j] = m.ID
				byID[m.ID] = m
			}
			rows, err := tx.Query(ctx, `SELECT metric_id, ts, value FROM telemetry_latest($1, $2, $3) ORDER BY metric_id`,
				d.ID, ids, latestWithin)
			if err != nil {
				return err
			}
			for rows.Next() {
				var id int32
				var v Value
				if err := rows.Scan(&id, &v.TS, &v.Value); err != nil {
					rows.Close()
					return err
				}
				m := byID[id]
				v.Metric, v.Unit, v.TS = m.Key, m.Unit, v.TS.UTC()
				d.Latest = append(d.Latest, v)
				if d.LastSeen == nil || v.TS.After(*d.LastSeen) {
					t := v.TS
					d.LastSeen = &t
				}
			}
			rows.Close()
			if err := rows.Err(); err != nil {
				return err
			}
			d.Online = d.LastSeen != nil && now.Sub(*d.LastSeen) < s.OnlineWindow
		}
		return nil
	})
}
