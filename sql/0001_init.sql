-- Colony's first schema: tasks, their runs, their history, and the outbox.
--
-- A task's state changes only through guarded UPDATEs
-- (… WHERE state = <expected> AND …), written together with an events row
-- and, when the change must be announced, outbox rows, in one statement.

CREATE TABLE tasks (
    id              uuid PRIMARY KEY,
    tenant          text NOT NULL,
    role            text NOT NULL,
    goal_id         uuid,
    input           jsonb NOT NULL,
    state           text NOT NULL CHECK (state IN
                      ('pending','queued','running','review','rework','blocked','done','failed','cancelled')),
    attempt         integer NOT NULL CHECK (attempt >= 1),
    max_attempts    integer NOT NULL CHECK (max_attempts >= 1),
    timeout_secs    integer NOT NULL CHECK (timeout_secs >= 1),
    idempotency_key text,
    -- The outbox row (= Nats-Msg-Id) of the work message that queued the
    -- current attempt; a worker acts only on that message.
    dispatch_id     uuid,
    worker_id       text,
    heartbeat_at    timestamptz,
    result          jsonb,
    error           text,
    created_at      timestamptz NOT NULL,
    updated_at      timestamptz NOT NULL
);

CREATE UNIQUE INDEX tasks_idempotency ON tasks (tenant, idempotency_key)
    WHERE idempotency_key IS NOT NULL;
CREATE INDEX tasks_running_heartbeat ON tasks (heartbeat_at) WHERE state = 'running';
CREATE INDEX tasks_state ON tasks (state, updated_at);

-- One row per attempt a worker started (a hand-back on shutdown and a
-- takeover after a lost worker each end one run and start another).
CREATE TABLE runs (
    id           uuid PRIMARY KEY,
    task_id      uuid NOT NULL REFERENCES tasks (id),
    attempt      integer NOT NULL,
    worker_id    text NOT NULL,
    container_id text,
    state        text NOT NULL CHECK (state IN ('running','succeeded','failed','lost','handed_back','cancelled')),
    error        text,
    started_at   timestamptz NOT NULL,
    finished_at  timestamptz
);
CREATE INDEX runs_task ON runs (task_id, started_at);

-- Every state transition, forever.
CREATE TABLE events (
    id         bigserial PRIMARY KEY,
    task_id    uuid NOT NULL REFERENCES tasks (id),
    attempt    integer NOT NULL,
    from_state text,
    to_state   text NOT NULL,
    reason     text,
    at         timestamptz NOT NULL
);
CREATE INDEX events_task ON events (task_id, id);

-- Messages committed with a state change, waiting to be published.
-- The process that wrote a row publishes it at once and deletes it; a row
-- whose claim ran out (that process died) is taken by any relay's poller.
CREATE TABLE outbox (
    id            uuid PRIMARY KEY,
    subject       text NOT NULL,
    payload       bytea NOT NULL,
    task_id       uuid,
    available_at  timestamptz NOT NULL,
    claimed_until timestamptz,
    created_at    timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX outbox_due ON outbox (available_at);
