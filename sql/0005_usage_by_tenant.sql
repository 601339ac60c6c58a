-- A role's daily quota, when no employee does the work, sums the usage of
-- that role's runs without one in the tenant over the last day.
CREATE INDEX usage_tenant_at ON usage (tenant, at) WHERE employee_id IS NULL;
