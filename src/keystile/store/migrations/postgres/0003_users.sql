-- keystile schema, version 3 (PostgreSQL), mirroring sqlite/0003_users.sql: users, browser
-- sessions, consent, the authorization code grant with PKCE, and refresh tokens with
-- rotation (issue 3; docs/users.md).

-- Clients gain redirect URIs (space-separated, matched exactly) and refresh-token
-- lifetimes: idle (each refresh token's own) and absolute (the grant's).
ALTER TABLE clients ADD COLUMN redirect_uris TEXT NOT NULL DEFAULT '';
ALTER TABLE clients ADD COLUMN refresh_token_ttl INTEGER NOT NULL DEFAULT 1209600;
ALTER TABLE clients ADD COLUMN refresh_token_max_ttl INTEGER NOT NULL DEFAULT 2592000;

-- People who sign in. user_id is the stable subject (sub); username is stored lower-cased.
-- Passwords only as argon2id hashes (PHC strings).
CREATE TABLE users (
    user_id       TEXT PRIMARY KEY,
    username      TEXT NOT NULL UNIQUE,
    password_hash TEXT NOT NULL,
    enabled       BOOLEAN NOT NULL DEFAULT TRUE,
    created_at    BIGINT NOT NULL,
    updated_at    BIGINT NOT NULL
);

-- Signed-in browsers, by SHA-256 of the cookie value. Ended by logout, by
-- `keystile user revoke-sessions`, by disabling or deleting the user.
CREATE TABLE sessions (
    session_hash BYTEA PRIMARY KEY,
    user_id      TEXT NOT NULL REFERENCES users (user_id) ON DELETE CASCADE,
    created_at   BIGINT NOT NULL,
    expires_at   BIGINT NOT NULL
);
CREATE INDEX sessions_user ON sessions (user_id);
CREATE INDEX sessions_expires ON sessions (expires_at);

-- Remembered consent: the scopes a user allowed a client without being asked again.
CREATE TABLE consents (
    user_id    TEXT NOT NULL REFERENCES users (user_id) ON DELETE CASCADE,
    client_id  TEXT NOT NULL REFERENCES clients (client_id) ON DELETE CASCADE,
    scope      TEXT NOT NULL,
    updated_at BIGINT NOT NULL,
    PRIMARY KEY (user_id, client_id)
);
CREATE INDEX consents_client ON consents (client_id);

-- One authorization (code flow) of one user for one client: what its code, access and
-- refresh tokens share, and what the revocation cascade revokes as a whole. Its row lock
-- orders the cascade against issuance and rotation (see PostgresStore.issue_grant_tokens).
CREATE TABLE grants (
    grant_id   TEXT PRIMARY KEY,
    client_id  TEXT NOT NULL,
    user_id    TEXT NOT NULL,
    username   TEXT NOT NULL,
    scope      TEXT NOT NULL,
    aud        TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    auth_time  BIGINT NOT NULL,
    expires_at BIGINT NOT NULL,     -- absolute lifetime of its refresh tokens
    revoked_at BIGINT
);
CREATE INDEX grants_user ON grants (user_id);
CREATE INDEX grants_client ON grants (client_id);
CREATE INDEX grants_expires ON grants (expires_at);

-- Authorization codes, by SHA-256: single use (used_at), short lived, bound to client,
-- redirect URI and PKCE S256 challenge. A used code is kept until it expires, so that a
-- replay is recognised and revokes its grant (RFC 6749 §4.1.2).
CREATE TABLE authorization_codes (
    code_hash      BYTEA PRIMARY KEY,
    grant_id       TEXT NOT NULL,
    client_id      TEXT NOT NULL,
    redirect_uri   TEXT NOT NULL,
    code_challenge TEXT NOT NULL,
    created_at     BIGINT NOT NULL,
    expires_at     BIGINT NOT NULL,
    used_at        BIGINT
);
CREATE INDEX authorization_codes_expires ON authorization_codes (expires_at);

-- A refresh token exchanged for a new one keeps its row with rotated_at set: presenting it
-- again is a replay, which revokes its whole grant (RFC 9700 §4.14.2).
ALTER TABLE tokens ADD COLUMN rotated_at BIGINT;
