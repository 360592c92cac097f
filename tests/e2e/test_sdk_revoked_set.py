"""The SDK's revoked set fed by a real keystile AS's event stream (what refuses local JWTs)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import pytest

from keystile.errors import InvalidToken
from keystile.resource import Principal, TokenValidator
from keystile.resource.cache import cache_key
from tests.e2e.conftest import DemoServer

pytestmark = pytest.mark.process


async def wait_until(predicate: Callable[[], bool], limit: float = 5.0) -> None:
    deadline = time.monotonic() + limit
    while not predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.005)


async def test_token_revoked_event_records_hash_and_jti(demo_server: DemoServer) -> None:
    """A real token_revoked event records the token's SHA-256 and jti, each enough alone to
    refuse the token, until its exp (the payload contract local JWT validation relies on)."""
    server, demo = demo_server.server, demo_server.demo
    token = server.issue(demo.app)
    async with TokenValidator(
        issuer=server.url, client_id=demo.rs.client_id, client_secret=demo.rs.secret
    ) as v:
        await asyncio.wait_for(v.stream.connected.wait(), 5)
        principal = await v.validate(token)
        assert principal.jti is not None
        assert not v.revoked.is_revoked(cache_key(token), principal)
        assert server.revoke(demo.app, token).status_code == 200
        await wait_until(lambda: len(v.revoked) == 2)
        nobody = Principal(None, None, None, frozenset(), (), None)
        assert v.revoked.is_revoked(cache_key(token), nobody)  # by hash alone
        assert v.revoked.is_revoked(b"\0" * 32, principal)  # by jti alone
        assert not v.revoked.is_revoked(b"\0" * 32, nobody)


async def test_revoked_token_is_refused_without_asking_the_as(demo_server: DemoServer) -> None:
    """After its token_revoked event, a token is refused from the revoked set alone: no
    introspection call, and still refused once the negative cache would have lapsed."""
    server, demo = demo_server.server, demo_server.demo
    token = server.issue(demo.app)
    async with TokenValidator(
        issuer=server.url,
        client_id=demo.rs.client_id,
        client_secret=demo.rs.secret,
        negative_ttl=0,
    ) as v:
        await asyncio.wait_for(v.stream.connected.wait(), 5)
        await v.validate(token)
        assert server.revoke(demo.app, token).status_code == 200
        await wait_until(lambda: len(v.cache) == 0)
        for _ in range(3):
            with pytest.raises(InvalidToken, match="not active"):
                await v.validate(token)
        assert v.introspections == 1
