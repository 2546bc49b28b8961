package metering

import (
	"context"
	"math/big"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/nxcloud/nxcloud/tenants"
	"github.com/nxcloud/nxcloud/tenants/tenanttest"
)

// The downgrade rate is computed inside the tenant from the downgrade app's
// records: quantity downgraded (recorded or approved) over the quantity of
// finished lots of the month; proposals and rejections do not count.
func TestDowngradeRateKPI(t *testing.T) {
	t.Parallel()
	env := tenanttest.New(t)
	s := newService(t, env)
	tn := env.NewTenant(t)
	other := env.NewTenant(t)
	ctx := context.Background()
	month := monthStart(time.Now())
	seed := func(tn tenanttest.Tenant, lots []float64, downgrades map[string]float64) {
		t.Helper()
		var grade, reason string
		if err := env.DB.System.QueryRow(ctx, `SELECT (SELECT code FROM grades WHERE tenant_id = $1 ORDER BY code LIMIT 1),
			(SELECT code FROM defect_codes WHERE tenant_id = $1 ORDER BY code LIMIT 1)`, tn.ID).Scan(&grade, &reason); err != nil {
			t.Fatal(err)
		}
		for i, q := range lots {
			var lot string
			if err := env.DB.System.QueryRow(ctx, `INSERT INTO lots (tenant_id, code, kind, grade_code, quantity, status, started_at, ended_at)
				VALUES ($1, $2, 'finished', $3, $4, 'done', $5, $5) RETURNING id`,
				tn.ID, "L-"+string(rune('A'+i)), grade, q, month.Add(time.Hour)).Scan(&lot); err != nil {
				t.Fatal(err)
			}
			if i == 0 {
				for status, dq := range downgrades {
					if _, err := env.DB.System.Exec(ctx, `INSERT INTO downgrades (tenant_id, lot_id, intended_grade, quantity, reason_code, disposition, status, created_at)
						VALUES ($1, $2, $3, $4, $5, 'sell_lower', $6, $7)`, tn.ID, lot, grade, dq, reason, status, month.Add(2*time.Hour)); err != nil {
						t.Fatal(err)
					}
				}
			}
		}
	}
	seed(tn, []float64{600, 400}, map[string]float64{"recorded": 50, "approved": 32, "proposed": 100, "rejected": 7})
	seed(other, []float64{100}, map[string]float64{"recorded": 90})
	var got *big.Rat
	err := tenants.InTx(tn.Ctx(), env.DB.App, func(tx pgx.Tx) (err error) {
		got, err = s.KPI(tn.Ctx(), tx, tn.ID, KPIDowngradeRate, month, month.AddDate(0, 1, 0))
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	if want := big.NewRat(82, 1000); got == nil || got.Cmp(want) != 0 {
		t.Errorf("downgrade rate = %v, want 82/1000", got)
	}
	// Against an agreed 10 %: 1.8 points × 1000.00 × 20 % = 360.00.
	e := Effect{KPI: KPIDowngradeRate, SharePct: 20, CentsPerPoint: 100000, CapCents: 1000000}
	if fee := e.EffectFee(big.NewRat(1, 10), got); fee != 36000 {
		t.Errorf("effect fee = %d, want 36000", fee)
	}
}

// The defect rate: lots inspected in the month with a nonconformance over
// lots inspected.
func TestDefectRateKPI(t *testing.T) {
	t.Parallel()
	env := tenanttest.New(t)
	s := newService(t, env)
	tn := env.NewTenant(t)
	ctx := context.Background()
	month := monthStart(time.Now())
	for i := 0; i < 4; i++ {
		var lot string
		if err := env.DB.System.QueryRow(ctx, `INSERT INTO lots (tenant_id, code, kind, quantity) VALUES ($1, $2, 'finished', 10) RETURNING id`,
			tn.ID, "Q-"+string(rune('A'+i))).Scan(&lot); err != nil {
			t.Fatal(err)
		}
		for sample := 1; sample <= 3; sample++ {
			if _, err := env.DB.System.Exec(ctx, `INSERT INTO inspection_results (tenant_id, lot_id, characteristic, value, sample, subgroup, measured_at, source)
				VALUES ($1, $2, 'br', 1.4, $3, 1, $4, 'api')`, tn.ID, lot, sample, month.Add(time.Hour)); err != nil {
				t.Fatal(err)
			}
		}
		if i == 0 {
			if _, err := env.DB.System.Exec(ctx, `INSERT INTO nonconformances (tenant_id, lot_id, characteristic, origin) VALUES ($1, $2, 'br', 'manual')`, tn.ID, lot); err != nil {
				t.Fatal(err)
			}
		}
	}
	var got *big.Rat
	err := tenants.InTx(tn.Ctx(), env.DB.App, func(tx pgx.Tx) (err error) {
		got, err = s.KPI(tn.Ctx(), tx, tn.ID, KPIDefectRate, month, month.AddDate(0, 1, 0))
		return err
	})
	if err != nil || got == nil || got.Cmp(big.NewRat(1, 4)) != 0 {
		t.Errorf("defect rate = %v, %v, want 1/4", got, err)
	}
}
