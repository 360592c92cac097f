"""`keystile client registration-token` and the registration column of `client list`
(docs/registration.md), with a real SQLite file and the real app on it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx

from keystile.server.app import create_app
from keystile.settings import ServerSettings
from keystile.store.sqlite import SQLiteStore
from tests.conftest import run_coroutine
from tests.e2e.conftest import Cli

ISSUER = "https://as.example.test"
WEB = {"redirect_uris": ["https://app.example.test/cb"], "client_name": "Web app"}


def ok_json(cli: Cli, *args: str) -> Any:
    result = cli(*args, "--json")
    assert result.exit_code == 0, (result.output, result.exception)
    return json.loads(result.stdout)


async def register(db: Path, token: str) -> httpx.Response:
    """One registration over HTTP, at an app on the database the CLI wrote."""
    store = SQLiteStore(db)
    await store.open()
    try:
        settings = ServerSettings(
            db=str(db), issuer=ISSUER, purge_interval=0, registration="initial-access-token"
        )
        transport = httpx.ASGITransport(app=create_app(settings, store=store))
        async with httpx.AsyncClient(transport=transport, base_url=ISSUER) as http:
            return await http.post(
                "/oauth2/register", json=WEB, headers={"Authorization": f"Bearer {token}"}
            )
    finally:
        await store.close()


class TestRegistrationTokens:
    def test_create_use_list_revoke(self, cli: Cli, tmp_path: Path) -> None:
        """create prints the token once; a registration spends it; list shows what is left
        (never the value); client list names how each client was registered; revoke ends it."""
        ok_json(cli, "client", "create", "ops-made")
        made = ok_json(
            cli, "client", "registration-token", "create", "--description", "partner onboarding"
        )
        assert made["token"].startswith("ks_ia_")
        assert made["uses_left"] == 1
        assert made["live"] is True
        r = run_coroutine(register(tmp_path / "keystile.db", made["token"]))
        assert r.status_code == 201, r.text
        registered = r.json()["client_id"]

        (listed,) = ok_json(cli, "client", "registration-token", "list")
        assert listed["token_id"] == made["token_id"]
        assert listed["uses_left"] == 0
        assert listed["live"] is False
        assert listed["description"] == "partner onboarding"
        text = cli("client", "registration-token", "list")
        assert made["token"] not in text.output
        assert "partner onboarding" in text.output

        clients = {c["client_id"]: c for c in ok_json(cli, "client", "list")}
        assert clients["ops-made"]["registration"] == "cli"
        assert clients[registered]["registration"] == "initial-access-token"
        assert clients[registered]["name"] == "Web app"
        assert "initial-access-token" in cli("client", "list").output

        assert cli("client", "disable", registered).exit_code == 0  # like any other client
        assert ok_json(cli, "client", "show", registered)["enabled"] is False

        assert cli("client", "registration-token", "revoke", made["token_id"]).exit_code == 0
        assert ok_json(cli, "client", "registration-token", "list") == []
        again = cli("client", "registration-token", "revoke", made["token_id"])
        assert again.exit_code == 3

    def test_unlimited_and_bad_input(self, cli: Cli, tmp_path: Path) -> None:
        """--unlimited registers any number of clients; bad uses or lifetimes exit 2."""
        made = ok_json(cli, "client", "registration-token", "create", "--unlimited")
        assert made["uses_left"] is None
        for _ in range(3):
            assert (
                run_coroutine(register(tmp_path / "keystile.db", made["token"])).status_code == 201
            )
        assert cli("client", "registration-token", "create", "--uses", "0").exit_code == 2
        assert cli("client", "registration-token", "create", "--ttl", "5").exit_code == 2
        both = cli("client", "registration-token", "create", "--uses", "2", "--unlimited")
        assert both.exit_code == 2
