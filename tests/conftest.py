"""Shared fixtures: a real SQLite file, the real app, an in-process HTTP client."""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
from base64 import b64encode
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn, TypeVar
from urllib.parse import quote_plus

import httpx
import pytest

from keystile import admin
from keystile.clock import FixedClock
from keystile.server.app import KeystileApp, create_app
from keystile.settings import ServerSettings
from keystile.store.sqlite import SQLiteStore

ISSUER = "https://as.example.test"
API = "https://api.example.test"
OTHER_API = "https://other.example.test"

TOKEN = "/oauth2/token"
INTROSPECT = "/oauth2/introspect"
REVOKE = "/oauth2/revoke"


@dataclass
class Creds:
    client_id: str
    secret: str = field(repr=False)

    @property
    def auth(self) -> tuple[str, str]:
        return (self.client_id, self.secret)


@pytest.fixture
def clock() -> FixedClock:
    return FixedClock(1_800_000_000)


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "keystile.db"


@pytest.fixture
def settings(db_path: Path) -> ServerSettings:
    return ServerSettings(db=str(db_path), issuer=ISSUER, purge_interval=0, access_log=False)


@pytest.fixture
async def store(db_path: Path) -> AsyncIterator[SQLiteStore]:
    s = SQLiteStore(db_path)
    await s.open()
    yield s
    await s.close()


@pytest.fixture
def app(settings: ServerSettings, store: SQLiteStore, clock: FixedClock) -> KeystileApp:
    return create_app(settings, store=store, clock=clock)


@pytest.fixture
async def http(app: KeystileApp) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=app, client=("203.0.113.7", 40000))
    async with httpx.AsyncClient(transport=transport, base_url=ISSUER) as c:
        yield c


RegisterClient = Callable[..., Awaitable[Creds]]


@pytest.fixture
def register_client(store: SQLiteStore, clock: FixedClock) -> RegisterClient:
    async def register(client_id: str, **kwargs: Any) -> Creds:
        kwargs.setdefault("scopes", ["read", "write"])
        _, secret = await admin.create_client(store, clock, client_id=client_id, **kwargs)
        return Creds(client_id, secret)

    return register


@pytest.fixture
def register_resource(store: SQLiteStore, clock: FixedClock) -> Callable[..., Awaitable[None]]:
    async def register(identifier: str, clients: list[str], **kwargs: Any) -> None:
        await admin.create_resource_server(
            store, clock, identifier=identifier, introspection_clients=clients, **kwargs
        )

    return register


@dataclass
class Setup:
    app: Creds  # client_credentials client, scopes read write, audience API
    rs: Creds  # introspects for API
    other_rs: Creds  # introspects for OTHER_API


@pytest.fixture
async def setup(
    register_client: RegisterClient, register_resource: Callable[..., Awaitable[None]]
) -> Setup:
    app = await register_client("app-1", default_audience=[API])
    rs = await register_client("rs-1", grant_types=[], scopes=[])
    other = await register_client("rs-2", grant_types=[], scopes=[])
    await register_resource(API, ["rs-1"])
    await register_resource(OTHER_API, ["rs-2"])
    return Setup(app, rs, other)


IssueToken = Callable[..., Awaitable[str]]


@pytest.fixture
def issue_token(http: httpx.AsyncClient) -> IssueToken:
    async def issue(creds: Creds, **form: Any) -> str:
        data = {"grant_type": "client_credentials", **form}
        r = await http.post(TOKEN, data=data, auth=creds.auth)
        assert r.status_code == 200, r.text
        return str(r.json()["access_token"])

    return issue


@pytest.fixture
def introspect(http: httpx.AsyncClient) -> Callable[..., Awaitable[httpx.Response]]:
    async def call(creds: Creds, token: str, **form: Any) -> httpx.Response:
        return await http.post(INTROSPECT, data={"token": token, **form}, auth=creds.auth)

    return call


def basic(client_id: str, secret: str) -> str:
    """An Authorization header value for client_secret_basic, with RFC 6749 §2.3.1 encoding."""
    raw = f"{quote_plus(client_id)}:{quote_plus(secret)}".encode()
    return "Basic " + b64encode(raw).decode("ascii")


HttpFrom = Callable[[str], httpx.AsyncClient]


@pytest.fixture
async def http_from(app: KeystileApp) -> AsyncIterator[HttpFrom]:
    """A factory for more in-process clients of the same app, each from its own address."""
    opened: list[httpx.AsyncClient] = []

    def make(address: str) -> httpx.AsyncClient:
        transport = httpx.ASGITransport(app=app, client=(address, 40001))
        c = httpx.AsyncClient(transport=transport, base_url=ISSUER)
        opened.append(c)
        return c

    yield make
    for c in opened:
        await c.aclose()


# -- external services: PostgreSQL and Redis --------------------------------------------------
#
# A test that needs a service skips, naming the reason, when the service is unreachable;
# with KEYSTILE_REQUIRE_SERVICES=1 (CI sets it) it fails instead, so a missing service can
# never pass for green. Read at import: tests/e2e/conftest.py strips KEYSTILE_* variables
# from the environment of each test.

REQUIRE_SERVICES = os.environ.get("KEYSTILE_REQUIRE_SERVICES") == "1"
PG_DSN = os.environ.get("KEYSTILE_TEST_PG_DSN", "postgresql://root@127.0.0.1:5432/test")
REDIS_URL = os.environ.get("KEYSTILE_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")

T = TypeVar("T")


def service_unavailable(reason: str) -> NoReturn:
    """Skip the calling test because a service is missing, or fail it when CI requires it."""
    if REQUIRE_SERVICES:
        pytest.fail(f"{reason} (KEYSTILE_REQUIRE_SERVICES=1: services are required)")
    pytest.skip(reason)


def run_coroutine(coro: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine on a private event loop in another thread (for sync fixtures)."""
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coro).result()


async def pg_execute(sql: str, dsn: str = PG_DSN) -> None:
    """Run SQL on its own short-lived connection."""
    import asyncpg

    conn = await asyncpg.connect(dsn, timeout=3)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


@pytest.fixture(scope="session")
def postgres() -> str:
    """The DSN of the local PostgreSQL server, once it answered."""
    try:
        import asyncpg
    except ImportError:
        service_unavailable("asyncpg is not installed: pip install -e '.[dev]'")
    try:
        run_coroutine(pg_execute("SELECT 1"))
    except (OSError, TimeoutError, asyncpg.PostgresError) as exc:
        service_unavailable(f"PostgreSQL is unreachable at {PG_DSN}: {exc}")
    return PG_DSN


@contextlib.contextmanager
def pg_schema(postgres: str) -> Iterator[str]:
    """A DSN whose search_path is a new, empty schema of its own, dropped on leaving."""
    schema = f"keystile_test_{secrets.token_hex(6)}"
    run_coroutine(pg_execute(f"CREATE SCHEMA {schema}"))
    sep = "&" if "?" in postgres else "?"
    try:
        yield f"{postgres}{sep}search_path={schema}"
    finally:
        run_coroutine(pg_execute(f"SET lock_timeout = '10s'; DROP SCHEMA {schema} CASCADE"))


@pytest.fixture
def pg_url(postgres: str) -> Iterator[str]:
    """A DSN whose search_path is a new, empty schema of its own, dropped after the test."""
    with pg_schema(postgres) as url:
        yield url


@pytest.fixture(scope="session")
def redis_url() -> str:
    """The URL of the local Redis server, once it answered PING."""
    try:
        import redis
    except ImportError:
        service_unavailable("redis-py is not installed: pip install -e '.[dev]'")
    client = redis.Redis.from_url(REDIS_URL, socket_timeout=2, socket_connect_timeout=2)
    try:
        client.ping()
    except (OSError, redis.RedisError) as exc:
        service_unavailable(f"Redis is unreachable at {REDIS_URL}: {exc}")
    finally:
        client.close()
    return REDIS_URL


@pytest.fixture
def redis_prefix() -> str:
    """A key prefix of this test's own, so tests sharing one Redis never see each other."""
    return f"keystile-test:{secrets.token_hex(6)}"
