"""Lockout and denial of service (issue 11), against a real `keystile serve` process with
default settings: a flood of wrong credentials sent with a client's id, from one address,
throttles the failures only; the right credentials of that client (from any address) and of
other clients (from the same address) are still answered 200, at the token, introspection
and revocation endpoints, for client secrets and private_key_jwt assertions alike.

Source addresses are real: the test connects from 127.0.0.1, 127.0.0.2 and 127.0.0.3 (all
loopback on Linux), so the server sees three different peers.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.conftest import Creds
from tests.e2e.conftest import DEMO_AUDIENCE, RunKeystile, Server, ServerStarter, parse_demo
from tests.server.jwt_support import ClientKey, assertion_form, jwks_text

pytestmark = pytest.mark.process

FLOOD = 30
DEFAULT_LIMIT = 10  # throttle_failures
DEFAULT_WINDOW = 60  # throttle_window
ATTACKER, ELSEWHERE, ASSERTER = "127.0.0.1", "127.0.0.2", "127.0.0.3"
PATHS = {"token": "/oauth2/token", "introspect": "/oauth2/introspect", "revoke": "/oauth2/revoke"}


@dataclass
class Case:
    server: Server
    path: str
    form: dict[str, str]
    a: Creds  # the client whose id is flooded
    b: Creds  # another client, calling from the flooding address
    pkj_id: str  # a private_key_jwt client for the same endpoint
    pkj_key: ClientKey


class Callers:
    """One HTTP client per source address, all talking to one server."""

    def __init__(self, server: Server) -> None:
        self._server = server
        self._clients: dict[str, httpx.Client] = {}

    def __call__(self, address: str) -> httpx.Client:
        if address not in self._clients:
            self._clients[address] = httpx.Client(
                base_url=self._server.url,
                transport=httpx.HTTPTransport(local_address=address),
                trust_env=False,
                timeout=10.0,
            )
        return self._clients[address]

    def close(self) -> None:
        for client in self._clients.values():
            client.close()


def _ok(done) -> dict[str, object]:
    assert done.returncode == 0, done.stderr
    return dict(json.loads(done.stdout)) if done.stdout.strip() else {}


def _new_client(run: RunKeystile, db: Path, client_id: str, *options: str) -> Creds:
    body = _ok(run("client", "create", client_id, *options, "--json", "--db", str(db)))
    return Creds(client_id, str(body.get("client_secret") or ""))


def _new_resource(run: RunKeystile, db: Path, identifier: str, client_id: str) -> None:
    _ok(run("resource", "create", identifier, "--client", client_id, "--json", "--db", str(db)))


@pytest.fixture(params=list(PATHS))
def case(
    request: pytest.FixtureRequest,
    start_server: ServerStarter,
    run_keystile: RunKeystile,
    tmp_path: Path,
) -> Case:
    """A server with default settings, and the clients one endpoint's scenario needs."""
    endpoint = request.param
    server = start_server()
    demo = parse_demo(server.stdout)
    db = server.db
    assert db is not None
    key = ClientKey("ES256")
    jwks = tmp_path / "pkj.jwks"
    jwks.write_text(jwks_text(key))
    pkj = ["--auth-method", "private_key_jwt", "--jwks", str(jwks)]
    if endpoint == "introspect":
        b = _new_client(run_keystile, db, "b-rs", "--grant-type", "none")
        _new_resource(run_keystile, db, "https://b.example.test", "b-rs")
        _new_client(run_keystile, db, "pkj-rs", "--grant-type", "none", *pkj)
        _new_resource(run_keystile, db, "https://pkj.example.test", "pkj-rs")
        a, pkj_id = demo.rs, "pkj-rs"
    else:
        _new_client(run_keystile, db, "pkj-app", "--audience", DEMO_AUDIENCE, *pkj)
        pkj_id = "pkj-app"
        a = demo.app
        if endpoint == "token":
            b = _new_client(run_keystile, db, "b-app", "--audience", DEMO_AUDIENCE)
        else:
            b = demo.rs  # any client may call the revocation endpoint
    if endpoint == "token":
        form = {"grant_type": "client_credentials"}
    else:
        form = {"token": server.issue(demo.app)}
    return Case(server, PATHS[endpoint], form, a, b, pkj_id, key)


@pytest.fixture
def callers(case: Case) -> Iterator[Callers]:
    made = Callers(case.server)
    yield made
    made.close()


def _post(http: httpx.Client, case: Case, creds: Creds) -> httpx.Response:
    return http.post(case.path, data=case.form, auth=creds.auth)


def _assertion(case: Case, key: ClientKey) -> dict[str, str]:
    signed = key.assertion(case.pkj_id, aud=case.server.url, now=int(time.time()))
    return {**case.form, **assertion_form(signed)}


def _fast_answers(server: Server) -> float:
    for line in server.http.get("/metrics").text.splitlines():
        if line.startswith("keystile_introspection_fast_answers_total "):
            return float(line.split()[1])
    return 0.0


def test_flooded_client_id_keeps_working(case: Case, callers: Callers) -> None:
    """30 wrong secrets for A's id from one address: the first 10 get 401, the rest 429
    with Retry-After (the 30th included); then A's right secret gets 200 from that address
    and another, and client B gets 200 from the flooding address."""
    attacker = callers(ATTACKER)
    answers = [_post(attacker, case, Creds(case.a.client_id, f"wrong-{i}")) for i in range(FLOOD)]

    statuses = [r.status_code for r in answers]
    assert statuses == [401] * DEFAULT_LIMIT + [429] * (FLOOD - DEFAULT_LIMIT)
    assert answers[-1].json()["error"] == "too_many_requests"
    assert 1 <= int(answers[-1].headers["retry-after"]) <= DEFAULT_WINDOW
    fast: float | None = None
    for address in (ATTACKER, ELSEWHERE):
        r = _post(callers(address), case, case.a)
        assert r.status_code == 200, (address, r.text)
        if case.path == PATHS["introspect"]:
            assert r.json()["active"] is True
            if fast is None:  # A's secret is verified and cached now
                fast = _fast_answers(case.server)
    assert _post(attacker, case, case.b).status_code == 200
    # The flood goes on: the right secret is still not refused.
    assert _post(attacker, case, Creds(case.a.client_id, "wrong")).status_code == 429
    assert _post(attacker, case, case.a).status_code == 200
    if case.path == PATHS["introspect"]:
        # The fast path answered A's verified secret from the second address and at the
        # end, failures on record or not: it follows the same rule as the full path.
        assert fast is not None
        assert _fast_answers(case.server) == fast + 2


def test_flooded_assertions_keep_the_right_one_working(case: Case, callers: Callers) -> None:
    """30 wrong private_key_jwt assertions (signed by the wrong key under the client's
    kid) from one address: the first 10 get 401, the 30th 429; the client's right
    assertion from that address gets 200."""
    asserter = callers(ASSERTER)
    forged = ClientKey("ES256", kid=case.pkj_key.kid)
    answers = [asserter.post(case.path, data=_assertion(case, forged)) for _ in range(FLOOD)]

    statuses = [r.status_code for r in answers]
    assert statuses == [401] * DEFAULT_LIMIT + [429] * (FLOOD - DEFAULT_LIMIT)
    assert 1 <= int(answers[-1].headers["retry-after"]) <= DEFAULT_WINDOW
    r = asserter.post(case.path, data=_assertion(case, case.pkj_key))
    assert r.status_code == 200, r.text
