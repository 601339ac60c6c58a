-- Egress is metered per run: the bytes a run's tunnels, fetches and proxied
-- requests received from outside and sent out, written once when the run
-- ends (NULL for runs that made no agent run, such as shell tasks).
ALTER TABLE runs ADD COLUMN egress_bytes_in bigint, ADD COLUMN egress_bytes_out bigint;
