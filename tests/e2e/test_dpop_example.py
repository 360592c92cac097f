"""examples/dpop_client.py against the real AS and an API behind the SDK middleware, in one
process: it gets a DPoP-bound token, answers both servers' nonce challenges, and calls the
API; the same token without its key is refused."""

from __future__ import annotations

import importlib.util
import time
from collections.abc import AsyncIterator
from types import ModuleType
from typing import Any

import httpx
import pytest

from keystile.clock import FixedClock
from keystile.core.dpop_state import NonceSource
from keystile.resource import TokenValidator
from keystile.resource.middleware import BearerAuthMiddleware
from keystile.resource.sender import SenderCheck
from keystile.settings import ServerSettings
from tests.conftest import API, ISSUER, Setup
from tests.e2e.doc_blocks import EXAMPLES, doc_block

API_URL = "https://api.example.test/orders"


def load_example() -> ModuleType:
    spec = importlib.util.spec_from_file_location("dpop_client", EXAMPLES / "dpop_client.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


async def orders(scope: Any, receive: Any, send: Any) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b'{"orders": []}'})


@pytest.fixture
def clock() -> FixedClock:
    return FixedClock(int(time.time()))  # the example signs proofs at the real time


@pytest.fixture
def settings(db_path) -> ServerSettings:
    # The AS asks for nonces too: the example must answer use_dpop_nonce at both servers.
    return ServerSettings(
        db=str(db_path), issuer=ISSUER, purge_interval=0, access_log=False, dpop_nonce=True
    )


@pytest.fixture
async def both(app, setup: Setup) -> AsyncIterator[httpx.AsyncClient]:
    """One client reaching the AS (as.example.test) and the API (api.example.test)."""
    as_transport = httpx.ASGITransport(app=app)
    validator = TokenValidator(
        introspection_endpoint=ISSUER + "/oauth2/introspect",
        client_id=setup.rs.client_id,
        client_secret=setup.rs.secret,
        events=False,
        http=httpx.AsyncClient(transport=as_transport),
    )
    api = BearerAuthMiddleware(
        orders, validator, sender=SenderCheck(nonces=NonceSource(), mode="required")
    )
    mounts = {
        "https://as.example.test": as_transport,
        "https://api.example.test": httpx.ASGITransport(app=api),
    }
    async with httpx.AsyncClient(mounts=mounts) as http:
        yield http
    await validator.close()


async def test_example_client(both: httpx.AsyncClient, setup: Setup) -> None:
    """The example gets a DPoP token (after the AS's nonce challenge) and reads the API
    (after the API's); replaying its last request, or sending its token as Bearer, fails."""
    example = load_example()
    client = example.DpopClient(both, ISSUER, setup.app.client_id, setup.app.secret)

    body = await client.get_token("read")
    assert body["token_type"] == "DPoP"
    r = await client.get(API_URL)
    assert r.status_code == 200, r.text
    assert r.json() == {"orders": []}

    copied = await both.get(API_URL, headers={"Authorization": f"Bearer {client.access_token}"})
    assert copied.status_code == 401
    assert copied.headers["www-authenticate"].startswith("DPoP ")


async def test_sender_middleware_snippet(app, setup: Setup, register_client) -> None:
    """docs/sender-constrained.md's middleware snippet, as printed: the example client's
    token and proofs pass, for the URL clients use (origin), and its token as Bearer fails."""
    as_transport = httpx.ASGITransport(app=app)
    validator = TokenValidator(
        introspection_endpoint=ISSUER + "/oauth2/introspect",
        client_id=setup.rs.client_id,
        client_secret=setup.rs.secret,
        events=False,
        http=httpx.AsyncClient(transport=as_transport),
    )
    namespace: dict[str, Any] = {"app": orders, "validator": validator}
    exec(doc_block("sender-middleware").text, namespace)  # noqa: S102 - the documented snippet
    mounts = {
        "https://as.example.test": as_transport,
        # The API sits behind a TLS proxy: it is reached over plain HTTP internally.
        "https://api.example.com": httpx.ASGITransport(app=namespace["app"]),
    }
    async with httpx.AsyncClient(mounts=mounts) as http:
        reports = await register_client("reports", scopes=["orders:read"], default_audience=[API])
        client = load_example().DpopClient(http, ISSUER, reports.client_id, reports.secret)
        await client.get_token("orders:read")
        assert (await client.get("https://api.example.com/orders")).status_code == 200
        bearer = {"Authorization": f"Bearer {client.access_token}"}
        r = await http.get("https://api.example.com/orders", headers=bearer)
        assert r.status_code == 401
    await validator.close()
