"""CLI changes are audited (docs/admin.md, Audit): every command that changes something writes
the admin_action event the admin API writes for the same change, with ``"actor": "cli"``,
the OS user and the host; read back through the store and through GET /admin/v1/events."""

from __future__ import annotations

import asyncio
import base64
import getpass
import json
import os
import socket
from pathlib import Path
from typing import Any

import httpx
import pytest

from keystile import admin
from keystile.clock import SystemClock
from keystile.server.app import create_app
from keystile.settings import ServerSettings
from keystile.store.base import ADMIN_ACTION
from keystile.store.sqlite import SQLiteStore
from tests.conftest import ISSUER, TOKEN
from tests.e2e.conftest import Cli
from tests.server.admin_support import ADMIN, bearer

PASSWORD = "correct horse battery staple"
API = "https://api.example.test"


def ok_json(cli: Cli, *args: str, **kwargs: Any) -> Any:
    result = cli(*args, "--json", **kwargs)
    assert result.exit_code == 0, (result.output, result.exception)
    return json.loads(result.stdout)


def stored_audits(db: Path) -> list[dict[str, Any]]:
    """The admin_action events in the database, oldest first, read through the store."""

    async def main() -> list[dict[str, Any]]:
        store = SQLiteStore(db)
        await store.open()
        try:
            events = await store.events_after(0, 1000)
        finally:
            await store.close()
        return [e.payload for e in events if e.type == ADMIN_ACTION]

    return asyncio.run(main())


class TestCliAudit:
    def test_changes_are_audited_as_the_api_names_them(
        self, cli: Cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Each changing command writes one admin_action event (action, target and details
        as the API writes them; actor "cli", OS user, host); reading commands and refused
        changes write none, and no secret, password or token value is ever in one."""
        monkeypatch.setenv("KEYSTILE_KEY_ENCRYPTION_KEY", base64.b64encode(os.urandom(32)).decode())
        made = ok_json(cli, "client", "create", "app", "--scope", "read", "--audience", API)
        ok_json(cli, "client", "create", "rs", "--grant-type", "none")
        ok_json(cli, "client", "update", "app", "--name", "App", "--ttl", "600")
        rotated = ok_json(cli, "client", "rotate-secret", "app")
        ok_json(cli, "client", "disable", "app")
        ok_json(cli, "client", "enable", "app")
        ok_json(cli, "resource", "create", API, "--client", "rs")
        ok_json(cli, "resource", "update", API, "--name", "The API")
        user = ok_json(cli, "user", "create", "alice", "--password-stdin", input=PASSWORD + "\n")
        ok_json(cli, "user", "set-roles", "alice", "--role", "admin")
        ok_json(cli, "user", "revoke-sessions", "alice")
        ok_json(cli, "user", "disable", "alice")
        ok_json(cli, "user", "enable", "alice")
        ok_json(cli, "user", "update", "alice", "--email", "alice@example.test")
        ok_json(cli, "user", "passwd", "alice", "--password-stdin", input=PASSWORD + "!\n")
        initial = ok_json(cli, "client", "registration-token", "create")
        ok_json(cli, "client", "registration-token", "revoke", initial["token_id"])
        key = ok_json(cli, "key", "create")[0]
        ok_json(cli, "key", "rotate")
        ok_json(cli, "token", "revoke-client", "app")
        ok_json(cli, "resource", "delete", API)
        ok_json(cli, "client", "delete", "app", "--yes")
        ok_json(cli, "user", "delete", "alice", "--yes")
        # Reading, and a refused change: no event.
        ok_json(cli, "client", "list")
        ok_json(cli, "user", "list")
        assert cli("client", "disable", "nope").exit_code == 3

        audits = stored_audits(tmp_path / "keystile.db")
        what = [{k: v for k, v in e.items() if k not in ("actor", "os_user", "host", "via")}
                for e in audits]  # fmt: skip
        uid = user["user_id"]
        assert what == [
            {"action": "client.create", "target": "app", "fields": [
                "access_token_ttl", "default_audience", "redirect_uris", "scope"]},
            {"action": "client.create", "target": "rs", "fields": [
                "access_token_ttl", "default_audience", "grant_types", "redirect_uris",
                "scope"]},
            {"action": "client.update", "target": "app", "fields": ["access_token_ttl", "name"]},
            {"action": "client.rotate_secret", "target": "app"},
            {"action": "client.disable", "target": "app", "tokens_revoked": 0},
            {"action": "client.enable", "target": "app"},
            {"action": "resource_server.create", "target": API,
             "fields": ["introspection_clients"]},
            {"action": "resource_server.update", "target": API, "fields": ["name"]},
            {"action": "user.create", "target": uid, "username": "alice"},
            {"action": "user.roles", "target": uid, "username": "alice", "roles": ["admin"]},
            {"action": "user.revoke_sessions", "target": uid, "username": "alice",
             "tokens_revoked": 0},
            {"action": "user.disable", "target": uid, "username": "alice", "tokens_revoked": 0},
            {"action": "user.enable", "target": uid, "username": "alice", "tokens_revoked": 0},
            {"action": "user.update", "target": uid, "username": "alice", "fields": ["email"]},
            {"action": "user.password", "target": uid, "username": "alice"},
            {"action": "registration_token.create", "target": initial["token_id"]},
            {"action": "registration_token.delete", "target": initial["token_id"]},
            {"action": "signing_key.create", "target": key["kid"], "alg": "ES256"},
            {"action": "signing_key.rotate", "target": key["kid"], "retired": None},
            {"action": "client.revoke_tokens", "target": "app", "tokens_revoked": 0},
            {"action": "resource_server.delete", "target": API},
            {"action": "client.delete", "target": "app", "tokens_revoked": 0},
            {"action": "user.delete", "target": uid, "username": "alice", "tokens_revoked": 0},
        ]  # fmt: skip
        assert {(e["actor"], e["os_user"], e["host"], e["via"]) for e in audits} == {
            ("cli", getpass.getuser(), socket.gethostname(), "cli")
        }
        dumped = json.dumps(audits)
        secrets = (made["client_secret"], rotated["client_secret"], initial["token"], PASSWORD)
        for secret in secrets:
            assert secret not in dumped

    def test_cli_and_api_events_agree(self, cli: Cli, tmp_path: Path) -> None:
        """The same change made by the CLI and by the API is the same event but for who
        made it, and GET /admin/v1/events lists the CLI's beside the API's."""
        db = tmp_path / "keystile.db"
        ok_json(cli, "client", "create", "by-cli", "--scope", "read")
        ok_json(cli, "client", "create", "ops", "--scope", "keystile:admin")
        ops = ok_json(cli, "client", "rotate-secret", "ops")["client_secret"]
        ok_json(cli, "client", "disable", "by-cli")

        async def main() -> list[dict[str, Any]]:
            settings = ServerSettings(
                db=str(db), issuer=ISSUER, purge_interval=0, access_log=False, admin_api=True
            )
            store = SQLiteStore(db)
            await store.open()
            try:
                await admin.create_client(
                    store, SystemClock(), client_id="by-api", scopes=["read"],
                    access_token_ttl=settings.access_token_ttl,
                )  # fmt: skip
                app = create_app(settings, store=store)
                transport = httpx.ASGITransport(app=app, client=("203.0.113.7", 40000))
                async with httpx.AsyncClient(transport=transport, base_url=ISSUER) as http:
                    r = await http.post(
                        TOKEN,
                        data={"grant_type": "client_credentials", "scope": "keystile:admin"},
                        auth=("ops", ops),
                    )
                    token = r.json()["access_token"]
                    r = await http.post(f"{ADMIN}/clients/by-api/disable", headers=bearer(token))
                    assert r.status_code == 200, r.text
                    r = await http.get(
                        f"{ADMIN}/events", params={"after": 0}, headers=bearer(token)
                    )
                    assert r.status_code == 200, r.text
                    return [e for e in r.json()["items"] if e["type"] == ADMIN_ACTION]
            finally:
                await store.close()

        events = asyncio.run(main())
        disables = {e["target"]: e for e in events if e["action"] == "client.disable"}
        by_cli, by_api = disables["by-cli"], disables["by-api"]
        assert (by_cli["actor"], by_cli["via"]) == ("cli", "cli")
        assert by_api["actor"] == "ops"
        common = ("action", "tokens_revoked")
        assert {k: by_cli[k] for k in common} == {k: by_api[k] for k in common}
        assert [e["actor"] for e in events] == ["cli", "cli", "cli", "cli", "ops"]
