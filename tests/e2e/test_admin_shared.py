"""The CLI and the admin API run one implementation: a rule enforced by the shared
operations (admin.py, token_admin.py) says the same thing through both, and a rule changed
once changes for both."""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from keystile import admin
from keystile.clock import FixedClock
from keystile.server.app import create_app
from keystile.settings import ServerSettings
from keystile.store.sqlite import SQLiteStore
from tests.conftest import ISSUER, TOKEN
from tests.e2e.conftest import Cli
from tests.server.admin_support import ADMIN, bearer


async def _api(db: Path, clock: FixedClock) -> tuple[httpx.AsyncClient, SQLiteStore, str]:
    """An in-process admin API on the CLI's database, and a keystile:admin token for it."""
    store = SQLiteStore(db)
    await store.open()
    settings = ServerSettings(db=str(db), issuer=ISSUER, purge_interval=0, admin_api=True)
    app = create_app(settings, store=store, clock=clock)
    http = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=ISSUER)
    _, secret = await admin.create_client(store, clock, client_id="ops", scopes=["keystile:admin"])
    r = await http.post(
        TOKEN,
        data={"grant_type": "client_credentials", "scope": "keystile:admin"},
        auth=("ops", secret),
    )
    return http, store, r.json()["access_token"]


async def _run(cli: Cli, *args: str) -> Any:
    """The CLI in a thread: it runs its own event loop (asyncio.run), as from a shell."""
    return await asyncio.to_thread(cli, *args, "--db", "shared.db")


async def _cli_error(cli: Cli, *args: str) -> str:
    result = await _run(cli, *args)
    assert result.exit_code == 2, result.output
    message = result.stderr.strip()
    assert message.startswith("keystile: ")
    return message.removeprefix("keystile: ")


@pytest.fixture
def db(cli: Cli, tmp_path: Path) -> Path:
    assert cli("db", "upgrade", "--db", "shared.db").exit_code == 0
    return tmp_path / "shared.db"


async def test_validation_error_is_the_same_from_cli_and_api(cli: Cli, db: Path) -> None:
    """A bad client id is refused by the shared operation: the CLI's message is the API's
    problem detail, word for word."""
    from_cli = await _cli_error(cli, "client", "create", "bad/id", "--scope", "read")
    http, store, token = await _api(db, FixedClock(1_800_000_000))
    try:
        r = await http.post(
            f"{ADMIN}/clients", json={"client_id": "bad/id", "scope": "read"}, headers=bearer(token)
        )
    finally:
        await http.aclose()
        await store.close()
    assert r.status_code == 400
    assert r.json()["detail"] == from_cli
    assert "client id must be" in from_cli


async def test_a_rule_changed_once_changes_both(
    cli: Cli, db: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Lowering the access-token lifetime ceiling in admin.py (one place) refuses the same
    lifetime through the CLI and through the API, with the same message; before the change
    both accepted it."""
    http, store, token = await _api(db, FixedClock(1_800_000_000))
    try:
        ok = await _run(cli, "client", "create", "before-cli", "--ttl", "7200")
        assert ok.exit_code == 0, ok.output
        r = await http.post(
            f"{ADMIN}/clients",
            json={"client_id": "before-api", "access_token_ttl": 7200},
            headers=bearer(token),
        )
        assert r.status_code == 201
        monkeypatch.setattr(admin, "MAX_TTL", 3600)
        from_cli = await _cli_error(cli, "client", "create", "after-cli", "--ttl", "7200")
        r = await http.post(
            f"{ADMIN}/clients",
            json={"client_id": "after-api", "access_token_ttl": 7200},
            headers=bearer(token),
        )
    finally:
        await http.aclose()
        await store.close()
    assert r.status_code == 400
    assert r.json()["detail"] == from_cli == "access-token lifetime must be 1..3600 seconds"


async def test_token_commands_and_api_agree(cli: Cli, db: Path) -> None:
    """`keystile token show` prints what GET /admin/v1/tokens answers; a token revoked with
    `keystile token revoke` reads revoked through the API; a bad digest gets one message."""
    clock = FixedClock(int(time.time()))
    http, store, token = await _api(db, clock)
    digest = hashlib.sha256(token.encode()).hexdigest()
    try:
        shown = await _run(cli, "token", "show", "--digest", digest, "--json")
        assert shown.exit_code == 0, shown.output
        r = await http.get(f"{ADMIN}/tokens", params={"digest": digest}, headers=bearer(token))
        assert json.loads(shown.stdout) == r.json()
        assert token not in shown.stdout

        bad = await _cli_error(cli, "token", "show", "--digest", "xyz")
        r = await http.get(f"{ADMIN}/tokens", params={"digest": "xyz"}, headers=bearer(token))
        assert r.json()["detail"] == bad

        revoked = await _run(cli, "token", "revoke", "--jti", _jti(shown.stdout), "--json")
        assert revoked.exit_code == 0, revoked.output
        assert json.loads(revoked.stdout)["state"] == "revoked"
        # The API's own token was the one revoked: it is refused at once.
        r = await http.get(f"{ADMIN}/tokens", params={"digest": digest}, headers=bearer(token))
        assert r.status_code == 401
    finally:
        await http.aclose()
        await store.close()


def _jti(stdout: str) -> str:
    return str(json.loads(stdout)["jti"])


async def test_roles_from_cli_and_api(cli: Cli, db: Path) -> None:
    """`keystile user set-roles` and PUT /users/{user}/roles run one operation: the same
    refusal of an unknown role, and a role given by one is seen by the other."""
    http, store, token = await _api(db, FixedClock(int(time.time())))
    try:
        await admin.create_user(
            store, FixedClock(int(time.time())), username="dave", password="long enough pw"
        )
        from_cli = await _cli_error(cli, "user", "set-roles", "dave", "--role", "root")
        r = await http.put(
            f"{ADMIN}/users/dave/roles", json={"roles": ["root"]}, headers=bearer(token)
        )
        assert r.status_code == 400
        assert r.json()["detail"] == from_cli
        assert "unknown role 'root'" in from_cli
        ok = await _run(cli, "user", "set-roles", "dave", "--role", "admin", "--json")
        assert ok.exit_code == 0, ok.output
        r = await http.get(f"{ADMIN}/users/dave", headers=bearer(token))
        assert r.json()["roles"] == ["admin"]
        r = await http.put(f"{ADMIN}/users/dave/roles", json={"roles": []}, headers=bearer(token))
        assert r.json()["roles"] == []
        shown = await _run(cli, "user", "show", "dave", "--json")
        assert json.loads(shown.stdout)["roles"] == []
        made = await asyncio.to_thread(
            cli,
            *("user", "create", "erin", "--password-stdin", "--role", "admin", "--json"),
            *("--db", "shared.db"),
            input="long enough pw\n",
        )
        assert made.exit_code == 0, made.output
        r = await http.get(f"{ADMIN}/users/erin", headers=bearer(token))
        assert r.json()["roles"] == ["admin"]
    finally:
        await http.aclose()
        await store.close()
