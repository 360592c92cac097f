"""The store contract (store/base.py), checked the same way against every backend.

Each test runs once on SQLite and once on PostgreSQL; "another process" is a second store
object opened on the same database, which is what a second AS process holds.
"""

from __future__ import annotations

import asyncio
import importlib
import secrets
from dataclasses import replace

import pytest

from keystile.core.models import (
    AuthorizationCode,
    Client,
    Grant,
    ResourceServer,
    Session,
    SigningKey,
    TokenRecord,
    User,
)
from keystile.core.tokens import token_hash
from keystile.store.base import (
    CLIENT_DELETED,
    CLIENT_DISABLED,
    CODE_REPLAYED,
    GRANT_REVOKED,
    REFRESH_TOKEN_REPLAYED,
    REFRESH_TOKEN_REVOKED,
    TOKEN_REVOKED,
    USER_DELETED,
    USER_DISABLED,
    USER_REVOKE_SESSIONS,
    USER_SESSIONS_REVOKED,
    Conflict,
    NewToken,
    NotFound,
    Store,
)
from tests.store.conftest import Connect

NOW = 1_800_000_000
API = "https://api.example.test"
OTHER_API = "https://other.example.test"


def client(client_id: str = "app-1", **changes: object) -> Client:
    base = Client(
        client_id=client_id,
        name=f"{client_id} name",
        secret_hash=token_hash(f"secret of {client_id}"),
        auth_method="client_secret_basic",
        grant_types=frozenset({"client_credentials"}),
        scopes=frozenset({"read", "write"}),
        default_audience=(API, OTHER_API),
        access_token_ttl=600,
        enabled=True,
        created_at=NOW,
        updated_at=NOW,
    )
    return replace(base, **changes)  # type: ignore[arg-type]


def resource(
    identifier: str = API, clients: tuple[str, ...] = (), **changes: object
) -> ResourceServer:
    base = ResourceServer(
        identifier=identifier,
        name=f"{identifier} name",
        introspection_clients=frozenset(clients),
        claims=frozenset({"scope", "client_id", "exp"}),
        rules=frozenset({"audience", "owner"}),
        created_at=NOW,
        updated_at=NOW,
    )
    return replace(base, **changes)  # type: ignore[arg-type]


def token(client_id: str = "app-1", *, exp: int = NOW + 600, **changes: object) -> TokenRecord:
    base = TokenRecord(
        token_hash=secrets.token_bytes(32),
        kind="access_token",
        client_id=client_id,
        scope=frozenset({"read"}),
        aud=(API, OTHER_API),
        iat=NOW - 10,
        nbf=NOW - 10,
        exp=exp,
        jti=secrets.token_hex(8),
        sub=client_id,
        username=None,
        grant_id=None,
    )
    return replace(base, **changes)  # type: ignore[arg-type]


async def version(store: Store) -> int:
    return (await store.lookup_token(None))[0]


async def all_events(store: Store) -> list[tuple[int, str, dict[str, object]]]:
    return [(e.id, e.type, e.payload) for e in await store.events_after(0, 10_000)]


class TestLifecycle:
    async def test_open_applies_every_migration_once(self, store: Store, connect: Connect) -> None:
        """A new database is migrated to the latest version, and opening it again is a no-op.
        Versions only increase; they may have gaps (numbers are handed out to work in
        parallel, and each migration is applied by its own number)."""
        shipped = importlib.import_module(type(store).__module__).migrations()
        latest = shipped[-1][0]
        versions = [v for v, _, _ in shipped]
        # Numbered in order, without repeats; gaps are allowed (branches number in parallel).
        assert versions == sorted(set(versions))
        assert versions[0] == 1
        assert await store.schema_version() == latest
        again = await connect()
        assert await again.schema_version() == latest
        await store.ping()
        await again.ping()

    async def test_meta_values_are_stored_and_replaced(self, store: Store) -> None:
        """Meta keys read back what was last written, and unknown keys read as None."""
        assert await store.get_meta("initialized") is None
        await store.set_meta("initialized", "1")
        await store.set_meta("initialized", "2")
        assert await store.get_meta("initialized") == "2"

    async def test_claim_meta_keeps_the_first_value(self, store: Store, connect: Connect) -> None:
        """Processes racing to create a shared secret (the CSRF key of the login pages) all
        get the one value that was stored first."""
        others = [await connect() for _ in range(3)]
        won = await asyncio.gather(
            *(s.claim_meta("ui_csrf_key", f"value-{i}") for i, s in enumerate([store, *others]))
        )
        assert len(set(won)) == 1
        assert await store.get_meta("ui_csrf_key") == won[0]
        assert await store.claim_meta("ui_csrf_key", "later") == won[0]


class TestClients:
    async def test_client_round_trip_keeps_every_field(self, store: Store) -> None:
        """A created client reads back equal, field by field, secret hash included."""
        c = client(grant_types=frozenset(), default_audience=())
        await store.create_client(c)
        assert await store.get_client("app-1") == c
        assert await store.get_client("nobody") is None

    async def test_duplicate_client_id_is_a_conflict(self, store: Store) -> None:
        """Creating a client id that exists raises Conflict and keeps the first client."""
        await store.create_client(client())
        with pytest.raises(Conflict):
            await store.create_client(client(name="impostor"))
        found = await store.get_client("app-1")
        assert found is not None
        assert found.name == "app-1 name"

    async def test_list_clients_is_ordered_by_id(self, store: Store) -> None:
        """Clients are listed in client_id order."""
        for cid in ("b", "c", "a"):
            await store.create_client(client(cid))
        assert [c.client_id for c in await store.list_clients()] == ["a", "b", "c"]

    async def test_update_client_replaces_its_settings(self, store: Store) -> None:
        """An update changes every mutable field; an unknown client raises NotFound."""
        await store.create_client(client())
        changed = client(
            name="renamed",
            secret_hash=token_hash("rotated"),
            auth_method="client_secret_post",
            scopes=frozenset({"read"}),
            default_audience=(API,),
            access_token_ttl=60,
            updated_at=NOW + 5,
        )
        await store.update_client(changed)
        assert await store.get_client("app-1") == changed
        with pytest.raises(NotFound):
            await store.update_client(client("nobody"))

    async def test_disabling_a_client_revokes_only_its_live_tokens(self, store: Store) -> None:
        """Disable cascades to the client's live tokens, in one change with one event."""
        await store.create_client(client())
        await store.create_client(client("app-2"))
        live = [token() for _ in range(3)]
        expired = token(exp=NOW - 1)
        other = token("app-2")
        for t in (*live, expired, other):
            await store.insert_token(t)
        assert await store.revoke_token(live[0].token_hash, "app-1", NOW - 5)

        assert await store.set_client_enabled("app-1", False, NOW) == 2

        for t in live[1:]:
            found = await store.find_token(t.token_hash)
            assert found is not None
            assert found.revoked_at == NOW
        first = await store.find_token(live[0].token_hash)
        assert first is not None
        assert first.revoked_at == NOW - 5
        assert (await store.find_token(expired.token_hash)).revoked_at is None  # type: ignore[union-attr]
        assert (await store.find_token(other.token_hash)).revoked_at is None  # type: ignore[union-attr]
        disabled = await store.get_client("app-1")
        assert disabled is not None
        assert not disabled.enabled
        assert disabled.updated_at == NOW
        events = await all_events(store)
        assert [(t, p) for _, t, p in events][-1] == (
            CLIENT_DISABLED,
            {"client_id": "app-1", "tokens_revoked": 2},
        )

    async def test_enabling_a_client_brings_no_token_back(self, store: Store) -> None:
        """Re-enabling revokes nothing, writes no event and leaves revoked tokens revoked."""
        await store.create_client(client())
        t = token()
        await store.insert_token(t)
        await store.set_client_enabled("app-1", False, NOW)
        latest = await store.latest_event_id()
        assert await store.set_client_enabled("app-1", True, NOW + 1) == 0
        assert await store.latest_event_id() == latest
        found = await store.find_token(t.token_hash)
        assert found is not None
        assert found.revoked_at == NOW
        with pytest.raises(NotFound):
            await store.set_client_enabled("nobody", False, NOW)

    async def test_deleting_a_client_revokes_tokens_and_leaves_its_resource(
        self, store: Store
    ) -> None:
        """Delete revokes live tokens (rows kept), drops the client from its resource server
        and writes a client_deleted event."""
        await store.create_client(client())
        await store.create_client(client("rs-1"))
        await store.create_resource_server(resource(clients=("app-1", "rs-1")))
        t = token()
        await store.insert_token(t)

        assert await store.delete_client("app-1", NOW) == 1

        assert await store.get_client("app-1") is None
        found = await store.find_token(t.token_hash)
        assert found is not None
        assert found.revoked_at == NOW
        rs = await store.get_resource_server(API)
        assert rs is not None
        assert rs.introspection_clients == {"rs-1"}
        assert await store.resource_server_for_client("app-1") is None
        _, type_, payload = (await all_events(store))[-1]
        assert (type_, payload) == (CLIENT_DELETED, {"client_id": "app-1", "tokens_revoked": 1})
        with pytest.raises(NotFound):
            await store.delete_client("app-1", NOW)


class TestResourceServers:
    async def test_resource_server_round_trip(self, store: Store) -> None:
        """A created resource server reads back equal, by identifier and by its clients."""
        await store.create_client(client("rs-1"))
        await store.create_client(client("rs-1b"))
        rs = resource(clients=("rs-1", "rs-1b"))
        await store.create_resource_server(rs)
        assert await store.get_resource_server(API) == rs
        assert await store.resource_server_for_client("rs-1") == rs
        assert await store.resource_server_for_client("rs-1b") == rs
        assert await store.resource_server_for_client("app-1") is None
        assert await store.get_resource_server(OTHER_API) is None

    async def test_resource_server_rules(self, store: Store) -> None:
        """Duplicates and clients introspecting for two servers conflict; unknown clients and
        servers are NotFound, and a failed change leaves nothing behind."""
        await store.create_client(client("rs-1"))
        await store.create_resource_server(resource(clients=("rs-1",)))
        with pytest.raises(Conflict):
            await store.create_resource_server(resource())
        with pytest.raises(Conflict):
            await store.create_resource_server(resource(OTHER_API, clients=("rs-1",)))
        with pytest.raises(NotFound):
            await store.create_resource_server(resource(OTHER_API, clients=("ghost",)))
        assert await store.get_resource_server(OTHER_API) is None  # rolled back whole
        with pytest.raises(NotFound):
            await store.update_resource_server(resource(OTHER_API))
        with pytest.raises(NotFound):
            await store.delete_resource_server(OTHER_API)

    async def test_update_and_delete_resource_server(self, store: Store) -> None:
        """Update replaces fields and the client list whole; delete frees its clients."""
        for cid in ("rs-1", "rs-2"):
            await store.create_client(client(cid))
        await store.create_resource_server(resource(clients=("rs-1",)))
        changed = resource(
            clients=("rs-2",), name="renamed", claims=frozenset({"scope"}), updated_at=NOW + 1
        )
        await store.update_resource_server(changed)
        assert await store.get_resource_server(API) == changed
        assert await store.resource_server_for_client("rs-1") is None
        await store.delete_resource_server(API)
        assert await store.list_resource_servers() == []
        assert await store.resource_server_for_client("rs-2") is None

    async def test_known_resources_and_scopes_follow_the_registry(self, store: Store) -> None:
        """known_resources lists every identifier; all_scopes only enabled clients' scopes."""
        await store.create_client(client("a", scopes=frozenset({"read"})))
        await store.create_client(client("b", scopes=frozenset({"admin"})))
        await store.create_resource_server(resource(API))
        assert await store.known_resources() == {API}
        assert await store.all_scopes() == {"read", "admin"}
        await store.create_resource_server(resource(OTHER_API))
        await store.set_client_enabled("b", False, NOW)
        assert await store.known_resources() == {API, OTHER_API}
        assert await store.all_scopes() == {"read"}
        assert [rs.identifier for rs in await store.list_resource_servers()] == [API, OTHER_API]


class TestRegistryVersion:
    async def test_every_registry_change_moves_the_version(
        self, store: Store, connect: Connect
    ) -> None:
        """Each change to clients or resource servers changes the version another process
        reads with its next lookup; token writes do not."""
        other = await connect()
        seen = [await version(other)]

        async def changed() -> None:
            now = await version(other)
            assert now != seen[-1]
            assert now > seen[-1]
            seen.append(now)

        await store.create_client(client())
        await changed()
        await store.create_client(client("rs-1"))
        await changed()
        await store.update_client(client(name="renamed"))
        await changed()
        await store.create_resource_server(resource(clients=("rs-1",)))
        await changed()
        await store.update_resource_server(resource(clients=(), name="renamed"))
        await changed()
        await store.set_client_enabled("app-1", False, NOW)
        await changed()
        await store.set_client_enabled("app-1", True, NOW)
        await changed()
        await store.delete_resource_server(API)
        await changed()
        await store.delete_client("rs-1", NOW)
        await changed()

        t = token()
        await store.insert_token(t)
        await store.revoke_token(t.token_hash, "app-1", NOW)
        await store.set_meta("k", "v")
        assert await version(other) == seen[-1]

    async def test_failed_change_leaves_the_version(self, store: Store) -> None:
        """A change that is refused (NotFound, Conflict) is rolled back, version included."""
        await store.create_client(client())
        before = await version(store)
        with pytest.raises(NotFound):
            await store.update_client(client("nobody"))
        with pytest.raises(NotFound):
            await store.create_resource_server(resource(clients=("ghost",)))
        with pytest.raises(Conflict):
            await store.create_client(client())
        assert await version(store) == before


class TestTokens:
    async def test_token_round_trip_and_lookup(self, store: Store) -> None:
        """A token reads back equal by find_token and lookup_token; unknown reads as None."""
        t = token(username="alice", grant_id="g-1", aud=())
        await store.insert_token(t)
        assert await store.find_token(t.token_hash) == t
        v, found = await store.lookup_token(t.token_hash)
        assert found == t
        assert v == await version(store)
        assert await store.find_token(token_hash("unknown")) is None
        assert (await store.lookup_token(token_hash("unknown")))[1] is None
        assert (await store.lookup_token(None))[1] is None

    async def test_duplicate_token_is_a_conflict(self, store: Store) -> None:
        """The same hash or jti twice raises Conflict: a token value is never reused."""
        t = token()
        await store.insert_token(t)
        with pytest.raises(Conflict):
            await store.insert_token(replace(t, jti="another"))
        with pytest.raises(Conflict):
            await store.insert_token(replace(t, token_hash=secrets.token_bytes(32)))

    async def test_revocation_by_its_client_writes_one_event(self, store: Store) -> None:
        """The owner revokes: the token is marked revoked and a token_revoked event carries
        its hash, never its value."""
        t = token()
        await store.insert_token(t)
        assert await store.revoke_token(t.token_hash, "app-1", NOW)
        found = await store.find_token(t.token_hash)
        assert found is not None
        assert found.revoked_at == NOW
        [(event_id, type_, payload)] = await all_events(store)
        assert type_ == TOKEN_REVOKED
        assert payload == {
            "token_sha256": t.token_hash.hex(),
            "jti": t.jti,
            "client_id": "app-1",
            "token_type": "access_token",
            "aud": [API, OTHER_API],
            "exp": t.exp,
        }
        assert await store.latest_event_id() == event_id

    async def test_revocation_refusals_write_nothing(self, store: Store) -> None:
        """Another client's token, an unknown token, a second revocation and an expired token
        write no event; only the owner is told True."""
        t, expired = token(), token(exp=NOW - 1)
        for r in (t, expired):
            await store.insert_token(r)
        assert not await store.revoke_token(t.token_hash, "app-2", NOW)
        assert not await store.revoke_token(token_hash("unknown"), "app-1", NOW)
        found = await store.find_token(t.token_hash)
        assert found is not None
        assert found.revoked_at is None
        assert await store.revoke_token(expired.token_hash, "app-1", NOW)
        found = await store.find_token(expired.token_hash)
        assert found is not None
        assert found.revoked_at is None
        assert await store.revoke_token(t.token_hash, "app-1", NOW)
        assert await store.revoke_token(t.token_hash, "app-1", NOW + 1)
        found = await store.find_token(t.token_hash)
        assert found is not None
        assert found.revoked_at == NOW
        assert len(await all_events(store)) == 1

    async def test_revocation_is_seen_by_another_process_at_once(
        self, store: Store, connect: Connect
    ) -> None:
        """A revocation committed through one store is what the next lookup elsewhere reads."""
        other = await connect()
        t = token()
        await store.insert_token(t)
        _, before = await other.lookup_token(t.token_hash)
        assert before is not None
        assert before.revoked_at is None
        await store.revoke_token(t.token_hash, "app-1", NOW)
        _, after = await other.lookup_token(t.token_hash)
        assert after is not None
        assert after.revoked_at == NOW

    async def test_concurrent_revocations_of_one_token_write_one_event(
        self, store: Store, connect: Connect
    ) -> None:
        """Many revocations of the same token at once, from two processes, all answer True
        and leave exactly one event."""
        other = await connect()
        t = token()
        await store.insert_token(t)
        results = await asyncio.gather(
            *(s.revoke_token(t.token_hash, "app-1", NOW) for s in (store, other) * 10)
        )
        assert all(results)
        assert [type_ for _, type_, _ in await all_events(store)] == [TOKEN_REVOKED]

    async def test_concurrent_revocation_and_client_disable(
        self, store: Store, connect: Connect
    ) -> None:
        """Revoking a token while its client is disabled elsewhere revokes it once: one
        client_disabled event, at most one token_revoked event, ids in order."""
        other = await connect()
        await store.create_client(client())
        tokens = [token() for _ in range(5)]
        for t in tokens:
            await store.insert_token(t)
        await asyncio.gather(
            *(store.revoke_token(t.token_hash, "app-1", NOW) for t in tokens),
            other.set_client_enabled("app-1", False, NOW),
        )
        events = await all_events(store)
        types = [type_ for _, type_, _ in events]
        assert types.count(CLIENT_DISABLED) == 1
        disabled = next(p for _, type_, p in events if type_ == CLIENT_DISABLED)
        assert types.count(TOKEN_REVOKED) + disabled["tokens_revoked"] == 5  # type: ignore[operator]
        for t in tokens:
            found = await store.find_token(t.token_hash)
            assert found is not None
            assert found.revoked_at == NOW


class TestEvents:
    async def test_events_are_ordered_and_paged(self, store: Store, connect: Connect) -> None:
        """Events written from two processes get consecutive ids in commit order, and
        events_after pages through them."""
        other = await connect()
        assert await store.latest_event_id() == 0
        assert await store.oldest_event_id() is None
        tokens = [token() for _ in range(6)]
        for t in tokens:
            await store.insert_token(t)
        await asyncio.gather(
            *(
                s.revoke_token(t.token_hash, "app-1", NOW)
                for s, t in zip((store, other) * 3, tokens, strict=True)
            )
        )
        ids = [e.id for e in await store.events_after(0, 100)]
        assert ids == list(range(ids[0], ids[0] + 6))
        assert await store.latest_event_id() == ids[-1]
        assert await other.latest_event_id() == ids[-1]
        assert await store.oldest_event_id() == ids[0]
        assert [e.id for e in await store.events_after(ids[1], 2)] == ids[2:4]
        assert await store.events_after(ids[-1]) == []
        hashes = {e.payload["token_sha256"] for e in await other.events_after(0)}
        assert hashes == {t.token_hash.hex() for t in tokens}

    async def test_concurrent_event_writers_never_expose_a_gap(
        self, store: Store, connect: Connect
    ) -> None:
        """While two processes write events, a reader that saw latest_event_id = N always
        finds every event up to N: no id becomes visible before a smaller one."""
        other = await connect()
        reader = await connect()
        tokens = [token() for _ in range(40)]
        for t in tokens:
            await store.insert_token(t)
        done = False
        problems: list[str] = []

        async def read() -> None:
            while not done:
                latest = await reader.latest_event_id()
                ids = [e.id for e in await reader.events_after(0, 1000)]
                if latest and ids[:latest] != list(range(1, latest + 1)):
                    problems.append(f"latest {latest}, visible {ids}")
                await asyncio.sleep(0)

        task = asyncio.create_task(read())
        await asyncio.gather(
            *(
                s.revoke_token(t.token_hash, "app-1", NOW)
                for s, t in zip((store, other) * 20, tokens, strict=True)
            )
        )
        done = True
        await task
        assert problems == []
        assert await reader.latest_event_id() == 40


class TestPurge:
    async def test_purge_removes_old_rows_in_batches(self, store: Store) -> None:
        """Tokens expired past the grace and events past retention go, in batches; the rest
        stays."""
        old = [token(exp=NOW - 100) for _ in range(5)]
        recent = token(exp=NOW - 10)
        live = token()
        for t in (*old, recent, live):
            await store.insert_token(t)
        await store.create_client(client())
        for t in (live, recent):
            await store.revoke_token(t.token_hash, "app-1", NOW - 20)  # two old events
        await store.set_client_enabled("app-1", False, NOW)  # a second, newer event

        result = await store.purge(NOW, token_grace=50, event_retention=10, batch=2)

        assert (result.tokens, result.events) == (5, 2)
        for t in old:
            assert await store.find_token(t.token_hash) is None
        assert await store.find_token(recent.token_hash) is not None
        assert await store.find_token(live.token_hash) is not None
        assert [e.type for e in await store.events_after(0)] == [CLIENT_DISABLED]

    async def test_latest_event_id_survives_a_purge(self, store: Store) -> None:
        """After every event is purged, latest_event_id keeps the highest id ever written,
        oldest_event_id is None, and the next event gets a higher id."""
        tokens = [token(), token()]
        for t in tokens:
            await store.insert_token(t)
        await store.revoke_token(tokens[0].token_hash, "app-1", NOW - 100)
        latest = await store.latest_event_id()
        assert latest > 0

        result = await store.purge(NOW, token_grace=0, event_retention=60)

        assert result.events == 1
        assert await store.latest_event_id() == latest
        assert await store.oldest_event_id() is None
        await store.revoke_token(tokens[1].token_hash, "app-1", NOW)
        assert await store.latest_event_id() == latest + 1
        assert await store.oldest_event_id() == latest + 1


# -- JWT access tokens, signing keys, client assertions (RFC 9068, RFC 7517, RFC 7523) ---------


def signing_key(kid: str, state: str = "next", **changes: object) -> SigningKey:
    base = SigningKey(
        kid=kid,
        alg="ES256",
        state=state,  # type: ignore[arg-type]
        public_jwk=f'{{"kid":"{kid}"}}',
        private_jwk_enc=b"sealed " + kid.encode(),
        created_at=NOW,
        activated_at=NOW if state == "active" else None,
    )
    return replace(base, **changes)  # type: ignore[arg-type]


async def keys_by_kid(store: Store) -> dict[str, SigningKey]:
    return {k.kid: k for k in await store.list_signing_keys()}


class TestJwtSettings:
    async def test_client_and_resource_server_jwt_fields_round_trip(self, store: Store) -> None:
        """token_format, jwks and introspection_response are stored, updated and read back."""
        c = client(token_format="jwt", jwks='{"keys":[]}', auth_method="private_key_jwt")
        await store.create_client(c)
        assert await store.get_client("app-1") == c
        await store.update_client(replace(c, token_format="opaque", jwks=None))
        found = await store.get_client("app-1")
        assert found is not None
        assert (found.token_format, found.jwks) == ("opaque", None)

        rs = resource(clients=("app-1",), introspection_response="jwt-required")
        await store.create_resource_server(rs)
        assert await store.resource_server_for_client("app-1") == rs
        await store.update_resource_server(replace(rs, introspection_response="jwt"))
        again = await store.get_resource_server(API)
        assert again is not None
        assert again.introspection_response == "jwt"


class TestSigningKeys:
    async def test_keys_round_trip_and_one_active(self, store: Store) -> None:
        """Keys read back as written, in creation order; a second active key is a Conflict."""
        first = signing_key("k1", "active")
        later = signing_key("k2", created_at=NOW + 1)
        await store.insert_signing_key(later)
        await store.insert_signing_key(first)
        assert await store.list_signing_keys() == [first, later]
        with pytest.raises(Conflict):
            await store.insert_signing_key(signing_key("k3", "active"))
        with pytest.raises(Conflict):
            await store.insert_signing_key(signing_key("k1"))

    async def test_activation_retires_the_active_key(self, store: Store) -> None:
        """Activating a next key retires the active one in the same transaction, dropping its
        private part and keeping it published at least until retired_until."""
        await store.insert_signing_key(signing_key("k1", "active"))
        await store.insert_signing_key(signing_key("k2"))

        await store.activate_signing_key("k2", NOW + 10, retired_until=NOW + 300)

        keys = await keys_by_kid(store)
        assert (keys["k2"].state, keys["k2"].activated_at) == ("active", NOW + 10)
        old = keys["k1"]
        assert (old.state, old.retired_at, old.private_jwk_enc) == ("retired", NOW + 10, None)
        assert old.not_after == NOW + 300
        with pytest.raises(Conflict):
            await store.activate_signing_key("k1", NOW, retired_until=NOW)
        with pytest.raises(NotFound):
            await store.activate_signing_key("nope", NOW, retired_until=NOW)

    async def test_retirement_rules(self, store: Store) -> None:
        """The active key cannot be retired; a next key retires unpublished; immediately ends
        a retired key's publication."""
        await store.insert_signing_key(signing_key("k1", "active"))
        await store.insert_signing_key(signing_key("k2"))
        with pytest.raises(Conflict):
            await store.retire_signing_key("k1", NOW)
        with pytest.raises(NotFound):
            await store.retire_signing_key("nope", NOW)

        await store.retire_signing_key("k2", NOW + 5)
        k2 = (await keys_by_kid(store))["k2"]
        assert (k2.state, k2.not_after, k2.private_jwk_enc) == ("retired", NOW + 5, None)
        assert not k2.is_published(NOW + 5)

        await store.insert_signing_key(signing_key("k3"))
        await store.activate_signing_key("k3", NOW, retired_until=NOW + 600)
        await store.retire_signing_key("k1", NOW + 20, immediately=True)
        k1 = (await keys_by_kid(store))["k1"]
        assert (k1.retired_at, k1.not_after) == (NOW, NOW + 20)

    async def test_key_changes_reach_other_processes(self, store: Store, connect: Connect) -> None:
        """Creating or rotating keys bumps the registry version another process reads."""
        other = await connect()
        before = await version(other)
        await store.insert_signing_key(signing_key("k1", "active"))
        middle = await version(other)
        await store.insert_signing_key(signing_key("k2"))
        await store.activate_signing_key("k2", NOW, retired_until=NOW)
        assert before < middle < await version(other)

    async def test_jwt_token_raises_not_after_only_upwards(self, store: Store) -> None:
        """Recording a JWT stores it by digest and lifts its key's not_after, never lowering it."""
        await store.insert_signing_key(signing_key("k1", "active"))
        late = token(exp=NOW + 900)
        await store.insert_jwt_token(late, "k1", NOW + 1200)
        assert (await keys_by_kid(store))["k1"].not_after == NOW + 1200
        before = await version(store)

        await store.insert_jwt_token(token(exp=NOW + 600), "k1", NOW + 900)

        assert (await keys_by_kid(store))["k1"].not_after == NOW + 1200
        assert await version(store) == before  # nothing changed: no registry bump
        assert await store.find_token(late.token_hash) == late


# Replay caches: a jti accepted once per client (RFC 7523 §3) or per DPoP key (RFC 9449
# §11.1), on every backend and across processes.
ONCE = pytest.mark.parametrize("record", ["record_assertion_jti", "record_dpop_jti"])


@ONCE
class TestReplayCaches:
    async def test_each_jti_is_accepted_once_per_scope(self, store: Store, record: str) -> None:
        """A jti is recorded once; the same jti again is a replay, for another client (or
        key) it is not."""
        once = getattr(store, record)
        assert await once("app-1", "j1", NOW + 60) is True
        assert await once("app-1", "j1", NOW + 60) is False
        assert await once("app-2", "j1", NOW + 60) is True

    async def test_concurrent_replays_admit_exactly_one(
        self, store: Store, connect: Connect, record: str
    ) -> None:
        """Of many processes presenting the same jti at once, exactly one wins."""
        other = await connect()
        results = await asyncio.gather(
            *(getattr(s, record)("app-1", "same", NOW + 60) for s in (store, other) * 5)
        )
        assert sorted(results) == [False] * 9 + [True]

    async def test_purge_forgets_expired_jtis(self, store: Store, record: str) -> None:
        """The purge deletes jtis whose assertions or proofs expired; live ones keep refusing
        replays."""
        once = getattr(store, record)
        await once("app-1", "old", NOW - 1)
        await once("app-1", "live", NOW + 60)

        await store.purge(NOW, token_grace=0, event_retention=60)

        assert await once("app-1", "old", NOW + 60) is True
        assert await once("app-1", "live", NOW + 60) is False


# -- users, sessions, consent, authorization codes, refresh tokens (issue 3) -------------------

REDIRECT = "https://app.example.test/callback"


def user(user_id: str = "u-1", username: str = "alice", **changes: object) -> User:
    base = User(
        user_id=user_id,
        username=username,
        password_hash=f"$argon2id$dummy${user_id}",
        enabled=True,
        created_at=NOW,
        updated_at=NOW,
    )
    return replace(base, **changes)  # type: ignore[arg-type]


def session(user_id: str = "u-1", *, expires_at: int = NOW + 3600) -> Session:
    return Session(secrets.token_bytes(32), user_id, NOW - 60, expires_at)


def grant(
    grant_id: str = "g-1", client_id: str = "app-1", user_id: str = "u-1", **changes: object
) -> Grant:
    base = Grant(
        grant_id=grant_id,
        client_id=client_id,
        user_id=user_id,
        username="alice",
        scope=frozenset({"read", "write"}),
        aud=(API,),
        created_at=NOW - 10,
        auth_time=NOW - 60,
        expires_at=NOW + 30 * 86400,
    )
    return replace(base, **changes)  # type: ignore[arg-type]


def code(g: Grant, **changes: object) -> AuthorizationCode:
    base = AuthorizationCode(
        code_hash=secrets.token_bytes(32),
        grant_id=g.grant_id,
        client_id=g.client_id,
        redirect_uri=REDIRECT,
        code_challenge="E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cQ",
        created_at=NOW - 10,
        expires_at=NOW + 50,
    )
    return replace(base, **changes)  # type: ignore[arg-type]


def grant_token(g: Grant, kind: str = "access_token", **changes: object) -> TokenRecord:
    """A token issued from grant ``g``: an access token, or (kind) a refresh token."""
    fields: dict[str, object] = {
        "exp": NOW + (600 if kind == "access_token" else 14 * 86400),
        "kind": kind,
        "scope": g.scope,
        "aud": g.aud,
        "sub": g.user_id,
        "username": g.username,
        "grant_id": g.grant_id,
    }
    return token(g.client_id, **(fields | changes))  # type: ignore[arg-type]


async def authorized(store: Store, g: Grant) -> tuple[TokenRecord, TokenRecord]:
    """Store grant ``g`` with a code, redeem it and issue an access and a refresh token."""
    c = code(g)
    await store.create_authorization_code(g, c)
    assert (await store.redeem_authorization_code(c.code_hash, NOW)).outcome == "ok"
    access, refresh = grant_token(g), grant_token(g, "refresh_token")
    assert await store.issue_grant_tokens(g.grant_id, [NewToken(access), NewToken(refresh)], NOW)
    return access, refresh


async def revoked_at(store: Store, t: TokenRecord) -> int | None:
    found = await store.find_token(t.token_hash)
    assert found is not None
    return found.revoked_at


async def grant_revoked_at(store: Store, grant_id: str) -> int | None:
    found = await store.get_grant(grant_id)
    assert found is not None
    return found.revoked_at


async def events_since(store: Store, after: int) -> list[tuple[str, dict[str, object]]]:
    return [(e.type, e.payload) for e in await store.events_after(after, 10_000)]


def revoked_hashes(events: list[tuple[str, dict[str, object]]]) -> set[object]:
    return {p["token_sha256"] for t, p in events if t == TOKEN_REVOKED}


class TestCodeFlowClientSettings:
    async def test_redirect_uris_and_refresh_lifetimes_round_trip(self, store: Store) -> None:
        """A client's redirect URIs (in order: matched exactly, RFC 9700 §2.1) and refresh
        token lifetimes are stored, updated and read back; a public client too."""
        c = client(
            auth_method="none",
            grant_types=frozenset({"authorization_code", "refresh_token"}),
            redirect_uris=(REDIRECT, "http://127.0.0.1/cb"),
            refresh_token_ttl=3600,
            refresh_token_max_ttl=86400,
        )
        await store.create_client(c)
        assert await store.get_client("app-1") == c
        changed = replace(
            c, redirect_uris=(REDIRECT,), refresh_token_ttl=60, refresh_token_max_ttl=120
        )
        await store.update_client(changed)
        assert await store.get_client("app-1") == changed
        assert await store.list_clients() == [changed]


class TestUsers:
    async def test_user_round_trip(self, store: Store) -> None:
        """A created user reads back equal by id and by username; users list by username."""
        alice, bob = user("u-1", "alice"), user("u-2", "bob", enabled=False)
        await store.create_user(bob)
        await store.create_user(alice)
        assert await store.get_user("u-1") == alice
        assert await store.get_user_by_name("bob") == bob
        assert await store.list_users() == [alice, bob]
        assert await store.get_user("nobody") is None
        assert await store.get_user_by_name("nobody") is None

    @pytest.mark.parametrize("name", ["alice\x00", "\x00", "a\x00lice"])
    async def test_names_a_browser_may_send_find_nothing(self, store: Store, name: str) -> None:
        """A username or client_id from a login form or an authorization request may hold
        any character, NUL included (%00), which PostgreSQL text cannot: such a lookup finds
        nothing, as on SQLite, instead of failing as "store unavailable" (a 503)."""
        await store.create_user(user())
        await store.create_client(client())
        assert await store.get_user_by_name(name) is None
        assert await store.get_user(name) is None
        assert await store.get_client(name) is None
        assert await store.get_client("app-1" + name) is None

    async def test_taken_id_or_username_is_a_conflict(self, store: Store) -> None:
        """A second user with the same id, or with the same username, is refused."""
        await store.create_user(user())
        with pytest.raises(Conflict):
            await store.create_user(user("u-1", "other"))
        with pytest.raises(Conflict):
            await store.create_user(user("u-2", "alice"))
        assert await store.list_users() == [user()]

    async def test_update_user_renames_and_changes_the_password(self, store: Store) -> None:
        """An update stores the new username and password hash; a name taken by another
        user is a Conflict and an unknown user NotFound."""
        await store.create_user(user())
        await store.create_user(user("u-2", "bob"))
        changed = user(username="alice2", password_hash="$argon2id$new", updated_at=NOW + 5)
        await store.update_user(changed)
        assert await store.get_user("u-1") == changed
        assert await store.get_user_by_name("alice") is None
        await store.update_user(changed)  # its own name is no conflict
        with pytest.raises(Conflict):
            await store.update_user(replace(changed, username="bob"))
        with pytest.raises(NotFound):
            await store.update_user(user("u-3", "carol"))
        assert await store.get_user("u-1") == changed

    async def test_disabling_a_user_revokes_everything_of_theirs(self, store: Store) -> None:
        """Disabling ends the user's sessions and revokes all their grants and live tokens,
        in one change: a token_revoked event per token and one user_sessions_revoked event.
        Other users keep theirs; re-enabling brings nothing back."""
        await store.create_user(user())
        await store.create_user(user("u-2", "bob"))
        s = session()
        await store.create_session(s)
        first, second = grant("g-1"), grant("g-2", client_id="app-2")
        tokens = [*await authorized(store, first), *await authorized(store, second)]
        bobs = await authorized(store, grant("g-3", user_id="u-2"))
        expired = grant_token(first, exp=NOW - 1)
        assert await store.issue_grant_tokens("g-1", [NewToken(expired)], NOW - 100)
        before = await store.latest_event_id()

        assert await store.set_user_enabled("u-1", False, NOW + 1) == 4

        found = await store.get_user("u-1")
        assert found is not None
        assert (found.enabled, found.updated_at) == (False, NOW + 1)
        assert await store.get_session(s.session_hash, NOW) is None
        for t in tokens:
            assert await revoked_at(store, t) == NOW + 1
        assert await revoked_at(store, expired) is None
        assert await grant_revoked_at(store, "g-1") == NOW + 1
        assert await grant_revoked_at(store, "g-2") == NOW + 1
        for t in bobs:
            assert await revoked_at(store, t) is None
        assert await grant_revoked_at(store, "g-3") is None
        events = await events_since(store, before)
        assert [t for t, _ in events] == [TOKEN_REVOKED] * 4 + [USER_SESSIONS_REVOKED]
        assert revoked_hashes(events) == {t.token_hash.hex() for t in tokens}
        assert events[-1][1] == {
            "sub": "u-1",
            "reason": USER_DISABLED,
            "grants_revoked": 2,
            "tokens_revoked": 4,
        }

        latest = await store.latest_event_id()
        assert await store.set_user_enabled("u-1", True, NOW + 2) == 0
        assert await store.latest_event_id() == latest
        assert await revoked_at(store, tokens[0]) == NOW + 1
        with pytest.raises(NotFound):
            await store.set_user_enabled("nobody", False, NOW)

    async def test_deleting_a_user_revokes_then_removes_them(self, store: Store) -> None:
        """Delete revokes as disabling does (reason user_deleted), then removes the user with
        their sessions and consents; the token rows stay, revoked."""
        await store.create_client(client())
        await store.create_user(user())
        s = session()
        await store.create_session(s)
        await store.set_consent("u-1", "app-1", frozenset({"read"}), NOW)
        access, refresh = await authorized(store, grant())

        assert await store.delete_user("u-1", NOW + 1) == 2

        assert await store.get_user("u-1") is None
        assert await store.get_user_by_name("alice") is None
        assert await store.get_session(s.session_hash, NOW) is None
        assert await store.get_consent("u-1", "app-1") is None
        assert await revoked_at(store, access) == NOW + 1
        assert await revoked_at(store, refresh) == NOW + 1
        type_, payload = (await events_since(store, 0))[-1]
        assert (type_, payload["reason"], payload["tokens_revoked"]) == (
            USER_SESSIONS_REVOKED,
            USER_DELETED,
            2,
        )
        with pytest.raises(NotFound):
            await store.delete_user("u-1", NOW + 2)
        await store.create_user(user("u-9", "alice"))  # the name is free again

    async def test_revoke_user_sessions_keeps_the_user(self, store: Store) -> None:
        """revoke_user_sessions ends every session and grant of the user, who stays enabled
        and can sign in again; NotFound for an unknown user."""
        await store.create_user(user())
        sessions = [session(), session()]
        for s in sessions:
            await store.create_session(s)
        _, refresh = await authorized(store, grant())

        assert await store.revoke_user_sessions("u-1", NOW + 1) == 2

        found = await store.get_user("u-1")
        assert found is not None
        assert found.enabled
        for s in sessions:
            assert await store.get_session(s.session_hash, NOW) is None
        assert await grant_revoked_at(store, "g-1") == NOW + 1
        assert await revoked_at(store, refresh) == NOW + 1
        assert (await events_since(store, 0))[-1] == (
            USER_SESSIONS_REVOKED,
            {
                "sub": "u-1",
                "reason": USER_REVOKE_SESSIONS,
                "grants_revoked": 1,
                "tokens_revoked": 2,
            },
        )
        again = session()
        await store.create_session(again)
        assert await store.get_session(again.session_hash, NOW) is not None
        with pytest.raises(NotFound):
            await store.revoke_user_sessions("nobody", NOW)


class TestSessions:
    async def test_live_session_returns_it_with_its_user(self, store: Store) -> None:
        """A session is found by its hash while it lives, with its (enabled) user."""
        await store.create_user(user())
        s = session()
        await store.create_session(s)
        assert await store.get_session(s.session_hash, NOW) == (s, user())
        assert await store.get_session(secrets.token_bytes(32), NOW) is None

    async def test_expired_session_is_not_found(self, store: Store) -> None:
        """A session is over the moment expires_at is reached."""
        await store.create_user(user())
        s = session(expires_at=NOW + 10)
        await store.create_session(s)
        assert await store.get_session(s.session_hash, NOW + 9) is not None
        assert await store.get_session(s.session_hash, NOW + 10) is None

    async def test_no_session_for_a_disabled_or_unknown_user(self, store: Store) -> None:
        """A sign-in that finishes after the user was disabled stores nothing, so
        re-enabling the user brings no session back."""
        await store.create_user(user())
        await store.set_user_enabled("u-1", False, NOW)
        s = session()
        assert await store.create_session(s) is False
        assert await store.get_session(s.session_hash, NOW) is None
        await store.set_user_enabled("u-1", True, NOW + 1)
        assert await store.get_session(s.session_hash, NOW) is None
        assert await store.create_session(session(user_id="nobody")) is False

    async def test_session_of_a_disabled_user_is_not_found(self, store: Store) -> None:
        """Only an enabled user's session counts."""
        await store.create_user(user())
        s = session()
        assert await store.create_session(s) is True
        await store.set_user_enabled("u-1", False, NOW)
        assert await store.get_session(s.session_hash, NOW) is None

    async def test_disable_racing_sign_ins_leaves_no_session(
        self, store: Store, connect: Connect
    ) -> None:
        """Sign-ins and a disable at once, from separate processes: whatever the order,
        no session of the disabled user remains."""
        await store.create_user(user())
        others = [await connect() for _ in range(3)]
        made = [session() for _ in range(12)]
        await asyncio.gather(
            store.set_user_enabled("u-1", False, NOW),
            *(others[i % 3].create_session(s) for i, s in enumerate(made)),
        )
        await store.set_user_enabled("u-1", True, NOW + 1)
        for s in made:
            assert await store.get_session(s.session_hash, NOW) is None

    async def test_deleted_session_is_gone(self, store: Store) -> None:
        """Logout deletes one session; the user's others stay; deleting twice is harmless."""
        await store.create_user(user())
        gone, kept = session(), session()
        for s in (gone, kept):
            await store.create_session(s)
        await store.delete_session(gone.session_hash)
        await store.delete_session(gone.session_hash)
        assert await store.get_session(gone.session_hash, NOW) is None
        assert await store.get_session(kept.session_hash, NOW) is not None


class TestConsent:
    async def test_consent_is_set_replaced_and_read(self, store: Store) -> None:
        """Consent is remembered per user and client; setting it again replaces the scopes;
        an empty consent is not the same as none."""
        await store.create_user(user())
        await store.create_client(client())
        await store.create_client(client("app-2"))
        assert await store.get_consent("u-1", "app-1") is None
        await store.set_consent("u-1", "app-1", frozenset({"read", "write"}), NOW)
        await store.set_consent("u-1", "app-2", frozenset(), NOW)
        assert await store.get_consent("u-1", "app-1") == frozenset({"read", "write"})
        await store.set_consent("u-1", "app-1", frozenset({"read"}), NOW + 1)
        assert await store.get_consent("u-1", "app-1") == frozenset({"read"})
        assert await store.get_consent("u-1", "app-2") == frozenset()
        await store.delete_client("app-2", NOW + 2)
        assert await store.get_consent("u-1", "app-2") is None


class TestAuthorizationCodes:
    async def test_code_is_redeemed_once(self, store: Store) -> None:
        """A live unused code redeems to itself and its grant, once (RFC 6749 §4.1.2)."""
        g = grant()
        c = code(g)
        await store.create_authorization_code(g, c)
        assert await store.get_grant("g-1") == g
        assert await store.get_grant("nope") is None

        result = await store.redeem_authorization_code(c.code_hash, NOW)

        assert (result.outcome, result.code, result.grant) == ("ok", c, g)
        assert await store.latest_event_id() == 0

    async def test_replayed_code_revokes_its_grant_and_tokens(self, store: Store) -> None:
        """A code used a second time revokes its grant and every token issued from it, with
        a token_revoked event per token and one grant_revoked event (RFC 6749 §4.1.2,
        RFC 9700 §4.14.2); replaying it again changes nothing more."""
        g = grant()
        c = code(g)
        await store.create_authorization_code(g, c)
        assert (await store.redeem_authorization_code(c.code_hash, NOW)).outcome == "ok"
        tokens = [grant_token(g), grant_token(g, "refresh_token")]
        assert await store.issue_grant_tokens("g-1", [NewToken(t) for t in tokens], NOW)

        result = await store.redeem_authorization_code(c.code_hash, NOW + 5)

        assert result.outcome == "replayed"
        assert result.code is not None
        assert result.code.used_at == NOW
        for t in tokens:
            assert await revoked_at(store, t) == NOW + 5
        assert await grant_revoked_at(store, "g-1") == NOW + 5
        events = await events_since(store, 0)
        assert [t for t, _ in events] == [TOKEN_REVOKED, TOKEN_REVOKED, GRANT_REVOKED]
        assert revoked_hashes(events) == {t.token_hash.hex() for t in tokens}
        assert events[-1][1] == {
            "grant_id": "g-1",
            "client_id": "app-1",
            "sub": "u-1",
            "reason": CODE_REPLAYED,
            "tokens_revoked": 2,
        }
        assert (await store.redeem_authorization_code(c.code_hash, NOW + 6)).outcome == "replayed"
        assert len(await events_since(store, 0)) == 3
        assert not await store.issue_grant_tokens("g-1", [NewToken(grant_token(g))], NOW + 7)

    async def test_expired_code_is_refused_and_kept_unused(self, store: Store) -> None:
        """A code is expired the moment expires_at is reached; that leaves it unused."""
        g = grant()
        c = code(g, expires_at=NOW + 50)
        await store.create_authorization_code(g, c)
        result = await store.redeem_authorization_code(c.code_hash, NOW + 50)
        assert (result.outcome, result.grant) == ("expired", g)
        assert await grant_revoked_at(store, "g-1") is None
        assert (await store.redeem_authorization_code(c.code_hash, NOW + 49)).outcome == "ok"

    async def test_unknown_code(self, store: Store) -> None:
        """A code that was never issued is unknown, and revokes nothing."""
        result = await store.redeem_authorization_code(secrets.token_bytes(32), NOW)
        assert (result.outcome, result.code, result.grant) == ("unknown", None, None)

    async def test_code_of_a_revoked_grant(self, store: Store) -> None:
        """A code whose grant was revoked (its user or client disabled, ...) is refused."""
        g = grant()
        c = code(g)
        await store.create_authorization_code(g, c)
        assert await store.revoke_grant("g-1", NOW, USER_REVOKE_SESSIONS) == 0
        result = await store.redeem_authorization_code(c.code_hash, NOW + 1)
        assert result.outcome == "revoked"
        assert result.grant is not None
        assert result.grant.revoked_at == NOW

    async def test_code_needs_the_live_session_it_was_allowed_in(self, store: Store) -> None:
        """Given the session the user allowed in, the grant and its code are stored only
        while that session lives and its user is enabled; otherwise nothing is stored. A
        browser request in flight while the user is disabled, signed out everywhere or signs
        out cannot leave behind a code, and so a grant, that the cascade never saw."""
        await store.create_user(user())
        await store.create_user(user("u-2", "bob"))
        live, ended, expired, bobs = (
            session(),
            session(),
            session(expires_at=NOW - 10),
            session("u-2"),
        )
        for s in (live, ended, expired, bobs):
            await store.create_session(s)
        await store.delete_session(ended.session_hash)
        g = grant("g-ok")
        assert await store.create_authorization_code(g, code(g), session_hash=live.session_hash)
        assert await store.get_grant("g-ok") == g

        async def refused(grant_id: str, s: Session) -> None:
            g = grant(grant_id)
            c = code(g)
            assert not await store.create_authorization_code(g, c, session_hash=s.session_hash)
            assert await store.get_grant(grant_id) is None
            assert (await store.redeem_authorization_code(c.code_hash, NOW)).outcome == "unknown"

        await refused("g-ended", ended)
        await refused("g-expired", expired)
        await refused("g-other-users-session", bobs)
        await store.revoke_user_sessions("u-1", NOW)
        await refused("g-after-revoke-sessions", live)
        again = session()
        await store.create_session(again)
        await store.set_user_enabled("u-1", False, NOW)
        late = session()  # a sign-in that was checking the password during the disable
        await store.create_session(late)
        await refused("g-after-disable", late)

    async def test_code_racing_a_user_cascade_leaves_no_live_grant(
        self, store: Store, connect: Connect
    ) -> None:
        """A code stored while another process revokes the user's sessions is either
        refused or its grant is revoked by the cascade: none outlives the revocation."""
        other = await connect()
        await store.create_user(user())
        for i in range(5):
            s = session()
            await store.create_session(s)
            g = grant(f"g-{i}")
            stored, _ = await asyncio.gather(
                store.create_authorization_code(g, code(g), session_hash=s.session_hash),
                other.revoke_user_sessions("u-1", NOW),
            )
            found = await store.get_grant(g.grant_id)
            assert (found is not None) == stored
            assert found is None or found.revoked_at == NOW

    async def test_concurrent_redemptions_admit_exactly_one(
        self, store: Store, connect: Connect
    ) -> None:
        """Of two processes redeeming one code at once, one gets it; the other is a replay,
        which revokes the grant (RFC 6749 §4.1.2)."""
        other = await connect()
        g = grant()
        c = code(g)
        await store.create_authorization_code(g, c)
        results = await asyncio.gather(
            store.redeem_authorization_code(c.code_hash, NOW),
            other.redeem_authorization_code(c.code_hash, NOW),
        )
        assert sorted(r.outcome for r in results) == ["ok", "replayed"]
        assert await grant_revoked_at(store, "g-1") == NOW
        assert [t for t, _ in await events_since(store, 0)] == [GRANT_REVOKED]


class TestGrantTokens:
    async def test_tokens_are_stored_while_the_grant_lives(self, store: Store) -> None:
        """Tokens of a live grant are stored together; a JWT lifts its key's not_after."""
        await store.insert_signing_key(signing_key("k1", "active"))
        g = grant()
        await store.create_authorization_code(g, code(g))
        access, refresh = grant_token(g), grant_token(g, "refresh_token")
        tokens = [NewToken(access, kid="k1", not_after=NOW + 900), NewToken(refresh)]
        assert await store.issue_grant_tokens("g-1", tokens, NOW)
        assert await store.find_token(access.token_hash) == access
        assert await store.find_token(refresh.token_hash) == refresh
        assert (await keys_by_kid(store))["k1"].not_after == NOW + 900

    async def test_revoked_expired_or_unknown_grant_gets_no_tokens(self, store: Store) -> None:
        """issue_grant_tokens stores nothing for a revoked grant, one past its absolute
        expiry, or an unknown one."""
        revoked, ended = grant("g-1"), grant("g-2", expires_at=NOW + 100)
        for g in (revoked, ended):
            await store.create_authorization_code(g, code(g))
        await store.revoke_grant("g-1", NOW, REFRESH_TOKEN_REVOKED)
        attempts = [
            ("g-1", grant_token(revoked), NOW),
            ("g-2", grant_token(ended), NOW + 100),
            ("g-9", grant_token(grant("g-9")), NOW),
        ]
        for grant_id, t, now in attempts:
            assert not await store.issue_grant_tokens(grant_id, [NewToken(t)], now)
            assert await store.find_token(t.token_hash) is None
        assert await store.issue_grant_tokens("g-2", [NewToken(grant_token(ended))], NOW + 99)

    async def test_issuance_racing_a_revocation_leaves_no_live_token(
        self, store: Store, connect: Connect
    ) -> None:
        """Tokens stored while another process revokes the grant are either refused or
        revoked by the cascade: none outlives the revocation."""
        other = await connect()
        for i in range(5):
            g = grant(f"g-{i}")
            await store.create_authorization_code(g, code(g))
            tokens = [grant_token(g), grant_token(g, "refresh_token")]
            issued, _ = await asyncio.gather(
                store.issue_grant_tokens(g.grant_id, [NewToken(t) for t in tokens], NOW),
                other.revoke_grant(g.grant_id, NOW, REFRESH_TOKEN_REVOKED),
            )
            for t in tokens:
                found = await store.find_token(t.token_hash)
                assert (found is not None) == issued
                assert found is None or found.revoked_at == NOW


class TestRefreshTokens:
    async def test_rotation_replaces_the_token(self, store: Store) -> None:
        """A live refresh token of a live grant is exchanged for new tokens, and is itself
        spent (inactive) from then on (RFC 9700 §4.14.2)."""
        g = grant()
        _, refresh = await authorized(store, g)
        access2, refresh2 = grant_token(g), grant_token(g, "refresh_token")

        rotation = await store.rotate_refresh_token(
            refresh.token_hash, [NewToken(access2), NewToken(refresh2)], NOW + 10
        )

        assert (rotation.outcome, rotation.tokens_revoked) == ("ok", 0)
        assert await revoked_at(store, refresh) == NOW + 10
        assert await store.find_token(access2.token_hash) == access2
        assert await store.find_token(refresh2.token_hash) == refresh2
        assert await store.latest_event_id() == 0

    async def test_replayed_token_revokes_the_grant(self, store: Store) -> None:
        """Presenting a rotated refresh token again revokes its grant and all its live
        tokens, the new ones included (RFC 9700 §4.14.2), and stores nothing."""
        g = grant()
        access, refresh = await authorized(store, g)
        access2, refresh2 = grant_token(g), grant_token(g, "refresh_token")
        await store.rotate_refresh_token(
            refresh.token_hash, [NewToken(access2), NewToken(refresh2)], NOW + 10
        )
        attacker = grant_token(g, "refresh_token")

        rotation = await store.rotate_refresh_token(
            refresh.token_hash, [NewToken(attacker)], NOW + 20
        )

        assert (rotation.outcome, rotation.tokens_revoked) == ("replayed", 3)
        assert await store.find_token(attacker.token_hash) is None
        for t in (access, access2, refresh2):
            assert await revoked_at(store, t) == NOW + 20
        assert await grant_revoked_at(store, "g-1") == NOW + 20
        events = await events_since(store, 0)
        assert revoked_hashes(events) == {t.token_hash.hex() for t in (access, access2, refresh2)}
        assert events[-1] == (
            GRANT_REVOKED,
            {
                "grant_id": "g-1",
                "client_id": "app-1",
                "sub": "u-1",
                "reason": REFRESH_TOKEN_REPLAYED,
                "tokens_revoked": 3,
            },
        )
        again = await store.rotate_refresh_token(refresh2.token_hash, [], NOW + 30)
        assert again.outcome == "revoked"

    async def test_revoked_expired_and_unknown_tokens_are_refused(self, store: Store) -> None:
        """A revoked token, an expired one (at exp), one whose grant reached its absolute
        expiry, an access token and an unknown hash are not rotated, and store nothing."""
        revoked_grant = grant("g-1")
        _, revoked = await authorized(store, revoked_grant)
        await store.revoke_grant("g-1", NOW, USER_REVOKE_SESSIONS)
        g2 = grant("g-2", expires_at=NOW + 1000)
        await store.create_authorization_code(g2, code(g2))
        access = grant_token(g2)
        expiring = grant_token(g2, "refresh_token", exp=NOW + 500)
        outliving = grant_token(g2, "refresh_token", exp=NOW + 5000)
        assert await store.issue_grant_tokens(
            "g-2", [NewToken(t) for t in (access, expiring, outliving)], NOW
        )
        cases = [
            (revoked.token_hash, NOW + 1, "revoked"),
            (expiring.token_hash, NOW + 500, "expired"),
            (outliving.token_hash, NOW + 1000, "revoked"),
            (access.token_hash, NOW, "unknown"),
            (secrets.token_bytes(32), NOW, "unknown"),
        ]
        for hash_, now, outcome in cases:
            new = grant_token(g2, "refresh_token")
            rotation = await store.rotate_refresh_token(hash_, [NewToken(new)], now)
            assert (rotation.outcome, rotation.tokens_revoked) == (outcome, 0), outcome
            assert await store.find_token(new.token_hash) is None
        assert await grant_revoked_at(store, "g-2") is None
        assert await revoked_at(store, expiring) is None

    async def test_concurrent_rotations_admit_exactly_one(
        self, store: Store, connect: Connect
    ) -> None:
        """Two processes rotating one refresh token at once: exactly one rotates it, the
        other presents a spent token, a replay that revokes the grant (RFC 9700 §4.14.2)."""
        other = await connect()
        g = grant()
        _, refresh = await authorized(store, g)
        news = [grant_token(g, "refresh_token"), grant_token(g, "refresh_token")]

        results = await asyncio.gather(
            store.rotate_refresh_token(refresh.token_hash, [NewToken(news[0])], NOW + 1),
            other.rotate_refresh_token(refresh.token_hash, [NewToken(news[1])], NOW + 1),
        )

        outcomes = [r.outcome for r in results]
        assert sorted(outcomes) == ["ok", "replayed"]
        winner = news[outcomes.index("ok")]
        loser = news[outcomes.index("replayed")]
        assert await revoked_at(store, winner) == NOW + 1  # revoked by the replay
        assert await store.find_token(loser.token_hash) is None
        assert await grant_revoked_at(store, "g-1") == NOW + 1
        assert [t for t, _ in await events_since(store, 0)].count(GRANT_REVOKED) == 1


class TestGrantCascades:
    async def test_revoking_a_refresh_token_revokes_its_grant(self, store: Store) -> None:
        """Revoking a refresh token revokes its grant and the access tokens issued from it
        (RFC 7009 §2.1); another client cannot revoke it."""
        await store.create_client(client())
        g = grant()
        access, refresh = await authorized(store, g)
        assert not await store.revoke_token(refresh.token_hash, "app-2", NOW + 1)
        assert await revoked_at(store, refresh) is None

        assert await store.revoke_token(refresh.token_hash, "app-1", NOW + 1)

        assert await revoked_at(store, access) == NOW + 1
        assert await revoked_at(store, refresh) == NOW + 1
        assert await grant_revoked_at(store, "g-1") == NOW + 1
        events = await events_since(store, 0)
        assert [t for t, _ in events] == [TOKEN_REVOKED, TOKEN_REVOKED, GRANT_REVOKED]
        assert events[-1][1]["reason"] == REFRESH_TOKEN_REVOKED
        assert await store.revoke_token(refresh.token_hash, "app-1", NOW + 2)
        assert len(await events_since(store, 0)) == 3

    async def test_revoking_an_access_token_leaves_its_grant(self, store: Store) -> None:
        """Revoking an access token of a grant revokes only that token."""
        g = grant()
        access, refresh = await authorized(store, g)
        assert await store.revoke_token(access.token_hash, "app-1", NOW + 1)
        assert await revoked_at(store, access) == NOW + 1
        assert await revoked_at(store, refresh) is None
        assert await grant_revoked_at(store, "g-1") is None
        assert [t for t, _ in await events_since(store, 0)] == [TOKEN_REVOKED]

    async def test_revoke_grant_once(self, store: Store) -> None:
        """revoke_grant revokes the live tokens with events, once; unknown grants are a no-op."""
        g = grant()
        tokens = await authorized(store, g)
        assert await store.revoke_grant("g-1", NOW + 1, USER_REVOKE_SESSIONS) == 2
        assert await store.revoke_grant("g-1", NOW + 2, USER_REVOKE_SESSIONS) == 0
        assert await store.revoke_grant("nope", NOW + 2, USER_REVOKE_SESSIONS) == 0
        for t in tokens:
            assert await revoked_at(store, t) == NOW + 1
        assert [t for t, _ in await events_since(store, 0)] == [TOKEN_REVOKED] * 2 + [GRANT_REVOKED]

    async def test_disabling_or_deleting_a_client_revokes_its_grants(self, store: Store) -> None:
        """Disabling a client revokes its grants with its tokens, so neither an outstanding
        code nor a refresh token of them is usable again; deleting does the same."""
        await store.create_client(client())
        await store.create_client(client("app-2"))
        g = grant()
        _, refresh = await authorized(store, g)
        pending = grant("g-2")
        c = code(pending)
        await store.create_authorization_code(pending, c)
        kept = grant("g-3", client_id="app-2")
        await store.create_authorization_code(kept, code(kept))

        assert await store.set_client_enabled("app-1", False, NOW + 1) == 2

        assert await grant_revoked_at(store, "g-1") == NOW + 1
        assert await grant_revoked_at(store, "g-2") == NOW + 1
        assert await grant_revoked_at(store, "g-3") is None
        assert (await store.redeem_authorization_code(c.code_hash, NOW + 2)).outcome == "revoked"
        rotation = await store.rotate_refresh_token(refresh.token_hash, [], NOW + 2)
        assert rotation.outcome == "revoked"
        assert not await store.issue_grant_tokens("g-1", [NewToken(grant_token(g))], NOW + 2)

        assert await store.delete_client("app-2", NOW + 3) == 0
        assert await grant_revoked_at(store, "g-3") == NOW + 3


class TestPurgeUsersSide:
    async def test_purge_removes_expired_sessions_codes_and_ended_grants(
        self, store: Store
    ) -> None:
        """The purge deletes sessions that expired, codes expired past the grace, and
        grants past their absolute expiry (plus grace) once no token refers to them."""
        await store.create_user(user())
        old_session, live_session = session(expires_at=NOW - 1), session()
        for s in (old_session, live_session):
            await store.create_session(s)
        ended = grant("g-old", expires_at=NOW - 100)
        old_code = code(ended, expires_at=NOW - 100)
        await store.create_authorization_code(ended, old_code)
        recent = grant("g-recent", expires_at=NOW - 10)
        recent_code = code(recent, expires_at=NOW - 10)
        await store.create_authorization_code(recent, recent_code)
        referred = grant("g-referred", expires_at=NOW - 100)
        await store.create_authorization_code(referred, code(referred))
        old_token = grant_token(referred, exp=NOW - 5)
        assert await store.issue_grant_tokens("g-referred", [NewToken(old_token)], NOW - 200)
        purged_token = grant_token(ended, exp=NOW - 200)
        assert await store.issue_grant_tokens("g-old", [NewToken(purged_token)], NOW - 300)
        live = grant("g-live")
        await store.create_authorization_code(live, code(live))
        assert await store.get_session(old_session.session_hash, NOW - 10) is not None

        await store.purge(NOW, token_grace=50, event_retention=60, batch=1)

        assert await store.get_session(old_session.session_hash, NOW - 10) is None
        assert await store.get_session(live_session.session_hash, NOW) is not None
        assert (await store.redeem_authorization_code(old_code.code_hash, NOW)).outcome == (
            "unknown"
        )
        assert (await store.redeem_authorization_code(recent_code.code_hash, NOW)).outcome == (
            "expired"
        )
        assert await store.find_token(purged_token.token_hash) is None
        assert await store.get_grant("g-old") is None
        assert await store.get_grant("g-recent") is not None  # within the grace
        assert await store.get_grant("g-referred") is not None  # a token still names it
        assert await store.get_grant("g-live") is not None
