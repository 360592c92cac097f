"""The store methods the admin API added (store/base.py), on every backend: a token by
jti, revoking all of a client's tokens without disabling it, and writing an audit event."""

from __future__ import annotations

from keystile.store.base import ADMIN_ACTION, TOKEN_REVOKED, Store
from tests.store.test_contract import NOW, all_events, client, token


class TestAdminStore:
    async def test_find_token_by_jti(self, store: Store) -> None:
        """A stored token is found by its jti; an unknown jti finds nothing."""
        await store.create_client(client())
        t = token()
        await store.insert_token(t)
        assert await store.find_token_by_jti(t.jti) == t
        assert await store.find_token_by_jti("unknown") is None

    async def test_revoke_client_tokens_keeps_the_client(self, store: Store) -> None:
        """Every live token of the client is revoked with its own token_revoked event;
        expired tokens and other clients' tokens stay; the client stays enabled."""
        await store.create_client(client())
        await store.create_client(client("app-2"))
        live = [token() for _ in range(2)]
        expired = token(exp=NOW - 1)
        other = token("app-2")
        for t in (*live, expired, other):
            await store.insert_token(t)

        assert await store.revoke_client_tokens("app-1", NOW) == 2

        for t in live:
            found = await store.find_token(t.token_hash)
            assert found is not None
            assert found.revoked_at == NOW
        for t in (expired, other):
            found = await store.find_token(t.token_hash)
            assert found is not None
            assert found.revoked_at is None
        kept = await store.get_client("app-1")
        assert kept is not None
        assert kept.enabled
        events = await all_events(store)
        revoked = sorted(p["token_sha256"] for _, kind, p in events if kind == TOKEN_REVOKED)
        assert revoked == sorted(t.token_hash.hex() for t in live)
        assert await store.revoke_client_tokens("app-1", NOW) == 0

    async def test_append_event(self, store: Store) -> None:
        """An appended event is read back in order with its payload."""
        await store.append_event(ADMIN_ACTION, NOW, {"actor": "ops", "action": "x"})
        events = await all_events(store)
        assert [(kind, p) for _, kind, p in events] == [
            (ADMIN_ACTION, {"actor": "ops", "action": "x"})
        ]
        assert await store.latest_event_id() == events[-1][0]
