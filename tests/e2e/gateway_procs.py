"""Real processes for the gateway tests: the toy upstream and `keystile gateway --config`.

Each is started on a free loopback port, waited for, and stopped by its own PID only.
"""

from __future__ import annotations

import signal
import socket
import ssl
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from tests.e2e.conftest import KEYSTILE, LOOPBACK, clean_env, free_port

UPSTREAM_APP = Path(__file__).with_name("gateway_upstream.py")
READY = 15.0


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@dataclass
class Upstream:
    proc: subprocess.Popen[bytes]
    port: int

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    def stop(self) -> None:
        _stop(self.proc)


def start_upstream(folder: Path) -> Upstream:
    """The toy upstream (tests/e2e/gateway_upstream.py) in its own process."""
    port = free_port()
    log = (folder / f"upstream-{port}.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, str(UPSTREAM_APP), str(port)],
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        env=clean_env(),
    )
    log.close()
    deadline = time.monotonic() + READY
    while True:
        try:
            with socket.create_connection((LOOPBACK, port), timeout=0.2):
                return Upstream(proc, port)
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                _stop(proc)
                pytest.fail(f"the toy upstream did not start on port {port}")
            time.sleep(0.05)


@dataclass
class Gateway:
    proc: subprocess.Popen[bytes]
    port: int
    stdout_path: Path
    stderr_path: Path
    tls: ssl.SSLContext | None = None  # trusts the gateway's certificate when it serves TLS
    _http: httpx.Client | None = field(default=None, repr=False)

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://{LOOPBACK}:{self.port}"

    @property
    def http(self) -> httpx.Client:
        if self._http is None:
            self._http = httpx.Client(
                base_url=self.url, trust_env=False, timeout=10.0, verify=self.tls or True
            )
        return self._http

    @property
    def stderr(self) -> str:
        return self.stderr_path.read_text()

    def metric(self, name: str, **labels: str) -> float:
        """One sample of the gateway's /metrics (0 when absent)."""
        text = self.http.get("/metrics").text
        want = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
        for line in text.splitlines():
            if line.startswith("#"):
                continue
            series, _, value = line.rpartition(" ")
            metric, _, rest = series.partition("{")
            if metric != name:
                continue
            got = ",".join(sorted(p for p in rest.rstrip("}").split(",") if p))
            if got == want:
                return float(value)
        return 0.0

    def wait_events(self, limit: float = 10.0) -> None:
        """Until /healthz says the revocation event stream is live."""
        deadline = time.monotonic() + limit
        while self.http.get("/healthz").json()["event_stream"] != "connected":
            assert time.monotonic() < deadline, "the gateway's event stream did not connect"
            time.sleep(0.02)

    def stop(self) -> None:
        if self._http is not None:
            self._http.close()
            self._http = None
        _stop(self.proc)


def start_gateway(
    folder: Path,
    config: str,
    *,
    name: str = "gateway",
    env: dict[str, str] | None = None,
    tls: ssl.SSLContext | None = None,
    args: list[str] | None = None,
) -> Gateway:
    """Write ``config`` (with ``{port}`` filled in) and run `keystile gateway --config` on it;
    ``tls``: the gateway serves HTTPS, and this context trusts its certificate."""
    port = free_port()
    path = folder / f"{name}.toml"
    path.write_text(config.replace("{port}", str(port)))
    out, err = folder / f"{name}.out", folder / f"{name}.err"
    with out.open("wb") as stdout, err.open("wb") as stderr:
        proc = subprocess.Popen(
            [str(KEYSTILE), "gateway", "--config", str(path), *(args or [])],
            stdout=stdout,
            stderr=stderr,
            stdin=subprocess.DEVNULL,
            env=clean_env(**(env or {})),
            cwd=folder,
        )
    gateway = Gateway(proc, port, out, err, tls)
    deadline = time.monotonic() + READY
    with httpx.Client(trust_env=False, timeout=1.0, verify=tls or True) as probe:
        while True:
            if proc.poll() is not None:
                pytest.fail(f"keystile gateway exited with {proc.returncode}:\n{gateway.stderr}")
            try:
                if probe.get(f"{gateway.url}/healthz").status_code == 200:
                    return gateway
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                gateway.stop()
                pytest.fail(f"keystile gateway did not answer /healthz:\n{gateway.stderr}")
            time.sleep(0.05)


def wait_until(predicate: object, limit: float = 5.0, step: float = 0.01) -> float:
    """Seconds until ``predicate()`` is true; fails the test after ``limit``."""
    assert callable(predicate)
    start = time.monotonic()
    while not predicate():
        assert time.monotonic() - start < limit, "condition not met in time"
        time.sleep(step)
    return time.monotonic() - start
