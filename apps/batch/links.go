package batch

import (
	"context"
	"strings"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"

	"github.com/nxcloud/nxcloud/apps"
	"github.com/nxcloud/nxcloud/tenants"
)

// Link is a genealogy link: Quantity of the parent lot went into the child.
type Link struct {
	ID        int64     `json:"id"`
	Parent    string    `json:"parent"`
	ParentID  uuid.UUID `json:"parent_id"`
	Child     string    `json:"child"`
	ChildID   uuid.UUID `json:"child_id"`
	Kind      string    `json:"kind"`
	Quantity  float64   `json:"quantity"`
	Unit      string    `json:"unit"`
	CreatedAt time.Time `json:"created_at"`
}

// LinkInput links two lots (codes or ids).
type LinkInput struct {
	Parent   string  `json:"parent"`
	Child    string  `json:"child"`
	Kind     string  `json:"kind"`
	Quantity float64 `json:"quantity"`
}

// linkLock serialises the genealogy writes of one tenant (two concurrent
// links could each pass the cycle check and together close a cycle).
const linkLock = `SELECT pg_advisory_xact_lock(hashtext('nxcloud.lot_links'), hashtext(nx_require_tenant()::text))`

// CreateLink links a parent lot to a child lot. It refuses a link to an
// unknown lot (another tenant's lots are unknown), a quantity beyond what the
// parent has left, and a link that would close a cycle. Errors: invalid
// (fields, unknown lot, quantity, cycle), conflict (the link exists).
func (s *Service) CreateLink(ctx context.Context, in LinkInput) (Link, error) {
	if in.Parent == "" {
		return Link{}, apps.FieldError("parent", "parent is required")
	}
	if in.Child == "" {
		return Link{}, apps.FieldError("child", "child is required")
	}
	if !oneOf(in.Kind, LinkKinds) {
		return Link{}, apps.FieldError("kind", "kind must be one of %s", strings.Join(LinkKinds, ", "))
	}
	if err := checkQuantity("quantity", in.Quantity, true); err != nil {
		return Link{}, err
	}
	var out Link
	err := s.inTx(ctx, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, linkLock); err != nil {
			return err
		}
		p, err := resolveLot(ctx, tx, in.Parent, "parent")
		if err != nil {
			return err
		}
		c, err := resolveLot(ctx, tx, in.Child, "child")
		if err != nil {
			return err
		}
		if p.ID == c.ID {
			return apps.FieldError("child", "a lot cannot be its own parent")
		}
		used, err := usedQuantity(ctx, tx, p.ID)
		if err != nil {
			return err
		}
		if used+in.Quantity > p.Quantity*(1+1e-9) {
			return apps.FieldError("quantity", "lot %s has %g %s and already gave %g; %g more exceeds it", p.Code, p.Quantity, p.Unit, used, in.Quantity)
		}
		// A cycle: the parent is already a descendant of the child.
		var cycle bool
		if err := tx.QueryRow(ctx, `WITH RECURSIVE down(id) AS (
				SELECT $1::uuid
				UNION
				SELECT l.child_id FROM down JOIN lot_links l ON l.tenant_id = nx_require_tenant() AND l.parent_id = down.id
			) SELECT EXISTS (SELECT 1 FROM down WHERE id = $2)`, c.ID, p.ID).Scan(&cycle); err != nil {
			return err
		}
		if cycle {
			return apps.FieldError("child", "linking %s to %s would close a cycle: %s is already made from %s", p.Code, c.Code, p.Code, c.Code)
		}
		var id int64
		if err := tx.QueryRow(ctx, `INSERT INTO lot_links (tenant_id, parent_id, child_id, kind, quantity)
			VALUES (nx_require_tenant(), $1, $2, $3, $4) RETURNING id`, p.ID, c.ID, in.Kind, in.Quantity).Scan(&id); err != nil {
			return tenants.StoreError(err, "link "+p.Code+" → "+c.Code)
		}
		links, err := linksWhere(ctx, tx, `k.id = $1`, id)
		if err != nil {
			return err
		}
		out = links[0]
		return nil
	})
	return out, err
}

func linksWhere(ctx context.Context, q tenants.Querier, where string, args ...any) ([]Link, error) {
	rows, err := q.Query(ctx, `SELECT k.id, p.code, k.parent_id, c.code, k.child_id, k.kind, k.quantity::float8, p.unit, k.created_at
		FROM lot_links k JOIN lots p ON p.id = k.parent_id JOIN lots c ON c.id = k.child_id
		WHERE `+where+` ORDER BY k.id`, args...)
	if err != nil {
		return nil, err
	}
	return pgx.CollectRows(rows, func(r pgx.CollectableRow) (Link, error) {
		var l Link
		err := r.Scan(&l.ID, &l.Parent, &l.ParentID, &l.Child, &l.ChildID, &l.Kind, &l.Quantity, &l.Unit, &l.CreatedAt)
		l.CreatedAt = l.CreatedAt.UTC()
		return l, err
	})
}

// LotLinks are a lot's direct parents and children.
type LotLinks struct {
	Lot      string `json:"lot"`
	Parents  []Link `json:"parents"`
	Children []Link `json:"children"`
}

// Links returns a lot's direct links. Errors: not_found.
func (s *Service) Links(ctx context.Context, lot string) (LotLinks, error) {
	var out LotLinks
	err := s.inTx(ctx, func(tx pgx.Tx) error {
		l, err := resolveLot(ctx, tx, lot, "")
		if err != nil {
			return err
		}
		out.Lot = l.Code
		if out.Parents, err = linksWhere(ctx, tx, `k.child_id = $1`, l.ID); err != nil {
			return err
		}
		out.Children, err = linksWhere(ctx, tx, `k.parent_id = $1`, l.ID)
		return err
	})
	return out, err
}

// Customer is a customer lots are shipped to.
type Customer struct {
	ID        uuid.UUID `json:"id"`
	Code      string    `json:"code"`
	Name      string    `json:"name"`
	Country   string    `json:"country"`
	CreatedAt time.Time `json:"created_at"`
}

// CustomerInput creates a customer.
type CustomerInput struct {
	Code    string `json:"code"`
	Name    string `json:"name"`
	Country string `json:"country"`
}

// CreateCustomer records a customer. Errors: invalid, conflict.
func (s *Service) CreateCustomer(ctx context.Context, in CustomerInput) (Customer, error) {
	if !keyRE.MatchString(in.Code) {
		return Customer{}, apps.FieldError("code", "code must be 1-64 characters: letters, digits and _ . - (not first)")
	}
	if in.Name == "" {
		return Customer{}, apps.FieldError("name", "name is required")
	}
	if err := text("name", in.Name, 200); err != nil {
		return Customer{}, err
	}
	if err := text("country", in.Country, 64); err != nil {
		return Customer{}, err
	}
	var c Customer
	err := s.inTx(ctx, func(tx pgx.Tx) error {
		err := tx.QueryRow(ctx, `INSERT INTO customers (tenant_id, code, name, country) VALUES (nx_require_tenant(), $1, $2, $3)
			RETURNING id, code, name, country, created_at`, in.Code, in.Name, in.Country).
			Scan(&c.ID, &c.Code, &c.Name, &c.Country, &c.CreatedAt)
		return tenants.StoreError(err, "customer "+in.Code)
	})
	c.CreatedAt = c.CreatedAt.UTC()
	return c, err
}

// Customers lists the tenant's customers by code.
func (s *Service) Customers(ctx context.Context) ([]Customer, error) {
	out := []Customer{}
	err := s.inTx(ctx, func(tx pgx.Tx) error {
		rows, err := tx.Query(ctx, `SELECT id, code, name, country, created_at FROM customers ORDER BY code`)
		if err != nil {
			return err
		}
		out, err = pgx.CollectRows(rows, func(r pgx.CollectableRow) (Customer, error) {
			var c Customer
			err := r.Scan(&c.ID, &c.Code, &c.Name, &c.Country, &c.CreatedAt)
			c.CreatedAt = c.CreatedAt.UTC()
			return c, err
		})
		return err
	})
	return out, err
}

// Shipment is a delivery of lots to a customer.
type Shipment struct {
	ID        uuid.UUID    `json:"id"`
	Code      string       `json:"code"`
	Customer  string       `json:"customer"`
	Name      string       `json:"customer_name"`
	ShippedAt time.Time    `json:"shipped_at"`
	Reference string       `json:"reference"`
	Lots      []ShippedLot `json:"lots"`
}

// ShippedLot is a lot in a shipment.
type ShippedLot struct {
	Lot      string    `json:"lot"`
	LotID    uuid.UUID `json:"lot_id"`
	Quantity float64   `json:"quantity"`
	Unit     string    `json:"unit"`
}

// ShipmentInput creates a shipment.
type ShipmentInput struct {
	Code      string          `json:"code"`
	Customer  string          `json:"customer"`
	ShippedAt time.Time       `json:"shipped_at"`
	Reference string          `json:"reference"`
	Lots      []ShipmentLotIn `json:"lots"`
}

// ShipmentLotIn is a lot of a new shipment.
type ShipmentLotIn struct {
	Lot      string  `json:"lot"`
	Quantity float64 `json:"quantity"`
}

// CreateShipment records a shipment of lots to a customer; each lot's shipped
// quantity counts against what it has. Errors: invalid (fields, unknown
// customer or lot, quantity), conflict (code taken).
func (s *Service) CreateShipment(ctx context.Context, in ShipmentInput) (Shipment, error) {
	if !codeRE.MatchString(in.Code) {
		return Shipment{}, apps.FieldError("code", "code must be 1-64 characters: letters, digits and _ . : / - (not first)")
	}
	if in.Customer == "" {
		return Shipment{}, apps.FieldError("customer", "customer is required")
	}
	if in.ShippedAt.IsZero() {
		return Shipment{}, apps.FieldError("shipped_at", "shipped_at is required")
	}
	if len(in.Lots) == 0 || len(in.Lots) > 1000 {
		return Shipment{}, apps.FieldError("lots", "a shipment has 1 to 1000 lots")
	}
	if err := text("reference", in.Reference, 200); err != nil {
		return Shipment{}, err
	}
	for _, l := range in.Lots {
		if err := checkQuantity("lots", l.Quantity, true); err != nil {
			return Shipment{}, err
		}
	}
	var out Shipment
	err := s.inTx(ctx, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, linkLock); err != nil {
			return err
		}
		var cust uuid.UUID
		if err := tx.QueryRow(ctx, `SELECT id FROM customers WHERE code = $1 OR id::text = $1`, in.Customer).Scan(&cust); err != nil {
			if err == pgx.ErrNoRows {
				return apps.FieldError("customer", "unknown customer %q", clip(in.Customer))
			}
			return err
		}
		var id uuid.UUID
		if err := tx.QueryRow(ctx, `INSERT INTO shipments (tenant_id, code, customer_id, shipped_at, reference)
			VALUES (nx_require_tenant(), $1, $2, $3, $4) RETURNING id`, in.Code, cust, in.ShippedAt, in.Reference).Scan(&id); err != nil {
			return tenants.StoreError(err, "shipment "+in.Code)
		}
		for _, sl := range in.Lots {
			l, err := resolveLot(ctx, tx, sl.Lot, "lots")
			if err != nil {
				return err
			}
			used, err := usedQuantity(ctx, tx, l.ID)
			if err != nil {
				return err
			}
			if used+sl.Quantity > l.Quantity*(1+1e-9) {
				return apps.FieldError("lots", "lot %s has %g %s and already gave %g; shipping %g more exceeds it", l.Code, l.Quantity, l.Unit, used, sl.Quantity)
			}
			if _, err := tx.Exec(ctx, `INSERT INTO shipment_lots (tenant_id, shipment_id, lot_id, quantity)
				VALUES (nx_require_tenant(), $1, $2, $3)`, id, l.ID, sl.Quantity); err != nil {
				return tenants.StoreError(err, "lot "+l.Code+" in the shipment")
			}
			if _, err := tx.Exec(ctx, `UPDATE lots SET status = 'shipped', updated_at = now() WHERE id = $1 AND status IN ('planned', 'running', 'done')`, l.ID); err != nil {
				return err
			}
		}
		list, err := shipmentsWhere(ctx, tx, `s.id = $1`, id)
		if err != nil {
			return err
		}
		out = list[0]
		return nil
	})
	return out, err
}

func shipmentsWhere(ctx context.Context, q tenants.Querier, where string, args ...any) ([]Shipment, error) {
	rows, err := q.Query(ctx, `SELECT s.id, s.code, c.code, c.name, s.shipped_at, s.reference
		FROM shipments s JOIN customers c ON c.id = s.customer_id WHERE `+where+` ORDER BY s.shipped_at DESC, s.code`, args...)
	if err != nil {
		return nil, err
	}
	list, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (Shipment, error) {
		var x Shipment
		err := r.Scan(&x.ID, &x.Code, &x.Customer, &x.Name, &x.ShippedAt, &x.Reference)
		x.ShippedAt = x.ShippedAt.UTC()
		x.Lots = []ShippedLot{}
		return x, err
	})
	if err != nil || len(list) == 0 {
		return list, err
	}
	ids := make([]uuid.UUID, len(list))
	index := map[uuid.UUID]int{}
	for i, x := range list {
		ids[i], index[x.ID] = x.ID, i
	}
	rows, err = q.Query(ctx, `SELECT sl.shipment_id, l.code, l.id, sl.quantity::float8, l.unit
		FROM shipment_lots sl JOIN lots l ON l.id = sl.lot_id WHERE sl.shipment_id = ANY($1) ORDER BY l.code`, ids)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	for rows.Next() {
		var sid uuid.UUID
		var sl ShippedLot
		if err := rows.Scan(&sid, &sl.Lot, &sl.LotID, &sl.Quantity, &sl.Unit); err != nil {
			return nil, err
		}
		list[index[sid]].Lots = append(list[index[sid]].Lots, sl)
	}
	return list, rows.Err()
}

// Shipment returns a shipment by code or id. Errors: not_found.
func (s *Service) Shipment(ctx context.Context, ref string) (Shipment, error) {
	var out Shipment
	err := s.inTx(ctx, func(tx pgx.Tx) error {
		list, err := shipmentsWhere(ctx, tx, `(s.code = $1 OR s.id::text = lower($1))`, ref)
		if err != nil {
			return err
		}
		if len(list) == 0 {
			return apps.Errorf(apps.NotFound, "unknown shipment %q", clip(ref))
		}
		out = list[0]
		return nil
	})
	return out, err
}

// Shipments lists shipments, newest first (at most limit, default 100).
// Errors: invalid, not_found (customer).
func (s *Service) Shipments(ctx context.Context, customer string, limit int) ([]Shipment, error) {
	if limit == 0 {
		limit = 100
	}
	if limit > 1000 {
		return nil, apps.FieldError("limit", "limit must be at most 1000")
	}
	out := []Shipment{}
	err := s.inTx(ctx, func(tx pgx.Tx) error {
		if customer != "" {
			var ok bool
			if err := tx.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM customers WHERE code = $1 OR id::text = lower($1))`, customer).Scan(&ok); err != nil {
				return err
			}
			if !ok {
				return apps.Errorf(apps.NotFound, "unknown customer %q", clip(customer))
			}
		}
		list, err := shipmentsWhere(ctx, tx, `($1 = '' OR c.code = $1 OR c.id::text = lower($1)) AND s.id IN (
			SELECT s2.id FROM shipments s2 JOIN customers c2 ON c2.id = s2.customer_id
			WHERE ($1 = '' OR c2.code = $1 OR c2.id::text = lower($1)) ORDER BY s2.shipped_at DESC LIMIT $2)`, customer, limit)
		if list != nil {
			out = list
		}
		return err
	})
	return out, err
}
