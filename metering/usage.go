package metering

import (
	"context"
	"math/big"
	"sort"
	"strings"
	"time"

	"github.com/google/uuid"

	"github.com/nxcloud/nxcloud/apps"
	"github.com/nxcloud/nxcloud/tenants"
)

// cell is the ledger summed per (meter, subject, UTC day).
type cell struct {
	Meter, Subject string
	Day            time.Time
	Qty            int64
}

// ledgerSQL is the one place that reads the ledger: keyed usage rows and
// telemetry rows, folded and per batch (unpivoted into their three meters), filtered by the same
// condition (a constant of this file, never built from input), summed per
// meter, subject and day.
func ledgerSQL(where string) string {
	w := strings.NewReplacer("{time}", "occurred_at").Replace(where)
	wt := strings.NewReplacer("{time}", "t.hour", "invoice_id", "t.invoice_id").Replace(where)
	// Batch rows are never billed yet: their invoice_id is NULL.
	wb := strings.NewReplacer("{time}", "b.hour", "invoice_id", "NULL::uuid").Replace(where)
	return `
	SELECT meter, subject, day, sum(q)::bigint FROM (
		SELECT meter, subject, (occurred_at AT TIME ZONE 'UTC')::date AS day, quantity AS q
		FROM usage_events WHERE tenant_id = $1 AND ` + w + `
		UNION ALL
		SELECT m.meter, t.device_id::text, (t.hour AT TIME ZONE 'UTC')::date, m.q
		FROM usage_telemetry t
		CROSS JOIN LATERAL (VALUES ('telemetry.points', t.stored), ('telemetry.rejected', t.rejected),
			('telemetry.events', t.events)) AS m(meter, q)
		WHERE t.tenant_id = $1 AND m.q <> 0 AND ` + wt + `
		UNION ALL
		SELECT m.meter, u.d::text, (b.hour AT TIME ZONE 'UTC')::date, m.q
		FROM usage_telemetry_batches b
		CROSS JOIN LATERAL unnest(b.devices, b.stored, b.rejected, b.events) AS u(d, s, r, e)
		CROSS JOIN LATERAL (VALUES ('telemetry.points', u.s), ('telemetry.rejected', u.r),
			('telemetry.events', u.e)) AS m(meter, q)
		WHERE b.tenant_id = $1 AND m.q <> 0 AND ` + wb + `
	) l GROUP BY 1, 2, 3`
}

// Ledger selections.
const (
	selRange    = `{time} >= $2 AND {time} < $3`
	selUnbilled = `invoice_id IS NULL AND {time} < $2`
	selInvoice  = `invoice_id = $2`
	// selPrior: rows of the month [$2, $3) billed by an invoice of the
	// tenant closed before $4.
	selPrior = `{time} >= $2 AND {time} < $3 AND invoice_id IN (SELECT id FROM invoices WHERE tenant_id = $1 AND closed_at < $4)`
)

func (s *Service) cells(ctx context.Context, q tenants.Querier, tenant uuid.UUID, where string, args ...any) ([]cell, error) {
	rows, err := q.Query(ctx, ledgerSQL(where), append([]any{tenant}, args...)...)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []cell
	for rows.Next() {
		var c cell
		if err := rows.Scan(&c.Meter, &c.Subject, &c.Day, &c.Qty); err != nil {
			return nil, err
		}
		c.Day = c.Day.UTC()
		out = append(out, c)
	}
	return out, rows.Err()
}

// aggregate is a meter's quantity over a month's cells: the sum for counted
// meters; for gauges the daily totals' maximum, or their sum over the days of
// the month (a month-average: bytes stored 30 days × N / 30), rounded half up.
func aggregate(meter string, month time.Time, cs []cell, match func(cell) bool) int64 {
	daily := map[time.Time]int64{}
	var sum int64
	for _, c := range cs {
		if c.Meter != meter || !match(c) {
			continue
		}
		sum += c.Qty
		daily[c.Day] += c.Qty
	}
	switch gauge(meter) {
	case "max":
		var m int64
		for _, v := range daily {
			m = max(m, v)
		}
		return m
	case "avg":
		days := int64(month.AddDate(0, 1, 0).Sub(month).Hours() / 24)
		return roundDiv(big.NewInt(sum), big.NewInt(days))
	}
	return sum
}

// UsageItem is one row of a usage report.
type UsageItem struct {
	Meter     string     `json:"meter"`
	Day       string     `json:"day,omitempty"`
	Device    *uuid.UUID `json:"device,omitempty"`
	DeviceKey string     `json:"device_key,omitempty"`
	App       string     `json:"app,omitempty"`
	Subject   string     `json:"subject,omitempty"`
	Quantity  int64      `json:"quantity"`
}

// UsageReport is usage over [From, To) grouped one way.
type UsageReport struct {
	From  time.Time   `json:"from"`
	To    time.Time   `json:"to"`
	Group string      `json:"group"`
	Items []UsageItem `json:"items"`
}

// Usage groupings.
var groups = []string{"meter", "day", "device", "app", "subject"}

// Usage reports tenant's usage over [from, to) grouped by meter, day,
// device (telemetry meters), app (app uses) or subject, optionally of one
// meter. Gauges (storage, active devices) grouped by meter aggregate as on
// an invoice only over a whole month; otherwise their daily values are
// summed, so read them by day. Errors: invalid (group, meter, range).
func (s *Service) Usage(ctx context.Context, q tenants.Querier, tenant uuid.UUID, from, to time.Time, group, meter string) (UsageReport, error) {
	if group == "" {
		group = "meter"
	}
	if !contains(groups, group) {
		return UsageReport{}, apps.FieldError("group", "want one of %s", strings.Join(groups, ", "))
	}
	if meter != "" && !validMeter(meter) {
		return UsageReport{}, apps.FieldError("meter", "unknown meter (want one of %s)", strings.Join(Meters, ", "))
	}
	if to.Year() > 9999 || from.Year() < 1 {
		return UsageReport{}, apps.FieldError("to", "from and to must lie between years 0001 and 9999")
	}
	if !to.After(from) || to.Sub(from) > 400*24*time.Hour {
		return UsageReport{}, apps.FieldError("to", "to must be after from, at most 400 days later")
	}
	cs, err := s.cells(ctx, q, tenant, selRange, from, to)
	if err != nil {
		return UsageReport{}, err
	}
	type key struct{ meter, day, sub string }
	sums := map[key]int64{}
	for _, c := range cs {
		if meter != "" && c.Meter != meter {
			continue
		}
		k := key{meter: c.Meter}
		switch group {
		case "day":
			k.day = c.Day.Format(time.DateOnly)
		case "device":
			if !strings.HasPrefix(c.Meter, "telemetry.") {
				continue
			}
			k.sub = c.Subject
		case "app":
			if c.Meter != MeterAppUses {
				continue
			}
			k.sub, _, _ = strings.Cut(c.Subject, ".")
		case "subject":
			k.sub = c.Subject
		}
		sums[k] += c.Qty
	}
	// Gauges over a whole month read as on the invoice.
	if group == "meter" && from.Equal(monthStart(from)) && to.Equal(monthStart(from).AddDate(0, 1, 0)) {
		for _, m := range []string{MeterStorage, MeterActiveDevices} {
			if _, ok := sums[key{meter: m}]; ok {
				sums[key{meter: m}] = aggregate(m, from, cs, func(cell) bool { return true })
			}
		}
	}
	rep := UsageReport{From: from, To: to, Group: group, Items: []UsageItem{}}
	keys := map[uuid.UUID]string{}
	if group == "device" {
		rows, err := q.Query(ctx, `SELECT id, key FROM devices WHERE tenant_id = $1`, tenant)
		if err != nil {
			return rep, err
		}
		for rows.Next() {
			var id uuid.UUID
			var k string
			if err := rows.Scan(&id, &k); err != nil {
				rows.Close()
				return rep, err
			}
			keys[id] = k
		}
		rows.Close()
		if err := rows.Err(); err != nil {
			return rep, err
		}
	}
	for k, v := range sums {
		it := UsageItem{Meter: k.meter, Day: k.day, Quantity: v}
		switch group {
		case "device":
			if id, err := uuid.Parse(k.sub); err == nil {
				it.Device, it.DeviceKey = &id, keys[id]
			}
		case "app":
			it.App = k.sub
		case "subject":
			it.Subject = k.sub
		}
		rep.Items = append(rep.Items, it)
	}
	sort.Slice(rep.Items, func(i, j int) bool {
		a, b := rep.Items[i], rep.Items[j]
		if a.Meter != b.Meter {
			return a.Meter < b.Meter
		}
		if a.Day != b.Day {
			return a.Day < b.Day
		}
		return a.App+a.DeviceKey+a.Subject < b.App+b.DeviceKey+b.Subject
	})
	return rep, nil
}

func contains(xs []string, x string) bool {
	for _, y := range xs {
		if y == x {
			return true
		}
	}
	return false
}
