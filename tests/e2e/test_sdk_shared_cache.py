"""The SDK's optional shared Redis cache, against a real AS process and the local Redis."""

from __future__ import annotations

import asyncio
import hashlib

import pytest
import redis.asyncio as aioredis

from keystile.errors import InvalidToken
from keystile.resource import TokenValidator
from keystile.resource.shared_cache import SharedCache
from tests.e2e.conftest import DemoServer

pytestmark = pytest.mark.process


@pytest.fixture
async def shared(redis_url: str, redis_prefix: str):
    client = aioredis.Redis.from_url(redis_url)
    yield SharedCache(client, prefix=redis_prefix)
    keys = [k async for k in client.scan_iter(f"{redis_prefix}:*")]
    if keys:
        await client.delete(*keys)
    await client.aclose()


def _validator(demo_server: DemoServer, shared: SharedCache, **kw) -> TokenValidator:
    server, demo = demo_server.server, demo_server.demo
    return TokenValidator(
        issuer=server.url,
        client_id=demo.rs.client_id,
        client_secret=demo.rs.secret,
        shared_cache=shared,
        **kw,
    )


async def _wait(predicate, limit: float = 5.0) -> None:
    loop = asyncio.get_running_loop()
    end = loop.time() + limit
    while not await predicate():
        assert loop.time() < end, "condition not met in time"
        await asyncio.sleep(0.01)


class TestSharedCache:
    async def test_second_instance_uses_the_shared_answer(self, demo_server, shared):
        """Two validators sharing Redis make one introspection for one token between them,
        and Redis holds the token's SHA-256, never the token."""
        server, demo = demo_server.server, demo_server.demo
        token = server.issue(demo.app, scope="read")
        async with (
            _validator(demo_server, shared, events=False) as a,
            _validator(demo_server, shared, events=False) as b,
        ):
            first = await a.validate(token)
            second = await b.validate(token)
            assert (a.introspections, b.introspections) == (1, 0)
            assert second.scopes == first.scopes == frozenset({"read"})
            keys = [k async for k in shared.redis.scan_iter(f"{shared.prefix}:*")]
            digest = hashlib.sha256(token.encode()).hexdigest()
            assert any(k.decode().endswith(digest) for k in keys)
            for k in keys:
                assert token.encode() not in (await shared.redis.get(k) or b"")

    async def test_revocation_event_deletes_the_shared_entry(self, demo_server, shared):
        """A token_revoked event removes the shared value, so no instance takes it back."""
        server, demo = demo_server.server, demo_server.demo
        token = server.issue(demo.app)
        async with (
            _validator(demo_server, shared) as a,
            _validator(demo_server, shared, events=False) as b,
        ):
            await asyncio.wait_for(a.stream.connected.wait(), 5)
            await a.validate(token)
            assert server.revoke(demo.app, token).status_code == 200

            key = hashlib.sha256(token.encode()).digest()

            async def gone() -> bool:
                return len(a.cache) == 0 and await shared.redis.get(await shared._key(key)) is None

            await _wait(gone)
            with pytest.raises(InvalidToken):
                await b.validate(token)
            assert b.introspections == 1

    async def test_client_disabled_retires_every_shared_value(
        self, demo_server, shared, run_keystile
    ):
        """client_disabled bumps the shared generation: no old value is used again."""
        server, demo = demo_server.server, demo_server.demo
        token = server.issue(demo.app)
        async with _validator(demo_server, shared) as a:
            await asyncio.wait_for(a.stream.connected.wait(), 5)
            await a.validate(token)
            before = await shared._generation()
            done = run_keystile("client", "disable", "demo-app", "--db", str(server.db))
            assert done.returncode == 0

            async def bumped() -> bool:
                return await shared._generation() > before

            await _wait(bumped)
            async with _validator(demo_server, shared, events=False) as b:
                with pytest.raises(InvalidToken):
                    await b.validate(token)
                assert b.introspections == 1

    async def test_redis_down_falls_back_to_the_as(self, demo_server):
        """An unreachable Redis never fails a request: the validator asks the AS."""
        server, demo = demo_server.server, demo_server.demo
        token = server.issue(demo.app)
        dead = SharedCache(aioredis.Redis(host="127.0.0.1", port=1, socket_connect_timeout=0.2))
        async with _validator(demo_server, dead, events=False) as v:
            principal = await v.validate(token)
            assert principal.client_id == "demo-app"
            assert v.introspections == 1
            assert dead.errors >= 1
        await dead.redis.aclose()
