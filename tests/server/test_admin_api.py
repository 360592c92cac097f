"""The admin API (docs/admin.md) in process, on a real SQLite file: every endpoint, its
authorization (RFC 6750) and its audit event; RFC 9457 problems; the OpenAPI document."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest

from keystile.clock import FixedClock
from keystile.server.app import create_app
from keystile.settings import ServerSettings
from keystile.store.sqlite import SQLiteStore
from tests.conftest import (
    API,
    INTROSPECT,
    ISSUER,
    REVOKE,
    TOKEN,
    HttpFrom,
    IssueToken,
    RegisterClient,
    Setup,
)
from tests.server.admin_support import ADMIN, AdminTokens, admin_events, admin_tokens, bearer

PASSWORD = "correct horse battery staple"


@pytest.fixture
def settings(db_path: Path) -> ServerSettings:
    return ServerSettings(
        db=str(db_path), issuer=ISSUER, purge_interval=0, access_log=False, admin_api=True
    )


@pytest.fixture
async def tokens(http: httpx.AsyncClient, register_client: RegisterClient) -> AdminTokens:
    return await admin_tokens(http, register_client)


@pytest.fixture
def w(tokens: AdminTokens) -> dict[str, str]:
    """Headers of the write (keystile:admin) caller."""
    return bearer(tokens.write)


def assert_problem(r: httpx.Response, status: int, name: str) -> dict[str, Any]:
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == "application/problem+json"
    assert r.headers["cache-control"] == "no-store"
    body: dict[str, Any] = r.json()
    assert body["type"] == f"urn:keystile:problem:{name}"
    assert body["status"] == status
    assert body["title"]
    return body


class TestAuthorization:
    async def test_no_token_is_401_with_bare_challenge(self, http: httpx.AsyncClient) -> None:
        """No credentials: 401 and a Bearer challenge without an error code (RFC 6750 §3.1)."""
        r = await http.get(f"{ADMIN}/clients")
        assert_problem(r, 401, "unauthorized")
        assert r.headers["www-authenticate"] == 'Bearer realm="keystile-admin"'

    async def test_unknown_token_is_401_invalid_token(self, http: httpx.AsyncClient) -> None:
        """A token keystile never issued: 401 with error="invalid_token" (RFC 6750 §3.1)."""
        r = await http.get(f"{ADMIN}/clients", headers=bearer("ks_at_nonsense"))
        assert_problem(r, 401, "unauthorized")
        assert 'error="invalid_token"' in r.headers["www-authenticate"]

    async def test_token_without_admin_scope_is_403(
        self, http: httpx.AsyncClient, setup: Setup, issue_token: IssueToken, tokens: AdminTokens
    ) -> None:
        """An ordinary access token: 403 insufficient_scope naming the scope needed."""
        token = await issue_token(setup.app, scope="read")
        r = await http.get(f"{ADMIN}/clients", headers=bearer(token))
        assert_problem(r, 403, "insufficient-scope")
        challenge = r.headers["www-authenticate"]
        assert 'error="insufficient_scope"' in challenge
        assert 'scope="keystile:admin:read"' in challenge

    async def test_read_scope_reads_but_does_not_write(
        self, http: httpx.AsyncClient, tokens: AdminTokens
    ) -> None:
        """keystile:admin:read may GET; a change answers 403 and changes nothing."""
        r = await http.get(f"{ADMIN}/clients", headers=bearer(tokens.read))
        assert r.status_code == 200
        r = await http.post(
            f"{ADMIN}/clients", json={"client_id": "x"}, headers=bearer(tokens.read)
        )
        assert_problem(r, 403, "insufficient-scope")
        assert 'scope="keystile:admin"' in r.headers["www-authenticate"]
        r = await http.get(f"{ADMIN}/clients/x", headers=bearer(tokens.read))
        assert r.status_code == 404

    async def test_revoked_token_is_refused_at_once(
        self, http: httpx.AsyncClient, register_client: RegisterClient
    ) -> None:
        """A token revoked at /oauth2/revoke is refused on the very next admin request."""
        ops = await register_client("ops2", scopes=["keystile:admin"])
        r = await http.post(
            TOKEN,
            data={"grant_type": "client_credentials", "scope": "keystile:admin"},
            auth=ops.auth,
        )
        token = r.json()["access_token"]
        assert (await http.get(f"{ADMIN}/clients", headers=bearer(token))).status_code == 200
        assert (await http.post(REVOKE, data={"token": token}, auth=ops.auth)).status_code == 200
        r = await http.get(f"{ADMIN}/clients", headers=bearer(token))
        assert_problem(r, 401, "unauthorized")

    async def test_expired_token_is_refused(
        self, http: httpx.AsyncClient, tokens: AdminTokens, clock: FixedClock
    ) -> None:
        """Past its exp the token is not active, as introspection would say (RFC 7662)."""
        clock.advance(3601)
        r = await http.get(f"{ADMIN}/clients", headers=bearer(tokens.write))
        assert_problem(r, 401, "unauthorized")

    async def test_scope_taken_from_client_ends_access(
        self, http: httpx.AsyncClient, tokens: AdminTokens, w: dict[str, str]
    ) -> None:
        """Removing keystile:admin:read from the client refuses its existing token."""
        r = await http.patch(f"{ADMIN}/clients/auditor", json={"scope": ""}, headers=w)
        assert r.status_code == 200, r.text
        r = await http.get(f"{ADMIN}/clients", headers=bearer(tokens.read))
        assert r.status_code == 403

    async def test_disabled_client_token_is_refused(
        self, http: httpx.AsyncClient, tokens: AdminTokens, w: dict[str, str]
    ) -> None:
        """Disabling the admin client revokes its tokens: 401 from then on."""
        assert (await http.post(f"{ADMIN}/clients/auditor/disable", headers=w)).status_code == 200
        r = await http.get(f"{ADMIN}/clients", headers=bearer(tokens.read))
        assert r.status_code == 401

    async def test_off_unless_configured(
        self, db_path: Path, store: SQLiteStore, clock: FixedClock
    ) -> None:
        """Without admin_api the routes do not exist (404), whatever the token."""
        settings = ServerSettings(db=str(db_path), issuer=ISSUER, purge_interval=0)
        app = create_app(settings, store=store, clock=clock)
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url=ISSUER
        ) as client:
            assert (await client.get(f"{ADMIN}/clients")).status_code == 404
            assert (await client.get(f"{ADMIN}/openapi.json")).status_code == 404


class TestAddressAllowList:
    @pytest.fixture
    def settings(self, db_path: Path) -> ServerSettings:
        return ServerSettings(
            db=str(db_path),
            issuer=ISSUER,
            purge_interval=0,
            admin_api=True,
            admin_api_allow=["10.0.0.0/8", "192.0.2.1"],
        )

    async def test_address_outside_the_list_is_403(
        self, http: httpx.AsyncClient, tokens: AdminTokens
    ) -> None:
        """From 203.0.113.7 (not listed) even a valid admin token gets 403, on every
        operation and on the console."""
        from keystile.server.admin_api import OPERATIONS

        r = await http.get(f"{ADMIN}/clients", headers=bearer(tokens.write))
        assert_problem(r, 403, "address-not-allowed")
        assert "www-authenticate" not in r.headers
        for op in OPERATIONS:
            r = await http.request(
                op.method, ADMIN + _concrete(op.path), headers=bearer(tokens.write)
            )
            assert r.status_code == 403, (op.method, op.path)
        assert (await http.get("/admin/")).status_code == 403

    async def test_listed_addresses_are_served(
        self, http_from: HttpFrom, tokens: AdminTokens
    ) -> None:
        """A CIDR and a single address both admit their callers."""
        for address in ("10.1.2.3", "192.0.2.1"):
            r = await http_from(address).get(f"{ADMIN}/clients", headers=bearer(tokens.write))
            assert r.status_code == 200, (address, r.text)

    def test_bad_cidr_is_a_settings_error(self) -> None:
        """A malformed allow-list entry fails when settings load, naming it."""
        from keystile.errors import ConfigurationError

        with pytest.raises(ConfigurationError, match="admin_api_allow"):
            ServerSettings.load(None, admin_api_allow=["10.0.0.0/33"])


class TestOpenApi:
    async def test_document_validates_and_lists_every_route(
        self, http: httpx.AsyncClient, app: Any, w: dict[str, str]
    ) -> None:
        """The served document is valid OpenAPI 3.1 and every admin route is in it."""
        from openapi_spec_validator import validate

        r = await http.get(f"{ADMIN}/openapi.json", headers=w)
        assert r.status_code == 200
        assert r.headers["cache-control"] == "no-store"
        document = r.json()
        assert document["openapi"].startswith("3.1")
        validate(document)
        routes = [
            route for route in app._fallback.routes if getattr(route, "path", "").startswith(ADMIN)
        ]
        assert len(routes) > 20
        for route in routes:
            path = route.path.removeprefix(ADMIN).replace("{identifier:path}", "{identifier}")
            for method in route.methods - {"HEAD"}:
                assert method.lower() in document["paths"][path], (method, path)


class TestClients:
    async def test_create_shows_secret_once_and_audits(
        self, http: httpx.AsyncClient, w: dict[str, str]
    ) -> None:
        """POST /clients answers 201 with the secret; GET never shows it; one audit event
        names who, what, from where, and holds no secret."""
        r = await http.post(
            f"{ADMIN}/clients",
            json={"client_id": "billing", "scope": "read write", "default_audience": [API]},
            headers=w,
        )
        assert r.status_code == 201, r.text
        assert r.headers["cache-control"] == "no-store"
        assert r.headers["location"] == f"{ADMIN}/clients/billing"
        created = r.json()
        secret = created["client_secret"]
        assert secret.startswith("ks_cs_")
        assert created["scope"] == "read write"
        assert created["access_token_ttl"] == 3600
        r = await http.get(f"{ADMIN}/clients/billing", headers=w)
        assert r.status_code == 200
        assert "client_secret" not in r.json()
        # The secret works at the token endpoint.
        r = await http.post(
            TOKEN, data={"grant_type": "client_credentials"}, auth=("billing", secret)
        )
        assert r.status_code == 200
        events = await admin_events(http, w["Authorization"].split()[1])
        assert len(events) == 1
        event = events[0]
        assert event["action"] == "client.create"
        assert event["target"] == "billing"
        assert event["actor"] == "ops"
        assert event["address"] == "203.0.113.7"
        assert event["status"] == 201
        assert event["fields"] == ["access_token_ttl", "default_audience", "redirect_uris", "scope"]
        assert isinstance(event["created_at"], int)
        assert secret not in json.dumps(event)

    async def test_list_update_disable_enable_rotate_delete(
        self, http: httpx.AsyncClient, w: dict[str, str], register_client: RegisterClient
    ) -> None:
        """Each change answers its result and writes its own audit event."""
        await register_client("app-9")
        r = await http.get(f"{ADMIN}/clients", headers=w)
        ids = [c["client_id"] for c in r.json()["items"]]
        assert ids == ["app-9", "auditor", "ops"]
        assert r.json()["items"][0]["registration"] == "cli"
        r = await http.patch(f"{ADMIN}/clients/app-9", json={"name": "Nine"}, headers=w)
        assert r.json()["name"] == "Nine"
        r = await http.post(f"{ADMIN}/clients/app-9/disable", headers=w)
        assert r.json() == {"client_id": "app-9", "enabled": False, "tokens_revoked": 0}
        r = await http.post(f"{ADMIN}/clients/app-9/enable", headers=w)
        assert r.json() == {"client_id": "app-9", "enabled": True}
        r = await http.post(f"{ADMIN}/clients/app-9/rotate-secret", headers=w)
        assert r.json()["client_secret"].startswith("ks_cs_")
        r = await http.delete(f"{ADMIN}/clients/app-9", headers=w)
        assert r.json() == {"client_id": "app-9", "deleted": True, "tokens_revoked": 0}
        assert (await http.get(f"{ADMIN}/clients/app-9", headers=w)).status_code == 404
        actions = [e["action"] for e in await admin_events(http, w["Authorization"][7:])]
        assert actions == [
            "client.update",
            "client.disable",
            "client.enable",
            "client.rotate_secret",
            "client.delete",
        ]
        rotated = (await admin_events(http, w["Authorization"][7:]))[3]
        assert "ks_cs_" not in json.dumps(rotated)

    async def test_pagination(self, http: httpx.AsyncClient, w: dict[str, str]) -> None:
        """limit and cursor walk the list in id order; the last page has no cursor."""
        for i in range(3):
            await http.post(f"{ADMIN}/clients", json={"client_id": f"c{i}"}, headers=w)
        seen: list[str] = []
        cursor: str | None = None
        while True:
            params = {"limit": "2", **({"cursor": cursor} if cursor else {})}
            body = (await http.get(f"{ADMIN}/clients", params=params, headers=w)).json()
            assert len(body["items"]) <= 2
            seen += [c["client_id"] for c in body["items"]]
            cursor = body["next_cursor"]
            if cursor is None:
                break
        assert seen == ["auditor", "c0", "c1", "c2", "ops"]
        r = await http.get(f"{ADMIN}/clients", params={"limit": "0"}, headers=w)
        assert_problem(r, 400, "invalid-input")

    async def test_problems(self, http: httpx.AsyncClient, w: dict[str, str]) -> None:
        """Bad input 400, unknown 404, taken id 409, unknown field 400, not JSON 415."""
        r = await http.post(f"{ADMIN}/clients", json={"client_id": "-bad"}, headers=w)
        assert "client id must be" in assert_problem(r, 400, "invalid-input")["detail"]
        r = await http.get(f"{ADMIN}/clients/nobody", headers=w)
        assert assert_problem(r, 404, "not-found")["detail"] == "no client 'nobody'"
        r = await http.post(f"{ADMIN}/clients", json={"client_id": "ops"}, headers=w)
        assert_problem(r, 409, "conflict")
        r = await http.post(f"{ADMIN}/clients", json={"client_id": "x", "scopes": "a"}, headers=w)
        assert "scopes" in assert_problem(r, 400, "invalid-input")["detail"]
        r = await http.post(f"{ADMIN}/clients", json={"client_id": 5}, headers=w)
        assert assert_problem(r, 400, "invalid-input")["detail"] == "client_id must be a string"
        r = await http.post(
            f"{ADMIN}/clients",
            content=b"client_id=x",
            headers={**w, "Content-Type": "application/x-www-form-urlencoded"},
        )
        assert_problem(r, 415, "unsupported-media-type")
        assert await admin_events(http, w["Authorization"][7:]) == []


class TestResourceServers:
    async def test_crud_with_a_uri_identifier(
        self, http: httpx.AsyncClient, w: dict[str, str], register_client: RegisterClient
    ) -> None:
        """A resource server is created, read, changed and deleted by its URI (encoded)."""
        await register_client("rs-9", grant_types=[], scopes=[])
        r = await http.post(
            f"{ADMIN}/resource-servers",
            json={"identifier": API, "introspection_clients": ["rs-9"], "claims": ["scope"]},
            headers=w,
        )
        assert r.status_code == 201, r.text
        assert r.json()["introspection_rules"] == ["audience"]
        path = f"{ADMIN}/resource-servers/{quote(API, safe='')}"
        assert r.headers["location"] == path
        assert (await http.get(path, headers=w)).json()["identifier"] == API
        r = await http.patch(path, json={"introspection_rules": ["owner"]}, headers=w)
        assert r.json()["introspection_rules"] == ["audience", "owner"]
        r = await http.get(f"{ADMIN}/resource-servers", headers=w)
        assert [rs["identifier"] for rs in r.json()["items"]] == [API]
        assert (await http.delete(path, headers=w)).json() == {"identifier": API, "deleted": True}
        assert (await http.get(path, headers=w)).status_code == 404
        events = await admin_events(http, w["Authorization"][7:])
        assert [(e["action"], e["target"]) for e in events] == [
            ("resource_server.create", API),
            ("resource_server.update", API),
            ("resource_server.delete", API),
        ]

    async def test_public_introspector_is_refused(
        self, http: httpx.AsyncClient, w: dict[str, str], register_client: RegisterClient
    ) -> None:
        """The shared rule: a public client cannot introspect (400, the CLI's message)."""
        await register_client(
            "spa", auth_method="none", redirect_uris=["https://spa.example/cb"], scopes=[]
        )
        r = await http.post(
            f"{ADMIN}/resource-servers",
            json={"identifier": API, "introspection_clients": ["spa"]},
            headers=w,
        )
        assert "cannot introspect" in assert_problem(r, 400, "invalid-input")["detail"]


class TestUsers:
    async def test_user_lifecycle_never_shows_passwords(
        self, http: httpx.AsyncClient, w: dict[str, str]
    ) -> None:
        """Create, show, change password, disable, enable, revoke sessions, delete; no
        password or hash in any answer or event."""
        r = await http.post(
            f"{ADMIN}/users", json={"username": "Alice", "password": PASSWORD}, headers=w
        )
        assert r.status_code == 201, r.text
        user = r.json()
        assert user["username"] == "alice"
        assert set(user) == {
            "user_id",
            "username",
            "enabled",
            "roles",
            "name",
            "preferred_username",
            "email",
            "email_verified",
            "created_at",
            "updated_at",
        }
        assert (await http.get(f"{ADMIN}/users/ALICE", headers=w)).json() == user
        r = await http.post(f"{ADMIN}/users/alice/password", json={"password": "short"}, headers=w)
        assert_problem(r, 400, "invalid-input")
        r = await http.post(
            f"{ADMIN}/users/alice/password", json={"password": PASSWORD + "!"}, headers=w
        )
        assert r.json()["password_changed"] is True
        r = await http.post(f"{ADMIN}/users/alice/disable", headers=w)
        assert r.json()["enabled"] is False
        r = await http.post(f"{ADMIN}/users/alice/enable", headers=w)
        assert r.json()["enabled"] is True
        r = await http.post(f"{ADMIN}/users/alice/revoke-sessions", headers=w)
        assert r.json()["tokens_revoked"] == 0
        r = await http.get(f"{ADMIN}/users", headers=w)
        assert [u["username"] for u in r.json()["items"]] == ["alice"]
        r = await http.delete(f"{ADMIN}/users/{user['user_id']}", headers=w)
        assert r.json()["deleted"] is True
        events = await admin_events(http, w["Authorization"][7:])
        assert [e["action"] for e in events] == [
            "user.create",
            "user.password",
            "user.disable",
            "user.enable",
            "user.revoke_sessions",
            "user.delete",
        ]
        assert all(e["target"] == user["user_id"] for e in events)
        assert PASSWORD not in json.dumps(events)
        assert "argon2" not in json.dumps(events)

    async def test_claims_set_as_the_cli_sets_them(
        self, http: httpx.AsyncClient, w: dict[str, str]
    ) -> None:
        """OpenID Connect claims (docs/oidc.md): given at creation, changed with PATCH by the
        same rules as `keystile user update` (a new email is unverified, "" clears, a bad
        email is a problem), each change audited with the fields, never the values."""
        r = await http.post(
            f"{ADMIN}/users",
            json={
                "username": "bob",
                "password": PASSWORD,
                "name": "Bob Builder",
                "email": "bob@example.test",
                "email_verified": True,
            },
            headers=w,
        )
        assert r.status_code == 201, r.text
        assert r.json()["email_verified"] is True
        r = await http.patch(
            f"{ADMIN}/users/bob", json={"email": "robert@example.test", "name": ""}, headers=w
        )
        assert r.status_code == 200, r.text
        assert r.json()["email"] == "robert@example.test"
        assert r.json()["email_verified"] is False
        assert r.json()["name"] is None
        r = await http.patch(f"{ADMIN}/users/bob", json={"email": "not-an-email"}, headers=w)
        assert "email must look like" in assert_problem(r, 400, "invalid-input")["detail"]
        r = await http.patch(f"{ADMIN}/users/bob", json={"nickname": "x"}, headers=w)
        assert_problem(r, 400, "invalid-input")
        events = await admin_events(http, w["Authorization"][7:])
        update = [e for e in events if e["action"] == "user.update"]
        assert len(update) == 1
        assert update[0]["fields"] == ["email", "name"]
        assert "robert@example.test" not in json.dumps(update)


class TestSigningKeys:
    async def test_create_rotate_retire(self, http: httpx.AsyncClient, w: dict[str, str]) -> None:
        """A next key is made, rotated in, and the old key retired, each audited."""
        r = await http.post(f"{ADMIN}/signing-keys", json={"alg": "ES256"}, headers=w)
        assert r.status_code == 201, r.text
        made = r.json()
        assert made["state"] == "next"
        assert "d" not in made  # never the private part
        r = await http.post(f"{ADMIN}/signing-keys/rotate", headers=w)
        assert r.status_code == 200, r.text
        assert r.json()["active"]["kid"] == made["kid"]
        retired = r.json()["retired"]
        r = await http.get(f"{ADMIN}/signing-keys", headers=w)
        states = {k["kid"]: k["state"] for k in r.json()["items"]}
        assert states[made["kid"]] == "active"
        if retired is not None:
            r = await http.post(
                f"{ADMIN}/signing-keys/{retired['kid']}/retire",
                json={"immediately": True},
                headers=w,
            )
            assert r.json()["published"] is False
        r = await http.post(f"{ADMIN}/signing-keys/{made['kid']}/retire", headers=w)
        assert_problem(r, 409, "conflict")
        r = await http.post(f"{ADMIN}/signing-keys", json={"alg": "HS256"}, headers=w)
        assert "unknown algorithm" in assert_problem(r, 400, "invalid-input")["detail"]
        actions = [e["action"] for e in await admin_events(http, w["Authorization"][7:])]
        assert actions[:2] == ["signing_key.create", "signing_key.rotate"]


class TestRegistrationTokens:
    async def test_create_list_delete(self, http: httpx.AsyncClient, w: dict[str, str]) -> None:
        """An initial access token is shown once, listed without its value, then revoked."""
        r = await http.post(
            f"{ADMIN}/registration-tokens", json={"uses": 3, "description": "ci"}, headers=w
        )
        assert r.status_code == 201, r.text
        made = r.json()
        assert made["token"].startswith("ks_ia_")
        assert made["uses_left"] == 3
        r = await http.get(f"{ADMIN}/registration-tokens", headers=w)
        listed = r.json()["items"]
        assert [t["token_id"] for t in listed] == [made["token_id"]]
        assert "token" not in listed[0]
        path = f"{ADMIN}/registration-tokens/{made['token_id']}"
        assert (await http.delete(path, headers=w)).json()["deleted"] is True
        assert_problem(await http.delete(path, headers=w), 404, "not-found")
        r = await http.post(f"{ADMIN}/registration-tokens", json={"ttl": 5}, headers=w)
        assert assert_problem(r, 400, "invalid-input")["detail"].startswith("lifetime must be")
        events = await admin_events(http, w["Authorization"][7:])
        assert [e["action"] for e in events] == [
            "registration_token.create",
            "registration_token.delete",
        ]
        assert made["token"] not in json.dumps(events)


class TestTokens:
    async def test_find_by_jti_and_digest(
        self,
        http: httpx.AsyncClient,
        w: dict[str, str],
        setup: Setup,
        issue_token: IssueToken,
    ) -> None:
        """A token is found by its digest or jti; the answer never holds the token."""
        token = await issue_token(setup.app, scope="read")
        digest = hashlib.sha256(token.encode()).hexdigest()
        r = await http.get(f"{ADMIN}/tokens", params={"digest": digest}, headers=w)
        assert r.status_code == 200, r.text
        found = r.json()
        assert found["token_sha256"] == digest
        assert found["client_id"] == "app-1"
        assert found["state"] == "active"
        assert token not in r.text
        r = await http.get(f"{ADMIN}/tokens", params={"jti": found["jti"]}, headers=w)
        assert r.json() == found
        r = await http.get(f"{ADMIN}/tokens", params={"digest": "abc"}, headers=w)
        assert_problem(r, 400, "invalid-input")
        r = await http.get(f"{ADMIN}/tokens", params={"jti": "nope"}, headers=w)
        assert_problem(r, 404, "not-found")
        r = await http.get(f"{ADMIN}/tokens", headers=w)
        assert_problem(r, 400, "invalid-input")

    async def test_revoke_by_token_and_by_jti(
        self,
        http: httpx.AsyncClient,
        w: dict[str, str],
        setup: Setup,
        issue_token: IssueToken,
    ) -> None:
        """Revoking by value or jti makes introspection inactive; the event has no value."""
        first = await issue_token(setup.app, scope="read")
        second = await issue_token(setup.app, scope="read")
        r = await http.post(f"{ADMIN}/tokens/revoke", json={"token": first}, headers=w)
        assert r.status_code == 200, r.text
        assert r.json()["state"] == "revoked"
        assert first not in r.text
        jti = (
            await http.get(
                f"{ADMIN}/tokens",
                params={"digest": hashlib.sha256(second.encode()).hexdigest()},
                headers=w,
            )
        ).json()["jti"]
        r = await http.post(f"{ADMIN}/tokens/revoke", json={"jti": jti}, headers=w)
        assert r.json()["state"] == "revoked"
        for token in (first, second):
            r = await http.post(INTROSPECT, data={"token": token}, auth=setup.rs.auth)
            assert r.json() == {"active": False}
        r = await http.post(f"{ADMIN}/tokens/revoke", json={"token": "ks_at_x"}, headers=w)
        assert_problem(r, 404, "not-found")
        r = await http.post(f"{ADMIN}/tokens/revoke", json={}, headers=w)
        assert_problem(r, 400, "invalid-input")
        events = await admin_events(http, w["Authorization"][7:])
        assert [e["action"] for e in events] == ["token.revoke", "token.revoke"]
        assert first not in json.dumps(events)

    async def test_revoke_by_client(
        self,
        http: httpx.AsyncClient,
        w: dict[str, str],
        setup: Setup,
        issue_token: IssueToken,
    ) -> None:
        """Every live token of the client is revoked, with token_revoked events, and the
        client stays enabled (it may get new tokens)."""
        tokens = [await issue_token(setup.app, scope="read") for _ in range(2)]
        r = await http.post(f"{ADMIN}/clients/app-1/revoke-tokens", headers=w)
        assert r.json() == {"client_id": "app-1", "tokens_revoked": 2}
        for token in tokens:
            r = await http.post(INTROSPECT, data={"token": token}, auth=setup.rs.auth)
            assert r.json() == {"active": False}
        await issue_token(setup.app, scope="read")
        r = await http.get(f"{ADMIN}/events", headers=w)
        types = [e["type"] for e in r.json()["items"]]
        assert types.count("token_revoked") == 2
        r = await http.post(f"{ADMIN}/clients/nobody/revoke-tokens", headers=w)
        assert_problem(r, 404, "not-found")


class TestEvents:
    async def test_tail_and_after(
        self, http: httpx.AsyncClient, w: dict[str, str], tokens: AdminTokens
    ) -> None:
        """Without after: the latest events; with after: those after it, and next_after."""
        for i in range(3):
            await http.post(f"{ADMIN}/clients", json={"client_id": f"e{i}"}, headers=w)
        r = await http.get(f"{ADMIN}/events", params={"limit": 2}, headers=bearer(tokens.read))
        body = r.json()
        assert [e["target"] for e in body["items"]] == ["e1", "e2"]
        r = await http.get(f"{ADMIN}/events", params={"after": body["items"][0]["id"]}, headers=w)
        assert [e["target"] for e in r.json()["items"]] == ["e2"]
        assert r.json()["next_after"] == body["items"][1]["id"]

    async def test_admin_events_are_not_streamed(self) -> None:
        """Resource servers never receive the operators' audit trail over /events."""
        from keystile.core.models import ResourceServer
        from keystile.server.events import event_visible
        from keystile.store.base import Event

        rs = ResourceServer(
            identifier=API,
            name="api",
            introspection_clients=frozenset(),
            claims=frozenset(),
            rules=frozenset({"audience", "any"}),
            created_at=0,
            updated_at=0,
        )
        assert not event_visible(rs, Event(1, "admin_action", 0, {"actor": "ops"}))


def _concrete(path: str) -> str:
    """An operation's path with sample values for its parameters."""
    return (
        path.replace("{client_id}", "nobody")
        .replace("{identifier}", quote(API, safe=""))
        .replace("{user}", "nobody")
        .replace("{kid}", "nokid")
        .replace("{token_id}", "iat_none")
    )


class TestEveryOperation:
    """The authorization rules hold for every route of the table (server/admin_api.py)."""

    @pytest.fixture
    def operations(self) -> list[Any]:
        from keystile.server.admin_api import OPERATIONS

        return list(OPERATIONS)

    async def test_no_token_is_401_everywhere(
        self, http: httpx.AsyncClient, operations: list[Any]
    ) -> None:
        """Every operation without a bearer token: 401 with the Bearer challenge."""
        for op in operations:
            r = await http.request(op.method, ADMIN + _concrete(op.path))
            assert r.status_code == 401, (op.method, op.path)
            assert r.headers["www-authenticate"].startswith("Bearer ")

    async def test_read_scope_may_read_but_never_write(
        self, http: httpx.AsyncClient, tokens: AdminTokens, operations: list[Any]
    ) -> None:
        """keystile:admin:read passes every GET and gets 403 on every change."""
        for op in operations:
            r = await http.request(
                op.method, ADMIN + _concrete(op.path), headers=bearer(tokens.read)
            )
            if op.method == "GET":
                assert r.status_code not in (401, 403), (op.path, r.text)
            else:
                assert r.status_code == 403, (op.method, op.path)
                assert r.json()["type"] == "urn:keystile:problem:insufficient-scope"

    async def test_other_scopes_get_403_everywhere(
        self,
        http: httpx.AsyncClient,
        operations: list[Any],
        setup: Setup,
        issue_token: IssueToken,
    ) -> None:
        """A token without an admin scope: 403 insufficient_scope on every operation."""
        token = await issue_token(setup.app, scope="read write")
        for op in operations:
            r = await http.request(op.method, ADMIN + _concrete(op.path), headers=bearer(token))
            assert r.status_code == 403, (op.method, op.path)

    async def test_revoked_token_is_401_everywhere(
        self, http: httpx.AsyncClient, register_client: RegisterClient, operations: list[Any]
    ) -> None:
        """Once its admin token is revoked (RFC 7009), every operation answers 401."""
        ops = await register_client("ops3", scopes=["keystile:admin"])
        r = await http.post(
            TOKEN,
            data={"grant_type": "client_credentials", "scope": "keystile:admin"},
            auth=ops.auth,
        )
        token = r.json()["access_token"]
        await http.post(REVOKE, data={"token": token}, auth=ops.auth)
        for op in operations:
            r = await http.request(op.method, ADMIN + _concrete(op.path), headers=bearer(token))
            assert r.status_code == 401, (op.method, op.path)
            assert 'error="invalid_token"' in r.headers["www-authenticate"]
