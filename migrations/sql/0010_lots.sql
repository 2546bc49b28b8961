-- Lots (batches) and their runs on equipment: the records every N app hangs
-- its data on (genealogy, inspections, recipe deviations, downgrades). A lot
-- flows through several pieces of equipment (press, sintering furnace, aging
-- furnace...); each run on one device is a lot_run with its time window, from
-- the API or from the device's lot_start / lot_end events.
CREATE TABLE lots (
    tenant_id          uuid NOT NULL REFERENCES tenants (id),
    id                 uuid NOT NULL DEFAULT gen_random_uuid() PRIMARY KEY,
    -- code is the lot's stable identifier, printed on labels (QR content).
    code               text NOT NULL CHECK (code ~ '^[A-Za-z0-9][A-Za-z0-9_.:/-]{0,63}$'),
    product            text NOT NULL DEFAULT '',
    -- kind: raw (a supplier's raw-material lot), wip or finished.
    kind               text NOT NULL DEFAULT 'wip' CHECK (kind IN ('raw', 'wip', 'finished')),
    grade_code         text,
    -- recipe_version_id is the recipe version the lot was made with (apps/recipe).
    recipe_version_id  uuid,
    line_id            uuid REFERENCES lines (id),
    quantity           numeric NOT NULL DEFAULT 0 CHECK (quantity >= 0),
    unit               text NOT NULL DEFAULT 'kg',
    status             text NOT NULL DEFAULT 'planned'
                       CHECK (status IN ('planned', 'running', 'done', 'on_hold', 'shipped', 'consumed', 'scrapped')),
    started_at         timestamptz,
    ended_at           timestamptz,
    shift              text NOT NULL DEFAULT '',
    operator           text NOT NULL DEFAULT '',
    supplier           text NOT NULL DEFAULT '',
    supplier_lot       text NOT NULL DEFAULT '',
    attributes         jsonb NOT NULL DEFAULT '{}',
    created_at         timestamptz NOT NULL DEFAULT now(),
    updated_at         timestamptz NOT NULL DEFAULT now(),
    UNIQUE (tenant_id, code),
    FOREIGN KEY (tenant_id, grade_code) REFERENCES grades (tenant_id, code),
    CHECK (ended_at IS NULL OR started_at IS NULL OR ended_at >= started_at)
);
CREATE INDEX lots_tenant_started_idx ON lots (tenant_id, started_at DESC);

-- A lot's run on one piece of equipment; ended_at is NULL while it runs.
CREATE TABLE lot_runs (
    tenant_id   uuid NOT NULL REFERENCES tenants (id),
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    lot_id      uuid NOT NULL REFERENCES lots (id),
    device_id   uuid NOT NULL REFERENCES devices (id),
    started_at  timestamptz NOT NULL,
    ended_at    timestamptz,
    -- source: api, or event (the device's lot_start / lot_end).
    source      text NOT NULL DEFAULT 'api' CHECK (source IN ('api', 'event')),
    CHECK (ended_at IS NULL OR ended_at >= started_at)
);
CREATE INDEX lot_runs_lot_idx ON lot_runs (lot_id);
CREATE INDEX lot_runs_device_idx ON lot_runs (tenant_id, device_id, started_at DESC);
-- At most one open run per lot and device.
CREATE UNIQUE INDEX lot_runs_open_idx ON lot_runs (lot_id, device_id) WHERE ended_at IS NULL;

ALTER TABLE lots ENABLE ROW LEVEL SECURITY;
ALTER TABLE lots FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON lots USING (tenant_id = nx_tenant()) WITH CHECK (tenant_id = nx_tenant());
GRANT SELECT, INSERT, UPDATE ON lots TO nxcloud_app;

ALTER TABLE lot_runs ENABLE ROW LEVEL SECURITY;
ALTER TABLE lot_runs FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON lot_runs USING (tenant_id = nx_tenant()) WITH CHECK (tenant_id = nx_tenant());
GRANT SELECT, INSERT, UPDATE ON lot_runs TO nxcloud_app;
