-- Stored once (issue 7), TimescaleDB flavor: a point re-sent by a device after
-- a lost PUBACK, or replayed from the ingest spool after a crash, must not
-- become a second row. The series index becomes unique on (device, metric,
-- ts) — a unique key on a hypertable must include the time column, which it
-- does — and writers insert with ON CONFLICT DO NOTHING, which TimescaleDB
-- checks against compressed chunks too from 2.11 on (earlier versions refuse
-- ON CONFLICT on compressed chunks: nxcloud needs TimescaleDB >= 2.11).
--
-- TimescaleDB refuses to create a unique index on a hypertable that has
-- compression enabled ("operation not supported on hypertables that have
-- compression enabled"), so compression is switched off around the index
-- build: the policy is removed, compressed chunks are decompressed, the index
-- is built, and compression (same segmentby/orderby, which contain the key's
-- non-time columns as TimescaleDB advises) and its policy are restored; the
-- policy compresses the old chunks again on its next runs. On a large
-- installation this migration needs the disk space of the decompressed data
-- for a while: see docs/operations.md.

SELECT remove_compression_policy('telemetry', if_exists => true);
SELECT decompress_chunk(c, if_compressed => true) FROM show_chunks('telemetry') c;
ALTER TABLE telemetry SET (timescaledb.compress = false);

DELETE FROM telemetry t
USING (
    SELECT tableoid, ctid,
           row_number() OVER (PARTITION BY device_id, metric_id, ts ORDER BY tableoid, ctid) AS n
    FROM telemetry
) d
WHERE t.tableoid = d.tableoid AND t.ctid = d.ctid AND d.n > 1;

CREATE UNIQUE INDEX telemetry_point_key ON telemetry (device_id, metric_id, ts DESC);
DROP INDEX telemetry_series_idx;

ALTER TABLE telemetry SET (
    timescaledb.compress,
    timescaledb.compress_segmentby = 'tenant_id, device_id, metric_id',
    timescaledb.compress_orderby = 'ts DESC'
);
SELECT add_compression_policy('telemetry', compress_after => INTERVAL '8 days');

-- Device events: the same device, kind, name, time and payload is the same
-- event (ts is the device's, or the arrival time the spool kept).
DELETE FROM device_events e
USING (
    SELECT id, row_number() OVER (PARTITION BY device_id, kind, name, ts, md5(payload::text) ORDER BY id) AS n
    FROM device_events
) d
WHERE e.id = d.id AND d.n > 1;
CREATE UNIQUE INDEX device_events_key ON device_events (device_id, kind, name, ts, md5(payload::text));

-- Dead letters: part numbers a message's rejected parts, so a replayed
-- message's dead letters land once.
ALTER TABLE dead_letters ADD COLUMN part integer NOT NULL DEFAULT 0;
UPDATE dead_letters l SET part = d.n - 1
FROM (SELECT id, row_number() OVER (PARTITION BY device_id, received_at ORDER BY id) AS n FROM dead_letters) d
WHERE l.id = d.id AND d.n > 1;
CREATE UNIQUE INDEX dead_letters_key ON dead_letters (device_id, received_at, part);
