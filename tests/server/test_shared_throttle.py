"""Failed client-authentication throttling shared through Redis, and how it degrades.

Counts recorded by one AS throttle the same (client id, address) pair or address on every
other, by the same rules (failures only; a verifying credential is never refused); with
Redis down each process still throttles on its own counts, logs it and says so in /readyz;
and a verified caller on the introspection hot path never costs a Redis command.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
import subprocess
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path

import httpx
import pytest
import redis

from keystile.clock import FixedClock
from keystile.server.app import KeystileApp, create_app
from keystile.server.shared_throttle import RedisFailureThrottle
from keystile.settings import ServerSettings
from keystile.store.sqlite import SQLiteStore
from tests.conftest import INTROSPECT, ISSUER, Setup, service_unavailable
from tests.e2e.conftest import free_port

LIMIT = 3
DOWN_URL = "redis://127.0.0.1:1/0"  # nothing listens on port 1


def _ca(client_id: str, address: str) -> str:
    """The throttle key of a registered client's failures from one address."""
    return f"ca:{client_id}\0{address}"


def _throttle(app: KeystileApp) -> RedisFailureThrottle:
    throttle = app.endpoints.throttle
    assert isinstance(throttle, RedisFailureThrottle)
    return throttle


async def _eventually(check: Callable[[], bool], within: float = 3.0) -> None:
    deadline = time.monotonic() + within
    while not check():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)


MakeApp = Callable[[str], Awaitable[KeystileApp]]


@pytest.fixture
async def make_app(
    db_path: Path, store: SQLiteStore, clock: FixedClock, redis_prefix: str
) -> AsyncIterator[MakeApp]:
    """Build AS apps over the test's store with a Redis-shared throttle, started by hand
    (the in-process client runs no lifespan) and stopped at teardown."""
    apps: list[KeystileApp] = []

    async def make(url: str) -> KeystileApp:
        settings = ServerSettings(
            db=str(db_path),
            issuer=ISSUER,
            purge_interval=0,
            throttle_failures=LIMIT,
            redis_url=url,
            redis_prefix=redis_prefix,
        )
        app = create_app(settings, store=store, clock=clock)
        await _throttle(app).start()
        apps.append(app)
        return app

    yield make
    for app in apps:
        await _throttle(app).stop()


def _client(app: KeystileApp, address: str = "203.0.113.7") -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=app, client=(address, 40000))
    return httpx.AsyncClient(transport=transport, base_url=ISSUER)


async def _fail(http: httpx.AsyncClient, client_id: str, times: int) -> list[int]:
    codes = []
    for _ in range(times):
        r = await http.post(INTROSPECT, data={"token": "x"}, auth=(client_id, "wrong"))
        codes.append(r.status_code)
    return codes


@pytest.mark.usefixtures("redis_url")
class TestSharedAcrossInstances:
    async def test_failures_on_one_instance_throttle_another(
        self, make_app: MakeApp, redis_url: str, setup: Setup
    ) -> None:
        """After LIMIT failed authentications for a client id from an address on instance
        A, instance B answers the next failure from there 429, and the right secret 200."""
        a = await make_app(redis_url)
        b = await make_app(redis_url)
        address = "198.51.100.1"  # both instances behind one load balancer see the caller
        async with _client(a, address) as http_a, _client(b, address) as http_b:
            assert await _fail(http_a, "rs-1", LIMIT) == [401] * LIMIT
            await _eventually(lambda: _throttle(b).retry_after(_ca("rs-1", address)) > 0)
            assert await _fail(http_b, "rs-1", 1) == [429]
            r = await http_b.post(INTROSPECT, data={"token": "x"}, auth=setup.rs.auth)
            assert r.status_code == 200
            # Another address is not affected.
            async with _client(b, "198.51.100.2") as elsewhere:
                assert await _fail(elsewhere, "rs-1", 1) == [401]

    async def test_counts_add_up_across_instances(
        self, make_app: MakeApp, redis_url: str, setup: Setup
    ) -> None:
        """Failures spread over instances are summed: LIMIT - 1 on A and one on B throttle
        the (client id, address) pair on both (per process neither would have reached LIMIT)."""
        a = await make_app(redis_url)
        b = await make_app(redis_url)
        address = "198.51.100.1"
        key = _ca("rs-1", address)
        async with _client(a, address) as http_a, _client(b, address) as http_b:
            await _fail(http_a, "rs-1", LIMIT - 1)
            await _eventually(lambda: _throttle(b)._counts.get(key, (0, 0))[1] == LIMIT - 1)
            await _fail(http_b, "rs-1", 1)
            await _eventually(lambda: _throttle(a).retry_after(key) > 0)
            assert _throttle(b).retry_after(key) > 0
            assert await _fail(http_a, "rs-1", 1) == [429]

    async def test_verified_callers_cost_no_redis_command(
        self, make_app: MakeApp, redis_url: str, setup: Setup, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Introspections by a verified, cached caller send nothing to Redis, even while
        failures of another client are on record (the check reads the local mirror)."""
        app = await make_app(redis_url)
        throttle = _throttle(app)
        client = throttle._redis
        sent: list[str] = []
        # Count (and still send) every command and pipeline this throttle's client issues.
        execute, pipeline = client.execute_command, client.pipeline

        async def counted_execute(*args: object, **kwargs: object) -> object:
            sent.append(str(args[0]))
            return await execute(*args, **kwargs)

        def counted_pipeline(*args: object, **kwargs: object) -> object:
            sent.append("PIPELINE")
            return pipeline(*args, **kwargs)

        monkeypatch.setattr(client, "execute_command", counted_execute)
        monkeypatch.setattr(client, "pipeline", counted_pipeline)
        async with _client(app) as http:
            await _fail(http, "unknown-client", 1)  # a failure on record: the throttle is active
            await _eventually(lambda: "PUBLISH" in sent)
            assert throttle.active
            r = await http.post(INTROSPECT, data={"token": "x"}, auth=setup.rs.auth)
            assert r.status_code == 200
            before = len(sent)
            for _ in range(100):
                r = await http.post(INTROSPECT, data={"token": "x"}, auth=setup.rs.auth)
                assert r.status_code == 200
            await asyncio.sleep(0.05)
        assert sent[before:] == []
        assert sent[:before] == ["PIPELINE", "PUBLISH"]  # the one failure: INCR, then totals

    async def test_readyz_reports_redis(self, make_app: MakeApp, redis_url: str) -> None:
        """/readyz says "redis": "ok" while Redis answers."""
        app = await make_app(redis_url)
        async with _client(app) as http:
            r = await http.get("/readyz")
        assert r.status_code == 200
        assert r.json() == {"status": "ok", "store": "ok", "redis": "ok"}


class TestRedisDown:
    async def test_unreachable_redis_degrades_to_local_counts(
        self, make_app: MakeApp, setup: Setup, caplog: pytest.LogCaptureFixture
    ) -> None:
        """With Redis unreachable the AS starts at once, warns, reports it in /readyz (still
        ready) and throttles failures on this process's own counts."""
        caplog.set_level(logging.WARNING, logger="keystile")
        started = time.monotonic()
        app = await make_app(DOWN_URL)
        assert time.monotonic() - started < 2.0
        assert any("Redis unreachable" in r.getMessage() for r in caplog.records)
        async with _client(app) as http:
            r = await http.get("/readyz")
            assert r.status_code == 200
            assert r.json()["redis"] == "unavailable"
            assert await _fail(http, "rs-1", LIMIT + 1) == [401] * LIMIT + [429]
            assert await _fail(http, "rs-2", 1) == [429]  # the address is over its limit too
            # ...but right credentials from it are never refused.
            r = await http.post(INTROSPECT, data={"token": "x"}, auth=setup.other_rs.auth)
            assert r.status_code == 200


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[tuple[str, Callable[[], None], Callable[[], None]]]:
    """A throwaway redis-server on a free port, with start/stop controls."""
    binary = shutil.which("redis-server")
    if binary is None:
        service_unavailable("redis-server is not installed (needed to stop and restart one)")
    port = free_port()
    procs: list[subprocess.Popen[bytes]] = []

    def start() -> None:
        procs.append(
            subprocess.Popen(
                [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", ""],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                cwd=tmp_path,
            )
        )
        deadline = time.monotonic() + 5
        while True:
            try:
                redis.Redis(port=port, socket_connect_timeout=0.2).ping()
                return
            except redis.ConnectionError:
                assert time.monotonic() < deadline, "redis-server did not start"
                time.sleep(0.02)

    def stop() -> None:
        for p in procs:
            if p.poll() is None:
                p.terminate()
                p.wait(5)

    start()
    yield f"redis://127.0.0.1:{port}/0", start, stop
    stop()


class TestRedisOutage:
    async def test_sharing_resumes_when_redis_returns(
        self,
        make_app: MakeApp,
        own_redis: tuple[str, Callable[[], None], Callable[[], None]],
        caplog: pytest.LogCaptureFixture,
        setup: Setup,
    ) -> None:
        """Redis stopping is noticed and logged; while down each instance counts alone; once
        it is back, /readyz says ok and failures are shared again, without a restart."""
        url, start, stop = own_redis
        caplog.set_level(logging.INFO, logger="keystile")
        a = await make_app(url)
        b = await make_app(url)
        for t in (_throttle(a), _throttle(b)):
            t._retry_interval = 0.05
        assert _throttle(a).state == "ok"
        stop()
        async with _client(a, "198.51.100.1") as http_a, _client(b, "198.51.100.2") as http_b:
            await _fail(http_a, "rs-1", 1)
            await _eventually(lambda: _throttle(a).state == "unavailable")
            assert any("Redis unreachable" in r.getMessage() for r in caplog.records)
            r = await http_a.get("/readyz")
            assert r.json()["redis"] == "unavailable"
            start()
            await _eventually(lambda: _throttle(b).state == "ok", within=5.0)
            await _eventually(lambda: _throttle(a).state == "ok", within=5.0)
            async with _client(a, "198.51.100.3") as http_a2:  # an address not yet counted
                assert await _fail(http_a2, "rs-2", LIMIT) == [401] * LIMIT
            await _eventually(lambda: _throttle(b).retry_after(_ca("rs-2", "198.51.100.3")) > 0)
            r = await http_b.get("/readyz")
            assert r.json()["redis"] == "ok"
        assert any("reachable again" in r.getMessage() for r in caplog.records)
