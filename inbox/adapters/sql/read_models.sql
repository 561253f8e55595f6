-- Read models (projections). Rebuilt from the event store by `inbox replay`.
CREATE TABLE IF NOT EXISTS rooms (
    id uuid PRIMARY KEY,
    org_id text NOT NULL,
    tab text NOT NULL,
    channel text NOT NULL,
    channel_account_id uuid NOT NULL,
    channel_account text NOT NULL,
    contact_id text NOT NULL,
    contact_name text,
    contact_phone text,
    contact_handle text,
    post_id text,
    status text NOT NULL,
    assignee text,
    awaiting_reply boolean NOT NULL,
    last_inbound_at timestamptz,
    expires_at timestamptz,
    last_message_id uuid,
    last_message_direction text,
    last_message_text text,
    last_message_at timestamptz,
    opened_at timestamptz NOT NULL,
    updated_at timestamptz NOT NULL,
    version bigint NOT NULL
);
CREATE INDEX IF NOT EXISTS rooms_by_tab_activity ON rooms (org_id, tab, updated_at DESC, id DESC);
CREATE INDEX IF NOT EXISTS rooms_by_status_activity ON rooms (org_id, tab, status, updated_at DESC, id DESC);
-- Status filters without a tab (e.g. conversation search over resolved rooms of every tab).
CREATE INDEX IF NOT EXISTS rooms_by_org_status_activity ON rooms (org_id, status, updated_at DESC, id DESC);
CREATE INDEX IF NOT EXISTS rooms_by_assignee_activity ON rooms (org_id, assignee, updated_at DESC, id DESC);
CREATE INDEX IF NOT EXISTS rooms_by_expiry ON rooms (org_id, expires_at) WHERE status <> 'resolved';

CREATE TABLE IF NOT EXISTS messages (
    id uuid PRIMARY KEY,
    room_id uuid NOT NULL,
    org_id text NOT NULL,
    seq bigint NOT NULL,             -- the room version of the event that recorded it
    direction text NOT NULL,
    text text NOT NULL,
    sent_at timestamptz NOT NULL,
    sender_id text,
    sender_name text,
    sender_role text,
    channel_message_id text
);
CREATE UNIQUE INDEX IF NOT EXISTS messages_history ON messages (room_id, seq DESC);

-- Maintained counts. assignee: '*' = every room of (org, tab, status); '-' = no assignee;
-- otherwise the staff user id. A viewer's badge is a lookup of a few of these rows.
CREATE TABLE IF NOT EXISTS counters (
    org_id text NOT NULL,
    tab text NOT NULL,
    status text NOT NULL,
    assignee text NOT NULL,
    rooms bigint NOT NULL DEFAULT 0,
    awaiting bigint NOT NULL DEFAULT 0,
    PRIMARY KEY (org_id, tab, status, assignee)
);

-- Version gaps seen by the projection (an event arrived before its predecessors).
CREATE TABLE IF NOT EXISTS projection_gaps (
    room_id uuid NOT NULL,
    expected_version bigint NOT NULL,
    got_version bigint NOT NULL,
    filled boolean NOT NULL,
    detected_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (room_id, expected_version, got_version)
);

-- Events the projection could not read, kept with the reason (never silently dropped).
CREATE TABLE IF NOT EXISTS projection_dead_letters (
    id bigserial PRIMARY KEY,
    event_id text,
    reason text NOT NULL,
    event bytea NOT NULL,
    recorded_at timestamptz NOT NULL DEFAULT now()
);

-- Inbox features (tabs, filters, search, history): added in place so existing databases migrate.
-- Rooms are ordered by updated_at = recorded time of their latest message (assignments and
-- resolutions do not reorder); a list cursor re-derives a changed room's position as of its
-- first page from messages.recorded_at (inbox/adapters/read_models/queries.py).
ALTER TABLE rooms ADD COLUMN IF NOT EXISTS search_name text;   -- folded contact name + handle
ALTER TABLE rooms ADD COLUMN IF NOT EXISTS phone_digits text;  -- national significant number
ALTER TABLE messages ADD COLUMN IF NOT EXISTS recorded_at timestamptz;
ALTER TABLE messages ADD COLUMN IF NOT EXISTS text_tsv tsvector
    GENERATED ALWAYS AS (to_tsvector('simple'::regconfig, text)) STORED;
CREATE INDEX IF NOT EXISTS rooms_by_activity ON rooms (org_id, updated_at DESC, id DESC);
-- Rows arrive (and room rows are rewritten) on every event: a small GIN pending list keeps the
-- searches — and the planner's estimate of them — index-backed and fast between autovacuum runs.
CREATE INDEX IF NOT EXISTS rooms_search_name_trgm ON rooms USING gin (search_name gin_trgm_ops)
    WITH (gin_pending_list_limit = 256);
CREATE INDEX IF NOT EXISTS rooms_phone_digits_trgm ON rooms USING gin (phone_digits gin_trgm_ops)
    WITH (gin_pending_list_limit = 256);
CREATE INDEX IF NOT EXISTS messages_by_recorded ON messages (room_id, recorded_at DESC);
CREATE INDEX IF NOT EXISTS messages_by_org_recorded ON messages (org_id, recorded_at DESC, id DESC);
CREATE INDEX IF NOT EXISTS messages_text_search ON messages USING gin (text_tsv)
    WITH (gin_pending_list_limit = 256);

-- Channel ingestion (Meta webhooks): what a message is, its attachments' metadata, edits and removals.
ALTER TABLE messages ADD COLUMN IF NOT EXISTS kind text NOT NULL DEFAULT 'text';
ALTER TABLE messages ADD COLUMN IF NOT EXISTS attachments jsonb NOT NULL DEFAULT '[]';
ALTER TABLE messages ADD COLUMN IF NOT EXISTS edited_at timestamptz;
ALTER TABLE messages ADD COLUMN IF NOT EXISTS removed_at timestamptz;

-- Dead letters name their event (room, version, type) so they can be listed and re-applied
-- (`inbox dead-letters`); a re-applied one that now projects is marked resolved, not deleted.
ALTER TABLE projection_dead_letters ADD COLUMN IF NOT EXISTS room_id text;
ALTER TABLE projection_dead_letters ADD COLUMN IF NOT EXISTS version bigint;
ALTER TABLE projection_dead_letters ADD COLUMN IF NOT EXISTS event_type text;
ALTER TABLE projection_dead_letters ADD COLUMN IF NOT EXISTS retried_at timestamptz;
ALTER TABLE projection_dead_letters ADD COLUMN IF NOT EXISTS resolved_at timestamptz;
CREATE INDEX IF NOT EXISTS projection_dead_letters_unresolved ON projection_dead_letters (room_id, version)
    WHERE resolved_at IS NULL;

-- Service reports (issue 13; projections/reports.py), built by `inbox reports` from the topic alone,
-- rebuilt by `inbox replay`. Idempotent on (room_id, version): report_rooms holds each room's fold state.
CREATE TABLE IF NOT EXISTS report_rooms (
    room_id text PRIMARY KEY,
    version bigint NOT NULL,
    state jsonb NOT NULL
);
-- One row per room cycle (opened or reopened .. resolved): the samples p50/p90 are computed from.
CREATE TABLE IF NOT EXISTS report_cycles (
    org_id text NOT NULL,
    room_id text NOT NULL,
    cycle integer NOT NULL,
    channel text NOT NULL,
    started_at timestamptz NOT NULL,
    inbound_at timestamptz,
    first_response_at timestamptz,
    first_response_s double precision,
    responder text,
    resolved_at timestamptz,
    resolution_s double precision,
    agent text,
    PRIMARY KEY (room_id, cycle)
);
CREATE INDEX IF NOT EXISTS report_cycles_by_start ON report_cycles (org_id, started_at);
-- Counts per (org, UTC day, channel, agent); agent '-' = nobody.
CREATE TABLE IF NOT EXISTS report_counts (
    org_id text NOT NULL,
    day date NOT NULL,
    channel text NOT NULL,
    agent text NOT NULL,
    opened bigint NOT NULL DEFAULT 0,
    reopened bigint NOT NULL DEFAULT 0,
    resolved bigint NOT NULL DEFAULT 0,
    messages_in bigint NOT NULL DEFAULT 0,
    messages_out bigint NOT NULL DEFAULT 0,
    PRIMARY KEY (org_id, day, channel, agent)
);
-- Changes of the unassigned backlog (+1/-1); the count at a moment is the sum of changes up to it.
CREATE TABLE IF NOT EXISTS report_backlog (
    org_id text NOT NULL,
    at timestamptz NOT NULL,
    room_id text NOT NULL,
    version bigint NOT NULL,
    delta smallint NOT NULL,
    PRIMARY KEY (room_id, version)
);
CREATE INDEX IF NOT EXISTS report_backlog_by_time ON report_backlog (org_id, at);
-- The reports consumer's position per partition, committed with the report rows it produced.
CREATE TABLE IF NOT EXISTS report_offsets (
    topic text NOT NULL,
    partition integer NOT NULL,
    next_offset bigint NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (topic, partition)
);
CREATE TABLE IF NOT EXISTS report_dead_letters (
    id bigserial PRIMARY KEY,
    event_id text,
    room_id text,
    version bigint,
    event_type text,
    reason text NOT NULL,
    event bytea NOT NULL,
    recorded_at timestamptz NOT NULL DEFAULT now()
);
-- Live updates (issue 10): one row per room change, written by the projection in the same
-- transaction as the read models (writer.record_changes), announced by NOTIFY on
-- 'inbox_changes:<schema>' with the position as payload. GET /v1/stream reads it from a
-- client's Last-Event-ID. kind 'room': a room changed (message_ids: messages added or changed);
-- kind 'reset': the projections were rebuilt (`inbox replay`), every client must re-fetch.
-- Pruned to a retention window by the workers; `room_changes_horizon` remembers up to where.
CREATE TABLE IF NOT EXISTS room_changes (
    position bigserial PRIMARY KEY,
    kind text NOT NULL,
    org_id text,
    room_id uuid,
    version bigint,
    existed_before boolean NOT NULL DEFAULT false,
    assignee_before text,
    assignee_after text,
    message_ids uuid[] NOT NULL DEFAULT '{}',
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS room_changes_by_created ON room_changes (created_at);
CREATE TABLE IF NOT EXISTS room_changes_horizon (
    id int PRIMARY KEY DEFAULT 1 CHECK (id = 1),
    pruned_upto bigint NOT NULL DEFAULT 0
);
INSERT INTO room_changes_horizon (id, pruned_upto) VALUES (1, 0) ON CONFLICT DO NOTHING;
-- Outbound delivery (issue 9): a staff reply's delivery (pending, sent, delivered, read, failed) on its
-- history row, and on the room row when it is the room's last message.
ALTER TABLE messages ADD COLUMN IF NOT EXISTS delivery_status text;
ALTER TABLE messages ADD COLUMN IF NOT EXISTS delivery_at timestamptz;
ALTER TABLE messages ADD COLUMN IF NOT EXISTS delivery_error jsonb;
-- The message a staff reply answers: {"message_id", "channel_message_id"} (MessageSent.reply_to).
ALTER TABLE messages ADD COLUMN IF NOT EXISTS reply_to jsonb;
ALTER TABLE rooms ADD COLUMN IF NOT EXISTS last_message_delivery jsonb;
