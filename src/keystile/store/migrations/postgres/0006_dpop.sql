-- keystile schema, version 6: sender-constrained tokens (issue 12): DPoP (RFC 9449) and
-- certificate-bound tokens (RFC 8705).

-- The key a token is bound to: the RFC 7638 thumbprint of the DPoP key (cnf.jkt, RFC 9449
-- §6.1) or the SHA-256 thumbprint of the client certificate (cnf.x5t#S256, RFC 8705 §3.1).
ALTER TABLE tokens ADD COLUMN cnf_jkt TEXT;
ALTER TABLE tokens ADD COLUMN cnf_x5t TEXT;

-- Authorization codes bound to a DPoP key by the authorization request's dpop_jkt
-- (RFC 9449 §10): redeemed only with a proof by that key.
ALTER TABLE authorization_codes ADD COLUMN dpop_jkt TEXT;

-- Per client: token requests without a DPoP proof are refused (RFC 9449 §5).
ALTER TABLE clients ADD COLUMN require_dpop BOOLEAN NOT NULL DEFAULT FALSE;

-- Resource servers with the default claim allow-list get cnf (RFC 9449 §6.2), which the
-- default now holds: without it a bound token would introspect inactive for them.
UPDATE resource_servers SET claims = 'aud client_id cnf exp iat iss jti nbf scope sub token_type username'
 WHERE claims = 'aud client_id exp iat iss jti nbf scope sub token_type username';

-- DPoP proofs seen at the token endpoint, so each is accepted once across every process
-- on this database (RFC 9449 §11.1); kept until the proof's iat window is over, then purged.
-- The primary key makes concurrent replays lose.
CREATE TABLE dpop_jtis (
    jkt        TEXT NOT NULL,
    jti        TEXT NOT NULL,
    expires_at BIGINT NOT NULL,
    PRIMARY KEY (jkt, jti)
);
CREATE INDEX dpop_jtis_expires ON dpop_jtis (expires_at);
