package downgrade

import (
	"context"
	"math"
	"regexp"

	"github.com/jackc/pgx/v5"

	"github.com/nxcloud/nxcloud/apps"
	"github.com/nxcloud/nxcloud/tenants"
)

// GradePrice is the value of one unit sold in a grade.
type GradePrice struct {
	Grade string  `json:"grade"`
	Price float64 `json:"price"`
	Unit  string  `json:"unit"`
}

// PriceList is the tenant's price list per grade and the values downgrades
// are costed with.
type PriceList struct {
	Currency    string       `json:"currency"`
	RemeltValue float64      `json:"remelt_value"`
	ScrapValue  float64      `json:"scrap_value"`
	ReworkCost  float64      `json:"rework_cost"`
	Prices      []GradePrice `json:"prices"`
}

// PriceListInput replaces the price list.
type PriceListInput struct {
	Currency    string       `json:"currency"`
	RemeltValue float64      `json:"remelt_value"`
	ScrapValue  float64      `json:"scrap_value"`
	ReworkCost  float64      `json:"rework_cost"`
	Prices      []GradePrice `json:"prices"`
}

var currencyRE = regexp.MustCompile(`^[A-Z]{3}$`)

func finite(field string, v float64) error {
	if math.IsNaN(v) || math.IsInf(v, 0) || v < 0 || v > 1e12 {
		return apps.FieldError(field, "%s must be a number from 0 to 1e12", field)
	}
	return nil
}

type settingsRow struct {
	Currency                            string
	RemeltValue, ScrapValue, ReworkCost float64
}

func settings(ctx context.Context, q tenants.Querier) (settingsRow, error) {
	st := settingsRow{Currency: "CNY"}
	err := q.QueryRow(ctx, `SELECT currency, remelt_value::float8, scrap_value::float8, rework_cost::float8
		FROM downgrade_settings WHERE tenant_id = nx_require_tenant()`).Scan(&st.Currency, &st.RemeltValue, &st.ScrapValue, &st.ReworkCost)
	if err == pgx.ErrNoRows {
		return st, nil
	}
	return st, err
}

// SetPrices replaces the tenant's price list. Errors: invalid (currency, a
// negative or non-finite value, a grade not in the sector, a grade twice).
func (s *Service) SetPrices(ctx context.Context, in PriceListInput) (PriceList, error) {
	if in.Currency == "" {
		in.Currency = "CNY"
	}
	if !currencyRE.MatchString(in.Currency) {
		return PriceList{}, apps.FieldError("currency", "currency must be an ISO 4217 code such as CNY")
	}
	for f, v := range map[string]float64{"remelt_value": in.RemeltValue, "scrap_value": in.ScrapValue, "rework_cost": in.ReworkCost} {
		if err := finite(f, v); err != nil {
			return PriceList{}, err
		}
	}
	if len(in.Prices) > 1000 {
		return PriceList{}, apps.FieldError("prices", "at most 1000 prices")
	}
	seen := map[string]bool{}
	for _, p := range in.Prices {
		if err := finite("prices", p.Price); err != nil {
			return PriceList{}, err
		}
		if seen[p.Grade] {
			return PriceList{}, apps.FieldError("prices", "grade %q appears twice", clip(p.Grade))
		}
		seen[p.Grade] = true
		if len(p.Unit) > 32 {
			return PriceList{}, apps.FieldError("prices", "unit must be at most 32 bytes")
		}
	}
	var out PriceList
	err := s.inTx(ctx, func(tx pgx.Tx) error {
		gs, err := grades(ctx, tx)
		if err != nil {
			return err
		}
		for _, p := range in.Prices {
			if err := checkGrade(gs, "prices", p.Grade); err != nil {
				return err
			}
		}
		if _, err := tx.Exec(ctx, `INSERT INTO downgrade_settings (tenant_id, currency, remelt_value, scrap_value, rework_cost)
			VALUES (nx_require_tenant(), $1, $2, $3, $4)
			ON CONFLICT (tenant_id) DO UPDATE SET currency = EXCLUDED.currency, remelt_value = EXCLUDED.remelt_value,
				scrap_value = EXCLUDED.scrap_value, rework_cost = EXCLUDED.rework_cost, updated_at = now()`,
			in.Currency, in.RemeltValue, in.ScrapValue, in.ReworkCost); err != nil {
			return err
		}
		if _, err := tx.Exec(ctx, `DELETE FROM grade_prices WHERE tenant_id = nx_require_tenant()`); err != nil {
			return err
		}
		for _, p := range in.Prices {
			if p.Unit == "" {
				p.Unit = "kg"
			}
			if _, err := tx.Exec(ctx, `INSERT INTO grade_prices (tenant_id, grade_code, price, unit) VALUES (nx_require_tenant(), $1, $2, $3)`,
				p.Grade, p.Price, p.Unit); err != nil {
				return tenants.StoreError(err, "price of "+p.Grade)
			}
		}
		out, err = priceList(ctx, tx)
		return err
	})
	return out, err
}

// Prices returns the tenant's price list.
func (s *Service) Prices(ctx context.Context) (PriceList, error) {
	var out PriceList
	err := s.inTx(ctx, func(tx pgx.Tx) error {
		var err error
		out, err = priceList(ctx, tx)
		return err
	})
	return out, err
}

func priceList(ctx context.Context, q tenants.Querier) (PriceList, error) {
	st, err := settings(ctx, q)
	if err != nil {
		return PriceList{}, err
	}
	out := PriceList{Currency: st.Currency, RemeltValue: st.RemeltValue, ScrapValue: st.ScrapValue, ReworkCost: st.ReworkCost}
	rows, err := q.Query(ctx, `SELECT p.grade_code, p.price::float8, p.unit FROM grade_prices p JOIN grades g
		ON g.tenant_id = p.tenant_id AND g.code = p.grade_code
		WHERE p.tenant_id = nx_require_tenant() ORDER BY g.family, g.rank DESC`)
	if err != nil {
		return PriceList{}, err
	}
	out.Prices, err = pgx.CollectRows(rows, func(r pgx.CollectableRow) (GradePrice, error) {
		var p GradePrice
		err := r.Scan(&p.Grade, &p.Price, &p.Unit)
		return p, err
	})
	if out.Prices == nil {
		out.Prices = []GradePrice{}
	}
	return out, err
}
