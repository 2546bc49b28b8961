package metering

import (
	"context"
	"math/big"
	"time"

	"github.com/google/uuid"

	"github.com/nxcloud/nxcloud/apps"
	"github.com/nxcloud/nxcloud/tenants"
)

// KPIs a pay-by-effect plan can be priced on: ratios where lower is better.
const (
	// KPIDowngradeRate is the quantity downgraded (downgrades recorded or
	// approved) over the quantity of finished lots, in the month: the rate
	// the downgrade app shows the firm.
	KPIDowngradeRate = "downgrade_rate"
	// KPIDefectRate is the share of the lots inspected in the month (quality
	// app's inspection results) that have a nonconformance: defect ppm / 10^6
	// at lot level, as the quality app shows it.
	KPIDefectRate = "defect_rate"
	// KPIRejectRatio is telemetry points rejected over points received
	// (stored + rejected), from the ledger the usage API shows.
	KPIRejectRatio = "telemetry_reject_ratio"
)

// KPIProvider computes one KPI of a tenant over [from, to) from the data
// the firm sees, as an exact ratio; nil when there is no data.
type KPIProvider interface {
	KPI(ctx context.Context, q tenants.Querier, tenant uuid.UUID, from, to time.Time) (*big.Rat, error)
}

// KPI computes a named KPI. Errors: invalid (unknown KPI).
func (s *Service) KPI(ctx context.Context, q tenants.Querier, tenant uuid.UUID, name string, from, to time.Time) (*big.Rat, error) {
	p, ok := s.kpis[name]
	if !ok {
		return nil, apps.FieldError("kpi", "unknown KPI %q", clipText(name))
	}
	return p.KPI(ctx, q, tenant, from, to)
}

// ratio returns num/den exactly (numeric text from PostgreSQL), nil when den
// is zero.
func ratio(num, den string) *big.Rat {
	n, ok1 := new(big.Rat).SetString(num)
	d, ok2 := new(big.Rat).SetString(den)
	if !ok1 || !ok2 || d.Sign() == 0 {
		return nil
	}
	return n.Quo(n, d)
}

type rejectRatio struct{ s *Service }

func (r rejectRatio) KPI(ctx context.Context, q tenants.Querier, tenant uuid.UUID, from, to time.Time) (*big.Rat, error) {
	var num, den string
	err := q.QueryRow(ctx, `
		SELECT coalesce(sum(rejected), 0)::text, coalesce(sum(stored + rejected), 0)::text
		FROM `+telemetryFlat+` t WHERE tenant_id = $1 AND hour >= $2 AND hour < $3`, tenant, from, to).Scan(&num, &den)
	if err != nil {
		return nil, err
	}
	return ratio(num, den), nil
}

type downgradeRate struct{ s *Service }

func (r downgradeRate) KPI(ctx context.Context, q tenants.Querier, tenant uuid.UUID, from, to time.Time) (*big.Rat, error) {
	var exists bool
	if err := q.QueryRow(ctx, `SELECT to_regclass('downgrades') IS NOT NULL`).Scan(&exists); err != nil {
		return nil, err
	}
	if !exists {
		return nil, nil // the downgrade app's tables are not migrated yet: no data
	}
	var num, den string
	err := q.QueryRow(ctx, `
		SELECT
			(SELECT coalesce(sum(quantity), 0) FROM downgrades
			 WHERE tenant_id = $1 AND status IN ('recorded', 'approved') AND created_at >= $2 AND created_at < $3)::text,
			(SELECT coalesce(sum(quantity), 0) FROM lots
			 WHERE tenant_id = $1 AND kind = 'finished' AND ended_at >= $2 AND ended_at < $3)::text`,
		tenant, from, to).Scan(&num, &den)
	if err != nil {
		return nil, err
	}
	return ratio(num, den), nil
}

type defectRate struct{ s *Service }

func (r defectRate) KPI(ctx context.Context, q tenants.Querier, tenant uuid.UUID, from, to time.Time) (*big.Rat, error) {
	var exists bool
	if err := q.QueryRow(ctx, `SELECT to_regclass('inspection_results') IS NOT NULL AND to_regclass('nonconformances') IS NOT NULL`).Scan(&exists); err != nil {
		return nil, err
	}
	if !exists {
		return nil, nil // the quality app's tables are not migrated: no data
	}
	var num, den string
	err := q.QueryRow(ctx, `
		WITH inspected AS (
			SELECT DISTINCT lot_id FROM inspection_results
			WHERE tenant_id = $1 AND measured_at >= $2 AND measured_at < $3
		)
		SELECT (SELECT count(*) FROM inspected i
		        WHERE EXISTS (SELECT 1 FROM nonconformances n WHERE n.tenant_id = $1 AND n.lot_id = i.lot_id))::text,
		       (SELECT count(*) FROM inspected)::text`, tenant, from, to).Scan(&num, &den)
	if err != nil {
		return nil, err
	}
	return ratio(num, den), nil
}
