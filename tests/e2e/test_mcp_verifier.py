"""keystile.resource.mcp against a real keystile AS process: the mcp SDK's AccessToken from
an introspection answer, the RFC 8707 audience check, the cache, revocation events, 503 when
the AS cannot answer, and what a FastMCP app built on the verifier answers."""

from __future__ import annotations

import asyncio
import importlib
import sys
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest
from mcp.server.auth.settings import AuthSettings
from mcp.server.fastmcp import FastMCP

from keystile.errors import IntrospectionUnavailable
from keystile.resource import TokenValidator
from keystile.resource.mcp import KeystileTokenVerifier
from tests.e2e.conftest import DEMO_AUDIENCE, DemoServer, ServerStarter, free_port, parse_demo
from tests.e2e.sdk_support import introspections_on_as

pytestmark = pytest.mark.process

ORIGIN = "http://127.0.0.1:8001"  # only in-process requests: nothing listens there
MCP_URL = ORIGIN + "/mcp"


@pytest.fixture(scope="module")
def shared_as(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DemoServer]:
    """One AS process for the module's tests (each test uses its own tokens)."""
    starter = ServerStarter(tmp_path_factory.mktemp("as"))
    server = starter("--log-level", "warning")
    yield DemoServer(server, parse_demo(server.stdout))
    starter.stop_all()


def validator_for(d: DemoServer, **kwargs: Any) -> TokenValidator:
    """The demo resource server's credentials (it sees tokens for DEMO_AUDIENCE)."""
    return TokenValidator(
        issuer=d.server.url, client_id=d.demo.rs.client_id, client_secret=d.demo.rs.secret, **kwargs
    )


@pytest.fixture
async def verifier(shared_as: DemoServer) -> AsyncIterator[KeystileTokenVerifier]:
    """A started verifier for DEMO_AUDIENCE, following the AS's event stream."""
    async with KeystileTokenVerifier(validator_for(shared_as), resource=DEMO_AUDIENCE) as v:
        yield v


class TestVerifyToken:
    async def test_active_token_maps_to_access_token(
        self, shared_as: DemoServer, verifier: KeystileTokenVerifier
    ) -> None:
        """An active token for this resource gives the SDK's AccessToken: client_id, sorted
        scopes, expires_at from exp, resource (RFC 8707), subject and the other claims."""
        server = shared_as.server
        token = server.issue(shared_as.demo.app, scope="write read")
        access = await verifier.verify_token(token)
        assert access is not None
        assert access.token == token
        assert access.client_id == "demo-app"
        assert access.scopes == ["read", "write"]
        assert access.expires_at is not None
        assert access.expires_at > time.time()
        assert access.resource == DEMO_AUDIENCE
        assert access.subject == "demo-app"
        assert access.claims is not None
        assert access.claims["iss"] == server.url
        assert "active" not in access.claims

    async def test_inactive_or_unknown_token_is_none(
        self, shared_as: DemoServer, verifier: KeystileTokenVerifier
    ) -> None:
        """Unknown and revoked tokens give None, which the SDK answers with 401."""
        assert await verifier.verify_token("ks_at_not-a-real-token") is None
        token = shared_as.server.issue(shared_as.demo.app, scope="read")
        assert shared_as.server.revoke(shared_as.demo.app, token).status_code == 200
        assert await verifier.verify_token(token) is None

    async def test_token_for_another_resource_is_refused(self, shared_as: DemoServer) -> None:
        """A token whose audience does not name this MCP server is None (RFC 8707 §2): a
        token issued for one API cannot be replayed at another."""
        token = shared_as.server.issue(shared_as.demo.app, scope="read")
        other = KeystileTokenVerifier(
            validator_for(shared_as, events=False), resource="https://other.example.test/mcp"
        )
        async with other:
            assert await other.verify_token(token) is None
        anywhere = KeystileTokenVerifier(validator_for(shared_as, events=False))
        async with anywhere:
            access = await anywhere.verify_token(token)
        assert access is not None
        assert access.resource == DEMO_AUDIENCE  # the token's one audience, for the SDK's check

    async def test_repeated_token_is_one_introspection(
        self, shared_as: DemoServer, verifier: KeystileTokenVerifier
    ) -> None:
        """The SDK asks on every request; keystile's cache answers all but the first."""
        token = shared_as.server.issue(shared_as.demo.app, scope="read")
        before = introspections_on_as(shared_as.server)
        for _ in range(20):
            assert await verifier.verify_token(token) is not None
        assert introspections_on_as(shared_as.server) - before == 1

    async def test_revocation_event_refuses_a_cached_token(
        self, shared_as: DemoServer, verifier: KeystileTokenVerifier
    ) -> None:
        """A cached token revoked at the AS is refused within moments, through the event
        stream, not after the 60 s cache ceiling."""
        token = shared_as.server.issue(shared_as.demo.app, scope="read")
        assert await verifier.verify_token(token) is not None
        await _wait_connected(verifier)
        before = introspections_on_as(shared_as.server)
        assert shared_as.server.revoke(shared_as.demo.app, token).status_code == 200
        start = time.monotonic()
        while await verifier.verify_token(token) is not None:
            assert time.monotonic() - start < 2.0, "the revocation event did not arrive"
            await asyncio.sleep(0.005)
        # Refused from the event: the cache was not simply re-asked after expiry.
        assert introspections_on_as(shared_as.server) - before <= 1


async def _wait_connected(verifier: KeystileTokenVerifier) -> None:
    validator = verifier.validator
    assert isinstance(validator, TokenValidator)
    start = time.monotonic()
    while not validator.cache.stream_connected:
        assert time.monotonic() - start < 5.0, "the event stream did not connect"
        await asyncio.sleep(0.01)


def fastmcp_app(verifier: KeystileTokenVerifier, issuer: str, scopes: list[str]) -> Any:
    """The FastMCP server of examples/mcp_server.py, around any verifier."""
    server = FastMCP(
        "notes",
        token_verifier=verifier,
        auth=AuthSettings(
            issuer_url=issuer,
            resource_server_url=MCP_URL,
            required_scopes=scopes,
            validate_token_resource=True,
        ),
    )

    @server.tool()
    def add_note(text: str) -> str:
        return f"noted: {text}"

    return verifier.protect(server.streamable_http_app())


RPC = {"jsonrpc": "2.0", "id": 1, "method": "tools/list"}
MCP_HEADERS = {"accept": "application/json, text/event-stream"}


class TestFastMCP:
    async def test_metadata_and_challenges(self, shared_as: DemoServer) -> None:
        """FastMCP with the verifier serves the RFC 9728 document; a request without a token
        gets 401 whose challenge carries resource_metadata (RFC 9728 §5.1), and a token
        without the required scope gets 403 insufficient_scope (RFC 6750 §3.1)."""
        server = shared_as.server
        v = KeystileTokenVerifier(validator_for(shared_as, events=False), resource=MCP_URL)
        app = fastmcp_app(v, server.url, ["notes:read"])
        transport = httpx.ASGITransport(app=app)
        async with v, httpx.AsyncClient(transport=transport, base_url=ORIGIN) as c:
            meta = await c.get("/.well-known/oauth-protected-resource/mcp")
            assert meta.status_code == 200
            assert meta.json()["resource"] == MCP_URL
            assert meta.json()["scopes_supported"] == ["notes:read"]
            metadata_url = "http://127.0.0.1:8001/.well-known/oauth-protected-resource/mcp"

            r = await c.post("/mcp", json=RPC, headers=MCP_HEADERS)
            assert r.status_code == 401
            assert f'resource_metadata="{metadata_url}"' in r.headers["www-authenticate"]

            # demo-app's tokens are for DEMO_AUDIENCE, not this MCP server: 401 as well.
            token = server.issue(shared_as.demo.app, scope="read")
            r = await c.post("/mcp", json=RPC, headers={**MCP_HEADERS, **_bearer(token)})
            assert r.status_code == 401
            assert 'error="invalid_token"' in r.headers["www-authenticate"]

    async def test_insufficient_scope_is_403(self, shared_as: DemoServer) -> None:
        """A token for the resource without the required scope is 403 insufficient_scope."""
        server = shared_as.server
        v = KeystileTokenVerifier(validator_for(shared_as, events=False), resource=DEMO_AUDIENCE)
        app = _fastmcp_for(v, server.url, DEMO_AUDIENCE, ["write"])
        transport = httpx.ASGITransport(app=app)
        token = server.issue(shared_as.demo.app, scope="read")
        async with v, httpx.AsyncClient(transport=transport, base_url=ORIGIN) as c:
            r = await c.post("/mcp", json=RPC, headers={**MCP_HEADERS, **_bearer(token)})
        assert r.status_code == 403
        assert 'error="insufficient_scope"' in r.headers["www-authenticate"]

    async def test_unreachable_as_is_503_not_401(self) -> None:
        """While the AS cannot answer, verify_token raises IntrospectionUnavailable and the
        protected app answers 503 with Retry-After: denied, but not called a bad token."""
        issuer = f"http://127.0.0.1:{free_port()}"  # nothing listens there
        v = KeystileTokenVerifier(
            TokenValidator(issuer=issuer, client_id="rs", client_secret="s", timeout=1),
            resource=MCP_URL,
        )
        with pytest.raises(IntrospectionUnavailable):
            await v.verify_token("ks_at_anything")
        app = fastmcp_app(v, issuer, ["notes:read"])
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url=ORIGIN) as c:
            r = await c.post("/mcp", json=RPC, headers={**MCP_HEADERS, **_bearer("ks_at_x")})
            assert r.status_code == 503
            assert r.headers["retry-after"] == "1"
            assert r.json()["error"] == "temporarily_unavailable"
            # Without a token nothing needs the AS: the SDK's own 401 challenge.
            assert (await c.post("/mcp", json=RPC, headers=MCP_HEADERS)).status_code == 401
        await v.close()


def _fastmcp_for(
    verifier: KeystileTokenVerifier, issuer: str, resource: str, scopes: list[str]
) -> Any:
    server = FastMCP(
        "notes",
        token_verifier=verifier,
        auth=AuthSettings(
            issuer_url=issuer,
            resource_server_url=resource,
            required_scopes=scopes,
            validate_token_resource=True,
        ),
    )
    return verifier.protect(server.streamable_http_app())


def _bearer(token: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"}


def test_missing_sdk_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without the mcp package, importing keystile.resource.mcp fails with a message naming
    keystile's mcp extra."""
    monkeypatch.setitem(sys.modules, "mcp.server.auth.provider", None)
    monkeypatch.delitem(sys.modules, "keystile.resource.mcp")
    with pytest.raises(ImportError, match="keystile's mcp extra"):
        importlib.import_module("keystile.resource.mcp")
