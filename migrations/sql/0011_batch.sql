-- Batch tracing and downgrade management (apps/batch, apps/downgrade):
-- genealogy links between lots, customers and shipments, the fields a tenant
-- shows on a label's public page, the price list per grade and downgrades.

-- Links refer to lots by (tenant_id, id), so a link can never join lots of two
-- tenants, whatever the application does.
CREATE UNIQUE INDEX lots_tenant_id_key ON lots (tenant_id, id);
CREATE INDEX lots_tenant_created_idx ON lots (tenant_id, created_at DESC, id DESC);
CREATE INDEX lot_runs_tenant_lot_idx ON lot_runs (tenant_id, lot_id);
-- A run's lot is a lot of the run's tenant.
ALTER TABLE lot_runs ADD CONSTRAINT lot_runs_tenant_lot_fkey FOREIGN KEY (tenant_id, lot_id) REFERENCES lots (tenant_id, id);

-- A genealogy link: quantity of the parent lot that went into the child lot.
-- kind: consume (raw material into a lot), split (one lot into several),
-- merge (several lots into one, e.g. one furnace load), rework (a lot
-- reworked into a new lot), ship (a finished lot into a shipped lot).
-- Cycles are refused by the application under a per-tenant lock.
CREATE TABLE lot_links (
    tenant_id   uuid NOT NULL REFERENCES tenants (id),
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    parent_id   uuid NOT NULL,
    child_id    uuid NOT NULL,
    kind        text NOT NULL CHECK (kind IN ('consume', 'split', 'merge', 'rework', 'ship')),
    quantity    numeric NOT NULL CHECK (quantity > 0),
    created_at  timestamptz NOT NULL DEFAULT now(),
    CHECK (parent_id <> child_id),
    UNIQUE (tenant_id, parent_id, child_id),
    FOREIGN KEY (tenant_id, parent_id) REFERENCES lots (tenant_id, id),
    FOREIGN KEY (tenant_id, child_id) REFERENCES lots (tenant_id, id)
);
-- The trace walks by parent (forward) and by child (backward), reading the
-- links from the indexes alone.
CREATE INDEX lot_links_parent_idx ON lot_links (tenant_id, parent_id) INCLUDE (child_id, kind, quantity);
CREATE INDEX lot_links_child_idx ON lot_links (tenant_id, child_id) INCLUDE (parent_id, kind, quantity);

CREATE TABLE customers (
    tenant_id   uuid NOT NULL REFERENCES tenants (id),
    id          uuid NOT NULL DEFAULT gen_random_uuid() PRIMARY KEY,
    code        text NOT NULL CHECK (code ~ '^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$'),
    name        text NOT NULL,
    country     text NOT NULL DEFAULT '',
    created_at  timestamptz NOT NULL DEFAULT now(),
    UNIQUE (tenant_id, code),
    UNIQUE (tenant_id, id)
);

CREATE TABLE shipments (
    tenant_id    uuid NOT NULL REFERENCES tenants (id),
    id           uuid NOT NULL DEFAULT gen_random_uuid() PRIMARY KEY,
    code         text NOT NULL CHECK (code ~ '^[A-Za-z0-9][A-Za-z0-9_.:/-]{0,63}$'),
    customer_id  uuid NOT NULL,
    shipped_at   timestamptz NOT NULL,
    reference    text NOT NULL DEFAULT '',
    created_at   timestamptz NOT NULL DEFAULT now(),
    UNIQUE (tenant_id, code),
    UNIQUE (tenant_id, id),
    FOREIGN KEY (tenant_id, customer_id) REFERENCES customers (tenant_id, id)
);
CREATE INDEX shipments_tenant_shipped_idx ON shipments (tenant_id, shipped_at DESC);

-- The lots of a shipment, with the quantity of each that was shipped.
CREATE TABLE shipment_lots (
    tenant_id    uuid NOT NULL REFERENCES tenants (id),
    shipment_id  uuid NOT NULL,
    lot_id       uuid NOT NULL,
    quantity     numeric NOT NULL CHECK (quantity > 0),
    PRIMARY KEY (shipment_id, lot_id),
    FOREIGN KEY (tenant_id, shipment_id) REFERENCES shipments (tenant_id, id),
    FOREIGN KEY (tenant_id, lot_id) REFERENCES lots (tenant_id, id)
);
CREATE INDEX shipment_lots_lot_idx ON shipment_lots (tenant_id, lot_id);

-- The lot fields a tenant shows on the public page of a label, per product.
-- A product without a row shows nothing.
CREATE TABLE lot_public_fields (
    tenant_id   uuid NOT NULL REFERENCES tenants (id),
    product     text NOT NULL,
    fields      text[] NOT NULL,
    updated_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, product)
);

-- The tenant's price list per grade (value of one unit sold in that grade),
-- and the values downgrades are costed with.
CREATE TABLE grade_prices (
    tenant_id   uuid NOT NULL REFERENCES tenants (id),
    grade_code  text NOT NULL,
    price       numeric NOT NULL CHECK (price >= 0),
    unit        text NOT NULL DEFAULT 'kg',
    updated_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, grade_code),
    FOREIGN KEY (tenant_id, grade_code) REFERENCES grades (tenant_id, code)
);

CREATE TABLE downgrade_settings (
    tenant_id     uuid NOT NULL PRIMARY KEY REFERENCES tenants (id),
    currency      text NOT NULL DEFAULT 'CNY',
    -- value per unit of material re-melted or scrapped, and the cost per unit of rework
    remelt_value  numeric NOT NULL DEFAULT 0 CHECK (remelt_value >= 0),
    scrap_value   numeric NOT NULL DEFAULT 0 CHECK (scrap_value >= 0),
    rework_cost   numeric NOT NULL DEFAULT 0 CHECK (rework_cost >= 0),
    updated_at    timestamptz NOT NULL DEFAULT now()
);

-- A downgrade: a lot made for intended_grade assigned a lower grade (or
-- reworked, re-melted, scrapped). status: recorded (entered by a user),
-- proposed (by the rule, awaiting a decision), approved, rejected.
CREATE TABLE downgrades (
    tenant_id       uuid NOT NULL REFERENCES tenants (id),
    id              uuid NOT NULL DEFAULT gen_random_uuid() PRIMARY KEY,
    lot_id          uuid NOT NULL,
    intended_grade  text NOT NULL,
    assigned_grade  text,
    quantity        numeric NOT NULL CHECK (quantity > 0),
    unit            text NOT NULL DEFAULT 'kg',
    reason_code     text NOT NULL,
    disposition     text NOT NULL CHECK (disposition IN ('sell_lower', 'rework', 'remelt', 'scrap')),
    value_lost      numeric,
    currency        text NOT NULL DEFAULT 'CNY',
    status          text NOT NULL CHECK (status IN ('recorded', 'proposed', 'approved', 'rejected')),
    source          text NOT NULL DEFAULT 'user' CHECK (source IN ('user', 'rule')),
    note            text NOT NULL DEFAULT '',
    -- evidence: for a proposal, the measured values and the grades tried
    evidence        jsonb NOT NULL DEFAULT '{}',
    created_at      timestamptz NOT NULL DEFAULT now(),
    created_by      text NOT NULL DEFAULT '',
    decided_at      timestamptz,
    decided_by      text NOT NULL DEFAULT '',
    decision_note   text NOT NULL DEFAULT '',
    FOREIGN KEY (tenant_id, lot_id) REFERENCES lots (tenant_id, id),
    FOREIGN KEY (tenant_id, intended_grade) REFERENCES grades (tenant_id, code),
    FOREIGN KEY (tenant_id, assigned_grade) REFERENCES grades (tenant_id, code),
    FOREIGN KEY (tenant_id, reason_code) REFERENCES defect_codes (tenant_id, code)
);
CREATE INDEX downgrades_tenant_created_idx ON downgrades (tenant_id, created_at DESC, id DESC);
CREATE INDEX downgrades_lot_idx ON downgrades (tenant_id, lot_id);
-- At most one open proposal per lot.
CREATE UNIQUE INDEX downgrades_open_proposal_idx ON downgrades (tenant_id, lot_id) WHERE status = 'proposed';

DO $$
DECLARE
    t text;
BEGIN
    FOREACH t IN ARRAY ARRAY['lot_links', 'customers', 'shipments', 'shipment_lots', 'lot_public_fields',
                             'grade_prices', 'downgrade_settings', 'downgrades']
    LOOP
        EXECUTE format('ALTER TABLE %I ENABLE ROW LEVEL SECURITY', t);
        EXECUTE format('ALTER TABLE %I FORCE ROW LEVEL SECURITY', t);
        EXECUTE format('CREATE POLICY tenant_isolation ON %I USING (tenant_id = nx_tenant()) '
                       'WITH CHECK (tenant_id = nx_tenant())', t);
    END LOOP;
END
$$;

GRANT SELECT, INSERT ON lot_links, shipment_lots TO nxcloud_app;
GRANT SELECT, INSERT, UPDATE ON customers, shipments, downgrades TO nxcloud_app;
GRANT SELECT, INSERT, UPDATE, DELETE ON lot_public_fields, grade_prices, downgrade_settings TO nxcloud_app;
