"""GET /events: the revocation log as Server-Sent Events, against a real server process."""

from __future__ import annotations

import hashlib
import json
import queue
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest

from tests.conftest import Creds
from tests.e2e.conftest import DemoServer, RunKeystile, Server

pytestmark = pytest.mark.process

WAIT = 5.0


@dataclass
class Sse:
    id: int
    event: str
    data: dict[str, Any]


@dataclass
class Stream:
    """Reads one event stream on a thread, so a test can wait for messages."""

    server: Server
    creds: Creds
    last_event_id: str | None = None
    messages: queue.Queue[Sse] = field(default_factory=queue.Queue)
    raw: list[str] = field(default_factory=list)
    status: int | None = None
    _client: httpx.Client | None = None

    def start(self) -> Stream:
        ready = threading.Event()

        def run() -> None:
            headers = {} if self.last_event_id is None else {"last-event-id": self.last_event_id}
            self._client = httpx.Client(
                base_url=self.server.url, timeout=httpx.Timeout(10.0, read=60.0), trust_env=False
            )
            try:
                with self._client.stream(
                    "GET", "/events", auth=self.creds.auth, headers=headers
                ) as r:
                    self.status = r.status_code
                    ready.set()
                    block: dict[str, str] = {}
                    for line in r.iter_lines():
                        self.raw.append(line)
                        if line == "":
                            if "event" in block:
                                self.messages.put(
                                    Sse(int(block["id"]), block["event"], json.loads(block["data"]))
                                )
                            block = {}
                        elif not line.startswith(":"):
                            name, _, value = line.partition(": ")
                            block[name] = value
            except (httpx.HTTPError, RuntimeError):
                pass
            finally:
                ready.set()

        threading.Thread(target=run, daemon=True).start()
        assert ready.wait(WAIT)
        return self

    def next(self, event: str | None = None) -> Sse:
        deadline = time.monotonic() + WAIT
        while True:
            left = deadline - time.monotonic()
            assert left > 0, f"no {event or 'event'} within {WAIT}s; got {self.raw}"
            msg = self.messages.get(timeout=left)
            if event is None or msg.event == event:
                return msg

    def close(self) -> None:
        if self._client is not None:
            self._client.close()


@pytest.fixture
def streams() -> Iterator[list[Stream]]:
    opened: list[Stream] = []
    yield opened
    for s in opened:
        s.close()


def _open(streams: list[Stream], server: Server, creds: Creds, last: str | None = None) -> Stream:
    s = Stream(server, creds, last).start()
    streams.append(s)
    return s


def _sha(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class TestStream:
    def test_revocation_arrives_with_hash_never_token(self, demo_server: DemoServer, streams):
        """A revocation reaches a connected resource server as token_revoked carrying the
        token's SHA-256 and never the token itself."""
        server, demo = demo_server.server, demo_server.demo
        s = _open(streams, server, demo.rs)
        assert s.status == 200
        ready = s.next("ready")
        token = server.issue(demo.app)
        started = time.monotonic()
        assert server.revoke(demo.app, token).status_code == 200
        msg = s.next("token_revoked")
        assert time.monotonic() - started < 1.0
        assert msg.id > ready.id
        assert msg.data["token_sha256"] == _sha(token)
        assert msg.data["client_id"] == "demo-app"
        assert msg.data["type"] == "token_revoked"
        assert not any(token in line for line in s.raw)

    def test_cli_change_in_another_process_is_streamed(
        self, demo_server: DemoServer, run_keystile: RunKeystile, streams
    ):
        """Disabling a client with the CLI (another process) streams client_disabled."""
        server, demo = demo_server.server, demo_server.demo
        s = _open(streams, server, demo.rs)
        s.next("ready")
        done = run_keystile("client", "disable", "demo-app", "--db", str(server.db))
        assert done.returncode == 0, done.stderr
        msg = s.next("client_disabled")
        assert msg.data["client_id"] == "demo-app"

    def test_resume_replays_missed_events(self, demo_server: DemoServer, streams):
        """Reconnecting with Last-Event-ID replays every event after it, then says ready."""
        server, demo = demo_server.server, demo_server.demo
        first = _open(streams, server, demo.rs)
        position = first.next("ready").id
        first.close()
        tokens = [server.issue(demo.app) for _ in range(3)]
        for token in tokens:
            server.revoke(demo.app, token)
        again = _open(streams, server, demo.rs, str(position))
        got = [again.next("token_revoked").data["token_sha256"] for _ in tokens]
        assert got == [_sha(t) for t in tokens]
        assert again.next("ready").id == position + 3

    @pytest.mark.parametrize("last", ["999999", "abc", "-1"])
    def test_unknown_resume_point_resets(self, demo_server: DemoServer, streams, last):
        """A Last-Event-ID the log does not hold gets a reset event before ready."""
        server, demo = demo_server.server, demo_server.demo
        s = _open(streams, server, demo.rs, last)
        assert s.next().event == "reset"
        assert s.next().event == "ready"

    def test_other_audience_sees_no_token_events(
        self, demo_server: DemoServer, run_keystile: RunKeystile, streams
    ):
        """A resource server gets token_revoked only for tokens it could introspect."""
        server, demo = demo_server.server, demo_server.demo
        db = str(server.db)
        made = run_keystile(
            "client", "create", "other-rs", "--grant-type", "none", "--json", "--db", db
        )
        assert made.returncode == 0, made.stderr
        other = Creds("other-rs", json.loads(made.stdout)["client_secret"])
        done = run_keystile(
            "resource", "create", "https://other.example.test", "--client", "other-rs", "--db", db
        )
        assert done.returncode == 0, done.stderr
        s = _open(streams, server, other)
        s.next("ready")
        token = server.issue(demo.app)  # audience https://api.example.test
        server.revoke(demo.app, token)
        run_keystile("client", "disable", "demo-app", "--db", db)
        msg = s.next()
        assert msg.event == "client_disabled"  # the token event was not for this API


class TestAccess:
    def test_without_credentials_is_401(self, demo_server: DemoServer):
        """The stream requires client authentication, with a challenge."""
        r = demo_server.server.http.get("/events")
        assert r.status_code == 401
        assert r.json()["error"] == "invalid_client"
        assert "www-authenticate" in r.headers

    def test_client_that_is_no_resource_server_is_403(self, demo_server: DemoServer):
        """Only introspecting clients of a resource server may subscribe."""
        r = demo_server.server.http.get("/events", auth=demo_server.demo.app.auth)
        assert r.status_code == 403
        assert r.json()["error"] == "unauthorized_client"

    def test_post_is_405(self, demo_server: DemoServer):
        """The stream is GET only."""
        r = demo_server.server.http.post("/events", auth=demo_server.demo.rs.auth)
        assert r.status_code == 405
        assert r.headers["allow"] == "GET"
