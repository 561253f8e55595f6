-- Outbound delivery (issue 9). Written by adapters, never published: tokens stay off the topic.

-- Connected accounts' credentials: the access token and the account's own Meta app secret, each
-- sealed with INBOX_SECRET_KEY (AES-256-GCM, see inbox/adapters/secrets.py), whether Meta rejected it (code 190: sends wait until a rotation), and
-- the org's list of accounts (the event store cannot list an org's aggregates).
CREATE TABLE IF NOT EXISTS channel_account_credentials (
    account_id uuid PRIMARY KEY,
    org_id text NOT NULL,
    channel text NOT NULL,
    external_id text NOT NULL,
    name text NOT NULL,
    access_token_sealed text,
    needs_reauth boolean NOT NULL DEFAULT false,
    reauth_reason text,
    disconnected_at timestamptz,
    updated_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS channel_account_credentials_by_org ON channel_account_credentials (org_id);
-- The app secret verifies the account's webhooks; kept on disconnection (see credentials.py).
ALTER TABLE channel_account_credentials ADD COLUMN IF NOT EXISTS app_secret_sealed text;

-- The sender's position on the events topic, per partition (manual assignment, see inbox/adapters/outbound/sender.py).
CREATE TABLE IF NOT EXISTS sender_offsets (
    topic text NOT NULL,
    partition integer NOT NULL,
    next_offset bigint NOT NULL,
    PRIMARY KEY (topic, partition)
);

-- One row per staff reply the sender handles: `in_flight` is committed before the HTTP call, so a
-- sender restarted after a crash knows which replies may have left (the one duplicate window).
CREATE TABLE IF NOT EXISTS sender_sends (
    seq bigserial,
    message_id uuid PRIMARY KEY,
    room_id uuid NOT NULL,
    channel_account_id text NOT NULL,
    payload jsonb NOT NULL,       -- kind, text, attachments of the MessageSent
    state text NOT NULL,          -- pending | in_flight | accepted | failed | unknown | settled | dead
    attempts integer NOT NULL DEFAULT 0,
    next_attempt_at timestamptz NOT NULL DEFAULT now(),
    channel_message_id text,
    last_error text,
    updated_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS sender_sends_due ON sender_sends (next_attempt_at, seq) WHERE state IN ('pending', 'in_flight');

-- Replies the sender could not handle (not readable, a bug): kept with the reason, the loop goes on.
CREATE TABLE IF NOT EXISTS sender_dead_letters (
    id bigserial PRIMARY KEY,
    event_id text,
    room_id text,
    message_id text,
    reason text NOT NULL,
    recorded_at timestamptz NOT NULL DEFAULT now()
);
