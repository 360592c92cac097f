"""The `keystile` command: clients, resource servers, the database and its errors."""

from __future__ import annotations

import hashlib
import json
import re
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from keystile.store.sqlite import migrations
from tests.e2e.conftest import (
    CLI_TIMEOUT,
    Cli,
    DemoServer,
    RunKeystile,
    clean_env,
)

API = "https://api.example.test"
OTHER_API = "https://other.example.test"
LATEST = migrations()[-1][0]  # the schema version a new database gets
RFC7662_CLAIMS = [
    "aud",
    "client_id",
    "cnf",
    "exp",
    "iat",
    "iss",
    "jti",
    "nbf",
    "scope",
    "sub",
    "token_type",
    "username",
]


def ok_json(cli: Cli, *args: str) -> Any:
    """Run a command with --json that must succeed; its parsed output."""
    result = cli(*args, "--json")
    assert result.exit_code == 0, (result.output, result.exception)
    return json.loads(result.stdout)


def without_times(view: dict[str, Any]) -> dict[str, Any]:
    assert isinstance(view.pop("created_at"), int)
    assert isinstance(view.pop("updated_at"), int)
    return view


class TestClientCommands:
    def test_create_prints_secret_once(self, cli: Cli) -> None:
        """`client create --json` prints the new client with a 55-character ks_cs_ secret."""
        created = ok_json(
            cli, "client", "create", "app", "--scope", "read write", "--audience", API
        )
        secret = created.pop("client_secret")
        assert secret.startswith("ks_cs_")
        assert len(secret) == 55
        assert without_times(created) == {
            "client_id": "app",
            "name": "app",
            "token_endpoint_auth_method": "client_secret_basic",
            "grant_types": ["client_credentials"],
            "scope": "read write",
            "default_audience": [API],
            "access_token_ttl": 3600,
            "enabled": True,
            "token_format": "opaque",
            "jwks": None,
            "redirect_uris": [],
            "refresh_token_ttl": 14 * 86400,
            "refresh_token_max_ttl": 30 * 86400,
            "id_token_signed_response_alg": None,
            "post_logout_redirect_uris": [],
            "logout_revokes_grants": False,
            "require_dpop": False,
        }

    def test_secret_never_shown_again(self, cli: Cli) -> None:
        """After creation, neither show nor list (JSON or text) reveals the secret."""
        secret = ok_json(cli, "client", "create", "app")["client_secret"]
        for args in (
            ("client", "show", "app"),
            ("client", "show", "app", "--json"),
            ("client", "list"),
            ("client", "list", "--json"),
        ):
            result = cli(*args)
            assert result.exit_code == 0
            assert secret not in result.output
            assert "ks_cs_" not in result.output

    def test_create_text_output_warns_once(self, cli: Cli) -> None:
        """Without --json, create prints the secret and says it is shown only now."""
        result = cli("client", "create", "app")
        assert result.exit_code == 0
        assert "client_secret" in result.stdout
        assert "ks_cs_" in result.stdout
        assert "The secret is shown only now" in result.stdout

    def test_show_and_list(self, cli: Cli) -> None:
        """show --json gives one client's view; list --json gives all of them, by id."""
        ok_json(cli, "client", "create", "b-app", "--name", "B")
        ok_json(cli, "client", "create", "a-app", "--scope", "read")
        shown = ok_json(cli, "client", "show", "b-app")
        assert shown["client_id"] == "b-app"
        assert shown["name"] == "B"
        listed = ok_json(cli, "client", "list")
        assert sorted(c["client_id"] for c in listed) == ["a-app", "b-app"]
        # The list also says how each client came to be (docs/registration.md).
        assert next(c for c in listed if c["client_id"] == "b-app") == {
            **shown,
            "registration": "cli",
        }

    def test_update_changes_only_given_options(self, cli: Cli) -> None:
        """update changes the options given and keeps the rest."""
        ok_json(cli, "client", "create", "app", "--scope", "read write", "--audience", API)
        updated = ok_json(
            cli,
            "client",
            "update",
            "app",
            "--name",
            "App",
            "--scope",
            "read",
            "--ttl",
            "60",
            "--auth-method",
            "client_secret_post",
        )
        assert without_times(updated) == {
            "client_id": "app",
            "name": "App",
            "token_endpoint_auth_method": "client_secret_post",
            "grant_types": ["client_credentials"],
            "scope": "read",
            "default_audience": [API],
            "access_token_ttl": 60,
            "enabled": True,
            "token_format": "opaque",
            "jwks": None,
            "redirect_uris": [],
            "refresh_token_ttl": 14 * 86400,
            "refresh_token_max_ttl": 30 * 86400,
            "id_token_signed_response_alg": None,
            "post_logout_redirect_uris": [],
            "logout_revokes_grants": False,
            "require_dpop": False,
        }
        assert without_times(ok_json(cli, "client", "show", "app")) == updated

    def test_grant_type_none(self, cli: Cli) -> None:
        """--grant-type none registers a client that may only authenticate (an introspector)."""
        created = ok_json(cli, "client", "create", "rs", "--grant-type", "none")
        assert created["grant_types"] == []

    def test_disable_enable(self, cli: Cli) -> None:
        """disable and enable --json report the new state, and show reflects it."""
        ok_json(cli, "client", "create", "app")
        assert ok_json(cli, "client", "disable", "app") == {
            "client_id": "app",
            "enabled": False,
            "tokens_revoked": 0,
        }
        assert ok_json(cli, "client", "show", "app")["enabled"] is False
        assert ok_json(cli, "client", "enable", "app") == {"client_id": "app", "enabled": True}
        assert ok_json(cli, "client", "show", "app")["enabled"] is True

    def test_delete(self, cli: Cli) -> None:
        """delete --yes --json removes the client; show then fails with exit code 3."""
        ok_json(cli, "client", "create", "app")
        assert ok_json(cli, "client", "delete", "app", "--yes") == {
            "client_id": "app",
            "deleted": True,
            "tokens_revoked": 0,
        }
        assert cli("client", "show", "app").exit_code == 3
        assert ok_json(cli, "client", "list") == []

    def test_rotate_secret(self, cli: Cli) -> None:
        """rotate-secret --json prints only the id and a new secret, never shown afterwards."""
        old = ok_json(cli, "client", "create", "app")["client_secret"]
        rotated = ok_json(cli, "client", "rotate-secret", "app")
        assert set(rotated) == {"client_id", "client_secret"}
        assert rotated["client_id"] == "app"
        assert rotated["client_secret"].startswith("ks_cs_")
        assert len(rotated["client_secret"]) == 55
        assert rotated["client_secret"] != old
        assert "ks_cs_" not in cli("client", "show", "app", "--json").output


class TestResourceCommands:
    def test_create(self, cli: Cli) -> None:
        """resource create --json: all RFC 7662 claims and the audience rule by default."""
        ok_json(cli, "client", "create", "rs", "--grant-type", "none")
        created = ok_json(cli, "resource", "create", API, "--client", "rs", "--name", "API")
        assert without_times(created) == {
            "identifier": API,
            "name": "API",
            "introspection_clients": ["rs"],
            "claims": RFC7662_CLAIMS,
            "introspection_rules": ["audience"],
            "introspection_response": "json",
        }

    def test_list_show_update_delete(self, cli: Cli) -> None:
        """list, show, update (lists replaced whole) and delete, all with --json."""
        ok_json(cli, "client", "create", "rs", "--grant-type", "none")
        ok_json(cli, "client", "create", "rs2", "--grant-type", "none")
        ok_json(cli, "resource", "create", API, "--client", "rs")
        ok_json(cli, "resource", "create", OTHER_API)
        listed = ok_json(cli, "resource", "list")
        assert sorted(r["identifier"] for r in listed) == [API, OTHER_API]
        assert ok_json(cli, "resource", "show", API)["introspection_clients"] == ["rs"]

        updated = ok_json(
            cli,
            "resource",
            "update",
            API,
            "--client",
            "rs2",
            "--claims",
            "scope exp",
            "--allow",
            "owner",
        )
        assert updated["introspection_clients"] == ["rs2"]
        assert updated["claims"] == ["exp", "scope"]
        assert updated["introspection_rules"] == ["audience", "owner"]
        assert without_times(ok_json(cli, "resource", "show", API)) == without_times(updated)

        assert ok_json(cli, "resource", "delete", API) == {"identifier": API, "deleted": True}
        assert [r["identifier"] for r in ok_json(cli, "resource", "list")] == [OTHER_API]


class TestErrors:
    @pytest.mark.parametrize(
        "command",
        [
            ["client", "show", "nope"],
            ["client", "update", "nope", "--name", "x"],
            ["client", "disable", "nope"],
            ["client", "enable", "nope"],
            ["client", "delete", "nope", "--yes"],
            ["client", "rotate-secret", "nope"],
        ],
    )
    def test_unknown_client(self, cli: Cli, command: list[str]) -> None:
        """Every client command on an unknown id exits 3 with one clear line on stderr."""
        ok_json(cli, "db", "upgrade")
        result = cli(*command)
        assert result.exit_code == 3
        assert result.stderr == "keystile: no client 'nope'\n"
        assert result.stdout == ""

    @pytest.mark.parametrize(
        "command",
        [
            ["resource", "show", OTHER_API],
            ["resource", "update", OTHER_API, "--name", "x"],
            ["resource", "delete", OTHER_API],
        ],
    )
    def test_unknown_resource(self, cli: Cli, command: list[str]) -> None:
        """Every resource command on an unknown identifier exits 3 with one clear line."""
        ok_json(cli, "db", "upgrade")
        result = cli(*command)
        assert result.exit_code == 3
        assert result.stderr == f"keystile: no resource server '{OTHER_API}'\n"

    def test_duplicate_client(self, cli: Cli) -> None:
        """Creating a client id that exists exits 4 and leaves the first client's secret valid."""
        first = ok_json(cli, "client", "create", "app")
        result = cli("client", "create", "app")
        assert result.exit_code == 4
        assert result.stderr == "keystile: client 'app' exists already\n"
        assert "ks_cs_" not in result.stdout
        assert without_times(ok_json(cli, "client", "show", "app")) == without_times(
            {k: v for k, v in first.items() if k != "client_secret"}
        )

    def test_duplicate_resource(self, cli: Cli) -> None:
        """Creating a resource server that exists exits 4."""
        ok_json(cli, "resource", "create", API)
        result = cli("resource", "create", API)
        assert result.exit_code == 4
        assert result.stderr == f"keystile: resource server '{API}' exists already\n"

    @pytest.mark.parametrize(
        ("command", "message"),
        [
            (
                ["client", "create", "app", "--scope", 'read "quoted"'],
                "keystile: scope contains characters not allowed by RFC 6749 section 3.3\n",
            ),
            (
                ["client", "create", "app", "--audience", "api.example.test"],
                "keystile: audience 'api.example.test': resource must be an absolute URI "
                "without a fragment (RFC 8707)\n",
            ),
            (
                ["client", "create", "app", "--audience", "https://api.example.test/#x"],
                "keystile: audience 'https://api.example.test/#x': resource must be an "
                "absolute URI without a fragment (RFC 8707)\n",
            ),
            (
                ["client", "create", "bad id!"],
                "keystile: client id must be 1-128 characters of letters, digits and "
                ". _ : @ -, starting with a letter or digit\n",
            ),
            (
                ["client", "create", "app", "--auth-method", "client_secret_jwt"],
                "keystile: unknown auth method 'client_secret_jwt'; choose from "
                "client_secret_basic, client_secret_post, private_key_jwt, none\n",
            ),
            (
                ["client", "create", "app", "--ttl", "0"],
                "keystile: access-token lifetime must be 1..2592000 seconds\n",
            ),
            (
                ["resource", "create", "not-a-uri"],
                "keystile: resource identifier 'not-a-uri': resource must be an absolute "
                "URI without a fragment (RFC 8707)\n",
            ),
            (
                ["resource", "create", API, "--claims", "scope email"],
                "keystile: unknown claim 'email'; choose from scope, client_id, username, "
                "token_type, exp, iat, nbf, sub, aud, iss, jti, cnf\n",
            ),
        ],
    )
    def test_invalid_input(self, cli: Cli, command: list[str], message: str) -> None:
        """Invalid ids, scopes, audiences, claims and lifetimes exit 2 with a clear message
        and create nothing."""
        result = cli(*command)
        assert result.exit_code == 2
        assert result.stderr == message
        assert ok_json(cli, "client", "list") == []
        assert ok_json(cli, "resource", "list") == []

    @pytest.mark.process
    def test_unknown_client_in_subprocess(self, run_keystile: RunKeystile) -> None:
        """In a real process an unknown client exits 3 with one stderr line and no traceback."""
        assert run_keystile("db", "upgrade", "--db", "k.db").returncode == 0
        done = run_keystile("client", "show", "nope", "--db", "k.db")
        assert done.returncode == 3
        assert done.stderr == "keystile: no client 'nope'\n"
        assert done.stdout == ""

    @pytest.mark.process
    def test_bad_scope_in_subprocess(self, run_keystile: RunKeystile) -> None:
        """In a real process a bad scope exits 2 with one stderr line and no traceback."""
        done = run_keystile("client", "create", "app", "--scope", "caf\u00e9", "--db", "k.db")
        assert done.returncode == 2
        assert done.stderr == (
            "keystile: scope contains characters not allowed by RFC 6749 section 3.3\n"
        )


@pytest.mark.process
class TestDatabase:
    def test_db_upgrade_json(self, run_keystile: RunKeystile, tmp_path: Path) -> None:
        """`db upgrade --json` creates the file and reports the latest schema version, twice."""
        db = tmp_path / "new.db"
        for _ in range(2):
            done = run_keystile("db", "upgrade", "--json", "--db", str(db))
            assert done.returncode == 0, done.stderr
            assert json.loads(done.stdout) == {"db": str(db), "schema_version": LATEST}
        assert db.is_file()

    def test_python_dash_m(self, tmp_path: Path) -> None:
        """`python -m keystile` is the same command as `keystile`."""
        db = tmp_path / "m.db"
        done = subprocess.run(
            [sys.executable, "-m", "keystile", "db", "upgrade", "--json", "--db", str(db)],
            capture_output=True,
            text=True,
            env=clean_env(),
            timeout=CLI_TIMEOUT,
            check=False,
        )
        assert done.returncode == 0, done.stderr
        assert json.loads(done.stdout) == {"db": str(db), "schema_version": LATEST}

    def test_no_raw_secret_or_token_at_rest(
        self, demo_server: DemoServer, run_keystile: RunKeystile
    ) -> None:
        """The SQLite files (main, WAL, SHM) hold only SHA-256 digests of client secrets and
        tokens, never the raw values, while the server runs and after it stops."""
        server, demo = demo_server.server, demo_server.demo
        assert server.db is not None
        created = run_keystile("client", "create", "cli-app", "--json", "--db", str(server.db))
        cli_secret = json.loads(created.stdout)["client_secret"]
        token = server.issue(demo.app, scope="read")
        revoked = server.issue(demo.app, scope="write")
        assert server.revoke(demo.app, revoked).status_code == 200
        raw = [demo.app.secret, demo.rs.secret, cli_secret, token, revoked]

        def files_bytes() -> bytes:
            return b"".join(p.read_bytes() for p in server.db.parent.glob(server.db.name + "*"))

        def digest(value: str) -> bytes:
            return hashlib.sha256(value.encode()).digest()

        # The demo user's password (printed once) is at rest only as an argon2id hash.
        password = re.search(r"^\s+user\s+demo\s+password\s+(\S+)$", server.stdout, re.M)
        assert password is not None, server.stdout

        for stage in ("running", "stopped"):
            if stage == "stopped":
                server.stop()
            data = files_bytes()
            for value in raw:
                assert value.encode() not in data, stage
                # Positive control: the digest is there, so we read the right files.
                assert digest(value) in data, stage
            assert password.group(1).encode() not in data, stage
            assert b"$argon2id$" in data, stage

        with sqlite3.connect(server.db) as conn:
            rows = conn.execute("SELECT * FROM tokens").fetchall()
            hashes = {bytes(h) for (h,) in conn.execute("SELECT token_hash FROM tokens")}
            secrets = dict(conn.execute("SELECT client_id, secret_hash FROM clients").fetchall())
        conn.close()
        assert len(rows) == 2
        cells = [str(cell) for row in rows for cell in row]
        assert not [c for c in cells if "ks_at_" in c]
        assert hashes == {digest(token), digest(revoked)}
        # The public demo client holds no usable secret: a digest of a value never shown.
        assert len(secrets.pop("demo-spa")) == 32
        assert secrets == {
            "demo-app": digest(demo.app.secret),
            "demo-rs": digest(demo.rs.secret),
            "cli-app": digest(cli_secret),
        }
