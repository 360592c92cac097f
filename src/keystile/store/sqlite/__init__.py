"""The embedded default store: one SQLite file in WAL mode, no other service.

Reads run on the event loop thread through their own connection: an indexed point read
on a WAL database takes a few microseconds, far less than a hop to a thread pool. Writes
run in one dedicated thread with their own connection, so an fsync never blocks the loop,
and each write is one ``BEGIN IMMEDIATE`` transaction committed with ``synchronous=FULL``:
once a revocation has answered 200, it survives a crash or power loss.

Clients and resource servers are cached in-process. Any change to them, from this
process or another (the CLI, a second worker), bumps ``registry_version`` through
triggers; every lookup first asks SQLite for ``PRAGMA data_version`` (no disk I/O) and
drops the cache when the registry version moved.

One module per aggregate, composed here as mixins over ``SQLiteBase`` (connection.py).
"""

from __future__ import annotations

from keystile.store.sqlite.clients import ClientsMixin
from keystile.store.sqlite.connection import SQLiteBase, migrations
from keystile.store.sqlite.events import EventsMixin
from keystile.store.sqlite.grants import GrantsMixin
from keystile.store.sqlite.keys import KeysMixin
from keystile.store.sqlite.registration import RegistrationMixin
from keystile.store.sqlite.stats import StatsMixin
from keystile.store.sqlite.tokens import TokensMixin

__all__ = ["SQLiteStore", "migrations"]


class SQLiteStore(
    ClientsMixin,
    RegistrationMixin,
    TokensMixin,
    GrantsMixin,
    KeysMixin,
    EventsMixin,
    StatsMixin,
    SQLiteBase,
):
    """Store protocol over one SQLite file: ``SQLiteStore("keystile.db")``."""
