"""Client ID metadata documents (draft-ietf-oauth-client-id-metadata-document): the fetcher
against a real HTTPS server on loopback, and the code flow of a client known only by its
document, over HTTP against the real app and a real SQLite file."""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from keystile import admin, registration_admin
from keystile.clock import FixedClock
from keystile.server.app import KeystileApp, create_app
from keystile.server.client_metadata import DocumentFetcher, DocumentUnavailable
from keystile.settings import ServerSettings
from keystile.store.postgres import PostgresStore
from keystile.store.sqlite import SQLiteStore
from tests.conftest import API, ISSUER, TOKEN
from tests.server.document_server import Answer, DocumentServer, Pki, make_pki
from tests.server.jwt_support import ClientKey, assertion_form
from tests.server.test_authorize import (
    AUTHORIZE,
    CHALLENGE,
    PASSWORD,
    USERNAME,
    VERIFIER,
    decide,
    hidden,
    location,
)

REDIRECT = "http://127.0.0.1:33418/callback"
METADATA = "/.well-known/oauth-authorization-server"


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("cimd-pki"))


@pytest.fixture
async def docs(pki: Pki) -> AsyncIterator[DocumentServer]:
    server = DocumentServer(pki)
    await server.start()
    yield server
    await server.stop()


def fetcher(pki: Pki, **changes: object) -> DocumentFetcher:
    options: dict[str, object] = {
        "max_bytes": 5120,
        "timeout": 2.0,
        "min_ttl": 60,
        "max_ttl": 3600,
        "allow_private": True,  # the server is on loopback (development setting)
        "verify": ssl.create_default_context(cafile=str(pki.ca)),
    }
    options.update(changes)
    return DocumentFetcher(**options)  # type: ignore[arg-type]


class TestFetcher:
    async def test_valid_document(self, docs, pki):
        """A document served with 200 and JSON is fetched over TLS to the checked address,
        with SNI and Host naming the URL's host (the address is pinned, the name verified)."""
        url = docs.document("/client.json", cache_control="max-age=600")
        got = await fetcher(pki).fetch(url)
        assert got.body["client_id"] == url
        assert got.ttl == 600
        assert got.address == "127.0.0.1"
        assert docs.sni == ["localhost"]
        assert docs.hosts == [f"localhost:{docs.port}"]

    async def test_private_address_refused_without_dev_setting(self, docs, pki):
        """Draft §8.6: a host resolving to a special-use address (here loopback) is refused
        before any connection is made."""
        url = docs.document("/client.json")
        with pytest.raises(DocumentUnavailable, match="special-use"):
            await fetcher(pki, allow_private=False).fetch(url)
        with pytest.raises(DocumentUnavailable, match="special-use"):
            await fetcher(pki, allow_private=False).fetch(docs.url("/client.json", "127.0.0.1"))
        assert docs.hits["/client.json"] == 0

    async def test_rebinding_is_pinned(self, docs, pki):
        """The name is resolved once: the connection goes to the address that was checked,
        whatever a second lookup would say (no DNS rebinding window)."""
        url = docs.document("/client.json")
        lookups: list[str] = []

        async def resolve(host: str, port: int) -> list[object]:
            import ipaddress

            lookups.append(host)
            return [ipaddress.ip_address("127.0.0.1")]

        got = await fetcher(pki, resolve=resolve).fetch(url)
        assert got.address == "127.0.0.1"
        assert lookups == ["localhost"]

    async def test_untrusted_certificate(self, docs, pki):
        """The certificate must verify for the URL's host (here: signed by an unknown CA)."""
        url = docs.document("/client.json")
        with pytest.raises(DocumentUnavailable, match="certificate not trusted"):
            await fetcher(pki, verify=ssl.create_default_context()).fetch(url)

    async def test_oversized_with_content_length(self, docs, pki):
        """Draft §8.7: a document over the limit is refused (declared length)."""
        url = docs.document("/big.json", padding="x" * 6000)
        with pytest.raises(DocumentUnavailable, match="larger than 5120 bytes"):
            await fetcher(pki).fetch(url)

    async def test_oversized_chunked(self, docs, pki):
        """Draft §8.7: without a declared length, reading stops past the limit."""
        url = docs.document("/big.json", padding="x" * 60000)
        docs.answers["/big.json"].chunked = True
        with pytest.raises(DocumentUnavailable, match="larger than 5120 bytes"):
            await fetcher(pki).fetch(url)

    async def test_slow(self, docs, pki):
        """A server slower than the total timeout fails the fetch."""
        url = docs.document("/slow.json")
        docs.answers["/slow.json"].delay = 3
        with pytest.raises(DocumentUnavailable, match=r"longer than 0\.5 s"):
            await fetcher(pki, timeout=0.5).fetch(url)

    @pytest.mark.parametrize(
        "target",
        ["https://127.0.0.1:{port}/client.json", "https://clients.example.com/client.json"],
        ids=["to-private", "to-other"],
    )
    async def test_redirect_not_followed(self, docs, pki, target):
        """Draft §5: redirects are never followed, to a private address or elsewhere."""
        docs.document("/client.json")
        location = target.format(port=docs.port)
        docs.answers["/moved"] = Answer(302, b"", {"Location": location})
        with pytest.raises(DocumentUnavailable, match="redirect"):
            await fetcher(pki).fetch(docs.url("/moved"))
        assert docs.hits["/client.json"] == 0

    async def test_compressed_refused(self, docs, pki):
        """The document is asked for and read uncompressed, so the byte limit is what is
        parsed; a compressed answer is refused."""
        url = docs.document("/client.json")
        docs.answers["/client.json"].headers["Content-Encoding"] = "gzip"
        with pytest.raises(DocumentUnavailable, match="compressed"):
            await fetcher(pki).fetch(url)

    async def test_not_200(self, docs, pki):
        """Draft §5: any status but 200 is an error."""
        with pytest.raises(DocumentUnavailable, match="answered 404"):
            await fetcher(pki).fetch(docs.url("/missing.json"))

    async def test_not_json(self, docs, pki):
        """Draft §4: the document is JSON, served as such."""
        docs.answers["/page"] = Answer(200, b"<html>", {"Content-Type": "text/html"})
        with pytest.raises(DocumentUnavailable, match="not served as JSON"):
            await fetcher(pki).fetch(docs.url("/page"))
        docs.answers["/bad"] = Answer(200, b"{nope", {"Content-Type": "application/json"})
        with pytest.raises(DocumentUnavailable, match="not valid JSON"):
            await fetcher(pki).fetch(docs.url("/bad"))

    @pytest.mark.parametrize(
        ("url", "reason"),
        [
            ("https://localhost/", "path"),
            ("https://user:pw@localhost/c.json", "user information"),
            ("https://localhost/a/../c.json", r"\. or \.\."),
            ("https://localhost/a/%2E/c.json", r"\. or \.\."),
            ("http://localhost/c.json", "https"),
        ],
    )
    async def test_bad_client_id_url(self, pki, url, reason):
        """Draft §3: the URL rules are checked before anything is resolved."""
        with pytest.raises(DocumentUnavailable, match=reason):
            await fetcher(pki).fetch(url)


# -- the app: a client known by its document -------------------------------------------------


@pytest.fixture
def settings(db_path: Path, pki: Pki) -> ServerSettings:
    return ServerSettings(
        db=str(db_path),
        issuer=ISSUER,
        purge_interval=0,
        access_log=False,
        registration_scopes=["read", "write"],
        registration_audience=[API],
        client_metadata_documents=True,
        client_metadata_documents_allow_private=True,
        client_metadata_documents_ca_file=pki.ca,
        client_metadata_documents_min_ttl=60,
        client_metadata_documents_max_ttl=3600,
    )


@pytest.fixture
async def user(store: SQLiteStore, clock: FixedClock) -> None:
    await admin.create_user(store, clock, username=USERNAME, password=PASSWORD)


def authorize_params(client_id: str, **changes: str) -> dict[str, str]:
    return {
        "response_type": "code",
        "client_id": client_id,
        "redirect_uri": REDIRECT,
        "scope": "read",
        "state": "s1",
        "code_challenge": CHALLENGE,
        "code_challenge_method": "S256",
        **changes,
    }


async def code_flow(
    http: httpx.AsyncClient, client_id: str, auth: dict[str, str] | None = None
) -> httpx.Response:
    """Authorize, sign in, allow, redeem the code with PKCE (as a public client, or with
    the ``auth`` form fields); the token response."""
    page = await http.get(AUTHORIZE, params=authorize_params(client_id))
    assert page.status_code == 200, page.text
    if 'action="/login"' in page.text:  # not signed in yet
        r = await http.post(
            "/login", data={**hidden(page.text), "username": USERNAME, "password": PASSWORD}
        )
        assert r.status_code == 303, r.text
        page = await http.get(r.headers["location"])
    assert "Example MCP Client" in page.text
    # draft §8.5: the host the client lives at is shown next to the name it gives itself.
    assert "published at <strong>localhost</strong>" in page.text
    r = await decide(http, page, "allow")
    assert r.status_code == 303, r.text
    target, query = location(r)
    assert target == REDIRECT
    return await http.post(
        TOKEN,
        data={
            "grant_type": "authorization_code",
            "code": query["code"][0],
            "redirect_uri": REDIRECT,
            "code_verifier": VERIFIER,
            **(auth if auth is not None else {"client_id": client_id}),
        },
    )


class TestAppWithDocuments:
    async def test_metadata_advertises_support(self, http):
        """Draft §6: the AS metadata says client_id_metadata_document_supported."""
        r = await http.get(METADATA)
        assert r.json()["client_id_metadata_document_supported"] is True

    async def test_full_code_flow(self, http, docs, user, store, setup, caplog):
        """A client known only by its document runs the code flow with PKCE as a public
        client; its token names the URL as client_id and introspects active; it is listed
        as known by a metadata document; the document was fetched once (max-age), and the
        fetch logged (what and from where) and counted."""
        url = docs.document("/client.json", cache_control="max-age=600", scope="read")
        with caplog.at_level(logging.INFO, logger="keystile.server"):
            r = await code_flow(http, url)
        (fetched,) = [r for r in caplog.records if r.msg == "client metadata document fetched"]
        assert (fetched.client_id, fetched.host, fetched.address) == (url, "localhost", "127.0.0.1")
        assert (fetched.ttl, fetched.token_endpoint_auth_method) == (600, "none")
        assert 0 < fetched.bytes < 5120
        assert r.status_code == 200, r.text
        tokens = r.json()
        assert tokens["scope"] == "read"
        assert "refresh_token" in tokens
        r = await http.post(
            "/oauth2/introspect", data={"token": tokens["access_token"]}, auth=setup.rs.auth
        )
        assert r.json()["active"] is True
        assert r.json()["client_id"] == url
        assert await registration_admin.registration_methods(store) == {url: "metadata-document"}
        client = await store.get_client(url)
        assert client is not None
        assert client.is_public
        assert client.redirect_uris == (REDIRECT,)
        # authorize, login, consent and token steps all used the one fetch
        assert docs.hits["/client.json"] == 1
        metrics = (await http.get("/metrics")).text
        assert 'keystile_client_metadata_documents_total{result="ok"} 1.0' in metrics

    async def test_private_key_jwt_client(self, http, docs, user, clock):
        """Draft §8.2: a document naming private_key_jwt with jwks makes a client that must
        authenticate with an assertion signed by one of those keys (RFC 7523 §2.2); naming
        itself without one is refused."""
        key, other = ClientKey(), ClientKey()
        url = docs.document(
            "/client.json",
            cache_control="max-age=600",
            token_endpoint_auth_method="private_key_jwt",
            jwks={"keys": [key.public_jwk]},
        )
        r = await code_flow(http, url, {"client_id": url})
        assert r.status_code == 401, r.text
        forged = other.assertion(url, aud=ISSUER, now=clock.now())
        r = await code_flow(http, url, assertion_form(forged))
        assert r.status_code == 401, r.text
        signed = key.assertion(url, aud=ISSUER, now=clock.now())
        r = await code_flow(http, url, assertion_form(signed))
        assert r.status_code == 200, r.text
        assert docs.hits["/client.json"] == 1

    async def test_cache_headers_honoured(self, http, docs, user, clock):
        """Draft §5.2: a second flow within max-age fetches nothing; after it, the document
        is fetched again."""
        url = docs.document("/client.json", cache_control="public, max-age=600")
        assert (await code_flow(http, url)).status_code == 200
        assert (await code_flow(http, url)).status_code == 200
        assert docs.hits["/client.json"] == 1
        clock.advance(601)
        assert (await code_flow(http, url)).status_code == 200
        assert docs.hits["/client.json"] == 2

    async def test_no_store_uses_lower_bound(self, http, docs, user, clock):
        """no-store is held to client_metadata_documents_min_ttl (60 s) so one flow does
        not fetch at every step; past it, the next request fetches again."""
        url = docs.document("/client.json", cache_control="no-store")
        assert (await code_flow(http, url)).status_code == 200
        assert docs.hits["/client.json"] == 1
        clock.advance(61)
        r = await http.get(AUTHORIZE, params=authorize_params(url))
        assert r.status_code == 200
        assert docs.hits["/client.json"] == 2

    @pytest.mark.parametrize(
        ("fields", "reason"),
        [
            ({"client_id": "https://localhost/other.json"}, "client_id must equal its URL"),
            ({"redirect_uris": ["https://evil.example/cb#x"]}, "redirect URI"),
            ({"token_endpoint_auth_method": "client_secret_basic"}, "shared secret"),
            ({"client_secret": "s3cret"}, "client_secret must not appear"),
            ({"grant_types": ["client_credentials"]}, "authorization_code"),
            ({"scope": "admin"}, "scope beyond"),
            ({"software_statement": "a.b.c"}, "software statements"),
        ],
        ids=[
            "wrong-client-id",
            "bad-redirect",
            "secret-method",
            "secret",
            "grant",
            "scope",
            "software-statement",
        ],
    )
    async def test_bad_document_refused(self, http, docs, fields, reason, caplog):
        """Draft §4, §4.1 and the registration rules: a bad document stops the request on
        an error page (no redirect), is logged with its reason, and is not cached (§5.2):
        the next request fetches again."""
        url = docs.document("/client.json", cache_control="max-age=600", **fields)
        with caplog.at_level(logging.WARNING, logger="keystile.server"):
            r = await http.get(AUTHORIZE, params=authorize_params(url))
        assert r.status_code == 400
        assert "location" not in r.headers
        assert "metadata document cannot be used" in r.text
        assert any(reason.split()[0] in getattr(rec, "reason", "") for rec in caplog.records)
        await http.get(AUTHORIZE, params=authorize_params(url))
        assert docs.hits["/client.json"] == 2

    async def test_unknown_redirect_uri_refused(self, http, docs):
        """Draft §4.2: only the document's redirect URIs, matched exactly."""
        url = docs.document("/client.json")
        r = await http.get(
            AUTHORIZE, params=authorize_params(url, redirect_uri="http://127.0.0.1:9/x")
        )
        assert r.status_code == 400
        assert "location" not in r.headers

    async def test_pkce_required(self, http, docs):
        """Such a client is public: without PKCE the request goes back with an error."""
        url = docs.document("/client.json")
        params = authorize_params(url)
        del params["code_challenge"]
        r = await http.get(AUTHORIZE, params=params)
        assert r.status_code in (302, 303)
        assert "error=invalid_request" in r.headers["location"]

    async def test_disabled_by_operator_is_not_fetched(self, http, docs, user, store, clock):
        """`keystile client disable <url>` blocks the client for good: refused, and its
        document is never fetched again."""
        url = docs.document("/client.json", cache_control="max-age=0")
        assert (await code_flow(http, url)).status_code == 200
        await store.set_client_enabled(url, False, clock.now())
        clock.advance(3600)
        r = await http.get(AUTHORIZE, params=authorize_params(url))
        assert r.status_code == 400
        assert "unknown or disabled client" in r.text
        assert docs.hits["/client.json"] == 1

    async def test_token_endpoint_refuses_failed_document(self, http, docs, user, clock):
        """Draft §5.1: a refresh after the document went away (fetched again once stale)
        is refused with invalid_client."""
        url = docs.document("/client.json", cache_control="max-age=60")
        tokens = (await code_flow(http, url)).json()
        del docs.answers["/client.json"]
        clock.advance(61)
        r = await http.post(
            TOKEN,
            data={
                "grant_type": "refresh_token",
                "refresh_token": tokens["refresh_token"],
                "client_id": url,
            },
        )
        assert r.status_code == 401
        assert r.json()["error"] == "invalid_client"
        assert "answered 404" in r.json()["error_description"]

    async def test_concurrent_requests_share_one_fetch(self, http, docs):
        """Concurrent authorization requests naming one URL make one fetch."""
        url = docs.document("/client.json", cache_control="max-age=600")
        docs.answers["/client.json"].delay = 0.3
        pages = await asyncio.gather(
            *(http.get(AUTHORIZE, params=authorize_params(url)) for _ in range(5))
        )
        assert [p.status_code for p in pages] == [200] * 5
        assert docs.hits["/client.json"] == 1

    async def test_unused_clients_are_forgotten(self, http, docs, user, store, clock):
        """A client known by its document that never got a token is forgotten after
        client_metadata_documents_unused_ttl (so strangers' documents cannot fill the
        store); used and disabled ones stay."""
        unused, used, blocked = (
            docs.document(f"/{name}.json") for name in ("unused", "used", "blocked")
        )
        assert (await http.get(AUTHORIZE, params=authorize_params(unused))).status_code == 200
        assert (await http.get(AUTHORIZE, params=authorize_params(blocked))).status_code == 200
        await store.set_client_enabled(blocked, False, clock.now())
        assert (await code_flow(http, used)).status_code == 200
        clock.advance(86401)
        fresh = docs.document("/fresh.json")
        assert (await http.get(AUTHORIZE, params=authorize_params(fresh))).status_code == 200
        methods = await registration_admin.registration_methods(store)
        assert sorted(methods) == sorted([used, blocked, fresh])

    async def test_turned_off_later(self, http, docs, user, db_path, store, clock):
        """Clients known by their documents stop working when the feature is turned off."""
        url = docs.document("/client.json", cache_control="max-age=600")
        assert (await code_flow(http, url)).status_code == 200
        app = create_app(
            ServerSettings(db=str(db_path), issuer=ISSUER, purge_interval=0),
            store=store,
            clock=clock,
        )
        async with _client(app) as off:
            r = await off.get(AUTHORIZE, params=authorize_params(url))
        assert "unknown or disabled client" in r.text


class TestOnPostgres:
    """The same client, kept in the PostgreSQL store."""

    @pytest.fixture
    def settings(self, pg_url: str, pki: Pki) -> ServerSettings:
        return ServerSettings(
            db=pg_url,
            issuer=ISSUER,
            purge_interval=0,
            registration_scopes=["read"],
            client_metadata_documents=True,
            client_metadata_documents_allow_private=True,
            client_metadata_documents_ca_file=pki.ca,
        )

    @pytest.fixture
    async def store(self, pg_url: str) -> AsyncIterator[PostgresStore]:
        s = PostgresStore(pg_url)
        await s.open()
        yield s
        await s.close()

    async def test_code_flow(self, http, docs, user, store, clock):
        """Flow, listing and a changed document (fetched again once stale) on PostgreSQL."""
        url = docs.document("/client.json", cache_control="max-age=60")
        assert (await code_flow(http, url)).status_code == 200
        assert await registration_admin.registration_methods(store) == {url: "metadata-document"}
        other = "http://127.0.0.1:40000/cb"
        docs.document("/client.json", redirect_uris=[REDIRECT, other])
        clock.advance(61)
        r = await http.get(AUTHORIZE, params=authorize_params(url, redirect_uri=other))
        assert r.status_code == 200, r.text
        client = await store.get_client(url)
        assert client is not None
        assert client.redirect_uris == (REDIRECT, other)


class TestSettings:
    @pytest.fixture
    def settings(self, db_path: Path, pki: Pki) -> ServerSettings:
        return ServerSettings(
            db=str(db_path),
            issuer=ISSUER,
            purge_interval=0,
            client_metadata_documents=True,
            client_metadata_documents_allow_private=True,
            client_metadata_documents_ca_file=pki.ca,
            client_metadata_documents_blocked_hosts=["*.blocked.example", "localhost"],
        )

    async def test_blocked_host(self, http, docs):
        """Draft §8.9: a blocked host is refused before any fetch."""
        url = docs.document("/client.json")
        r = await http.get(AUTHORIZE, params=authorize_params(url))
        assert r.status_code == 400
        assert "not accepted here" in r.text
        assert docs.hits["/client.json"] == 0

    async def test_allow_list(self, db_path, pki, store, clock, docs):
        """With an allow-list, any other host is refused before any fetch."""
        settings = ServerSettings(
            db=str(db_path),
            issuer=ISSUER,
            purge_interval=0,
            client_metadata_documents=True,
            client_metadata_documents_allow_private=True,
            client_metadata_documents_ca_file=pki.ca,
            client_metadata_documents_allowed_hosts=["*.example.com"],
        )
        app = create_app(settings, store=store, clock=clock)
        url = docs.document("/client.json")
        async with _client(app) as http:
            r = await http.get(AUTHORIZE, params=authorize_params(url))
        assert "not accepted here" in r.text
        assert docs.hits["/client.json"] == 0

    async def test_off_by_default(self, db_path, store, clock, docs):
        """Off by default: an https client_id is an unknown client, nothing is fetched, and
        the metadata does not advertise support."""
        app = create_app(
            ServerSettings(db=str(db_path), issuer=ISSUER, purge_interval=0),
            store=store,
            clock=clock,
        )
        url = docs.document("/client.json")
        async with _client(app) as http:
            r = await http.get(AUTHORIZE, params=authorize_params(url))
            assert "unknown or disabled client" in r.text
            meta = (await http.get(METADATA)).json()
        assert "client_id_metadata_document_supported" not in meta
        assert docs.hits["/client.json"] == 0


def _client(app: KeystileApp) -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=app, client=("203.0.113.7", 40000))
    return httpx.AsyncClient(transport=transport, base_url=ISSUER)


def test_settings_min_ttl_not_above_max(tmp_path: Path) -> None:
    """The cache bounds must be in order."""
    from keystile.errors import ConfigurationError

    with pytest.raises(ConfigurationError, match="min_ttl must not exceed"):
        ServerSettings.load(
            None,
            db=str(tmp_path / "k.db"),
            client_metadata_documents_min_ttl=600,
            client_metadata_documents_max_ttl=60,
        )
