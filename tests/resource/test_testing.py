"""keystile.testing: sample FastAPI and Flask apps tested with the fakes, without any AS."""

import inspect
from collections.abc import AsyncIterator
from typing import Annotated, Any

import httpx
import pytest
from fastapi import Depends, FastAPI
from flask import Flask
from flask.testing import FlaskClient
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from keystile.errors import InsufficientScope, IntrospectionUnavailable, InvalidToken
from keystile.resource import Principal
from keystile.resource.cache import MISS
from keystile.resource.fastapi import KeystileAuth, require_scopes
from keystile.resource.flask import KeystileFlask, current_principal
from keystile.resource.flask import require_scopes as flask_require_scopes
from keystile.resource.middleware import BearerAuthMiddleware, principal_of
from keystile.testing import (
    StaticValidator,
    SyncStaticValidator,
    issue_test_token,
    make_principal,
)

API = "https://api.example.test"


# -- a sample FastAPI app, as an SDK user would write it ---------------------------------------


def create_fastapi_app(validator: StaticValidator) -> FastAPI:
    auth = KeystileAuth(validator, realm="orders")
    app = FastAPI(lifespan=auth.lifespan)
    auth.install(app)

    @app.get("/orders")
    async def orders(
        principal: Annotated[Principal, Depends(require_scopes("orders:read"))],
    ) -> Any:
        return {"owner": principal.sub, "username": principal.username}

    return app


@pytest.fixture
async def fastapi_client() -> AsyncIterator[tuple[httpx.AsyncClient, StaticValidator]]:
    validator = StaticValidator(audience=API)
    app = create_fastapi_app(validator)
    transport = httpx.ASGITransport(app=app)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=transport, base_url="https://api.test") as c,
    ):
        yield c, validator


def bearer(token: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"}


class TestFastAPISample:
    async def test_known_token_passes(self, fastapi_client):
        """A token added to the StaticValidator reaches the route with its principal."""
        c, validator = fastapi_client
        token = validator.add(sub="alice", username="alice", scopes="orders:read", aud=API)
        r = await c.get("/orders", headers=bearer(token))
        assert r.status_code == 200
        assert r.json() == {"owner": "alice", "username": "alice"}
        assert validator.started
        assert validator.validations == 1

    async def test_unknown_and_revoked_tokens_are_401(self, fastapi_client):
        """An unknown token and a revoked one are both 401 invalid_token (RFC 6750 §3.1)."""
        c, validator = fastapi_client
        token = validator.add(scopes="orders:read", aud=API)
        validator.revoke(token)
        for t in (token, issue_test_token()):
            r = await c.get("/orders", headers=bearer(t))
            assert r.status_code == 401
            assert r.headers["www-authenticate"].startswith('Bearer realm="orders", error="invalid')

    async def test_expired_and_foreign_tokens_are_401(self, fastapi_client):
        """A token past its exp, or for another audience, is refused like an inactive one."""
        c, validator = fastapi_client
        expired = validator.add(scopes="orders:read", aud=API, exp=1_000)
        foreign = validator.add(scopes="orders:read", aud="https://other.test")
        for t in (expired, foreign):
            assert (await c.get("/orders", headers=bearer(t))).status_code == 401

    async def test_missing_scope_is_403(self, fastapi_client):
        """A known token without the route's scope is 403 with scope= in the challenge."""
        c, validator = fastapi_client
        token = validator.add(scopes="orders:write", aud=API)
        r = await c.get("/orders", headers=bearer(token))
        assert r.status_code == 403
        assert 'scope="orders:read"' in r.headers["www-authenticate"]

    async def test_unavailable_is_503(self, fastapi_client):
        """unavailable=True makes the app answer as when the AS is down: 503, Retry-After."""
        c, validator = fastapi_client
        token = validator.add(scopes="orders:read", aud=API)
        validator.unavailable = True
        r = await c.get("/orders", headers=bearer(token))
        assert r.status_code == 503
        assert r.headers["retry-after"] == "1"


# -- a sample Flask app ------------------------------------------------------------------------


def create_flask_app(validator: SyncStaticValidator) -> Flask:
    app = Flask(__name__)
    KeystileFlask(app, validator)

    @app.get("/orders")
    @flask_require_scopes("orders:read")
    def orders() -> dict[str, Any]:
        return {"owner": current_principal().sub}

    @app.get("/orders-async")
    @flask_require_scopes("orders:read")
    async def orders_async() -> dict[str, Any]:
        return {"owner": current_principal().sub}

    return app


@pytest.fixture
def flask_client() -> tuple[FlaskClient, SyncStaticValidator]:
    validator = SyncStaticValidator()
    return create_flask_app(validator).test_client(), validator


class TestFlaskSample:
    def test_known_token_passes(self, flask_client):
        """A token added to the SyncStaticValidator reaches the view; the extension started
        the validator on the first protected request."""
        c, validator = flask_client
        token = validator.add(make_principal("bob", scopes={"orders:read"}))
        r = c.get("/orders", headers=bearer(token))
        assert r.status_code == 200
        assert r.get_json() == {"owner": "bob"}
        assert validator.started

    def test_refusals(self, flask_client):
        """Missing token 401, unknown token 401, missing scope 403, unavailable 503."""
        c, validator = flask_client
        assert c.get("/orders").status_code == 401
        assert c.get("/orders", headers=bearer(issue_test_token())).status_code == 401
        writer = validator.add(scopes="orders:write")
        assert c.get("/orders", headers=bearer(writer)).status_code == 403
        validator.unavailable = True
        assert c.get("/orders", headers=bearer(writer)).status_code == 503

    async def test_async_views_are_protected_too(self, flask_client):
        """The decorator keeps an async view async and refuses before running it."""
        c, validator = flask_client
        view = c.application.view_functions["orders_async"]
        assert inspect.iscoroutinefunction(view)
        token = validator.add(sub="carol", scopes="orders:read")
        with c.application.test_request_context("/orders-async"):
            refused = await view()
            assert refused.status_code == 401
        with c.application.test_request_context("/orders-async", headers=bearer(token)):
            assert await view() == {"owner": "carol"}


# -- the fakes themselves ----------------------------------------------------------------------


class TestFakes:
    async def test_static_validator_with_the_middleware(self):
        """StaticValidator works as the validator of BearerAuthMiddleware."""

        async def me(request: Request) -> JSONResponse:
            return JSONResponse({"sub": principal_of(request).sub})

        validator = StaticValidator({"tok-1": {"sub": "dave", "scope": "read"}})
        app = BearerAuthMiddleware(Starlette(routes=[Route("/me", me)]), validator, scopes={"read"})
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="https://api.test"
        ) as c:
            assert (await c.get("/me", headers=bearer("tok-1"))).json() == {"sub": "dave"}
            assert (await c.get("/me", headers=bearer("tok-2"))).status_code == 401

    async def test_static_validator_interface(self):
        """validate, require, cached, start/close and the async context manager behave like
        TokenValidator's, with the same errors."""
        async with StaticValidator() as validator:
            token = validator.add(sub="erin", scopes="a b")
            principal = await validator.validate(token)
            assert principal.sub == "erin"
            validator.require(principal, {"a"})
            with pytest.raises(InsufficientScope):
                validator.require(principal, {"c"})
            assert validator.cached(token) == principal
            assert validator.cached("nope") is None
            with pytest.raises(InvalidToken):
                await validator.validate("nope")
            validator.unavailable = True
            assert validator.cached(token) is MISS
            with pytest.raises(IntrospectionUnavailable):
                await validator.validate(token)
        assert validator.closed

    def test_make_principal(self):
        """make_principal builds what an active RFC 7662 answer would, claims included."""
        p = make_principal(
            "frank",
            client_id="app",
            scopes="read write",
            aud=[API, "https://two.test"],
            username="frank@example.test",
            exp=2_000_000_000,
            claims={"tenant": "t1"},
        )
        assert p.sub == "frank"
        assert p.client_id == "app"
        assert p.scopes == frozenset({"read", "write"})
        assert p.aud == (API, "https://two.test")
        assert p.exp == 2_000_000_000
        assert p.claims["tenant"] == "t1"
        assert p.claims["active"] is True

    def test_bad_claims_are_rejected(self):
        """Claims that would not make an active token raise instead of passing silently."""
        with pytest.raises(ValueError, match="active"):
            make_principal(claims={"exp": "tomorrow"})
        with pytest.raises(TypeError):
            SyncStaticValidator().add(make_principal(), sub="x")

    def test_issue_test_token_is_a_bearer_token(self):
        """Issued tokens are distinct and valid RFC 6750 b64tokens."""
        from keystile.core.bearer import bearer_token

        a, b = issue_test_token(), issue_test_token()
        assert a != b
        assert bearer_token(f"Bearer {a}") == a
