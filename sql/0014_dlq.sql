-- What a person did with a dead letter: replayed it (the task or goal it
-- became, under a fresh idempotency key) or discarded it. One action per
-- dead letter, by its DLQ stream sequence.
CREATE TABLE dlq_actions (
    seq             bigint PRIMARY KEY,
    tenant          text NOT NULL,
    source          text NOT NULL,
    -- replayed | discarded
    action          text NOT NULL,
    task_id         uuid,
    goal_id         uuid,
    idempotency_key text,
    key_id          uuid,
    at              timestamptz NOT NULL
);
CREATE INDEX dlq_actions_tenant ON dlq_actions (tenant, seq);
