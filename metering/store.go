package metering

import (
	"context"
	"encoding/json"
	"errors"
	"math/big"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"

	"github.com/nxcloud/nxcloud/apps"
	"github.com/nxcloud/nxcloud/tenants"
)

// PlanInput creates a plan.
type PlanInput struct {
	Code       string     `json:"code"`
	Name       string     `json:"name"`
	Currency   string     `json:"currency"`
	Definition Definition `json:"definition"`
}

// CreatePlan adds a plan (operator). Plans are immutable: a new price is a
// new plan, so every past invoice stays explainable by the plan it used.
// Errors: invalid, conflict (code taken).
func (s *Service) CreatePlan(ctx context.Context, in PlanInput, by string) (Plan, error) {
	if !planCode.MatchString(in.Code) {
		return Plan{}, apps.FieldError("code", "a plan code is 1 to 63 lower-case letters, digits and dashes")
	}
	if in.Name == "" || len(in.Name) > 200 || !cleanText(in.Name) {
		return Plan{}, apps.FieldError("name", "a name of 1 to 200 characters is required")
	}
	if len(in.Currency) != 3 || in.Currency != toUpperASCII(in.Currency) {
		return Plan{}, apps.FieldError("currency", "an ISO 4217 code such as EUR or CNY")
	}
	if err := in.Definition.Check(); err != nil {
		return Plan{}, err
	}
	def, err := json.Marshal(in.Definition)
	if err != nil {
		return Plan{}, err
	}
	p := Plan{Code: in.Code, Name: in.Name, Currency: in.Currency, Definition: in.Definition}
	err = s.sys.QueryRow(ctx, `
		INSERT INTO billing_plans (code, name, currency, definition, created_by) VALUES ($1, $2, $3, $4, $5)
		RETURNING id, created_at`, in.Code, in.Name, in.Currency, def, by).Scan(&p.ID, &p.CreatedAt)
	if err != nil {
		return Plan{}, tenants.StoreError(err, "plan "+in.Code)
	}
	return p, nil
}

func toUpperASCII(s string) string {
	b := []byte(s)
	for i, c := range b {
		if c < 'A' || c > 'Z' {
			if c >= 'a' && c <= 'z' {
				b[i] = c - 32
			} else {
				return ""
			}
		}
	}
	return string(b)
}

const planCols = `id, code, name, currency, definition, created_at`

func scanPlan(row pgx.Row) (Plan, error) {
	var p Plan
	var def []byte
	if err := row.Scan(&p.ID, &p.Code, &p.Name, &p.Currency, &def, &p.CreatedAt); err != nil {
		return p, err
	}
	return p, json.Unmarshal(def, &p.Definition)
}

// Plans lists every plan. Errors: none but the database's.
func (s *Service) Plans(ctx context.Context) ([]Plan, error) {
	rows, err := s.sys.Query(ctx, `SELECT `+planCols+` FROM billing_plans ORDER BY code`)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	out := []Plan{}
	for rows.Next() {
		p, err := scanPlan(rows)
		if err != nil {
			return nil, err
		}
		out = append(out, p)
	}
	return out, rows.Err()
}

// PlanByRef returns a plan by id or code. Errors: not_found.
func (s *Service) PlanByRef(ctx context.Context, q tenants.Querier, ref string) (Plan, error) {
	if !cleanText(ref) || len(ref) > 100 {
		return Plan{}, apps.Errorf(apps.NotFound, "plan not found")
	}
	var row pgx.Row
	if id, err := uuid.Parse(ref); err == nil {
		row = q.QueryRow(ctx, `SELECT `+planCols+` FROM billing_plans WHERE id = $1`, id)
	} else {
		row = q.QueryRow(ctx, `SELECT `+planCols+` FROM billing_plans WHERE code = $1`, ref)
	}
	p, err := scanPlan(row)
	return p, tenants.StoreError(err, "plan")
}

// Subscription is a tenant's plan from a month on.
type Subscription struct {
	EffectiveFrom  time.Time `json:"effective_from"`
	Plan           string    `json:"plan"`
	PlanID         uuid.UUID `json:"plan_id"`
	EffectBaseline *string   `json:"effect_baseline,omitempty"`
	CreatedAt      time.Time `json:"created_at"`
	CreatedBy      string    `json:"created_by"`
}

// SubscriptionInput changes a tenant's plan.
type SubscriptionInput struct {
	Plan string `json:"plan"`
	// EffectBaseline is the KPI value agreed at go-live (a ratio such as
	// "0.082"); only the operator sets it.
	EffectBaseline *string `json:"effect_baseline,omitempty"`
}

// Subscribe puts tenant on a plan from the next month boundary (from the
// current month when the tenant has no plan yet, so a new firm is billed
// from its first month). A second change in the same month replaces the
// first. The effect baseline is kept from the previous subscription unless
// given. Errors: not_found (plan), invalid (effect_baseline).
func (s *Service) Subscribe(ctx context.Context, q tenants.Querier, tenant uuid.UUID, in SubscriptionInput, by string) (Subscription, error) {
	plan, err := s.PlanByRef(ctx, q, in.Plan)
	if err != nil {
		var ae *apps.Error
		if errors.As(err, &ae) {
			ae.Field = "plan"
		}
		return Subscription{}, err
	}
	if in.EffectBaseline != nil {
		r, ok := new(big.Rat).SetString(*in.EffectBaseline)
		if !ok || r.Sign() < 0 || r.Cmp(big.NewRat(1, 1)) > 0 || len(*in.EffectBaseline) > 30 {
			return Subscription{}, apps.FieldError("effect_baseline", "a ratio between 0 and 1 written as a decimal, such as 0.082")
		}
	}
	now := s.now().UTC()
	from := monthStart(now)
	var has bool
	if err := q.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM billing_subscriptions WHERE tenant_id = $1 AND effective_from <= $2)`,
		tenant, from).Scan(&has); err != nil {
		return Subscription{}, err
	}
	if has {
		from = from.AddDate(0, 1, 0)
	}
	sub := Subscription{EffectiveFrom: from, Plan: plan.Code, PlanID: plan.ID, CreatedBy: by}
	err = q.QueryRow(ctx, `
		INSERT INTO billing_subscriptions (tenant_id, effective_from, plan_id, effect_baseline, created_by)
		VALUES ($1, $2, $3, coalesce($4::numeric, (SELECT effect_baseline FROM billing_subscriptions
			WHERE tenant_id = $1 AND effective_from < $2 ORDER BY effective_from DESC LIMIT 1)), $5)
		ON CONFLICT (tenant_id, effective_from) DO UPDATE
		SET plan_id = excluded.plan_id, effect_baseline = coalesce($4::numeric, billing_subscriptions.effect_baseline),
		    created_at = now(), created_by = excluded.created_by
		RETURNING effect_baseline::text, created_at`, tenant, from, plan.ID, in.EffectBaseline, by).Scan(&sub.EffectBaseline, &sub.CreatedAt)
	if err != nil {
		return Subscription{}, tenants.StoreError(err, "subscription")
	}
	return sub, nil
}

// Subscriptions lists a tenant's subscriptions, latest first.
func (s *Service) Subscriptions(ctx context.Context, q tenants.Querier, tenant uuid.UUID) ([]Subscription, error) {
	rows, err := q.Query(ctx, `
		SELECT s.effective_from, p.code, p.id, s.effect_baseline::text, s.created_at, s.created_by
		FROM billing_subscriptions s JOIN billing_plans p ON p.id = s.plan_id
		WHERE s.tenant_id = $1 ORDER BY s.effective_from DESC`, tenant)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	out := []Subscription{}
	for rows.Next() {
		var x Subscription
		if err := rows.Scan(&x.EffectiveFrom, &x.Plan, &x.PlanID, &x.EffectBaseline, &x.CreatedAt, &x.CreatedBy); err != nil {
			return nil, err
		}
		x.EffectiveFrom = x.EffectiveFrom.UTC()
		out = append(out, x)
	}
	return out, rows.Err()
}

// planFor returns the plan in force for tenant in the month starting at
// period, with the agreed effect baseline, and whether this month is the
// plan's first for the tenant (one-off fees). ok is false without a plan.
func (s *Service) planFor(ctx context.Context, q tenants.Querier, tenant uuid.UUID, period time.Time) (p Plan, baseline *big.Rat, first, ok bool, err error) {
	var id uuid.UUID
	var base *string
	var from time.Time
	err = q.QueryRow(ctx, `
		SELECT plan_id, effect_baseline::text, effective_from FROM billing_subscriptions
		WHERE tenant_id = $1 AND effective_from <= $2 ORDER BY effective_from DESC LIMIT 1`, tenant, period).Scan(&id, &base, &from)
	if errors.Is(err, pgx.ErrNoRows) {
		return p, nil, false, false, nil
	}
	if err != nil {
		return p, nil, false, false, err
	}
	p, err = s.PlanByRef(ctx, q, id.String())
	if err != nil {
		return p, nil, false, false, err
	}
	if base != nil {
		baseline, _ = new(big.Rat).SetString(*base)
	}
	// First month of the plan for this tenant: no earlier subscription row
	// with the same plan.
	var earlier bool
	if err = q.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM billing_subscriptions WHERE tenant_id = $1 AND plan_id = $2 AND effective_from < $3)`,
		tenant, id, from).Scan(&earlier); err != nil {
		return p, nil, false, false, err
	}
	first = !earlier && from.UTC().Equal(period.UTC())
	return p, baseline, first, true, nil
}

// TenantExists returns nil when tenant exists. Errors: not_found.
func (s *Service) TenantExists(ctx context.Context, tenant uuid.UUID) error {
	var id uuid.UUID
	err := s.sys.QueryRow(ctx, `SELECT id FROM tenants WHERE id = $1`, tenant).Scan(&id)
	return tenants.StoreError(err, "enterprise")
}

// DemoPlanCode is the plan the demo enterprise is put on.
const DemoPlanCode = "demo-standard"

// DemoPlan is the demo's price plan: every kind of charge once, at prices
// that make the demo's invoice readable.
var DemoPlan = PlanInput{Code: DemoPlanCode, Name: "Standard (demo)", Currency: "CNY", Definition: Definition{
	MonthlyFeeCents: 99900,
	OneOff:          []Fee{{Code: "onboarding", Description: "Onboarding from the sector template", AmountCents: 500000}},
	Apps:            []AppFee{{App: "batch", MonthlyCents: 19900}, {App: "quality", MonthlyCents: 19900}},
	Prices: []Price{
		{Meter: MeterPoints, Model: Graduated, Per: 1000, Free: 1000000, Description: "telemetry points stored",
			Tiers: []Tier{{UpTo: 100000000, UnitCents: 2}, {UnitCents: 1}}},
		{Meter: MeterAPICalls, Model: PerUnit, Per: 1000, UnitCents: 50, Free: 10000, Description: "API calls answered"},
		{Meter: MeterAppUses, SubjectPrefix: "batch.", Model: Volume, Description: "batch traces and exports",
			Tiers: []Tier{{UpTo: 1000, UnitCents: 10}, {UnitCents: 5}}},
		{Meter: MeterActiveDevices, Model: PerUnit, UnitCents: 1000, Description: "active devices (the month's maximum)"},
		{Meter: MeterStorage, Model: PerUnit, Per: 1 << 30, UnitCents: 100, Description: "storage (GiB-month)"},
	},
	Quotas: []Quota{{Meter: MeterAPICalls, Limit: 5000000, Hard: true}, {Meter: MeterPoints, Limit: 2000000000}},
	Effect: &Effect{KPI: KPIDowngradeRate, SharePct: 20, CentsPerPoint: 100000, FloorCents: 0, CapCents: 2000000},
}}

// EnsureDemoPlan creates the demo plan if it is missing and puts tenant on
// it (baseline downgrade rate 8 %) unless the tenant has a plan already.
func (s *Service) EnsureDemoPlan(ctx context.Context, tenant uuid.UUID) error {
	if _, err := s.PlanByRef(ctx, s.sys, DemoPlanCode); apps.Code(err) == apps.NotFound {
		if _, err := s.CreatePlan(ctx, DemoPlan, "demo"); err != nil && apps.Code(err) != apps.Conflict {
			return err
		}
	} else if err != nil {
		return err
	}
	subs, err := s.Subscriptions(ctx, s.sys, tenant)
	if err != nil || len(subs) > 0 {
		return err
	}
	baseline := "0.08"
	_, err = s.Subscribe(ctx, s.sys, tenant, SubscriptionInput{Plan: DemoPlanCode, EffectBaseline: &baseline}, "demo")
	return err
}
