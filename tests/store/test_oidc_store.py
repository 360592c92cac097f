"""The store's part in OpenID Connect (docs/oidc.md), on every backend: client and user
settings round-trip, the nonce of a live code is refused again, and RP-initiated logout
revokes one client's grants of one user."""

from __future__ import annotations

from dataclasses import replace

import pytest

from keystile.store.base import GRANT_REVOKED, RP_LOGOUT, Conflict, Store
from tests.store.test_contract import (
    NOW,
    authorized,
    client,
    code,
    events_since,
    grant,
    revoked_at,
    user,
)


class TestOidcSettings:
    async def test_client_oidc_settings_round_trip(self, store: Store) -> None:
        """id_token_signed_response_alg, post-logout redirect URIs (in order) and the
        logout setting are stored, updated and read back."""
        c = client(
            "rp-1",
            id_token_signed_response_alg="RS256",
            post_logout_redirect_uris=("https://rp.example/b", "https://rp.example/a"),
            logout_revokes_grants=True,
        )
        await store.create_client(c)
        assert await store.get_client("rp-1") == c
        changed = replace(
            c,
            id_token_signed_response_alg=None,
            post_logout_redirect_uris=(),
            logout_revokes_grants=False,
            updated_at=NOW + 1,
        )
        await store.update_client(changed)
        assert await store.list_clients() == [changed]

    async def test_user_claims_round_trip(self, store: Store) -> None:
        """A user's standard claims (OIDC Core §5.1) are stored and updated."""
        u = user(name="Alice", email="alice@example.test", email_verified=True)
        await store.create_user(u)
        assert await store.get_user("u-1") == u
        changed = replace(u, preferred_username="ally", email=None, email_verified=False)
        await store.update_user(changed)
        assert await store.get_user_by_name("alice") == changed


class TestNonce:
    async def test_nonce_of_a_live_code_is_refused(self, store: Store) -> None:
        """OIDC Core §15.5.2: a second code with the nonce of a live code of the same
        client is refused, storing nothing; another client or an expired code is fine."""
        await store.create_client(client("app-1"))
        await store.create_user(user())
        first = grant("g-1", claims='{"id_token":["email"]}')
        await store.create_authorization_code(first, code(first, nonce="n-1"))
        assert (await store.get_grant("g-1")) == first
        again = grant("g-2")
        with pytest.raises(Conflict):
            await store.create_authorization_code(again, code(again, nonce="n-1"))
        assert await store.get_grant("g-2") is None
        other = grant("g-3", client_id="app-2")
        assert await store.create_authorization_code(other, code(other, nonce="n-1"))
        later = grant("g-4")
        assert await store.create_authorization_code(
            later, code(later, nonce="n-1", created_at=NOW + 50, expires_at=NOW + 110)
        )


class TestLogoutRevocation:
    async def test_revoke_user_client_grants(self, store: Store) -> None:
        """Every live grant of the user for that client is revoked with its tokens and
        events; other clients' and other users' grants stay."""
        await store.create_user(user())
        await store.create_user(user("u-2", "bob"))
        mine = [grant("g-1"), grant("g-2")]
        other_client = grant("g-3", client_id="app-2")
        other_user = grant("g-4", user_id="u-2")
        issued = {g.grant_id: await authorized(store, g) for g in [*mine, other_client, other_user]}
        before = max([0, *(e.id for e in await store.events_after(0, 10_000))])

        n = await store.revoke_user_client_grants("u-1", "app-1", NOW + 1, RP_LOGOUT)

        assert n == 4
        for gid in ("g-1", "g-2"):
            for t in issued[gid]:
                assert await revoked_at(store, t) == NOW + 1
        for gid in ("g-3", "g-4"):
            for t in issued[gid]:
                assert await revoked_at(store, t) is None
        summaries = [p for t, p in await events_since(store, before) if t == GRANT_REVOKED]
        assert sorted(p["grant_id"] for p in summaries) == ["g-1", "g-2"]
        assert {p["reason"] for p in summaries} == {RP_LOGOUT}
        assert await store.revoke_user_client_grants("u-1", "app-1", NOW + 2, RP_LOGOUT) == 0


class TestIdTokenKeys:
    async def test_one_id_token_key_per_algorithm_beside_the_active_key(self, store: Store) -> None:
        """An active ID-token key of another algorithm may sit beside the active key; a
        second one of the same algorithm is a Conflict; a rotation retires both."""
        from tests.store.test_contract import keys_by_kid, signing_key

        await store.insert_signing_key(signing_key("k1", "active"))
        await store.insert_signing_key(signing_key("k2", "active", alg="RS256", use_for="id_token"))
        keys = await keys_by_kid(store)
        assert (keys["k2"].state, keys["k2"].use_for) == ("active", "id_token")
        with pytest.raises(Conflict):
            await store.insert_signing_key(
                signing_key("k3", "active", alg="RS256", use_for="id_token")
            )
        with pytest.raises(Conflict):
            await store.insert_signing_key(signing_key("k4", "active"))
        await store.insert_signing_key(signing_key("k5"))
        await store.activate_signing_key("k5", NOW + 10, retired_until=NOW + 310)
        keys = await keys_by_kid(store)
        assert {kid: k.state for kid, k in keys.items()} == {
            "k1": "retired",
            "k2": "retired",
            "k5": "active",
        }
        assert keys["k2"].private_jwk_enc is None
