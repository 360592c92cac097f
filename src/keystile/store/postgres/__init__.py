"""The scale-out store: PostgreSQL through a bounded connection pool, shared by many AS processes.

Same protocol and semantics as the SQLite store (``store/base.py``), with PostgreSQL as the
one truth for every process:

- Nothing durable is cached in-process, except introspection answers under the fence of
  answers.py. The introspection lookup is one statement that reads the token and
  ``registry_version`` together (the server's verified-caller cache is valid only for that
  version), and ``registry_version`` is bumped by triggers on every
  change to clients and resource servers, whichever process makes it.
- Every change and its event commit in one transaction. Event ids are handed out under a
  row lock held to commit (see the migration), so they become visible strictly in order and
  ``latest_event_id()`` never goes backwards, not even after a purge.
- Introspection answers may be remembered in each process, under an answer lease, and a
  write that changes one returns only once every process has forgotten it (answers.py).
- ``listen_events`` wakes the event bus through LISTEN/NOTIFY on a dedicated connection,
  reconnecting when it is lost.
- The pool is bounded: a request waits at most ``acquire_timeout`` for a connection, and
  at most ``max_waiting`` requests wait at all; past either bound, and on any connection or
  query error, the store raises StoreUnavailable, which the server answers with 503.
- Concurrent introspection lookups share one statement (see ``lookup_token``), so under
  load the per-statement cost of a database server is paid once for many requests.

One module per aggregate, composed here as mixins over ``PostgresBase`` (connection.py);
the pool is pool.py.
"""

from __future__ import annotations

try:
    import asyncpg  # noqa: F401 - only to name the missing extra
except ImportError as exc:  # pragma: no cover - only without the extra
    raise ImportError(
        "the PostgreSQL store needs asyncpg (keystile's postgres extra): "
        "pip install 'asyncpg>=0.29'"
    ) from exc

from keystile.store.postgres.answers import AnswersMixin
from keystile.store.postgres.clients import ClientsMixin
from keystile.store.postgres.connection import PostgresBase, migrations
from keystile.store.postgres.events import EVENTS_CHANNEL, EventsMixin
from keystile.store.postgres.grants import GrantsMixin
from keystile.store.postgres.keys import KeysMixin
from keystile.store.postgres.registration import RegistrationMixin
from keystile.store.postgres.stats import StatsMixin
from keystile.store.postgres.tokens import TokensMixin

__all__ = ["EVENTS_CHANNEL", "PostgresStore", "migrations"]


class PostgresStore(
    ClientsMixin,
    RegistrationMixin,
    TokensMixin,
    GrantsMixin,
    KeysMixin,
    EventsMixin,
    StatsMixin,
    AnswersMixin,
    PostgresBase,
):
    """Store protocol over PostgreSQL:
    ``PostgresStore("postgresql://keystile@db.internal/keystile", pool_size=10)``."""
