// Package recipe is the recipe management N app: versioned recipes, approval, download to equipment and deviation alarms.
//
// A recipe fixes how a grade is made: its composition (ingredients with a
// ratio or an amount and a tolerance) and its process parameters (a metric of
// a device model with a setpoint and lower/upper limits). Versions move
// draft → in_review → approved → released → retired; only a draft is
// editable. Releasing a version to a line downloads each device's parameters
// over MQTT (v1/{tenant}/{device}/cmd/recipe, QoS 1, retained) and tracks the
// device's reply; while a lot made with a version runs on a device, telemetry
// outside the version's limits raises deviations.
package recipe

import (
	"fmt"
	"log/slog"
	"math"
	"strings"
	"time"

	"github.com/google/uuid"

	"github.com/nxcloud/nxcloud/apps"
	"github.com/nxcloud/nxcloud/tenants"
)

// Downlink publishes a command to a device (the embedded broker, or an
// external MQTT cluster through a client).
type Downlink interface {
	Publish(topic string, payload []byte, retain bool, qos byte) error
}

// Version statuses.
const (
	Draft    = "draft"
	InReview = "in_review"
	Approved = "approved"
	Released = "released"
	Retired  = "retired"
)

// Service is the recipe app.
type Service struct {
	db       *tenants.DB
	log      *slog.Logger
	downlink Downlink

	// Now is the clock deviation detection scans up to (minus Settle); tests
	// move it so that the process's own jobs, on the shared database, leave
	// their runs alone.
	Now func() time.Time

	// MaxAttempts is how often a download is published before it times out
	// (default 6); RetryBase the wait after the first publish, doubled after
	// each further one (default 30 s) up to RetryMax (default 30 min). A
	// download times out RetryMax after... its last attempt's wait ends.
	MaxAttempts int
	RetryBase   time.Duration
	RetryMax    time.Duration
	// Settle is how far behind now deviation detection scans, so telemetry
	// that arrives a little late (ingest batching) is seen in order (default
	// 10 s). Lookback is how far before its watermark each scan re-reads, so
	// points arriving later than that are still counted (default 2 min);
	// when a run has ended, a final pass re-reads all of it.
	Settle   time.Duration
	Lookback time.Duration
}

// NewService returns the recipe app on db.
func NewService(db *tenants.DB, downlink Downlink, log *slog.Logger) *Service {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Service{db: db, log: log, downlink: downlink, Now: time.Now,
		MaxAttempts: 6, RetryBase: 30 * time.Second, RetryMax: 30 * time.Minute, Settle: 10 * time.Second, Lookback: 2 * time.Minute}
}

// Actor is who did something: a user or an API key, with its name.
type Actor struct {
	Kind string `json:"kind"`
	ID   string `json:"id,omitempty"`
	Name string `json:"name"`
}

func actorOf(p tenants.Principal) Actor {
	a := Actor{Kind: p.Kind, Name: p.Name}
	switch p.Kind {
	case tenants.KindUser:
		a.ID = p.UserID.String()
	case tenants.KindAPIKey:
		a.ID = p.KeyID.String()
	}
	if a.Kind == "" {
		a.Kind = "system"
	}
	return a
}

// Ingredient is one material of a recipe's composition: either a ratio (wt %
// of the charge) or an amount with a unit, with an absolute tolerance in the
// same unit. One ingredient of a ratio composition may be the balance (its
// ratio is 100 minus the others', e.g. "Fe balance").
type Ingredient struct {
	Material  string   `json:"material"`
	Ratio     *float64 `json:"ratio,omitempty"`
	Amount    *float64 `json:"amount,omitempty"`
	Unit      string   `json:"unit,omitempty"`
	Tolerance float64  `json:"tolerance"`
	Balance   bool     `json:"balance,omitempty"`
}

// Parameter is a process parameter: a metric of a device model with a
// setpoint and the limits telemetry must stay within (inclusive). Unit is the
// metric's; Step names the process step it belongs to.
type Parameter struct {
	Model    string  `json:"model"`
	Metric   string  `json:"metric"`
	Setpoint float64 `json:"setpoint"`
	Lower    float64 `json:"lower"`
	Upper    float64 `json:"upper"`
	Unit     string  `json:"unit"`
	Step     string  `json:"step,omitempty"`
}

// ParameterInput is a parameter as a client sends it (unit optional: when
// given it must be the metric's).
type ParameterInput struct {
	Model    string   `json:"model"`
	Metric   string   `json:"metric"`
	Setpoint *float64 `json:"setpoint"`
	Lower    *float64 `json:"lower"`
	Upper    *float64 `json:"upper"`
	Unit     string   `json:"unit,omitempty"`
	Step     string   `json:"step,omitempty"`
}

// Recipe is a recipe with a summary of its versions.
type Recipe struct {
	ID          uuid.UUID        `json:"id"`
	Code        string           `json:"code"`
	Name        string           `json:"name"`
	Product     string           `json:"product"`
	Grade       string           `json:"grade"`
	Description string           `json:"description"`
	CreatedAt   time.Time        `json:"created_at"`
	CreatedBy   string           `json:"created_by"`
	Versions    []VersionSummary `json:"versions"`
}

// VersionSummary is a version without its content.
type VersionSummary struct {
	ID         uuid.UUID  `json:"id"`
	Number     int        `json:"number"`
	Status     string     `json:"status"`
	UpdatedAt  time.Time  `json:"updated_at"`
	ReleasedAt *time.Time `json:"released_at,omitempty"`
}

// Version is one version of a recipe with its content and the record of who
// moved it through the workflow and when.
type Version struct {
	ID           uuid.UUID    `json:"id"`
	RecipeID     uuid.UUID    `json:"recipe_id"`
	Recipe       string       `json:"recipe"`
	Grade        string       `json:"grade"`
	Number       int          `json:"number"`
	Status       string       `json:"status"`
	Notes        string       `json:"notes"`
	Ingredients  []Ingredient `json:"ingredients"`
	Parameters   []Parameter  `json:"parameters"`
	CreatedAt    time.Time    `json:"created_at"`
	CreatedBy    Actor        `json:"created_by"`
	UpdatedAt    time.Time    `json:"updated_at"`
	SubmittedAt  *time.Time   `json:"submitted_at,omitempty"`
	SubmittedBy  *Actor       `json:"submitted_by,omitempty"`
	ApprovedAt   *time.Time   `json:"approved_at,omitempty"`
	ApprovedBy   *Actor       `json:"approved_by,omitempty"`
	ReleasedAt   *time.Time   `json:"released_at,omitempty"`
	ReleasedBy   *Actor       `json:"released_by,omitempty"`
	RetiredAt    *time.Time   `json:"retired_at,omitempty"`
	RetiredBy    *Actor       `json:"retired_by,omitempty"`
	ReturnedAt   *time.Time   `json:"returned_at,omitempty"`
	ReturnedBy   *Actor       `json:"returned_by,omitempty"`
	ReturnReason string       `json:"return_reason,omitempty"`
	// History is every transition, oldest first.
	History []Transition `json:"history"`
}

// Transition is one step of a version through the workflow.
type Transition struct {
	Status  string    `json:"status"`
	At      time.Time `json:"at"`
	By      Actor     `json:"by"`
	Comment string    `json:"comment"`
}

// RecipeInput creates a recipe with its first (draft) version.
type RecipeInput struct {
	Code        string           `json:"code"`
	Name        string           `json:"name"`
	Product     string           `json:"product"`
	Grade       string           `json:"grade"`
	Description string           `json:"description"`
	Notes       string           `json:"notes"`
	Ingredients []Ingredient     `json:"ingredients"`
	Parameters  []ParameterInput `json:"parameters"`
}

// ContentInput replaces a draft version's content.
type ContentInput struct {
	Notes       string           `json:"notes"`
	Ingredients []Ingredient     `json:"ingredients"`
	Parameters  []ParameterInput `json:"parameters"`
}

// NewVersionInput starts a new draft version as a copy of version From.
type NewVersionInput struct {
	From  int    `json:"from"`
	Notes string `json:"notes,omitempty"`
}

// TransitionInput is the body of submit, approve and retire: a comment
// (may be empty), recorded in the audit log with the request.
type TransitionInput struct {
	Comment string `json:"comment"`
}

// ReturnInput sends a version under review back to draft, with a reason.
type ReturnInput struct {
	Reason string `json:"reason"`
}

// ReleaseInput releases an approved version and downloads it to the lines
// named (keys or ids; may be empty).
type ReleaseInput struct {
	Lines []string `json:"lines"`
}

// DownloadInput downloads a released version to one more line.
type DownloadInput struct {
	Line string `json:"line"`
}

func finite(v float64) bool { return !math.IsNaN(v) && !math.IsInf(v, 0) }

const maxText = 2000

// ratioSum is what a ratio composition must add up to (wt %), and how close.
const (
	ratioSum = 100.0
	ratioEps = 1e-6
)

// checkIngredients validates a composition in place (it fills the balance
// ingredient's ratio). Errors: invalid with the field.
func checkIngredients(in []Ingredient) error {
	if len(in) > 100 {
		return apps.FieldError("ingredients", "at most 100 ingredients")
	}
	seen := map[string]bool{}
	mode := ""
	balance := -1
	sum := 0.0
	for i := range in {
		g := &in[i]
		f := func(name string) string { return fmt.Sprintf("ingredients[%d].%s", i, name) }
		g.Material = strings.TrimSpace(g.Material)
		if g.Material == "" || len(g.Material) > 100 {
			return apps.FieldError(f("material"), "material is required (at most 100 bytes)")
		}
		if seen[strings.ToLower(g.Material)] {
			return apps.FieldError(f("material"), "material %q appears twice", g.Material)
		}
		seen[strings.ToLower(g.Material)] = true
		if !finite(g.Tolerance) || g.Tolerance < 0 {
			return apps.FieldError(f("tolerance"), "tolerance must be a finite number ≥ 0")
		}
		m := ""
		switch {
		case g.Balance:
			// Its ratio (as stored, when a version is sent back) is recomputed.
			if g.Amount != nil {
				return apps.FieldError(f("balance"), "the balance ingredient takes no amount: its ratio is 100 minus the others")
			}
			g.Ratio = nil
			if balance >= 0 {
				return apps.FieldError(f("balance"), "only one ingredient may be the balance")
			}
			balance, m = i, "ratio"
		case g.Ratio != nil && g.Amount != nil:
			return apps.FieldError(f("ratio"), "give a ratio or an amount, not both")
		case g.Ratio != nil:
			if !finite(*g.Ratio) || *g.Ratio <= 0 || *g.Ratio > ratioSum {
				return apps.FieldError(f("ratio"), "ratio must be a percentage in (0, 100]")
			}
			if g.Unit != "" && g.Unit != "%" {
				return apps.FieldError(f("unit"), "a ratio is in %% (wt %%)")
			}
			g.Unit = "%"
			sum += *g.Ratio
			m = "ratio"
		case g.Amount != nil:
			if !finite(*g.Amount) || *g.Amount <= 0 {
				return apps.FieldError(f("amount"), "amount must be a finite number > 0")
			}
			if strings.TrimSpace(g.Unit) == "" || len(g.Unit) > 20 {
				return apps.FieldError(f("unit"), "an amount needs a unit (e.g. kg)")
			}
			m = "amount"
		default:
			return apps.FieldError(f("ratio"), "give a ratio (wt %%) or an amount")
		}
		if mode != "" && m != mode {
			return apps.FieldError(f(m), "a composition is all ratios or all amounts, not both")
		}
		mode = m
	}
	if mode != "ratio" {
		return nil
	}
	if balance >= 0 {
		rest := ratioSum - sum
		if rest <= ratioEps {
			return apps.FieldError("ingredients", "ratios add up to %g %%: nothing is left for the balance ingredient", sum)
		}
		rest = math.Round(rest*1e9) / 1e9
		in[balance].Ratio, in[balance].Unit = &rest, "%"
		return nil
	}
	if math.Abs(sum-ratioSum) > ratioEps {
		return apps.FieldError("ingredients", "ratios add up to %g %%, want 100 %% (or mark one ingredient as the balance)", sum)
	}
	return nil
}

// metricInfo is what validation needs of a metric of the tenant.
type metricInfo struct {
	id       int32
	unit     string
	min, max *float64
}

// checkParameters validates parameters against the tenant's device models
// (metrics maps "model/metric" to the metric). Errors: invalid with the field.
func checkParameters(in []ParameterInput, models map[string]bool, metrics map[string]metricInfo) ([]Parameter, error) {
	if len(in) > 500 {
		return nil, apps.FieldError("parameters", "at most 500 parameters")
	}
	out := make([]Parameter, 0, len(in))
	seen := map[string]bool{}
	for i, p := range in {
		f := func(name string) string { return fmt.Sprintf("parameters[%d].%s", i, name) }
		if !models[p.Model] {
			return nil, apps.FieldError(f("model"), "unknown device model %q", clipText(p.Model, 64))
		}
		m, ok := metrics[p.Model+"/"+p.Metric]
		if !ok {
			return nil, apps.FieldError(f("metric"), "device model %q has no metric %q", p.Model, clipText(p.Metric, 64))
		}
		if seen[p.Model+"/"+p.Metric] {
			return nil, apps.FieldError(f("metric"), "metric %q of model %q appears twice: a device gets one setpoint per metric", p.Metric, p.Model)
		}
		seen[p.Model+"/"+p.Metric] = true
		for _, x := range []struct {
			name string
			v    *float64
		}{{"setpoint", p.Setpoint}, {"lower", p.Lower}, {"upper", p.Upper}} {
			if x.v == nil || !finite(*x.v) {
				return nil, apps.FieldError(f(x.name), "%s is required (a finite number)", x.name)
			}
		}
		if *p.Lower > *p.Upper {
			return nil, apps.FieldError(f("lower"), "lower limit %g is above upper limit %g", *p.Lower, *p.Upper)
		}
		if *p.Setpoint < *p.Lower || *p.Setpoint > *p.Upper {
			return nil, apps.FieldError(f("setpoint"), "setpoint %g is outside the limits [%g, %g]", *p.Setpoint, *p.Lower, *p.Upper)
		}
		if (m.min != nil && *p.Setpoint < *m.min) || (m.max != nil && *p.Setpoint > *m.max) {
			return nil, apps.FieldError(f("setpoint"), "setpoint %g is outside the metric's valid range", *p.Setpoint)
		}
		if p.Unit != "" && p.Unit != m.unit {
			return nil, apps.FieldError(f("unit"), "metric %q is in %q, not %q", p.Metric, m.unit, clipText(p.Unit, 20))
		}
		if len(p.Step) > 100 {
			return nil, apps.FieldError(f("step"), "step is at most 100 bytes")
		}
		out = append(out, Parameter{Model: p.Model, Metric: p.Metric, Setpoint: *p.Setpoint, Lower: *p.Lower,
			Upper: *p.Upper, Unit: m.unit, Step: strings.TrimSpace(p.Step)})
	}
	return out, nil
}

func clipText(s string, n int) string {
	s = strings.ToValidUTF8(s, "?")
	if len(s) > n {
		return s[:n] + "…"
	}
	return s
}
