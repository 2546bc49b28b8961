-- Metering and billing (package metering, docs/metering.md). PostgreSQL is the
-- ledger: a unit is counted once, and only if its effect became durable.
--
-- usage_events holds every metered unit that carries an idempotency key (API
-- calls, N-app uses, X-module invocations, daily snapshots of storage and
-- active devices): the primary key makes a replayed key a no-op.
-- usage_telemetry holds telemetry counts written by ingest in the same
-- transaction that stores the points: one row per (tenant, device) per batch,
-- append-only (no row locks shared between concurrent writers), merged per
-- hour by the metering job.
-- invoice_id marks the invoice that billed a row: each row is billed by
-- exactly one final invoice, whatever order transactions commit in; a row
-- that occurred in a closed month and arrived after its close is billed as an
-- adjustment on the next invoice.

CREATE TABLE billing_plans (
    id          uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    code        text NOT NULL UNIQUE CHECK (code ~ '^[a-z0-9][a-z0-9-]{0,62}$'),
    name        text NOT NULL,
    currency    text NOT NULL CHECK (currency ~ '^[A-Z]{3}$'),
    definition  jsonb NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    created_by  text NOT NULL DEFAULT ''
);
GRANT SELECT ON billing_plans TO nxcloud_app;

-- A tenant's plan from the first day of a month (UTC) on; the latest row
-- whose month has begun is the plan in force. effect_baseline is the KPI
-- value agreed at go-live for pay-by-effect plans (a ratio, e.g. 0.082).
CREATE TABLE billing_subscriptions (
    tenant_id       uuid NOT NULL REFERENCES tenants (id),
    effective_from  date NOT NULL CHECK (extract(day FROM effective_from) = 1),
    plan_id         uuid NOT NULL REFERENCES billing_plans (id),
    effect_baseline numeric CHECK (effect_baseline >= 0),
    created_at      timestamptz NOT NULL DEFAULT now(),
    created_by      text NOT NULL DEFAULT '',
    PRIMARY KEY (tenant_id, effective_from)
);

CREATE TABLE invoices (
    tenant_id    uuid NOT NULL REFERENCES tenants (id),
    id           uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    period       date NOT NULL CHECK (extract(day FROM period) = 1),
    status       text NOT NULL CHECK (status IN ('draft', 'final')),
    plan_id      uuid REFERENCES billing_plans (id),
    currency     text NOT NULL,
    total_cents  bigint NOT NULL,
    lines        jsonb NOT NULL,
    computed_at  timestamptz NOT NULL DEFAULT now(),
    closed_at    timestamptz,
    UNIQUE (tenant_id, period)
);
CREATE INDEX invoices_period_idx ON invoices (period, tenant_id);

CREATE TABLE usage_events (
    tenant_id    uuid NOT NULL REFERENCES tenants (id),
    meter        text NOT NULL,
    subject      text NOT NULL DEFAULT '',
    quantity     bigint NOT NULL CHECK (quantity >= 0),
    occurred_at  timestamptz NOT NULL,
    recorded_at  timestamptz NOT NULL DEFAULT clock_timestamp(),
    idem_key     text NOT NULL,
    invoice_id   uuid,
    PRIMARY KEY (tenant_id, meter, idem_key)
);
CREATE INDEX usage_events_time_idx ON usage_events (tenant_id, occurred_at);
CREATE INDEX usage_events_unbilled_idx ON usage_events (tenant_id, occurred_at) WHERE invoice_id IS NULL;
CREATE INDEX usage_events_invoice_idx ON usage_events (invoice_id) WHERE invoice_id IS NOT NULL;

-- No foreign keys: this table is written on ingest's hot path, by the writer
-- that has just stored the points of these (existing) devices.
CREATE TABLE usage_telemetry (
    tenant_id   uuid NOT NULL,
    device_id   uuid NOT NULL,
    hour        timestamptz NOT NULL,
    stored      bigint NOT NULL DEFAULT 0,
    rejected    bigint NOT NULL DEFAULT 0,
    events      bigint NOT NULL DEFAULT 0,
    merged      boolean NOT NULL DEFAULT false,
    invoice_id  uuid
);
CREATE INDEX usage_telemetry_tenant_hour_idx ON usage_telemetry (tenant_id, hour);
CREATE INDEX usage_telemetry_unmerged_idx ON usage_telemetry (hour) WHERE NOT merged;

-- Quota warnings (80 % and 100 %) the tenant can see.
CREATE TABLE usage_alerts (
    tenant_id    uuid NOT NULL REFERENCES tenants (id),
    id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    meter        text NOT NULL,
    period       date NOT NULL,
    level        integer NOT NULL CHECK (level IN (80, 100)),
    quota_limit  bigint NOT NULL,
    hard         boolean NOT NULL,
    quantity     bigint NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    UNIQUE (tenant_id, meter, period, level)
);

ALTER TABLE billing_subscriptions ENABLE ROW LEVEL SECURITY;
ALTER TABLE billing_subscriptions FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON billing_subscriptions USING (tenant_id = nx_tenant()) WITH CHECK (tenant_id = nx_tenant());
GRANT SELECT, INSERT, UPDATE ON billing_subscriptions TO nxcloud_app;

ALTER TABLE invoices ENABLE ROW LEVEL SECURITY;
ALTER TABLE invoices FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON invoices USING (tenant_id = nx_tenant()) WITH CHECK (tenant_id = nx_tenant());
-- INSERT, UPDATE: a tenant's draft invoice is refreshed when the tenant reads it.
GRANT SELECT, INSERT, UPDATE ON invoices TO nxcloud_app;

ALTER TABLE usage_events ENABLE ROW LEVEL SECURITY;
ALTER TABLE usage_events FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON usage_events USING (tenant_id = nx_tenant()) WITH CHECK (tenant_id = nx_tenant());
-- INSERT: an N app records a use in the transaction of its effect.
GRANT SELECT, INSERT ON usage_events TO nxcloud_app;

ALTER TABLE usage_telemetry ENABLE ROW LEVEL SECURITY;
ALTER TABLE usage_telemetry FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON usage_telemetry USING (tenant_id = nx_tenant()) WITH CHECK (tenant_id = nx_tenant());
GRANT SELECT ON usage_telemetry TO nxcloud_app;

ALTER TABLE usage_alerts ENABLE ROW LEVEL SECURITY;
ALTER TABLE usage_alerts FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON usage_alerts USING (tenant_id = nx_tenant()) WITH CHECK (tenant_id = nx_tenant());
GRANT SELECT ON usage_alerts TO nxcloud_app;
