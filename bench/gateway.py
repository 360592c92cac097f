#!/usr/bin/env python3
"""Gateway benchmark: the gateway vs calling the upstream directly, on a cache hit, side by side.

    .venv/bin/python bench/gateway.py            # ROUNDS=3 DURATION=10 CONNS=32

Starts, on 127.0.0.1 only: `keystile serve` (a new SQLite file in a temporary folder, demo
clients), a trivial upstream (bench/gateway_upstream.py, uvicorn + httptools + uvloop, the
gateway's own server stack) and `keystile gateway` with one protected route. One token is
issued and validated once, so every measured gateway request is a cache hit. Then, in
interleaved rounds, wrk runs against:

- ``direct``: the upstream itself (the baseline);
- ``gateway``: the same upstream through the gateway (token check + streaming relay);
- ``forward-auth``: the forward-auth endpoint, nginx ``auth_request`` style (a decision only);

each with CONNS connections (throughput and latency percentiles), and once more with one
connection (the added latency of a single request, free of queueing). Medians over the rounds
are printed as a Markdown table, with the gateway/direct throughput ratio and the p50 latency
the gateway adds, and the gateway's CPU time per request (from /proc). Only the processes this
script started are stopped, by their own process-group ids.

Env knobs: ROUNDS (3), DURATION (10, seconds per wrk run), CONNS (32), THREADS (2),
SINGLE_DURATION (5), RESULTS_DIR (bench/results; the table goes to gateway-RUNID.md).
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
BIN = Path(sys.executable).parent
KEYSTILE = BIN / "keystile"
LOOPBACK = "127.0.0.1"

ROUNDS = int(os.environ.get("ROUNDS", "3"))
DURATION = int(os.environ.get("DURATION", "10"))
SINGLE_DURATION = int(os.environ.get("SINGLE_DURATION", "5"))
CONNS = int(os.environ.get("CONNS", "32"))
THREADS = int(os.environ.get("THREADS", "2"))
RESULTS_DIR = Path(os.environ.get("RESULTS_DIR", HERE / "results"))

_SECRET = re.compile(r"^\s+client\s+(\S+)\s+secret\s+(ks_cs_\S+)$", re.MULTILINE)
_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3}

started: list[subprocess.Popen[bytes]] = []


def free_port() -> int:
    with socket.socket() as s:
        s.bind((LOOPBACK, 0))
        return int(s.getsockname()[1])


def spawn(argv: list[str], folder: Path, name: str, **kwargs: object) -> subprocess.Popen[bytes]:
    with (folder / f"{name}.out").open("wb") as out, (folder / f"{name}.err").open("wb") as err:
        proc = subprocess.Popen(
            argv,
            stdout=out,
            stderr=err,
            stdin=subprocess.DEVNULL,
            start_new_session=True,  # its own process group, stopped by that id only
            cwd=folder,
            **kwargs,  # type: ignore[arg-type]
        )
    started.append(proc)
    return proc


def stop_all() -> None:
    for proc in started:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
    for proc in started:
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def wait_http(url: str, limit: float = 20.0) -> None:
    deadline = time.monotonic() + limit
    while True:
        try:
            if httpx.get(url, trust_env=False, timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            raise SystemExit(f"{url} did not answer")
        time.sleep(0.1)


def wrk(url: str, conns: int, seconds: int, headers: dict[str, str]) -> dict[str, float]:
    argv = ["wrk", f"-t{min(THREADS, conns)}", f"-c{conns}", f"-d{seconds}s", "--latency"]
    for name, value in headers.items():
        argv += ["-H", f"{name}: {value}"]
    out = subprocess.run([*argv, url], capture_output=True, text=True, check=True).stdout
    result = {"rps": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))}  # type: ignore[union-attr]
    for pct in ("50", "99"):
        m = re.search(rf"^\s+{pct}%\s+([\d.]+)(us|ms|s)$", out, re.MULTILINE)
        assert m is not None, out
        result[f"p{pct}"] = float(m.group(1)) * _UNITS[m.group(2)]
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if errors:
        raise SystemExit(f"wrk got {errors.group(1)} non-2xx answers from {url}:\n{out}")
    return result


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main() -> None:
    if shutil.which("wrk") is None:
        raise SystemExit("wrk missing: apt-get install -y wrk")
    work = Path(tempfile.mkdtemp(prefix="keystile-gwbench-"))
    try:
        run(work)
    finally:
        stop_all()
        shutil.rmtree(work, ignore_errors=True)


def run(work: Path) -> None:
    as_port, up_port, gw_port = free_port(), free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("KEYSTILE_")}
    spawn(
        [str(KEYSTILE), "serve", "--port", str(as_port), "--db", "bench.db",
         "--log-level", "warning"],
        work, "as", env=env,
    )  # fmt: skip
    as_url = f"http://{LOOPBACK}:{as_port}"
    wait_http(f"{as_url}/healthz")
    secrets = dict(_SECRET.findall((work / "as.out").read_text()))
    spawn(
        [str(BIN / "uvicorn"), "gateway_upstream:app", "--app-dir", str(HERE), "--host",
         LOOPBACK, "--port", str(up_port), "--http", "httptools", "--loop", "uvloop",
         "--no-access-log", "--log-level", "warning"],
        work, "upstream", env=env,
    )  # fmt: skip
    up_url = f"http://{LOOPBACK}:{up_port}"
    wait_http(f"{up_url}/api/ping")
    (work / "gateway.toml").write_text(
        f"""
[gateway]
port = {gw_port}
log_level = "warning"

[authorization_server]
issuer = "{as_url}"
client_id = "demo-rs"
client_secret = "{secrets["demo-rs"]}"

[cache]
max_ttl = 3600

[[routes]]
path = "/api"
upstream = "{up_url}"
scopes = ["read"]
"""
    )
    gateway = spawn(
        [str(KEYSTILE), "gateway", "--config", "gateway.toml"], work, "gateway", env=env
    )
    gw_url = f"http://{LOOPBACK}:{gw_port}"
    wait_http(f"{gw_url}/healthz")
    r = httpx.post(
        f"{as_url}/oauth2/token",
        data={"grant_type": "client_credentials", "scope": "read", "expires_in": "3600"},
        auth=("demo-app", secrets["demo-app"]),
        trust_env=False,
    )
    token = r.json()["access_token"]
    auth = {"Authorization": f"Bearer {token}"}
    assert httpx.get(f"{gw_url}/api/ping", headers=auth, trust_env=False).status_code == 200
    targets = {
        "direct": (f"{up_url}/api/ping", {}),
        "gateway": (f"{gw_url}/api/ping", auth),
        "forward-auth": (f"{gw_url}/_keystile/auth", {**auth, "X-Original-URI": "/api/ping"}),
    }
    for url, headers in targets.values():  # warm-up, discarded
        wrk(url, CONNS, 2, headers)

    many: dict[str, list[dict[str, float]]] = {name: [] for name in targets}
    single: dict[str, list[dict[str, float]]] = {name: [] for name in targets}
    cpu: list[float] = []
    for n in range(ROUNDS):
        for name, (url, headers) in targets.items():
            before = cpu_seconds(gateway.pid)
            result = wrk(url, CONNS, DURATION, headers)
            if name == "gateway":
                cpu.append((cpu_seconds(gateway.pid) - before) / (result["rps"] * DURATION))
            many[name].append(result)
            single[name].append(wrk(url, 1, SINGLE_DURATION, headers))
        print(f"round {n + 1}/{ROUNDS} done", file=sys.stderr)
    report(many, single, cpu)


def med(runs: list[dict[str, float]], key: str) -> float:
    return statistics.median(r[key] for r in runs)


def report(
    many: dict[str, list[dict[str, float]]],
    single: dict[str, list[dict[str, float]]],
    cpu: list[float],
) -> None:
    lines = [
        f"Gateway benchmark, {time.strftime('%Y-%m-%d %H:%M')}, {os.cpu_count()} CPUs, "
        f"medians of {ROUNDS} rounds (wrk {DURATION} s at c={CONNS}, {SINGLE_DURATION} s at c=1)",
        "",
        f"| target | req/s c={CONNS} | p50 ms | p99 ms | p50 ms c=1 | p99 ms c=1 |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name in many:
        lines.append(
            f"| {name} | {med(many[name], 'rps'):,.0f} | {med(many[name], 'p50'):.2f} | "
            f"{med(many[name], 'p99'):.2f} | {med(single[name], 'p50'):.3f} | "
            f"{med(single[name], 'p99'):.3f} |"
        )
    ratio = med(many["gateway"], "rps") / med(many["direct"], "rps")
    added = med(many["gateway"], "p50") - med(many["direct"], "p50")
    added_single = med(single["gateway"], "p50") - med(single["direct"], "p50")
    lines += [
        "",
        f"- throughput ratio gateway/direct at c={CONNS}: **{ratio:.2f}**",
        f"- p50 added by the gateway: **{added_single:.3f} ms** at c=1, "
        f"**{added:.2f} ms** at c={CONNS} (target: <= 1 ms)",
        f"- forward-auth decisions: **{med(many['forward-auth'], 'rps'):,.0f}/s** at c={CONNS}",
        f"- gateway CPU per proxied request: **{statistics.median(cpu) * 1e3:.3f} ms**",
    ]
    text = "\n".join(lines)
    print(text)
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    (RESULTS_DIR / f"gateway-{time.strftime('%Y%m%dT%H%M%S')}.md").write_text(text + "\n")


if __name__ == "__main__":
    main()
