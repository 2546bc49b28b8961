package metering

import (
	"math/big"
	"testing"

	"github.com/nxcloud/nxcloud/apps"
)

func TestRate(t *testing.T) {
	t.Parallel()
	grad := Price{Model: Graduated, Per: 1000, Free: 1000, Tiers: []Tier{
		{UpTo: 10000, UnitCents: 50}, {UpTo: 100000, UnitCents: 20}, {UnitCents: 5}}}
	vol := Price{Model: Volume, Tiers: []Tier{{UpTo: 10, UnitCents: 100}, {UpTo: 100, UnitCents: 80, FlatCents: 500}, {UnitCents: 50}}}
	for _, c := range []struct {
		name string
		p    Price
		qty  int64
		want int64
	}{
		{"per unit", Price{Model: PerUnit, UnitCents: 7}, 3, 21},
		{"per unit free", Price{Model: PerUnit, UnitCents: 7, Free: 5}, 3, 0},
		{"per unit above free", Price{Model: PerUnit, UnitCents: 7, Free: 5}, 8, 21},
		// 1 cent per 1000 points: 1499 points are 1.499 cents → 1; 1500 → 2 (half up).
		{"per 1000 rounds down", Price{Model: PerUnit, UnitCents: 1, Per: 1000}, 1499, 1},
		{"per 1000 rounds half up", Price{Model: PerUnit, UnitCents: 1, Per: 1000}, 1500, 2},
		{"graduated within free", grad, 1000, 0},
		{"graduated first tier", grad, 11000, 500},                               // 10000 × 50/1000
		{"graduated two tiers", grad, 21000, 500 + 200},                          // + 10000 × 20/1000
		{"graduated three tiers", grad, 1000 + 100000 + 40000, 500 + 1800 + 200}, // 90000 × 0.02 = 1800, 40000 × 0.005 = 200
		{"volume zero", vol, 0, 0},
		{"volume first tier", vol, 10, 1000},
		{"volume second tier: all units at its price plus flat", vol, 11, 11*80 + 500},
		{"volume last tier", vol, 101, 101 * 50},
	} {
		if got := c.p.Rate(c.qty); got != c.want {
			t.Errorf("%s: Rate(%d) = %d, want %d", c.name, c.qty, got, c.want)
		}
	}
}

func TestEffectFee(t *testing.T) {
	t.Parallel()
	e := Effect{KPI: KPIDowngradeRate, SharePct: 20, CentsPerPoint: 100000, FloorCents: 5000, CapCents: 50000}
	r := func(s string) *big.Rat { x, _ := new(big.Rat).SetString(s); return x }
	for _, c := range []struct {
		baseline, actual *big.Rat
		want             int64
	}{
		{r("0.08"), r("0.065"), 30000}, // 1.5 points × 1000.00 × 20 %
		{r("0.08"), r("0.079"), 5000},  // 0.1 point: 2000 < floor
		{r("0.08"), r("0.01"), 50000},  // 7 points: cap
		{r("0.08"), r("0.09"), 5000},   // worse: floor
		{nil, r("0.05"), 5000},         // no baseline agreed
		{r("0.08"), nil, 5000},         // no data this month
		{r("1/30"), r("0.03"), 6667},   // 0.333… points × 1000.00 × 20 % = 66.6667 (exact ratios)
	} {
		if got := e.EffectFee(c.baseline, c.actual); got != c.want {
			t.Errorf("EffectFee(%v, %v) = %d, want %d", c.baseline, c.actual, got, c.want)
		}
	}
}

func TestDefinitionCheck(t *testing.T) {
	t.Parallel()
	for _, c := range []struct {
		d     Definition
		field string
	}{
		{Definition{MonthlyFeeCents: -1}, "definition.monthly_fee_cents"},
		{Definition{Prices: []Price{{Meter: "nope", Model: PerUnit}}}, "definition.prices[0].meter"},
		{Definition{Prices: []Price{{Meter: MeterPoints, Model: "flat"}}}, "definition.prices[0].model"},
		{Definition{Prices: []Price{{Meter: MeterPoints, Model: Graduated}}}, "definition.prices[0].tiers"},
		{Definition{Prices: []Price{{Meter: MeterPoints, Model: Graduated, Tiers: []Tier{{UpTo: 10}, {UpTo: 5}, {}}}}}, "definition.prices[0].tiers[1].up_to"},
		{Definition{Prices: []Price{{Meter: MeterPoints, Model: Volume, Tiers: []Tier{{UpTo: 10}}}}}, "definition.prices[0].tiers[0].up_to"},
		{Definition{Quotas: []Quota{{Meter: MeterStorage, Limit: 10}}}, "definition.quotas[0].meter"},
		{Definition{Quotas: []Quota{{Meter: MeterAPICalls, Limit: 0}}}, "definition.quotas[0].limit"},
		{Definition{Effect: &Effect{KPI: "oee"}}, "definition.effect.kpi"},
		{Definition{Effect: &Effect{KPI: KPIRejectRatio, SharePct: 10, FloorCents: 10, CapCents: 5}}, "definition.effect.cap_cents"},
	} {
		err := c.d.Check()
		var ae *apps.Error
		if err == nil || apps.Code(err) != apps.Invalid {
			t.Errorf("%+v: %v, want invalid", c.d, err)
		} else if ae = err.(*apps.Error); ae.Field != c.field {
			t.Errorf("%+v: field %q, want %q (%v)", c.d, ae.Field, c.field, err)
		}
	}
}
