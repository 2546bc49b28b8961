package recipe

import (
	"context"
	"encoding/json"
	"reflect"
	"strings"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"

	"github.com/nxcloud/nxcloud/apps"
	"github.com/nxcloud/nxcloud/tenants"
)

// transition moves a version from one of the statuses in from to to, under a
// row lock, after check (may be nil) accepts it; set are the extra SQL
// assignments ($3 is the actor, $4 the comment or reason). Every transition
// is appended to the version's history with its comment.
func (s *Service) transition(ctx context.Context, recipeRef, versionRef string, from []string, to string,
	check func(tx pgx.Tx, v Version) error, set string, text string, after func(tx pgx.Tx, v Version) error) (Version, error) {
	var out Version
	err := tenants.InTx(ctx, s.db.App, func(tx pgx.Tx) error {
		v, err := loadVersion(ctx, tx, recipeRef, versionRef, true)
		if err != nil {
			return err
		}
		ok := false
		for _, f := range from {
			ok = ok || v.Status == f
		}
		if !ok {
			return apps.Errorf(apps.Conflict, "recipe %s version %d is %s: only a version that is %s can become %s",
				v.Recipe, v.Number, v.Status, strings.Join(from, " or "), to)
		}
		if check != nil {
			if err := check(tx, v); err != nil {
				return err
			}
		}
		if _, err := tx.Exec(ctx, `UPDATE recipe_versions SET status = $2, updated_at = now(),
			history = history || jsonb_build_array(jsonb_build_object('status', $2::text, 'at', now(), 'by', $3::jsonb, 'comment', $4::text)),
			`+set+` WHERE id = $1`, v.ID, to, actorJSON(ctx), text); err != nil {
			return tenants.StoreError(err, "recipe version")
		}
		if after != nil {
			if err := after(tx, v); err != nil {
				return err
			}
		}
		out, err = loadVersion(ctx, tx, v.RecipeID.String(), v.ID.String(), false)
		return err
	})
	return out, err
}

// Submit sends a draft for review. Errors: not_found, conflict (not a
// draft), invalid (an empty recipe).
func (s *Service) Submit(ctx context.Context, recipeRef, versionRef string, in TransitionInput) (Version, error) {
	if len(in.Comment) > maxText {
		return Version{}, apps.FieldError("comment", "comment is at most %d bytes", maxText)
	}
	return s.transition(ctx, recipeRef, versionRef, []string{Draft}, InReview, func(_ pgx.Tx, v Version) error {
		if len(v.Parameters) == 0 && len(v.Ingredients) == 0 {
			return apps.Errorf(apps.Invalid, "recipe %s version %d has neither ingredients nor parameters", v.Recipe, v.Number)
		}
		return nil
	}, `submitted_at = now(), submitted_by = $3`, in.Comment, nil)
}

// Return sends a version under review back to draft with a reason. Errors:
// not_found, conflict (not in review), invalid (field reason).
func (s *Service) Return(ctx context.Context, recipeRef, versionRef string, in ReturnInput) (Version, error) {
	in.Reason = strings.TrimSpace(in.Reason)
	if in.Reason == "" || len(in.Reason) > maxText {
		return Version{}, apps.FieldError("reason", "reason is required (at most %d bytes)", maxText)
	}
	return s.transition(ctx, recipeRef, versionRef, []string{InReview}, Draft, nil,
		`returned_at = now(), returned_by = $3, return_reason = $4`, in.Reason, nil)
}

// Approve approves a version under review. Approval is a person's decision
// taken by someone other than the submitter (four eyes): an API key cannot
// approve, and a user cannot approve a version they submitted. Errors:
// not_found, conflict (not in review), forbidden.
func (s *Service) Approve(ctx context.Context, recipeRef, versionRef string, in TransitionInput) (Version, error) {
	if len(in.Comment) > maxText {
		return Version{}, apps.FieldError("comment", "comment is at most %d bytes", maxText)
	}
	p, _ := tenants.PrincipalFrom(ctx)
	if p.Kind != tenants.KindUser {
		return Version{}, apps.Errorf(apps.Forbidden, "a recipe version is approved by a person: sign in as a user (an API key cannot approve)")
	}
	return s.transition(ctx, recipeRef, versionRef, []string{InReview}, Approved, func(_ pgx.Tx, v Version) error {
		if v.SubmittedBy != nil && v.SubmittedBy.Kind == tenants.KindUser && v.SubmittedBy.ID == p.UserID.String() {
			return apps.Errorf(apps.Forbidden, "four eyes: recipe %s version %d was submitted by you; another person must approve it", v.Recipe, v.Number)
		}
		return nil
	}, `approved_at = now(), approved_by = $3`, in.Comment, nil)
}

// Release releases an approved version and downloads it to the lines named
// (each active device of a line whose model has parameters in the version
// gets its parameters). It returns the version and the downloads created.
// Errors: not_found (a line), conflict (not approved), invalid (field lines).
func (s *Service) Release(ctx context.Context, recipeRef, versionRef string, in ReleaseInput) (Version, []Download, error) {
	if len(in.Lines) > 100 {
		return Version{}, nil, apps.FieldError("lines", "at most 100 lines")
	}
	var downloads []Download
	v, err := s.transition(ctx, recipeRef, versionRef, []string{Approved}, Released, nil,
		`released_at = now(), released_by = $3`, "", func(tx pgx.Tx, v Version) error {
			v.Status = Released
			for _, l := range in.Lines {
				ds, err := s.createDownloads(ctx, tx, v, l, "lines")
				if err != nil {
					return err
				}
				downloads = append(downloads, ds...)
			}
			return nil
		})
	if err != nil {
		return Version{}, nil, err
	}
	return v, s.dispatchNow(ctx, downloads), nil
}

// Retire retires a released (or approved, never released) version: it is no
// longer downloaded, and its downloads still waiting for a reply are
// superseded. Errors: not_found, conflict.
func (s *Service) Retire(ctx context.Context, recipeRef, versionRef string, in TransitionInput) (Version, error) {
	if len(in.Comment) > maxText {
		return Version{}, apps.FieldError("comment", "comment is at most %d bytes", maxText)
	}
	var cleared []openDownload
	v, err := s.transition(ctx, recipeRef, versionRef, []string{Released, Approved}, Retired, nil,
		`retired_at = now(), retired_by = $3`, in.Comment, func(tx pgx.Tx, v Version) error {
			var err error
			cleared, err = supersedeOpen(ctx, tx, v.ID, uuid.Nil, "version retired")
			return err
		})
	if err == nil {
		s.clearRetained(ctx, cleared)
	}
	return v, err
}

// Diff is what changed from one version to another.
type Diff struct {
	Recipe       string         `json:"recipe"`
	From         int            `json:"from"`
	To           int            `json:"to"`
	NotesChanged bool           `json:"notes_changed"`
	Parameters   ParameterDiff  `json:"parameters"`
	Ingredients  IngredientDiff `json:"ingredients"`
}

// ParameterDiff lists parameters added, removed and changed (keyed by model
// and metric).
type ParameterDiff struct {
	Added   []Parameter       `json:"added"`
	Removed []Parameter       `json:"removed"`
	Changed []ParameterChange `json:"changed"`
}

// ParameterChange is one parameter in both versions with different values.
type ParameterChange struct {
	Model  string    `json:"model"`
	Metric string    `json:"metric"`
	From   Parameter `json:"from"`
	To     Parameter `json:"to"`
}

// IngredientDiff lists ingredients added, removed and changed (keyed by
// material).
type IngredientDiff struct {
	Added   []Ingredient       `json:"added"`
	Removed []Ingredient       `json:"removed"`
	Changed []IngredientChange `json:"changed"`
}

// IngredientChange is one material in both versions with different values.
type IngredientChange struct {
	Material string     `json:"material"`
	From     Ingredient `json:"from"`
	To       Ingredient `json:"to"`
}

// Compare returns the differences from version a to version b.
func Compare(a, b Version) Diff {
	d := Diff{Recipe: b.Recipe, From: a.Number, To: b.Number, NotesChanged: a.Notes != b.Notes,
		Parameters:  ParameterDiff{Added: []Parameter{}, Removed: []Parameter{}, Changed: []ParameterChange{}},
		Ingredients: IngredientDiff{Added: []Ingredient{}, Removed: []Ingredient{}, Changed: []IngredientChange{}}}
	pa := map[string]Parameter{}
	for _, p := range a.Parameters {
		pa[p.Model+"/"+p.Metric] = p
	}
	pb := map[string]bool{}
	for _, p := range b.Parameters {
		k := p.Model + "/" + p.Metric
		pb[k] = true
		old, ok := pa[k]
		switch {
		case !ok:
			d.Parameters.Added = append(d.Parameters.Added, p)
		case old != p:
			d.Parameters.Changed = append(d.Parameters.Changed, ParameterChange{Model: p.Model, Metric: p.Metric, From: old, To: p})
		}
	}
	for _, p := range a.Parameters {
		if !pb[p.Model+"/"+p.Metric] {
			d.Parameters.Removed = append(d.Parameters.Removed, p)
		}
	}
	ia := map[string]Ingredient{}
	for _, g := range a.Ingredients {
		ia[strings.ToLower(g.Material)] = g
	}
	ib := map[string]bool{}
	for _, g := range b.Ingredients {
		k := strings.ToLower(g.Material)
		ib[k] = true
		old, ok := ia[k]
		switch {
		case !ok:
			d.Ingredients.Added = append(d.Ingredients.Added, g)
		case !reflect.DeepEqual(old, g):
			d.Ingredients.Changed = append(d.Ingredients.Changed, IngredientChange{Material: g.Material, From: old, To: g})
		}
	}
	for _, g := range a.Ingredients {
		if !ib[strings.ToLower(g.Material)] {
			d.Ingredients.Removed = append(d.Ingredients.Removed, g)
		}
	}
	return d
}

// Diff compares two versions of a recipe (by number or id). Errors:
// not_found, invalid (field from or to missing).
func (s *Service) Diff(ctx context.Context, recipeRef, from, to string) (Diff, error) {
	if from == "" {
		return Diff{}, apps.FieldError("from", "from is required (a version number or id)")
	}
	if to == "" {
		return Diff{}, apps.FieldError("to", "to is required (a version number or id)")
	}
	var d Diff
	err := tenants.InTx(ctx, s.db.App, func(tx pgx.Tx) error {
		a, err := loadVersion(ctx, tx, recipeRef, from, false)
		if err != nil {
			return err
		}
		b, err := loadVersion(ctx, tx, recipeRef, to, false)
		if err != nil {
			return err
		}
		d = Compare(a, b)
		return nil
	})
	return d, err
}

// mustJSON encodes v (values of this package always encode).
func mustJSON(v any) []byte {
	b, err := json.Marshal(v)
	if err != nil {
		panic(err)
	}
	return b
}
