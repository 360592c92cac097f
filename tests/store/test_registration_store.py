"""The store side of dynamic client registration (RFC 7591, RFC 7592), on every backend."""

from __future__ import annotations

import asyncio
import json
import secrets

import pytest

from keystile.core.models import ClientRegistration, InitialAccessToken
from keystile.core.tokens import token_hash
from keystile.store.base import CLIENT_DELETED, Conflict, NewToken, NotFound, Store
from tests.store.conftest import Connect
from tests.store.test_contract import NOW, all_events, client, code, grant, grant_token, token


def registration(client_id: str, method: str = "open", **changes: object) -> ClientRegistration:
    return ClientRegistration(
        client_id=client_id,
        method=method,  # type: ignore[arg-type]
        registered_at=changes.pop("registered_at", NOW),  # type: ignore[arg-type]
        access_token_hash=token_hash("ra of " + client_id),
        metadata=json.dumps({"client_name": client_id}),
    )


def initial(uses: int | None = 1, expires_at: int = NOW + 600) -> tuple[InitialAccessToken, bytes]:
    digest = secrets.token_bytes(32)
    return (
        InitialAccessToken(
            token_id="iat_" + secrets.token_hex(4),
            token_hash=digest,
            created_at=NOW,
            expires_at=expires_at,
            uses_left=uses,
        ),
        digest,
    )


class TestRegisteredClients:
    async def test_round_trip(self, store: Store) -> None:
        """A registered client and its record are stored together and read back."""
        assert await store.register_client(client("dcr_a"), registration("dcr_a"))
        assert await store.get_client("dcr_a") == client("dcr_a")
        assert await store.get_registration("dcr_a") == registration("dcr_a")
        assert await store.list_registrations() == [registration("dcr_a")]
        assert await store.get_registration("app-1") is None

    async def test_taken_id_is_a_conflict_and_stores_nothing(self, store: Store) -> None:
        """A registration under an existing client id stores neither row."""
        await store.create_client(client("dcr_a"))
        with pytest.raises(Conflict):
            await store.register_client(client("dcr_a"), registration("dcr_a"))
        assert await store.list_registrations() == []

    async def test_cap_holds_across_processes(self, store: Store, connect: Connect) -> None:
        """Registrations racing from two processes never pass the cap together."""
        other = await connect()
        ids = [f"dcr_{i}" for i in range(8)]
        results = await asyncio.gather(
            *(
                (store if i % 2 else other).register_client(client(cid), registration(cid), cap=3)
                for i, cid in enumerate(ids)
            )
        )
        assert sum(results) == 3
        assert len(await store.list_registrations()) == 3
        # The cap counts one method only.
        assert await store.register_client(
            client("dcr_x"), registration("dcr_x", "initial-access-token"), cap=3
        )

    async def test_update_changes_client_and_metadata(self, store: Store) -> None:
        """update_registration stores the client's new settings and metadata together."""
        await store.register_client(client("dcr_a"), registration("dcr_a"))
        changed = client("dcr_a", name="renamed", redirect_uris=("https://a.example/cb",))
        await store.update_registration(changed, '{"client_name":"renamed"}')
        assert await store.get_client("dcr_a") == changed
        got = await store.get_registration("dcr_a")
        assert got is not None
        assert got.metadata == '{"client_name":"renamed"}'
        with pytest.raises(NotFound):
            await store.update_registration(client("dcr_none"), "{}")

    async def test_deleting_the_client_deletes_its_registration(self, store: Store) -> None:
        """RFC 7592 §2.3: a deleted client leaves no registration (nor its token hash)."""
        await store.register_client(client("dcr_a"), registration("dcr_a"))
        await store.delete_client("dcr_a", NOW)
        assert await store.get_registration("dcr_a") is None

    async def test_first_token_marks_used(self, store: Store) -> None:
        """The first token issued to a registered client (directly or from a grant) notes
        its first use; later tokens leave that time alone."""
        await store.register_client(client("dcr_a"), registration("dcr_a"))
        await store.register_client(client("dcr_b"), registration("dcr_b"))
        await store.insert_token(token("dcr_a", iat=NOW + 5))
        await store.insert_token(token("dcr_a", iat=NOW + 9))
        g = grant("g-1", client_id="dcr_b")
        assert await store.create_authorization_code(g, code(g))
        assert await store.issue_grant_tokens("g-1", [NewToken(grant_token(g, iat=NOW + 7))], NOW)
        a = await store.get_registration("dcr_a")
        b = await store.get_registration("dcr_b")
        assert a is not None
        assert b is not None
        assert (a.used_at, b.used_at) == (NOW + 5, NOW + 7)

    async def test_expiry_deletes_only_unused_old_registrations(self, store: Store) -> None:
        """expire_registrations deletes never-used clients of the method registered before
        the bound, with a client_deleted event each; used, newer and other ones stay."""
        await store.create_client(client("app-1"))
        for cid, method, at in [
            ("dcr_old", "open", NOW - 100),
            ("dcr_used", "open", NOW - 100),
            ("dcr_new", "open", NOW),
            ("dcr_iat", "initial-access-token", NOW - 100),
        ]:
            await store.register_client(client(cid), registration(cid, method, registered_at=at))
        await store.insert_token(token("dcr_used"))
        assert await store.expire_registrations("open", NOW - 50, NOW) == 1
        assert await store.get_client("dcr_old") is None
        left = sorted(r.client_id for r in await store.list_registrations())
        assert left == ["dcr_iat", "dcr_new", "dcr_used"]
        assert await store.get_client("app-1") is not None
        events = [(t, p) for _, t, p in await all_events(store)]
        assert events == [(CLIENT_DELETED, {"client_id": "dcr_old", "tokens_revoked": 0})]
        assert await store.expire_registrations("open", NOW - 50, NOW) == 0

    async def test_expiry_can_keep_disabled_clients(self, store: Store) -> None:
        """With keep_disabled, a never-used client an operator disabled stays (how a URL
        known by its metadata document stays blocked); enabled ones expire as usual."""
        for cid in ("https://a.example/c", "https://b.example/c"):
            await store.register_client(
                client(cid), registration(cid, "metadata-document", registered_at=NOW - 100)
            )
        await store.set_client_enabled("https://b.example/c", False, NOW)
        assert (
            await store.expire_registrations("metadata-document", NOW - 50, NOW, keep_disabled=True)
            == 1
        )
        assert await store.get_client("https://a.example/c") is None
        assert await store.get_client("https://b.example/c") is not None


class TestInitialAccessTokens:
    async def test_uses_are_counted(self, store: Store) -> None:
        """A token admits as many registrations as it has uses, then none."""
        t, digest = initial(uses=2)
        await store.create_initial_access_token(t)
        assert await store.use_initial_access_token(digest, NOW)
        assert await store.use_initial_access_token(digest, NOW)
        assert not await store.use_initial_access_token(digest, NOW)
        (listed,) = await store.list_initial_access_tokens()
        assert listed.uses_left == 0
        assert not await store.use_initial_access_token(secrets.token_bytes(32), NOW)

    async def test_unlimited_until_expiry(self, store: Store) -> None:
        """uses None: any number of registrations, until it expires."""
        t, digest = initial(uses=None, expires_at=NOW + 10)
        await store.create_initial_access_token(t)
        for _ in range(5):
            assert await store.use_initial_access_token(digest, NOW + 9)
        assert not await store.use_initial_access_token(digest, NOW + 10)

    async def test_single_use_races(self, store: Store, connect: Connect) -> None:
        """A single-use token spent from two processes at once admits exactly one."""
        other = await connect()
        t, digest = initial(uses=1)
        await store.create_initial_access_token(t)
        results = await asyncio.gather(
            *((store if i % 2 else other).use_initial_access_token(digest, NOW) for i in range(6))
        )
        assert sum(results) == 1

    async def test_delete(self, store: Store) -> None:
        """A deleted token no longer works; deleting an unknown id is NotFound."""
        t, digest = initial(uses=None)
        await store.create_initial_access_token(t)
        assert await store.list_initial_access_tokens() == [t]
        await store.delete_initial_access_token(t.token_id)
        assert not await store.use_initial_access_token(digest, NOW)
        with pytest.raises(NotFound):
            await store.delete_initial_access_token(t.token_id)
