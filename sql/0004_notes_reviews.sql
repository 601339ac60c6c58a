-- What agents leave behind besides their result: notes on a task (the
-- `note` action) and reviews of other tasks (the `review.submit` action).
-- Both are history: kept for good, written off the task hot path.

CREATE TABLE notes (
    id          bigserial PRIMARY KEY,
    task_id     uuid NOT NULL,
    run_id      uuid,
    employee_id uuid,
    text        text NOT NULL,
    at          timestamptz NOT NULL
);
CREATE INDEX notes_task ON notes (task_id, id);

CREATE TYPE review_verdict AS ENUM ('approved', 'rejected');

CREATE TABLE reviews (
    id                   bigserial PRIMARY KEY,
    -- The task reviewed.
    task_id              uuid NOT NULL,
    -- Who reviewed it: the reviewer's own task, run and employee.
    reviewer_task_id     uuid NOT NULL,
    reviewer_run_id      uuid NOT NULL,
    reviewer_employee_id uuid,
    score                smallint NOT NULL CHECK (score BETWEEN 1 AND 10),
    verdict              review_verdict NOT NULL,
    comments             text NOT NULL,
    at                   timestamptz NOT NULL
);
CREATE INDEX reviews_task ON reviews (task_id, id);
