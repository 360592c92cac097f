"""The SDK validating a real keystile AS's JWT access tokens locally (RFC 9068), and
refusing them once the AS's event stream reports them revoked."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import pytest

from keystile.errors import InvalidToken
from keystile.resource import TokenValidator
from keystile.resource.jwt import looks_like_jwt
from tests.e2e.conftest import DEMO_AUDIENCE, DemoServer, RunKeystile

pytestmark = pytest.mark.process


async def wait_until(predicate: Callable[[], bool], limit: float = 5.0) -> None:
    deadline = time.monotonic() + limit
    while not predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.005)


async def test_real_jwt_validated_locally_then_revoked(
    demo_server: DemoServer, run_keystile: RunKeystile
) -> None:
    """A JWT from `keystile serve` validates with no introspection call, realtime=True asks
    the AS, and after revocation the event stream makes the SDK refuse it."""
    server, demo = demo_server.server, demo_server.demo
    done = run_keystile(
        "client", "update", "demo-app", "--token-format", "jwt", "--db", str(server.db)
    )
    assert done.returncode == 0, done.stderr
    token = server.issue(demo.app, scope="read")
    assert looks_like_jwt(token)
    async with TokenValidator(
        issuer=server.url,
        client_id=demo.rs.client_id,
        client_secret=demo.rs.secret,
        audience=DEMO_AUDIENCE,
        jwt=True,
    ) as v:
        await asyncio.wait_for(v.stream.connected.wait(), 5)
        local = await v.validate(token)
        assert local.client_id == "demo-app"
        assert local.scopes == frozenset({"read"})
        assert v.introspections == 0
        assert v.jwt is not None
        assert v.jwt.fetches == 1
        remote = await v.validate(token, realtime=True)
        assert v.introspections == 1
        assert (remote.jti, remote.sub) == (local.jti, local.sub)
        assert server.revoke(demo.app, token).status_code == 200
        await wait_until(lambda: len(v.revoked) > 0)
        with pytest.raises(InvalidToken, match="not active"):
            await v.validate(token)
        assert v.introspections == 1
