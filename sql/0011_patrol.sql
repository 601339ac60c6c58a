-- The patrol: one acting process at a time, and a record of every step it
-- takes.

-- Work only one process may do at a time: whoever holds the row's lease.
CREATE TABLE leases (
    name       text PRIMARY KEY,
    holder     text NOT NULL,
    expires_at timestamptz NOT NULL
);

-- Each step the patrol took, with its rule (why) and action (what):
--   rule:   stale_heartbeat | looping | silent | unclaimed | goal_idle
--   action: requeue | reassign | replan | escalate | alert
CREATE TABLE patrol_actions (
    id          bigserial PRIMARY KEY,
    tenant      text NOT NULL,
    task_id     uuid,
    attempt     integer,
    goal_id     uuid,
    subtask_key text,
    rule        text NOT NULL,
    action      text NOT NULL,
    reason      text NOT NULL,
    evidence    jsonb,
    holder      text NOT NULL,
    at          timestamptz NOT NULL
);
CREATE INDEX patrol_actions_task ON patrol_actions (task_id);
CREATE INDEX patrol_actions_goal_key ON patrol_actions (goal_id, subtask_key);
CREATE INDEX patrol_actions_tenant ON patrol_actions (tenant, id);
-- An alert is raised once per task attempt (a goal's once per idle spell,
-- keyed by the time it went quiet).
CREATE UNIQUE INDEX patrol_alert_once ON patrol_actions (rule, task_id, attempt)
    WHERE action = 'alert' AND task_id IS NOT NULL;
CREATE UNIQUE INDEX patrol_goal_alert_once ON patrol_actions (rule, goal_id, ((evidence->>'since')))
    WHERE action = 'alert' AND task_id IS NULL;

-- A goal's workspace volume is removed once the goal has been final for
-- its retention; when that happened.
ALTER TABLE goals ADD COLUMN workspace_removed_at timestamptz;
CREATE INDEX goals_workspace_retention ON goals (updated_at)
    WHERE workspace_removed_at IS NULL AND state IN ('done', 'failed', 'cancelled');

-- A replan may give a new sub-task the key of one it cancelled: keys are
-- unique among a goal's sub-tasks that are not cancelled.
DROP INDEX tasks_goal_key;
CREATE UNIQUE INDEX tasks_goal_key ON tasks (goal_id, subtask_key)
    WHERE subtask_key IS NOT NULL AND state <> 'cancelled';
