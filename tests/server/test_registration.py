"""Dynamic client registration over HTTP: RFC 7591 §3 and RFC 7592 §2, against the real app."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import httpx
import pytest

from keystile import admin, registration_admin
from keystile.clock import FixedClock
from keystile.core.tokens import token_hash
from keystile.server.app import create_app
from keystile.settings import ServerSettings
from keystile.store.sqlite import SQLiteStore
from tests.conftest import API, INTROSPECT, ISSUER, TOKEN
from tests.server.jwt_support import ClientKey

REGISTER = "/oauth2/register"
METADATA = "/.well-known/oauth-authorization-server"
WEB = {"redirect_uris": ["https://app.example.test/cb"], "client_name": "Web app"}

MakeHttp = Callable[..., Awaitable[httpx.AsyncClient]]


@pytest.fixture
async def make_http(db_path: Any, store: SQLiteStore, clock: FixedClock) -> AsyncIterator[MakeHttp]:
    """An in-process client of an app with the given registration settings (same store)."""
    opened: list[httpx.AsyncClient] = []

    async def make(address: str = "203.0.113.7", **overrides: Any) -> httpx.AsyncClient:
        values: dict[str, Any] = {
            "db": str(db_path),
            "issuer": ISSUER,
            "purge_interval": 0,
            "registration_scopes": ["read", "write"],
            "registration_audience": [API],
            **overrides,
        }
        app = create_app(ServerSettings(**values), store=store, clock=clock)
        transport = httpx.ASGITransport(app=app, client=(address, 40000))
        c = httpx.AsyncClient(transport=transport, base_url=ISSUER)
        opened.append(c)
        return c

    yield make
    for c in opened:
        await c.aclose()


@pytest.fixture
async def iat(store: SQLiteStore, clock: FixedClock) -> str:
    """A multi-use initial access token, good for a day."""
    _, value = await registration_admin.create_initial_access_token(store, clock, uses=None)
    return value


@pytest.fixture
async def reg(make_http: MakeHttp) -> httpx.AsyncClient:
    return await make_http(registration="initial-access-token")


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def register(http: httpx.AsyncClient, body: Any, token: str | None = None) -> httpx.Response:
    return await http.post(REGISTER, json=body, headers=bearer(token) if token else {})


def assert_error(r: httpx.Response, status: int, error: str) -> None:
    assert r.status_code == status, r.text
    assert r.json()["error"] == error
    assert r.headers["cache-control"] == "no-store"


class TestPolicyOff:
    async def test_no_endpoint_and_no_metadata(self, make_http: MakeHttp) -> None:
        """Off by default: no registration_endpoint in RFC 8414 metadata, and 404."""
        http = await make_http()
        meta = (await http.get(METADATA)).json()
        assert "registration_endpoint" not in meta
        r = await http.post(REGISTER, json=WEB)
        assert r.status_code == 404
        assert (await http.get(REGISTER + "/dcr_x")).status_code == 404


class TestInitialAccessTokenPolicy:
    async def test_metadata_names_the_endpoint(self, reg: httpx.AsyncClient) -> None:
        """RFC 8414 §2: registration_endpoint is published while a policy is on."""
        meta = (await reg.get(METADATA)).json()
        assert meta["registration_endpoint"] == ISSUER + REGISTER

    @pytest.mark.parametrize(
        "headers",
        [
            {},
            {"Authorization": "Basic YTpi"},
            {"Authorization": "Bearer not-a-token"},
            {"Authorization": "Bearer ks_at_" + "A" * 49},
        ],
    )
    async def test_missing_or_malformed_token_is_401(
        self, reg: httpx.AsyncClient, headers: dict[str, str]
    ) -> None:
        """RFC 7591 §3 with RFC 6750 §3.1: no usable initial access token is invalid_token."""
        r = await reg.post(REGISTER, json=WEB, headers=headers)
        assert_error(r, 401, "invalid_token")
        assert r.headers["www-authenticate"].startswith("Bearer")

    async def test_unknown_token_is_401(self, reg: httpx.AsyncClient, store: SQLiteStore) -> None:
        """A well-formed token that was never made (or was revoked) is refused."""
        clock = FixedClock(1_800_000_000)
        made, value = await registration_admin.create_initial_access_token(store, clock)
        await registration_admin.revoke_initial_access_token(store, made.token_id)
        assert_error(await register(reg, WEB, value), 401, "invalid_token")

    async def test_expired_token_is_401(
        self, reg: httpx.AsyncClient, store: SQLiteStore, clock: FixedClock
    ) -> None:
        """An initial access token works until its expiry, then never."""
        _, value = await registration_admin.create_initial_access_token(
            store, clock, ttl=600, uses=None
        )
        assert (await register(reg, WEB, value)).status_code == 201
        clock.advance(600)
        assert_error(await register(reg, WEB, value), 401, "invalid_token")

    async def test_single_use_token_is_used_up(
        self, reg: httpx.AsyncClient, store: SQLiteStore, clock: FixedClock
    ) -> None:
        """A single-use token registers one client; a bad request does not spend it."""
        _, value = await registration_admin.create_initial_access_token(store, clock, uses=1)
        bad = await register(reg, {"redirect_uris": ["http://evil.example/cb"]}, value)
        assert_error(bad, 400, "invalid_redirect_uri")
        assert (await register(reg, WEB, value)).status_code == 201
        assert_error(await register(reg, WEB, value), 401, "invalid_token")

    async def test_multi_use_token(
        self, reg: httpx.AsyncClient, store: SQLiteStore, clock: FixedClock
    ) -> None:
        """A token made for three uses registers three clients, then no more."""
        _, value = await registration_admin.create_initial_access_token(store, clock, uses=3)
        for _ in range(3):
            assert (await register(reg, WEB, value)).status_code == 201
        assert_error(await register(reg, WEB, value), 401, "invalid_token")

    async def test_confidential_client_response_and_secret_hashed(
        self, reg: httpx.AsyncClient, iat: str, store: SQLiteStore, db_path: Any
    ) -> None:
        """RFC 7591 §3.2.1 and RFC 7592 §3: 201 with client_id, the secret once (stored as
        SHA-256 only), client_secret_expires_at, the metadata, and the management pair."""
        body = {
            "redirect_uris": ["https://app.example.test/cb"],
            "grant_types": ["authorization_code", "refresh_token", "client_credentials"],
            "client_name": "Web app",
            "client_uri": "https://app.example.test/",
            "contacts": ["ops@app.example.test"],
            "scope": "read",
            "software_id": "4NRB1-0XZABZI9E6-5SM3R",
            "software_version": "2.1",
            "x-unknown-field": "ignored",
        }
        r = await register(reg, body, iat)
        assert r.status_code == 201, r.text
        assert r.headers["cache-control"] == "no-store"
        assert r.headers["pragma"] == "no-cache"
        got = r.json()
        client_id = got["client_id"]
        assert client_id.startswith("dcr_")
        assert got["client_id_issued_at"] == 1_800_000_000
        assert got["client_secret_expires_at"] == 0
        assert got["token_endpoint_auth_method"] == "client_secret_basic"
        assert got["grant_types"] == ["authorization_code", "client_credentials", "refresh_token"]
        assert got["response_types"] == ["code"]
        assert got["scope"] == "read"
        assert got["client_name"] == "Web app"
        assert got["contacts"] == ["ops@app.example.test"]
        assert got["software_id"] == "4NRB1-0XZABZI9E6-5SM3R"
        assert "x-unknown-field" not in got
        assert got["registration_client_uri"] == f"{ISSUER}{REGISTER}/{client_id}"
        assert got["registration_access_token"].startswith("ks_ra_")
        stored = await store.get_client(client_id)
        assert stored is not None
        assert stored.secret_hash == token_hash(got["client_secret"])
        registration = await store.get_registration(client_id)
        assert registration is not None
        assert registration.method == "initial-access-token"
        assert registration.access_token_hash == token_hash(got["registration_access_token"])
        raw = b"".join(p.read_bytes() for p in db_path.parent.glob("keystile.db*"))
        assert got["client_secret"].encode() not in raw
        assert got["registration_access_token"].encode() not in raw

    async def test_registered_client_gets_and_introspects_tokens(
        self,
        reg: httpx.AsyncClient,
        iat: str,
        register_client: Any,
        register_resource: Any,
    ) -> None:
        """A registered client uses client_credentials; the resource server of the
        configured audience introspects its token as active."""
        r = await register(reg, {"grant_types": ["client_credentials"], "scope": "read"}, iat)
        assert r.status_code == 201, r.text
        got = r.json()
        assert got["response_types"] == []
        rs = await register_client("rs-1", grant_types=[], scopes=[])
        await register_resource(API, ["rs-1"])
        t = await reg.post(
            TOKEN,
            data={"grant_type": "client_credentials"},
            auth=(got["client_id"], got["client_secret"]),
        )
        assert t.status_code == 200, t.text
        assert t.json()["scope"] == "read"
        i = await reg.post(INTROSPECT, data={"token": t.json()["access_token"]}, auth=rs.auth)
        assert i.json()["active"] is True
        assert i.json()["client_id"] == got["client_id"]

    async def test_private_key_jwt_client(self, reg: httpx.AsyncClient, iat: str) -> None:
        """private_key_jwt registers with its public keys by value, no secret returned."""
        key = ClientKey()
        body = {
            "grant_types": ["client_credentials"],
            "token_endpoint_auth_method": "private_key_jwt",
            "jwks": {"keys": [key.public_jwk]},
        }
        r = await register(reg, body, iat)
        assert r.status_code == 201, r.text
        assert "client_secret" not in r.json()
        assert r.json()["jwks"]["keys"][0]["kid"] == key.kid


BAD_METADATA: list[tuple[str, Any, str]] = [
    ("not an object", ["https://a.example/cb"], "invalid_client_metadata"),
    ("redirect_uris not a list", {"redirect_uris": "https://a.example/cb"}, "invalid_redirect_uri"),
    (
        "redirect URI with fragment",
        {"redirect_uris": ["https://a.example/cb#x"]},
        "invalid_redirect_uri",
    ),
    (
        "plain http to a remote host",
        {"redirect_uris": ["http://a.example/cb"]},
        "invalid_redirect_uri",
    ),
    ("relative redirect URI", {"redirect_uris": ["/cb"]}, "invalid_redirect_uri"),
    (
        "redirect URI with userinfo",
        {"redirect_uris": ["https://u:p@a.example/cb"]},
        "invalid_redirect_uri",
    ),
    (
        "code flow without redirect URIs",
        {"grant_types": ["authorization_code"]},
        "invalid_redirect_uri",
    ),
    (
        "unknown auth method",
        {**WEB, "token_endpoint_auth_method": "tls_client_auth"},
        "invalid_client_metadata",
    ),
    ("unsupported grant type", {**WEB, "grant_types": ["implicit"]}, "invalid_client_metadata"),
    ("password grant", {**WEB, "grant_types": ["password"]}, "invalid_client_metadata"),
    ("grant_types not strings", {**WEB, "grant_types": [1]}, "invalid_client_metadata"),
    ("no grant type", {**WEB, "grant_types": [], "response_types": []}, "invalid_client_metadata"),
    ("unsupported response type", {**WEB, "response_types": ["token"]}, "invalid_client_metadata"),
    ("code grant without code response", {**WEB, "response_types": []}, "invalid_client_metadata"),
    (
        "code response without code grant",
        {"grant_types": ["client_credentials"], "response_types": ["code"]},
        "invalid_client_metadata",
    ),
    (
        "refresh without code grant",
        {"grant_types": ["client_credentials", "refresh_token"]},
        "invalid_client_metadata",
    ),
    (
        "public client with client_credentials",
        {"grant_types": ["client_credentials"], "token_endpoint_auth_method": "none"},
        "invalid_client_metadata",
    ),
    ("scope beyond the ceiling", {**WEB, "scope": "read admin"}, "invalid_client_metadata"),
    ("scope with a forbidden character", {**WEB, "scope": 'read "x'}, "invalid_client_metadata"),
    ("scope not a string", {**WEB, "scope": ["read"]}, "invalid_client_metadata"),
    (
        "jwks and jwks_uri together",
        {**WEB, "jwks": {"keys": []}, "jwks_uri": "https://a.example/j"},
        "invalid_client_metadata",
    ),
    ("jwks_uri", {**WEB, "jwks_uri": "https://a.example/jwks"}, "invalid_client_metadata"),
    (
        "private_key_jwt without keys",
        {**WEB, "token_endpoint_auth_method": "private_key_jwt"},
        "invalid_client_metadata",
    ),
    (
        "jwks that is no key set",
        {**WEB, "jwks": {"keys": [{"kty": "oct", "k": "AAAA"}]}},
        "invalid_client_metadata",
    ),
    (
        "client_uri not https",
        {**WEB, "client_uri": "javascript:alert(1)"},
        "invalid_client_metadata",
    ),
    ("logo_uri not a URL", {**WEB, "logo_uri": 42}, "invalid_client_metadata"),
    ("client_name too long", {**WEB, "client_name": "x" * 201}, "invalid_client_metadata"),
    (
        "client_name with control characters",
        {**WEB, "client_name": "a\u0000b"},
        "invalid_client_metadata",
    ),
    ("contacts not a list", {**WEB, "contacts": "ops@a.example"}, "invalid_client_metadata"),
    (
        "software statement not a JWT",
        {**WEB, "software_statement": "nonsense"},
        "invalid_software_statement",
    ),
    (
        "software statement not a string",
        {**WEB, "software_statement": {"iss": "x"}},
        "invalid_software_statement",
    ),
    (
        "software statement not approved",
        {**WEB, "software_statement": "eyJhbGciOiJSUzI1NiJ9.eyJzb2Z0d2FyZV9pZCI6IngifQ.c2ln"},
        "unapproved_software_statement",
    ),
]


class TestMetadataValidation:
    @pytest.mark.parametrize(
        ("body", "error"), [(b, e) for _, b, e in BAD_METADATA], ids=[n for n, _, _ in BAD_METADATA]
    )
    async def test_refused_with_its_rfc7591_error(
        self, reg: httpx.AsyncClient, iat: str, store: SQLiteStore, body: Any, error: str
    ) -> None:
        """RFC 7591 §2 and §3.2.2: each invalid field gets its error code, 400, nothing stored."""
        r = await register(reg, body, iat)
        assert_error(r, 400, error)
        assert r.json()["error_description"]
        assert await store.list_registrations() == []

    async def test_body_must_be_json(self, reg: httpx.AsyncClient, iat: str) -> None:
        """RFC 7591 §3.1: the request is application/json; anything else is refused."""
        r = await reg.post(
            REGISTER, content=b"{nope", headers={**bearer(iat), "content-type": "application/json"}
        )
        assert_error(r, 400, "invalid_client_metadata")
        r = await reg.post(REGISTER, data={"redirect_uris": "x"}, headers=bearer(iat))
        assert_error(r, 400, "invalid_client_metadata")

    async def test_body_size_is_bounded(self, reg: httpx.AsyncClient, iat: str) -> None:
        """A body over max_body_bytes is refused with 413, not parsed."""
        r = await register(reg, {**WEB, "client_name": "x", "pad": "y" * 20000}, iat)
        assert r.status_code == 413

    async def test_omitted_scope_is_the_ceiling(self, reg: httpx.AsyncClient, iat: str) -> None:
        """RFC 7591 §2: without scope the client gets the configured default (the ceiling)."""
        r = await register(reg, WEB, iat)
        assert r.json()["scope"] == "read write"


class TestOpenPolicy:
    async def test_public_client_with_https_and_loopback(self, make_http: MakeHttp) -> None:
        """Open registration: no token needed, public clients with https or loopback http
        redirect URIs (RFC 8252 §7.3); no secret is issued."""
        http = await make_http(registration="open")
        body = {
            "redirect_uris": ["https://app.example.test/cb", "http://127.0.0.1:8123/cb"],
            "token_endpoint_auth_method": "none",
        }
        r = await register(http, body)
        assert r.status_code == 201, r.text
        assert "client_secret" not in r.json()
        assert r.json()["grant_types"] == ["authorization_code"]

    @pytest.mark.parametrize(
        ("body", "error"),
        [
            ({**WEB}, "invalid_client_metadata"),  # client_secret_basic by default
            (
                {**WEB, "token_endpoint_auth_method": "client_secret_post"},
                "invalid_client_metadata",
            ),
            (
                {
                    "redirect_uris": ["http://app.example.test/cb"],
                    "token_endpoint_auth_method": "none",
                },
                "invalid_redirect_uri",
            ),
            (
                {"redirect_uris": ["com.example.app:/cb"], "token_endpoint_auth_method": "none"},
                "invalid_redirect_uri",
            ),
        ],
        ids=["default-confidential", "client_secret_post", "remote-http", "private-use-scheme"],
    )
    async def test_open_refusals(self, make_http: MakeHttp, body: Any, error: str) -> None:
        """Open registration refuses confidential clients and redirect URIs nobody vouches for."""
        http = await make_http(registration="open")
        assert_error(await register(http, body), 400, error)

    async def test_cap_and_expiry_of_unused_registrations(
        self, make_http: MakeHttp, clock: FixedClock, store: SQLiteStore
    ) -> None:
        """At the cap, open registration is refused (403); clients never used expire after
        registration_open_unused_ttl, freeing room."""
        http = await make_http(
            registration="open", registration_open_max=2, registration_open_unused_ttl=3600
        )
        public = {**WEB, "token_endpoint_auth_method": "none"}
        first = (await register(http, public)).json()["client_id"]
        clock.advance(1800)
        assert (await register(http, public)).status_code == 201
        assert_error(await register(http, public), 403, "access_denied")
        clock.advance(1801)  # the first is now unused past its time; the second is not
        assert (await register(http, public)).status_code == 201
        assert await store.get_client(first) is None
        assert len(await store.list_registrations()) == 2

    async def test_rate_limit_per_address(self, make_http: MakeHttp, clock: FixedClock) -> None:
        """Registration attempts are limited per address per window (429 + Retry-After);
        other addresses are unaffected, and the window ends."""
        settings = {
            "registration": "open",
            "registration_rate_limit": 2,
            "registration_rate_window": 60,
        }
        http = await make_http("198.51.100.1", **settings)
        public = {**WEB, "token_endpoint_auth_method": "none"}
        assert (await register(http, public)).status_code == 201
        assert (await register(http, {"redirect_uris": 1})).status_code == 400  # counts too
        r = await register(http, public)
        assert_error(r, 429, "too_many_requests")
        assert 1 <= int(r.headers["retry-after"]) <= 60
        # Same app, another address: the app is one process, its counter is per address.
        other = httpx.AsyncClient(
            transport=httpx.ASGITransport(app=http._transport.app, client=("198.51.100.2", 1)),  # type: ignore[attr-defined]
            base_url=ISSUER,
        )
        async with other:
            assert (await register(other, public)).status_code == 201
        clock.advance(60)
        assert (await register(http, public)).status_code == 201


class TestClientConfigurationEndpoint:
    @pytest.fixture
    async def registered(self, reg: httpx.AsyncClient, iat: str) -> dict[str, Any]:
        r = await register(
            reg, {**WEB, "grant_types": ["authorization_code", "client_credentials"]}, iat
        )
        assert r.status_code == 201, r.text
        return dict(r.json())

    async def test_read(self, reg: httpx.AsyncClient, registered: dict[str, Any]) -> None:
        """RFC 7592 §2.1, §3: GET with the registration access token returns the client's
        information, without the secret (only its hash is kept)."""
        r = await reg.get(
            registered["registration_client_uri"],
            headers=bearer(registered["registration_access_token"]),
        )
        assert r.status_code == 200, r.text
        assert r.headers["cache-control"] == "no-store"
        got = r.json()
        assert "client_secret" not in got
        expected = {
            k: v
            for k, v in registered.items()
            if k not in ("client_secret", "client_secret_expires_at")
        }
        assert got == expected

    @pytest.mark.parametrize("method", ["GET", "PUT", "DELETE"])
    async def test_wrong_token_is_401(
        self,
        reg: httpx.AsyncClient,
        iat: str,
        registered: dict[str, Any],
        method: str,
        store: SQLiteStore,
    ) -> None:
        """RFC 7592 §2: a missing or wrong registration access token, another client's, or an
        unknown client id all answer 401 invalid_token and change nothing."""
        uri = registered["registration_client_uri"]
        other = (await register(reg, WEB, iat)).json()
        for headers, target in [
            ({}, uri),
            (bearer("ks_ra_" + "A" * 49), uri),
            (bearer(other["registration_access_token"]), uri),
            (bearer(registered["client_secret"]), uri),
            (bearer(registered["registration_access_token"]), f"{ISSUER}{REGISTER}/dcr_unknown"),
        ]:
            r = await reg.request(
                method, target, headers=headers, json={**WEB, "client_id": registered["client_id"]}
            )
            assert_error(r, 401, "invalid_token")
            assert r.headers["www-authenticate"].startswith("Bearer")
        assert await store.get_client(registered["client_id"]) is not None

    async def test_update(
        self, reg: httpx.AsyncClient, registered: dict[str, Any], store: SQLiteStore
    ) -> None:
        """RFC 7592 §2.2: PUT replaces the metadata; the answer and the stored client agree."""
        body = {
            "client_id": registered["client_id"],
            "client_secret": registered["client_secret"],
            "redirect_uris": ["https://app.example.test/new"],
            "grant_types": ["authorization_code"],
            "client_name": "Renamed",
            "scope": "write",
        }
        r = await reg.put(
            registered["registration_client_uri"],
            json=body,
            headers=bearer(registered["registration_access_token"]),
        )
        assert r.status_code == 200, r.text
        got = r.json()
        assert got["redirect_uris"] == ["https://app.example.test/new"]
        assert got["client_name"] == "Renamed"
        assert "client_uri" not in got  # omitted fields are removed
        client = await store.get_client(registered["client_id"])
        assert client is not None
        assert client.redirect_uris == ("https://app.example.test/new",)
        assert client.name == "Renamed"
        assert client.scopes == frozenset({"write"})
        assert client.grant_types == frozenset({"authorization_code"})
        again = await reg.get(
            registered["registration_client_uri"],
            headers=bearer(registered["registration_access_token"]),
        )
        assert again.json() == got

    @pytest.mark.parametrize(
        ("change", "error"),
        [
            ({"client_id": "dcr_other"}, "invalid_request"),
            ({"client_id": None}, "invalid_request"),
            ({"registration_access_token": "x"}, "invalid_request"),
            ({"client_id_issued_at": 1}, "invalid_request"),
            ({"client_secret": "ks_cs_wrong"}, "invalid_request"),
            ({"token_endpoint_auth_method": "client_secret_post"}, "invalid_client_metadata"),
            ({"redirect_uris": ["http://evil.example/cb"]}, "invalid_redirect_uri"),
            ({"scope": "admin"}, "invalid_client_metadata"),
        ],
    )
    async def test_update_refusals(
        self,
        reg: httpx.AsyncClient,
        registered: dict[str, Any],
        store: SQLiteStore,
        change: dict[str, Any],
        error: str,
    ) -> None:
        """RFC 7592 §2.2: client_id must match, server-set fields and a wrong secret are
        refused, and the metadata rules of RFC 7591 apply; the client stays as it was."""
        body = {**WEB, "client_id": registered["client_id"], **change}
        body = {k: v for k, v in body.items() if v is not None}
        r = await reg.put(
            registered["registration_client_uri"],
            json=body,
            headers=bearer(registered["registration_access_token"]),
        )
        assert_error(r, 400, error)
        client = await store.get_client(registered["client_id"])
        assert client is not None
        assert client.redirect_uris == ("https://app.example.test/cb",)

    async def test_delete_revokes_tokens(
        self,
        reg: httpx.AsyncClient,
        registered: dict[str, Any],
        store: SQLiteStore,
        register_client: Any,
        register_resource: Any,
    ) -> None:
        """RFC 7592 §2.3: DELETE answers 204; the client is gone, its tokens revoked, and
        its registration access token no longer works."""
        rs = await register_client("rs-1", grant_types=[], scopes=[])
        await register_resource(API, ["rs-1"])
        auth = (registered["client_id"], registered["client_secret"])
        token = (
            await reg.post(TOKEN, data={"grant_type": "client_credentials"}, auth=auth)
        ).json()["access_token"]
        headers = bearer(registered["registration_access_token"])
        r = await reg.delete(registered["registration_client_uri"], headers=headers)
        assert r.status_code == 204
        assert r.content == b""
        assert await store.get_client(registered["client_id"]) is None
        assert await store.get_registration(registered["client_id"]) is None
        assert (await reg.post(INTROSPECT, data={"token": token}, auth=rs.auth)).json() == {
            "active": False
        }
        assert_error(
            await reg.get(registered["registration_client_uri"], headers=headers),
            401,
            "invalid_token",
        )

    async def test_operator_disables_a_registered_client(
        self,
        reg: httpx.AsyncClient,
        registered: dict[str, Any],
        store: SQLiteStore,
        clock: FixedClock,
    ) -> None:
        """An operator disables a registered client like any other: it gets no tokens, and
        it cannot manage (or re-enable) itself."""
        await store.set_client_enabled(registered["client_id"], False, clock.now())
        auth = (registered["client_id"], registered["client_secret"])
        t = await reg.post(TOKEN, data={"grant_type": "client_credentials"}, auth=auth)
        assert t.status_code == 401
        headers = bearer(registered["registration_access_token"])
        assert_error(
            await reg.get(registered["registration_client_uri"], headers=headers),
            401,
            "invalid_token",
        )
        client = await admin.get_client(store, registered["client_id"])
        assert client.enabled is False

    async def test_method_not_allowed(
        self, reg: httpx.AsyncClient, registered: dict[str, Any]
    ) -> None:
        """Only POST registers; only GET, PUT and DELETE manage."""
        assert (await reg.get(REGISTER)).status_code == 405
        r = await reg.post(registered["registration_client_uri"], json={})
        assert r.status_code == 405


def test_bad_metadata_table_names_are_unique() -> None:
    """Each validation case is its own test id."""
    names = [n for n, _, _ in BAD_METADATA]
    assert len(names) == len(set(names))
    json.dumps([b for _, b, _ in BAD_METADATA])


async def test_periodic_purge_expires_unused_open_registrations(
    db_path: Any, store: SQLiteStore, clock: FixedClock
) -> None:
    """The purge task deletes open registrations never used past their time, without
    waiting for another registration to do it."""
    import asyncio

    settings = ServerSettings(
        db=str(db_path),
        issuer=ISSUER,
        purge_interval=1,
        registration="open",
        registration_open_unused_ttl=60,
    )
    app = create_app(settings, store=store, clock=clock)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url=ISSUER) as http:
        r = await register(http, {**WEB, "token_endpoint_auth_method": "none"})
        assert r.status_code == 201, r.text
    client_id = r.json()["client_id"]
    clock.advance(61)
    # The in-process client runs no lifespan: run it by hand, with its purge task.
    async with app._fallback.router.lifespan_context(app._fallback):
        for _ in range(50):  # the first purge runs after one second
            if await store.get_client(client_id) is None:
                break
            await asyncio.sleep(0.1)
    assert await store.get_client(client_id) is None
    assert await store.list_registrations() == []
