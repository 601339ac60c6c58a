-- Daily budgets, reserved atomically: each model call adds its (estimated,
-- then settled) tokens and cost to today's row of its employee — or, for a
-- run without one, of its role in its tenant — in one INSERT … ON CONFLICT
-- DO UPDATE … RETURNING, and reads the day's totals back. Parallel runs, in
-- any worker process, see each other's spend; a streamed answer is charged
-- chunk by chunk, so together they overshoot a daily quota by at most one
-- chunk each. The usage table stays the per-call history.
CREATE TABLE day_budgets (
    tenant   text NOT NULL,
    -- 'employee:<uuid>' or 'role:<name>'
    subject  text NOT NULL,
    day      date NOT NULL,
    tokens   bigint NOT NULL,
    cost_usd float8 NOT NULL,
    PRIMARY KEY (tenant, subject, day)
);
