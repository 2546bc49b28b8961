package batch

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"strconv"
	"strings"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"

	"github.com/nxcloud/nxcloud/apps"
	"github.com/nxcloud/nxcloud/tenants"
)

// Lot is a batch: a raw-material lot, work in progress or a finished lot.
type Lot struct {
	ID              uuid.UUID      `json:"id"`
	Code            string         `json:"code"`
	Product         string         `json:"product"`
	Kind            string         `json:"kind"`
	Grade           string         `json:"grade,omitempty"`
	RecipeVersionID *uuid.UUID     `json:"recipe_version_id,omitempty"`
	Line            string         `json:"line,omitempty"`
	Quantity        float64        `json:"quantity"`
	Unit            string         `json:"unit"`
	Status          string         `json:"status"`
	StartedAt       *time.Time     `json:"started_at,omitempty"`
	EndedAt         *time.Time     `json:"ended_at,omitempty"`
	Shift           string         `json:"shift"`
	Operator        string         `json:"operator"`
	Supplier        string         `json:"supplier"`
	SupplierLot     string         `json:"supplier_lot"`
	Attributes      map[string]any `json:"attributes"`
	CreatedAt       time.Time      `json:"created_at"`
	UpdatedAt       time.Time      `json:"updated_at"`
}

// LotInput creates a lot.
type LotInput struct {
	Code            string         `json:"code"`
	Product         string         `json:"product"`
	Kind            string         `json:"kind"`
	Grade           string         `json:"grade"`
	RecipeVersionID *uuid.UUID     `json:"recipe_version_id"`
	Line            string         `json:"line"`
	Quantity        float64        `json:"quantity"`
	Unit            string         `json:"unit"`
	Status          string         `json:"status"`
	StartedAt       *time.Time     `json:"started_at"`
	EndedAt         *time.Time     `json:"ended_at"`
	Shift           string         `json:"shift"`
	Operator        string         `json:"operator"`
	Supplier        string         `json:"supplier"`
	SupplierLot     string         `json:"supplier_lot"`
	Attributes      map[string]any `json:"attributes"`
}

// LotPatch changes a lot's status, end, quantity or people; absent fields stay.
type LotPatch struct {
	Status    *string    `json:"status"`
	StartedAt *time.Time `json:"started_at"`
	EndedAt   *time.Time `json:"ended_at"`
	Quantity  *float64   `json:"quantity"`
	Shift     *string    `json:"shift"`
	Operator  *string    `json:"operator"`
}

const lotColumns = `l.id, l.code, l.product, l.kind, coalesce(l.grade_code, ''), l.recipe_version_id, coalesce(ln.key, ''),
	l.quantity::float8, l.unit, l.status, l.started_at, l.ended_at, l.shift, l.operator, l.supplier, l.supplier_lot,
	l.attributes, l.created_at, l.updated_at`

const lotFrom = ` FROM lots l LEFT JOIN lines ln ON ln.id = l.line_id `

func scanLot(r pgx.CollectableRow) (Lot, error) {
	var l Lot
	err := r.Scan(&l.ID, &l.Code, &l.Product, &l.Kind, &l.Grade, &l.RecipeVersionID, &l.Line, &l.Quantity, &l.Unit,
		&l.Status, &l.StartedAt, &l.EndedAt, &l.Shift, &l.Operator, &l.Supplier, &l.SupplierLot, &l.Attributes,
		&l.CreatedAt, &l.UpdatedAt)
	l.CreatedAt, l.UpdatedAt = l.CreatedAt.UTC(), l.UpdatedAt.UTC()
	l.StartedAt, l.EndedAt = utcPtr(l.StartedAt), utcPtr(l.EndedAt)
	if l.Attributes == nil {
		l.Attributes = map[string]any{}
	}
	return l, err
}

func utcPtr(t *time.Time) *time.Time {
	if t == nil {
		return nil
	}
	u := t.UTC()
	return &u
}

func (in *LotInput) check() error {
	if !codeRE.MatchString(in.Code) {
		return apps.FieldError("code", "code must be 1-64 characters: letters, digits and _ . : / - (not first)")
	}
	if in.Kind == "" {
		in.Kind = "wip"
	}
	if !oneOf(in.Kind, LotKinds) {
		return apps.FieldError("kind", "kind must be one of %s", strings.Join(LotKinds, ", "))
	}
	if in.Status == "" {
		in.Status = "planned"
	}
	if !oneOf(in.Status, LotStatuses) {
		return apps.FieldError("status", "status must be one of %s", strings.Join(LotStatuses, ", "))
	}
	if in.Unit == "" {
		in.Unit = "kg"
	}
	if err := checkQuantity("quantity", in.Quantity, false); err != nil {
		return err
	}
	if in.StartedAt != nil && in.EndedAt != nil && in.EndedAt.Before(*in.StartedAt) {
		return apps.FieldError("ended_at", "ended_at must not be before started_at")
	}
	for f, v := range map[string]string{"product": in.Product, "unit": in.Unit, "shift": in.Shift, "operator": in.Operator,
		"supplier": in.Supplier, "supplier_lot": in.SupplierLot} {
		if err := text(f, v, 200); err != nil {
			return err
		}
	}
	if in.Attributes == nil {
		in.Attributes = map[string]any{}
	}
	if b, _ := json.Marshal(in.Attributes); len(b) > 16<<10 {
		return apps.FieldError("attributes", "attributes must be at most 16 KiB of JSON")
	}
	return nil
}

// lineID resolves a line key or id of the tenant; nil for "".
func lineID(ctx context.Context, q tenants.Querier, ref string) (*uuid.UUID, error) {
	if ref == "" {
		return nil, nil
	}
	var id *uuid.UUID
	if u, err := uuid.Parse(ref); err == nil {
		id = &u
	}
	var out uuid.UUID
	err := q.QueryRow(ctx, `SELECT id FROM lines WHERE key = $1 OR id = $2 LIMIT 1`, ref, id).Scan(&out)
	if err == pgx.ErrNoRows {
		return nil, apps.FieldError("line", "unknown line %q", clip(ref))
	}
	return &out, err
}

// checkGrade refuses a grade that is not one of the tenant's sector grades.
func checkGrade(ctx context.Context, q tenants.Querier, field, code string) error {
	if code == "" {
		return nil
	}
	var ok bool
	if err := q.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM grades WHERE code = $1)`, code).Scan(&ok); err != nil {
		return err
	}
	if !ok {
		return apps.FieldError(field, "grade %q is not a grade of the sector", clip(code))
	}
	return nil
}

// CreateLot records a lot. Errors: invalid (a field; unknown line or grade),
// conflict (code taken).
func (s *Service) CreateLot(ctx context.Context, in LotInput) (Lot, error) {
	if err := in.check(); err != nil {
		return Lot{}, err
	}
	tenant, _ := tenants.FromContext(ctx)
	var out Lot
	err := s.inTx(ctx, func(tx pgx.Tx) error {
		line, err := lineID(ctx, tx, in.Line)
		if err != nil {
			return err
		}
		if err := checkGrade(ctx, tx, "grade", in.Grade); err != nil {
			return err
		}
		var id uuid.UUID
		err = tx.QueryRow(ctx, `INSERT INTO lots (tenant_id, code, product, kind, grade_code, recipe_version_id, line_id,
				quantity, unit, status, started_at, ended_at, shift, operator, supplier, supplier_lot, attributes)
			VALUES ($1, $2, $3, $4, nullif($5, ''), $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17) RETURNING id`,
			tenant, in.Code, in.Product, in.Kind, in.Grade, in.RecipeVersionID, line, in.Quantity, in.Unit, in.Status,
			in.StartedAt, in.EndedAt, in.Shift, in.Operator, in.Supplier, in.SupplierLot, in.Attributes).Scan(&id)
		if err != nil {
			return tenants.StoreError(err, "lot "+in.Code)
		}
		out, err = lotByID(ctx, tx, id)
		return err
	})
	return out, err
}

func lotByID(ctx context.Context, q tenants.Querier, id uuid.UUID) (Lot, error) {
	rows, err := q.Query(ctx, `SELECT `+lotColumns+lotFrom+`WHERE l.id = $1`, id)
	if err != nil {
		return Lot{}, err
	}
	l, err := pgx.CollectExactlyOneRow(rows, scanLot)
	return l, tenants.StoreError(err, "lot")
}

// Lot returns a lot by code or id. Errors: not_found.
func (s *Service) Lot(ctx context.Context, ref string) (Lot, error) {
	var out Lot
	err := s.inTx(ctx, func(tx pgx.Tx) error {
		r, err := resolveLot(ctx, tx, ref, "")
		if err != nil {
			return err
		}
		out, err = lotByID(ctx, tx, r.ID)
		return err
	})
	return out, err
}

// LotQuery filters the lot list.
type LotQuery struct {
	Status, Kind, Product, Grade, Line string
	From, To                           *time.Time
	Limit                              int
	Cursor                             string
}

// LotPage is a page of lots, newest first.
type LotPage struct {
	Items      []Lot  `json:"items"`
	NextCursor string `json:"next_cursor,omitempty"`
}

// Lots lists lots, newest first. Errors: invalid (filter, cursor), not_found
// (line).
func (s *Service) Lots(ctx context.Context, q LotQuery) (LotPage, error) {
	if q.Limit == 0 {
		q.Limit = 100
	}
	if q.Limit > 1000 {
		return LotPage{}, apps.FieldError("limit", "limit must be at most 1000")
	}
	if q.Status != "" && !oneOf(q.Status, LotStatuses) {
		return LotPage{}, apps.FieldError("status", "status must be one of %s", strings.Join(LotStatuses, ", "))
	}
	if q.Kind != "" && !oneOf(q.Kind, LotKinds) {
		return LotPage{}, apps.FieldError("kind", "kind must be one of %s", strings.Join(LotKinds, ", "))
	}
	before, beforeID := time.Date(9999, 1, 1, 0, 0, 0, 0, time.UTC), uuid.Max
	if q.Cursor != "" {
		var err error
		if before, beforeID, err = decodeLotCursor(q.Cursor); err != nil {
			return LotPage{}, err
		}
	}
	page := LotPage{Items: []Lot{}}
	err := s.inTx(ctx, func(tx pgx.Tx) error {
		var line *uuid.UUID
		if q.Line != "" {
			var err error
			if line, err = lineID(ctx, tx, q.Line); err != nil {
				return apps.Errorf(apps.NotFound, "unknown line %q", clip(q.Line))
			}
		}
		rows, err := tx.Query(ctx, `SELECT `+lotColumns+lotFrom+`
			WHERE (l.created_at, l.id) < ($1, $2)
			  AND ($3 = '' OR l.status = $3) AND ($4 = '' OR l.kind = $4) AND ($5 = '' OR l.product = $5)
			  AND ($6 = '' OR l.grade_code = $6) AND ($7::uuid IS NULL OR l.line_id = $7)
			  AND ($8::timestamptz IS NULL OR l.created_at >= $8) AND ($9::timestamptz IS NULL OR l.created_at < $9)
			ORDER BY l.created_at DESC, l.id DESC LIMIT $10`,
			before, beforeID, q.Status, q.Kind, q.Product, q.Grade, line, q.From, q.To, q.Limit+1)
		if err != nil {
			return err
		}
		page.Items, err = pgx.CollectRows(rows, scanLot)
		return err
	})
	if err != nil {
		return LotPage{}, err
	}
	if len(page.Items) > q.Limit {
		page.Items = page.Items[:q.Limit]
		last := page.Items[q.Limit-1]
		page.NextCursor = base64.RawURLEncoding.EncodeToString([]byte(strconv.FormatInt(last.CreatedAt.UnixMicro(), 10) + "_" + last.ID.String()))
	}
	return page, nil
}

func decodeLotCursor(c string) (time.Time, uuid.UUID, error) {
	bad := apps.FieldError("cursor", "malformed cursor; pass next_cursor from the previous page unchanged")
	b, err := base64.RawURLEncoding.DecodeString(c)
	if err != nil {
		return time.Time{}, uuid.Nil, bad
	}
	us, idPart, ok := strings.Cut(string(b), "_")
	n, err1 := strconv.ParseInt(us, 10, 64)
	id, err2 := uuid.Parse(idPart)
	if !ok || err1 != nil || err2 != nil {
		return time.Time{}, uuid.Nil, bad
	}
	return time.UnixMicro(n).UTC(), id, nil
}

// UpdateLot changes a lot's status, times, quantity, shift or operator.
// Errors: invalid, not_found.
func (s *Service) UpdateLot(ctx context.Context, ref string, p LotPatch) (Lot, error) {
	if p.Status != nil && !oneOf(*p.Status, LotStatuses) {
		return Lot{}, apps.FieldError("status", "status must be one of %s", strings.Join(LotStatuses, ", "))
	}
	if p.Quantity != nil {
		if err := checkQuantity("quantity", *p.Quantity, false); err != nil {
			return Lot{}, err
		}
	}
	for f, v := range map[string]*string{"shift": p.Shift, "operator": p.Operator} {
		if v != nil {
			if err := text(f, *v, 200); err != nil {
				return Lot{}, err
			}
		}
	}
	var out Lot
	err := s.inTx(ctx, func(tx pgx.Tx) error {
		r, err := resolveLot(ctx, tx, ref, "")
		if err != nil {
			return err
		}
		if p.Quantity != nil {
			// Under the genealogy lock: a link or shipment cannot slip in
			// between the check and the update.
			if _, err := tx.Exec(ctx, linkLock); err != nil {
				return err
			}
			used, err := usedQuantity(ctx, tx, r.ID)
			if err != nil {
				return err
			}
			if *p.Quantity < used {
				return apps.FieldError("quantity", "lot %s already gave %g %s to other lots and shipments; its quantity cannot be less", r.Code, used, r.Unit)
			}
		}
		_, err = tx.Exec(ctx, `UPDATE lots SET status = coalesce($2, status), started_at = coalesce($3, started_at),
				ended_at = coalesce($4, ended_at), quantity = coalesce($5, quantity), shift = coalesce($6, shift),
				operator = coalesce($7, operator), updated_at = now()
			WHERE id = $1`, r.ID, p.Status, p.StartedAt, p.EndedAt, p.Quantity, p.Shift, p.Operator)
		if err != nil {
			return tenants.StoreError(err, "lot "+r.Code)
		}
		out, err = lotByID(ctx, tx, r.ID)
		return err
	})
	return out, err
}

// usedQuantity is what a lot gave to child lots and shipments.
func usedQuantity(ctx context.Context, q tenants.Querier, lot uuid.UUID) (float64, error) {
	var used float64
	err := q.QueryRow(ctx, `SELECT coalesce((SELECT sum(quantity) FROM lot_links WHERE tenant_id = nx_tenant() AND parent_id = $1), 0)::float8
		+ coalesce((SELECT sum(quantity) FROM shipment_lots WHERE tenant_id = nx_tenant() AND lot_id = $1), 0)::float8`, lot).Scan(&used)
	return used, err
}
