"""The FastAPI dependency and the Flask extension with a SenderCheck (RFC 9449 §7): the right
proof passes, a bound token as Bearer or without a proof is refused with a DPoP challenge;
without a SenderCheck bound tokens are refused. Validators are keystile.testing's, holding
a principal with cnf.jkt as an introspection answer would. (No ``from __future__ import
annotations``: FastAPI reads the route's annotations at runtime.)"""

import time
from typing import Annotated

import httpx
import pytest
from fastapi import Depends, FastAPI
from flask import Flask

from keystile.resource import Principal
from keystile.resource.fastapi import KeystileAuth
from keystile.resource.flask import KeystileFlask, current_principal
from keystile.resource.sender import SenderCheck
from keystile.testing import StaticValidator, SyncStaticValidator
from tests.dpop_support import DpopKey

ORIGIN = "https://api.example.test"


@pytest.fixture(scope="module")
def key() -> DpopKey:
    return DpopKey("ES256")


def fastapi_app(validator: StaticValidator, sender: SenderCheck | None) -> FastAPI:
    auth = KeystileAuth(validator, sender=sender, origin=ORIGIN)
    app = FastAPI(exception_handlers=auth.exception_handlers)

    @app.get("/orders")
    async def orders(
        principal: Annotated[Principal, Depends(auth.require_scopes("read"))],
    ) -> dict[str, str | None]:
        return {"sub": principal.sub}

    return app


class TestFastAPI:
    async def test_proofs(self, key):
        """KeystileAuth(sender=...) checks the proof for the URL clients use (origin)."""
        validator = StaticValidator()
        token = validator.add(sub="alice", scopes="read", claims={"cnf": {"jkt": key.jkt}})
        transport = httpx.ASGITransport(app=fastapi_app(validator, SenderCheck()))
        async with httpx.AsyncClient(transport=transport, base_url="http://internal") as c:
            proof = key.proof("GET", ORIGIN + "/orders", int(time.time()), access_token=token)
            auth = {"Authorization": f"DPoP {token}"}
            r = await c.get("/orders", headers={**auth, "DPoP": proof})
            assert r.status_code == 200, r.text
            assert r.json() == {"sub": "alice"}
            for headers in ({"Authorization": f"Bearer {token}"}, auth):
                r = await c.get("/orders", headers=headers)
                assert r.status_code == 401
                assert r.headers["www-authenticate"].startswith("DPoP ")

    async def test_without_sender_check(self, key):
        """Without a SenderCheck a bound token is refused, never a bearer token."""
        validator = StaticValidator()
        token = validator.add(sub="alice", scopes="read", claims={"cnf": {"jkt": key.jkt}})
        transport = httpx.ASGITransport(app=fastapi_app(validator, None))
        async with httpx.AsyncClient(transport=transport, base_url="http://internal") as c:
            r = await c.get("/orders", headers={"Authorization": f"Bearer {token}"})
        assert r.status_code == 401


class TestFlask:
    def make(self, validator: SyncStaticValidator, sender: SenderCheck | None) -> Flask:
        app = Flask(__name__)
        keystile = KeystileFlask(app, validator, sender=sender, origin=ORIGIN)

        @app.get("/orders")
        @keystile.require_scopes("read")
        def orders() -> dict[str, str | None]:
            return {"sub": current_principal().sub}

        return app

    def test_proofs(self, key):
        """KeystileFlask(sender=...) checks the proof like the middleware."""
        validator = SyncStaticValidator()
        token = validator.add(sub="alice", scopes="read", claims={"cnf": {"jkt": key.jkt}})
        client = self.make(validator, SenderCheck()).test_client()
        proof = key.proof("GET", ORIGIN + "/orders", int(time.time()), access_token=token)
        auth = {"Authorization": f"DPoP {token}"}
        r = client.get("/orders", headers={**auth, "DPoP": proof})
        assert r.status_code == 200, r.text
        r = client.get("/orders", headers={**auth, "DPoP": proof})  # replayed
        assert r.status_code == 401
        assert r.json["error"] == "invalid_dpop_proof"
        r = client.get("/orders", headers={"Authorization": f"Bearer {token}"})
        assert r.status_code == 401
        assert r.headers["WWW-Authenticate"].startswith("DPoP ")

    def test_without_sender_check(self, key):
        """Without a SenderCheck a bound token is refused."""
        validator = SyncStaticValidator()
        token = validator.add(sub="alice", scopes="read", claims={"cnf": {"jkt": key.jkt}})
        client = self.make(validator, None).test_client()
        assert (
            client.get("/orders", headers={"Authorization": f"Bearer {token}"}).status_code == 401
        )
