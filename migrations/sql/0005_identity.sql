-- Identity: organisations, users, memberships, invitations and sessions
-- (DESIGN §1). These tables are global — a user may belong to several
-- organisations, of several kinds — and only the System pool reads or writes
-- them; nxcloud_app gets no privilege on any of them. Authorisation happens in
-- Go (tenants.Authorize); the role of a membership is checked against the
-- organisation's kind in Go (tenants.ValidRole), where the role table lives.

-- An organisation. An enterprise organisation is its tenant: same id, and
-- tenant_id = id, so a principal's organisation and tenant coincide for
-- factory staff. Contractors, the association and the operator have no tenant.
CREATE TABLE orgs (
    id          uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    kind        text NOT NULL CHECK (kind IN ('enterprise', 'contractor', 'association', 'operator')),
    name        text NOT NULL CHECK (name <> ''),
    tenant_id   uuid UNIQUE REFERENCES tenants (id),
    created_at  timestamptz NOT NULL DEFAULT now(),
    CHECK ((kind = 'enterprise') = (tenant_id IS NOT NULL)),
    CHECK (kind <> 'enterprise' OR id = tenant_id)
);

-- Every existing tenant gets its enterprise organisation.
INSERT INTO orgs (id, kind, name, tenant_id, created_at)
SELECT id, 'enterprise', name, id, created_at FROM tenants;

-- orgs carries tenant_id, so it gets the same backstop as every tenant table
-- (the catalog test demands it), although nxcloud_app cannot read it at all.
ALTER TABLE orgs ENABLE ROW LEVEL SECURITY;
ALTER TABLE orgs FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON orgs USING (tenant_id = nx_tenant()) WITH CHECK (tenant_id = nx_tenant());

-- A person. email is stored trimmed and lower-cased (by Go), so UNIQUE is
-- case-insensitive in effect. password_hash is a PHC string
-- ($argon2id$v=19$m=...,t=...,p=...$salt$hash). failed_logins and locked_until
-- are the throttling fallback used while Redis is unreachable.
CREATE TABLE users (
    id              uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    email           text NOT NULL UNIQUE CHECK (email <> '' AND email = btrim(email)),
    name            text NOT NULL,
    password_hash   text NOT NULL,
    status          text NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'disabled')),
    failed_logins   integer NOT NULL DEFAULT 0,
    locked_until    timestamptz,
    created_at      timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE memberships (
    org_id      uuid NOT NULL REFERENCES orgs (id),
    user_id     uuid NOT NULL REFERENCES users (id),
    role        text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (org_id, user_id)
);
CREATE INDEX memberships_user_idx ON memberships (user_id);

-- An invitation to join an organisation with a role. Only the SHA-256 of its
-- token is stored; it is single-use (accepted_at) and expires.
CREATE TABLE invitations (
    id          uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    org_id      uuid NOT NULL REFERENCES orgs (id),
    email       text NOT NULL,
    role        text NOT NULL,
    token_hash  bytea NOT NULL UNIQUE,
    expires_at  timestamptz NOT NULL,
    accepted_at timestamptz,
    created_by  uuid REFERENCES users (id),
    created_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX invitations_org_idx ON invitations (org_id, created_at DESC);

-- A login session of a user in one organisation. Only the SHA-256 of its
-- token is stored.
CREATE TABLE sessions (
    id          uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    user_id     uuid NOT NULL REFERENCES users (id),
    org_id      uuid NOT NULL REFERENCES orgs (id),
    token_hash  bytea NOT NULL UNIQUE,
    created_at  timestamptz NOT NULL DEFAULT now(),
    expires_at  timestamptz NOT NULL,
    revoked_at  timestamptz,
    ip          text NOT NULL DEFAULT '',
    user_agent  text NOT NULL DEFAULT ''
);
CREATE INDEX sessions_user_idx ON sessions (user_id, org_id) WHERE revoked_at IS NULL;
