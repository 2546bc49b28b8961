-- Core schema: the application role, tenancy helpers, sectors, tenants and their
-- devices, API keys and dead letters. Every table with tenant_id has row-level
-- security enabled and forced; nxcloud_app (the role tenant-facing requests use)
-- neither owns the tables nor bypasses RLS.

DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'nxcloud_app') THEN
        CREATE ROLE nxcloud_app LOGIN NOSUPERUSER NOBYPASSRLS NOCREATEDB NOCREATEROLE;
    END IF;
END
$$;

-- nx_tenant is the tenant of the current transaction, set by tenants.InTx with
-- set_config('nx.tenant_id', id, true). Outside a transaction that set it, the
-- setting reads '' (or is missing), and nx_tenant is NULL, which matches nothing.
CREATE FUNCTION nx_tenant() RETURNS uuid
LANGUAGE sql STABLE PARALLEL SAFE
AS $$ SELECT nullif(current_setting('nx.tenant_id', true), '')::uuid $$;

-- nx_require_tenant is nx_tenant, but raises when no tenant is set, so a query
-- that forgot the tenant fails loudly instead of returning nothing.
CREATE FUNCTION nx_require_tenant() RETURNS uuid
LANGUAGE plpgsql STABLE
AS $$
DECLARE
    t uuid := nx_tenant();
BEGIN
    IF t IS NULL THEN
        RAISE EXCEPTION 'no tenant in this transaction (nx.tenant_id is not set)'
            USING ERRCODE = '42501';
    END IF;
    RETURN t;
END
$$;

CREATE TABLE sectors (
    id          text PRIMARY KEY,
    name        text NOT NULL,
    version     integer NOT NULL,
    template    jsonb NOT NULL,
    loaded_at   timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE tenants (
    id          uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    slug        text NOT NULL UNIQUE CHECK (slug ~ '^[a-z0-9][a-z0-9-]{1,62}$'),
    name        text NOT NULL,
    sector_id   text NOT NULL REFERENCES sectors (id),
    status      text NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'suspended')),
    created_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE device_models (
    tenant_id   uuid NOT NULL REFERENCES tenants (id),
    id          uuid NOT NULL DEFAULT gen_random_uuid() PRIMARY KEY,
    key         text NOT NULL,
    name        text NOT NULL,
    kind        text NOT NULL DEFAULT '',
    UNIQUE (tenant_id, key)
);

CREATE TABLE metrics (
    tenant_id       uuid NOT NULL REFERENCES tenants (id),
    id              integer GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    device_model_id uuid NOT NULL REFERENCES device_models (id),
    key             text NOT NULL,
    name            text NOT NULL,
    unit            text NOT NULL DEFAULT '',
    min_value       double precision,
    max_value       double precision,
    UNIQUE (device_model_id, key)
);
CREATE INDEX metrics_tenant_idx ON metrics (tenant_id);

CREATE TABLE defect_codes (
    tenant_id       uuid NOT NULL REFERENCES tenants (id),
    code            text NOT NULL,
    name            text NOT NULL,
    characteristic  text NOT NULL DEFAULT '',
    PRIMARY KEY (tenant_id, code)
);

CREATE TABLE grades (
    tenant_id   uuid NOT NULL REFERENCES tenants (id),
    code        text NOT NULL,
    name        text NOT NULL,
    family      text NOT NULL DEFAULT '',
    rank        integer NOT NULL DEFAULT 0,
    specs       jsonb NOT NULL DEFAULT '{}',
    PRIMARY KEY (tenant_id, code)
);

CREATE TABLE lines (
    tenant_id   uuid NOT NULL REFERENCES tenants (id),
    id          uuid NOT NULL DEFAULT gen_random_uuid() PRIMARY KEY,
    key         text NOT NULL CHECK (key ~ '^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$'),
    name        text NOT NULL,
    UNIQUE (tenant_id, key)
);

CREATE TABLE devices (
    tenant_id       uuid NOT NULL REFERENCES tenants (id),
    id              uuid NOT NULL DEFAULT gen_random_uuid() PRIMARY KEY,
    key             text NOT NULL CHECK (key ~ '^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$'),
    name            text NOT NULL,
    device_model_id uuid NOT NULL REFERENCES device_models (id),
    line_id         uuid REFERENCES lines (id),
    secret_salt     bytea NOT NULL,
    secret_hash     bytea NOT NULL,
    status          text NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'disabled')),
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    UNIQUE (tenant_id, key)
);

CREATE TABLE api_keys (
    tenant_id   uuid NOT NULL REFERENCES tenants (id),
    id          uuid NOT NULL DEFAULT gen_random_uuid() PRIMARY KEY,
    prefix      text NOT NULL UNIQUE,
    salt        bytea NOT NULL,
    hash        bytea NOT NULL,
    name        text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    expires_at  timestamptz,
    revoked_at  timestamptz
);

CREATE TABLE dead_letters (
    tenant_id   uuid NOT NULL REFERENCES tenants (id),
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    device_id   uuid REFERENCES devices (id),
    received_at timestamptz NOT NULL DEFAULT now(),
    topic       text NOT NULL,
    reason      text NOT NULL,
    detail      text NOT NULL DEFAULT '',
    payload     text NOT NULL DEFAULT '',
    payload_size integer NOT NULL DEFAULT 0
);
CREATE INDEX dead_letters_tenant_idx ON dead_letters (tenant_id, id DESC);
CREATE INDEX dead_letters_device_idx ON dead_letters (tenant_id, device_id, id DESC);

-- Row-level security: the backstop behind every tenant-scoped query.
ALTER TABLE tenants ENABLE ROW LEVEL SECURITY;
ALTER TABLE tenants FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON tenants USING (id = nx_tenant()) WITH CHECK (id = nx_tenant());

DO $$
DECLARE
    t text;
BEGIN
    FOREACH t IN ARRAY ARRAY['device_models', 'metrics', 'defect_codes', 'grades', 'lines', 'devices',
                             'api_keys', 'dead_letters']
    LOOP
        EXECUTE format('ALTER TABLE %I ENABLE ROW LEVEL SECURITY', t);
        EXECUTE format('ALTER TABLE %I FORCE ROW LEVEL SECURITY', t);
        EXECUTE format('CREATE POLICY tenant_isolation ON %I USING (tenant_id = nx_tenant()) '
                       'WITH CHECK (tenant_id = nx_tenant())', t);
    END LOOP;
END
$$;

GRANT USAGE ON SCHEMA public TO nxcloud_app;
GRANT SELECT ON sectors TO nxcloud_app;
GRANT SELECT ON tenants, device_models, metrics, defect_codes, grades TO nxcloud_app;
GRANT SELECT, INSERT, UPDATE, DELETE ON lines, devices, api_keys TO nxcloud_app;
GRANT SELECT ON dead_letters TO nxcloud_app;
GRANT EXECUTE ON FUNCTION nx_tenant(), nx_require_tenant() TO nxcloud_app;
