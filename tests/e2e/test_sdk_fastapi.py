"""A FastAPI app protected by the SDK, served by uvicorn, against a real keystile AS process."""

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any

import httpx
import pytest
from fastapi import Depends, FastAPI
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from keystile.resource import ProtectedResourceMetadata, TokenValidator
from keystile.resource.fastapi import KeystileAuth, require_scopes
from keystile.resource.metadata import metadata_route
from keystile.resource.middleware import BearerAuthMiddleware
from keystile.resource.principal import Principal
from tests.e2e.conftest import DEMO_AUDIENCE, DemoServer, ServerStarter, parse_demo
from tests.e2e.sdk_support import ServedApp, introspections_on_as, wait_until

pytestmark = pytest.mark.process

METADATA = ProtectedResourceMetadata(
    resource=DEMO_AUDIENCE,
    authorization_servers=["http://127.0.0.1"],
    scopes_supported=["read", "write"],
    resource_name="Demo API",
)


@pytest.fixture(scope="module")
def shared_as(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DemoServer]:
    """One AS process for the module's tests (each test uses its own tokens)."""
    starter = ServerStarter(tmp_path_factory.mktemp("as"))
    server = starter("--log-level", "warning")
    yield DemoServer(server, parse_demo(server.stdout))
    starter.stop_all()


def validator_for(demo_server: DemoServer, **kwargs: Any) -> TokenValidator:
    server, demo = demo_server.server, demo_server.demo
    return TokenValidator(
        issuer=server.url, client_id=demo.rs.client_id, client_secret=demo.rs.secret, **kwargs
    )


def make_app(validator: TokenValidator, *, handlers: bool = True) -> FastAPI:
    """The sample API: /me needs "read" (auth's dependency), /write needs "write" (the
    module-level dependency that finds auth on app.state)."""
    auth = KeystileAuth(validator, realm="api", resource_metadata=METADATA.url)
    app = FastAPI(
        lifespan=auth.lifespan,
        exception_handlers=auth.exception_handlers if handlers else None,
        routes=[metadata_route(METADATA)],
    )

    @app.get("/me")
    async def me(principal: Annotated[Principal, Depends(auth.require_scopes("read"))]) -> Any:
        return {
            "sub": principal.sub,
            "client_id": principal.client_id,
            "scopes": sorted(principal.scopes),
            "aud": list(principal.aud),
            "exp": principal.exp,
        }

    @app.get("/write")
    async def write(principal: Annotated[Principal, Depends(require_scopes("write"))]) -> Any:
        return {"wrote": principal.sub}

    return app


def bearer(token: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"}


@pytest.fixture(scope="module")
def api(shared_as: DemoServer) -> Iterator[tuple[httpx.Client, DemoServer, TokenValidator]]:
    """The sample app, served by uvicorn over loopback, without the event stream; shared by
    the tests of TestFastAPI, which each use their own tokens."""
    validator = validator_for(shared_as, events=False)
    with ServedApp(make_app(validator)) as served, httpx.Client(base_url=served.url) as c:
        yield c, shared_as, validator


class TestFastAPI:
    def test_valid_token_gives_the_principal(self, api):
        """An active token with the scope reaches the route, which gets the typed Principal."""
        c, d, _ = api
        token = d.server.issue(d.demo.app, scope="read write")
        r = c.get("/me", headers=bearer(token))
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["sub"] == "demo-app"
        assert body["client_id"] == "demo-app"
        assert body["scopes"] == ["read", "write"]
        assert body["aud"] == [DEMO_AUDIENCE]
        assert body["exp"] > time.time()

    def test_cache_hit_makes_no_as_call(self, api):
        """Repeated requests with one token make one introspection on the AS."""
        c, d, validator = api
        token = d.server.issue(d.demo.app, scope="read")
        before, calls = introspections_on_as(d.server), validator.introspections
        for _ in range(20):
            assert c.get("/me", headers=bearer(token)).status_code == 200
        assert introspections_on_as(d.server) - before == 1
        assert validator.introspections - calls == 1

    def test_missing_token_is_bare_401(self, api):
        """No credentials: 401 with a challenge carrying no error code (RFC 6750 §3.1) and
        the resource_metadata URL (RFC 9728 §5.1)."""
        c, _, _ = api
        r = c.get("/me")
        assert r.status_code == 401
        assert r.headers["www-authenticate"] == (
            f'Bearer realm="api", resource_metadata="{METADATA.url}"'
        )
        assert r.headers["cache-control"] == "no-store"
        assert r.content == b""  # no error information in the body either
        assert "content-type" not in r.headers

    def test_other_scheme_or_empty_header_is_bare_401(self, api):
        """An Authorization header with another scheme or no credentials in it lacks any
        authentication information: the same bare 401 with an empty body (RFC 6750 §3.1)."""
        c, _, _ = api
        for value in ("Basic abc", "Digest x=1", "", "Bearer"):
            r = c.get("/me", headers={"authorization": value})
            assert r.status_code == 401, value
            assert "error" not in r.headers["www-authenticate"]
            assert r.content == b""

    def test_malformed_header_is_400(self, api):
        """A malformed bearer credential is invalid_request (§3.1)."""
        c, _, _ = api
        for value in ("Bearer a b", "Bearer ä"):
            r = c.get("/me", headers={"authorization": value.encode("latin-1")})
            assert r.status_code == 400, value
            assert 'error="invalid_request"' in r.headers["www-authenticate"]
            assert r.json()["error"] == "invalid_request"

    def test_revoked_token_is_401(self, api):
        """A revoked token is 401 invalid_token."""
        c, d, _ = api
        token = d.server.issue(d.demo.app, scope="read")
        assert d.server.revoke(d.demo.app, token).status_code == 200
        r = c.get("/me", headers=bearer(token))
        assert r.status_code == 401
        assert r.headers["www-authenticate"].startswith('Bearer realm="api", error="invalid_token"')
        assert r.json()["error"] == "invalid_token"

    def test_missing_scope_is_403_with_scope(self, api):
        """A token without the route's scope is 403 insufficient_scope naming the scope."""
        c, d, _ = api
        token = d.server.issue(d.demo.app, scope="read")
        r = c.get("/write", headers=bearer(token))
        assert r.status_code == 403
        challenge = r.headers["www-authenticate"]
        assert 'error="insufficient_scope"' in challenge
        assert 'scope="write"' in challenge
        assert r.json()["error"] == "insufficient_scope"

    def test_module_level_dependency_uses_app_state(self, api):
        """require_scopes() without an auth object finds it on app.state and lets a token
        with the scope through."""
        c, d, _ = api
        token = d.server.issue(d.demo.app, scope="write")
        r = c.get("/write", headers=bearer(token))
        assert r.status_code == 200
        assert r.json() == {"wrote": "demo-app"}

    def test_protected_resource_metadata(self, api):
        """The RFC 9728 document is served at the well-known URL with the resource's fields."""
        c, _, _ = api
        r = c.get("/.well-known/oauth-protected-resource")
        assert r.status_code == 200
        assert r.headers["content-type"] == "application/json"
        assert r.json() == {
            "resource": DEMO_AUDIENCE,
            "authorization_servers": ["http://127.0.0.1"],
            "scopes_supported": ["read", "write"],
            "bearer_methods_supported": ["header"],
            "resource_name": "Demo API",
        }

    def test_refusals_match_the_middleware(self, shared_as: DemoServer):
        """The dependency refuses with the same status, challenge and body as
        BearerAuthMiddleware, for every kind of refusal."""
        d = shared_as
        revoked = d.server.issue(d.demo.app, scope="read")
        d.server.revoke(d.demo.app, revoked)
        cases = [
            {},
            {"authorization": "Basic abc"},
            {"authorization": "Bearer a b"},
            bearer("not-a-token"),
            bearer(revoked),
            bearer(d.server.issue(d.demo.app, scope="write")),
        ]

        async def me(request: Request) -> JSONResponse:
            return JSONResponse({})

        v1, v2 = validator_for(d, events=False), validator_for(d, events=False)
        plain = BearerAuthMiddleware(
            Starlette(routes=[Route("/me", me)], lifespan=KeystileAuth(v1).lifespan),
            v1,
            scopes={"read"},
            realm="api",
            resource_metadata=METADATA.url,
        )
        with (
            ServedApp(plain) as a,
            ServedApp(make_app(v2)) as b,
            httpx.Client() as c,
        ):
            for headers in cases:
                ra, rb = (
                    c.get(a.url + "/me", headers=headers),
                    c.get(b.url + "/me", headers=headers),
                )
                assert rb.status_code == ra.status_code, headers
                assert rb.headers["www-authenticate"] == ra.headers["www-authenticate"]
                assert rb.headers["cache-control"] == "no-store"
                assert rb.content == ra.content

    def test_without_handlers_status_and_challenge_stay_right(self, shared_as: DemoServer):
        """Without the exception handler, a refusal still has the RFC 6750 status and
        challenge (the body is FastAPI's usual one)."""
        validator = validator_for(shared_as, events=False)
        app = make_app(validator, handlers=False)
        with ServedApp(app) as served, httpx.Client(base_url=served.url) as c:
            r = c.get("/me")
            assert r.status_code == 401
            assert r.headers["www-authenticate"].startswith('Bearer realm="api"')
            # No error information (RFC 6750 §3.1): only Starlette's own reason phrase.
            assert r.json() == {"detail": "Unauthorized"}

    def test_openapi_marks_protected_routes(self, api):
        """Protected operations carry FastAPI's HTTP bearer security scheme in OpenAPI."""
        c, _, _ = api
        doc = c.get("/openapi.json").json()
        assert doc["components"]["securitySchemes"]["HTTPBearer"]["scheme"] == "bearer"
        assert doc["paths"]["/me"]["get"]["security"] == [{"HTTPBearer": []}]


class TestEventsAndOutages:
    def test_lifespan_starts_events_and_revocation_blocks_at_once(self, shared_as: DemoServer):
        """The lifespan opens the event stream; a revoked token that is cached for a minute is
        refused within a second of the revocation, and the stream is closed at shutdown."""
        d = shared_as
        validator = validator_for(d, max_ttl=60)
        token = d.server.issue(d.demo.app, scope="read")
        with ServedApp(make_app(validator)) as served, httpx.Client(base_url=served.url) as c:
            wait_until(lambda: validator.cache.stream_connected is True)
            assert c.get("/me", headers=bearer(token)).status_code == 200
            assert c.get("/me", headers=bearer(token)).status_code == 200
            assert validator.introspections == 1  # the second answer came from the cache
            assert d.server.revoke(d.demo.app, token).status_code == 200
            took = wait_until(lambda: len(validator.cache) == 0, limit=1.0)
            assert took < 1.0
            r = c.get("/me", headers=bearer(token))
            assert r.status_code == 401
        assert validator._events_task is None  # closed by the lifespan

    def test_as_down_is_503_with_retry_after(self, start_server: ServerStarter, tmp_path: Path):
        """With the AS unreachable the app fails closed: 503 temporarily_unavailable with
        Retry-After, never 401."""
        server = start_server("--log-level", "warning")
        demo = parse_demo(server.stdout)
        token = server.issue(demo.app, scope="read")
        validator = validator_for(DemoServer(server, demo), events=False)
        with ServedApp(make_app(validator)) as served, httpx.Client(base_url=served.url) as c:
            server.stop()
            r = c.get("/me", headers=bearer(token))
            assert r.status_code == 503
            assert r.headers["retry-after"] == "1"
            assert "www-authenticate" not in r.headers
            assert r.json()["error"] == "temporarily_unavailable"
