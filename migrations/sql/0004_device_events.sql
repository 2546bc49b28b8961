-- Non-numeric device data: events (e.g. lot start/end from equipment), state
-- changes and replies to commands, as published by devices.
CREATE TABLE device_events (
    tenant_id   uuid NOT NULL REFERENCES tenants (id),
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    device_id   uuid NOT NULL REFERENCES devices (id),
    kind        text NOT NULL CHECK (kind IN ('event', 'state', 'cmd_reply')),
    name        text NOT NULL DEFAULT '',
    ts          timestamptz NOT NULL,
    received_at timestamptz NOT NULL DEFAULT now(),
    payload     jsonb NOT NULL
);
CREATE INDEX device_events_device_idx ON device_events (tenant_id, device_id, ts DESC);

ALTER TABLE device_events ENABLE ROW LEVEL SECURITY;
ALTER TABLE device_events FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON device_events USING (tenant_id = nx_tenant()) WITH CHECK (tenant_id = nx_tenant());
GRANT SELECT ON device_events TO nxcloud_app;
