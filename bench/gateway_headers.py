#!/usr/bin/env python3
"""The gateway's per-request header work, this tree vs a baseline git ref, side by side.

    .venv/bin/python bench/gateway_headers.py            # BASELINE=main ROUNDS=7 CALLS=200000

Times ``Proxy.upstream_headers`` (the loop that sorts every incoming header: hop-by-hop,
identity, forwarding, framing) on a typical request of 9 headers, and on one that also carries
8 spoofed identity and forwarding headers, some spelled with '_'. The baseline is the
package at git ref BASELINE, exported to a temporary folder; each round runs one fresh
interpreter per side, alternating, and the medians of the ns per call are printed with their
ratio. Nothing is started and nothing listens: it is CPU only.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tarfile
import tempfile
import textwrap
from io import BytesIO
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
BASELINE = os.environ.get("BASELINE", "main")
ROUNDS = int(os.environ.get("ROUNDS", "7"))
CALLS = int(os.environ.get("CALLS", "200000"))

WORKER = textwrap.dedent(
    """
    import sys, time
    from keystile.gateway.config import parse_config
    from keystile.gateway.metrics import GatewayMetrics
    from keystile.gateway.proxy import Proxy
    from keystile.gateway.routes import RouteTable

    config = parse_config({
        "authorization_server": {"issuer": "http://127.0.0.1:1", "client_id": "rs",
                                 "client_secret": "s"},
        "routes": [{"path": "/api", "upstream": "http://127.0.0.1:2", "scopes": ["read"]}],
    })
    proxy = Proxy(config, GatewayMetrics())
    route = RouteTable(config.routes).match(None, "/api/orders")
    typical = [
        (b"host", b"api.example.test"),
        (b"user-agent", b"curl/8.5.0"),
        (b"accept", b"application/json"),
        (b"accept-encoding", b"gzip, deflate"),
        (b"authorization", b"Bearer ks_at_" + b"x" * 43),
        (b"x-request-id", b"3f1c9a7e-6d2b-4c1a-9f0e-1b2c3d4e5f60"),
        (b"content-type", b"application/json"),
        (b"content-length", b"42"),
        (b"connection", b"keep-alive"),
    ]
    spoofed = typical + [
        (b"x-auth-subject", b"admin"), (b"x_auth_subject", b"admin"),
        (b"x-auth-scope", b"admin"), (b"x_auth-scope", b"admin"),
        (b"x-forwarded-for", b"203.0.113.9"), (b"x_forwarded_for", b"203.0.113.9"),
        (b"forwarded", b"for=203.0.113.9"), (b"x-forwarded-prefix", b"/evil"),
    ]
    identity = [(b"x-auth-subject", b"demo-app"), (b"x-auth-scope", b"read")]
    for name, headers in (("typical", typical), ("spoofed", spoofed)):
        scope = {"type": "http", "headers": headers, "client": ("127.0.0.1", 5000),
                 "scheme": "http"}
        for _ in range(2000):
            proxy.upstream_headers(scope, route, identity)
        started = time.perf_counter()
        for _ in range(CALLS):
            proxy.upstream_headers(scope, route, identity)
        took = time.perf_counter() - started
        print(name, took / CALLS * 1e9)
    """
)


def export(ref: str, into: Path) -> Path:
    """The ``src`` folder of git ref ``ref``, unpacked under ``into``."""
    data = subprocess.run(
        ["git", "-C", str(ROOT), "archive", ref, "src"], check=True, capture_output=True
    ).stdout
    with tarfile.open(fileobj=BytesIO(data)) as tar:
        tar.extractall(into, filter="data")
    return into / "src"


def run(src: Path) -> dict[str, float]:
    env = {**os.environ, "PYTHONPATH": str(src)}
    code = f"CALLS = {CALLS}\n" + WORKER
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, check=True, capture_output=True, text=True
    ).stdout
    return {name: float(value) for name, value in (line.split() for line in out.splitlines())}


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="keystile-bench-") as tmp:
        baseline = export(BASELINE, Path(tmp))
        sides = {f"baseline ({BASELINE})": baseline, "this tree": ROOT / "src"}
        results: dict[str, dict[str, list[float]]] = {s: {} for s in sides}
        for i in range(ROUNDS):
            order = list(sides.items()) if i % 2 == 0 else list(reversed(sides.items()))
            for side, src in order:
                for name, ns in run(src).items():
                    results[side].setdefault(name, []).append(ns)
        base, new = results.values()
        print(f"upstream_headers, ns per call, median of {ROUNDS} interleaved rounds\n")
        print(f"| request | {' | '.join(sides)} | this tree / baseline |")
        print("|---|---|---|---|")
        for name in base:
            b, n = statistics.median(base[name]), statistics.median(new[name])
            print(f"| {name} | {b:.0f} | {n:.0f} | {n / b:.2f} |")


if __name__ == "__main__":
    main()
