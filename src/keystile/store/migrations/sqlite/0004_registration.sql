-- keystile schema, version 4: dynamic client registration (RFC 7591, RFC 7592;
-- docs/registration.md).

-- What registration adds to a client made over HTTP. Deleted with its client. The
-- registration access token (RFC 7592 §3) is kept as SHA-256 only; used_at is set by the
-- first token issued to the client (NULL: never used, and an open registration expires).
CREATE TABLE client_registrations (
    client_id         TEXT PRIMARY KEY REFERENCES clients (client_id) ON DELETE CASCADE,
    method            TEXT NOT NULL,
    registered_at     INTEGER NOT NULL,
    access_token_hash BLOB NOT NULL UNIQUE,
    metadata          TEXT NOT NULL,
    used_at           INTEGER
) WITHOUT ROWID;
CREATE INDEX client_registrations_method ON client_registrations (method, registered_at);

-- Initial access tokens (RFC 7591 §3), made with `keystile client registration-token`:
-- SHA-256 only; uses_left NULL means any number of registrations until expires_at.
CREATE TABLE initial_access_tokens (
    token_id    TEXT PRIMARY KEY,
    token_hash  BLOB NOT NULL UNIQUE,
    created_at  INTEGER NOT NULL,
    expires_at  INTEGER NOT NULL,
    uses_left   INTEGER,
    description TEXT NOT NULL DEFAULT ''
) WITHOUT ROWID;
