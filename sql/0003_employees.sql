-- AI employees: hired instances of a role template, with their memory,
-- their audit trail, their model usage, and the tenant's credential vault.
--
-- None of these tables is on the task hot path, so they keep foreign keys
-- where a row makes no sense without its parent (memory). audit and usage
-- are written on every gateway call and keep history after an employee is
-- offboarded, so they carry plain ids and no trigger. As in
-- 0002_lean_writes.sql, states are enums, and tasks/runs/events get no new
-- CHECK or foreign key: tasks.employee_id is checked by ingress.

CREATE TYPE employee_state AS ENUM ('active', 'paused', 'offboarded');
CREATE TYPE audit_outcome AS ENUM ('allowed', 'denied', 'failed');

CREATE TABLE employees (
    id            uuid PRIMARY KEY,
    tenant        text NOT NULL,
    name          text NOT NULL,
    role          text NOT NULL,
    state         employee_state NOT NULL,
    -- sha256 (hex) of the token shown once at hire; the token is not kept.
    token_hash    text NOT NULL,
    -- Per-employee overrides of the role's quotas (absent field: the role's).
    quotas        jsonb NOT NULL DEFAULT '{}',
    created_at    timestamptz NOT NULL,
    updated_at    timestamptz NOT NULL,
    offboarded_at timestamptz
);
-- A name is taken only while its employee works here.
CREATE UNIQUE INDEX employees_name ON employees (tenant, name) WHERE state <> 'offboarded';
CREATE UNIQUE INDEX employees_token ON employees (token_hash);
CREATE INDEX employees_tenant ON employees (tenant, created_at);

-- Key/value memory of an employee, injected at dispatch; kept after
-- offboarding with the rest of the history.
CREATE TABLE memory (
    employee_id uuid NOT NULL REFERENCES employees (id),
    key         text NOT NULL,
    value       jsonb NOT NULL,
    updated_at  timestamptz NOT NULL,
    PRIMARY KEY (employee_id, key)
);

-- Every platform action an employee's run asked for, allowed or not.
CREATE TABLE audit (
    id          bigserial PRIMARY KEY,
    at          timestamptz NOT NULL,
    tenant      text NOT NULL,
    employee_id uuid,
    task_id     uuid,
    run_id      uuid,
    action      text NOT NULL,
    target      text,
    outcome     audit_outcome NOT NULL,
    detail      text
);
CREATE INDEX audit_tenant_at ON audit (tenant, at);
CREATE INDEX audit_employee_at ON audit (employee_id, at) WHERE employee_id IS NOT NULL;
CREATE INDEX audit_action_at ON audit (tenant, action, outcome, at);

-- One row per model call.
CREATE TABLE usage (
    id                bigserial PRIMARY KEY,
    at                timestamptz NOT NULL,
    tenant            text NOT NULL,
    run_id            uuid,
    task_id           uuid,
    employee_id       uuid,
    model             text NOT NULL,
    prompt_tokens     bigint NOT NULL,
    completion_tokens bigint NOT NULL,
    cost_usd          float8 NOT NULL
);
CREATE INDEX usage_employee_at ON usage (employee_id, at) WHERE employee_id IS NOT NULL;
CREATE INDEX usage_task ON usage (task_id) WHERE task_id IS NOT NULL;
CREATE INDEX usage_run ON usage (run_id) WHERE run_id IS NOT NULL;

-- Secrets the gateway attaches to outgoing requests whose URL starts with
-- url_prefix. AES-256-GCM with a key from the configuration; the
-- credential's id and tenant are the associated data, so a ciphertext
-- cannot be moved to another row.
CREATE TABLE credentials (
    id         uuid PRIMARY KEY,
    tenant     text NOT NULL,
    name       text NOT NULL,
    url_prefix text NOT NULL,
    header     text NOT NULL,
    nonce      bytea NOT NULL,
    ciphertext bytea NOT NULL,
    created_at timestamptz NOT NULL
);
CREATE UNIQUE INDEX credentials_name ON credentials (tenant, name);

-- The employee a task was given to. No foreign key and no index on the
-- hot path's writes beyond this partial one, which tasks without an employee never enter.
ALTER TABLE tasks ADD COLUMN employee_id uuid;
CREATE INDEX tasks_employee ON tasks (employee_id, created_at) WHERE employee_id IS NOT NULL;
