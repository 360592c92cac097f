"""A PostgreSQL outage under traffic: 503 with Retry-After while the database is gone, never a
wrong answer, and recovery on its own once it is back, without restarting keystile.

The test runs its own throwaway PostgreSQL cluster (initdb/pg_ctl as the `postgres` OS user,
in a temporary folder, on a free loopback port), so stopping it disturbs nothing else.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from tests.conftest import INTROSPECT, TOKEN, Creds, service_unavailable
from tests.e2e.conftest import ServerStarter, clean_env, free_port, parse_demo

pytestmark = pytest.mark.process

PG_USER = "postgres"
RECOVERY_TIMEOUT = 20.0


@dataclass
class Cluster:
    """A PostgreSQL cluster of our own: ``stop()`` and ``start()`` it at will."""

    bindir: Path
    folder: Path
    port: int

    @property
    def url(self) -> str:
        return f"postgresql://{PG_USER}@127.0.0.1:{self.port}/postgres"

    def _pg_ctl(self, *args: str) -> None:
        subprocess.run(
            ["runuser", "-u", PG_USER, "--", str(self.bindir / "pg_ctl"), *args],
            check=True,
            capture_output=True,
            timeout=30,
        )

    def start(self) -> None:
        options = (
            f"-p {self.port} -k {self.folder} -c listen_addresses=127.0.0.1 -c fsync=off"
            " -c full_page_writes=off"
        )
        self._pg_ctl(
            "-D", str(self.folder / "data"), "-o", options, "-l", str(self.folder / "log"), "-w",
            "start",
        )  # fmt: skip

    def stop(self, mode: str = "fast") -> None:
        self._pg_ctl("-D", str(self.folder / "data"), "-m", mode, "-w", "stop")


def _bindir() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


@pytest.fixture
def cluster() -> Iterator[Cluster]:
    """A fresh PostgreSQL cluster on a free port, removed after the test."""
    bindir = _bindir()
    if bindir is None:
        service_unavailable("PostgreSQL server binaries (initdb, pg_ctl) are not installed")
    if os.geteuid() != 0 or shutil.which("runuser") is None:
        service_unavailable("a throwaway cluster needs root, to run initdb as the postgres user")
    try:
        owner = pwd.getpwnam(PG_USER)
    except KeyError:
        service_unavailable("there is no `postgres` OS user to run a throwaway cluster as")
    folder = Path(tempfile.mkdtemp(prefix="keystile-pg-"))
    os.chown(folder, owner.pw_uid, owner.pw_gid)
    c = Cluster(bindir, folder, free_port())
    try:
        subprocess.run(
            ["runuser", "-u", PG_USER, "--", str(bindir / "initdb"), "-D", str(folder / "data"),
             "-A", "trust", "-U", PG_USER, "-E", "UTF8", "--no-sync"],
            check=True, capture_output=True, timeout=60,
        )  # fmt: skip
        c.start()
        yield c
    finally:
        if (folder / "data" / "postmaster.pid").exists():
            c.stop("immediate")
        shutil.rmtree(folder, ignore_errors=True)


@dataclass
class Traffic:
    """Requests sent in a loop on a thread, every answer recorded."""

    url: str
    path: str
    data: dict[str, str]
    creds: Creds
    answers: list[tuple[float, int, dict[str, object], str | None]] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        with httpx.Client(base_url=self.url, timeout=10.0, trust_env=False) as http:
            while not self.stop.is_set():
                r = http.post(self.path, data=self.data, auth=self.creds.auth)
                self.answers.append(
                    (time.monotonic(), r.status_code, r.json(), r.headers.get("retry-after"))
                )
                time.sleep(0.01)


def _check_503(status: int, body: dict[str, object], retry_after: str | None) -> None:
    assert status == 503, (status, body)
    assert retry_after == "1"
    assert body["error"] == "temporarily_unavailable"  # RFC 6749 §5.2 shape
    assert isinstance(body.get("error_description"), str)
    assert "active" not in body


def test_outage_answers_503_never_a_wrong_answer_and_recovers(
    cluster: Cluster, start_server: ServerStarter
) -> None:
    """PostgreSQL stopped mid-traffic: introspection and token requests get 503 + Retry-After,
    a valid token is never reported inactive, /readyz says unavailable; after the database
    restarts the same process answers correctly again on its own."""
    env = clean_env(KEYSTILE_DB_ACQUIRE_TIMEOUT="0.5", KEYSTILE_DB_QUERY_TIMEOUT="1")
    server = start_server("--demo", "--db", cluster.url, db_flag=False, env=env)
    demo = parse_demo(server.stdout)
    token = server.issue(demo.app)
    introspection = Traffic(server.url, INTROSPECT, {"token": token}, demo.rs)
    issuing = Traffic(server.url, TOKEN, {"grant_type": "client_credentials"}, demo.app)
    threads = [threading.Thread(target=t.run, daemon=True) for t in (introspection, issuing)]
    for t in threads:
        t.start()
    try:
        time.sleep(0.5)
        cluster.stop("fast")
        stopped = time.monotonic()
        time.sleep(1.5)
        ready = server.http.get("/readyz")
        cluster.start()
        restarted = time.monotonic()
        deadline = restarted + RECOVERY_TIMEOUT
        while not any(a[0] > restarted and a[1] == 200 for a in introspection.answers):
            assert time.monotonic() < deadline, "no recovery after the database came back"
            time.sleep(0.05)
        recovered = time.monotonic()
        time.sleep(0.5)
    finally:
        for t in (introspection, issuing):
            t.stop.set()
        for th in threads:
            th.join(15)

    assert server.proc.poll() is None  # the same process, never restarted
    assert ready.status_code == 503
    assert ready.headers["retry-after"] == "1"
    assert ready.json()["status"] == "unavailable"

    during = [a for a in introspection.answers if stopped + 0.2 < a[0] < restarted]
    assert during, "no request was made during the outage"
    outage_503 = 0
    for _, status, body, retry_after in introspection.answers:
        if status == 200:
            assert body["active"] is True, body  # never a wrong "inactive"
            assert body["client_id"] == "demo-app"
        else:
            _check_503(status, body, retry_after)
            outage_503 += 1
    assert outage_503 >= len(during) // 2
    for _, status, body, retry_after in issuing.answers:
        if status != 200:
            _check_503(status, body, retry_after)
    assert any(a[0] > recovered and a[1] == 200 for a in issuing.answers)

    # Fully back: tokens work end to end again, and nothing was an unexpected error.
    fresh = server.issue(demo.app)
    assert server.introspect(demo.rs, fresh).json()["active"] is True
    assert server.revoke(demo.app, fresh).status_code == 200
    assert server.introspect(demo.rs, fresh).json() == {"active": False}
    assert server.http.get("/readyz").status_code == 200
    assert "unexpected error" not in server.stderr
