-- API keys managed by the enterprise (issue 3): scoped, expiring, revocable.
--
-- scopes: the permissions the key holds. '*' means every permission of the
-- enterprise (what an owner may do, short of the owner-only acts); the keys
-- made at onboarding and the demo key keep it. Keys created through the API
-- name explicit scopes, never '*' and never users:write, keys:write or
-- grants:write (a key cannot mint keys or hand out access); Go checks that
-- (tenants.APIKeyScopes), the table only bounds the list.
--
-- created_by: the user or API key that created it; NULL for the keys made at
-- onboarding, by the demo, and before this migration.
ALTER TABLE api_keys ADD COLUMN scopes text[] NOT NULL DEFAULT '{*}'
    CHECK (cardinality(scopes) BETWEEN 1 AND 64);
ALTER TABLE api_keys ADD COLUMN created_by uuid;

CREATE INDEX api_keys_tenant_idx ON api_keys (tenant_id, created_at DESC);

-- A key is immutable but for its revocation, and a revoked key stays revoked
-- (for the owner too; the app role may only set revoked_at).
CREATE FUNCTION nx_api_keys_guard() RETURNS trigger
LANGUAGE plpgsql
AS $$
BEGIN
    IF OLD.revoked_at IS NOT NULL THEN
        RAISE EXCEPTION 'API key % is revoked and cannot change', OLD.id USING ERRCODE = '23514';
    END IF;
    IF NEW.tenant_id IS DISTINCT FROM OLD.tenant_id OR NEW.id IS DISTINCT FROM OLD.id
       OR NEW.prefix IS DISTINCT FROM OLD.prefix OR NEW.salt IS DISTINCT FROM OLD.salt
       OR NEW.hash IS DISTINCT FROM OLD.hash OR NEW.name IS DISTINCT FROM OLD.name
       OR NEW.scopes IS DISTINCT FROM OLD.scopes OR NEW.expires_at IS DISTINCT FROM OLD.expires_at
       OR NEW.created_by IS DISTINCT FROM OLD.created_by OR NEW.created_at IS DISTINCT FROM OLD.created_at THEN
        RAISE EXCEPTION 'only revoked_at of an API key may change' USING ERRCODE = '23514';
    END IF;
    RETURN NEW;
END
$$;
CREATE TRIGGER api_keys_guard BEFORE UPDATE ON api_keys FOR EACH ROW EXECUTE FUNCTION nx_api_keys_guard();

-- The app role lists, creates and revokes its tenant's keys (under RLS); it
-- never deletes one, so the record of who held access stays.
REVOKE UPDATE, DELETE ON api_keys FROM nxcloud_app;
GRANT UPDATE (revoked_at) ON api_keys TO nxcloud_app;
