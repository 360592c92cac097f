"""SDK cache-hit validation rate, in process, on one core, beside a bare baseline.

What a resource server pays per request once a token is cached (ARCHITECTURE.md, "SDK cache
hit": hash the token, one dict lookup, an expiry compare, a scope check). Timed in the same
run, on the same token:

  baseline    sha256(token) + a plain dict lookup: the floor for "hash, then look up"
  cached      validator.cached(token): the sync cache probe
  validate    await validator.validate(token), then validator.require(principal, scopes)
  middleware  one request through BearerAuthMiddleware to a no-op ASGI app (informational)

Each figure is the median of REPEATS runs of N operations (ns/op), and ops/s on one core.
Targets (issue 6): validate+scope <= 2 us per check, >= 500k checks/s. No I/O happens: the
validator points at a closed port and its cache is filled directly, so a miss would fail.

    .venv/bin/python bench/sdk_cache_hit.py [--n 200000] [--repeats 9] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import hashlib
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

from keystile.resource import Principal, TokenValidator
from keystile.resource.cache import cache_key
from keystile.resource.middleware import BearerAuthMiddleware

TOKEN = "ks_at_" + "A" * 43 + "abcdef"  # the shape of a keystile access token (55 chars)
SCOPES = frozenset({"orders:read"})
TARGET_NS = 2000.0
BASELINE = "baseline: sha256 + dict.get"
VALIDATE = "await validate(token) + require(scopes)"
TARGET_OPS = 500_000


def principal() -> Principal:
    return Principal(
        sub="alice",
        client_id="app-1",
        username=None,
        scopes=frozenset({"orders:read", "orders:write"}),
        aud=("https://api.example.test",),
        exp=int(time.time()) + 3600,
        jti="j1",
    )


Elapsed = tuple[float, float]  # (wall seconds, this thread's CPU seconds)


def stamp() -> Elapsed:
    return time.perf_counter(), time.thread_time()


def since(start: Elapsed) -> Elapsed:
    wall, cpu = stamp()
    return wall - start[0], cpu - start[1]


def ns_per_op(run: Callable[[int], Elapsed], n: int) -> Elapsed:
    """One timed run of ``n`` operations, GC off while timing (as timeit does)."""
    gc.disable()
    try:
        wall, cpu = run(n)
    finally:
        gc.enable()
    return wall * 1e9 / n, cpu * 1e9 / n


def bench_baseline(n: int) -> Elapsed:
    table = {hashlib.sha256(TOKEN.encode()).digest(): principal()}
    sha256, token = hashlib.sha256, TOKEN
    start = stamp()
    for _ in range(n):
        table.get(sha256(token.encode()).digest())
    return since(start)


def make_validator() -> TokenValidator:
    v = TokenValidator(
        client_id="rs",
        client_secret="unused",
        introspection_endpoint="http://127.0.0.1:9/unreachable",
        events=False,
        max_ttl=3600,
    )
    v.cache.put(cache_key(TOKEN), principal())
    return v


def bench_cached(v: TokenValidator) -> Callable[[int], Elapsed]:
    def run(n: int) -> Elapsed:
        cached, token = v.cached, TOKEN
        start = stamp()
        for _ in range(n):
            cached(token)
        return since(start)

    return run


def bench_validate(v: TokenValidator, loop: asyncio.AbstractEventLoop) -> Callable[[int], Elapsed]:
    async def many(n: int) -> Elapsed:
        validate, require, token, scopes = v.validate, v.require, TOKEN, SCOPES
        start = stamp()
        for _ in range(n):
            require(await validate(token), scopes)
        return since(start)

    return lambda n: loop.run_until_complete(many(n))


def bench_middleware(
    v: TokenValidator, loop: asyncio.AbstractEventLoop
) -> Callable[[int], Elapsed]:
    async def ok(scope: Any, receive: Any, send: Any) -> None:
        return None

    app = BearerAuthMiddleware(ok, v, scopes=SCOPES)
    headers = [(b"host", b"api.test"), (b"authorization", f"Bearer {TOKEN}".encode())]

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Any) -> None:
        raise AssertionError(f"the middleware answered instead of passing: {message}")

    async def many(n: int) -> Elapsed:
        start = stamp()
        for _ in range(n):
            scope = {"type": "http", "path": "/orders", "headers": headers}
            await app(scope, receive, send)
        return since(start)

    return lambda n: loop.run_until_complete(many(n))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=200_000, help="operations per repeat")
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--json", action="store_true", help="print one JSON object instead")
    args = parser.parse_args()

    loop = asyncio.new_event_loop()
    v = make_validator()
    assert isinstance(v.cached(TOKEN), Principal)
    cases: dict[str, Callable[[int], Elapsed]] = {
        BASELINE: bench_baseline,
        "validator.cached(token)": bench_cached(v),
        VALIDATE: bench_validate(v, loop),
        "BearerAuthMiddleware request (no-op app)": bench_middleware(v, loop),
    }
    for run in cases.values():  # warm up (and fail early if anything would do I/O)
        run(min(args.n, 10_000))
    hits_before = v.cache.hits
    # Interleave the cases round by round, so a burst of load on a shared machine hits all.
    walls: dict[str, list[float]] = {name: [] for name in cases}
    cpus: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(args.repeats):
        for name, run in cases.items():
            wall, cpu = ns_per_op(run, args.n)
            walls[name].append(wall)
            cpus[name].append(cpu)
    assert v.cache.misses == 0, "a cache miss happened: the figures would include I/O"
    assert v.cache.hits > hits_before
    loop.run_until_complete(v.close())
    loop.close()

    cpu_med = {name: statistics.median(values) for name, values in cpus.items()}
    wall_med = {name: statistics.median(values) for name, values in walls.items()}
    base = cpu_med[BASELINE]
    check = cpu_med[VALIDATE]
    ok = check <= TARGET_NS and 1e9 / check >= TARGET_OPS
    if args.json:
        out: dict[str, Any] = {
            name: {
                "cpu_ns_op": cpu_med[name],
                "wall_ns_op": wall_med[name],
                "cpu_ns_op_min": min(cpus[name]),
                "ops_s": 1e9 / cpu_med[name],
                "x_baseline": cpu_med[name] / base,
            }
            for name in cases
        }
        out["_meta"] = {"n": args.n, "repeats": args.repeats, "loadavg": os.getloadavg()}
        out["_target_met"] = ok
        print(json.dumps(out, indent=2))
        sys.exit(0 if ok else 1)
    print(
        f"python {platform.python_version()} on {platform.machine()}, "
        f"n={args.n} x {args.repeats} repeats (interleaved), loadavg "
        + " ".join(f"{x:.2f}" for x in os.getloadavg())
    )
    print("ns/op: this thread's CPU time (median, min) and wall time (median); ops/s from CPU")
    print(
        f"{'case':42} {'cpu ns':>7} {'min':>6} {'wall ns':>8} {'ops/s (1 core)':>15}"
        f" {'x baseline':>10}"
    )
    for name in cases:
        print(
            f"{name:42} {cpu_med[name]:7.0f} {min(cpus[name]):6.0f} {wall_med[name]:8.0f}"
            f" {1e9 / cpu_med[name]:15,.0f} {cpu_med[name] / base:10.2f}"
        )
    print(
        f"target: validate+scope <= {TARGET_NS:.0f} ns and >= {TARGET_OPS:,}/s (CPU time): "
        + ("met" if ok else "NOT met")
    )
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
