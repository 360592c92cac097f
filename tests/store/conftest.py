"""Stores under contract: every backend, opened the way the server opens them."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest

from keystile.server.app import open_store
from keystile.settings import ServerSettings
from keystile.store.base import Store

Connect = Callable[[], Awaitable[Store]]


@pytest.fixture(params=["sqlite", "postgres"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The database of one backend: a SQLite file, or a fresh PostgreSQL schema."""
    if request.param == "sqlite":
        return str(tmp_path / "contract.db")
    return str(request.getfixturevalue("pg_url"))


@pytest.fixture
async def connect(db_url: str) -> AsyncIterator[Connect]:
    """Open stores on the test's database, as separate processes would; closed afterwards."""
    opened: list[Store] = []

    async def make() -> Store:
        store = open_store(ServerSettings(db=db_url, db_pool_size=4))
        await store.open()
        opened.append(store)
        return store

    yield make
    for store in reversed(opened):
        await store.close()


@pytest.fixture
async def store(connect: Connect) -> Store:
    """The store under contract (overrides the SQLite-only fixture of tests/conftest.py)."""
    return await connect()
