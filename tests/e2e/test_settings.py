"""Settings: TOML file < KEYSTILE_* environment < flags, and what `serve` refuses."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from keystile.errors import ConfigurationError
from keystile.settings import ServerSettings
from tests.e2e.conftest import (
    LOOPBACK,
    Cli,
    RunKeystile,
    ServerStarter,
    clean_env,
    free_port,
)

# Binding every interface is the point of these tests; all traffic still goes to 127.0.0.1.
ANY_ADDRESS = "0.0.0.0"  # noqa: S104


def write_toml(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


class TestPrecedence:
    def test_file_sets_port_and_db(self, tmp_path: Path) -> None:
        """Values in the TOML file apply when neither the environment nor a flag gives them."""
        config = write_toml(tmp_path / "k.toml", 'port = 9101\ndb = "file.db"\n')
        settings = ServerSettings.load(config)
        assert (settings.port, settings.db) == (9101, "file.db")

    def test_env_overrides_file(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        """KEYSTILE_PORT beats the file's port; the file's other values still apply."""
        config = write_toml(tmp_path / "k.toml", 'port = 9101\ndb = "file.db"\n')
        monkeypatch.setenv("KEYSTILE_PORT", "9102")
        settings = ServerSettings.load(config)
        assert (settings.port, settings.db) == (9102, "file.db")

    def test_flag_overrides_env(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        """A flag beats KEYSTILE_PORT and the file; a flag left out (None) does not."""
        config = write_toml(tmp_path / "k.toml", 'port = 9101\ndb = "file.db"\n')
        monkeypatch.setenv("KEYSTILE_PORT", "9102")
        monkeypatch.setenv("KEYSTILE_DB", "env.db")
        settings = ServerSettings.load(config, port=9103, db=None)
        assert (settings.port, settings.db) == (9103, "env.db")

    def test_tls_satisfies_bind_check(self, tmp_path: Path) -> None:
        """A non-loopback address is fine with TLS configured: the check is about clear text."""
        settings = ServerSettings.load(
            None, host=ANY_ADDRESS, tls_cert=tmp_path / "c.pem", tls_key=tmp_path / "k.pem"
        )
        settings.check_bind()
        assert settings.effective_issuer == "https://0.0.0.0:8000"

    def test_unknown_key_names_it(self, tmp_path: Path) -> None:
        """An unknown key in the TOML file is a ConfigurationError naming the key and file."""
        config = write_toml(tmp_path / "k.toml", "prot = 9101\n")
        with pytest.raises(ConfigurationError, match=r"unknown setting 'prot' in .*k\.toml"):
            ServerSettings.load(config)


class TestServeRefusals:
    def test_unknown_toml_key_exits_2(self, cli: Cli, tmp_path: Path) -> None:
        """`serve --config` with an unknown key exits 2 with one clear line, creating no DB."""
        config = write_toml(tmp_path / "k.toml", "port = 9101\nbogus = 1\n")
        result = cli("serve", "--config", str(config))
        assert result.exit_code == 2
        assert result.stderr.startswith(
            f"keystile: invalid settings: unknown setting 'bogus' in {config} (known settings: "
        )
        assert result.stderr.count("\n") == 1
        assert not (tmp_path / "keystile.db").exists()

    def test_bad_toml_syntax_exits_2(self, cli: Cli, tmp_path: Path) -> None:
        """A TOML file that does not parse exits 2 and names the file."""
        config = write_toml(tmp_path / "k.toml", "port = \n")
        result = cli("serve", "--config", str(config))
        assert result.exit_code == 2
        assert result.stderr.startswith(f"keystile: invalid settings file {config}: ")

    def test_missing_config_exits_2(self, cli: Cli, tmp_path: Path) -> None:
        """A --config path that does not exist exits 2 and says so."""
        result = cli("serve", "--config", str(tmp_path / "nope.toml"))
        assert result.exit_code == 2
        assert result.stderr == f"keystile: config file not found: {tmp_path / 'nope.toml'}\n"

    def test_half_tls_exits_2(self, cli: Cli, tmp_path: Path) -> None:
        """--tls-cert without --tls-key exits 2: they go together."""
        result = cli("serve", "--tls-cert", str(tmp_path / "c.pem"))
        assert result.exit_code == 2
        assert result.stderr == "keystile: invalid settings: tls_cert and tls_key go together\n"

    @pytest.mark.process
    def test_plain_http_off_loopback_refused(
        self, run_keystile: RunKeystile, tmp_path: Path
    ) -> None:
        """`serve --host 0.0.0.0` without TLS exits 2, points at --allow-insecure-http, and
        touches no database."""
        done = run_keystile("serve", "--host", ANY_ADDRESS, "--port", str(free_port()))
        assert done.returncode == 2
        assert done.stderr.startswith("keystile: refusing to serve plain HTTP on 0.0.0.0")
        assert "--allow-insecure-http" in done.stderr
        assert "Traceback" not in done.stderr
        assert not (tmp_path / "keystile.db").exists()


@pytest.mark.process
class TestServeProcessSettings:
    def test_config_file_only(self, start_server: ServerStarter, tmp_path: Path) -> None:
        """A server started with only --config listens on the file's port and uses its DB."""
        port = free_port()
        db = tmp_path / "from-config.db"
        config = write_toml(tmp_path / "k.toml", f'port = {port}\ndb = "{db}"\n')
        server = start_server("--config", str(config), port=port, port_flag=False, db_flag=False)
        assert server.stdout.endswith(f"\nkeystile listening on http://{LOOPBACK}:{port}\n")
        assert db.is_file()
        assert not (tmp_path / "keystile.db").exists()

    def test_env_port_overrides_config(
        self, start_server: ServerStarter, run_keystile: RunKeystile, tmp_path: Path
    ) -> None:
        """KEYSTILE_PORT in the environment beats the config file's port in a real start."""
        file_port, env_port = free_port(), free_port()
        while env_port == file_port:
            env_port = free_port()
        db = tmp_path / "env.db"
        config = write_toml(tmp_path / "k.toml", f'port = {file_port}\ndb = "{db}"\ndemo = false\n')
        server = start_server(
            "--config",
            str(config),
            port=env_port,
            port_flag=False,
            db_flag=False,
            env=clean_env(KEYSTILE_PORT=str(env_port)),
        )
        assert server.stdout == f"keystile listening on http://{LOOPBACK}:{env_port}\n"
        listed = run_keystile("client", "list", "--json", "--config", str(config))
        assert json.loads(listed.stdout) == []

    def test_allow_insecure_http_off_loopback(
        self, start_server: ServerStarter, run_keystile: RunKeystile
    ) -> None:
        """With --allow-insecure-http the server binds 0.0.0.0 (reached here via 127.0.0.1),
        and off loopback it creates no demo clients by default."""
        server = start_server("--host", ANY_ADDRESS, "--allow-insecure-http")
        assert server.stdout == f"keystile listening on http://0.0.0.0:{server.port}\n"
        r = server.http.get("/.well-known/oauth-authorization-server")
        assert r.status_code == 200
        assert r.json()["issuer"] == f"http://0.0.0.0:{server.port}"
        listed = run_keystile("client", "list", "--json", "--db", str(server.db))
        assert json.loads(listed.stdout) == []
