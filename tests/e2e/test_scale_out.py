"""Two real `keystile serve` processes on one PostgreSQL database (and one Redis): one truth,
no stale answer on either, whichever process or the CLI made the change."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import pytest

from tests.conftest import Creds
from tests.e2e.conftest import (
    Demo,
    RunKeystile,
    Server,
    ServerStarter,
    clean_env,
    parse_demo,
)
from tests.e2e.test_events import Stream

pytestmark = pytest.mark.process

THROTTLE_LIMIT = 3
THROTTLE_WINDOW = 60
REGISTRATION_LIMIT = 3
INVALID_CLIENT = {"error": "invalid_client", "error_description": "client authentication failed"}


@dataclass
class Pair:
    a: Server
    b: Server
    demo: Demo
    url: str


@pytest.fixture
def pair(pg_url: str, redis_url: str, redis_prefix: str, start_server: ServerStarter) -> Pair:
    """Instances A and B on one fresh PostgreSQL schema and one Redis; A started first and
    created the demo clients, B found the database initialized."""
    env = clean_env(
        KEYSTILE_REDIS_URL=redis_url,
        KEYSTILE_REDIS_PREFIX=redis_prefix,
        KEYSTILE_THROTTLE_FAILURES=str(THROTTLE_LIMIT),
        KEYSTILE_THROTTLE_WINDOW=str(THROTTLE_WINDOW),
        KEYSTILE_REGISTRATION="open",
        KEYSTILE_REGISTRATION_RATE_LIMIT=str(REGISTRATION_LIMIT),
        KEYSTILE_REGISTRATION_RATE_WINDOW=str(THROTTLE_WINDOW),
    )
    a = start_server("--demo", "--db", pg_url, db_flag=False, env=env)
    b = start_server("--no-demo", "--db", pg_url, db_flag=False, env=env)
    return Pair(a, b, parse_demo(a.stdout), pg_url)


def _inside_a_window() -> None:
    """The shared windows are aligned to the clock (every process counts the same one):
    attempts straddling a boundary count in two windows. Start well inside one."""
    if time.time() % THROTTLE_WINDOW > THROTTLE_WINDOW - 10:
        time.sleep(THROTTLE_WINDOW - time.time() % THROTTLE_WINDOW + 0.2)


def _eventually(check: Callable[[], bool], within: float = 3.0) -> None:
    deadline = time.monotonic() + within
    while not check():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.02)


class TestOneTruth:
    def test_token_from_a_is_active_on_b_and_revoked_on_b_is_inactive_on_a(
        self, pair: Pair
    ) -> None:
        """A token issued on A introspects active on B; revoked on B, the very next
        introspection on A (and on B) answers inactive."""
        a, b, demo = pair.a, pair.b, pair.demo
        token = a.issue(demo.app, scope="read")
        for server in (b, a):  # both now hold the resource server as a verified caller
            body = server.introspect(demo.rs, token).json()
            assert body["active"] is True
            assert body["client_id"] == "demo-app"
        assert b.revoke(demo.app, token).status_code == 200
        assert a.introspect(demo.rs, token).json() == {"active": False}
        assert b.introspect(demo.rs, token).json() == {"active": False}

    def test_client_disabled_with_the_cli_fails_on_every_instance(
        self, pair: Pair, run_keystile: RunKeystile
    ) -> None:
        """Disabling a client (CLI, a third process) revokes its tokens and refuses it on A
        and B at once, even where its credentials were verified and cached a moment ago."""
        a, b, demo = pair.a, pair.b, pair.demo
        token = a.issue(demo.app)
        assert b.introspect(demo.rs, token).json()["active"] is True  # demo-rs cached on B

        done = run_keystile("client", "disable", "demo-app", "--db", pair.url)
        assert done.returncode == 0, done.stderr
        for server in (a, b):
            assert server.introspect(demo.rs, token).json() == {"active": False}
            r = server.token(demo.app)
            assert r.status_code == 401
            assert r.json() == INVALID_CLIENT

        done = run_keystile("client", "disable", "demo-rs", "--db", pair.url)
        assert done.returncode == 0, done.stderr
        r = b.introspect(demo.rs, token)  # the cached caller is dropped with the change
        assert r.status_code == 401
        assert r.json() == INVALID_CLIENT

    def test_secret_rotated_elsewhere_stops_working_at_once(
        self, pair: Pair, run_keystile: RunKeystile
    ) -> None:
        """After `client rotate-secret`, B refuses the old secret on its next request although
        it had verified it just before, and accepts the new one."""
        a, b, demo = pair.a, pair.b, pair.demo
        token = a.issue(demo.app)
        assert b.introspect(demo.rs, token).status_code == 200
        done = run_keystile("client", "rotate-secret", "demo-rs", "--json", "--db", pair.url)
        assert done.returncode == 0, done.stderr
        assert b.introspect(demo.rs, token).status_code == 401
        new_secret = done.stdout.split('"client_secret": "')[1].split('"')[0]
        fresh = Creds("demo-rs", new_secret)
        assert b.introspect(fresh, token).json()["active"] is True
        assert a.introspect(fresh, token).json()["active"] is True


class TestSharedState:
    def test_failed_authentications_on_a_throttle_b(self, pair: Pair) -> None:
        """Failed client authentications counted on A make B answer 429 to the next failure
        for that client id from that address, and 200 to its right secret; both report
        Redis in /readyz."""
        a, b, demo = pair.a, pair.b, pair.demo
        for server in (a, b):
            assert server.http.get("/readyz").json() == {
                "status": "ok",
                "store": "ok",
                "redis": "ok",
            }
        _inside_a_window()
        wrong = Creds("demo-app", "not-the-secret")
        for _ in range(THROTTLE_LIMIT):
            assert a.token(wrong).status_code == 401
        # Every failure on B counts too, so B is not polled: the totals reach it within
        # milliseconds, and on its own count the first failure would be a 401.
        time.sleep(1.0)
        r = b.token(wrong)
        assert r.status_code == 429
        assert int(r.headers["retry-after"]) >= 1
        assert b.token(demo.app).status_code == 200

    def test_registrations_on_a_count_on_b(self, pair: Pair) -> None:
        """The registration rate limit (RFC 7591 endpoint, per address) is shared through
        Redis too: after REGISTRATION_LIMIT registrations on A, B answers 429."""
        body = {"redirect_uris": ["http://127.0.0.1:8123/cb"], "token_endpoint_auth_method": "none"}
        _inside_a_window()
        for _ in range(REGISTRATION_LIMIT):
            assert pair.a.http.post("/oauth2/register", json=body).status_code == 201
        # B hears A's totals within milliseconds (published, not polled).
        time.sleep(1.0)
        r = pair.b.http.post("/oauth2/register", json=body)
        assert r.status_code == 429, r.text
        assert int(r.headers["retry-after"]) >= 1

    def test_revocation_on_b_is_streamed_by_a(self, pair: Pair) -> None:
        """A revocation committed through B reaches an event stream open on A promptly:
        PostgreSQL NOTIFY wakes A instead of its one-second safety poll."""
        a, b, demo = pair.a, pair.b, pair.demo
        stream = Stream(a, demo.rs).start()
        try:
            assert stream.status == 200
            stream.next("ready")
            token = b.issue(demo.app)
            started = time.monotonic()
            assert b.revoke(demo.app, token).status_code == 200
            msg = stream.next("token_revoked")
            assert time.monotonic() - started < 0.9
            assert msg.data["client_id"] == "demo-app"
        finally:
            stream.close()
