-- API keys for the HTTP API (see services/store/src/keys.rs): a tenant's
-- keys with a scope each, and operator keys (tenant '*') that span tenants.
-- Only the SHA-256 of a key is kept. Employees lose their tokens, which
-- authenticated nothing.

CREATE TYPE key_scope AS ENUM ('read', 'submit', 'admin', 'operator');

CREATE TABLE api_keys (
    id           uuid PRIMARY KEY,
    tenant       text NOT NULL,
    name         text NOT NULL,
    scope        key_scope NOT NULL,
    hash         bytea NOT NULL,
    prefix       text NOT NULL,
    created_at   timestamptz NOT NULL,
    last_used_at timestamptz,
    revoked_at   timestamptz
);
CREATE UNIQUE INDEX api_keys_hash ON api_keys (hash);
CREATE INDEX api_keys_tenant ON api_keys (tenant, created_at);

DROP INDEX employees_token;
ALTER TABLE employees DROP COLUMN token_hash;
