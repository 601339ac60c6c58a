-- Webhooks: where a tenant's notifications are posted, signed with a
-- per-webhook secret (sealed with the vault key, shown once), and a log of
-- every delivery attempt.
CREATE TABLE webhooks (
    id         uuid PRIMARY KEY,
    tenant     text NOT NULL,
    url        text NOT NULL,
    -- Notification kinds it wants; empty: every kind.
    kinds      text[] NOT NULL DEFAULT '{}',
    nonce      bytea NOT NULL,
    ciphertext bytea NOT NULL,
    created_at timestamptz NOT NULL
);
CREATE INDEX webhooks_tenant ON webhooks (tenant);

CREATE TABLE webhook_deliveries (
    id              bigserial PRIMARY KEY,
    webhook_id      uuid NOT NULL,
    tenant          text NOT NULL,
    notification_id uuid NOT NULL,
    kind            text NOT NULL,
    attempt         integer NOT NULL,
    -- delivered | retrying | failed
    outcome         text NOT NULL,
    status          integer,
    error           text,
    duration_ms     double precision NOT NULL,
    at              timestamptz NOT NULL
);
CREATE INDEX webhook_deliveries_hook ON webhook_deliveries (webhook_id, id);
CREATE UNIQUE INDEX webhook_delivered_once ON webhook_deliveries (webhook_id, notification_id)
    WHERE outcome = 'delivered';
