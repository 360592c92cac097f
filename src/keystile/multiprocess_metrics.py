"""Prometheus metrics across worker processes (prometheus_client multiprocess mode).

With ``--workers N`` the AS and the gateway run N processes behind one port; a scrape reaches
one of them. Each worker then keeps its metric values in files in ``PROMETHEUS_MULTIPROC_DIR``
(prometheus_client picks mmap-backed values when that variable is set as it is imported), and
``/metrics`` adds up every worker's files. The parent makes the folder before it starts the
workers and removes it at exit; a folder the operator names is used as it is and kept.
"""

from __future__ import annotations

import os
import shutil
import socket
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client import multiprocess as prom_multiprocess

if TYPE_CHECKING:
    import uvicorn
    from uvicorn.supervisors import Multiprocess

ENV = "PROMETHEUS_MULTIPROC_DIR"


def enabled() -> bool:
    """Whether this process records its metrics in the shared folder."""
    return bool(os.environ.get(ENV))


@contextmanager
def shared_folder() -> Iterator[str]:
    """In the parent, around running the workers: the folder they share their metrics in.

    ``with shared_folder(): Multiprocess(config, sockets=[sock]).run()``
    """
    own = None
    if not enabled():
        own = tempfile.mkdtemp(prefix="keystile-prom-")
        os.environ[ENV] = own
    try:
        yield os.environ[ENV]
    finally:
        if own is not None:
            shutil.rmtree(own, ignore_errors=True)
            os.environ.pop(ENV, None)


def render(registry: CollectorRegistry) -> bytes:
    """Prometheus text: in multiprocess mode every worker's files added up (``registry`` is
    not read then: its custom collectors would give this process's figures alone), else
    ``registry``."""
    if enabled():
        merged = CollectorRegistry()
        prom_multiprocess.MultiProcessCollector(merged)  # type: ignore[no-untyped-call]
        return bytes(generate_latest(merged))
    return bytes(generate_latest(registry))


def process_ended(pid: int | None = None) -> None:
    """When a worker (this process by default) exits: drop its ``live*`` gauges, so they stop
    counting in the sum or minimum (its counters and histograms stay: what it counted still
    happened)."""
    if enabled():
        prom_multiprocess.mark_process_dead(pid or os.getpid())  # type: ignore[no-untyped-call]


def supervisor(config: uvicorn.Config, sock: socket.socket) -> Multiprocess:
    """uvicorn's supervisor (the AS's and the gateway's ``--workers``), which also takes a
    worker that died (and was replaced) out of the gauges summed over the running workers:
    one that exits normally does so itself. Each worker inherits the socket object: with
    ``fd=`` uvicorn would rebuild it as AF_UNIX and never set TCP_NODELAY."""
    from uvicorn.supervisors import Multiprocess

    class Supervisor(Multiprocess):
        def keep_subprocess_alive(self) -> None:
            before = {p.pid for p in self.processes}
            super().keep_subprocess_alive()
            for pid in before - {p.pid for p in self.processes}:
                if pid is not None:
                    process_ended(pid)

    return Supervisor(config, sockets=[sock])
