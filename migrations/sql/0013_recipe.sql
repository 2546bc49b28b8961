-- Recipe management (apps/recipe): recipes per product/grade, their versions
-- (draft → in_review → approved → released → retired), downloads of released
-- versions to equipment over MQTT with each device's acknowledgement, and
-- deviation alarms when a lot's telemetry leaves its recipe's limits.

CREATE TABLE recipes (
    tenant_id   uuid NOT NULL REFERENCES tenants (id),
    id          uuid NOT NULL DEFAULT gen_random_uuid() PRIMARY KEY,
    code        text NOT NULL CHECK (code ~ '^[A-Za-z0-9][A-Za-z0-9_.:/-]{0,63}$'),
    name        text NOT NULL,
    product     text NOT NULL DEFAULT '',
    grade_code  text NOT NULL,
    description text NOT NULL DEFAULT '',
    created_at  timestamptz NOT NULL DEFAULT now(),
    created_by  text NOT NULL DEFAULT '',
    UNIQUE (tenant_id, code),
    FOREIGN KEY (tenant_id, grade_code) REFERENCES grades (tenant_id, code)
);
CREATE INDEX recipes_grade_idx ON recipes (tenant_id, grade_code);

-- A version's content (ingredients, parameters) is JSON validated by the app;
-- the trigger below keeps it immutable once the version left draft. Each
-- transition records who (principal kind, id, name) and when.
CREATE TABLE recipe_versions (
    tenant_id         uuid NOT NULL REFERENCES tenants (id),
    id                uuid NOT NULL DEFAULT gen_random_uuid() PRIMARY KEY,
    recipe_id         uuid NOT NULL REFERENCES recipes (id),
    number            integer NOT NULL CHECK (number > 0),
    status            text NOT NULL DEFAULT 'draft'
                      CHECK (status IN ('draft', 'in_review', 'approved', 'released', 'retired')),
    notes             text NOT NULL DEFAULT '',
    ingredients       jsonb NOT NULL DEFAULT '[]',
    parameters        jsonb NOT NULL DEFAULT '[]',
    created_at        timestamptz NOT NULL DEFAULT now(),
    created_by        jsonb NOT NULL DEFAULT '{}',
    updated_at        timestamptz NOT NULL DEFAULT now(),
    submitted_at      timestamptz,
    submitted_by      jsonb,
    approved_at       timestamptz,
    approved_by       jsonb,
    released_at       timestamptz,
    released_by       jsonb,
    retired_at        timestamptz,
    retired_by        jsonb,
    -- returned_* records the last time a reviewer sent the version back to draft.
    returned_at       timestamptz,
    returned_by       jsonb,
    return_reason     text NOT NULL DEFAULT '',
    -- history: every transition with status, at, by and comment, oldest first.
    history           jsonb NOT NULL DEFAULT '[]',
    UNIQUE (recipe_id, number),
    UNIQUE (tenant_id, id)
);
CREATE INDEX recipe_versions_tenant_idx ON recipe_versions (tenant_id, recipe_id);

-- Content is frozen outside draft: a second line of defence behind the app's
-- 409 (a bug or a hand-written UPDATE cannot change what was approved).
CREATE FUNCTION nx_recipe_version_frozen() RETURNS trigger
LANGUAGE plpgsql
AS $$
BEGIN
    IF OLD.status <> 'draft' AND (NEW.ingredients IS DISTINCT FROM OLD.ingredients
        OR NEW.parameters IS DISTINCT FROM OLD.parameters OR NEW.notes IS DISTINCT FROM OLD.notes
        OR NEW.recipe_id IS DISTINCT FROM OLD.recipe_id OR NEW.number IS DISTINCT FROM OLD.number) THEN
        RAISE EXCEPTION 'recipe version % is %, its content is immutable', OLD.id, OLD.status
            USING ERRCODE = '23514';
    END IF;
    IF OLD.status IN ('released', 'retired') AND NEW.status NOT IN ('released', 'retired') THEN
        RAISE EXCEPTION 'recipe version % is %, it cannot go back', OLD.id, OLD.status
            USING ERRCODE = '23514';
    END IF;
    RETURN NEW;
END
$$;
CREATE TRIGGER recipe_version_frozen BEFORE UPDATE ON recipe_versions
    FOR EACH ROW EXECUTE FUNCTION nx_recipe_version_frozen();

-- One download of a released version to one device. status: pending (not
-- published yet), sent (published, no reply yet), applied / rejected (the
-- device's reply), timed_out (no reply after max attempts), superseded (a
-- newer download to the same device replaced it before a reply).
CREATE TABLE recipe_downloads (
    tenant_id       uuid NOT NULL REFERENCES tenants (id),
    id              uuid NOT NULL DEFAULT gen_random_uuid() PRIMARY KEY,
    version_id      uuid NOT NULL REFERENCES recipe_versions (id),
    line_id         uuid REFERENCES lines (id),
    device_id       uuid NOT NULL REFERENCES devices (id),
    status          text NOT NULL DEFAULT 'pending'
                    CHECK (status IN ('pending', 'sent', 'applied', 'rejected', 'timed_out', 'superseded')),
    reason          text NOT NULL DEFAULT '',
    payload         jsonb NOT NULL,
    attempts        integer NOT NULL DEFAULT 0,
    max_attempts    integer NOT NULL,
    next_attempt_at timestamptz,
    created_at      timestamptz NOT NULL DEFAULT now(),
    created_by      jsonb NOT NULL DEFAULT '{}',
    first_sent_at   timestamptz,
    last_sent_at    timestamptz,
    replied_at      timestamptz
);
CREATE INDEX recipe_downloads_device_idx ON recipe_downloads (tenant_id, device_id, created_at DESC);
CREATE INDEX recipe_downloads_due_idx ON recipe_downloads (next_attempt_at) WHERE status IN ('pending', 'sent');

-- How far deviation detection has scanned each lot run's telemetry.
CREATE TABLE recipe_run_scans (
    tenant_id   uuid NOT NULL REFERENCES tenants (id),
    run_id      bigint PRIMARY KEY REFERENCES lot_runs (id),
    scanned_to  timestamptz NOT NULL,
    done        boolean NOT NULL DEFAULT false,
    updated_at  timestamptz NOT NULL DEFAULT now()
);

-- A deviation: consecutive telemetry points of one parameter's metric
-- outside its limits on one side, during one lot run.
CREATE TABLE recipe_deviations (
    tenant_id        uuid NOT NULL REFERENCES tenants (id),
    id               uuid NOT NULL DEFAULT gen_random_uuid() PRIMARY KEY,
    run_id           bigint NOT NULL REFERENCES lot_runs (id),
    lot_id           uuid NOT NULL REFERENCES lots (id),
    device_id        uuid NOT NULL REFERENCES devices (id),
    version_id       uuid NOT NULL REFERENCES recipe_versions (id),
    metric           text NOT NULL,
    unit             text NOT NULL DEFAULT '',
    limit_crossed    text NOT NULL CHECK (limit_crossed IN ('upper', 'lower')),
    lower_limit      double precision NOT NULL,
    upper_limit      double precision NOT NULL,
    setpoint         double precision NOT NULL,
    started_at       timestamptz NOT NULL,
    ended_at         timestamptz,
    last_at          timestamptz NOT NULL,
    worst_value      double precision NOT NULL,
    worst_at         timestamptz NOT NULL,
    points           integer NOT NULL DEFAULT 1,
    acknowledged_at  timestamptz,
    acknowledged_by  jsonb,
    ack_note         text NOT NULL DEFAULT '',
    created_at       timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX recipe_deviations_lot_idx ON recipe_deviations (tenant_id, lot_id);
CREATE INDEX recipe_deviations_device_idx ON recipe_deviations (tenant_id, device_id, started_at DESC);
-- A deviation that spans scans is continued, never opened twice.
CREATE UNIQUE INDEX recipe_deviations_open_idx ON recipe_deviations (run_id, metric) WHERE ended_at IS NULL;

-- A lot's recipe version is a version of the lot's own enterprise (a plain
-- foreign key would not check the tenant: it bypasses row-level security).
ALTER TABLE lots ADD CONSTRAINT lots_recipe_version_fk
    FOREIGN KEY (tenant_id, recipe_version_id) REFERENCES recipe_versions (tenant_id, id);

ALTER TABLE recipes ENABLE ROW LEVEL SECURITY;
ALTER TABLE recipes FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON recipes USING (tenant_id = nx_tenant()) WITH CHECK (tenant_id = nx_tenant());
GRANT SELECT, INSERT, UPDATE ON recipes TO nxcloud_app;

ALTER TABLE recipe_versions ENABLE ROW LEVEL SECURITY;
ALTER TABLE recipe_versions FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON recipe_versions USING (tenant_id = nx_tenant()) WITH CHECK (tenant_id = nx_tenant());
GRANT SELECT, INSERT, UPDATE ON recipe_versions TO nxcloud_app;

ALTER TABLE recipe_downloads ENABLE ROW LEVEL SECURITY;
ALTER TABLE recipe_downloads FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON recipe_downloads USING (tenant_id = nx_tenant()) WITH CHECK (tenant_id = nx_tenant());
GRANT SELECT, INSERT, UPDATE ON recipe_downloads TO nxcloud_app;

ALTER TABLE recipe_run_scans ENABLE ROW LEVEL SECURITY;
ALTER TABLE recipe_run_scans FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON recipe_run_scans USING (tenant_id = nx_tenant()) WITH CHECK (tenant_id = nx_tenant());
GRANT SELECT, INSERT, UPDATE ON recipe_run_scans TO nxcloud_app;

ALTER TABLE recipe_deviations ENABLE ROW LEVEL SECURITY;
ALTER TABLE recipe_deviations FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON recipe_deviations USING (tenant_id = nx_tenant()) WITH CHECK (tenant_id = nx_tenant());
GRANT SELECT, INSERT, UPDATE ON recipe_deviations TO nxcloud_app;
