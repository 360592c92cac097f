-- keystile schema, version 5 (PostgreSQL), mirroring sqlite/0005_oidc.sql: OpenID Connect
-- on the code flow (issue 13; docs/oidc.md).

-- Per client: the JWS algorithm of its ID tokens (OIDC Registration §2
-- id_token_signed_response_alg; NULL: the active signing key's), the URIs it may be sent
-- back to after RP-initiated logout (space-separated, matched exactly; RP-Initiated
-- Logout §3.1), and whether that logout also revokes its grants for the user.
ALTER TABLE clients ADD COLUMN id_token_signed_response_alg TEXT;
ALTER TABLE clients ADD COLUMN post_logout_redirect_uris TEXT NOT NULL DEFAULT '';
ALTER TABLE clients ADD COLUMN logout_revokes_grants BOOLEAN NOT NULL DEFAULT FALSE;

-- Standard claims of a user (OIDC Core §5.1), for the profile and email scopes. NULL:
-- not set (preferred_username then falls back to the username).
ALTER TABLE users ADD COLUMN name TEXT;
ALTER TABLE users ADD COLUMN preferred_username TEXT;
ALTER TABLE users ADD COLUMN email TEXT;
ALTER TABLE users ADD COLUMN email_verified BOOLEAN NOT NULL DEFAULT FALSE;

-- The claims request parameter (OIDC Core §5.5) of the authorization, normalised to JSON
-- ({"id_token": [...], "userinfo": [...]}; '' for none), kept for refresh and UserInfo.
ALTER TABLE grants ADD COLUMN claims TEXT NOT NULL DEFAULT '';

-- The nonce of the authorization request, echoed in the ID token (OIDC Core §3.1.2.1); a
-- nonce of a code still live is refused for that client (replay, §15.5.2).
ALTER TABLE authorization_codes ADD COLUMN nonce TEXT;
CREATE INDEX authorization_codes_nonce ON authorization_codes (client_id, nonce)
    WHERE nonce IS NOT NULL;

-- ID tokens for clients whose id_token_signed_response_alg is not the active key's (OIDC
-- Registration §2; docs/oidc.md): an active key per such algorithm, use_for 'id_token',
-- made on first need. The active key of use_for 'all' stays the only one that signs access
-- tokens and introspection answers; a rotation retires every active key.
ALTER TABLE signing_keys ADD COLUMN use_for TEXT NOT NULL DEFAULT 'all';
DROP INDEX signing_keys_one_active;
CREATE UNIQUE INDEX signing_keys_one_active ON signing_keys (state)
    WHERE state = 'active' AND use_for = 'all';
CREATE UNIQUE INDEX signing_keys_one_id_token_key ON signing_keys (alg)
    WHERE state = 'active' AND use_for = 'id_token';
