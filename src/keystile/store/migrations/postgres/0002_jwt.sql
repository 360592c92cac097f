-- keystile schema, version 2 (PostgreSQL), mirroring sqlite/0002_jwt.sql: JWT access tokens
-- (RFC 9068), signing keys, JWT introspection responses (RFC 9701) and private_key_jwt
-- client authentication (RFC 7523).

-- Per client: the access-token format, and the public keys of a private_key_jwt client.
ALTER TABLE clients ADD COLUMN token_format TEXT NOT NULL DEFAULT 'opaque';  -- opaque | jwt
ALTER TABLE clients ADD COLUMN jwks TEXT;                                    -- JWK Set (JSON)

-- Per resource server: json | jwt | jwt-required (see core/models.py).
ALTER TABLE resource_servers ADD COLUMN introspection_response TEXT NOT NULL DEFAULT 'json';

-- The AS's own signing keys: next -> active -> retired (see sqlite/0002_jwt.sql).
CREATE TABLE signing_keys (
    kid             TEXT PRIMARY KEY,
    alg             TEXT NOT NULL,
    state           TEXT NOT NULL CHECK (state IN ('next', 'active', 'retired')),
    public_jwk      TEXT NOT NULL,
    private_jwk_enc BYTEA,
    created_at      BIGINT NOT NULL,
    activated_at    BIGINT,
    retired_at      BIGINT,
    not_after       BIGINT NOT NULL DEFAULT 0
);
-- At most one active key, whichever process tries to make one.
CREATE UNIQUE INDEX signing_keys_one_active ON signing_keys (state) WHERE state = 'active';

-- Key changes reach every process the way registry changes do (see 0001).
CREATE TRIGGER signing_keys_registry AFTER INSERT OR UPDATE OR DELETE ON signing_keys
    FOR EACH ROW EXECUTE FUNCTION keystile_registry_changed();

-- private_key_jwt assertions seen, so each is accepted once (RFC 7523 §3 item 7); kept until
-- the assertion expires, then purged. The primary key makes concurrent replays lose.
CREATE TABLE client_assertion_jtis (
    client_id  TEXT NOT NULL,
    jti        TEXT NOT NULL,
    expires_at BIGINT NOT NULL,
    PRIMARY KEY (client_id, jti)
);
CREATE INDEX client_assertion_jtis_expires ON client_assertion_jtis (expires_at);
