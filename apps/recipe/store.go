package recipe

import (
	"context"
	"encoding/json"
	"regexp"
	"strconv"
	"strings"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"

	"github.com/nxcloud/nxcloud/apps"
	"github.com/nxcloud/nxcloud/tenants"
)

const versionColumns = `v.id, v.recipe_id, r.code, r.grade_code, v.number, v.status, v.notes, v.ingredients, v.parameters,
	v.created_at, v.created_by, v.updated_at, v.submitted_at, v.submitted_by, v.approved_at, v.approved_by,
	v.released_at, v.released_by, v.retired_at, v.retired_by, v.returned_at, v.returned_by, v.return_reason, v.history`

const versionFrom = ` FROM recipe_versions v JOIN recipes r ON r.id = v.recipe_id`

func scanVersion(row pgx.Row) (Version, error) {
	var v Version
	var ingredients, parameters, created []byte
	var submitted, approved, released, retired, returned, history []byte
	err := row.Scan(&v.ID, &v.RecipeID, &v.Recipe, &v.Grade, &v.Number, &v.Status, &v.Notes, &ingredients, &parameters,
		&v.CreatedAt, &created, &v.UpdatedAt, &v.SubmittedAt, &submitted, &v.ApprovedAt, &approved,
		&v.ReleasedAt, &released, &v.RetiredAt, &retired, &v.ReturnedAt, &returned, &v.ReturnReason, &history)
	if err != nil {
		return v, err
	}
	if err := json.Unmarshal(ingredients, &v.Ingredients); err != nil {
		return v, err
	}
	if err := json.Unmarshal(parameters, &v.Parameters); err != nil {
		return v, err
	}
	if err := json.Unmarshal(history, &v.History); err != nil {
		return v, err
	}
	if err := json.Unmarshal(created, &v.CreatedBy); err != nil {
		return v, err
	}
	for _, a := range []struct {
		raw []byte
		dst **Actor
	}{{submitted, &v.SubmittedBy}, {approved, &v.ApprovedBy}, {released, &v.ReleasedBy}, {retired, &v.RetiredBy}, {returned, &v.ReturnedBy}} {
		if len(a.raw) > 0 {
			var x Actor
			if err := json.Unmarshal(a.raw, &x); err != nil {
				return v, err
			}
			*a.dst = &x
		}
	}
	if v.Ingredients == nil {
		v.Ingredients = []Ingredient{}
	}
	if v.Parameters == nil {
		v.Parameters = []Parameter{}
	}
	if v.History == nil {
		v.History = []Transition{}
	}
	return v, nil
}

type recipeRow struct {
	id    uuid.UUID
	code  string
	grade string
}

// resolveRecipe finds a recipe by id or code.
func resolveRecipe(ctx context.Context, tx pgx.Tx, ref string) (recipeRow, error) {
	var r recipeRow
	q := `SELECT id, code, grade_code FROM recipes WHERE code = $1`
	var arg any = ref
	if id, err := uuid.Parse(ref); err == nil {
		q, arg = `SELECT id, code, grade_code FROM recipes WHERE id = $1`, id
	}
	err := tx.QueryRow(ctx, q, arg).Scan(&r.id, &r.code, &r.grade)
	return r, tenants.StoreError(err, "recipe")
}

// loadVersion finds a version of a recipe by number or id, locked for update
// when lock is set.
func loadVersion(ctx context.Context, tx pgx.Tx, recipeRef, versionRef string, lock bool) (Version, error) {
	r, err := resolveRecipe(ctx, tx, recipeRef)
	if err != nil {
		return Version{}, err
	}
	q := `SELECT ` + versionColumns + versionFrom + ` WHERE v.recipe_id = $1 AND `
	var arg any
	if n, err := strconv.Atoi(versionRef); err == nil && n > 0 {
		q, arg = q+`v.number = $2`, n
	} else if id, err := uuid.Parse(versionRef); err == nil {
		q, arg = q+`v.id = $2`, id
	} else {
		return Version{}, apps.Errorf(apps.NotFound, "recipe version not found")
	}
	if lock {
		q += ` FOR UPDATE OF v`
	}
	v, err := scanVersion(tx.QueryRow(ctx, q, r.id, arg))
	return v, tenants.StoreError(err, "recipe version")
}

// catalog loads the tenant's device models and metrics for validation.
func catalog(ctx context.Context, tx pgx.Tx) (map[string]bool, map[string]metricInfo, error) {
	rows, err := tx.Query(ctx, `SELECT m.key, x.id, x.key, x.unit, x.min_value, x.max_value
		FROM device_models m JOIN metrics x ON x.device_model_id = m.id`)
	if err != nil {
		return nil, nil, err
	}
	defer rows.Close()
	models, metrics := map[string]bool{}, map[string]metricInfo{}
	for rows.Next() {
		var model, key string
		var m metricInfo
		if err := rows.Scan(&model, &m.id, &key, &m.unit, &m.min, &m.max); err != nil {
			return nil, nil, err
		}
		models[model] = true
		metrics[model+"/"+key] = m
	}
	return models, metrics, rows.Err()
}

func checkContent(ctx context.Context, tx pgx.Tx, notes string, ing []Ingredient, params []ParameterInput) ([]Ingredient, []Parameter, error) {
	if len(notes) > maxText {
		return nil, nil, apps.FieldError("notes", "notes are at most %d bytes", maxText)
	}
	if ing == nil {
		ing = []Ingredient{}
	}
	if err := checkIngredients(ing); err != nil {
		return nil, nil, err
	}
	models, metrics, err := catalog(ctx, tx)
	if err != nil {
		return nil, nil, err
	}
	ps, err := checkParameters(params, models, metrics)
	return ing, ps, err
}

func actorJSON(ctx context.Context) []byte {
	p, _ := tenants.PrincipalFrom(ctx)
	b, _ := json.Marshal(actorOf(p))
	return b
}

// CreateRecipe creates a recipe for a grade of the tenant with its first
// version, a draft. Errors: invalid (with field), conflict (code taken).
func (s *Service) CreateRecipe(ctx context.Context, in RecipeInput) (Recipe, error) {
	in.Code, in.Name, in.Grade = strings.TrimSpace(in.Code), strings.TrimSpace(in.Name), strings.TrimSpace(in.Grade)
	switch {
	case !codeRE.MatchString(in.Code):
		return Recipe{}, apps.FieldError("code", "code: 1-64 letters, digits or _ . : / - (starting with a letter or digit)")
	case in.Name == "" || len(in.Name) > 200:
		return Recipe{}, apps.FieldError("name", "name is required (at most 200 bytes)")
	case in.Grade == "":
		return Recipe{}, apps.FieldError("grade", "grade is required")
	case len(in.Product) > 200:
		return Recipe{}, apps.FieldError("product", "product is at most 200 bytes")
	case len(in.Description) > maxText:
		return Recipe{}, apps.FieldError("description", "description is at most %d bytes", maxText)
	}
	var id uuid.UUID
	err := tenants.InTx(ctx, s.db.App, func(tx pgx.Tx) error {
		var ok bool
		if err := tx.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM grades WHERE code = $1)`, in.Grade).Scan(&ok); err != nil {
			return err
		}
		if !ok {
			return apps.FieldError("grade", "grade %q is not a grade of this enterprise", clipText(in.Grade, 64))
		}
		ing, params, err := checkContent(ctx, tx, in.Notes, in.Ingredients, in.Parameters)
		if err != nil {
			return err
		}
		p, _ := tenants.PrincipalFrom(ctx)
		err = tx.QueryRow(ctx, `INSERT INTO recipes (tenant_id, code, name, product, grade_code, description, created_by)
			VALUES (nx_require_tenant(), $1, $2, $3, $4, $5, $6) RETURNING id`,
			in.Code, in.Name, strings.TrimSpace(in.Product), in.Grade, in.Description, actorOf(p).Name).Scan(&id)
		if err != nil {
			return tenants.StoreError(err, "recipe "+in.Code)
		}
		return insertVersion(ctx, tx, id, 1, in.Notes, ing, params)
	})
	if err != nil {
		return Recipe{}, err
	}
	return s.Recipe(ctx, id.String())
}

func insertVersion(ctx context.Context, tx pgx.Tx, recipe uuid.UUID, number int, notes string, ing []Ingredient, params []Parameter) error {
	ib, _ := json.Marshal(ing)
	pb, _ := json.Marshal(params)
	_, err := tx.Exec(ctx, `INSERT INTO recipe_versions (tenant_id, recipe_id, number, notes, ingredients, parameters, created_by)
		VALUES (nx_require_tenant(), $1, $2, $3, $4, $5, $6)`, recipe, number, notes, ib, pb, actorJSON(ctx))
	return tenants.StoreError(err, "recipe version")
}

// Recipes lists the tenant's recipes, optionally of one grade or product.
func (s *Service) Recipes(ctx context.Context, grade, product string) ([]Recipe, error) {
	var out []Recipe
	err := tenants.InTx(ctx, s.db.App, func(tx pgx.Tx) error {
		rows, err := tx.Query(ctx, `SELECT id, code, name, product, grade_code, description, created_at, created_by
			FROM recipes WHERE ($1 = '' OR grade_code = $1) AND ($2 = '' OR product = $2) ORDER BY code`, grade, product)
		if err != nil {
			return err
		}
		out, err = pgx.CollectRows(rows, scanRecipe)
		if err != nil {
			return err
		}
		for i := range out {
			if out[i].Versions, err = versionSummaries(ctx, tx, out[i].ID); err != nil {
				return err
			}
		}
		return nil
	})
	if out == nil {
		out = []Recipe{}
	}
	return out, err
}

func scanRecipe(r pgx.CollectableRow) (Recipe, error) {
	var x Recipe
	return x, r.Scan(&x.ID, &x.Code, &x.Name, &x.Product, &x.Grade, &x.Description, &x.CreatedAt, &x.CreatedBy)
}

func versionSummaries(ctx context.Context, tx pgx.Tx, recipe uuid.UUID) ([]VersionSummary, error) {
	rows, err := tx.Query(ctx, `SELECT id, number, status, updated_at, released_at FROM recipe_versions
		WHERE recipe_id = $1 ORDER BY number`, recipe)
	if err != nil {
		return nil, err
	}
	return pgx.CollectRows(rows, func(r pgx.CollectableRow) (VersionSummary, error) {
		var v VersionSummary
		return v, r.Scan(&v.ID, &v.Number, &v.Status, &v.UpdatedAt, &v.ReleasedAt)
	})
}

// Recipe returns a recipe (by id or code) with its versions. Errors: not_found.
func (s *Service) Recipe(ctx context.Context, ref string) (Recipe, error) {
	var out Recipe
	err := tenants.InTx(ctx, s.db.App, func(tx pgx.Tx) error {
		r, err := resolveRecipe(ctx, tx, ref)
		if err != nil {
			return err
		}
		rows, err := tx.Query(ctx, `SELECT id, code, name, product, grade_code, description, created_at, created_by
			FROM recipes WHERE id = $1`, r.id)
		if err != nil {
			return err
		}
		if out, err = pgx.CollectExactlyOneRow(rows, scanRecipe); err != nil {
			return tenants.StoreError(err, "recipe")
		}
		out.Versions, err = versionSummaries(ctx, tx, r.id)
		return err
	})
	return out, err
}

// Version returns a version of a recipe (recipe by id or code, version by
// number or id). Errors: not_found.
func (s *Service) Version(ctx context.Context, recipeRef, versionRef string) (Version, error) {
	var out Version
	err := tenants.InTx(ctx, s.db.App, func(tx pgx.Tx) error {
		var err error
		out, err = loadVersion(ctx, tx, recipeRef, versionRef, false)
		return err
	})
	return out, err
}

// NewVersion starts a new draft as a copy of version in.From. Errors:
// not_found, invalid (field from).
func (s *Service) NewVersion(ctx context.Context, recipeRef string, in NewVersionInput) (Version, error) {
	if in.From < 1 {
		return Version{}, apps.FieldError("from", "from is the number of the version to copy (≥ 1)")
	}
	if len(in.Notes) > maxText {
		return Version{}, apps.FieldError("notes", "notes are at most %d bytes", maxText)
	}
	var out Version
	err := tenants.InTx(ctx, s.db.App, func(tx pgx.Tx) error {
		r, err := resolveRecipe(ctx, tx, recipeRef)
		if err != nil {
			return err
		}
		// Serialise version numbering per recipe.
		if _, err := tx.Exec(ctx, `SELECT 1 FROM recipes WHERE id = $1 FOR UPDATE`, r.id); err != nil {
			return err
		}
		from, err := loadVersion(ctx, tx, r.id.String(), strconv.Itoa(in.From), false)
		if err != nil {
			if apps.Code(err) == apps.NotFound {
				return apps.FieldError("from", "recipe %s has no version %d", r.code, in.From)
			}
			return err
		}
		var next int
		if err := tx.QueryRow(ctx, `SELECT coalesce(max(number), 0) + 1 FROM recipe_versions WHERE recipe_id = $1`, r.id).Scan(&next); err != nil {
			return err
		}
		notes := in.Notes
		if notes == "" {
			notes = from.Notes
		}
		if err := insertVersion(ctx, tx, r.id, next, notes, from.Ingredients, from.Parameters); err != nil {
			return err
		}
		out, err = loadVersion(ctx, tx, r.id.String(), strconv.Itoa(next), false)
		return err
	})
	return out, err
}

// UpdateDraft replaces a draft's content. Errors: not_found, invalid (with
// field), conflict (the version is not a draft: only drafts are editable,
// released versions are immutable).
func (s *Service) UpdateDraft(ctx context.Context, recipeRef, versionRef string, in ContentInput) (Version, error) {
	var out Version
	err := tenants.InTx(ctx, s.db.App, func(tx pgx.Tx) error {
		v, err := loadVersion(ctx, tx, recipeRef, versionRef, true)
		if err != nil {
			return err
		}
		if v.Status != Draft {
			return apps.Errorf(apps.Conflict, "recipe %s version %d is %s: only a draft is editable (start a new version from it)", v.Recipe, v.Number, v.Status)
		}
		ing, params, err := checkContent(ctx, tx, in.Notes, in.Ingredients, in.Parameters)
		if err != nil {
			return err
		}
		ib, _ := json.Marshal(ing)
		pb, _ := json.Marshal(params)
		if _, err := tx.Exec(ctx, `UPDATE recipe_versions SET notes = $2, ingredients = $3, parameters = $4, updated_at = now()
			WHERE id = $1`, v.ID, in.Notes, ib, pb); err != nil {
			return tenants.StoreError(err, "recipe version")
		}
		out, err = loadVersion(ctx, tx, v.RecipeID.String(), v.ID.String(), false)
		return err
	})
	return out, err
}

var codeRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9_.:/-]{0,63}$`)
