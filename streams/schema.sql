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
