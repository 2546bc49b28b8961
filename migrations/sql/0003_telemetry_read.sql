-- The one query layer for tenant-facing telemetry reads, on both storage paths.
-- Each function runs as the schema owner (SECURITY DEFINER) and always filters
-- by the transaction's tenant (nx_require_tenant raises when none is set), so
-- nxcloud_app can read telemetry only through them and only its own.

-- telemetry_raw returns one series' points with p_from <= ts < p_to, oldest
-- first (points sharing a time ordered by value, so pages are stable), at most
-- p_limit of them.
CREATE FUNCTION telemetry_raw(p_device uuid, p_metric integer, p_from timestamptz, p_to timestamptz, p_limit integer)
RETURNS TABLE (ts timestamptz, value double precision)
LANGUAGE sql STABLE SECURITY DEFINER
SET search_path = public, pg_temp
AS $$
    SELECT t.ts, t.value
    FROM telemetry t
    WHERE t.tenant_id = nx_require_tenant()
      AND t.device_id = p_device
      AND t.metric_id = p_metric
      AND t.ts >= p_from AND t.ts < p_to
    ORDER BY t.ts, t.value
    LIMIT p_limit
$$;

-- telemetry_buckets aggregates series of one device into buckets of p_width
-- ('1m', '1h' or '1d'), for buckets starting in [p_from, p_to), ordered by
-- metric and bucket. avg is sum/count of the bucket's raw points.
CREATE FUNCTION telemetry_buckets(p_width text, p_device uuid, p_metrics integer[], p_from timestamptz, p_to timestamptz)
RETURNS TABLE (metric_id integer, bucket timestamptz, avg double precision, min double precision,
               max double precision, count bigint, last double precision)
LANGUAGE plpgsql STABLE SECURITY DEFINER
SET search_path = public, pg_temp
AS $$
DECLARE
    t uuid := nx_require_tenant();
BEGIN
    IF p_width = '1m' THEN
        RETURN QUERY
        SELECT r.metric_id, r.bucket, r.sum / r.count, r.min, r.max, r.count, r.last
        FROM telemetry_1m r
        WHERE r.tenant_id = t AND r.device_id = p_device AND r.metric_id = ANY (p_metrics)
          AND r.bucket >= p_from AND r.bucket < p_to
        ORDER BY r.metric_id, r.bucket;
    ELSIF p_width = '1h' THEN
        RETURN QUERY
        SELECT r.metric_id, r.bucket, r.sum / r.count, r.min, r.max, r.count, r.last
        FROM telemetry_1h r
        WHERE r.tenant_id = t AND r.device_id = p_device AND r.metric_id = ANY (p_metrics)
          AND r.bucket >= p_from AND r.bucket < p_to
        ORDER BY r.metric_id, r.bucket;
    ELSIF p_width = '1d' THEN
        RETURN QUERY
        SELECT d.metric_id, d.day, d.s / d.c, d.mn, d.mx, d.c, d.lst
        FROM (
            SELECT r.metric_id,
                   date_bin(interval '1 day', r.bucket, timestamptz '2000-01-03 00:00:00+00') AS day,
                   sum(r.sum) AS s, sum(r.count)::bigint AS c, min(r.min) AS mn, max(r.max) AS mx,
                   (array_agg(r.last ORDER BY r.last_ts DESC))[1] AS lst
            FROM telemetry_1h r
            WHERE r.tenant_id = t AND r.device_id = p_device AND r.metric_id = ANY (p_metrics)
              AND r.bucket >= date_bin(interval '1 day', p_from, timestamptz '2000-01-03 00:00:00+00')
              AND r.bucket < p_to
            GROUP BY 1, 2
        ) d
        WHERE d.day >= p_from AND d.day < p_to
        ORDER BY d.metric_id, d.day;
    ELSE
        RAISE EXCEPTION 'unknown bucket width %', p_width USING ERRCODE = '22023';
    END IF;
END
$$;

-- telemetry_latest returns the newest point of each given metric of a device
-- within the last p_within (the fallback when the hot cache in Redis is empty).
CREATE FUNCTION telemetry_latest(p_device uuid, p_metrics integer[], p_within interval)
RETURNS TABLE (metric_id integer, ts timestamptz, value double precision)
LANGUAGE sql STABLE SECURITY DEFINER
SET search_path = public, pg_temp
AS $$
    SELECT m.id, l.ts, l.value
    FROM unnest(p_metrics) AS m(id)
    CROSS JOIN LATERAL (
        SELECT t.ts, t.value
        FROM telemetry t
        WHERE t.tenant_id = nx_require_tenant()
          AND t.device_id = p_device
          AND t.metric_id = m.id
          AND t.ts >= now() - p_within
        ORDER BY t.ts DESC
        LIMIT 1
    ) l
$$;

REVOKE ALL ON FUNCTION telemetry_raw(uuid, integer, timestamptz, timestamptz, integer) FROM PUBLIC;
REVOKE ALL ON FUNCTION telemetry_buckets(text, uuid, integer[], timestamptz, timestamptz) FROM PUBLIC;
REVOKE ALL ON FUNCTION telemetry_latest(uuid, integer[], interval) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION telemetry_raw(uuid, integer, timestamptz, timestamptz, integer) TO nxcloud_app;
GRANT EXECUTE ON FUNCTION telemetry_buckets(text, uuid, integer[], timestamptz, timestamptz) TO nxcloud_app;
GRANT EXECUTE ON FUNCTION telemetry_latest(uuid, integer[], interval) TO nxcloud_app;
