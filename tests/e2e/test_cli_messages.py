"""What the `keystile` command tells people (issue 16): the address `serve` bound, a missing
database, empty lists, settings errors that name their source, and `delete` without a
terminal. Real processes, as a person or a script runs them."""

from __future__ import annotations

import json
import os
import pty
import re
import select
import signal
import subprocess
from pathlib import Path

import httpx
import pytest

from tests.e2e.conftest import (
    CLI_TIMEOUT,
    KEYSTILE,
    READY_TIMEOUT,
    STOP_TIMEOUT,
    Cli,
    RunKeystile,
    ServerStarter,
    clean_env,
)

pytestmark = pytest.mark.process

ISSUER = "https://auth.example.com"


def upgraded(run_keystile: RunKeystile, db: str = "k.db") -> None:
    done = run_keystile("db", "upgrade", "--db", db)
    assert done.returncode == 0, done.stderr


class TestServeAnnounces:
    def test_port_0_prints_the_real_port(self, tmp_path: Path) -> None:
        """`serve --port 0` prints the address and port the kernel gave it, flushed at once
        to a pipe (no PYTHONUNBUFFERED); the server answers there, and the derived issuer
        names that port, not 0."""
        env = clean_env()
        del env["PYTHONUNBUFFERED"]
        with subprocess.Popen(
            [str(KEYSTILE), "serve", "--port", "0", "--db", "k.db", "--no-demo"],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            stdin=subprocess.DEVNULL,
            env=env,
            cwd=tmp_path,
        ) as proc:
            assert proc.stdout is not None
            try:
                ready, _, _ = select.select([proc.stdout], [], [], READY_TIMEOUT)
                assert ready, "no listening line"
                line = proc.stdout.readline().decode()
                match = re.fullmatch(r"keystile listening on (http://127\.0\.0\.1:(\d+))\n", line)
                assert match is not None, line
                url, port = match.group(1), int(match.group(2))
                assert port != 0
                with httpx.Client(base_url=url, trust_env=False, timeout=5.0) as http:
                    assert http.get("/healthz").status_code == 200
                    meta = http.get("/.well-known/oauth-authorization-server").json()
                assert meta["issuer"] == url
            finally:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(STOP_TIMEOUT)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
            assert proc.stdout.read() == b""  # the listening line was the only one

    def test_issuer_line_when_it_differs(self, start_server: ServerStarter) -> None:
        """With --issuer the first line still gives the bound address, the next the issuer."""
        server = start_server("--issuer", ISSUER, "--no-demo")
        assert server.stdout == f"keystile listening on {server.url}\nissuer {ISSUER}\n"
        meta = server.http.get("/.well-known/oauth-authorization-server").json()
        assert meta["issuer"] == ISSUER

    def test_no_issuer_line_when_it_is_the_address(self, start_server: ServerStarter) -> None:
        server = start_server("--no-demo")
        assert server.stdout == f"keystile listening on {server.url}\n"


class TestMissingDatabase:
    @pytest.mark.parametrize(
        "command",
        [
            ["client", "list"],
            ["client", "show", "app"],
            ["client", "disable", "app"],
            ["client", "delete", "app", "--yes"],
            ["resource", "list", "--json"],
            ["user", "list"],
            ["user", "passwd", "alice", "--password-stdin"],
            ["key", "list"],
            ["key", "rotate"],
        ],
    )
    def test_exit_2_and_nothing_created(
        self, run_keystile: RunKeystile, tmp_path: Path, command: list[str]
    ) -> None:
        """A command that reads or changes data exits 2 on a database path that does not
        exist, names it and the command that creates it, and creates neither file nor folder."""
        db = tmp_path / "nonexistent-dir" / "x.db"
        done = run_keystile(*command, "--db", str(db), stdin="a long enough password\n")
        assert done.returncode == 2
        assert done.stdout == ""
        assert done.stderr == (
            f"keystile: no database at {db}: check --db, --config or KEYSTILE_DB, or create it "
            f"with `keystile db upgrade --db {db}`\n"
        )
        assert not db.parent.exists()

    def test_default_path_and_environment(self, run_keystile: RunKeystile, tmp_path: Path) -> None:
        """Without --db the default keystile.db (relative: the message adds the folder) and
        KEYSTILE_DB are checked the same way."""
        done = run_keystile("client", "list")
        assert done.returncode == 2
        assert done.stderr.startswith(f"keystile: no database at keystile.db (in {tmp_path}): ")
        assert "`keystile db upgrade --db keystile.db`" in done.stderr
        done = run_keystile("user", "list", env=clean_env(KEYSTILE_DB="env.db"))
        assert done.returncode == 2
        assert done.stderr.startswith("keystile: no database at env.db (in ")
        assert sorted(p.name for p in tmp_path.iterdir()) == []

    def test_db_upgrade_then_works(self, run_keystile: RunKeystile, tmp_path: Path) -> None:
        """`db upgrade` creates the database (and its folder); then the same command works."""
        db = tmp_path / "new-dir" / "x.db"
        upgraded(run_keystile, str(db))
        done = run_keystile("client", "list", "--db", str(db), "--json")
        assert (done.returncode, done.stdout) == (0, "[]\n")

    def test_create_commands_create_it(self, run_keystile: RunKeystile, tmp_path: Path) -> None:
        """Commands that add something create a missing database, as `serve` does."""
        done = run_keystile("client", "create", "app", "--db", "made.db", "--json")
        assert done.returncode == 0, done.stderr
        assert (tmp_path / "made.db").is_file()


class TestEmptyLists:
    @pytest.mark.parametrize(
        ("group", "message"),
        [
            ("client", "no clients"),
            ("resource", "no resource servers"),
            ("user", "no users"),
            ("key", "no signing keys"),
        ],
    )
    def test_text_and_json(self, run_keystile: RunKeystile, group: str, message: str) -> None:
        """An empty list says so on stderr (stdout stays empty for scripts); --json gives []."""
        upgraded(run_keystile)
        done = run_keystile(group, "list", "--db", "k.db")
        assert (done.returncode, done.stdout, done.stderr) == (0, "", message + "\n")
        done = run_keystile(group, "list", "--db", "k.db", "--json")
        assert (done.returncode, done.stdout, done.stderr) == (0, "[]\n", "")

    def test_non_empty_list_has_no_message(self, run_keystile: RunKeystile) -> None:
        upgraded(run_keystile)
        assert run_keystile("client", "create", "app", "--db", "k.db").returncode == 0
        done = run_keystile("client", "list", "--db", "k.db")
        assert done.returncode == 0
        assert done.stdout.startswith("app ")
        assert done.stderr == ""


class TestSettingsErrors:
    @pytest.mark.parametrize("command", [["serve"], ["client", "list"]])
    def test_env_var_is_named(
        self, run_keystile: RunKeystile, tmp_path: Path, command: list[str]
    ) -> None:
        """KEYSTILE_PORT=abc exits 2 naming the variable and its value, before any database
        is touched."""
        done = run_keystile(*command, env=clean_env(KEYSTILE_PORT="abc"))
        assert done.returncode == 2
        assert (
            done.stderr
            == "keystile: invalid settings: KEYSTILE_PORT=abc: port must be an integer\n"
        )
        assert not (tmp_path / "keystile.db").exists()

    def test_toml_key_is_named(self, run_keystile: RunKeystile, tmp_path: Path) -> None:
        config = tmp_path / "k.toml"
        config.write_text('port = "abc"\nworkers = 0\n')
        done = run_keystile("serve", "--config", str(config))
        assert done.returncode == 2
        assert done.stderr == (
            f'keystile: invalid settings: port = "abc" in {config}: port must be an integer; '
            f"workers = 0 in {config}: workers must be at least 1\n"
        )

    @pytest.mark.parametrize(
        ("args", "env", "message"),
        [
            (
                ["serve", "--log-level", "loud"],
                {},
                "--log-level loud: log_level must be 'debug', 'info', 'warning' or 'error'",
            ),
            (
                ["serve", "--issuer", "ftp://x"],
                {},
                "--issuer ftp://x: issuer must be an absolute http(s) URL",
            ),
            (
                ["serve"],
                {"KEYSTILE_PORT": "70000"},
                "KEYSTILE_PORT=70000: port must be at most 65535",
            ),
            (
                ["serve"],
                {"KEYSTILE_DEMO": "maybe"},
                "KEYSTILE_DEMO=maybe: demo must be true or false",
            ),
            (
                ["client", "list"],
                {"KEYSTILE_REDIS_URL": "http://u:hunter2@cache"},
                "KEYSTILE_REDIS_URL=http://u:***@cache: redis_url must start with redis://, "
                "rediss:// or unix://",
            ),
            (
                ["client", "list"],
                {"KEYSTILE_TRUSTED_PROXIES": "10.0.0.1"},
                "KEYSTILE_TRUSTED_PROXIES=10.0.0.1: trusted_proxies must be a JSON list, "
                'such as ["10.0.0.1"]',
            ),
        ],
    )
    def test_flag_and_variable_variants(
        self, cli: Cli, args: list[str], env: dict[str, str], message: str
    ) -> None:
        """Flags are named as typed, URLs never show a password (in-process: same code)."""
        result = cli(*args, env=env)
        assert result.exit_code == 2
        assert result.stderr == f"keystile: invalid settings: {message}\n"


class TestDeleteWithoutTerminal:
    def test_client_delete_does_not_ask_without_a_terminal(self, run_keystile: RunKeystile) -> None:
        """Without a terminal on stdin (a script, a pipe) `client delete` deletes at once,
        without --yes: nobody could answer. Piped input is not read as an answer."""
        upgraded(run_keystile)
        assert run_keystile("client", "create", "app", "--db", "k.db").returncode == 0
        done = run_keystile("client", "delete", "app", "--db", "k.db", stdin="n\n")
        assert done.returncode == 0, done.stderr
        assert done.stdout == "client app deleted; 0 live token(s) revoked\n"
        assert "Delete client" not in done.stdout + done.stderr
        done = run_keystile("client", "list", "--db", "k.db", "--json")
        assert done.stdout == "[]\n"

    def test_client_delete_asks_on_a_terminal(
        self, run_keystile: RunKeystile, tmp_path: Path
    ) -> None:
        """On a terminal it asks first; "n" keeps the client (exit 1, "Aborted!")."""
        upgraded(run_keystile)
        assert run_keystile("client", "create", "app", "--db", "k.db").returncode == 0
        master, slave = pty.openpty()
        try:
            proc = subprocess.Popen(
                [str(KEYSTILE), "client", "delete", "app", "--db", "k.db"],
                stdin=slave,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                env=clean_env(),
                cwd=tmp_path,
            )
            os.close(slave)
            slave = -1
            os.write(master, b"n\n")
            out, err = proc.communicate(timeout=CLI_TIMEOUT)
        finally:
            os.close(master)
            if slave != -1:
                os.close(slave)
        assert proc.returncode == 1
        assert out.decode() == "Delete client app and revoke its tokens? [y/N]: "
        assert "Aborted" in err.decode()
        shown = run_keystile("client", "show", "app", "--db", "k.db", "--json")
        assert json.loads(shown.stdout)["client_id"] == "app"


def test_top_level_help_wraps_only_at_the_terminal_width(run_keystile: RunKeystile) -> None:
    """`keystile --help` on a wide terminal shows each paragraph of the help on one line:
    the source's line breaks do not cut sentences in the middle."""
    env = {**clean_env(), "COLUMNS": "200"}
    done = run_keystile("--help", env=env)
    assert done.returncode == 0, done.stderr
    assert "Every command that shows data takes --json for scripts;" in done.stdout
