-- Relay bookkeeping: how far the event store has been published, and to which broker.
CREATE TABLE IF NOT EXISTS relay_position (
    name text PRIMARY KEY,
    notification_id bigint NOT NULL,
    broker_id text,
    updated_at timestamptz NOT NULL DEFAULT now()
);

-- Stream workers report liveness here; /readyz reads it.
CREATE TABLE IF NOT EXISTS worker_heartbeats (
    worker_id text PRIMARY KEY,
    kind text NOT NULL,
    beat_at timestamptz NOT NULL DEFAULT now()
);
