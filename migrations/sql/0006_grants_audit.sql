-- Contractor grants and the audit log (DESIGN §1, issue 3).
--
-- grants: an enterprise lets a contractor organisation use some scopes on its
-- tenant until an expiry, revocable at once. The app role reads, creates and
-- revokes them under row-level security; it may change revoked_at only, and a
-- revoked grant stays revoked.
--
-- audit_log: who did what, on which tenant, with what outcome. Rows are written
-- by the system role; the app role may only read its tenant's rows. Nobody
-- updates or deletes a row (a trigger refuses it even for the owner; pruning
-- old rows is an explicit maintenance step that disables it).

CREATE TABLE grants (
    tenant_id          uuid NOT NULL REFERENCES tenants (id),
    id                 uuid NOT NULL DEFAULT gen_random_uuid() PRIMARY KEY,
    contractor_org_id  uuid NOT NULL REFERENCES orgs (id),
    scopes             text[] NOT NULL CHECK (cardinality(scopes) BETWEEN 1 AND 64),
    expires_at         timestamptz NOT NULL,
    revoked_at         timestamptz,
    created_by         uuid,
    created_at         timestamptz NOT NULL DEFAULT now(),
    CHECK (expires_at > created_at)
);
CREATE INDEX grants_tenant_idx ON grants (tenant_id, created_at DESC);
-- The lookup every contractor request makes (through a short cache).
CREATE INDEX grants_contractor_idx ON grants (contractor_org_id, tenant_id) WHERE revoked_at IS NULL;

ALTER TABLE grants ENABLE ROW LEVEL SECURITY;
ALTER TABLE grants FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON grants USING (tenant_id = nx_tenant()) WITH CHECK (tenant_id = nx_tenant());

CREATE FUNCTION nx_grants_guard() RETURNS trigger
LANGUAGE plpgsql
AS $$
BEGIN
    IF OLD.revoked_at IS NOT NULL THEN
        RAISE EXCEPTION 'grant % is revoked and cannot change', OLD.id USING ERRCODE = '23514';
    END IF;
    IF NEW.tenant_id IS DISTINCT FROM OLD.tenant_id OR NEW.id IS DISTINCT FROM OLD.id
       OR NEW.contractor_org_id IS DISTINCT FROM OLD.contractor_org_id OR NEW.scopes IS DISTINCT FROM OLD.scopes
       OR NEW.expires_at IS DISTINCT FROM OLD.expires_at OR NEW.created_by IS DISTINCT FROM OLD.created_by
       OR NEW.created_at IS DISTINCT FROM OLD.created_at THEN
        RAISE EXCEPTION 'only revoked_at of a grant may change' USING ERRCODE = '23514';
    END IF;
    RETURN NEW;
END
$$;
CREATE TRIGGER grants_guard BEFORE UPDATE ON grants FOR EACH ROW EXECUTE FUNCTION nx_grants_guard();

GRANT SELECT, INSERT ON grants TO nxcloud_app;
GRANT UPDATE (revoked_at) ON grants TO nxcloud_app;

CREATE TABLE audit_log (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    -- NULL: not about one tenant (platform-level operator actions, a
    -- contractor naming an unknown tenant).
    tenant_id       uuid REFERENCES tenants (id),
    at              timestamptz NOT NULL DEFAULT now(),
    -- user, api_key, operator, anonymous
    actor_kind      text NOT NULL,
    actor_id        uuid,
    actor_org       uuid,
    -- enterprise, contractor, association, operator, or '' (e.g. an API key)
    actor_org_kind  text NOT NULL DEFAULT '',
    actor_name      text NOT NULL DEFAULT '',
    action          text NOT NULL,
    resource        text NOT NULL DEFAULT '',
    result          text NOT NULL CHECK (result IN ('ok', 'denied', 'error')),
    status          integer NOT NULL DEFAULT 0,
    ip              text NOT NULL DEFAULT '',
    request_id      text NOT NULL DEFAULT '',
    detail          jsonb NOT NULL DEFAULT '{}'
);
CREATE INDEX audit_log_tenant_idx ON audit_log (tenant_id, id DESC);

ALTER TABLE audit_log ENABLE ROW LEVEL SECURITY;
ALTER TABLE audit_log FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_read ON audit_log FOR SELECT USING (tenant_id = nx_tenant());

CREATE FUNCTION nx_audit_append_only() RETURNS trigger
LANGUAGE plpgsql
AS $$
BEGIN
    RAISE EXCEPTION 'audit_log is append-only' USING ERRCODE = '42501';
END
$$;
CREATE TRIGGER audit_log_append_only BEFORE UPDATE OR DELETE ON audit_log
    FOR EACH ROW EXECUTE FUNCTION nx_audit_append_only();
CREATE TRIGGER audit_log_no_truncate BEFORE TRUNCATE ON audit_log
    FOR EACH STATEMENT EXECUTE FUNCTION nx_audit_append_only();

GRANT SELECT ON audit_log TO nxcloud_app;
