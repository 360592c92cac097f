"""Remembered introspection answers on PostgreSQL (store/postgres/answers.py, decision 0007):
real `keystile serve` processes on one schema. Answers come from memory, and still a
revocation that got 200 is seen by the very next introspection in every process, because the
writer waits for every process holding an answer lease to forget, or for its lease to run
out."""

from __future__ import annotations

import os
import re
import signal
import threading
import time
from dataclasses import dataclass

import httpx
import pytest

from tests.e2e.conftest import (
    Demo,
    RunKeystile,
    Server,
    ServerStarter,
    clean_env,
    parse_demo,
)

pytestmark = pytest.mark.process


@dataclass
class Pair:
    a: Server
    b: Server
    demo: Demo
    url: str


def _pair(pg_url: str, start_server: ServerStarter, lease: float) -> Pair:
    env = clean_env(KEYSTILE_ANSWER_LEASE=str(lease))
    a = start_server("--demo", "--db", pg_url, db_flag=False, env=env)
    b = start_server("--no-demo", "--db", pg_url, db_flag=False, env=env)
    return Pair(a, b, parse_demo(a.stdout), pg_url)


@pytest.fixture
def pair(pg_url: str, start_server: ServerStarter) -> Pair:
    return _pair(pg_url, start_server, lease=10.0)


def fast_answers(server: Server) -> float:
    text = server.http.get("/metrics").text
    match = re.search(r"^keystile_introspection_fast_answers_total (\S+)$", text, re.M)
    assert match, "no fast-answer counter"
    return float(match.group(1))


def warm(server: Server, demo: Demo, token: str) -> None:
    """Introspect until ``server`` answers from memory (the first answer fills it)."""
    before = fast_answers(server)
    for _ in range(2):
        assert server.introspect(demo.rs, token).json()["active"] is True
    assert fast_answers(server) == before + 1, "the second answer did not come from memory"


class TestRemembered:
    def test_answers_come_from_memory_and_match_the_database(self, pair: Pair) -> None:
        """The second identical introspection on B is a fast answer, byte for byte the
        first; a different token or other credentials are not."""
        b, demo = pair.b, pair.demo
        token = pair.a.issue(demo.app, scope="read")
        before = fast_answers(b)
        first = b.introspect(demo.rs, token)
        second = b.introspect(demo.rs, token)
        assert first.status_code == second.status_code == 200
        assert first.content == second.content
        assert first.headers["cache-control"] == second.headers["cache-control"] == "no-store"
        assert fast_answers(b) == before + 1
        assert b.introspect(demo.rs, "garbage").json() == {"active": False}
        assert fast_answers(b) == before + 1

    def test_revoked_on_a_is_inactive_on_b_at_once_every_time(self, pair: Pair) -> None:
        """Twenty times: B answers a token from memory, A revokes it (200), and B's very
        next introspection, and A's, answer inactive."""
        a, b, demo = pair.a, pair.b, pair.demo
        for _ in range(20):
            token = a.issue(demo.app)
            warm(b, demo, token)
            warm(a, demo, token)
            assert a.revoke(demo.app, token).status_code == 200
            assert b.introspect(demo.rs, token).json() == {"active": False}
            assert a.introspect(demo.rs, token).json() == {"active": False}

    def test_client_disabled_by_the_cli_is_refused_from_memory_at_once(
        self, pair: Pair, run_keystile: RunKeystile
    ) -> None:
        """A third process (the CLI) holds no lease, yet its change is fenced too: B, which
        answered from memory a moment ago, refuses the disabled resource server."""
        b, demo = pair.b, pair.demo
        token = pair.a.issue(demo.app)
        warm(b, demo, token)
        done = run_keystile("client", "disable", "demo-rs", "--db", pair.url)
        assert done.returncode == 0, done.stderr
        assert b.introspect(demo.rs, token).status_code == 401


class TestFence:
    def test_a_revocation_waits_for_a_paused_process_to_forget(self, pair: Pair) -> None:
        """B is paused (SIGSTOP) while it remembers the token as active. A's revocation
        does not answer until B has forgotten: here, until B runs again one second later
        and acknowledges (its 10 s lease has not run out). Then B answers inactive."""
        a, b, demo = pair.a, pair.b, pair.demo
        token = a.issue(demo.app)
        warm(b, demo, token)
        answered: list[float] = []

        def revoke() -> None:
            started = time.monotonic()
            with httpx.Client(base_url=a.url, trust_env=False, timeout=30) as http:
                r = http.post("/oauth2/revoke", data={"token": token}, auth=demo.app.auth)
            assert r.status_code == 200
            answered.append(time.monotonic() - started)

        os.kill(b.proc.pid, signal.SIGSTOP)
        try:
            worker = threading.Thread(target=revoke)
            worker.start()
            time.sleep(1.0)
            assert not answered, "the revocation answered while B still remembered the token"
        finally:
            os.kill(b.proc.pid, signal.SIGCONT)
        worker.join(15)
        assert answered, "the revocation never answered"
        assert 1.0 <= answered[0] < 5.0
        assert b.introspect(demo.rs, token).json() == {"active": False}

    def test_a_process_that_stays_away_is_waited_for_no_longer_than_its_lease(
        self, pg_url: str, start_server: ServerStarter
    ) -> None:
        """With 1 s leases, B paused for 3 s: A's revocation answers once B's lease has run
        out (about 1 s, not 3); B, resumed, reads the database (its lease lapsed) and
        answers inactive."""
        pair = _pair(pg_url, start_server, lease=1.0)
        a, b, demo = pair.a, pair.b, pair.demo
        token = a.issue(demo.app)
        warm(b, demo, token)
        os.kill(b.proc.pid, signal.SIGSTOP)
        try:
            started = time.monotonic()
            assert a.revoke(demo.app, token).status_code == 200
            waited = time.monotonic() - started
            time.sleep(max(0.0, 3.0 - waited))
        finally:
            os.kill(b.proc.pid, signal.SIGCONT)
        assert waited < 2.5, waited
        assert b.introspect(demo.rs, token).json() == {"active": False}

    def test_lease_zero_reads_the_database_every_time(
        self, pg_url: str, start_server: ServerStarter
    ) -> None:
        """answer_lease = 0: no answer from memory, and writes do not wait."""
        pair = _pair(pg_url, start_server, lease=0)
        b, demo = pair.b, pair.demo
        token = pair.a.issue(demo.app)
        before = fast_answers(b)
        for _ in range(3):
            assert b.introspect(demo.rs, token).json()["active"] is True
        assert fast_answers(b) == before
