-- Relay bookkeeping: how far the event store has been published, and to which broker.
CREATE TABLE IF NOT EXISTS relay_position (
    name text PRIMARY KEY,
    notification_id bigint NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now()
);

-- Stream workers report liveness here; /readyz reads it.
CREATE TABLE IF NOT EXISTS worker_heartbeats (
    worker_id text PRIMARY KEY,
    kind text NOT NULL,
    beat_at timestamptz NOT NULL DEFAULT now(),
    events bigint NOT NULL DEFAULT 0  -- events this process has handled since it started
);
ALTER TABLE worker_heartbeats ADD COLUMN IF NOT EXISTS events bigint NOT NULL DEFAULT 0;

-- Events the relay could not publish (not encodable, or refused by the broker, e.g. too large),
-- with the reason. The relay moves past them; workers still project them (gap filling reads the
-- event store), downstream consumers of the topic do not see them until re-published.
CREATE TABLE IF NOT EXISTS relay_dead_letters (
    id bigserial PRIMARY KEY,
    topic text NOT NULL,
    notification_id bigint NOT NULL,
    event_id text,
    room_id text,
    version bigint,
    event_type text,
    reason text NOT NULL,
    recorded_at timestamptz NOT NULL DEFAULT now(),
    UNIQUE (topic, notification_id)
);
