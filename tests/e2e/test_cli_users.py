"""The `keystile user` commands, and the client options of issue 3 (public clients,
redirect URIs, refresh-token lifetimes).

A user's password hashes with argon2id (~150 ms): these tests create few users.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest

from keystile.cli import users as cli_users
from keystile.core.models import User
from keystile.core.passwords import verify_password
from keystile.store.sqlite import SQLiteStore
from tests.e2e.conftest import CLI_TIMEOUT, KEYSTILE, Cli, RunKeystile, clean_env
from tests.test_users_admin import give_grant

PASSWORD = "correct horse battery staple"
OTHER_PASSWORD = "another long passphrase"
WEB = "https://app.example.test/callback"
LOOPBACK = "http://127.0.0.1:8400/cb"
NATIVE = "com.example.app:/oauth2redirect"

T = TypeVar("T")


def ok_json(cli: Cli, *args: str, **kwargs: Any) -> Any:
    """Run a command with --json that must succeed; its parsed output."""
    result = cli(*args, "--json", **kwargs)
    assert result.exit_code == 0, (result.output, result.exception)
    assert PASSWORD not in result.output
    assert "argon2" not in result.output
    return json.loads(result.stdout)


def create_user(cli: Cli, username: str = "alice", password: str = PASSWORD) -> Any:
    return ok_json(cli, "user", "create", username, "--password-stdin", input=password + "\n")


def with_store(tmp_path: Path, action: Callable[[SQLiteStore], Awaitable[T]]) -> T:
    """Run ``action`` on the database the CLI uses (keystile.db in tmp_path)."""

    async def main() -> T:
        store = SQLiteStore(tmp_path / "keystile.db")
        await store.open()
        try:
            return await action(store)
        finally:
            await store.close()

    return asyncio.run(main())


def stored_user(tmp_path: Path, user_id: str) -> User | None:
    return with_store(tmp_path, lambda store: store.get_user(user_id))


def grant_tokens(tmp_path: Path, user_id: str) -> int:
    """Give the user a live grant with two tokens, as a sign-in would; tokens stored."""

    async def action(store: SQLiteStore) -> int:
        user = await store.get_user(user_id)
        assert user is not None
        # The CLI runs on the wall clock: the tokens must be live by it.
        return await give_grant(store, user, int(time.time()), client_id="web")

    return with_store(tmp_path, action)


class TestUserCommands:
    def test_create_show_list(self, cli: Cli) -> None:
        """create --json prints the user (opaque id, lower-cased name) without any hash;
        show finds it by name in any case or by id; list has it."""
        created = create_user(cli, "Alice@Example.test")
        assert set(created) == {
            "user_id",
            "username",
            "enabled",
            "roles",
            "created_at",
            "updated_at",
            # OpenID Connect claims (docs/oidc.md), none set here.
            "name",
            "preferred_username",
            "email",
            "email_verified",
        }
        assert created["user_id"].startswith("usr_")
        assert created["username"] == "alice@example.test"
        assert created["enabled"] is True
        for ref in ("alice@example.test", "ALICE@example.TEST", created["user_id"]):
            assert ok_json(cli, "user", "show", ref) == created
        assert ok_json(cli, "user", "list") == [created]

    def test_text_output(self, cli: Cli) -> None:
        """Without --json: show prints fields, list one line a user; never the password
        or its hash."""
        created = create_user(cli)
        for args in (("user", "show", "alice"), ("user", "list")):
            result = cli(*args)
            assert result.exit_code == 0
            assert created["user_id"] in result.stdout
            assert "alice" in result.stdout
            assert "argon2" not in result.output
            assert PASSWORD not in result.output

    def test_password_from_terminal(self, cli: Cli, monkeypatch: pytest.MonkeyPatch) -> None:
        """On a terminal the password is asked twice, hidden; it is not echoed."""
        monkeypatch.setattr(cli_users, "_stdin_is_tty", lambda: True)
        result = cli("user", "create", "bob", "--json", input=f"{PASSWORD}\n{PASSWORD}\n")
        assert result.exit_code == 0, result.output
        assert PASSWORD not in result.output
        assert "Password" in result.stderr
        assert json.loads(result.stdout)["username"] == "bob"

    def test_no_terminal_no_stdin_flag(self, cli: Cli) -> None:
        """Without a terminal and without --password-stdin nothing is created: exit 2."""
        ok_json(cli, "db", "upgrade")
        result = cli("user", "create", "bob", input=PASSWORD + "\n")
        assert result.exit_code == 2
        assert result.stderr == (
            "keystile: no terminal to ask for the password: give --password-stdin and pipe it in\n"
        )
        assert ok_json(cli, "user", "list") == []

    def test_duplicate_username(self, cli: Cli) -> None:
        first = create_user(cli)
        result = cli("user", "create", "ALICE", "--password-stdin", input=OTHER_PASSWORD + "\n")
        assert result.exit_code == 4
        assert result.stderr == "keystile: user 'alice' exists already\n"
        assert ok_json(cli, "user", "list") == [first]

    @pytest.mark.parametrize(
        ("args", "stdin", "message"),
        [
            (
                ["user", "create", "bad name"],
                PASSWORD,
                "keystile: username must be 1-128 characters of letters, digits and "
                ". _ @ + -, starting with a letter or digit\n",
            ),
            (
                ["user", "create", "bob"],
                "short",
                "keystile: a password needs at least 8 characters\n",
            ),
            (["user", "create", "bob"], "", "keystile: a password needs at least 8 characters\n"),
        ],
    )
    def test_invalid_input(self, cli: Cli, args: list[str], stdin: str, message: str) -> None:
        """A bad username or a short password exits 2, says why, and creates nothing."""
        ok_json(cli, "db", "upgrade")
        result = cli(*args, "--password-stdin", input=stdin + "\n")
        assert result.exit_code == 2
        assert result.stderr == message
        assert ok_json(cli, "user", "list") == []

    def test_passwd(self, cli: Cli, tmp_path: Path) -> None:
        """passwd stores a new hash: the new password verifies, the old one does not."""
        user_id = create_user(cli)["user_id"]
        before = stored_user(tmp_path, user_id)
        assert before is not None
        assert ok_json(
            cli, "user", "passwd", "alice", "--password-stdin", input=OTHER_PASSWORD + "\r\n"
        ) == {"user_id": user_id, "username": "alice", "password_changed": True}
        after = stored_user(tmp_path, user_id)
        assert after is not None
        assert after.password_hash != before.password_hash
        assert verify_password(after.password_hash, OTHER_PASSWORD)
        assert not verify_password(after.password_hash, PASSWORD)

    def test_disable_enable(self, cli: Cli, tmp_path: Path) -> None:
        """disable revokes the user's tokens and counts them; enable restores the user."""
        user_id = create_user(cli)["user_id"]
        stored = grant_tokens(tmp_path, user_id)
        assert ok_json(cli, "user", "disable", "alice") == {
            "user_id": user_id,
            "username": "alice",
            "enabled": False,
            "tokens_revoked": stored,
        }
        assert ok_json(cli, "user", "show", user_id)["enabled"] is False
        assert ok_json(cli, "user", "enable", user_id) == {
            "user_id": user_id,
            "username": "alice",
            "enabled": True,
        }
        assert ok_json(cli, "user", "show", "alice")["enabled"] is True

    def test_revoke_sessions(self, cli: Cli, tmp_path: Path) -> None:
        user_id = create_user(cli)["user_id"]
        stored = grant_tokens(tmp_path, user_id)
        result = cli("user", "revoke-sessions", "alice")
        assert result.exit_code == 0
        assert result.stdout == f"sessions of user alice ended; {stored} live token(s) revoked\n"
        assert ok_json(cli, "user", "revoke-sessions", user_id) == {
            "user_id": user_id,
            "username": "alice",
            "tokens_revoked": 0,
        }
        assert ok_json(cli, "user", "show", "alice")["enabled"] is True

    def test_delete(self, cli: Cli, tmp_path: Path) -> None:
        user_id = create_user(cli)["user_id"]
        stored = grant_tokens(tmp_path, user_id)
        assert ok_json(cli, "user", "delete", "alice", "--yes") == {
            "user_id": user_id,
            "username": "alice",
            "deleted": True,
            "tokens_revoked": stored,
        }
        assert cli("user", "show", user_id).exit_code == 3
        assert ok_json(cli, "user", "list") == []

    @pytest.mark.parametrize(
        "command",
        [
            ["user", "show", "bob"],
            ["user", "disable", "bob"],
            ["user", "enable", "bob"],
            ["user", "revoke-sessions", "bob"],
            ["user", "delete", "bob", "--yes"],
            ["user", "passwd", "bob", "--password-stdin"],
        ],
    )
    def test_unknown_user(self, cli: Cli, command: list[str]) -> None:
        """Every user command on an unknown user exits 3 with one clear line on stderr."""
        ok_json(cli, "db", "upgrade")
        result = cli(*command, input=PASSWORD + "\n")
        assert result.exit_code == 3
        assert result.stderr == "keystile: no user 'bob'\n"
        assert result.stdout == ""


@pytest.mark.process
class TestUserProcess:
    def test_password_from_stdin(self, tmp_path: Path) -> None:
        """In a real process, --password-stdin reads one line from a pipe; the output has
        neither the password nor a hash, and the user verifies with that password."""
        done = subprocess.run(
            [str(KEYSTILE), "user", "create", "carol", "--password-stdin", "--json"],
            input=f"{PASSWORD}\nignored second line\n",
            capture_output=True,
            text=True,
            env=clean_env(),
            cwd=tmp_path,
            timeout=CLI_TIMEOUT,
            check=False,
        )
        assert done.returncode == 0, done.stderr
        assert PASSWORD not in done.stdout + done.stderr
        assert "argon2" not in done.stdout + done.stderr
        user = stored_user(tmp_path, json.loads(done.stdout)["user_id"])
        assert user is not None
        assert verify_password(user.password_hash, PASSWORD)

    def test_no_terminal(self, run_keystile: RunKeystile) -> None:
        """Without a terminal or --password-stdin there is no prompt to hang on: exit 2."""
        done = run_keystile("user", "create", "carol")
        assert done.returncode == 2
        assert "--password-stdin" in done.stderr


class TestClientOptions:
    def test_public_client(self, cli: Cli) -> None:
        """--public: auth method none, the authorization code and refresh token grants, and
        no secret printed, in JSON or text."""
        created = ok_json(
            cli,
            "client",
            "create",
            "spa",
            "--public",
            "--redirect-uri",
            WEB,
            "--redirect-uri",
            LOOPBACK,
            "--redirect-uri",
            NATIVE,
            "--grant",
            "authorization_code",
            "--grant",
            "refresh_token",
        )
        assert "client_secret" not in created
        assert created["token_endpoint_auth_method"] == "none"
        assert created["grant_types"] == ["authorization_code", "refresh_token"]
        assert created["redirect_uris"] == [WEB, LOOPBACK, NATIVE]
        assert created["refresh_token_ttl"] == 14 * 86400
        assert created["refresh_token_max_ttl"] == 30 * 86400
        shown = ok_json(cli, "client", "show", "spa")
        assert shown == created
        text = cli("client", "create", "spa2", "--public", "--redirect-uri", WEB)
        assert text.exit_code == 0
        assert "ks_cs_" not in text.output
        assert "secret" not in text.output

    def test_confidential_web_client(self, cli: Cli) -> None:
        """A confidential client with a redirect URI gets a secret and refresh lifetimes."""
        created = ok_json(
            cli,
            "client",
            "create",
            "web",
            "--redirect-uri",
            WEB,
            "--grant-type",
            "authorization_code refresh_token",
            "--refresh-ttl",
            "3600",
            "--refresh-max-ttl",
            "86400",
        )
        assert created["client_secret"].startswith("ks_cs_")
        assert created["token_endpoint_auth_method"] == "client_secret_basic"
        assert (created["refresh_token_ttl"], created["refresh_token_max_ttl"]) == (3600, 86400)

    def test_update(self, cli: Cli) -> None:
        """update replaces the redirect URIs, changes the lifetimes, and --public makes the
        client public."""
        ok_json(cli, "client", "create", "web", "--redirect-uri", WEB)
        updated = ok_json(
            cli,
            "client",
            "update",
            "web",
            "--redirect-uri",
            LOOPBACK,
            "--refresh-ttl",
            "600",
            "--public",
        )
        assert updated["redirect_uris"] == [LOOPBACK]
        assert updated["refresh_token_ttl"] == 600
        assert updated["token_endpoint_auth_method"] == "none"
        assert "client_secret" not in updated
        result = cli("client", "rotate-secret", "web")
        assert result.exit_code == 2
        assert (
            result.stderr
            == "keystile: client 'web' is public (auth method none) and has no secret\n"
        )
        cleared = ok_json(cli, "client", "update", "web", "--redirect-uri", "", "--grant", "none")
        assert cleared["redirect_uris"] == []
        assert cleared["grant_types"] == []

    @pytest.mark.parametrize(
        ("args", "message"),
        [
            (
                ["--redirect-uri", "https://app.example.test/cb#frag"],
                "keystile: redirect URI 'https://app.example.test/cb#frag': must not have a "
                "fragment (RFC 6749 section 3.1.2)\n",
            ),
            (
                ["--redirect-uri", "http://app.example.test/cb"],
                "keystile: redirect URI 'http://app.example.test/cb': plain http only to a "
                "loopback host (127.0.0.1, [::1] or localhost; RFC 8252 section 7.3); use https\n",
            ),
            (
                ["--redirect-uri", "/callback"],
                "keystile: redirect URI '/callback': must be an absolute URI\n",
            ),
            (
                ["--public", "--grant-type", "client_credentials"],
                "keystile: a public client (auth method none) cannot use the client_credentials "
                "grant: it has no credentials\n",
            ),
            (
                ["--public"],
                "keystile: the authorization_code grant needs at least one redirect URI: "
                "give --redirect-uri\n",
            ),
            (
                ["--public", "--auth-method", "client_secret_post"],
                "keystile: --public means auth method none, not client_secret_post\n",
            ),
            (
                ["--redirect-uri", WEB, "--refresh-ttl", "10"],
                "keystile: refresh-token lifetime must be 60..31536000 seconds\n",
            ),
            (
                ["--redirect-uri", WEB, "--refresh-ttl", "7200", "--refresh-max-ttl", "3600"],
                "keystile: refresh-token maximum lifetime must be 7200 (the refresh-token "
                "lifetime)..31536000 seconds\n",
            ),
        ],
    )
    def test_invalid(self, cli: Cli, args: list[str], message: str) -> None:
        """Unusable client settings exit 2 with a clear message and create nothing."""
        ok_json(cli, "db", "upgrade")
        result = cli("client", "create", "app", *args)
        assert result.exit_code == 2
        assert result.stderr == message
        assert "ks_cs_" not in result.output
        assert ok_json(cli, "client", "list") == []

    def test_public_client_cannot_introspect(self, cli: Cli) -> None:
        ok_json(cli, "client", "create", "spa", "--public", "--redirect-uri", WEB)
        result = cli("resource", "create", "https://api.example.test", "--client", "spa")
        assert result.exit_code == 2
        assert result.stderr == (
            "keystile: client 'spa' is public (auth method none): it cannot introspect for a "
            "resource server\n"
        )
        assert ok_json(cli, "resource", "list") == []
