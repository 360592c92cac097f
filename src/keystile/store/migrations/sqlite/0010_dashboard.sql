-- keystile schema, version 10: what the admin dashboard adds up (issue 17; docs/admin.md).
-- instance_stats: each AS process's counters, published every stats_interval seconds so the
-- console and GET /admin/v1/stats add up every live process. A row not renewed for three
-- intervals is an instance gone: ignored, then deleted by the next process that publishes.
CREATE TABLE instance_stats (
    instance_id TEXT PRIMARY KEY,
    updated_at INTEGER NOT NULL,
    stats TEXT NOT NULL  -- JSON (server/instance_stats.py)
);

-- When each event was written, in milliseconds (the writer's clock; NULL for older rows):
-- the AS measures how long an event took from its commit to the first event stream that
-- sent it (keystile_event_delivery_seconds, the dashboard's delivery chart).
ALTER TABLE events ADD COLUMN written_ms INTEGER;
