-- keystile schema, version 1 (PostgreSQL): the same tables and rules as the SQLite schema.
-- Tokens are stored only as SHA-256 digests (bytea); times are Unix seconds (UTC).
-- Applied in one transaction under an advisory lock (see PostgresStore._migrate).

CREATE TABLE meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);

-- Bumped by triggers on every registry change, in any process: the introspection hot path
-- reads it in the same statement as the token, so a cached verified caller is trusted only
-- while nothing in the registry changed (server/endpoints.py, CallerCache).
CREATE TABLE registry_version (
    id      SMALLINT PRIMARY KEY CHECK (id = 1),
    version BIGINT NOT NULL
);
INSERT INTO registry_version (id, version) VALUES (1, 0);

CREATE TABLE clients (
    client_id        TEXT PRIMARY KEY,
    name             TEXT NOT NULL,
    secret_hash      BYTEA NOT NULL,
    auth_method      TEXT NOT NULL,
    grant_types      TEXT NOT NULL,   -- space-separated
    scopes           TEXT NOT NULL,   -- space-separated
    default_audience TEXT NOT NULL,   -- space-separated URIs
    access_token_ttl INTEGER NOT NULL,
    enabled          BOOLEAN NOT NULL DEFAULT TRUE,
    created_at       BIGINT NOT NULL,
    updated_at       BIGINT NOT NULL
);

CREATE TABLE resource_servers (
    identifier TEXT PRIMARY KEY,
    name       TEXT NOT NULL,
    claims     TEXT NOT NULL,         -- space-separated allow-list
    rules      TEXT NOT NULL,         -- space-separated introspection rules
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);

-- A client introspects for at most one resource server, so its view is never ambiguous.
CREATE TABLE resource_server_clients (
    client_id  TEXT PRIMARY KEY REFERENCES clients (client_id) ON DELETE CASCADE,
    identifier TEXT NOT NULL REFERENCES resource_servers (identifier) ON DELETE CASCADE
);
CREATE INDEX resource_server_clients_identifier ON resource_server_clients (identifier);

CREATE TABLE tokens (
    token_hash BYTEA PRIMARY KEY,     -- SHA-256 of the token value
    kind       TEXT NOT NULL,         -- access_token | refresh_token
    client_id  TEXT NOT NULL,
    scope      TEXT NOT NULL,
    aud        TEXT NOT NULL,         -- space-separated URIs (a URI holds no space)
    iat        BIGINT NOT NULL,
    nbf        BIGINT NOT NULL,
    exp        BIGINT NOT NULL,
    jti        TEXT NOT NULL UNIQUE,
    sub        TEXT,
    username   TEXT,
    grant_id   TEXT,
    revoked_at BIGINT
);
CREATE INDEX tokens_client ON tokens (client_id);
CREATE INDEX tokens_exp ON tokens (exp);
CREATE INDEX tokens_grant ON tokens (grant_id) WHERE grant_id IS NOT NULL;

-- The durable, ordered event log (outbox): written in the same transaction as the change.
--
-- Ids are not taken from a sequence: nextval() hands them out in call order, not commit
-- order, so a reader could see event 7 committed while 6 is still in flight, move past 6
-- and never deliver it. Instead a BEFORE INSERT trigger takes the next id from the single
-- event_log_head row, whose row lock is held to commit: event writers commit one after the
-- other, ids become visible strictly in order, without gaps, and last_id is both the
-- highest id ever written (it survives purges) and always committed.
CREATE TABLE event_log_head (
    id      SMALLINT PRIMARY KEY CHECK (id = 1),
    last_id BIGINT NOT NULL
);
INSERT INTO event_log_head (id, last_id) VALUES (1, 0);

CREATE TABLE events (
    id         BIGINT PRIMARY KEY,    -- set by the events_id trigger
    type       TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    payload    JSONB NOT NULL         -- hashes and ids, never a raw token
);
CREATE INDEX events_created ON events (created_at);

-- SET search_path FROM CURRENT: the functions always touch the tables of the schema they
-- were created in, whatever the calling session's search_path.
CREATE FUNCTION keystile_registry_changed() RETURNS trigger
LANGUAGE plpgsql SET search_path FROM CURRENT AS $$
BEGIN
    UPDATE registry_version SET version = version + 1 WHERE id = 1;
    RETURN NULL;
END
$$;

CREATE TRIGGER clients_registry AFTER INSERT OR UPDATE OR DELETE ON clients
    FOR EACH ROW EXECUTE FUNCTION keystile_registry_changed();
CREATE TRIGGER resource_servers_registry AFTER INSERT OR UPDATE OR DELETE ON resource_servers
    FOR EACH ROW EXECUTE FUNCTION keystile_registry_changed();
CREATE TRIGGER resource_server_clients_registry
    AFTER INSERT OR UPDATE OR DELETE ON resource_server_clients
    FOR EACH ROW EXECUTE FUNCTION keystile_registry_changed();

-- Numbers the event (see above) and wakes every listening AS process when it commits
-- (NOTIFY is transactional: nothing is sent for a rolled-back event). The payload names the
-- schema, so deployments sharing one database ignore each other's wake-ups.
CREATE FUNCTION keystile_event_written() RETURNS trigger
LANGUAGE plpgsql SET search_path FROM CURRENT AS $$
BEGIN
    UPDATE event_log_head SET last_id = last_id + 1 WHERE id = 1 RETURNING last_id INTO NEW.id;
    PERFORM pg_notify('keystile_events', current_schema());
    RETURN NEW;
END
$$;

CREATE TRIGGER events_id BEFORE INSERT ON events
    FOR EACH ROW EXECUTE FUNCTION keystile_event_written();
