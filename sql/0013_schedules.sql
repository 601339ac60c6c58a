-- Schedules: recurring tasks and goals on cron expressions in IANA zones,
-- and one row per fire time they reached (fired, skipped, missed, …).
CREATE TABLE schedules (
    id                  uuid PRIMARY KEY,
    tenant              text NOT NULL,
    name                text NOT NULL,
    cron                text NOT NULL,
    timezone            text NOT NULL,
    -- task | goal, and what POST /v1/tasks or POST /v1/goals takes.
    target              text NOT NULL,
    template            jsonb NOT NULL,
    -- allow | skip | buffer_one | cancel_previous
    overlap             text NOT NULL,
    catchup_window_secs bigint NOT NULL,
    -- all | latest
    catchup             text NOT NULL,
    -- The jitter bound and this schedule's own offset within it.
    jitter_ms           bigint NOT NULL,
    offset_ms           bigint NOT NULL,
    start_at            timestamptz,
    end_at              timestamptz,
    paused              boolean NOT NULL,
    -- The next cron time not yet decided (NULL: none left), and when it is
    -- due (plus the offset). Kept with the fires it follows from, in the
    -- same transaction: a restart loses nothing.
    next_fire_at        timestamptz,
    next_due_at         timestamptz,
    created_at          timestamptz NOT NULL,
    updated_at          timestamptz NOT NULL,
    UNIQUE (tenant, name)
);
-- Paused schedules are decided too (their fire times recorded as skipped).
CREATE INDEX schedules_due ON schedules (next_due_at);

-- One row per fire time: unique, so a fire happens once whichever
-- scheduler gets there first.
CREATE TABLE schedule_fires (
    schedule_id  uuid NOT NULL REFERENCES schedules (id) ON DELETE CASCADE,
    fire_at      timestamptz NOT NULL,
    -- cron | trigger | backfill
    kind         text NOT NULL,
    -- fired | skipped | missed | buffered | failed
    outcome      text NOT NULL,
    task_id      uuid,
    goal_id      uuid,
    reason       text,
    lateness_ms  double precision,
    decided_at   timestamptz NOT NULL,
    PRIMARY KEY (schedule_id, fire_at)
);
CREATE INDEX schedule_fires_buffered ON schedule_fires (schedule_id) WHERE outcome = 'buffered';
-- The latest fires that started something (the overlap policies' look).
CREATE INDEX schedule_fires_fired ON schedule_fires (schedule_id, decided_at DESC) WHERE outcome = 'fired';
CREATE INDEX schedule_fires_decided ON schedule_fires (decided_at);
