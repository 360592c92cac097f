"""The revocation endpoint (RFC 7009) and revocation by client lifecycle."""

from __future__ import annotations

import hashlib

from keystile.core.tokens import new_access_token
from tests.conftest import REVOKE

INACTIVE = {"active": False}


class TestRevoke:
    async def test_owner_revokes(self, http, setup, issue_token, introspect):
        """The owning client revokes: 200 with an empty body, then inactive (RFC 7009 §2.2)."""
        token = await issue_token(setup.app)
        r = await http.post(REVOKE, data={"token": token}, auth=setup.app.auth)

        assert r.status_code == 200
        assert r.content == b""
        assert r.headers["content-length"] == "0"
        assert r.headers["cache-control"] == "no-store"
        assert "content-type" not in r.headers
        assert (await introspect(setup.rs, token)).json() == INACTIVE

    async def test_hint_is_ignored(self, http, setup, issue_token, introspect):
        """A token_type_hint, even a wrong or unknown one, does not stop revocation (§2.1)."""
        for hint in ("refresh_token", "bogus"):
            token = await issue_token(setup.app)
            r = await http.post(
                REVOKE, data={"token": token, "token_type_hint": hint}, auth=setup.app.auth
            )
            assert r.status_code == 200
            assert (await introspect(setup.rs, token)).json() == INACTIVE

    async def test_other_clients_token_stays_active(
        self, http, setup, register_client, issue_token, introspect
    ):
        """Revoking another client's token answers 200 but leaves it active (RFC 7009 §2.1)."""
        token = await issue_token(setup.app)
        thief = await register_client("thief")
        r = await http.post(REVOKE, data={"token": token}, auth=thief.auth)

        assert r.status_code == 200
        assert r.content == b""
        assert (await introspect(setup.rs, token)).json()["active"] is True

    async def test_unknown_token(self, http, setup):
        """An unknown token is answered 200 (RFC 7009 §2.2: invalid tokens are no error)."""
        for token in (new_access_token(), "garbage", "x" * 300):
            r = await http.post(REVOKE, data={"token": token}, auth=setup.app.auth)
            assert r.status_code == 200
            assert r.content == b""

    async def test_token_shaped_non_ascii(self, http, setup):
        """A token-shaped value with non-ASCII characters is answered 200, never 500 (§2.2)."""
        r = await http.post(REVOKE, data={"token": "ks_at_" + "é" * 49}, auth=setup.app.auth)

        assert r.status_code == 200

    async def test_missing_token(self, http, setup):
        """A request without token is 400 invalid_request (RFC 7009 §2.1: token REQUIRED)."""
        r = await http.post(REVOKE, data={"token_type_hint": "access_token"}, auth=setup.app.auth)

        assert r.status_code == 400
        assert r.json() == {
            "error": "invalid_request",
            "error_description": "missing parameter: token",
        }

    async def test_revoke_expired_token(self, http, setup, issue_token, clock):
        """Revoking an already expired token is fine: 200 (RFC 7009 §2.2)."""
        token = await issue_token(setup.app)
        clock.advance(7200)
        r = await http.post(REVOKE, data={"token": token}, auth=setup.app.auth)

        assert r.status_code == 200

    async def test_requires_authentication(self, http, setup, issue_token, introspect):
        """Revocation without client credentials is 401 and revokes nothing (RFC 7009 §2.1)."""
        token = await issue_token(setup.app)
        r = await http.post(REVOKE, data={"token": token})

        assert r.status_code == 401
        assert (await introspect(setup.rs, token)).json()["active"] is True


class TestEvents:
    async def test_one_event_with_hash_not_token(self, http, setup, issue_token, store, clock):
        """Revocation writes one token_revoked event carrying the SHA-256, never the token."""
        token = await issue_token(setup.app)
        await http.post(REVOKE, data={"token": token}, auth=setup.app.auth)

        events = await store.events_after(0)
        assert len(events) == 1
        event = events[0]
        assert event.type == "token_revoked"
        assert event.created_at == clock.now()
        jti = event.payload["jti"]
        assert event.payload == {
            "token_sha256": hashlib.sha256(token.encode()).hexdigest(),
            "jti": jti,
            "client_id": "app-1",
            "token_type": "access_token",
            "aud": ["https://api.example.test"],
            "exp": clock.now() + 3600,
        }
        assert token not in repr(event)

    async def test_raw_token_never_on_disk(self, http, setup, issue_token, db_path):
        """Neither the token nor the client secret is written to the database files."""
        token = await issue_token(setup.app)
        await http.post(REVOKE, data={"token": token}, auth=setup.app.auth)

        files = [p for p in db_path.parent.iterdir() if p.name.startswith(db_path.name)]
        assert files
        for path in files:
            data = path.read_bytes()
            assert token.encode() not in data
            assert setup.app.secret.encode() not in data

    async def test_twice_is_one_event(self, http, setup, issue_token, store):
        """Revoking the same token twice answers 200 both times and writes one event."""
        token = await issue_token(setup.app)
        for _ in range(2):
            r = await http.post(REVOKE, data={"token": token}, auth=setup.app.auth)
            assert r.status_code == 200

        events = await store.events_after(0)
        assert [e.type for e in events] == ["token_revoked"]

    async def test_refused_revocation_writes_no_event(
        self, http, setup, register_client, issue_token, store
    ):
        """Another client's attempt or an unknown token writes no event."""
        token = await issue_token(setup.app)
        thief = await register_client("thief")
        await http.post(REVOKE, data={"token": token}, auth=thief.auth)
        await http.post(REVOKE, data={"token": new_access_token()}, auth=setup.app.auth)

        assert await store.events_after(0) == []


class TestClientLifecycle:
    async def test_disabled_client_tokens_inactive(
        self, setup, issue_token, introspect, store, clock
    ):
        """Disabling a client revokes its live tokens and writes a client_disabled event."""
        tokens = [await issue_token(setup.app) for _ in range(2)]
        n = await store.set_client_enabled("app-1", False, clock.now())

        assert n == 2
        for token in tokens:
            assert (await introspect(setup.rs, token)).json() == INACTIVE
        events = await store.events_after(0)
        assert [(e.type, e.payload) for e in events] == [
            ("client_disabled", {"client_id": "app-1", "tokens_revoked": 2})
        ]

    async def test_reenabling_does_not_revive_tokens(
        self, setup, issue_token, introspect, store, clock
    ):
        """Tokens revoked by disabling stay revoked after the client is enabled again."""
        token = await issue_token(setup.app)
        await store.set_client_enabled("app-1", False, clock.now())
        await store.set_client_enabled("app-1", True, clock.now())

        assert (await introspect(setup.rs, token)).json() == INACTIVE

    async def test_deleted_client_tokens_inactive(
        self, http, setup, issue_token, introspect, store, clock
    ):
        """Deleting a client revokes its tokens and writes a client_deleted event."""
        token = await issue_token(setup.app)
        n = await store.delete_client("app-1", clock.now())

        assert n == 1
        assert (await introspect(setup.rs, token)).json() == INACTIVE
        events = await store.events_after(0)
        assert [(e.type, e.payload) for e in events] == [
            ("client_deleted", {"client_id": "app-1", "tokens_revoked": 1})
        ]
        r = await http.post(
            "/oauth2/token", data={"grant_type": "client_credentials"}, auth=setup.app.auth
        )
        assert r.status_code == 401

    async def test_other_clients_tokens_untouched(
        self, setup, register_client, issue_token, introspect, store, clock
    ):
        """Disabling one client leaves other clients' tokens active."""
        other = await register_client("app-2", default_audience=["https://api.example.test"])
        token = await issue_token(other)
        await store.set_client_enabled("app-1", False, clock.now())

        assert (await introspect(setup.rs, token)).json()["active"] is True
