-- The operations views read one tenant's tasks newest first (task search;
-- task ids are UUIDv7, so by id is by time),
-- its tasks finished in the last hour (the overview's throughput) and its
-- spend of the day, whoever spent it.
CREATE INDEX tasks_tenant_id ON tasks (tenant, id);
CREATE INDEX tasks_tenant_finished ON tasks (tenant, updated_at)
    WHERE state IN ('done', 'failed');
-- The tenant's usage by time, of employees and not: the partial index of
-- 0005 (tenant, at) WHERE employee_id IS NULL is covered by this one.
CREATE INDEX usage_tenant_all_at ON usage (tenant, at);
DROP INDEX usage_tenant_at;
