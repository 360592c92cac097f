"""admin.py for users and for the issue-3 client settings, against a real SQLite store.

Password hashing is argon2id and costs ~150 ms a user: these tests create few of them.
"""

from __future__ import annotations

import re
import secrets
from typing import Any

import pytest

from keystile import admin
from keystile.clock import FixedClock
from keystile.core.models import AuthorizationCode, Grant, TokenRecord, User
from keystile.core.passwords import verify_password
from keystile.core.tokens import token_hash
from keystile.errors import ConfigurationError
from keystile.store.base import USER_SESSIONS_REVOKED, Conflict, NewToken, NotFound
from keystile.store.sqlite import SQLiteStore

API = "https://api.example.test"
PASSWORD = "correct horse battery staple"
OTHER_PASSWORD = "another long passphrase"
WEB = "https://app.example.test/callback"


async def give_grant(store: SQLiteStore, user: User, now: int, client_id: str = "web") -> int:
    """Store a live grant of ``user`` with an access and a refresh token; tokens stored."""
    grant = Grant(
        grant_id="grt_" + secrets.token_urlsafe(8),
        client_id=client_id,
        user_id=user.user_id,
        username=user.username,
        scope=frozenset({"read"}),
        aud=(API,),
        created_at=now,
        auth_time=now,
        expires_at=now + 86400,
    )
    code = AuthorizationCode(
        code_hash=token_hash(secrets.token_urlsafe(16)),
        grant_id=grant.grant_id,
        client_id=client_id,
        redirect_uri=WEB,
        code_challenge="x" * 43,
        created_at=now,
        expires_at=now + 60,
    )
    await store.create_authorization_code(grant, code)
    tokens = [
        NewToken(
            TokenRecord(
                token_hash=token_hash(secrets.token_urlsafe(16)),
                kind=kind,
                client_id=client_id,
                scope=grant.scope,
                aud=grant.aud,
                iat=now,
                nbf=now,
                exp=now + 3600,
                jti=secrets.token_urlsafe(8),
                sub=user.user_id,
                username=user.username,
                grant_id=grant.grant_id,
            )
        )
        for kind in ("access_token", "refresh_token")
    ]
    assert await store.issue_grant_tokens(grant.grant_id, tokens, now)
    return len(tokens)


@pytest.fixture
async def alice(store: SQLiteStore, clock: FixedClock) -> User:
    return await admin.create_user(store, clock, username="Alice@Example.test", password=PASSWORD)


class TestCreateUser:
    async def test_create(self, store: SQLiteStore, clock: FixedClock, alice: User) -> None:
        """A new user: an opaque usr_ id, the name lower-cased, an argon2id hash, enabled."""
        assert alice.user_id.startswith("usr_")
        assert len(alice.user_id) >= 4 + 22
        assert alice.username == "alice@example.test"
        assert alice.password_hash.startswith("$argon2id$")
        assert verify_password(alice.password_hash, PASSWORD)
        assert alice.enabled is True
        assert alice.created_at == alice.updated_at == clock.now()
        assert await store.get_user(alice.user_id) == alice
        assert await store.list_users() == [alice]

    async def test_view_has_no_hash(self, alice: User) -> None:
        """The CLI's view of a user holds everything but the password hash."""
        view = admin.user_view(alice)
        assert view == {
            "user_id": alice.user_id,
            "username": "alice@example.test",
            "enabled": True,
            "roles": [],
            "name": None,
            "preferred_username": None,
            "email": None,
            "email_verified": False,
            "created_at": alice.created_at,
            "updated_at": alice.updated_at,
        }
        assert "argon2" not in repr(view)
        assert "argon2" not in repr(alice)

    async def test_duplicate_username(
        self, store: SQLiteStore, clock: FixedClock, alice: User
    ) -> None:
        """A taken username, in any case, is a Conflict and leaves the first user as it was."""
        with pytest.raises(Conflict, match=re.escape("user 'alice@example.test' exists already")):
            await admin.create_user(
                store, clock, username="ALICE@example.test", password=OTHER_PASSWORD
            )
        assert await store.list_users() == [alice]

    @pytest.mark.parametrize(
        "username",
        ["", "a b", "-alice", ".alice", "al/ice", "al:ice", "caf\u00e9", "x" * 129, "a\n"],
    )
    async def test_bad_username(self, store: SQLiteStore, clock: FixedClock, username: str) -> None:
        """Usernames are 1-128 of letters, digits and . _ @ + -, starting alphanumeric."""
        with pytest.raises(ConfigurationError, match="username must be 1-128 characters"):
            await admin.create_user(store, clock, username=username, password=PASSWORD)
        assert await store.list_users() == []

    async def test_username_like_a_user_id(self, store: SQLiteStore, clock: FixedClock) -> None:
        """A username may not look like a user id (usr_...), so lookups are unambiguous."""
        with pytest.raises(ConfigurationError, match="may not start with 'usr_'"):
            await admin.create_user(store, clock, username="USR_x", password=PASSWORD)

    def test_username_edges(self) -> None:
        """The longest username and every allowed character are accepted."""
        assert admin.check_username("a" * 128) == "a" * 128
        assert admin.check_username("A.b_c@d+e-f9") == "a.b_c@d+e-f9"

    @pytest.mark.parametrize(
        ("password", "message"),
        [("short", "at least 8 characters"), ("x" * 1025, "at most 1024 characters")],
    )
    async def test_password_policy(
        self, store: SQLiteStore, clock: FixedClock, password: str, message: str
    ) -> None:
        """A password outside the policy is refused with the reason, never the password."""
        with pytest.raises(ConfigurationError, match=message) as caught:
            await admin.create_user(store, clock, username="bob", password=password)
        assert password not in str(caught.value)
        assert await store.list_users() == []


class TestLookup:
    async def test_by_name_or_id(self, store: SQLiteStore, alice: User) -> None:
        """A user is found by id or by username in any case."""
        for ref in (alice.user_id, "alice@example.test", "ALICE@EXAMPLE.TEST"):
            assert await admin.get_user(store, ref) == alice

    @pytest.mark.parametrize("ref", ["bob", "usr_nope", ""])
    async def test_unknown(self, store: SQLiteStore, alice: User, ref: str) -> None:
        with pytest.raises(NotFound, match=f"no user {ref!r}"):
            await admin.get_user(store, ref)

    async def test_id_is_case_sensitive(self, store: SQLiteStore, alice: User) -> None:
        """An id is matched exactly: a user id is not a username."""
        if alice.user_id != alice.user_id.upper():
            with pytest.raises(NotFound):
                await admin.get_user(store, "usr_" + alice.user_id[4:].swapcase())


class TestChanges:
    async def test_set_password(self, store: SQLiteStore, clock: FixedClock, alice: User) -> None:
        """passwd stores a new hash: the new password verifies, the old one no longer does."""
        clock.advance(10)
        updated = await admin.set_password(store, clock, alice.username, OTHER_PASSWORD)
        stored = await store.get_user(alice.user_id)
        assert stored == updated
        assert stored.password_hash != alice.password_hash
        assert verify_password(stored.password_hash, OTHER_PASSWORD)
        assert not verify_password(stored.password_hash, PASSWORD)
        assert stored.updated_at == alice.updated_at + 10

    async def test_set_password_policy(
        self, store: SQLiteStore, clock: FixedClock, alice: User
    ) -> None:
        with pytest.raises(ConfigurationError, match="at least 8"):
            await admin.set_password(store, clock, alice.user_id, "short")
        assert await store.get_user(alice.user_id) == alice

    async def test_disable_revokes_and_enable(
        self, store: SQLiteStore, clock: FixedClock, alice: User
    ) -> None:
        """Disabling revokes every token of the user's grants and says how many; enabling
        brings the user back without reviving them."""
        stored = await give_grant(store, alice, clock.now())
        user, revoked = await admin.set_user_enabled(store, clock, alice.username, False)
        assert (user.enabled, revoked) == (False, stored)
        assert (await store.get_user(alice.user_id)).enabled is False  # type: ignore[union-attr]
        events = await store.events_after(0, 100)
        summary = [e for e in events if e.type == USER_SESSIONS_REVOKED]
        assert [e.payload["tokens_revoked"] for e in summary] == [stored]

        user, revoked = await admin.set_user_enabled(store, clock, alice.user_id, True)
        assert (user.enabled, revoked) == (True, 0)
        assert (await store.get_user(alice.user_id)).enabled is True  # type: ignore[union-attr]

    async def test_revoke_sessions(
        self, store: SQLiteStore, clock: FixedClock, alice: User
    ) -> None:
        """revoke_user_sessions revokes the tokens and leaves the user enabled."""
        stored = await give_grant(store, alice, clock.now())
        user, revoked = await admin.revoke_user_sessions(store, clock, alice.username)
        assert (user.user_id, revoked) == (alice.user_id, stored)
        assert (await store.get_user(alice.user_id)).enabled is True  # type: ignore[union-attr]
        assert (await admin.revoke_user_sessions(store, clock, alice.user_id))[1] == 0

    async def test_delete(self, store: SQLiteStore, clock: FixedClock, alice: User) -> None:
        stored = await give_grant(store, alice, clock.now())
        user, revoked = await admin.delete_user(store, clock, "ALICE@example.test")
        assert (user.user_id, revoked) == (alice.user_id, stored)
        assert await store.get_user(alice.user_id) is None
        assert await store.list_users() == []
        with pytest.raises(NotFound):
            await admin.delete_user(store, clock, alice.user_id)

    @pytest.mark.parametrize(
        "call",
        [
            lambda s, c: admin.set_password(s, c, "bob", PASSWORD),
            lambda s, c: admin.set_user_enabled(s, c, "bob", False),
            lambda s, c: admin.set_user_enabled(s, c, "bob", True),
            lambda s, c: admin.revoke_user_sessions(s, c, "bob"),
            lambda s, c: admin.delete_user(s, c, "bob"),
        ],
    )
    async def test_unknown_user(self, store: SQLiteStore, clock: FixedClock, call: Any) -> None:
        with pytest.raises(NotFound, match="no user 'bob'"):
            await call(store, clock)


class TestClientSettings:
    async def test_public_client(self, store: SQLiteStore, clock: FixedClock) -> None:
        """A public client defaults to the authorization code and refresh token grants."""
        client, _ = await admin.create_client(
            store, clock, client_id="spa", auth_method="none", redirect_uris=[WEB, WEB]
        )
        assert client.is_public
        assert client.grant_types == {"authorization_code", "refresh_token"}
        assert client.redirect_uris == (WEB,)
        assert await store.get_client("spa") == client
        view = admin.client_view(client)
        assert view["token_endpoint_auth_method"] == "none"
        assert view["redirect_uris"] == [WEB]
        assert (view["refresh_token_ttl"], view["refresh_token_max_ttl"]) == (
            14 * 86400,
            30 * 86400,
        )

    async def test_default_grants(self, store: SQLiteStore, clock: FixedClock) -> None:
        """Without redirect URIs a confidential client gets client_credentials, as before;
        with them, the authorization code and refresh token grants."""
        plain, _ = await admin.create_client(store, clock, client_id="svc")
        assert plain.grant_types == {"client_credentials"}
        web, _ = await admin.create_client(store, clock, client_id="web", redirect_uris=[WEB])
        assert web.grant_types == {"authorization_code", "refresh_token"}
        assert not web.is_public

    @pytest.mark.parametrize(
        "uri",
        [
            "https://app.example.test/cb?x=1",
            "http://127.0.0.1:8123/cb",
            "http://[::1]/cb",
            "http://localhost:9000/",
            "com.example.app:/oauth2redirect",
        ],
    )
    async def test_good_redirect_uris(
        self, store: SQLiteStore, clock: FixedClock, uri: str
    ) -> None:
        client, _ = await admin.create_client(store, clock, client_id="c", redirect_uris=[uri])
        assert client.redirect_uris == (uri,)

    @pytest.mark.parametrize(
        ("uri", "reason"),
        [
            ("https://app.example.test/cb#frag", "fragment"),
            ("https://app.example.test/cb#", "fragment"),
            ("http://app.example.test/cb", "loopback"),
            ("http://127.0.0.2.example.test/cb", "loopback"),
            ("/callback", "absolute"),
            ("app.example.test/cb", "absolute"),
            ("https:///cb", "host"),
            ("https://app.example.test/a b", "whitespace"),
            ("https://app.example.test/\u00e9", "non-ASCII"),
            ("https://user@app.example.test/cb", "user information"),
            ("javascript:alert(1)", "private-use"),
            ("myapp:/cb", "private-use"),
            ("com.example.app://host/cb", "private-use"),
            ("https://app.example.test:99999/cb", "not a valid URI"),
        ],
    )
    async def test_bad_redirect_uris(
        self, store: SQLiteStore, clock: FixedClock, uri: str, reason: str
    ) -> None:
        with pytest.raises(ConfigurationError, match=f"redirect URI .*{reason}"):
            await admin.create_client(store, clock, client_id="c", redirect_uris=[uri])
        assert await store.list_clients() == []

    @pytest.mark.parametrize(
        ("kwargs", "message"),
        [
            (
                {"auth_method": "none", "grant_types": ["client_credentials"]},
                "public client .* cannot use the client_credentials grant",
            ),
            ({"grant_types": ["authorization_code"]}, "needs at least one redirect URI"),
            (
                {"grant_types": ["refresh_token", "client_credentials"]},
                "refresh_token grant needs the authorization_code grant",
            ),
            ({"redirect_uris": [WEB], "refresh_token_ttl": 59}, "refresh-token lifetime"),
            (
                {"redirect_uris": [WEB], "refresh_token_ttl": 86400 * 366},
                "refresh-token lifetime",
            ),
            (
                {"redirect_uris": [WEB], "refresh_token_ttl": 7200, "refresh_token_max_ttl": 3600},
                "maximum lifetime must be 7200",
            ),
            (
                {"redirect_uris": [WEB], "refresh_token_max_ttl": 86400 * 366},
                "maximum lifetime",
            ),
        ],
    )
    async def test_inconsistent(
        self, store: SQLiteStore, clock: FixedClock, kwargs: dict[str, Any], message: str
    ) -> None:
        with pytest.raises(ConfigurationError, match=message):
            await admin.create_client(store, clock, client_id="c", **kwargs)
        assert await store.list_clients() == []

    async def test_refresh_ttls(self, store: SQLiteStore, clock: FixedClock) -> None:
        client, _ = await admin.create_client(
            store,
            clock,
            client_id="c",
            redirect_uris=[WEB],
            refresh_token_ttl=60,
            refresh_token_max_ttl=86400 * 365,
        )
        assert (client.refresh_token_ttl, client.refresh_token_max_ttl) == (60, 86400 * 365)
        updated = await admin.update_client(store, clock, "c", refresh_token_max_ttl=60)
        assert (updated.refresh_token_ttl, updated.refresh_token_max_ttl) == (60, 60)
        with pytest.raises(ConfigurationError, match="maximum lifetime"):
            await admin.update_client(store, clock, "c", refresh_token_ttl=61)
        assert await store.get_client("c") == updated

    async def test_update_checks_the_result(self, store: SQLiteStore, clock: FixedClock) -> None:
        """update checks the client as it would be stored: removing the last redirect URI of
        an authorization_code client, or making a client_credentials client public, fails."""
        await admin.create_client(store, clock, client_id="web", redirect_uris=[WEB])
        with pytest.raises(ConfigurationError, match="redirect URI"):
            await admin.update_client(store, clock, "web", redirect_uris=[])
        await admin.create_client(store, clock, client_id="svc")
        with pytest.raises(ConfigurationError, match="public client"):
            await admin.update_client(store, clock, "svc", auth_method="none")
        public = await admin.update_client(store, clock, "web", auth_method="none")
        assert public.is_public
        assert await store.get_client("web") == public

    async def test_public_client_has_no_secret_to_rotate(
        self, store: SQLiteStore, clock: FixedClock
    ) -> None:
        await admin.create_client(
            store, clock, client_id="spa", auth_method="none", redirect_uris=[WEB]
        )
        with pytest.raises(ConfigurationError, match="public"):
            await admin.rotate_secret(store, clock, "spa")

    async def test_public_client_cannot_introspect(
        self, store: SQLiteStore, clock: FixedClock
    ) -> None:
        """A public client cannot be a resource server's introspecting client, whichever
        is registered first."""
        await admin.create_client(
            store, clock, client_id="spa", auth_method="none", redirect_uris=[WEB]
        )
        await admin.create_client(store, clock, client_id="rs", grant_types=[])
        with pytest.raises(ConfigurationError, match="'spa' is public"):
            await admin.create_resource_server(
                store, clock, identifier=API, introspection_clients=["rs", "spa"]
            )
        await admin.create_resource_server(
            store, clock, identifier=API, introspection_clients=["rs"]
        )
        with pytest.raises(ConfigurationError, match="'spa' is public"):
            await admin.update_resource_server(store, clock, API, introspection_clients=["spa"])
        with pytest.raises(ConfigurationError, match="introspects for resource server"):
            await admin.update_client(store, clock, "rs", auth_method="none")
        rs = await store.get_resource_server(API)
        assert rs is not None
        assert rs.introspection_clients == {"rs"}
