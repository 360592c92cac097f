"""Remembered introspection answers on PostgreSQL (store/postgres/answers.py, decision 0007):
real `keystile serve` processes on one schema. Answers come from memory, and still every
change that answered (a revocation's 200, the CLI's exit) is seen by the very next
introspection in every process, because the writer waits for every process holding an answer
lease to forget, or for its lease to run out; and a remembered answer holds only until the
token's exp.

Each invalidation path is checked across two processes, A (the demo setup) and B, with B
answering from memory when the change is made: a revocation (on A, or by the CLI), a user
signed out, disabled or deleted, the resource server's client disabled, deleted or given a new
secret, its resource server deleted, and a token's exp passing. Each check also runs with a
B that hears only the writer's fence (so a write path without one would show), and against
mutants: the same processes with one part of the invalidation taken out by a test double run
before keystile starts (never in the package; ``Variant`` below). There the same check must
observe the stale answer, so it cannot pass vacuously.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import signal
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest

from tests.conftest import Creds, pg_schema
from tests.e2e.conftest import (
    DEMO_AUDIENCE,
    KEYSTILE,
    Cli,
    Demo,
    RunKeystile,
    Server,
    ServerStarter,
    clean_env,
    parse_demo,
)
from tests.e2e.test_code_flow import demo_user_token

pytestmark = pytest.mark.process

LEASE = 10.0  # long: a stale answer on a mutant can never be put down to a lapsed lease
PASSWORD = "correct horse battery staple"

# Test doubles, run before `keystile.cli.main()` in a process the test starts (never in the
# package). Each takes one part of what keeps remembered answers right out, or (FENCES_ONLY)
# leaves a process nothing but the fence to rely on.

# B still acknowledges notifications and fences, so writers do not wait, but forgets nothing:
# not on a notification, a fence, a lapsed lease or a reconnection.
_FORGET_NOTHING = (
    "from keystile.store.postgres.answers import AnswersMixin\n"
    "AnswersMixin._drop_answers = lambda self: None\n"
)
# B keeps a remembered answer for good, past the token's exp.
_IGNORE_EXP = (
    "import math\n"
    "from keystile.server import introspection_endpoint\n"
    "introspection_endpoint._holds_until = lambda record, active, now: math.inf\n"
)
# B never hears the notification a change's own transaction sends (as if it came late): it
# forgets on the writer's fence alone, so a write path that skipped its fence shows.
_HEAR_FENCES_ONLY = (
    "from keystile.store.postgres import answers\n"
    "answers.ANSWERS_CHANNEL = 'keystile_answers_never_sent'\n"
)
# B acknowledges fences in answer_leases, but its acknowledgements' notifications go where
# nobody listens (as if lost): a writer must fall back on reading answer_leases.
_ACKS_UNHEARD = (
    "from keystile.store.postgres import answers\n"
    "answers.ACK_CHANNEL = 'keystile_fence_ack_never_heard'\n"
)
# A writer (the CLI, or an AS revoking) commits and answers without the fence.
_SKIP_FENCE = (
    "from keystile.store.postgres.answers import AnswersMixin\n"
    "async def _no_fence(self): pass\n"
    "AnswersMixin._fence = _no_fence\n"
)


@dataclass(frozen=True)
class Variant:
    """How B and the writers run, and whether B must answer right or (a mutant) stale."""

    name: str
    b_patch: str = ""
    writer_patch: str = ""
    stale: bool = False

    def __str__(self) -> str:
        return self.name


REAL = Variant("real")
FENCES_ONLY = Variant("fences-only", b_patch=_HEAR_FENCES_ONLY)
# Mutants: the checks must see B answer stale.
FORGETS_NOTHING = Variant("forgets-nothing", b_patch=_FORGET_NOTHING, stale=True)
NO_FENCE = Variant("no-fence", b_patch=_HEAR_FENCES_ONLY, writer_patch=_SKIP_FENCE, stale=True)
IGNORES_EXP = Variant("ignores-exp", b_patch=_IGNORE_EXP, stale=True)

# Every change made by a writer: B as deployed, B relying on the fence alone, and the two
# mutants (nothing forgotten; no fence, so nothing forgotten by a B that hears only fences).
WRITES = pytest.mark.parametrize("variant", [REAL, FENCES_ONLY, FORGETS_NOTHING, NO_FENCE], ids=str)


def keystile_command(patch: str = "") -> tuple[str, ...]:
    """The keystile script, or Python running ``patch`` first and then keystile's main."""
    if not patch:
        return (str(KEYSTILE),)
    return (sys.executable, "-c", patch + "from keystile.cli import main\nmain()\n")


@dataclass
class Pair:
    a: Server
    b: Server
    demo: Demo
    url: str
    variant: Variant = REAL
    writer: Server | None = None  # the AS that revokes (A unless the variant patches it)

    @property
    def revoker(self) -> Server:
        return self.writer or self.a


def _pair(pg_url: str, start_server: ServerStarter, lease: float) -> Pair:
    env = clean_env(KEYSTILE_ANSWER_LEASE=str(lease))
    a = start_server("--demo", "--db", pg_url, db_flag=False, env=env)
    b = start_server("--no-demo", "--db", pg_url, db_flag=False, env=env)
    return Pair(a, b, parse_demo(a.stdout), pg_url)


@dataclass
class Cluster:
    """A, with the demo setup, and the other processes a variant needs (its B, and an AS
    with the writer's patch), started when first asked for, all on one schema for the
    whole module. Tests share them: each works on tokens, users and resource servers of its
    own, and warms B itself after any change of its own."""

    a: Server
    demo: Demo
    url: str
    env: dict[str, str]
    starter: ServerStarter
    started: dict[tuple[str, str], Server] = field(default_factory=dict)

    def _server(self, patch: str) -> Server:
        key = ("serve", patch)
        if key not in self.started:
            self.started[key] = self.starter(
                "--no-demo",
                "--db",
                self.url,
                db_flag=False,
                env=self.env,
                command=keystile_command(patch),
            )
        return self.started[key]

    def pair(self, variant: Variant = REAL) -> Pair:
        b = self._server(variant.b_patch)
        writer = self._server(variant.writer_patch) if variant.writer_patch else None
        return Pair(self.a, b, self.demo, self.url, variant, writer)


@pytest.fixture(scope="module")
def cluster(postgres: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    starter = ServerStarter(tmp_path_factory.mktemp("pg-answers"))
    with pg_schema(postgres) as url:
        env = clean_env(KEYSTILE_ANSWER_LEASE=str(LEASE))
        try:
            a = starter("--demo", "--db", url, db_flag=False, env=env)
            yield Cluster(a, parse_demo(a.stdout), url, env, starter)
        finally:
            starter.stop_all()


@pytest.fixture
def pair(cluster: Cluster) -> Pair:
    """A and the real B of the module's cluster."""
    return cluster.pair()


@pytest.fixture
def own_pair(pg_url: str, start_server: ServerStarter) -> Pair:
    """A and B on a schema of their own, for tests that pause B."""
    return _pair(pg_url, start_server, lease=LEASE)


def fast_answers(server: Server) -> float:
    text = server.http.get("/metrics").text
    match = re.search(r"^keystile_introspection_fast_answers_total (\S+)$", text, re.M)
    assert match, "no fast-answer counter"
    return float(match.group(1))


def warm(server: Server, rs: Creds, token: str) -> bytes:
    """Introspect until ``server`` answers from memory (the first answer fills it); the
    remembered answer."""
    before = fast_answers(server)
    for _ in range(2):
        r = server.introspect(rs, token)
        assert r.status_code == 200, r.text
        assert r.json()["active"] is True
    assert fast_answers(server) == before + 1, "the second answer did not come from memory"
    return r.content


def check_b(
    pair: Pair, r: httpx.Response, remembered: bytes, status: int, body: Any = None
) -> None:
    """B's answer after a change that made ``remembered`` wrong: ``status`` (and ``body``)
    on the real code; on a mutant, the stale remembered answer, which is what the check is
    there to catch."""
    if pair.variant.stale:
        assert (r.status_code, r.content) == (200, remembered), (
            f"the {pair.variant} mutant did not answer stale: the check could not fail"
        )
        return
    assert r.status_code == status, r.text
    if body is not None:
        assert r.json() == body


def keystile_json(run_keystile: RunKeystile, pair: Pair, *args: str) -> Any:
    """A third process: ``keystile *args --db URL --json``, which must succeed (with the
    variant's writer patch, if any)."""
    command = keystile_command(pair.variant.writer_patch)
    done = run_keystile(*args, "--db", pair.url, "--json", command=command)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def setup_json(cli: Cli, pair: Pair, *args: str, stdin: str | None = None) -> Any:
    """Set-up in this process (the same CLI code, without a process start)."""
    result = cli(*args, "--db", pair.url, "--json", input=stdin)
    assert result.exit_code == 0, (result.output, result.exception)
    return json.loads(result.stdout)


def new_resource_server(cli: Cli, pair: Pair) -> tuple[str, Creds]:
    """A resource server of the test's own that may introspect any token, and the client
    it introspects as."""
    client_id = f"rs-{secrets.token_hex(4)}"
    created = setup_json(cli, pair, "client", "create", client_id)
    identifier = f"https://{client_id}.example.test"
    setup_json(cli, pair, "resource", "create", identifier, "--client", client_id, "--allow", "any")
    return identifier, Creds(client_id, created["client_secret"])


def new_user_token(cli: Cli, pair: Pair) -> tuple[str, str]:
    """A user of the test's own and an access token for them from A (the code flow)."""
    username = f"user{secrets.token_hex(4)}"
    setup_json(cli, pair, "user", "create", username, "--password-stdin", stdin=PASSWORD + "\n")
    return username, demo_user_token(pair.a, username, PASSWORD)


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


class TestInvalidation:
    """Each change, made while B answers from memory, is seen by B's very next answer."""

    @WRITES
    def test_revoked_on_a_is_inactive_on_b_at_once_every_time(
        self, cluster: Cluster, variant: Variant
    ) -> None:
        """Twenty times: B answers a token from memory, A revokes it (200), and B's very
        next introspection, and A's, answer inactive. (With the no-fence mutant another AS,
        patched, revokes; A's answer is then not checked, since A still hears notifications
        and nothing orders them against the next request.)"""
        pair = cluster.pair(variant)
        a, b, demo = pair.a, pair.b, pair.demo
        for _ in range(20):
            token = a.issue(demo.app)
            remembered = warm(b, demo.rs, token)
            warm(a, demo.rs, token)
            assert pair.revoker.revoke(demo.app, token).status_code == 200
            check_b(pair, b.introspect(demo.rs, token), remembered, 200, {"active": False})
            if pair.writer is None:
                assert a.introspect(demo.rs, token).json() == {"active": False}

    @WRITES
    def test_revoked_by_the_cli_is_inactive_on_b_at_once(
        self, cluster: Cluster, variant: Variant, run_keystile: RunKeystile
    ) -> None:
        """A third process, which holds no lease, revokes the token by its jti."""
        pair = cluster.pair(variant)
        b, demo = pair.b, pair.demo
        token = pair.a.issue(demo.app)
        remembered = warm(b, demo.rs, token)
        jti = json.loads(remembered)["jti"]
        keystile_json(run_keystile, pair, "token", "revoke", "--jti", jti)
        check_b(pair, b.introspect(demo.rs, token), remembered, 200, {"active": False})

    @WRITES
    @pytest.mark.parametrize(
        ("change", "status"),
        [
            (("client", "disable", "{client}"), 401),
            (("client", "delete", "{client}", "--yes"), 401),
            (("resource", "delete", "{resource}"), 403),
        ],
        ids=["client-disable", "client-delete", "resource-delete"],
    )
    def test_registry_change_by_the_cli_is_refused_from_memory_at_once(
        self,
        cluster: Cluster,
        variant: Variant,
        change: tuple[str, ...],
        status: int,
        cli: Cli,
        run_keystile: RunKeystile,
    ) -> None:
        """The CLI (a third process, no lease) takes the resource server's right to
        introspect away; B, which answered from memory a moment ago, refuses at once."""
        pair = cluster.pair(variant)
        b, demo = pair.b, pair.demo
        resource, rs = new_resource_server(cli, pair)
        token = pair.a.issue(demo.app)
        remembered = warm(b, rs, token)
        args = [arg.format(client=rs.client_id, resource=resource) for arg in change]
        keystile_json(run_keystile, pair, *args)
        check_b(pair, b.introspect(rs, token), remembered, status)

    @WRITES
    def test_rotated_secret_old_refused_new_accepted_at_once(
        self, cluster: Cluster, variant: Variant, cli: Cli, run_keystile: RunKeystile
    ) -> None:
        """The resource server's client gets a new secret (CLI): B refuses the old one on
        the very next request and accepts the new one; the token stays active."""
        pair = cluster.pair(variant)
        a, b, demo = pair.a, pair.b, pair.demo
        _, rs = new_resource_server(cli, pair)
        token = a.issue(demo.app)
        remembered = warm(b, rs, token)
        rotated = keystile_json(run_keystile, pair, "client", "rotate-secret", rs.client_id)
        new = Creds(rs.client_id, rotated["client_secret"])
        assert new.secret != rs.secret
        check_b(pair, b.introspect(rs, token), remembered, 401)
        r = b.introspect(new, token)
        assert (r.status_code, r.content) == (200, remembered)  # the same answer as before
        assert a.introspect(new, token).json()["active"] is True
        assert a.introspect(rs, token).status_code == 401

    @WRITES
    @pytest.mark.parametrize(
        "command",
        [("revoke-sessions",), ("disable",), ("delete", "--yes")],
        ids=["revoke-sessions", "disable", "delete"],
    )
    def test_user_signed_out_by_the_cli_is_inactive_on_b_at_once(
        self,
        cluster: Cluster,
        variant: Variant,
        command: tuple[str, ...],
        cli: Cli,
        run_keystile: RunKeystile,
    ) -> None:
        """A user's token from the code flow, remembered by B; the CLI signs the user out
        everywhere (or disables or deletes them): B's next answer is inactive."""
        pair = cluster.pair(variant)
        b, demo = pair.b, pair.demo
        username, token = new_user_token(cli, pair)
        remembered = warm(b, demo.rs, token)
        assert json.loads(remembered)["username"] == username
        done = keystile_json(run_keystile, pair, "user", command[0], username, *command[1:])
        assert done["tokens_revoked"] >= 1
        check_b(pair, b.introspect(demo.rs, token), remembered, 200, {"active": False})
        assert pair.a.introspect(demo.rs, token).json() == {"active": False}

    @pytest.mark.parametrize("variant", [REAL, IGNORES_EXP], ids=str)
    def test_expired_is_inactive_on_b_right_after_exp(
        self, cluster: Cluster, variant: Variant, cli: Cli
    ) -> None:
        """A 3-second token, remembered by B, with no write since: B's first answer once
        the wall clock reaches exp is inactive."""
        pair = cluster.pair(variant)
        b, demo = pair.b, pair.demo
        client_id = f"short-{secrets.token_hex(4)}"
        created = setup_json(
            cli, pair, "client", "create", client_id, "--ttl", "3", "--audience", DEMO_AUDIENCE
        )
        token = pair.a.issue(Creds(client_id, created["client_secret"]))
        remembered = warm(b, demo.rs, token)
        exp = json.loads(remembered)["exp"]
        # Servers read the clock as int(time.time()): from exp on, the token is expired.
        time.sleep(max(0.0, exp - time.time()))
        while time.time() < exp:
            time.sleep(0.01)
        check_b(pair, b.introspect(demo.rs, token), remembered, 200, {"active": False})


class TestFence:
    def test_a_revocation_waits_for_a_paused_process_to_forget(self, own_pair: Pair) -> None:
        """B is paused (SIGSTOP) while it remembers the token as active. A's revocation
        does not answer until B has forgotten: here, until B runs again one second later
        and acknowledges (its 10 s lease has not run out). Then B answers inactive."""
        a, b, demo = own_pair.a, own_pair.b, own_pair.demo
        token = a.issue(demo.app)
        warm(b, demo.rs, token)
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
        warm(b, demo.rs, token)
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

    def test_concurrent_revocations_each_wait_for_their_own_fence(self, pair: Pair) -> None:
        """Eight revocations sent to A at once (eight fences in flight in one process, woken
        by the acknowledgements of their own numbers or later) all answer, well within B's
        lease, and B answers every token inactive."""
        a, b, demo = pair.a, pair.b, pair.demo
        tokens = [a.issue(demo.app) for _ in range(8)]
        for token in tokens:
            warm(b, demo.rs, token)
        waited: list[float] = []

        def revoke(token: str) -> None:
            started = time.monotonic()
            with httpx.Client(base_url=a.url, trust_env=False, timeout=30) as http:
                r = http.post("/oauth2/revoke", data={"token": token}, auth=demo.app.auth)
            assert r.status_code == 200
            waited.append(time.monotonic() - started)

        workers = [threading.Thread(target=revoke, args=(token,)) for token in tokens]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join(15)
        assert len(waited) == len(tokens), "a revocation never answered"
        assert max(waited) < 2.0, waited
        for token in tokens:
            assert b.introspect(demo.rs, token).json() == {"active": False}

    def test_a_revocation_whose_acknowledgement_notification_is_lost_still_answers(
        self, pg_url: str, start_server: ServerStarter
    ) -> None:
        """B acknowledges A's fences in answer_leases but its notifications of that are
        never heard: A's revocations answer anyway, each well within B's 10 s lease (the
        writer's fallback poll reads answer_leases), and B answers inactive at once."""
        env = clean_env(KEYSTILE_ANSWER_LEASE=str(LEASE))
        a = start_server("--demo", "--db", pg_url, db_flag=False, env=env)
        b = start_server(
            "--no-demo",
            "--db",
            pg_url,
            db_flag=False,
            env=env,
            command=keystile_command(_ACKS_UNHEARD),
        )
        demo = parse_demo(a.stdout)
        for _ in range(5):
            token = a.issue(demo.app)
            warm(b, demo.rs, token)
            started = time.monotonic()
            assert a.revoke(demo.app, token).status_code == 200
            waited = time.monotonic() - started
            assert waited < 2.0, waited
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
