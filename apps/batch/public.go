package batch

import (
	"context"
	"sort"
	"strings"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"

	"github.com/nxcloud/nxcloud/apps"
	"github.com/nxcloud/nxcloud/tenants"
)

// PublicFieldNames are the lot fields an owner may show on a label's public
// page; "attributes.<key>" shows one attribute.
var PublicFieldNames = []string{"code", "product", "kind", "grade", "quantity", "unit", "status", "line",
	"started_at", "ended_at", "shipped_at", "customer"}

// PublicFields are the fields shown publicly for the lots of one product.
type PublicFields struct {
	Product   string    `json:"product"`
	Fields    []string  `json:"fields"`
	UpdatedAt time.Time `json:"updated_at"`
}

// PublicFieldsInput sets the public fields of a product (an empty list shows
// nothing).
type PublicFieldsInput struct {
	Product string   `json:"product"`
	Fields  []string `json:"fields"`
}

// SetPublicFields sets which fields of a product's lots a label's public
// page shows. Errors: invalid.
func (s *Service) SetPublicFields(ctx context.Context, in PublicFieldsInput) (PublicFields, error) {
	if in.Product == "" {
		return PublicFields{}, apps.FieldError("product", "product is required")
	}
	if err := text("product", in.Product, 200); err != nil {
		return PublicFields{}, err
	}
	if len(in.Fields) > 50 {
		return PublicFields{}, apps.FieldError("fields", "at most 50 fields")
	}
	seen := map[string]bool{}
	fields := []string{}
	for _, f := range in.Fields {
		attr, isAttr := strings.CutPrefix(f, "attributes.")
		if !oneOf(f, PublicFieldNames) && !(isAttr && keyRE.MatchString(attr)) {
			return PublicFields{}, apps.FieldError("fields", "unknown field %q: use %s or attributes.<key>", clip(f), strings.Join(PublicFieldNames, ", "))
		}
		if !seen[f] {
			seen[f] = true
			fields = append(fields, f)
		}
	}
	sort.Strings(fields)
	out := PublicFields{Product: in.Product, Fields: fields}
	err := s.inTx(ctx, func(tx pgx.Tx) error {
		return tx.QueryRow(ctx, `INSERT INTO lot_public_fields (tenant_id, product, fields) VALUES (nx_require_tenant(), $1, $2)
			ON CONFLICT (tenant_id, product) DO UPDATE SET fields = EXCLUDED.fields, updated_at = now()
			RETURNING updated_at`, in.Product, fields).Scan(&out.UpdatedAt)
	})
	out.UpdatedAt = out.UpdatedAt.UTC()
	return out, err
}

// PublicFieldsList lists the public fields of every product that has some set.
func (s *Service) PublicFieldsList(ctx context.Context) ([]PublicFields, error) {
	out := []PublicFields{}
	err := s.inTx(ctx, func(tx pgx.Tx) error {
		rows, err := tx.Query(ctx, `SELECT product, fields, updated_at FROM lot_public_fields ORDER BY product`)
		if err != nil {
			return err
		}
		out, err = pgx.CollectRows(rows, func(r pgx.CollectableRow) (PublicFields, error) {
			var p PublicFields
			err := r.Scan(&p.Product, &p.Fields, &p.UpdatedAt)
			p.UpdatedAt = p.UpdatedAt.UTC()
			return p, err
		})
		return err
	})
	return out, err
}

// PublicLot is what a label's public page shows: only the fields the owner
// marked public for the lot's product.
type PublicLot struct {
	Fields map[string]any `json:"fields"`
}

// LabelPath is the public resolve path of a lot's label (its QR content,
// after the platform's base URL).
func LabelPath(tenantSlug, code string) string {
	return "/api/v1/public/lots/" + tenantSlug + "/" + code
}

// errNoLabel is the one answer for an unknown tenant, an unknown code, another
// tenant's code and a lot whose product shows nothing: all alike.
var errNoLabel = apps.Errorf(apps.NotFound, "no such label")

// Resolve answers a label scan: the public fields of the tenant's lot code.
// It needs no authentication and reveals nothing but the marked fields.
// Errors: not_found (for every lot that shows nothing, whatever the reason).
func (s *Service) Resolve(ctx context.Context, tenantSlug, code string) (PublicLot, error) {
	if !codeRE.MatchString(code) || len(tenantSlug) > 64 {
		return PublicLot{}, errNoLabel
	}
	var tenant uuid.UUID
	err := s.db.System.QueryRow(ctx, `SELECT id FROM tenants WHERE slug = $1 AND status = 'active'`, tenantSlug).Scan(&tenant)
	if err == pgx.ErrNoRows {
		return PublicLot{}, errNoLabel
	}
	if err != nil {
		return PublicLot{}, err
	}
	out := PublicLot{Fields: map[string]any{}}
	err = tenants.InTx(tenants.WithTenant(ctx, tenant), s.db.App, func(tx pgx.Tx) error {
		var fields []string
		var l Lot
		rows, err := tx.Query(ctx, `SELECT `+lotColumns+lotFrom+`WHERE l.code = $1`, code)
		if err != nil {
			return err
		}
		l, err = pgx.CollectExactlyOneRow(rows, scanLot)
		if err == pgx.ErrNoRows {
			return errNoLabel
		}
		if err != nil {
			return err
		}
		if err := tx.QueryRow(ctx, `SELECT fields FROM lot_public_fields WHERE product = $1`, l.Product).Scan(&fields); err == pgx.ErrNoRows {
			return errNoLabel
		} else if err != nil {
			return err
		}
		var ship struct {
			at       *time.Time
			customer string
		}
		if oneOf("shipped_at", fields) || oneOf("customer", fields) {
			err := tx.QueryRow(ctx, `SELECT s.shipped_at, c.name FROM shipment_lots sl JOIN shipments s ON s.id = sl.shipment_id
				JOIN customers c ON c.id = s.customer_id WHERE sl.lot_id = $1 ORDER BY s.shipped_at LIMIT 1`, l.ID).Scan(&ship.at, &ship.customer)
			if err != nil && err != pgx.ErrNoRows {
				return err
			}
		}
		for _, f := range fields {
			var v any
			switch f {
			case "code":
				v = l.Code
			case "product":
				v = l.Product
			case "kind":
				v = l.Kind
			case "grade":
				v = l.Grade
			case "quantity":
				v = l.Quantity
			case "unit":
				v = l.Unit
			case "status":
				v = l.Status
			case "line":
				v = l.Line
			case "started_at":
				v = timeText(l.StartedAt)
			case "ended_at":
				v = timeText(l.EndedAt)
			case "shipped_at":
				v = timeText(ship.at)
			case "customer":
				v = ship.customer
			default:
				attr, _ := strings.CutPrefix(f, "attributes.")
				v = l.Attributes[attr]
			}
			if v != nil && v != "" {
				out.Fields[f] = v
			}
		}
		if len(out.Fields) == 0 {
			return errNoLabel
		}
		return nil
	})
	return out, err
}
