"""Fixtures that run real processes: `keystile serve` on a free loopback port, and the CLI.

Every server is started from the ``keystile`` console script next to the interpreter that
runs the tests, with its own SQLite file under ``tmp_path``, and is waited for on
``GET /healthz``. Teardown stops whatever is still running: SIGTERM, then SIGKILL.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from click.testing import Result
from typer.testing import CliRunner

from keystile.cli import app as cli_app
from tests.conftest import INTROSPECT, REVOKE, TOKEN, Creds, service_unavailable

KEYSTILE = Path(sys.executable).parent / "keystile"
LOOPBACK = "127.0.0.1"
DEMO_AUDIENCE = "https://api.example.test"
READY_TIMEOUT = 15.0
STOP_TIMEOUT = 5.0
CLI_TIMEOUT = 30.0

# "  client   demo-app   secret ks_cs_..." in the block printed on the first start.
_DEMO_SECRET = re.compile(r"^\s+client\s+(\S+)\s+secret\s+(ks_cs_\S+)$", re.MULTILINE)


def free_port(host: str = LOOPBACK) -> int:
    """A port nothing listens on right now (the kernel's pick for port 0)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def clean_env(**extra: str) -> dict[str, str]:
    """The test's environment without any KEYSTILE_* setting, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("KEYSTILE_")}
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


@pytest.fixture(autouse=True)
def _no_keystile_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """In-process CLI runs and settings loads must not see the developer's KEYSTILE_* vars."""
    for key in list(os.environ):
        if key.startswith("KEYSTILE_"):
            monkeypatch.delenv(key)


@dataclass
class Demo:
    """The demo clients a first start creates, with the secrets it printed once."""

    app: Creds
    rs: Creds


def parse_demo(stdout: str) -> Demo:
    secrets = dict(_DEMO_SECRET.findall(stdout))
    assert set(secrets) == {"demo-app", "demo-rs"}, stdout
    return Demo(Creds("demo-app", secrets["demo-app"]), Creds("demo-rs", secrets["demo-rs"]))


@dataclass
class Server:
    """One running `keystile serve` process; ``url`` always reaches it through 127.0.0.1."""

    proc: subprocess.Popen[bytes]
    url: str
    port: int
    db: Path | None
    stdout_path: Path
    stderr_path: Path
    verify: ssl.SSLContext | bool = True
    _http: httpx.Client | None = field(default=None, repr=False)

    @property
    def stdout(self) -> str:
        return self.stdout_path.read_text()

    @property
    def stderr(self) -> str:
        return self.stderr_path.read_text()

    @property
    def http(self) -> httpx.Client:
        if self._http is None:
            self._http = httpx.Client(
                base_url=self.url, verify=self.verify, trust_env=False, timeout=10.0
            )
        return self._http

    def token(self, creds: Creds, **form: str) -> httpx.Response:
        data = {"grant_type": "client_credentials", **form}
        return self.http.post(TOKEN, data=data, auth=creds.auth)

    def issue(self, creds: Creds, **form: str) -> str:
        r = self.token(creds, **form)
        assert r.status_code == 200, r.text
        return str(r.json()["access_token"])

    def introspect(self, creds: Creds, token: str) -> httpx.Response:
        return self.http.post(INTROSPECT, data={"token": token}, auth=creds.auth)

    def revoke(self, creds: Creds, token: str) -> httpx.Response:
        return self.http.post(REVOKE, data={"token": token}, auth=creds.auth)

    def _close_http(self) -> None:
        if self._http is not None:
            self._http.close()
            self._http = None

    def stop(self) -> int:
        """SIGTERM, then SIGKILL if it has not exited within STOP_TIMEOUT; the exit code."""
        self._close_http()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode

    def kill(self) -> None:
        """SIGKILL at once, as a crash or power cut would: no shutdown code runs."""
        self._close_http()
        self.proc.kill()
        self.proc.wait()


@dataclass
class Tls:
    cert: Path
    key: Path

    def context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.cert))


class ServerStarter:
    """Starts servers for one test and stops them all at teardown."""

    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.default_db = tmp_path / "keystile.db"
        self.started: list[Server] = []

    def __call__(
        self,
        *args: str,
        db: Path | None = None,
        db_flag: bool = True,
        port: int | None = None,
        port_flag: bool = True,
        env: dict[str, str] | None = None,
        tls: Tls | None = None,
        command: Sequence[str] = (str(KEYSTILE),),
    ) -> Server:
        """Start ``keystile serve *args`` and wait until /healthz answers 200.

        ``--db`` (default: keystile.db in tmp_path) and ``--port`` (default: a free one) are
        added unless ``db_flag``/``port_flag`` say the config file or environment gives them.
        ``command`` runs in place of the ``keystile`` script (e.g. ``python -c`` with a test
        double patched in before ``keystile.cli.main()``).
        """
        port = port or free_port()
        db = db or self.default_db
        argv = [*command, "serve", *args]
        if port_flag:
            argv += ["--port", str(port)]
        if db_flag:
            argv += ["--db", str(db)]
        if tls is not None:
            argv += ["--tls-cert", str(tls.cert), "--tls-key", str(tls.key)]
        n = len(self.started)
        out, err = self.tmp_path / f"serve-{n}.out", self.tmp_path / f"serve-{n}.err"
        with out.open("wb") as stdout, err.open("wb") as stderr:
            proc = subprocess.Popen(
                argv,
                stdout=stdout,
                stderr=stderr,
                stdin=subprocess.DEVNULL,
                env=env if env is not None else clean_env(),
                cwd=self.tmp_path,
            )
        scheme = "https" if tls is not None else "http"
        server = Server(
            proc,
            f"{scheme}://{LOOPBACK}:{port}",
            port,
            db if db_flag else None,
            out,
            err,
            verify=tls.context() if tls is not None else True,
        )
        self.started.append(server)
        self._wait_ready(server)
        return server

    def _wait_ready(self, server: Server) -> None:
        deadline = time.monotonic() + READY_TIMEOUT
        with httpx.Client(verify=server.verify, trust_env=False, timeout=1.0) as probe:
            while True:
                code = server.proc.poll()
                if code is not None:
                    pytest.fail(
                        f"keystile serve exited with {code} before answering /healthz\n"
                        f"stderr:\n{server.stderr}\nstdout:\n{server.stdout}"
                    )
                try:
                    if probe.get(f"{server.url}/healthz").status_code == 200:
                        return
                except httpx.TransportError:
                    pass
                if time.monotonic() > deadline:
                    server.kill()
                    pytest.fail(
                        f"keystile serve did not answer /healthz within {READY_TIMEOUT} s\n"
                        f"stderr:\n{server.stderr}\nstdout:\n{server.stdout}"
                    )
                time.sleep(0.05)

    def stop_all(self) -> None:
        for server in self.started:
            server.stop()


@pytest.fixture
def start_server(tmp_path: Path) -> Iterator[ServerStarter]:
    """Start real `keystile serve` processes; all are stopped at teardown."""
    starter = ServerStarter(tmp_path)
    yield starter
    starter.stop_all()


@dataclass
class DemoServer:
    server: Server
    demo: Demo


@pytest.fixture
def demo_server(start_server: ServerStarter) -> DemoServer:
    """A server on a new database, with the demo clients whose secrets it printed."""
    server = start_server()
    return DemoServer(server, parse_demo(server.stdout))


RunKeystile = Callable[..., "subprocess.CompletedProcess[str]"]


@pytest.fixture
def run_keystile(tmp_path: Path) -> RunKeystile:
    """Run the ``keystile`` command in a subprocess, in tmp_path, and capture its output;
    ``stdin`` is given text (e.g. for ``--password-stdin``), or nothing; ``command`` runs in
    place of the ``keystile`` script."""

    def run(
        *args: str,
        env: dict[str, str] | None = None,
        stdin: str | None = None,
        command: Sequence[str] = (str(KEYSTILE),),
    ) -> subprocess.CompletedProcess[str]:
        feed: dict[str, Any] = {"stdin": subprocess.DEVNULL} if stdin is None else {"input": stdin}
        return subprocess.run(
            [*command, *args],
            capture_output=True,
            text=True,
            env=env if env is not None else clean_env(),
            cwd=tmp_path,
            timeout=CLI_TIMEOUT,
            check=False,
            **feed,
        )

    return run


Cli = Callable[..., Result]


@pytest.fixture
def cli(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Cli:
    """Run the CLI in this process (typer's CliRunner), from tmp_path: fast, same code path."""
    monkeypatch.chdir(tmp_path)
    runner = CliRunner()

    def invoke(*args: str, **kwargs: Any) -> Result:
        return runner.invoke(cli_app, list(args), **kwargs)

    return invoke


def _openssl_cert(openssl: str, folder: Path) -> Tls:
    tls = Tls(folder / "cert.pem", folder / "key.pem")
    subprocess.run(
        [
            openssl,
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            str(tls.key),
            "-out",
            str(tls.cert),
            "-days",
            "2",
            "-subj",
            f"/CN={LOOPBACK}",
            "-addext",
            f"subjectAltName=IP:{LOOPBACK}",
        ],
        check=True,
        capture_output=True,
        timeout=CLI_TIMEOUT,
    )
    return tls


def _cryptography_cert(folder: Path) -> Tls:  # pragma: no cover - only without openssl
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, LOOPBACK)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(LOOPBACK))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    tls = Tls(folder / "cert.pem", folder / "key.pem")
    tls.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    tls.key.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return tls


@pytest.fixture(scope="session")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> Tls:
    """A self-signed certificate and key for 127.0.0.1, from openssl or `cryptography`."""
    folder = tmp_path_factory.mktemp("tls")
    openssl = shutil.which("openssl")
    if openssl is not None:
        return _openssl_cert(openssl, folder)
    try:
        import cryptography  # noqa: F401
    except ImportError:
        service_unavailable(
            "needs the openssl binary or the cryptography package for a certificate"
        )
    return _cryptography_cert(folder)  # pragma: no cover - only without openssl


@pytest.fixture(scope="session")
def curl() -> str:
    """The curl binary, for running the commands the demo setup prints."""
    path = shutil.which("curl")
    if path is None:
        service_unavailable("curl is not installed; the README flow runs the real curl binary")
    return path


CHROMIUM = "/usr/bin/chromium"


@pytest.fixture
def chromium() -> Iterator[Any]:
    """Headless Chromium from Debian's package, driven by Playwright (no browser download)."""
    if not Path(CHROMIUM).exists():
        service_unavailable(f"{CHROMIUM} is missing (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        # --no-sandbox: CI runs as root, where Chromium's sandbox refuses to start.
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        try:
            yield browser
        finally:
            browser.close()


def stop_process(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM, then SIGKILL after 10 s: a process a test started."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def wait_port(proc: subprocess.Popen[bytes], port: int, log: Path, within: float = 20.0) -> None:
    """Return once ``port`` on loopback accepts; fail with ``log`` if ``proc`` exits first or
    nothing listens within ``within`` seconds."""
    deadline = time.monotonic() + within
    while True:
        try:
            with socket.create_connection((LOOPBACK, port), timeout=0.2):
                return
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                stop_process(proc)
                pytest.fail(f"nothing listened on {port}:\n{log.read_text()}")
            time.sleep(0.05)
