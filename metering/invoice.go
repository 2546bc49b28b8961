package metering

import (
	"context"
	"encoding/csv"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/big"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"

	"github.com/nxcloud/nxcloud/apps"
	"github.com/nxcloud/nxcloud/tenants"
)

// Line kinds.
const (
	LineOneOff     = "one_off"
	LineMonthlyFee = "monthly_fee"
	LineApp        = "app"
	LineUsage      = "usage"
	LineEffect     = "effect"
	LineAdjustment = "adjustment"
)

// Line is one line of an invoice. Usage lines carry the meter and the
// quantity the usage API reports for the same month; an adjustment line
// bills usage of an earlier, closed month that reached the ledger after its
// close (Period names that month), priced as the difference it makes to that
// month's charge.
type Line struct {
	Kind          string `json:"kind"`
	Code          string `json:"code"`
	Description   string `json:"description"`
	Period        string `json:"period"`
	Meter         string `json:"meter,omitempty"`
	SubjectPrefix string `json:"subject_prefix,omitempty"`
	Quantity      int64  `json:"quantity"`
	UnitPrice     string `json:"unit_price,omitempty"`
	// KPIValue is, on an effect line, the month's KPI as an exact ratio
	// ("41/500"), as computed when the line was priced ("" without data): a
	// final invoice keeps it, whatever the firm's records say later.
	KPIValue    string `json:"kpi_value,omitempty"`
	AmountCents int64  `json:"amount_cents"`
}

// Invoice is a tenant's bill for one month: a draft while the month runs
// (recomputed when read), final once closed.
type Invoice struct {
	ID         uuid.UUID  `json:"id"`
	TenantID   uuid.UUID  `json:"tenant_id"`
	Period     string     `json:"period"`
	Status     string     `json:"status"`
	Plan       string     `json:"plan"`
	Currency   string     `json:"currency"`
	TotalCents int64      `json:"total_cents"`
	Lines      []Line     `json:"lines"`
	ComputedAt time.Time  `json:"computed_at"`
	ClosedAt   *time.Time `json:"closed_at,omitempty"`
}

func periodName(t time.Time) string { return t.UTC().Format("2006-01") }

// ParsePeriod reads "2026-11" as the first instant of that month (UTC).
// Errors: invalid (field period).
func ParsePeriod(s string) (time.Time, error) {
	t, err := time.Parse("2006-01", s)
	if err != nil || t.Year() < 2000 || t.Year() > 9998 {
		return time.Time{}, apps.FieldError("period", "want a month such as 2026-11")
	}
	return t.UTC(), nil
}

// compute prices a month from ledger cells. cur are the cells the invoice
// bills (its month's usage and, earlier, late usage); prior returns, for an
// earlier month, the cells already billed for it.
func (s *Service) compute(ctx context.Context, q tenants.Querier, tenant uuid.UUID, period time.Time, cur []cell,
	prior func(month time.Time) ([]cell, error), kpi *kpiValue) (Plan, []Line, error) {
	plan, baseline, first, ok, err := s.planFor(ctx, q, tenant, period)
	if err != nil {
		return plan, nil, err
	}
	if !ok {
		return plan, nil, apps.Errorf(apps.NotFound, "no plan for %s: the enterprise has not subscribed", periodName(period))
	}
	d := plan.Definition
	pn := periodName(period)
	lines := []Line{}
	if first {
		for _, f := range d.OneOff {
			lines = append(lines, Line{Kind: LineOneOff, Code: f.Code, Description: f.Description, Period: pn, Quantity: 1, AmountCents: f.AmountCents})
		}
	}
	if d.MonthlyFeeCents > 0 {
		lines = append(lines, Line{Kind: LineMonthlyFee, Code: plan.Code, Description: "monthly fee, plan " + plan.Name, Period: pn, Quantity: 1, AmountCents: d.MonthlyFeeCents})
	}
	for _, a := range d.Apps {
		lines = append(lines, Line{Kind: LineApp, Code: a.App, Description: "app subscription: " + a.App, Period: pn, Quantity: 1, AmountCents: a.MonthlyCents})
	}
	byMonth := map[time.Time][]cell{}
	for _, c := range cur {
		m := monthStart(c.Day)
		byMonth[m] = append(byMonth[m], c)
	}
	for _, p := range d.Prices {
		match := func(c cell) bool { return strings.HasPrefix(c.Subject, p.SubjectPrefix) }
		qty := aggregate(p.Meter, period, byMonth[period], match)
		lines = append(lines, Line{Kind: LineUsage, Code: p.Meter, Description: priceDescription(p), Period: pn, Meter: p.Meter,
			SubjectPrefix: p.SubjectPrefix, Quantity: qty, UnitPrice: p.UnitPrice(), AmountCents: p.Rate(qty)})
	}
	if e := d.Effect; e != nil {
		l, err := s.effectLine(ctx, q, tenant, period, *e, baseline, kpi)
		if err != nil {
			return plan, nil, err
		}
		lines = append(lines, l)
	}
	// Late usage of earlier months: adjustments, priced with that month's plan.
	var months []time.Time
	for m := range byMonth {
		if m.Before(period) {
			months = append(months, m)
		}
	}
	sort.Slice(months, func(i, j int) bool { return months[i].Before(months[j]) })
	for _, m := range months {
		mp, _, _, ok, err := s.planFor(ctx, q, tenant, m)
		if err != nil {
			return plan, nil, err
		}
		if !ok {
			continue // no plan that month: nothing was owed for it
		}
		before, err := prior(m)
		if err != nil {
			return plan, nil, err
		}
		all := append(append([]cell{}, before...), byMonth[m]...)
		for _, p := range mp.Definition.Prices {
			match := func(c cell) bool { return strings.HasPrefix(c.Subject, p.SubjectPrefix) }
			q0, q1 := aggregate(p.Meter, m, before, match), aggregate(p.Meter, m, all, match)
			if q1 == q0 {
				continue
			}
			lines = append(lines, Line{Kind: LineAdjustment, Code: p.Meter, Period: periodName(m), Meter: p.Meter, SubjectPrefix: p.SubjectPrefix,
				Description: fmt.Sprintf("late usage of %s (%d billed, %d now): %s", periodName(m), q0, q1, priceDescription(p)),
				Quantity:    q1 - q0, UnitPrice: p.UnitPrice(), AmountCents: p.Rate(q1) - p.Rate(q0)})
		}
	}
	return plan, lines, nil
}

func priceDescription(p Price) string {
	if p.Description != "" {
		return p.Description
	}
	if p.SubjectPrefix != "" {
		return p.Meter + " (" + p.SubjectPrefix + "*)"
	}
	return p.Meter
}

// kpiValue is a KPI value fixed at close: set means use it (nil: no data).
type kpiValue struct{ v *big.Rat }

func (s *Service) effectLine(ctx context.Context, q tenants.Querier, tenant uuid.UUID, period time.Time, e Effect, baseline *big.Rat, fixed *kpiValue) (Line, error) {
	l := Line{Kind: LineEffect, Code: e.KPI, Period: periodName(period), Quantity: 1}
	var actual *big.Rat
	if fixed != nil {
		actual = fixed.v
	} else {
		var err error
		if actual, err = s.KPI(ctx, q, tenant, e.KPI, period, period.AddDate(0, 1, 0)); err != nil {
			return l, err
		}
	}
	if actual != nil {
		l.KPIValue = actual.RatString()
	}
	l.AmountCents = e.EffectFee(baseline, actual)
	ratio := func(r *big.Rat) string {
		if r == nil {
			return "n/a"
		}
		return r.FloatString(6)
	}
	l.Description = fmt.Sprintf("pay-by-effect: %d %% of the gain in %s (baseline %s, this month %s) at %d.%02d per percentage point; floor %d.%02d, cap %d.%02d",
		e.SharePct, e.KPI, ratio(baseline), ratio(actual), e.CentsPerPoint/100, e.CentsPerPoint%100,
		e.FloorCents/100, e.FloorCents%100, e.CapCents/100, e.CapCents%100)
	if baseline == nil {
		l.Description += "; no baseline agreed yet: the floor applies"
	}
	return l, nil
}

func total(lines []Line) int64 {
	var t int64
	for _, l := range lines {
		t += l.AmountCents
	}
	return t
}

// Draft computes tenant's invoice for the month starting at period from the
// ledger rows not yet billed (a final invoice is returned as stored), and
// stores the draft. Errors: not_found (no plan that month).
func (s *Service) Draft(ctx context.Context, q tenants.Querier, tenant uuid.UUID, period time.Time) (Invoice, error) {
	if inv, err := s.storedInvoice(ctx, q, tenant, `period = $2`, period); err == nil && inv.Status == "final" {
		return inv, nil
	} else if err != nil && apps.Code(err) != apps.NotFound {
		return inv, err
	}
	end := period.AddDate(0, 1, 0)
	cur, err := s.cells(ctx, q, tenant, selUnbilled, end)
	if err != nil {
		return Invoice{}, err
	}
	// Unbilled usage of an earlier month is an adjustment only once that
	// month is final; until then its own invoice will bill it.
	finals := map[time.Time]bool{}
	rows, err := q.Query(ctx, `SELECT period FROM invoices WHERE tenant_id = $1 AND status = 'final' AND period < $2`, tenant, period)
	if err != nil {
		return Invoice{}, err
	}
	for rows.Next() {
		var m time.Time
		if err := rows.Scan(&m); err != nil {
			rows.Close()
			return Invoice{}, err
		}
		finals[m.UTC()] = true
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return Invoice{}, err
	}
	kept := cur[:0]
	for _, c := range cur {
		if m := monthStart(c.Day); m.Equal(period) || finals[m] {
			kept = append(kept, c)
		}
	}
	cur = kept
	now := s.now().UTC()
	plan, lines, err := s.compute(ctx, q, tenant, period, cur, func(m time.Time) ([]cell, error) {
		return s.cells(ctx, q, tenant, selPrior, m, m.AddDate(0, 1, 0), now.Add(time.Hour))
	}, nil)
	if err != nil {
		return Invoice{}, err
	}
	inv := Invoice{TenantID: tenant, Period: periodName(period), Status: "draft", Plan: plan.Code, Currency: plan.Currency,
		Lines: lines, TotalCents: total(lines)}
	raw, _ := json.Marshal(lines)
	err = q.QueryRow(ctx, `
		INSERT INTO invoices (tenant_id, period, status, plan_id, currency, total_cents, lines, computed_at)
		VALUES ($1, $2, 'draft', $3, $4, $5, $6, now())
		ON CONFLICT (tenant_id, period) DO UPDATE SET plan_id = excluded.plan_id, currency = excluded.currency,
			total_cents = excluded.total_cents, lines = excluded.lines, computed_at = excluded.computed_at
		WHERE invoices.status = 'draft'
		RETURNING id, computed_at`, tenant, period, plan.ID, plan.Currency, inv.TotalCents, raw).Scan(&inv.ID, &inv.ComputedAt)
	if errors.Is(err, pgx.ErrNoRows) { // closed meanwhile
		return s.storedInvoice(ctx, q, tenant, `period = $2`, period)
	}
	return inv, err
}

// Recompute prices a final invoice again from the ledger rows it billed (and
// the effect line from the KPI value recorded at close), and returns the
// lines it should have: equal to the stored ones, to the cent, unless the
// ledger was tampered with. Errors: not_found, invalid (a draft).
func (s *Service) Recompute(ctx context.Context, q tenants.Querier, tenant, id uuid.UUID) ([]Line, error) {
	inv, err := s.storedInvoice(ctx, q, tenant, `id = $2`, id)
	if err != nil {
		return nil, err
	}
	if inv.Status != "final" {
		return nil, apps.Errorf(apps.Invalid, "invoice %s is a draft: drafts are recomputed whenever they are read", inv.Period)
	}
	period, _ := ParsePeriod(inv.Period)
	cur, err := s.cells(ctx, q, tenant, selInvoice, id)
	if err != nil {
		return nil, err
	}
	// The effect line is priced with the KPI value recorded at close.
	var kpi *kpiValue
	for _, l := range inv.Lines {
		if l.Kind == LineEffect {
			kpi = &kpiValue{}
			if l.KPIValue != "" {
				v, ok := new(big.Rat).SetString(l.KPIValue)
				if !ok {
					return nil, fmt.Errorf("invoice %s: stored KPI value %q", inv.ID, l.KPIValue)
				}
				kpi.v = v
			}
		}
	}
	_, lines, err := s.compute(ctx, q, tenant, period, cur, func(m time.Time) ([]cell, error) {
		return s.cells(ctx, q, tenant, selPrior, m, m.AddDate(0, 1, 0), *inv.ClosedAt)
	}, kpi)
	return lines, err
}

const invoiceCols = `i.id, i.tenant_id, i.period, i.status, coalesce(p.code, ''), i.currency, i.total_cents, i.lines, i.computed_at, i.closed_at`

func scanInvoice(row pgx.Row) (Invoice, error) {
	var inv Invoice
	var period time.Time
	var raw []byte
	if err := row.Scan(&inv.ID, &inv.TenantID, &period, &inv.Status, &inv.Plan, &inv.Currency, &inv.TotalCents, &raw, &inv.ComputedAt, &inv.ClosedAt); err != nil {
		return inv, err
	}
	inv.Period = periodName(period)
	return inv, json.Unmarshal(raw, &inv.Lines)
}

func (s *Service) storedInvoice(ctx context.Context, q tenants.Querier, tenant uuid.UUID, where string, arg any) (Invoice, error) {
	inv, err := scanInvoice(q.QueryRow(ctx, `SELECT `+invoiceCols+` FROM invoices i LEFT JOIN billing_plans p ON p.id = i.plan_id
		WHERE i.tenant_id = $1 AND i.`+where, tenant, arg))
	return inv, tenants.StoreError(err, "invoice")
}

// Invoice returns one of tenant's invoices by id; a draft is recomputed
// first. Errors: not_found.
func (s *Service) Invoice(ctx context.Context, q tenants.Querier, tenant, id uuid.UUID) (Invoice, error) {
	inv, err := s.storedInvoice(ctx, q, tenant, `id = $2`, id)
	if err != nil || inv.Status == "final" {
		return inv, err
	}
	period, _ := ParsePeriod(inv.Period)
	return s.Draft(ctx, q, tenant, period)
}

// Invoices lists invoices, latest month first: one tenant's (tenant set) or
// every tenant's (uuid.Nil: the operator). The current month's draft is
// refreshed first for a tenant with a plan.
func (s *Service) Invoices(ctx context.Context, q tenants.Querier, tenant uuid.UUID) ([]Invoice, error) {
	if tenant != uuid.Nil {
		if _, err := s.Draft(ctx, q, tenant, monthStart(s.now())); err != nil && apps.Code(err) != apps.NotFound {
			return nil, err
		}
	}
	rows, err := q.Query(ctx, `SELECT `+invoiceCols+` FROM invoices i LEFT JOIN billing_plans p ON p.id = i.plan_id
		WHERE $1::uuid IS NULL OR i.tenant_id = $1 ORDER BY i.period DESC, i.tenant_id LIMIT 1000`, nullUUID(tenant))
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	out := []Invoice{}
	for rows.Next() {
		inv, err := scanInvoice(rows)
		if err != nil {
			return nil, err
		}
		out = append(out, inv)
	}
	return out, rows.Err()
}

func nullUUID(id uuid.UUID) *uuid.UUID {
	if id == uuid.Nil {
		return nil
	}
	return &id
}

// WriteCSV writes an invoice's lines as CSV, amounts in decimal currency
// units with two digits (from integer cents), ending with the total.
func WriteCSV(w io.Writer, inv Invoice) error {
	cw := csv.NewWriter(w)
	_ = cw.Write([]string{"invoice", "period", "status", "kind", "code", "description", "usage_period", "meter", "quantity", "unit_price", "amount", "currency"})
	for _, l := range inv.Lines {
		_ = cw.Write([]string{inv.ID.String(), inv.Period, inv.Status, l.Kind, l.Code, csvSafe(l.Description), l.Period, l.Meter,
			strconv.FormatInt(l.Quantity, 10), l.UnitPrice, cents(l.AmountCents), inv.Currency})
	}
	_ = cw.Write([]string{inv.ID.String(), inv.Period, inv.Status, "total", "", "", "", "", "", "", cents(inv.TotalCents), inv.Currency})
	cw.Flush()
	return cw.Error()
}

// csvSafe keeps a spreadsheet from reading a cell as a formula.
func csvSafe(s string) string {
	if s != "" && strings.ContainsRune("=+-@", rune(s[0])) {
		return "'" + s
	}
	return s
}

func cents(c int64) string {
	sign := ""
	if c < 0 {
		sign, c = "-", -c
	}
	return fmt.Sprintf("%s%d.%02d", sign, c/100, c%100)
}
