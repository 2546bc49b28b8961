package recipe

import (
	"context"
	"encoding/json"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"

	"github.com/nxcloud/nxcloud/tenants"
)

// ParameterSet is a sector template's standard process parameters for one
// device model of the enterprise (DESIGN §2): starting values a recipe copies
// into its parameters and adjusts.
type ParameterSet struct {
	Key        string      `json:"key"`
	Name       string      `json:"name"`
	Model      string      `json:"model"`
	ModelID    uuid.UUID   `json:"model_id"`
	Parameters []Parameter `json:"parameters"`
}

// ParameterSets returns the recipe parameter sets of the enterprise's sector,
// for the device models and metrics the enterprise has (units are its
// metrics').
func (s *Service) ParameterSets(ctx context.Context) ([]ParameterSet, error) {
	out := []ParameterSet{}
	err := tenants.InTx(ctx, s.db.App, func(tx pgx.Tx) error {
		var raw []byte
		if err := tx.QueryRow(ctx, `SELECT coalesce(s.template->'recipe_parameter_sets', '[]')
			FROM tenants t JOIN sectors s ON s.id = t.sector_id WHERE t.id = nx_require_tenant()`).Scan(&raw); err != nil {
			return tenants.StoreError(err, "sector")
		}
		var sets []tenants.RecipeParameterSet
		if err := json.Unmarshal(raw, &sets); err != nil {
			return err
		}
		rows, err := tx.Query(ctx, `SELECT key, id FROM device_models`)
		if err != nil {
			return err
		}
		models := map[string]uuid.UUID{}
		for rows.Next() {
			var k string
			var id uuid.UUID
			if err := rows.Scan(&k, &id); err != nil {
				rows.Close()
				return err
			}
			models[k] = id
		}
		rows.Close()
		if err := rows.Err(); err != nil {
			return err
		}
		_, metrics, err := catalog(ctx, tx)
		if err != nil {
			return err
		}
		for _, set := range sets {
			id, ok := models[set.Model]
			if !ok {
				continue
			}
			ps := ParameterSet{Key: set.Key, Name: set.Name, Model: set.Model, ModelID: id, Parameters: []Parameter{}}
			for _, p := range set.Parameters {
				m, ok := metrics[set.Model+"/"+p.Metric]
				if !ok {
					continue
				}
				ps.Parameters = append(ps.Parameters, Parameter{Model: set.Model, Metric: p.Metric, Setpoint: p.Setpoint,
					Lower: p.Lower, Upper: p.Upper, Unit: m.unit, Step: p.Step})
			}
			out = append(out, ps)
		}
		return nil
	})
	return out, err
}
