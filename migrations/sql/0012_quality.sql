-- Quality management (apps/quality): inspection plans, inspection results per
-- lot, and nonconformances. Judgement is computed from the results (it is not
-- stored); a characteristic that fails raises one nonconformance per lot.

-- An inspection plan says what to measure on the lots of a product and/or a
-- grade: '' / NULL match any, the most specific active plan applies. A lot
-- without a plan is judged on the tenant's grade specs (apps/quality's
-- default plan).
CREATE TABLE inspection_plans (
    tenant_id   uuid NOT NULL REFERENCES tenants (id),
    id          uuid NOT NULL DEFAULT gen_random_uuid() PRIMARY KEY,
    code        text NOT NULL CHECK (code ~ '^[A-Za-z0-9][A-Za-z0-9_.:/-]{0,63}$'),
    name        text NOT NULL DEFAULT '',
    product     text NOT NULL DEFAULT '',
    grade_code  text,
    active      boolean NOT NULL DEFAULT true,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now(),
    UNIQUE (tenant_id, code),
    FOREIGN KEY (tenant_id, grade_code) REFERENCES grades (tenant_id, code)
);
-- One active plan per scope, so the plan a lot gets is never ambiguous.
CREATE UNIQUE INDEX inspection_plans_scope_idx
    ON inspection_plans (tenant_id, product, coalesce(grade_code, '')) WHERE active;

-- A characteristic of a plan: its spec limits (NULL: the lot's grade spec
-- applies, per the grade judgement rule) and sampling: sample_size values per
-- lot, taken in subgroups of subgroup_size (the SPC chart's n), every
-- frequency_every lots / shifts / hours / days.
CREATE TABLE inspection_plan_characteristics (
    tenant_id       uuid NOT NULL REFERENCES tenants (id),
    plan_id         uuid NOT NULL REFERENCES inspection_plans (id) ON DELETE CASCADE,
    characteristic  text NOT NULL CHECK (characteristic ~ '^[a-z0-9][a-z0-9_.-]{0,63}$'),
    position        integer NOT NULL DEFAULT 0,
    lsl             double precision CHECK (lsl > '-Infinity' AND lsl < 'Infinity'),
    usl             double precision CHECK (usl > '-Infinity' AND usl < 'Infinity'),
    target          double precision CHECK (target > '-Infinity' AND target < 'Infinity'),
    sample_size     integer NOT NULL DEFAULT 1 CHECK (sample_size BETWEEN 1 AND 10000),
    subgroup_size   integer NOT NULL DEFAULT 1 CHECK (subgroup_size BETWEEN 1 AND 25),
    frequency       text NOT NULL DEFAULT 'lot' CHECK (frequency IN ('lot', 'shift', 'hour', 'day')),
    frequency_every integer NOT NULL DEFAULT 1 CHECK (frequency_every BETWEEN 1 AND 10000),
    PRIMARY KEY (plan_id, characteristic),
    CHECK (lsl IS NULL OR usl IS NULL OR lsl <= usl)
);

-- One measured value of a lot. sample numbers a characteristic's values within
-- the lot (1, 2, ...); values of the same lot and subgroup form one SPC
-- subgroup. source: api, csv (import) or event (a test bench's "inspection"
-- device event, event_id being its device_events id).
CREATE TABLE inspection_results (
    tenant_id       uuid NOT NULL REFERENCES tenants (id),
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    lot_id          uuid NOT NULL REFERENCES lots (id),
    characteristic  text NOT NULL CHECK (characteristic ~ '^[a-z0-9][a-z0-9_.-]{0,63}$'),
    -- NaN sorts above Infinity in PostgreSQL, so this refuses NaN and ±Inf.
    value           double precision NOT NULL CHECK (value > '-Infinity' AND value < 'Infinity'),
    sample          integer NOT NULL CHECK (sample >= 1),
    subgroup        integer NOT NULL CHECK (subgroup >= 1),
    measured_at     timestamptz NOT NULL,
    source          text NOT NULL CHECK (source IN ('api', 'csv', 'event')),
    device_id       uuid REFERENCES devices (id),
    event_id        bigint,
    created_by      text NOT NULL DEFAULT '',
    created_at      timestamptz NOT NULL DEFAULT now(),
    UNIQUE (lot_id, characteristic, sample)
);

-- A nonconformance of a lot: raised by judgement (one per lot and failing
-- characteristic, kept up to date with the worst value) or recorded by a
-- person (cracks, chipping...), with a reason code of the tenant's
-- defect_codes.
CREATE TABLE nonconformances (
    tenant_id       uuid NOT NULL REFERENCES tenants (id),
    id              uuid NOT NULL DEFAULT gen_random_uuid() PRIMARY KEY,
    lot_id          uuid NOT NULL REFERENCES lots (id),
    characteristic  text NOT NULL DEFAULT '',
    reason_code     text,
    description     text NOT NULL DEFAULT '',
    origin          text NOT NULL CHECK (origin IN ('judgement', 'manual')),
    worst_value     double precision,
    lsl             double precision,
    usl             double precision,
    failed_count    integer NOT NULL DEFAULT 0,
    status          text NOT NULL DEFAULT 'open' CHECK (status IN ('open', 'closed')),
    disposition     text NOT NULL DEFAULT ''
                    CHECK (disposition IN ('', 'use_as_is', 'rework', 'downgrade', 'scrap', 'return_to_supplier')),
    created_by      text NOT NULL DEFAULT '',
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    closed_at       timestamptz,
    FOREIGN KEY (tenant_id, reason_code) REFERENCES defect_codes (tenant_id, code)
);
CREATE UNIQUE INDEX nonconformances_judgement_idx ON nonconformances (lot_id, characteristic) WHERE origin = 'judgement';
CREATE INDEX nonconformances_tenant_idx ON nonconformances (tenant_id, created_at DESC);
CREATE INDEX nonconformances_lot_idx ON nonconformances (lot_id);

ALTER TABLE inspection_plans ENABLE ROW LEVEL SECURITY;
ALTER TABLE inspection_plans FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON inspection_plans USING (tenant_id = nx_tenant()) WITH CHECK (tenant_id = nx_tenant());
GRANT SELECT, INSERT, UPDATE ON inspection_plans TO nxcloud_app;

ALTER TABLE inspection_plan_characteristics ENABLE ROW LEVEL SECURITY;
ALTER TABLE inspection_plan_characteristics FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON inspection_plan_characteristics USING (tenant_id = nx_tenant()) WITH CHECK (tenant_id = nx_tenant());
GRANT SELECT, INSERT, UPDATE, DELETE ON inspection_plan_characteristics TO nxcloud_app;

ALTER TABLE inspection_results ENABLE ROW LEVEL SECURITY;
ALTER TABLE inspection_results FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON inspection_results USING (tenant_id = nx_tenant()) WITH CHECK (tenant_id = nx_tenant());
GRANT SELECT, INSERT ON inspection_results TO nxcloud_app;

ALTER TABLE nonconformances ENABLE ROW LEVEL SECURITY;
ALTER TABLE nonconformances FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON nonconformances USING (tenant_id = nx_tenant()) WITH CHECK (tenant_id = nx_tenant());
GRANT SELECT, INSERT, UPDATE ON nonconformances TO nxcloud_app;

-- A lot's values of one characteristic in subgroup and sample order, kept in
-- step with inspection_results by apps/quality (same transaction), so SPC
-- reads one row per lot instead of one per value. first_at is the lot's first
-- measurement of the characteristic: charts run lot by lot in that order.
-- value_data packs the values as 8-byte big-endian floats (float8send);
-- subgroup_sizes are the sizes of the lot's consecutive subgroups.
CREATE TABLE inspection_series (
    tenant_id       uuid NOT NULL REFERENCES tenants (id),
    lot_id          uuid NOT NULL REFERENCES lots (id),
    characteristic  text NOT NULL,
    first_at        timestamptz NOT NULL,
    subgroup_sizes  integer[] NOT NULL,
    value_data      bytea NOT NULL CHECK (length(value_data) % 8 = 0),
    PRIMARY KEY (lot_id, characteristic)
);
-- Measured values do not compress: store them out of line as they are.
ALTER TABLE inspection_series ALTER COLUMN value_data SET STORAGE EXTERNAL;
CREATE INDEX inspection_series_spc_idx ON inspection_series (tenant_id, characteristic, first_at, lot_id);

ALTER TABLE inspection_series ENABLE ROW LEVEL SECURITY;
ALTER TABLE inspection_series FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON inspection_series USING (tenant_id = nx_tenant()) WITH CHECK (tenant_id = nx_tenant());
GRANT SELECT, INSERT, UPDATE ON inspection_series TO nxcloud_app;
