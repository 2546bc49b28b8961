package metering

import (
	"fmt"
	"math"
	"math/big"
	"regexp"
	"strings"
	"time"

	"github.com/google/uuid"

	"github.com/nxcloud/nxcloud/apps"
)

// Plan is a price plan: it belongs to the operator; tenants subscribe to it.
// Money is in integer cents of Currency throughout.
type Plan struct {
	ID         uuid.UUID  `json:"id"`
	Code       string     `json:"code"`
	Name       string     `json:"name"`
	Currency   string     `json:"currency"`
	Definition Definition `json:"definition"`
	CreatedAt  time.Time  `json:"created_at"`
}

// Definition is what a plan charges and limits.
type Definition struct {
	// MonthlyFeeCents is charged every month of the subscription.
	MonthlyFeeCents int64 `json:"monthly_fee_cents,omitempty"`
	// OneOff fees are charged once, on the first invoice of a tenant's first
	// subscription to the plan (onboarding, set-up).
	OneOff []Fee `json:"one_off,omitempty"`
	// Apps are per-app monthly subscriptions.
	Apps []AppFee `json:"apps,omitempty"`
	// Prices rate metered usage.
	Prices []Price `json:"prices,omitempty"`
	// Quotas limit usage per month.
	Quotas []Quota `json:"quotas,omitempty"`
	// Effect, when set, charges a share of a measured KPI gain.
	Effect *Effect `json:"effect,omitempty"`
}

// Fee is a one-off fee.
type Fee struct {
	Code        string `json:"code"`
	Description string `json:"description"`
	AmountCents int64  `json:"amount_cents"`
}

// AppFee is a monthly subscription to one N app.
type AppFee struct {
	App          string `json:"app"`
	MonthlyCents int64  `json:"monthly_cents"`
}

// Price models.
const (
	// PerUnit charges every unit above the free quota the same price.
	PerUnit = "per_unit"
	// Graduated charges each unit at the price of the tier it falls in.
	Graduated = "graduated"
	// Volume charges every unit at the price of the tier the total falls in.
	Volume = "volume"
)

// Price rates one meter (optionally only its subjects starting with
// SubjectPrefix, e.g. "batch." for one app's uses).
type Price struct {
	Meter         string `json:"meter"`
	SubjectPrefix string `json:"subject_prefix,omitempty"`
	Description   string `json:"description,omitempty"`
	Model         string `json:"model"`
	// Per is how many units a unit price is for (1000 points, 1 GiB): unit
	// prices are in cents per Per units. Default 1.
	Per int64 `json:"per,omitempty"`
	// UnitCents is the per_unit price (cents per Per units).
	UnitCents int64 `json:"unit_cents,omitempty"`
	// Free units are not charged (they come off the bottom of the tiers).
	Free  int64  `json:"free,omitempty"`
	Tiers []Tier `json:"tiers,omitempty"`
}

// Tier is one tier of a graduated or volume price: units up to UpTo
// (inclusive; 0 for the last, unbounded tier) at UnitCents per Per units,
// plus FlatCents once when the tier is reached.
type Tier struct {
	UpTo      int64 `json:"up_to,omitempty"`
	UnitCents int64 `json:"unit_cents"`
	FlatCents int64 `json:"flat_cents,omitempty"`
}

// Quota limits a meter per month. A hard quota refuses (HTTP 429, MQTT
// refusal); a soft one only warns. Warnings are raised at 80 % and 100 %.
type Quota struct {
	Meter string `json:"meter"`
	Limit int64  `json:"limit"`
	Hard  bool   `json:"hard"`
}

// Effect charges a share of a KPI gain against the baseline agreed at
// go-live (the subscription's effect_baseline): fee = SharePct % ×
// (baseline − actual, in percentage points) × CentsPerPoint, bounded by
// FloorCents and CapCents. KPIs are ratios where lower is better.
type Effect struct {
	KPI           string `json:"kpi"`
	SharePct      int64  `json:"share_pct"`
	CentsPerPoint int64  `json:"cents_per_point"`
	FloorCents    int64  `json:"floor_cents"`
	CapCents      int64  `json:"cap_cents"`
}

var planCode = regexp.MustCompile(`^[a-z0-9][a-z0-9-]{0,62}$`)

// maxMoney bounds every amount so sums never overflow int64.
const maxMoney = int64(1) << 40

func money(field string, v int64) error {
	if v < 0 || v > maxMoney {
		return apps.FieldError(field, "%s must be between 0 and %d cents", field, maxMoney)
	}
	return nil
}

// Check validates a definition. Errors: invalid, with the field to blame.
func (d *Definition) Check() error {
	if err := money("definition.monthly_fee_cents", d.MonthlyFeeCents); err != nil {
		return err
	}
	for i, f := range d.OneOff {
		p := fmt.Sprintf("definition.one_off[%d]", i)
		if f.Code == "" || !planCode.MatchString(f.Code) {
			return apps.FieldError(p+".code", "a fee code is lower-case letters, digits and dashes")
		}
		if err := money(p+".amount_cents", f.AmountCents); err != nil {
			return err
		}
		if !cleanText(f.Description) || len(f.Description) > 200 {
			return apps.FieldError(p+".description", "at most 200 characters")
		}
	}
	for i, a := range d.Apps {
		p := fmt.Sprintf("definition.apps[%d]", i)
		if !planCode.MatchString(a.App) {
			return apps.FieldError(p+".app", "an app name such as batch, quality, recipe or downgrade")
		}
		if err := money(p+".monthly_cents", a.MonthlyCents); err != nil {
			return err
		}
	}
	for i := range d.Prices {
		if err := d.Prices[i].check(fmt.Sprintf("definition.prices[%d]", i)); err != nil {
			return err
		}
	}
	seen := map[string]bool{}
	for i, q := range d.Quotas {
		p := fmt.Sprintf("definition.quotas[%d]", i)
		if !validMeter(q.Meter) || gauge(q.Meter) != "" {
			return apps.FieldError(p+".meter", "a quota applies to a counted meter: %s", strings.Join(Meters, ", "))
		}
		if seen[q.Meter] {
			return apps.FieldError(p+".meter", "one quota per meter")
		}
		seen[q.Meter] = true
		if q.Limit < 1 || q.Limit > 1<<50 {
			return apps.FieldError(p+".limit", "a quota limit is a positive number of units")
		}
	}
	if e := d.Effect; e != nil {
		switch {
		case e.KPI != KPIRejectRatio && e.KPI != KPIDowngradeRate && e.KPI != KPIDefectRate:
			return apps.FieldError("definition.effect.kpi", "want %s, %s or %s", KPIDowngradeRate, KPIDefectRate, KPIRejectRatio)
		case e.SharePct < 0 || e.SharePct > 100:
			return apps.FieldError("definition.effect.share_pct", "a share between 0 and 100 %%")
		case e.CentsPerPoint < 0 || e.CentsPerPoint > maxMoney:
			return apps.FieldError("definition.effect.cents_per_point", "between 0 and %d", maxMoney)
		case money("definition.effect.floor_cents", e.FloorCents) != nil:
			return money("definition.effect.floor_cents", e.FloorCents)
		case money("definition.effect.cap_cents", e.CapCents) != nil || e.CapCents < e.FloorCents:
			return apps.FieldError("definition.effect.cap_cents", "the cap is at least the floor")
		}
	}
	return nil
}

func (p *Price) check(path string) error {
	if !validMeter(p.Meter) {
		return apps.FieldError(path+".meter", "unknown meter %q (want one of %s)", clipText(p.Meter), strings.Join(Meters, ", "))
	}
	if len(p.SubjectPrefix) > 100 || !cleanText(p.SubjectPrefix) || !cleanText(p.Description) || len(p.Description) > 200 {
		return apps.FieldError(path+".subject_prefix", "at most 100 characters of valid text")
	}
	if p.Per == 0 {
		p.Per = 1
	}
	if p.Per < 1 || p.Per > 1<<40 {
		return apps.FieldError(path+".per", "per is a positive number of units")
	}
	if p.Free < 0 || p.Free > 1<<50 {
		return apps.FieldError(path+".free", "free units are between 0 and 2^50")
	}
	switch p.Model {
	case PerUnit:
		if len(p.Tiers) > 0 {
			return apps.FieldError(path+".tiers", "a per_unit price has no tiers")
		}
		return money(path+".unit_cents", p.UnitCents)
	case Graduated, Volume:
		if len(p.Tiers) == 0 || len(p.Tiers) > 20 {
			return apps.FieldError(path+".tiers", "a tiered price has 1 to 20 tiers")
		}
		var prev int64
		for i, t := range p.Tiers {
			tp := fmt.Sprintf("%s.tiers[%d]", path, i)
			last := i == len(p.Tiers)-1
			if (last && t.UpTo != 0) || (!last && t.UpTo <= prev) || t.UpTo > 1<<50 {
				return apps.FieldError(tp+".up_to", "tiers rise strictly; the last has no up_to")
			}
			prev = t.UpTo
			if err := money(tp+".unit_cents", t.UnitCents); err != nil {
				return err
			}
			if err := money(tp+".flat_cents", t.FlatCents); err != nil {
				return err
			}
		}
		return nil
	}
	return apps.FieldError(path+".model", "want per_unit, graduated or volume")
}

// Rate returns the charge in cents for qty units: the units above the free
// quota, priced by the model, rounded half up to the cent once, at the end.
func (p Price) Rate(qty int64) int64 {
	per := max(p.Per, 1)
	q := max(qty-p.Free, 0)
	num := new(big.Int) // cents × per
	switch p.Model {
	case PerUnit:
		num.Mul(big.NewInt(q), big.NewInt(p.UnitCents))
	case Graduated:
		var lo int64
		for _, t := range p.Tiers {
			hi := t.UpTo
			if hi == 0 {
				hi = math.MaxInt64
			}
			if q <= lo {
				break
			}
			n := min(q, hi) - lo
			num.Add(num, new(big.Int).Mul(big.NewInt(n), big.NewInt(t.UnitCents)))
			num.Add(num, new(big.Int).Mul(big.NewInt(t.FlatCents), big.NewInt(per)))
			lo = hi
		}
	case Volume:
		if q == 0 {
			return 0
		}
		for _, t := range p.Tiers {
			if t.UpTo == 0 || q <= t.UpTo {
				num.Mul(big.NewInt(q), big.NewInt(t.UnitCents))
				num.Add(num, new(big.Int).Mul(big.NewInt(t.FlatCents), big.NewInt(per)))
				break
			}
		}
	}
	return roundDiv(num, big.NewInt(per))
}

// roundDiv is num/den rounded half up (num, den ≥ 0).
func roundDiv(num, den *big.Int) int64 {
	r := new(big.Int).Mul(num, big.NewInt(2))
	r.Add(r, den)
	r.Quo(r, new(big.Int).Mul(den, big.NewInt(2)))
	return r.Int64()
}

// EffectFee is the pay-by-effect charge for a month: the share of the gain
// (baseline − actual, in percentage points) times its value, rounded half up
// to the cent, bounded by floor and cap. No gain (or no data) charges the
// floor.
func (e Effect) EffectFee(baseline, actual *big.Rat) int64 {
	if baseline == nil || actual == nil {
		return e.FloorCents
	}
	gain := new(big.Rat).Sub(baseline, actual)
	if gain.Sign() <= 0 {
		return e.FloorCents
	}
	// percentage points × cents/point × share/100
	fee := new(big.Rat).Mul(gain, big.NewRat(100*e.CentsPerPoint*e.SharePct, 100))
	cents := roundDiv(new(big.Int).Mul(fee.Num(), big.NewInt(1)), fee.Denom())
	return min(max(cents, e.FloorCents), e.CapCents)
}

// UnitPrice describes a price's unit rate for an invoice line ("0.25 per
// 1000", or the tiers).
func (p Price) UnitPrice() string {
	per := max(p.Per, 1)
	unit := func(c int64) string {
		s := fmt.Sprintf("%d.%02d", c/100, c%100)
		if per > 1 {
			s += fmt.Sprintf(" per %d", per)
		}
		return s
	}
	var b strings.Builder
	if p.Free > 0 {
		fmt.Fprintf(&b, "first %d free; ", p.Free)
	}
	switch p.Model {
	case PerUnit:
		b.WriteString(unit(p.UnitCents))
	default:
		b.WriteString(p.Model + ": ")
		for i, t := range p.Tiers {
			if i > 0 {
				b.WriteString(", ")
			}
			if t.UpTo > 0 {
				fmt.Fprintf(&b, "≤%d at %s", t.UpTo, unit(t.UnitCents))
			} else {
				fmt.Fprintf(&b, "above at %s", unit(t.UnitCents))
			}
			if t.FlatCents > 0 {
				fmt.Fprintf(&b, " + %d.%02d", t.FlatCents/100, t.FlatCents%100)
			}
		}
	}
	return b.String()
}
