-- Telemetry usage per ingest batch (package metering): one row per tenant per
-- batch, the per-device counts as arrays, written in the batch's transaction.
-- A batch of 500 devices adds one row (and one index entry) instead of 500:
-- measured in metering's BenchmarkWriterTx (a loaded 2-core machine), the
-- per-device rows of 0014 cost 10-17 % of the bare COPY they rode along
-- with, this 4-6 % (less of a real writer's transaction, which also stages
-- and de-duplicates; docs/performance.md has the end-to-end figure). The job
-- folds these rows into usage_telemetry, one row per (tenant, device, hour)
-- not yet billed; only that job (under an advisory lock) writes there now.

CREATE TABLE usage_telemetry_batches (
    tenant_id   uuid NOT NULL,
    hour        timestamptz NOT NULL,
    devices     uuid[] NOT NULL,
    stored      bigint[] NOT NULL,
    rejected    bigint[] NOT NULL,
    events      bigint[] NOT NULL,
    CHECK (cardinality(devices) = cardinality(stored) AND cardinality(devices) = cardinality(rejected)
        AND cardinality(devices) = cardinality(events))
);
CREATE INDEX usage_telemetry_batches_tenant_idx ON usage_telemetry_batches (tenant_id, hour);

ALTER TABLE usage_telemetry_batches ENABLE ROW LEVEL SECURITY;
ALTER TABLE usage_telemetry_batches FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON usage_telemetry_batches USING (tenant_id = nx_tenant()) WITH CHECK (tenant_id = nx_tenant());
GRANT SELECT ON usage_telemetry_batches TO nxcloud_app;

-- Fold what 0014 wrote into one unbilled row per (tenant, device, hour), then
-- keep it that way (the job upserts).
WITH gone AS (
    DELETE FROM usage_telemetry WHERE invoice_id IS NULL
    RETURNING tenant_id, device_id, hour, stored, rejected, events
)
INSERT INTO usage_telemetry (tenant_id, device_id, hour, stored, rejected, events, merged)
SELECT tenant_id, device_id, hour, sum(stored), sum(rejected), sum(events), true
FROM gone GROUP BY tenant_id, device_id, hour;

DROP INDEX usage_telemetry_unmerged_idx;
CREATE UNIQUE INDEX usage_telemetry_open_idx ON usage_telemetry (tenant_id, device_id, hour) WHERE invoice_id IS NULL;
