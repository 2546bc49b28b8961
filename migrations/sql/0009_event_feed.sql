-- The device-event feed: N apps consume committed device events (lot start/end,
-- test-bench results, command replies) at least once and apply each one's
-- effect exactly once, by recording the event as seen in the same transaction
-- as its effect. Identity values can commit out of order (concurrent writers),
-- so a consumer remembers the events it has seen above a low watermark rather
-- than a single cursor; rows below the watermark are pruned.
CREATE TABLE event_feed_consumers (
    consumer    text PRIMARY KEY,
    low_id      bigint NOT NULL DEFAULT 0,
    updated_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE event_feed_seen (
    consumer    text NOT NULL REFERENCES event_feed_consumers (consumer),
    event_id    bigint NOT NULL,
    tenant_id   uuid NOT NULL REFERENCES tenants (id),
    seen_at     timestamptz NOT NULL DEFAULT now(),
    -- error is set when the consumer refused the event (a malformed payload,
    -- an unknown lot): it is not retried, and the tenant can see why.
    error       text,
    PRIMARY KEY (consumer, event_id)
);

ALTER TABLE event_feed_seen ENABLE ROW LEVEL SECURITY;
ALTER TABLE event_feed_seen FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON event_feed_seen USING (tenant_id = nx_tenant()) WITH CHECK (tenant_id = nx_tenant());
GRANT SELECT ON event_feed_seen TO nxcloud_app;

CREATE INDEX device_events_feed_idx ON device_events (kind, id);
