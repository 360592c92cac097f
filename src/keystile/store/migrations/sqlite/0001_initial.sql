-- keystile schema, version 1: clients, resource servers, tokens, events.
-- Tokens are stored only as SHA-256 digests; times are Unix seconds (UTC).

CREATE TABLE meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
) WITHOUT ROWID;

-- Bumped by triggers on every registry change, so each process can tell at once that
-- its cached clients and resource servers are stale (see SQLiteStore._sync_registry).
CREATE TABLE registry_version (
    id      INTEGER PRIMARY KEY CHECK (id = 1),
    version INTEGER NOT NULL
);
INSERT INTO registry_version (id, version) VALUES (1, 0);

CREATE TABLE clients (
    client_id        TEXT PRIMARY KEY,
    name             TEXT NOT NULL,
    secret_hash      BLOB NOT NULL,
    auth_method      TEXT NOT NULL,
    grant_types      TEXT NOT NULL,   -- space-separated
    scopes           TEXT NOT NULL,   -- space-separated
    default_audience TEXT NOT NULL,   -- space-separated URIs
    access_token_ttl INTEGER NOT NULL,
    enabled          INTEGER NOT NULL DEFAULT 1,
    created_at       INTEGER NOT NULL,
    updated_at       INTEGER NOT NULL
) WITHOUT ROWID;

CREATE TABLE resource_servers (
    identifier TEXT PRIMARY KEY,
    name       TEXT NOT NULL,
    claims     TEXT NOT NULL,         -- space-separated allow-list
    rules      TEXT NOT NULL,         -- space-separated introspection rules
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL
) WITHOUT ROWID;

-- A client introspects for at most one resource server, so its view is never ambiguous.
CREATE TABLE resource_server_clients (
    client_id  TEXT PRIMARY KEY REFERENCES clients (client_id) ON DELETE CASCADE,
    identifier TEXT NOT NULL REFERENCES resource_servers (identifier) ON DELETE CASCADE
) WITHOUT ROWID;
CREATE INDEX resource_server_clients_identifier ON resource_server_clients (identifier);

CREATE TABLE tokens (
    token_hash BLOB PRIMARY KEY,      -- SHA-256 of the token value
    kind       TEXT NOT NULL,         -- access_token | refresh_token
    client_id  TEXT NOT NULL,
    scope      TEXT NOT NULL,
    aud        TEXT NOT NULL,         -- space-separated URIs (a URI holds no space)
    iat        INTEGER NOT NULL,
    nbf        INTEGER NOT NULL,
    exp        INTEGER NOT NULL,
    jti        TEXT NOT NULL UNIQUE,
    sub        TEXT,
    username   TEXT,
    grant_id   TEXT,
    revoked_at INTEGER
) WITHOUT ROWID;
CREATE INDEX tokens_client ON tokens (client_id);
CREATE INDEX tokens_exp ON tokens (exp);
CREATE INDEX tokens_grant ON tokens (grant_id) WHERE grant_id IS NOT NULL;

-- The durable, ordered event log (outbox): written in the same transaction as the change.
CREATE TABLE events (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    type       TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    payload    TEXT NOT NULL          -- JSON; hashes and ids, never a raw token
);
CREATE INDEX events_created ON events (created_at);

CREATE TRIGGER clients_ins AFTER INSERT ON clients
BEGIN UPDATE registry_version SET version = version + 1 WHERE id = 1; END;
CREATE TRIGGER clients_upd AFTER UPDATE ON clients
BEGIN UPDATE registry_version SET version = version + 1 WHERE id = 1; END;
CREATE TRIGGER clients_del AFTER DELETE ON clients
BEGIN UPDATE registry_version SET version = version + 1 WHERE id = 1; END;
CREATE TRIGGER rs_ins AFTER INSERT ON resource_servers
BEGIN UPDATE registry_version SET version = version + 1 WHERE id = 1; END;
CREATE TRIGGER rs_upd AFTER UPDATE ON resource_servers
BEGIN UPDATE registry_version SET version = version + 1 WHERE id = 1; END;
CREATE TRIGGER rs_del AFTER DELETE ON resource_servers
BEGIN UPDATE registry_version SET version = version + 1 WHERE id = 1; END;
CREATE TRIGGER rsc_ins AFTER INSERT ON resource_server_clients
BEGIN UPDATE registry_version SET version = version + 1 WHERE id = 1; END;
CREATE TRIGGER rsc_del AFTER DELETE ON resource_server_clients
BEGIN UPDATE registry_version SET version = version + 1 WHERE id = 1; END;
