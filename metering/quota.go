package metering

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/google/uuid"
	"github.com/redis/go-redis/v9"

	"github.com/nxcloud/nxcloud/apps"
	"github.com/nxcloud/nxcloud/tenants"
)

type quotaEntry struct {
	at     time.Time
	period time.Time
	plan   string
	quotas []Quota
}

type alert struct {
	tenant        uuid.UUID
	meter         string
	period        time.Time
	level         int
	limit, amount int64
	hard          bool
}

// quotasOf returns the quotas of tenant's plan this month, cached for
// QuotaCacheTTL.
func (s *Service) quotasOf(ctx context.Context, tenant uuid.UUID) (quotaEntry, error) {
	now := s.now()
	period := monthStart(now)
	s.qmu.Lock()
	e, ok := s.quotas[tenant]
	s.qmu.Unlock()
	if ok && now.Sub(e.at) < s.cfg.QuotaCacheTTL && e.period.Equal(period) {
		return e, nil
	}
	plan, _, _, has, err := s.planFor(ctx, s.sys, tenant, period)
	if err != nil {
		return e, err
	}
	e = quotaEntry{at: now, period: period}
	if has {
		e.plan, e.quotas = plan.Code, plan.Definition.Quotas
	}
	s.qmu.Lock()
	s.quotas[tenant] = e
	s.qmu.Unlock()
	return e, nil
}

func hotKey(tenant uuid.UUID, meter string, period time.Time) string {
	return "nxm:" + tenant.String() + ":" + meter + ":" + periodName(period)
}

// incrIfPresent adds to a hot counter only if it exists, so a counter lost
// with Redis is never restarted from zero.
var incrIfPresent = redis.NewScript(`
if redis.call('EXISTS', KEYS[1]) == 0 then return false end
return redis.call('INCRBY', KEYS[1], ARGV[1])`)

// ledgerUsage is a counted meter's usage this period, from the ledger.
func (s *Service) ledgerUsage(ctx context.Context, tenant uuid.UUID, meter string, period time.Time) (int64, error) {
	var n int64
	end := period.AddDate(0, 1, 0)
	var err error
	if col, ok := map[string]string{MeterPoints: "stored", MeterRejected: "rejected", MeterEvents: "events"}[meter]; ok {
		err = s.sys.QueryRow(ctx, `SELECT coalesce(sum(`+col+`), 0)::bigint FROM `+telemetryFlat+` t WHERE tenant_id = $1 AND hour >= $2 AND hour < $3`,
			tenant, period, end).Scan(&n)
	} else {
		err = s.sys.QueryRow(ctx, `SELECT coalesce(sum(quantity), 0)::bigint FROM usage_events WHERE tenant_id = $1 AND meter = $2 AND occurred_at >= $3 AND occurred_at < $4`,
			tenant, meter, period, end).Scan(&n)
	}
	return n, err
}

// hotAdd adds n to the hot counter and returns the new value, rebuilding the
// counter from the ledger when Redis lost it.
func (s *Service) hotAdd(ctx context.Context, key string, tenant uuid.UUID, meter string, period time.Time, n int64) (int64, error) {
	v, err := incrIfPresent.Run(ctx, s.rdb, []string{key}, n).Int64()
	if errors.Is(err, redis.Nil) {
		s.met.rebuilds.Inc()
		used, lerr := s.ledgerUsage(ctx, tenant, meter, period)
		if lerr != nil {
			return 0, lerr
		}
		if err := s.rdb.SetNX(ctx, key, used, 40*24*time.Hour).Err(); err != nil {
			return 0, err
		}
		return s.rdb.IncrBy(ctx, key, n).Result()
	}
	return v, err
}

// admit charges n units of meter against tenant's quota: nil when admitted
// (no quota, a soft one, room left, or Redis unreachable: fail open),
// quota_exceeded when a hard quota would be passed.
func (s *Service) admit(ctx context.Context, tenant uuid.UUID, meter string, n int64, what string) (time.Duration, error) {
	e, err := s.quotasOf(ctx, tenant)
	if err != nil {
		s.failOpen(meter, err)
		return 0, nil
	}
	var q *Quota
	for i := range e.quotas {
		if e.quotas[i].Meter == meter {
			q = &e.quotas[i]
		}
	}
	if q == nil {
		return 0, nil
	}
	key := hotKey(tenant, meter, e.period)
	v, err := s.hotAdd(ctx, key, tenant, meter, e.period, n)
	if err != nil {
		s.failOpen(meter, err)
		return 0, nil
	}
	s.thresholds(tenant, meter, e.period, *q, v-n, v)
	if q.Hard && v > q.Limit {
		_ = s.rdb.DecrBy(ctx, key, n).Err()
		s.met.quotaRefused.WithLabelValues(meter).Inc()
		reset := e.period.AddDate(0, 1, 0)
		return time.Until(reset), apps.Errorf(apps.QuotaExceeded,
			"%s quota reached: plan %s allows %d %s a month and %d are used; %s refused until %s (the enterprise's owner can change plan)",
			meter, e.plan, q.Limit, strings.TrimPrefix(meter, "telemetry."), v-n, what, reset.Format(time.RFC3339))
	}
	return 0, nil
}

func (s *Service) thresholds(tenant uuid.UUID, meter string, period time.Time, q Quota, before, after int64) {
	for _, level := range []int{80, 100} {
		th := (q.Limit*int64(level) + 99) / 100
		if before < th && after >= th {
			s.raise(alert{tenant: tenant, meter: meter, period: period, level: level, limit: q.Limit, amount: after, hard: q.Hard})
		}
	}
}

// raise stores a quota warning once per (tenant, meter, month, level); a
// failed store is tried again at the next crossing or reconcile.
func (s *Service) raise(a alert) {
	k := fmt.Sprintf("%s|%s|%s|%d", a.tenant, a.meter, periodName(a.period), a.level)
	s.qmu.Lock()
	seen := s.warned[k]
	s.warned[k] = true
	s.qmu.Unlock()
	if seen {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := s.storeAlert(ctx, a); err != nil {
		s.log.Warn("metering: quota warning not stored (raised again at the next reconcile)", "err", err)
		s.qmu.Lock()
		delete(s.warned, k)
		s.qmu.Unlock()
	}
}

func (s *Service) failOpen(check string, err error) {
	s.met.failOpen.WithLabelValues(check).Inc()
	if last := s.failLog.Load(); time.Now().UnixNano()-last > int64(10*time.Second) && s.failLog.CompareAndSwap(last, time.Now().UnixNano()) {
		s.log.Warn("metering: quota check failed open (admitted without a hot counter)", "check", check, "err", err)
	}
}

// AdmitAPI charges one API call against tenant's api.calls quota. Errors:
// quota_exceeded with how long until the quota resets (Retry-After).
func (s *Service) AdmitAPI(ctx context.Context, tenant uuid.UUID) (time.Duration, error) {
	return s.admit(ctx, tenant, MeterAPICalls, 1, "API calls are")
}

// AdmitPublish charges points telemetry points against tenant's quota
// before a publish is accepted. It never blocks on a Redis outage (fail
// open, counted in nxcloud_metering_quota_fail_open_total). Errors:
// quota_exceeded (the broker refuses the publish).
func (s *Service) AdmitPublish(ctx context.Context, tenant uuid.UUID, points int) error {
	_, err := s.admit(ctx, tenant, MeterPoints, int64(points), "publishes are")
	return err
}

// AdmitConnect refuses a device connection while the tenant's hard
// telemetry quota is used up (the device could only publish refused
// points). Errors: quota_exceeded.
func (s *Service) AdmitConnect(ctx context.Context, tenant uuid.UUID) error {
	_, err := s.admit(ctx, tenant, MeterPoints, 0, "connections are")
	if err != nil {
		return err
	}
	e, _ := s.quotasOf(ctx, tenant)
	for _, q := range e.quotas {
		if q.Meter == MeterPoints && q.Hard {
			v, err := s.rdb.Get(ctx, hotKey(tenant, MeterPoints, e.period)).Int64()
			if err != nil {
				if !errors.Is(err, redis.Nil) {
					s.failOpen("connect", err)
				}
				return nil
			}
			if v >= q.Limit {
				s.met.quotaRefused.WithLabelValues("connect").Inc()
				return apps.Errorf(apps.QuotaExceeded, "telemetry quota reached: plan %s allows %d points a month and all are used; connections are refused until %s (the enterprise's owner can change plan)",
					e.plan, q.Limit, e.period.AddDate(0, 1, 0).Format(time.RFC3339))
			}
		}
	}
	return nil
}

// Reconcile resets the hot counters of the tenants this process has seen
// to their usage in the ledger (the truth; hot counters only estimate
// between reconciles) and raises the warnings the ledger has reached.
func (s *Service) Reconcile(ctx context.Context) error {
	s.qmu.Lock()
	ids := make([]uuid.UUID, 0, len(s.quotas))
	for id := range s.quotas {
		ids = append(ids, id)
	}
	s.qmu.Unlock()
	for _, id := range ids {
		e, err := s.quotasOf(ctx, id)
		if err != nil {
			return err
		}
		for _, q := range e.quotas {
			used, err := s.ledgerUsage(ctx, id, q.Meter, e.period)
			if err != nil {
				return err
			}
			s.thresholds(id, q.Meter, e.period, q, 0, used)
			if err := s.rdb.Set(ctx, hotKey(id, q.Meter, e.period), used, 40*24*time.Hour).Err(); err != nil {
				s.failOpen("reconcile", err)
			}
		}
	}
	return nil
}

func (s *Service) storeAlert(ctx context.Context, a alert) error {
	_, err := s.sys.Exec(ctx, `
		INSERT INTO usage_alerts (tenant_id, meter, period, level, quota_limit, hard, quantity)
		VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (tenant_id, meter, period, level) DO NOTHING`,
		a.tenant, a.meter, a.period, a.level, a.limit, a.hard, a.amount)
	return err
}

// Alert is a quota warning the tenant sees.
type Alert struct {
	ID        int64     `json:"id"`
	Meter     string    `json:"meter"`
	Period    string    `json:"period"`
	Level     int       `json:"level"`
	Limit     int64     `json:"limit"`
	Hard      bool      `json:"hard"`
	Quantity  int64     `json:"quantity"`
	CreatedAt time.Time `json:"created_at"`
	Message   string    `json:"message"`
}

// Alerts lists tenant's quota warnings, latest first.
func (s *Service) Alerts(ctx context.Context, q tenants.Querier, tenant uuid.UUID) ([]Alert, error) {
	rows, err := q.Query(ctx, `SELECT id, meter, period, level, quota_limit, hard, quantity, created_at
		FROM usage_alerts WHERE tenant_id = $1 ORDER BY id DESC LIMIT 500`, tenant)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	out := []Alert{}
	for rows.Next() {
		var a Alert
		var p time.Time
		if err := rows.Scan(&a.ID, &a.Meter, &p, &a.Level, &a.Limit, &a.Hard, &a.Quantity, &a.CreatedAt); err != nil {
			return nil, err
		}
		a.Period = periodName(p)
		kind := "soft: a warning only"
		if a.Hard {
			kind = "hard: refused beyond it"
		}
		a.Message = fmt.Sprintf("%s reached %d %% of its monthly quota of %d in %s (%s)", a.Meter, a.Level, a.Limit, a.Period, kind)
		out = append(out, a)
	}
	return out, rows.Err()
}

// QuotaState is a quota with this month's usage from the ledger.
type QuotaState struct {
	Quota
	Period string `json:"period"`
	Used   int64  `json:"used"`
}

// QuotaStates returns tenant's quotas this month with their usage.
func (s *Service) QuotaStates(ctx context.Context, tenant uuid.UUID) ([]QuotaState, error) {
	e, err := s.quotasOf(ctx, tenant)
	if err != nil {
		return nil, err
	}
	out := []QuotaState{}
	for _, q := range e.quotas {
		used, err := s.ledgerUsage(ctx, tenant, q.Meter, e.period)
		if err != nil {
			return nil, err
		}
		out = append(out, QuotaState{Quota: q, Period: periodName(e.period), Used: used})
	}
	return out, nil
}

// TelemetryTotals returns all the telemetry points tenant was metered for,
// stored and rejected, over all time (the chaos check compares them with the
// rows stored).
func (s *Service) TelemetryTotals(ctx context.Context, tenant uuid.UUID) (stored, rejected int64, err error) {
	err = s.sys.QueryRow(ctx, `SELECT coalesce(sum(stored), 0)::bigint, coalesce(sum(rejected), 0)::bigint FROM `+telemetryFlat+` t WHERE tenant_id = $1`,
		tenant).Scan(&stored, &rejected)
	return stored, rejected, err
}
