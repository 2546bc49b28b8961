-- Telemetry on plain PostgreSQL (no TimescaleDB): a table range-partitioned by
-- day, with partitions created ahead by nxcloud's maintenance job
-- (nx_ensure_telemetry_partitions), and 1 min / 1 h rollups kept current by
-- nxcloud (ingest logs the time range of every committed batch in
-- telemetry_invalidation; the job recomputes the touched buckets). The views
-- telemetry_1m and telemetry_1h have the same columns and meaning as the
-- continuous aggregates of the TimescaleDB path: rolled-up buckets below the
-- watermark, computed from raw rows at and above it (real-time aggregation).

CREATE TABLE telemetry (
    ts          timestamptz NOT NULL,
    tenant_id   uuid NOT NULL,
    device_id   uuid NOT NULL,
    metric_id   integer NOT NULL,
    value       double precision NOT NULL
) PARTITION BY RANGE (ts);

-- Reads are by series (device, metric, time range). Device ids are unique
-- across tenants, so tenant_id stays out of the key: a narrower index costs
-- ingest less (measured: ~1.5x the COPY rate of the 4-column key).
CREATE INDEX telemetry_series_idx ON telemetry (device_id, metric_id, ts DESC);

-- Rows whose day has no partition yet land here; the maintenance job moves them
-- into their day's partition when it creates it.
CREATE TABLE telemetry_default PARTITION OF telemetry DEFAULT;

-- nx_ensure_telemetry_partitions creates the daily partitions (UTC days) from
-- p_from to p_to inclusive that do not exist yet, moving any rows of those days
-- out of the default partition first. It returns how many it created.
CREATE FUNCTION nx_ensure_telemetry_partitions(p_from date, p_to date) RETURNS integer
LANGUAGE plpgsql
AS $$
DECLARE
    d       date;
    created integer := 0;
    part    text;
    lo      timestamptz;
    hi      timestamptz;
BEGIN
    FOR d IN SELECT g::date FROM generate_series(p_from::timestamp, p_to::timestamp, interval '1 day') AS g
    LOOP
        part := 'telemetry_p' || to_char(d, 'YYYYMMDD');
        CONTINUE WHEN to_regclass(part) IS NOT NULL;
        lo := d::timestamp AT TIME ZONE 'UTC';
        hi := (d + 1)::timestamp AT TIME ZONE 'UTC';
        -- Serialise with concurrent creators and with inserts into the default partition.
        LOCK TABLE telemetry_default IN SHARE ROW EXCLUSIVE MODE;
        CONTINUE WHEN to_regclass(part) IS NOT NULL;
        EXECUTE format('CREATE TABLE %I (LIKE telemetry INCLUDING DEFAULTS)', part);
        EXECUTE format('INSERT INTO %I SELECT * FROM telemetry_default WHERE ts >= %L AND ts < %L', part, lo, hi);
        EXECUTE format('DELETE FROM telemetry_default WHERE ts >= %L AND ts < %L', lo, hi);
        EXECUTE format('ALTER TABLE telemetry ATTACH PARTITION %I FOR VALUES FROM (%L) TO (%L)', part, lo, hi);
        created := created + 1;
    END LOOP;
    RETURN created;
END
$$;

-- nx_drop_telemetry_partitions drops the daily partitions whose whole day is
-- before p_before (retention). It returns how many it dropped.
CREATE FUNCTION nx_drop_telemetry_partitions(p_before date) RETURNS integer
LANGUAGE plpgsql
AS $$
DECLARE
    r       record;
    dropped integer := 0;
BEGIN
    FOR r IN
        SELECT c.relname
        FROM pg_inherits i
        JOIN pg_class c ON c.oid = i.inhrelid
        WHERE i.inhparent = 'telemetry'::regclass AND c.relname ~ '^telemetry_p[0-9]{8}$'
    LOOP
        IF to_date(substr(r.relname, 12), 'YYYYMMDD') < p_before THEN
            EXECUTE format('DROP TABLE %I', r.relname);
            dropped := dropped + 1;
        END IF;
    END LOOP;
    DELETE FROM telemetry_default WHERE ts < p_before::timestamp AT TIME ZONE 'UTC';
    RETURN dropped;
END
$$;

SELECT nx_ensure_telemetry_partitions((now() AT TIME ZONE 'UTC')::date - 7, (now() AT TIME ZONE 'UTC')::date + 7);

-- Time range of each committed ingest batch, consumed by the rollup job.
CREATE TABLE telemetry_invalidation (
    id  bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    lo  timestamptz NOT NULL,
    hi  timestamptz NOT NULL
);

-- Watermark per rollup level: buckets starting before it are read from the
-- store, later ones are computed from the level below.
CREATE TABLE telemetry_rollup_state (
    level       text PRIMARY KEY,
    watermark   timestamptz NOT NULL
);
INSERT INTO telemetry_rollup_state (level, watermark) VALUES
    ('1m', '-infinity'),
    ('1h', '-infinity');

CREATE TABLE telemetry_1m_store (
    bucket      timestamptz NOT NULL,
    tenant_id   uuid NOT NULL,
    device_id   uuid NOT NULL,
    metric_id   integer NOT NULL,
    sum         double precision NOT NULL,
    count       bigint NOT NULL,
    min         double precision NOT NULL,
    max         double precision NOT NULL,
    last        double precision NOT NULL,
    last_ts     timestamptz NOT NULL,
    PRIMARY KEY (tenant_id, device_id, metric_id, bucket)
);
CREATE INDEX telemetry_1m_store_bucket_idx ON telemetry_1m_store (bucket);

CREATE TABLE telemetry_1h_store (LIKE telemetry_1m_store INCLUDING ALL);

-- Buckets are aligned like TimescaleDB's time_bucket (origin 2000-01-03 UTC).
CREATE VIEW telemetry_1m AS
SELECT s.bucket, s.tenant_id, s.device_id, s.metric_id, s.sum, s.count, s.min, s.max, s.last, s.last_ts
FROM telemetry_1m_store s
WHERE s.bucket < (SELECT watermark FROM telemetry_rollup_state WHERE level = '1m')
UNION ALL
SELECT date_bin(interval '1 minute', t.ts, timestamptz '2000-01-03 00:00:00+00') AS bucket,
       t.tenant_id, t.device_id, t.metric_id,
       sum(t.value) AS sum, count(*) AS count, min(t.value) AS min, max(t.value) AS max,
       (array_agg(t.value ORDER BY t.ts DESC))[1] AS last, max(t.ts) AS last_ts
FROM telemetry t
WHERE t.ts >= (SELECT watermark FROM telemetry_rollup_state WHERE level = '1m')
GROUP BY 1, 2, 3, 4;

CREATE VIEW telemetry_1h AS
SELECT s.bucket, s.tenant_id, s.device_id, s.metric_id, s.sum, s.count, s.min, s.max, s.last, s.last_ts
FROM telemetry_1h_store s
WHERE s.bucket < (SELECT watermark FROM telemetry_rollup_state WHERE level = '1h')
UNION ALL
SELECT date_bin(interval '1 hour', m.bucket, timestamptz '2000-01-03 00:00:00+00') AS bucket,
       m.tenant_id, m.device_id, m.metric_id,
       sum(m.sum) AS sum, sum(m.count)::bigint AS count, min(m.min) AS min, max(m.max) AS max,
       (array_agg(m.last ORDER BY m.last_ts DESC))[1] AS last, max(m.last_ts) AS last_ts
FROM telemetry_1m m
WHERE m.bucket >= (SELECT watermark FROM telemetry_rollup_state WHERE level = '1h')
GROUP BY 1, 2, 3, 4;

ALTER TABLE telemetry ENABLE ROW LEVEL SECURITY;
ALTER TABLE telemetry FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON telemetry USING (tenant_id = nx_tenant()) WITH CHECK (tenant_id = nx_tenant());
ALTER TABLE telemetry_1m_store ENABLE ROW LEVEL SECURITY;
ALTER TABLE telemetry_1m_store FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON telemetry_1m_store USING (tenant_id = nx_tenant()) WITH CHECK (tenant_id = nx_tenant());
ALTER TABLE telemetry_1h_store ENABLE ROW LEVEL SECURITY;
ALTER TABLE telemetry_1h_store FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON telemetry_1h_store USING (tenant_id = nx_tenant()) WITH CHECK (tenant_id = nx_tenant());

-- nxcloud_app gets no privilege on these tables or views: tenant-facing reads go
-- through the SECURITY DEFINER functions of 0003, which always filter by the
-- transaction's tenant (the same layer as on TimescaleDB, where RLS cannot be
-- combined with compression).
