"""Revoked-to-blocked latency across processes, with caching on: events vs TTL alone.

Three processes on loopback: a real ``keystile serve`` (temporary directory, ``--no-demo``,
clients made with the CLI's ``--json``), a protected app (Starlette + BearerAuthMiddleware +
TokenValidator under uvicorn, started by this script with ``app``), and this script as the
client. For each sample: issue a token, make the app cache it (one 200), then revoke it on the
AS while polling the app as fast as one keep-alive connection allows; the sample is the time
from sending the revocation to receiving the app's first 401.

Two modes run in the same invocation, each with its own app process:

  events   the app follows the AS's revocation stream (max_ttl 60 s): eviction is pushed
  ttl      the baseline: no stream, the cache entry simply lives max_ttl (default 1 s)
  gateway  with --gateway-samples N: the same polling through `keystile gateway` (events on,
           max_ttl 60 s, its fast path on) in front of a trivial upstream
           (bench/gateway_upstream.py), in place of the app

Prints min/p50/p90/p99/max per mode (target: events p99 <= 50 ms on loopback, through the
gateway too).

    .venv/bin/python bench/revoked_to_blocked.py [--samples 200] [--baseline-samples 200]
        [--gateway-samples 0] [--ttl 1.0] [--keystile .venv/bin/keystile] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

HERE = Path(__file__).resolve().parent
LOOPBACK = "127.0.0.1"
AUDIENCE = "https://api.bench.test"
TARGET_P99_MS = 50.0


# -- the protected app (runs in its own process: `revoked_to_blocked.py app ...`) -------------


def run_app(args: argparse.Namespace) -> None:
    import uvicorn
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import PlainTextResponse, Response
    from starlette.routing import Route

    from keystile.resource import TokenValidator
    from keystile.resource.middleware import BearerAuthMiddleware

    validator = TokenValidator(
        issuer=args.issuer,
        client_id=args.client_id,
        client_secret=os.environ["BENCH_RS_SECRET"],
        events=args.events,
        max_ttl=args.max_ttl,
        audience=AUDIENCE,
    )

    async def protected(request: Request) -> Response:
        return PlainTextResponse("ok")

    async def ready(request: Request) -> Response:
        stream = validator.stream
        live = not args.events or (stream is not None and stream.connected.is_set())
        return PlainTextResponse("ready" if live else "waiting", status_code=200 if live else 503)

    async def lifespan(app: Starlette) -> Any:
        await validator.start()
        yield
        await validator.close()

    inner = Starlette(
        routes=[Route("/protected", protected), Route("/ready", ready)], lifespan=lifespan
    )
    app = BearerAuthMiddleware(inner, validator, scopes={"read"}, exempt_paths={"/ready"})
    uvicorn.run(
        app,
        host=LOOPBACK,
        port=args.port,
        log_level="warning",
        access_log=False,
        loop="uvloop",
        http="httptools",
        lifespan="on",
    )


# -- processes ---------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((LOOPBACK, 0))
        return int(s.getsockname()[1])


@contextmanager
def process(argv: list[str], log: Path, env: dict[str, str] | None = None) -> Iterator[None]:
    """Run argv in its own process group; stop that group (and only it) on exit."""
    with log.open("wb") as out:
        proc = subprocess.Popen(
            argv,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            start_new_session=True,
        )
    try:
        yield
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


def wait_ready(url: str, log: Path, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    with httpx.Client(trust_env=False, timeout=1.0) as c:
        while time.monotonic() < deadline:
            try:
                if c.get(url).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.05)
    sys.exit(f"{url} did not become ready within {timeout} s; log:\n{log.read_text()[-3000:]}")


GATEWAY_TOML = """
[gateway]
port = {port}
log_level = "warning"

[authorization_server]
issuer = "{issuer}"
client_id = "{client_id}"
events = true

[cache]
max_ttl = 60

[[routes]]
path = "/protected"
upstream = "{upstream}"
scopes = ["read"]
audience = "{audience}"
"""


def wait_connected(url: str, log: Path, timeout: float = 30.0) -> None:
    """Until the gateway's /healthz reports its revocation event stream live."""
    deadline = time.monotonic() + timeout
    with httpx.Client(trust_env=False, timeout=1.0) as c:
        while time.monotonic() < deadline:
            try:
                if c.get(url).json().get("event_stream") == "connected":
                    return
            except (httpx.TransportError, ValueError):
                pass
            time.sleep(0.05)
    sys.exit(f"{url} did not connect its event stream within {timeout} s:\n{log.read_text()}")


def cli_json(keystile: str, db: Path, *args: str) -> dict[str, Any]:
    done = subprocess.run(
        [keystile, *args, "--db", str(db), "--json"],
        capture_output=True,
        text=True,
        check=False,
        stdin=subprocess.DEVNULL,
        timeout=60,
    )
    if done.returncode != 0:
        sys.exit(f"keystile {' '.join(args)} failed:\n{done.stderr}")
    value = json.loads(done.stdout)
    assert isinstance(value, dict)
    return value


# -- measuring ---------------------------------------------------------------------------------


async def one_sample(
    as_http: httpx.AsyncClient, app_http: httpx.AsyncClient, app_auth: tuple[str, str]
) -> tuple[float, float, int]:
    """Seconds from sending the revocation to the first 401 (and from its 200), and polls."""
    r = await as_http.post(
        "/oauth2/token",
        data={"grant_type": "client_credentials", "scope": "read"},
        auth=app_auth,
    )
    r.raise_for_status()
    token = r.json()["access_token"]
    headers = {"authorization": f"Bearer {token}"}
    first = await app_http.get("/protected", headers=headers)
    if first.status_code != 200:
        raise RuntimeError(f"the app refused a fresh token: {first.status_code} {first.text}")
    answered: list[float] = []

    async def revoke() -> None:
        rv = await as_http.post("/oauth2/revoke", data={"token": token}, auth=app_auth)
        rv.raise_for_status()
        answered.append(time.perf_counter())

    started = time.perf_counter()
    revocation = asyncio.create_task(revoke())
    polls = 0
    while True:
        polls += 1
        r = await app_http.get("/protected", headers=headers)
        if r.status_code == 401:
            blocked = time.perf_counter()
            break
        if r.status_code != 200:
            raise RuntimeError(f"the app answered {r.status_code}: {r.text}")
    await revocation
    return blocked - started, blocked - answered[0], polls


def percentile(sorted_values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of sorted values."""
    rank = max(1, math.ceil(q / 100 * len(sorted_values)))
    return sorted_values[rank - 1]


def summary(values: list[float]) -> dict[str, float]:
    ms = sorted(v * 1000 for v in values)
    return {
        "n": len(ms),
        "min": ms[0],
        "p50": percentile(ms, 50),
        "p90": percentile(ms, 90),
        "p99": percentile(ms, 99),
        "max": ms[-1],
        "mean": statistics.fmean(ms),
    }


async def measure(
    as_url: str, app_url: str, app_auth: tuple[str, str], samples: int
) -> dict[str, Any]:
    limits = httpx.Limits(max_connections=4, max_keepalive_connections=4)
    async with (
        httpx.AsyncClient(base_url=as_url, trust_env=False, limits=limits) as as_http,
        httpx.AsyncClient(base_url=app_url, trust_env=False, limits=limits) as app_http,
    ):
        for _ in range(3):  # warm up connections and code paths; not recorded
            await one_sample(as_http, app_http, app_auth)
        from_sent, from_answered, polls = [], [], []
        for _ in range(samples):
            a, b, n = await one_sample(as_http, app_http, app_auth)
            from_sent.append(a)
            from_answered.append(b)
            polls.append(n)
    return {
        "from_revoke_sent_ms": summary(from_sent),
        "from_revoke_200_ms": summary(from_answered),
        "polls_median": statistics.median(polls),
    }


def run_bench(args: argparse.Namespace) -> None:
    keystile = args.keystile
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="keystile-bench-") as tmp:
        work = Path(tmp)
        db = work / "keystile.db"
        app = cli_json(
            keystile, db, "client", "create", "bench-app", "--scope", "read",
            "--audience", AUDIENCE,
        )  # fmt: skip
        rs = cli_json(keystile, db, "client", "create", "bench-rs")
        cli_json(keystile, db, "resource", "create", AUDIENCE, "--client", "bench-rs")
        app_auth = (app["client_id"], app["client_secret"])
        as_port = free_port()
        as_url = f"http://{LOOPBACK}:{as_port}"
        serve = [keystile, "serve", "--db", str(db), "--port", str(as_port), "--no-demo"]
        serve += ["--log-level", "warning"]
        with process(serve, work / "serve.log"):
            wait_ready(f"{as_url}/healthz", work / "serve.log")
            modes = [("events", True, 60.0, args.samples)]
            modes.append(("ttl", False, args.ttl, args.baseline_samples))
            if args.gateway_samples > 0:
                results["gateway"] = through_gateway(args, work, as_url, rs, app_auth)
            for name, events, max_ttl, samples in modes:
                if samples <= 0:
                    continue
                app_port = free_port()
                app_url = f"http://{LOOPBACK}:{app_port}"
                argv = [sys.executable, str(Path(__file__).resolve()), "app"]
                argv += ["--issuer", as_url, "--client-id", rs["client_id"]]
                argv += ["--port", str(app_port), "--max-ttl", str(max_ttl)]
                argv += ["--events"] if events else ["--no-events"]
                env = {**os.environ, "BENCH_RS_SECRET": rs["client_secret"]}
                log = work / f"app-{name}.log"
                with process(argv, log, env=env):
                    wait_ready(f"{app_url}/ready", log)
                    started = time.monotonic()
                    result = asyncio.run(measure(as_url, app_url, app_auth, samples))
                    result["seconds"] = time.monotonic() - started
                    result["max_ttl"] = max_ttl
                    results[name] = result
    results["_meta"] = {"loadavg": os.getloadavg(), "cpus": os.cpu_count()}
    report(args, results)


def through_gateway(
    args: argparse.Namespace,
    work: Path,
    as_url: str,
    rs: dict[str, Any],
    app_auth: tuple[str, str],
) -> dict[str, Any]:
    """The ``gateway`` mode: a trivial upstream and `keystile gateway` in front of it."""
    bin_dir = Path(sys.executable).parent
    up_port, gw_port = free_port(), free_port()
    upstream = [str(bin_dir / "uvicorn"), "gateway_upstream:app", "--app-dir", str(HERE)]
    upstream += ["--host", LOOPBACK, "--port", str(up_port), "--http", "httptools"]
    upstream += ["--loop", "uvloop", "--no-access-log", "--log-level", "warning"]
    config = work / "gateway.toml"
    config.write_text(
        GATEWAY_TOML.format(
            port=gw_port,
            issuer=as_url,
            client_id=rs["client_id"],
            upstream=f"http://{LOOPBACK}:{up_port}",
            audience=AUDIENCE,
        )
    )
    env = {**os.environ, "KEYSTILE_GATEWAY_CLIENT_SECRET": rs["client_secret"]}
    gateway = [args.keystile, "gateway", "--config", str(config)]
    with (
        process(upstream, work / "upstream.log"),
        process(gateway, work / "gateway.log", env=env),
    ):
        gw_url = f"http://{LOOPBACK}:{gw_port}"
        wait_connected(f"{gw_url}/healthz", work / "gateway.log")
        started = time.monotonic()
        result = asyncio.run(measure(as_url, gw_url, app_auth, args.gateway_samples))
        result["seconds"] = time.monotonic() - started
        result["max_ttl"] = 60.0
        with httpx.Client(trust_env=False) as c:
            metrics = c.get(f"{gw_url}/metrics").text
        fast = [
            line.rpartition(" ")[2]
            for line in metrics.splitlines()
            if line.startswith('keystile_gateway_fast_answers_total{mode="proxy"}')
        ]
        result["fast_answers"] = float(fast[0]) if fast else 0.0
    return result


def report(args: argparse.Namespace, results: dict[str, Any]) -> None:
    if args.json:
        print(json.dumps(results, indent=2))
        return
    print(f"loopback, {os.cpu_count()} CPUs, loadavg after: " + " ".join(
        f"{x:.2f}" for x in os.getloadavg()
    ))  # fmt: skip
    head = f"{'mode':8} {'from':12} {'n':>4} {'min':>8} {'p50':>8} {'p90':>8} {'p99':>8} {'max':>8}"
    print(head + "  (ms)")
    for name in ("events", "ttl", "gateway"):
        if name not in results:
            continue
        r = results[name]
        for label, key in (
            ("revoke sent", "from_revoke_sent_ms"),
            ("revoke 200", "from_revoke_200_ms"),
        ):
            s = r[key]
            print(
                f"{name:8} {label:12} {s['n']:>4} {s['min']:8.2f} {s['p50']:8.2f}"
                f" {s['p90']:8.2f} {s['p99']:8.2f} {s['max']:8.2f}"
            )
        print(f"{'':8} max_ttl {r['max_ttl']} s, median polls per sample {r['polls_median']}")
        if "fast_answers" in r:
            print(f"{'':8} requests answered by the gateway's fast path: {r['fast_answers']:.0f}")
    for name in ("events", "gateway"):
        if name in results:
            p99 = results[name]["from_revoke_sent_ms"]["p99"]
            verdict = "met" if p99 <= TARGET_P99_MS else "NOT met"
            print(f"target: {name} p99 <= {TARGET_P99_MS:.0f} ms (from revoke sent): {verdict}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command")
    app = sub.add_parser("app", help="(internal) run the protected app")
    app.add_argument("--issuer", required=True)
    app.add_argument("--client-id", required=True)
    app.add_argument("--port", type=int, required=True)
    app.add_argument("--max-ttl", type=float, default=60.0)
    app.add_argument("--events", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--samples", type=int, default=200, help="samples with events on")
    parser.add_argument("--baseline-samples", type=int, default=200, help="samples, TTL only")
    parser.add_argument("--ttl", type=float, default=1.0, help="max_ttl of the TTL baseline")
    parser.add_argument(
        "--gateway-samples", type=int, default=0, help="samples through keystile gateway"
    )
    parser.add_argument(
        "--keystile", default=str(Path(sys.executable).parent / "keystile"), help="the CLI"
    )
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if args.command == "app":
        run_app(args)
    else:
        run_bench(args)


if __name__ == "__main__":
    main()
