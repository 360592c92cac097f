"""The resource-server SDK against a real keystile AS process: cache, single-flight, events."""

from __future__ import annotations

import asyncio
import time

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from keystile.errors import InsufficientScope, IntrospectionUnavailable, InvalidToken
from keystile.resource import TokenValidator
from keystile.resource.middleware import BearerAuthMiddleware, principal_of
from tests.e2e.conftest import DemoServer, RunKeystile, Server, ServerStarter, parse_demo

pytestmark = pytest.mark.process


def introspections_on_as(server: Server) -> float:
    """How many introspections the AS answered (its own /metrics, not the SDK's count)."""
    text = server.http.get("/metrics").text
    for line in text.splitlines():
        if line.startswith('keystile_requests_total{endpoint="introspect",outcome="ok"}'):
            return float(line.split()[-1])
    return 0.0


def validator_for(server: Server, demo, **kwargs) -> TokenValidator:
    return TokenValidator(
        issuer=server.url,
        client_id=demo.rs.client_id,
        client_secret=demo.rs.secret,
        **kwargs,
    )


async def wait_until(predicate, limit: float = 5.0) -> float:
    start = time.monotonic()
    while not predicate():
        assert time.monotonic() - start < limit, "condition not met in time"
        await asyncio.sleep(0.005)
    return time.monotonic() - start


class TestCaching:
    async def test_cache_hit_makes_no_as_call(self, demo_server: DemoServer):
        """The second validation of a token is answered from the cache: the AS sees one call."""
        server, demo = demo_server.server, demo_server.demo
        token = server.issue(demo.app, scope="read")
        async with validator_for(server, demo, events=False) as v:
            before = introspections_on_as(server)
            first = await v.validate(token)
            for _ in range(50):
                assert await v.validate(token) == first
            assert introspections_on_as(server) - before == 1
            assert first.scopes == frozenset({"read"})
            assert first.client_id == "demo-app"
            assert first.aud == ("https://api.example.test",)

    async def test_single_flight(self, demo_server: DemoServer):
        """100 concurrent validations of one uncached token make one introspection call."""
        server, demo = demo_server.server, demo_server.demo
        token = server.issue(demo.app)
        async with validator_for(server, demo, events=False) as v:
            before = introspections_on_as(server)
            results = await asyncio.gather(*(v.validate(token) for _ in range(100)))
            assert len({r.jti for r in results}) == 1
            assert introspections_on_as(server) - before == 1
            assert v.introspections == 1

    async def test_negative_cache(self, demo_server: DemoServer):
        """An inactive answer is cached for negative_ttl only, then asked again."""
        server, demo = demo_server.server, demo_server.demo
        token = server.issue(demo.app)
        server.revoke(demo.app, token)
        async with validator_for(server, demo, events=False, negative_ttl=0.3) as v:
            for _ in range(3):
                with pytest.raises(InvalidToken):
                    await v.validate(token)
            assert v.introspections == 1
            await asyncio.sleep(0.35)
            with pytest.raises(InvalidToken):
                await v.validate(token)
            assert v.introspections == 2

    async def test_ttl_capped_by_exp(self, demo_server: DemoServer, run_keystile: RunKeystile):
        """A cached token is not used past its exp, whatever max_ttl says."""
        server, demo = demo_server.server, demo_server.demo
        done = run_keystile("client", "update", "demo-app", "--ttl", "2", "--db", str(server.db))
        assert done.returncode == 0, done.stderr
        token = server.issue(demo.app)
        async with validator_for(server, demo, events=False, max_ttl=3600) as v:
            principal = await v.validate(token)
            assert principal.exp is not None
            await asyncio.sleep(max(0.0, principal.exp - time.time()) + 1.05)
            with pytest.raises(InvalidToken):
                await v.validate(token)
            assert v.introspections == 2

    async def test_audience_and_scope_checks(self, demo_server: DemoServer):
        """A token for another audience is invalid_token; a missing scope is insufficient_scope."""
        server, demo = demo_server.server, demo_server.demo
        token = server.issue(demo.app, scope="read")
        async with validator_for(
            server, demo, events=False, audience="https://elsewhere.test"
        ) as v:
            with pytest.raises(InvalidToken):
                await v.validate(token)
        async with validator_for(server, demo, events=False) as v:
            principal = await v.validate(token)
            v.require(principal, {"read"})
            with pytest.raises(InsufficientScope):
                v.require(principal, {"read", "write"})


class TestEvents:
    async def test_revocation_evicts_within_milliseconds(self, demo_server: DemoServer):
        """With the event stream on, a revoked token is evicted from the cache at once, so
        the next validation asks the AS and fails."""
        server, demo = demo_server.server, demo_server.demo
        token = server.issue(demo.app)
        async with validator_for(server, demo) as v:
            await asyncio.wait_for(v.stream.connected.wait(), 5)
            await v.validate(token)
            assert len(v.cache) == 1
            started = time.monotonic()
            assert server.revoke(demo.app, token).status_code == 200
            took = await wait_until(lambda: len(v.cache) == 0)
            assert took < 1.0, took
            assert time.monotonic() - started < 1.0
            with pytest.raises(InvalidToken):
                await v.validate(token)

    async def test_client_disabled_evicts(self, demo_server: DemoServer, run_keystile):
        """Disabling a client (CLI, another process) evicts all its cached tokens."""
        server, demo = demo_server.server, demo_server.demo
        tokens = [server.issue(demo.app) for _ in range(3)]
        async with validator_for(server, demo) as v:
            await asyncio.wait_for(v.stream.connected.wait(), 5)
            for t in tokens:
                await v.validate(t)
            done = run_keystile("client", "disable", "demo-app", "--db", str(server.db))
            assert done.returncode == 0
            await wait_until(lambda: len(v.cache) == 0)

    async def test_resume_after_as_restart(
        self, start_server: ServerStarter, run_keystile: RunKeystile
    ):
        """While the AS is down the cache is degraded; after it restarts the stream resumes
        and replays the revocation it missed."""
        server = start_server("--log-level", "warning")
        demo = parse_demo(server.stdout)
        token = server.issue(demo.app)
        async with validator_for(server, demo, degraded_ttl=60) as v:
            await asyncio.wait_for(v.stream.connected.wait(), 5)
            await v.validate(token)
            server.stop()
            await wait_until(lambda: v.cache.stream_connected is False)
            # Revoked while the AS is down (the CLI writes the log directly).
            db = str(server.db)
            assert run_keystile("client", "disable", "demo-app", "--db", db).returncode == 0
            again = start_server("--log-level", "warning", port=server.port)
            await asyncio.wait_for(v.stream.connected.wait(), 10)
            await wait_until(lambda: len(v.cache) == 0)
            assert v.stream.connects >= 2
            with pytest.raises(InvalidToken):
                await v.validate(token)
            again.stop()

    async def test_bounded_staleness_while_disconnected(self, start_server: ServerStarter):
        """With the stream down, cached entries older than degraded_ttl are not used: the
        AS being unreachable then gives IntrospectionUnavailable (503), never a stale 200."""
        server = start_server("--log-level", "warning")
        demo = parse_demo(server.stdout)
        token = server.issue(demo.app)
        async with validator_for(server, demo, degraded_ttl=0.3) as v:
            await asyncio.wait_for(v.stream.connected.wait(), 5)
            await v.validate(token)
            server.stop()
            await wait_until(lambda: v.cache.stream_connected is False)
            await asyncio.sleep(0.35)
            with pytest.raises(IntrospectionUnavailable):
                await v.validate(token)


class TestUnavailable:
    async def test_as_down_is_unavailable_not_invalid(self, start_server: ServerStarter):
        """An AS that cannot be reached makes validation fail closed with
        IntrospectionUnavailable, never InvalidToken."""
        server = start_server("--log-level", "warning")
        demo = parse_demo(server.stdout)
        token = server.issue(demo.app)
        v = validator_for(server, demo, events=False)
        await v.start()
        server.stop()
        with pytest.raises(IntrospectionUnavailable):
            await v.validate(token)
        await v.close()

    async def test_wrong_rs_credentials_are_unavailable(self, demo_server: DemoServer):
        """If the AS refuses our own credentials we cannot judge the token: unavailable."""
        server, demo = demo_server.server, demo_server.demo
        token = server.issue(demo.app)
        async with TokenValidator(
            issuer=server.url, client_id="demo-rs", client_secret="wrong", events=False
        ) as v:
            with pytest.raises(IntrospectionUnavailable):
                await v.validate(token)


async def hello(request: Request) -> JSONResponse:
    p = principal_of(request)
    return JSONResponse({"sub": p.sub, "scopes": sorted(p.scopes)})


class TestMiddleware:
    @pytest.fixture
    async def api(self, demo_server: DemoServer):
        server, demo = demo_server.server, demo_server.demo
        v = validator_for(server, demo, events=False)
        await v.start()
        app = BearerAuthMiddleware(
            Starlette(routes=[Route("/hello", hello)]),
            v,
            scopes={"read"},
            realm="api",
            resource_metadata="https://api.example.test/.well-known/oauth-protected-resource",
        )
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="https://api.test") as c:
            yield c, server, demo
        await v.close()

    async def test_valid_token_passes(self, api):
        """An active token with the scope reaches the app, which sees the principal."""
        c, server, demo = api
        token = server.issue(demo.app, scope="read")
        r = await c.get("/hello", headers={"authorization": f"Bearer {token}"})
        assert r.status_code == 200
        assert r.json() == {"sub": "demo-app", "scopes": ["read"]}

    async def test_missing_token_is_bare_401(self, api):
        """No credentials: 401 with a challenge carrying no error code (RFC 6750 §3.1)."""
        c, _, _ = api
        r = await c.get("/hello")
        assert r.status_code == 401
        assert r.headers["www-authenticate"] == (
            'Bearer realm="api", resource_metadata='
            '"https://api.example.test/.well-known/oauth-protected-resource"'
        )
        assert r.headers["cache-control"] == "no-store"
        assert r.content == b""  # no error information in the body either
        assert "content-type" not in r.headers

    async def test_other_scheme_or_empty_header_is_bare_401(self, api):
        """An Authorization header with another scheme or no credentials in it lacks any
        authentication information: the same bare 401 with an empty body (RFC 6750 §3.1)."""
        c, _, _ = api
        for value in ("Basic abc", "Digest x=1", "", "Bearer", "BEARER "):
            r = await c.get("/hello", headers={"authorization": value})
            assert r.status_code == 401, value
            assert "error" not in r.headers["www-authenticate"]
            assert r.content == b""

    async def test_malformed_header_is_400(self, api):
        """A malformed bearer credential is invalid_request (§3.1)."""
        c, _, _ = api
        for value in ("Bearer a b", "Bearer ä".encode("latin-1")):
            r = await c.get("/hello", headers={"authorization": value})
            assert r.status_code == 400, value
            assert 'error="invalid_request"' in r.headers["www-authenticate"]

    async def test_inactive_token_is_401_invalid_token(self, api):
        """An unknown or revoked token is 401 invalid_token."""
        c, server, demo = api
        token = server.issue(demo.app, scope="read")
        server.revoke(demo.app, token)
        r = await c.get("/hello", headers={"authorization": f"Bearer {token}"})
        assert r.status_code == 401
        assert 'error="invalid_token"' in r.headers["www-authenticate"]
        assert r.json()["error"] == "invalid_token"

    async def test_missing_scope_is_403(self, api):
        """A token without the route's scope is 403 insufficient_scope with scope= (§3.1)."""
        c, server, demo = api
        token = server.issue(demo.app, scope="write")
        r = await c.get("/hello", headers={"authorization": f"Bearer {token}"})
        assert r.status_code == 403
        challenge = r.headers["www-authenticate"]
        assert 'error="insufficient_scope"' in challenge
        assert 'scope="read"' in challenge
