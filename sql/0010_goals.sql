-- Goals and the self-organizing loop (see services/store/src/goals.rs).
--
-- A goal is planned by a planner run into sub-tasks, which are rows of
-- `tasks` with the goal's id and a `subtask_key`; `task_deps` holds the
-- edges of their dependency graph, and `deps_left` how many of a sub-task's
-- dependencies are not done yet (a sub-task is queued when it reaches 0,
-- in the transaction that finishes its last dependency). The runs that the
-- loop itself needs (planning, review, delivery) are tasks too, told apart
-- by `kind`.

CREATE TYPE goal_state AS ENUM
    ('planning', 'awaiting_approval', 'running', 'delivering', 'paused', 'blocked',
     'done', 'failed', 'cancelled');
CREATE TYPE task_kind AS ENUM ('work', 'plan', 'review', 'deliver');

CREATE TABLE goals (
    id                    uuid PRIMARY KEY,
    tenant                text NOT NULL,
    title                 text NOT NULL,
    description           text NOT NULL,
    acceptance            text NOT NULL,
    -- {tokens, cost_usd, wall_secs}; an absent field is unlimited.
    budget                jsonb NOT NULL DEFAULT '{}',
    priority              smallint NOT NULL DEFAULT 0,
    planner_id            uuid,
    require_plan_approval boolean NOT NULL DEFAULT false,
    state                 goal_state NOT NULL,
    -- The accepted plan, as submitted.
    plan                  jsonb,
    -- The current planning run's task, and how many plans (or planning
    -- runs that ended without one) were refused so far.
    plan_task_id          uuid,
    plan_rejections       integer NOT NULL DEFAULT 0,
    -- The errors of the last refused plan, for the next planning run.
    plan_errors           jsonb,
    -- A person's note for the next planning run (decide: replan).
    plan_note             text,
    -- Why the goal waits for a person (subjects::goals::Blocked).
    blocked               jsonb,
    -- The current delivery run's task, and the deliverable it wrote.
    deliver_task_id       uuid,
    deliverable           jsonb,
    -- What every run of the goal spent, charged call by call.
    spent_tokens          bigint NOT NULL DEFAULT 0,
    spent_cost_usd        float8 NOT NULL DEFAULT 0,
    idempotency_key       text,
    created_at            timestamptz NOT NULL,
    updated_at            timestamptz NOT NULL
);
CREATE UNIQUE INDEX goals_idempotency ON goals (tenant, idempotency_key)
    WHERE idempotency_key IS NOT NULL;
CREATE INDEX goals_tenant ON goals (tenant, created_at);
CREATE INDEX goals_open ON goals (updated_at)
    WHERE state NOT IN ('done', 'failed', 'cancelled');

-- A goal's history: its transitions, plans, verdicts, decisions, patrol
-- steps.
CREATE TABLE goal_events (
    goal_id    uuid NOT NULL,
    id         bigserial,
    kind       text NOT NULL,
    from_state text,
    to_state   text,
    reason     text,
    task_id    uuid,
    detail     jsonb,
    at         timestamptz NOT NULL,
    PRIMARY KEY (goal_id, id)
);

CREATE TABLE goal_modules (
    goal_id     uuid NOT NULL,
    key         text NOT NULL,
    title       text NOT NULL,
    description text NOT NULL,
    PRIMARY KEY (goal_id, key)
);

ALTER TABLE tasks
    ADD COLUMN kind task_kind NOT NULL DEFAULT 'work',
    ADD COLUMN subtask_key text,
    ADD COLUMN module_key text,
    ADD COLUMN title text,
    -- A review run's sub-task.
    ADD COLUMN reviews_task_id uuid,
    -- Times a reviewer sent the work back.
    ADD COLUMN reworks integer NOT NULL DEFAULT 0,
    -- Dependencies not done yet.
    ADD COLUMN deps_left integer NOT NULL DEFAULT 0,
    -- 1-5, weighs the scores its verdicts give.
    ADD COLUMN size smallint NOT NULL DEFAULT 1,
    -- The role that reviews its work (none: done when it finishes), the
    -- lowest passing score and the reworks allowed, as its role said when
    -- the plan was accepted.
    ADD COLUMN review_role text,
    ADD COLUMN min_score smallint NOT NULL DEFAULT 7,
    ADD COLUMN max_reworks smallint NOT NULL DEFAULT 3;
CREATE UNIQUE INDEX tasks_goal_key ON tasks (goal_id, subtask_key)
    WHERE subtask_key IS NOT NULL;
CREATE INDEX tasks_goal ON tasks (goal_id) WHERE goal_id IS NOT NULL;

CREATE TABLE task_deps (
    task_id    uuid NOT NULL,
    depends_on uuid NOT NULL,
    PRIMARY KEY (task_id, depends_on)
);
CREATE INDEX task_deps_depends_on ON task_deps (depends_on);

-- A verdict's issues and its round (the sub-task's rework count when it
-- was given).
ALTER TABLE reviews
    ADD COLUMN issues jsonb NOT NULL DEFAULT '[]',
    ADD COLUMN round integer NOT NULL DEFAULT 0,
    ADD COLUMN tenant text;

-- Every change to an employee's score, with its reason: points from a
-- verdict (at most one row per review), or a person's adjustment.
CREATE TABLE score_events (
    id          bigserial PRIMARY KEY,
    tenant      text NOT NULL,
    employee_id uuid NOT NULL,
    delta       integer NOT NULL,
    reason      text NOT NULL,
    task_id     uuid,
    review_id   bigint,
    -- The API key of the person who adjusted it.
    by_key      uuid,
    at          timestamptz NOT NULL
);
CREATE INDEX score_events_employee ON score_events (employee_id, id);
CREATE INDEX score_events_tenant ON score_events (tenant, employee_id);
CREATE UNIQUE INDEX score_events_review ON score_events (review_id)
    WHERE review_id IS NOT NULL;
