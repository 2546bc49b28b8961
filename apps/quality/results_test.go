package quality_test

import (
	"context"
	"math"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"

	"github.com/nxcloud/nxcloud/apps"
	"github.com/nxcloud/nxcloud/apps/quality"
	"github.com/nxcloud/nxcloud/tenants"
	"github.com/nxcloud/nxcloud/tenants/tenanttest"
)

// newLot inserts a lot of tenant tn (the batch app owns lots; tests write
// the row directly).
func newLot(t testing.TB, env *tenanttest.Env, tn tenanttest.Tenant, code, product, grade string) uuid.UUID {
	t.Helper()
	var id uuid.UUID
	err := tenants.InTx(tn.Ctx(), env.DB.App, func(tx pgx.Tx) error {
		return tx.QueryRow(tn.Ctx(), `INSERT INTO lots (tenant_id, code, product, grade_code, kind)
			VALUES (nx_tenant(), $1, $2, nullif($3, ''), 'finished') RETURNING id`, code, product, grade).Scan(&id)
	})
	if err != nil {
		t.Fatalf("lot %s: %v", code, err)
	}
	return id
}

func f(v float64) *float64 { return &v }

func values(vs ...float64) []quality.ResultInput {
	out := make([]quality.ResultInput, len(vs))
	for i := range vs {
		out[i] = quality.ResultInput{Characteristic: "br", Value: f(vs[i])}
	}
	return out
}

func wantCode(t *testing.T, what string, err error, code, field string) {
	t.Helper()
	var e *apps.Error
	if apps.Code(err) != code {
		t.Fatalf("%s: err = %v, want code %s", what, err, code)
	}
	if field != "" {
		if ok := asErr(err, &e); !ok || e.Field != field {
			t.Fatalf("%s: err = %v, want field %s", what, err, field)
		}
	}
}

func TestResultsJudgementAndNonconformance(t *testing.T) {
	t.Parallel()
	env := tenanttest.New(t)
	tn := env.NewTenant(t)
	svc := quality.NewService(&env.DB, nil)
	var hooked []uuid.UUID
	svc.OnResults = func(ctx context.Context, tx pgx.Tx, lots []uuid.UUID) error {
		hooked = append(hooked, lots...)
		return nil
	}
	ctx := tn.Ctx()
	lot := newLot(t, env, tn, "L-N52-1", "block", "N52")

	// N52: br min 1.43 (a band: above max is no failure).
	res, err := svc.AddResults(ctx, "L-N52-1", quality.ResultsInput{Results: values(1.45, 1.50)})
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Results) != 2 || res.Results[1].Sample != 2 || res.Results[0].Source != "api" {
		t.Fatalf("results = %+v", res.Results)
	}
	br := judgement(t, res.Inspection, "br")
	if br.Status != quality.StatusPass || br.Limits.Source != "grade" || br.Limits.USL != nil {
		t.Fatalf("br judgement = %+v", br)
	}
	if res.Inspection.Status != quality.StatusPending { // hcj, hcb, bhmax, density still due
		t.Fatalf("lot status = %s, want pending", res.Inspection.Status)
	}
	if len(hooked) != 1 || hooked[0] != lot {
		t.Fatalf("OnResults got %v, want [%s]", hooked, lot)
	}

	// A low Br fails the lot with LOW_BR.
	res, err = svc.AddResults(ctx, lot.String(), quality.ResultsInput{Results: values(1.41)})
	if err != nil {
		t.Fatal(err)
	}
	br = judgement(t, res.Inspection, "br")
	if br.Status != quality.StatusFail || br.ReasonCode != "LOW_BR" || br.Failed != 1 || *br.Worst != 1.41 {
		t.Fatalf("br judgement = %+v", br)
	}
	if res.Inspection.Status != quality.StatusFail || len(res.Inspection.Nonconformances) != 1 {
		t.Fatalf("inspection = %+v", res.Inspection)
	}
	nc := res.Inspection.Nonconformances[0]
	if nc.ReasonCode != "LOW_BR" || nc.Origin != "judgement" || *nc.WorstValue != 1.41 || nc.Status != "open" {
		t.Fatalf("nonconformance = %+v", nc)
	}
	// Another low value refreshes the same nonconformance.
	if _, err := svc.AddResults(ctx, lot.String(), quality.ResultsInput{Results: values(1.39)}); err != nil {
		t.Fatal(err)
	}
	ncs, err := svc.Nonconformances(ctx, quality.NCQuery{Lot: "L-N52-1"})
	if err != nil {
		t.Fatal(err)
	}
	if len(ncs) != 1 || *ncs[0].WorstValue != 1.39 || ncs[0].FailedCount != 2 {
		t.Fatalf("nonconformances = %+v", ncs)
	}

	// Outside a tenant-scoped transaction row-level security shows nothing.
	got, err := svc.LotValues(ctx, env.DB.App, lot)
	if err == nil && len(got) != 0 {
		t.Fatalf("LotValues outside a tenant transaction = %v", got)
	}
	err = tenants.InTx(ctx, env.DB.App, func(tx pgx.Tx) error {
		got, err = svc.LotValues(ctx, tx, lot)
		return err
	})
	if err != nil || len(got["br"]) != 4 || got["br"][3] != 1.39 {
		t.Fatalf("LotValues = %v, %v", got, err)
	}
	err = tenants.InTx(ctx, env.DB.App, func(tx pgx.Tx) error {
		d, err := svc.LotDetails(ctx, tx, []uuid.UUID{lot, uuid.New()})
		if err != nil {
			return err
		}
		if len(d) != 1 || d[lot].(quality.LotInspection).Status != quality.StatusFail {
			t.Errorf("LotDetails = %+v", d)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

func TestResultsValidation(t *testing.T) {
	t.Parallel()
	env := tenanttest.New(t)
	tn := env.NewTenant(t)
	svc := quality.NewService(&env.DB, nil)
	ctx := tn.Ctx()
	newLot(t, env, tn, "L-V", "", "")
	_, err := svc.AddResults(ctx, "L-V", quality.ResultsInput{Results: []quality.ResultInput{
		{Characteristic: "br", Value: f(1.2)}, {Characteristic: "nope", Value: f(1)}}})
	wantCode(t, "unknown characteristic", err, apps.Invalid, "results[1].characteristic")
	_, err = svc.AddResults(ctx, "L-V", quality.ResultsInput{Results: []quality.ResultInput{{Characteristic: "br", Value: f(math.NaN())}}})
	wantCode(t, "NaN", err, apps.Invalid, "results[0].value")
	_, err = svc.AddResults(ctx, "L-V", quality.ResultsInput{Results: []quality.ResultInput{{Characteristic: "br", Value: f(math.Inf(1))}}})
	wantCode(t, "Inf", err, apps.Invalid, "results[0].value")
	_, err = svc.AddResults(ctx, "L-V", quality.ResultsInput{Results: []quality.ResultInput{{Characteristic: "br"}}})
	wantCode(t, "no value", err, apps.Invalid, "results[0].value")
	_, err = svc.AddResults(ctx, "L-NOPE", quality.ResultsInput{Results: values(1.2)})
	wantCode(t, "unknown lot", err, apps.NotFound, "")
	_, err = svc.AddResults(ctx, "L-V", quality.ResultsInput{})
	wantCode(t, "empty", err, apps.Invalid, "results")
	when := time.Date(2026, 11, 1, 8, 0, 0, 0, time.UTC)
	res, err := svc.AddResults(ctx, "L-V", quality.ResultsInput{Results: []quality.ResultInput{{Characteristic: "dimension", Value: f(0.01), MeasuredAt: &when, Subgroup: 3}}})
	if err != nil {
		t.Fatal(err)
	}
	if r := res.Results[0]; !r.MeasuredAt.Equal(when) || r.Subgroup != 3 {
		t.Fatalf("result = %+v", r)
	}
	// No grade, no plan: measured but not judged.
	if res.Inspection.Status != quality.StatusNotJudged {
		t.Fatalf("status = %s", res.Inspection.Status)
	}
}

func judgement(t *testing.T, in quality.LotInspection, key string) quality.Judgement {
	t.Helper()
	for _, j := range in.Characteristics {
		if j.Characteristic == key {
			return j
		}
	}
	t.Fatalf("no judgement of %s in %+v", key, in)
	return quality.Judgement{}
}
