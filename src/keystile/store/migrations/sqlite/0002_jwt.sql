-- keystile schema, version 2: JWT access tokens (RFC 9068), signing keys, JWT introspection
-- responses (RFC 9701) and private_key_jwt client authentication (RFC 7523).

-- Per client: the access-token format, and the public keys of a private_key_jwt client.
ALTER TABLE clients ADD COLUMN token_format TEXT NOT NULL DEFAULT 'opaque';  -- opaque | jwt
ALTER TABLE clients ADD COLUMN jwks TEXT;                                    -- JWK Set (JSON)

-- Per resource server: json | jwt | jwt-required (see core/models.py).
ALTER TABLE resource_servers ADD COLUMN introspection_response TEXT NOT NULL DEFAULT 'json';

-- The AS's own signing keys. A key goes next -> active -> retired; a retired key stays
-- published until not_after, when the last token it signed expires (bumped by every
-- issuance, rounded up, in the issuance transaction). The private JWK is encrypted with
-- AES-256-GCM under the key-encryption key from the settings, and dropped at retirement.
CREATE TABLE signing_keys (
    kid             TEXT PRIMARY KEY,
    alg             TEXT NOT NULL,
    state           TEXT NOT NULL CHECK (state IN ('next', 'active', 'retired')),
    public_jwk      TEXT NOT NULL,
    private_jwk_enc BLOB,
    created_at      INTEGER NOT NULL,
    activated_at    INTEGER,
    retired_at      INTEGER,
    not_after       INTEGER NOT NULL DEFAULT 0
) WITHOUT ROWID;
-- At most one active key, whichever process tries to make one.
CREATE UNIQUE INDEX signing_keys_one_active ON signing_keys (state) WHERE state = 'active';

-- Key changes reach every process the way registry changes do (see 0001).
CREATE TRIGGER signing_keys_ins AFTER INSERT ON signing_keys
BEGIN UPDATE registry_version SET version = version + 1 WHERE id = 1; END;
CREATE TRIGGER signing_keys_upd AFTER UPDATE ON signing_keys
BEGIN UPDATE registry_version SET version = version + 1 WHERE id = 1; END;
CREATE TRIGGER signing_keys_del AFTER DELETE ON signing_keys
BEGIN UPDATE registry_version SET version = version + 1 WHERE id = 1; END;

-- private_key_jwt assertions seen, so each is accepted once (RFC 7523 §3 item 7); kept until
-- the assertion expires, then purged. The primary key makes concurrent replays lose.
CREATE TABLE client_assertion_jtis (
    client_id  TEXT NOT NULL,
    jti        TEXT NOT NULL,
    expires_at INTEGER NOT NULL,
    PRIMARY KEY (client_id, jti)
) WITHOUT ROWID;
CREATE INDEX client_assertion_jtis_expires ON client_assertion_jtis (expires_at);
