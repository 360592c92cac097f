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
connection (the added latency of a single request, free of queueing). With ``BASELINE=REF``
(a git ref, e.g. ``main``) a second gateway runs the code of that ref (``git archive`` of its
``src/`` into the temporary folder, same venv, same configuration) and is measured in the same
rounds as ``gateway-base`` and ``forward-auth-base``, so before and after share one run.

Medians over the rounds are printed as a Markdown table, with each target's ratio to
``direct`` in the same round (median over rounds), the p50 latency the gateway adds, each
gateway's CPU time per request (from /proc), and the CPU everything else on the machine used
during the runs ("other CPU": /proc/stat busy time minus this script's processes and wrk, in
% of one core; on a shared machine, trust ratios only when it is low). Only the processes this
script started are stopped, by their own process-group ids.

Env knobs: ROUNDS (3), DURATION (10, seconds per wrk run), CONNS (32), THREADS (2),
SINGLE_DURATION (5; 0 skips the one-connection runs), BASELINE (none), GATEWAY_ARGS (extra
`keystile gateway` args for the gateway under test), RESULTS_DIR (bench/results; the table
goes to gateway-RUNID.md).
"""

from __future__ import annotations

import io
import os
import re
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tarfile
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
BASELINE = os.environ.get("BASELINE", "")
GATEWAY_ARGS = os.environ.get("GATEWAY_ARGS", "").split()
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


def busy_seconds() -> float:
    """CPU time the whole machine spent busy (all cores), from /proc/stat."""
    fields = [int(f) for f in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def ours() -> float:
    """CPU seconds used so far by the processes this script started (their groups' leaders)."""
    total = 0.0
    for proc in started:
        if proc.poll() is None:
            total += cpu_seconds(proc.pid)
    return total


def wrk(url: str, conns: int, seconds: int, headers: dict[str, str]) -> dict[str, float]:
    argv = ["wrk", f"-t{min(THREADS, conns)}", f"-c{conns}", f"-d{seconds}s", "--latency"]
    for name, value in headers.items():
        argv += ["-H", f"{name}: {value}"]
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    busy, mine, wall = busy_seconds(), ours(), time.monotonic()
    out = subprocess.run([*argv, url], capture_output=True, text=True, check=True).stdout
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    wrk_cpu = (after.ru_utime - children.ru_utime) + (after.ru_stime - children.ru_stime)
    elapsed = time.monotonic() - wall
    other = (busy_seconds() - busy) - (ours() - mine) - wrk_cpu
    result = {"rps": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))}  # type: ignore[union-attr]
    result["other"] = max(0.0, other) / elapsed * 100  # % of one core
    for pct in ("50", "99"):
        m = re.search(rf"^\s+{pct}%\s+([\d.]+)(us|ms|s)$", out, re.MULTILINE)
        assert m is not None, out
        result[f"p{pct}"] = float(m.group(1)) * _UNITS[m.group(2)]
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if errors:
        raise SystemExit(f"wrk got {errors.group(1)} non-2xx answers from {url}:\n{out}")
    return result


def cpu_seconds(pid: int) -> float:
    """CPU seconds of the process group ``pid`` leads (a gateway with --workers is several
    processes), those alive now."""
    total = 0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pid:  # pgrp: every process started here leads its own group
            total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


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
        [str(KEYSTILE), "gateway", "--config", "gateway.toml", *GATEWAY_ARGS],
        work,
        "gateway",
        env=env,
    )
    gw_url = f"http://{LOOPBACK}:{gw_port}"
    wait_http(f"{gw_url}/healthz")
    gateways = {"gateway": gateway}
    base_url = ""
    if BASELINE:
        base_port = free_port()
        toml = (work / "gateway.toml").read_text()
        (work / "gateway-base.toml").write_text(
            toml.replace(f"port = {gw_port}", f"port = {base_port}")
        )
        src = checkout(BASELINE, work / "baseline")
        gateways["gateway-base"] = spawn(
            [sys.executable, "-m", "keystile", "gateway", "--config", "gateway-base.toml"],
            work,
            "gateway-base",
            env={**env, "PYTHONPATH": str(src), "PYTHONDONTWRITEBYTECODE": "1"},
        )
        base_url = f"http://{LOOPBACK}:{base_port}"
        wait_http(f"{base_url}/healthz")
    r = httpx.post(
        f"{as_url}/oauth2/token",
        data={"grant_type": "client_credentials", "scope": "read", "expires_in": "3600"},
        auth=("demo-app", secrets["demo-app"]),
        trust_env=False,
    )
    token = r.json()["access_token"]
    auth = {"Authorization": f"Bearer {token}"}
    fa = {**auth, "X-Original-URI": "/api/ping"}
    targets = {
        "direct": (f"{up_url}/api/ping", {}, None),
        "gateway": (f"{gw_url}/api/ping", auth, "gateway"),
        "forward-auth": (f"{gw_url}/_keystile/auth", fa, "gateway"),
    }
    if base_url:
        targets["gateway-base"] = (f"{base_url}/api/ping", auth, "gateway-base")
        targets["forward-auth-base"] = (f"{base_url}/_keystile/auth", fa, "gateway-base")
    for url, headers, _ in targets.values():
        assert httpx.get(url, headers=headers, trust_env=False).status_code == 200, url
    for url, headers, _ in targets.values():  # warm-up, discarded
        wrk(url, CONNS, 2, headers)

    many: dict[str, list[dict[str, float]]] = {name: [] for name in targets}
    single: dict[str, list[dict[str, float]]] = {name: [] for name in targets}
    cpu: dict[str, list[float]] = {name: [] for name in targets}
    for n in range(ROUNDS):
        for name, (url, headers, proc) in targets.items():
            pid = gateways[proc].pid if proc else None
            before = cpu_seconds(pid) if pid else 0.0
            result = wrk(url, CONNS, DURATION, headers)
            if pid:
                cpu[name].append((cpu_seconds(pid) - before) / (result["rps"] * DURATION))
            many[name].append(result)
            if SINGLE_DURATION:
                single[name].append(wrk(url, 1, SINGLE_DURATION, headers))
        print(f"round {n + 1}/{ROUNDS} done", file=sys.stderr)
    report(many, single, cpu)


def checkout(ref: str, folder: Path) -> Path:
    """``src/`` of a git ref, extracted into ``folder``; returns the path to put on PYTHONPATH."""
    data = subprocess.run(
        ["git", "-C", str(ROOT), "archive", "--format=tar", ref, "src"],
        capture_output=True,
        check=True,
    ).stdout
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        tar.extractall(folder, filter="data")
    return folder / "src"


def med(runs: list[dict[str, float]], key: str) -> float:
    return statistics.median(r[key] for r in runs) if runs else float("nan")


def ratio(many: dict[str, list[dict[str, float]]], name: str) -> float:
    """Median over rounds of name's req/s / direct's req/s in the same round."""
    return statistics.median(
        r["rps"] / d["rps"] for r, d in zip(many[name], many["direct"], strict=True)
    )


def commit() -> str:
    out = subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True
    )
    dirty = subprocess.run(["git", "-C", str(ROOT), "diff", "--quiet", "HEAD", "--", "src"])
    return out.stdout.strip() + ("+dirty" if dirty.returncode else "")


def report(
    many: dict[str, list[dict[str, float]]],
    single: dict[str, list[dict[str, float]]],
    cpu: dict[str, list[float]],
) -> None:
    run_id = f"{time.strftime('%Y%m%dT%H%M%S')}-{os.getpid()}"
    base = f", baseline {BASELINE}" if BASELINE else ""
    lines = [
        f"Gateway benchmark, run {run_id}, code {commit()}{base}, {os.cpu_count()} CPUs, "
        f"medians of {ROUNDS} rounds (wrk {DURATION} s at c={CONNS}, {SINGLE_DURATION} s at c=1)",
        "",
        f"| target | req/s c={CONNS} | ratio to direct | p50 ms | p99 ms | p50 ms c=1 | "
        "p99 ms c=1 | CPU us/req | other CPU % (max) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name in many:
        us = f"{statistics.median(cpu[name]) * 1e6:.0f}" if cpu[name] else ""
        lines.append(
            f"| {name} | {med(many[name], 'rps'):,.0f} | {ratio(many, name):.2f} | "
            f"{med(many[name], 'p50'):.2f} | {med(many[name], 'p99'):.2f} | "
            f"{med(single[name], 'p50'):.3f} | {med(single[name], 'p99'):.3f} | {us} | "
            f"{med(many[name], 'other'):.0f} ({max(r['other'] for r in many[name]):.0f}) |"
        )
    added_single = med(single["gateway"], "p50") - med(single["direct"], "p50")
    lines += [
        "",
        f"- throughput ratio gateway/direct at c={CONNS}: **{ratio(many, 'gateway'):.2f}**"
        " (goal >= 0.45), p99 "
        f"**{med(many['gateway'], 'p99'):.2f} ms** (goal <= 8 ms)",
        f"- forward-auth/direct (the trivial app): **{ratio(many, 'forward-auth'):.2f}**"
        " (goal >= 0.6)",
        f"- p50 added by the gateway at c=1: **{added_single:.3f} ms**",
    ]
    if BASELINE:
        lines.append(
            f"- baseline ({BASELINE}): gateway/direct **{ratio(many, 'gateway-base'):.2f}**, "
            f"forward-auth/direct **{ratio(many, 'forward-auth-base'):.2f}**"
        )
    text = "\n".join(lines)
    print(text)
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    (RESULTS_DIR / f"gateway-{run_id}.md").write_text(text + "\n")


if __name__ == "__main__":
    main()
