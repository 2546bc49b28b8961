package quality

import (
	"context"
	"errors"
	"fmt"
	"math"
	"regexp"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"

	"github.com/nxcloud/nxcloud/apps"
	"github.com/nxcloud/nxcloud/tenants"
)

// Plan is an inspection plan: what to measure on the lots of a product and/or
// grade ("" matches any), with spec limits and sampling per characteristic.
type Plan struct {
	ID              uuid.UUID            `json:"id"`
	Code            string               `json:"code"`
	Name            string               `json:"name"`
	Product         string               `json:"product"`
	Grade           string               `json:"grade,omitempty"`
	Active          bool                 `json:"active"`
	Characteristics []PlanCharacteristic `json:"characteristics"`
	CreatedAt       time.Time            `json:"created_at"`
	UpdatedAt       time.Time            `json:"updated_at"`
}

// PlanCharacteristic is one characteristic of a plan. LSL/USL left out (both)
// mean the lot's grade spec applies, judged per the grade rule (see Judge).
// SampleSize values are due per lot, in subgroups of SubgroupSize (the n of
// X̄ charts), every FrequencyEvery lots, shifts, hours or days.
type PlanCharacteristic struct {
	Characteristic string   `json:"characteristic"`
	LSL            *float64 `json:"lsl,omitempty"`
	USL            *float64 `json:"usl,omitempty"`
	Target         *float64 `json:"target,omitempty"`
	SampleSize     int      `json:"sample_size"`
	SubgroupSize   int      `json:"subgroup_size"`
	Frequency      string   `json:"frequency"`
	FrequencyEvery int      `json:"frequency_every"`
}

// PlanInput creates or replaces a plan.
type PlanInput struct {
	Code            string               `json:"code"`
	Name            string               `json:"name"`
	Product         string               `json:"product"`
	Grade           string               `json:"grade"`
	Active          *bool                `json:"active"`
	Characteristics []PlanCharacteristic `json:"characteristics"`
}

var codeRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9_.:/-]{0,63}$`)

// Default sampling of a characteristic without a plan, or left out of one.
const (
	defaultSampleSize   = 1
	defaultSubgroupSize = 1
)

func finite(p *float64) bool { return p == nil || (!math.IsNaN(*p) && !math.IsInf(*p, 0)) }

// check validates in against the tenant's characteristics and fills defaults.
func (in *PlanInput) check(chars map[string]tenants.Characteristic) error {
	if !codeRE.MatchString(in.Code) {
		return invalidf("code", "want 1-64 letters, digits, '_', '.', ':', '/' or '-'")
	}
	if len([]rune(in.Name)) > 200 || len([]rune(in.Product)) > 200 {
		return invalidf("name", "name and product are at most 200 characters")
	}
	if len(in.Characteristics) == 0 {
		return invalidf("characteristics", "a plan needs at least one characteristic")
	}
	seen := map[string]bool{}
	for i := range in.Characteristics {
		c := &in.Characteristics[i]
		f := func(name string) string { return fmt.Sprintf("characteristics[%d].%s", i, name) }
		if _, ok := chars[c.Characteristic]; !ok {
			return invalidf(f("characteristic"), "unknown characteristic %q (the sector template's characteristics apply)", clip(c.Characteristic, 64))
		}
		if seen[c.Characteristic] {
			return invalidf(f("characteristic"), "characteristic %q appears twice", c.Characteristic)
		}
		seen[c.Characteristic] = true
		if !finite(c.LSL) || !finite(c.USL) || !finite(c.Target) {
			return invalidf(f("lsl"), "limits must be finite numbers")
		}
		if c.LSL != nil && c.USL != nil && *c.LSL > *c.USL {
			return invalidf(f("lsl"), "limits crossed over: lsl %g is above usl %g", *c.LSL, *c.USL)
		}
		if c.SampleSize == 0 {
			c.SampleSize = defaultSampleSize
		}
		if c.SubgroupSize == 0 {
			c.SubgroupSize = defaultSubgroupSize
		}
		if c.SampleSize < 1 || c.SampleSize > 10000 {
			return invalidf(f("sample_size"), "want 1-10000")
		}
		if c.SubgroupSize < 1 || c.SubgroupSize > maxN {
			return invalidf(f("subgroup_size"), "want 1-%d", maxN)
		}
		if c.Frequency == "" {
			c.Frequency = "lot"
		}
		switch c.Frequency {
		case "lot", "shift", "hour", "day":
		default:
			return invalidf(f("frequency"), "want lot, shift, hour or day")
		}
		if c.FrequencyEvery == 0 {
			c.FrequencyEvery = 1
		}
		if c.FrequencyEvery < 1 || c.FrequencyEvery > 10000 {
			return invalidf(f("frequency_every"), "want 1-10000")
		}
	}
	return nil
}

// CreatePlan creates an inspection plan. Errors: invalid (bad field, unknown
// characteristic or grade, limits crossed over), conflict (code taken, or an
// active plan of the same product and grade exists).
func (s *Service) CreatePlan(ctx context.Context, in PlanInput) (Plan, error) {
	var out Plan
	err := tenants.InTx(ctx, s.db.App, func(tx pgx.Tx) error {
		if err := s.checkPlan(ctx, tx, &in); err != nil {
			return err
		}
		active := in.Active == nil || *in.Active
		var id uuid.UUID
		err := tx.QueryRow(ctx, `
			INSERT INTO inspection_plans (tenant_id, code, name, product, grade_code, active)
			VALUES (nx_tenant(), $1, $2, $3, nullif($4, ''), $5) RETURNING id`,
			in.Code, in.Name, in.Product, in.Grade, active).Scan(&id)
		if err != nil {
			return planStoreError(err)
		}
		if err := insertPlanCharacteristics(ctx, tx, id, in.Characteristics); err != nil {
			return err
		}
		out, err = planByID(ctx, tx, id.String())
		return err
	})
	return out, err
}

// UpdatePlan replaces a plan's fields and characteristics. Errors: not_found,
// invalid, conflict (as CreatePlan).
func (s *Service) UpdatePlan(ctx context.Context, ref string, in PlanInput) (Plan, error) {
	var out Plan
	err := tenants.InTx(ctx, s.db.App, func(tx pgx.Tx) error {
		cur, err := planByID(ctx, tx, ref)
		if err != nil {
			return err
		}
		if err := s.checkPlan(ctx, tx, &in); err != nil {
			return err
		}
		active := in.Active == nil || *in.Active
		_, err = tx.Exec(ctx, `
			UPDATE inspection_plans SET code = $2, name = $3, product = $4, grade_code = nullif($5, ''), active = $6, updated_at = now()
			WHERE tenant_id = nx_require_tenant() AND id = $1`, cur.ID, in.Code, in.Name, in.Product, in.Grade, active)
		if err != nil {
			return planStoreError(err)
		}
		if _, err := tx.Exec(ctx, `DELETE FROM inspection_plan_characteristics WHERE tenant_id = nx_require_tenant() AND plan_id = $1`, cur.ID); err != nil {
			return fmt.Errorf("replace plan characteristics: %w", err)
		}
		if err := insertPlanCharacteristics(ctx, tx, cur.ID, in.Characteristics); err != nil {
			return err
		}
		out, err = planByID(ctx, tx, cur.ID.String())
		return err
	})
	return out, err
}

func (s *Service) checkPlan(ctx context.Context, tx pgx.Tx, in *PlanInput) error {
	chars, err := characteristicSet(ctx, tx)
	if err != nil {
		return err
	}
	if err := in.check(chars); err != nil {
		return err
	}
	if in.Grade != "" {
		var ok bool
		if err := tx.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM grades WHERE tenant_id = nx_require_tenant() AND code = $1)`, in.Grade).Scan(&ok); err != nil {
			return fmt.Errorf("check grade: %w", err)
		}
		if !ok {
			return invalidf("grade", "unknown grade %q", clip(in.Grade, 64))
		}
	}
	return nil
}

func planStoreError(err error) error {
	err = tenants.StoreError(err, "inspection plan")
	if apps.Code(err) == apps.Conflict {
		return apps.Errorf(apps.Conflict, "an inspection plan with this code, or an active plan for this product and grade, already exists")
	}
	return err
}

func insertPlanCharacteristics(ctx context.Context, tx pgx.Tx, plan uuid.UUID, cs []PlanCharacteristic) error {
	for i, c := range cs {
		_, err := tx.Exec(ctx, `
			INSERT INTO inspection_plan_characteristics
				(tenant_id, plan_id, characteristic, position, lsl, usl, target, sample_size, subgroup_size, frequency, frequency_every)
			VALUES (nx_tenant(), $1, $2, $3, $4, $5, $6, $7, $8, $9, $10)`,
			plan, c.Characteristic, i, c.LSL, c.USL, c.Target, c.SampleSize, c.SubgroupSize, c.Frequency, c.FrequencyEvery)
		if err != nil {
			return tenants.StoreError(err, "plan characteristic")
		}
	}
	return nil
}

// Plan returns a plan by id or code. Errors: not_found.
func (s *Service) Plan(ctx context.Context, ref string) (Plan, error) {
	var out Plan
	err := tenants.InTx(ctx, s.db.App, func(tx pgx.Tx) error {
		var err error
		out, err = planByID(ctx, tx, ref)
		return err
	})
	return out, err
}

// Plans lists the tenant's plans by code.
func (s *Service) Plans(ctx context.Context) ([]Plan, error) {
	var out []Plan
	err := tenants.InTx(ctx, s.db.App, func(tx pgx.Tx) error {
		rows, err := tx.Query(ctx, `SELECT id FROM inspection_plans WHERE tenant_id = nx_require_tenant() ORDER BY code`)
		if err != nil {
			return fmt.Errorf("list plans: %w", err)
		}
		ids, err := pgx.CollectRows(rows, pgx.RowTo[uuid.UUID])
		if err != nil {
			return fmt.Errorf("list plans: %w", err)
		}
		out = make([]Plan, 0, len(ids))
		for _, id := range ids {
			p, err := planByID(ctx, tx, id.String())
			if err != nil {
				return err
			}
			out = append(out, p)
		}
		return nil
	})
	return out, err
}

func planByID(ctx context.Context, q tenants.Querier, ref string) (Plan, error) {
	var p Plan
	var grade *string
	sql := `SELECT id, code, name, product, grade_code, active, created_at, updated_at FROM inspection_plans WHERE tenant_id = nx_require_tenant() AND code = $1`
	args := []any{ref}
	if id, err := uuid.Parse(ref); err == nil {
		sql = `SELECT id, code, name, product, grade_code, active, created_at, updated_at FROM inspection_plans
			WHERE tenant_id = nx_require_tenant() AND (id = $1 OR code = $2) ORDER BY id = $1 DESC LIMIT 1`
		args = []any{id, ref}
	}
	err := q.QueryRow(ctx, sql, args...).Scan(&p.ID, &p.Code, &p.Name, &p.Product, &grade, &p.Active, &p.CreatedAt, &p.UpdatedAt)
	if err != nil {
		return Plan{}, tenants.StoreError(err, fmt.Sprintf("inspection plan %q", clip(ref, 64)))
	}
	if grade != nil {
		p.Grade = *grade
	}
	p.Characteristics, err = planCharacteristics(ctx, q, p.ID)
	return p, err
}

func planCharacteristics(ctx context.Context, q tenants.Querier, plan uuid.UUID) ([]PlanCharacteristic, error) {
	rows, err := q.Query(ctx, `
		SELECT characteristic, lsl, usl, target, sample_size, subgroup_size, frequency, frequency_every
		FROM inspection_plan_characteristics WHERE tenant_id = nx_require_tenant() AND plan_id = $1 ORDER BY position, characteristic`, plan)
	if err != nil {
		return nil, fmt.Errorf("plan characteristics: %w", err)
	}
	defer rows.Close()
	out := []PlanCharacteristic{}
	for rows.Next() {
		var c PlanCharacteristic
		if err := rows.Scan(&c.Characteristic, &c.LSL, &c.USL, &c.Target, &c.SampleSize, &c.SubgroupSize, &c.Frequency, &c.FrequencyEvery); err != nil {
			return nil, fmt.Errorf("plan characteristics: %w", err)
		}
		out = append(out, c)
	}
	return out, rows.Err()
}

// planForLot returns the most specific active plan of a lot's product and
// grade (product and grade > grade > product > neither); ok is false when
// none applies.
func planForLot(ctx context.Context, q tenants.Querier, l Lot) (p Plan, ok bool, err error) {
	var id uuid.UUID
	err = q.QueryRow(ctx, `
		SELECT id FROM inspection_plans
		WHERE tenant_id = nx_require_tenant() AND active AND (product = '' OR product = $1) AND (grade_code IS NULL OR grade_code = $2)
		ORDER BY grade_code IS NOT NULL DESC, product <> '' DESC LIMIT 1`, l.Product, l.Grade).Scan(&id)
	if errors.Is(err, pgx.ErrNoRows) {
		return Plan{}, false, nil
	}
	if err != nil {
		return Plan{}, false, fmt.Errorf("plan of lot: %w", err)
	}
	p, err = planByID(ctx, q, id.String())
	return p, err == nil, err
}
