-- Stored once (issue 7): a point re-sent by a device after a lost PUBACK, or
-- replayed from the ingest spool after a crash, must not become a second row.
-- The series index becomes unique on (device, metric, ts) and writers insert
-- with ON CONFLICT DO NOTHING; device events and dead letters get keys of
-- their own. Rows duplicated before this migration are removed first (the
-- oldest copy is kept).

DELETE FROM telemetry t
USING (
    SELECT tableoid, ctid,
           row_number() OVER (PARTITION BY device_id, metric_id, ts ORDER BY tableoid, ctid) AS n
    FROM telemetry
) d
WHERE t.tableoid = d.tableoid AND t.ctid = d.ctid AND d.n > 1;

CREATE UNIQUE INDEX telemetry_point_key ON telemetry (device_id, metric_id, ts DESC);
DROP INDEX telemetry_series_idx;

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
