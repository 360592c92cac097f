"""What the answer-lease fence costs a revocation on PostgreSQL (decision 0007), side by side.

Two variants, each two real `keystile serve` processes (A and B) on a PostgreSQL schema of
their own: `--answer-lease 2` (the default: B answers repeated introspections from memory,
and A's revocation waits for B to forget) and `--answer-lease 0` (the baseline: no memory, no
wait). Rounds are interleaved; each round, per variant, N times: a token issued at A,
introspected twice at B and twice at A (the second answer from memory where there is one),
revoked at A (timed), then introspected at B, which must say inactive.

Prints per variant the median and p99 of the revocation's round trip, the fence's share, the
fast answers B gave, and any stale answer (there must be none), then the ratios.

Usage: .venv/bin/python bench/pg_fence.py [--rounds 3] [--n 200]
Env: PG_DSN (postgresql://root@127.0.0.1:5432/test): a schema keystile_fence_<pid>_<i> is
created there per variant and dropped at the end. Loopback only; stops what it started.
BASELINE_KEYSTILE: another build's `keystile` script (say, a worktree of main with its own
.venv): adds a third variant, `baseline-lease-2s`, run by that script in the same rounds, so
a change to the fence is compared with the code before it on the same machine at the same
time.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import asyncpg
import httpx

ROOT = Path(__file__).resolve().parent.parent
KEYSTILE = str(Path(sys.executable).parent / "keystile")
PG_DSN = os.environ.get("PG_DSN", "postgresql://root@127.0.0.1:5432/test")
RESOURCE = "https://api.bench.test"
LISTENING = re.compile(r"keystile listening on (http://127\.0\.0\.1:\d+)")


def sh(*args: str, env: dict[str, str], keystile: str = KEYSTILE) -> dict[str, str]:
    done = subprocess.run([keystile, *args], capture_output=True, text=True, env=env, check=True)
    return json.loads(done.stdout) if done.stdout.strip().startswith("{") else {}


class Variant:
    def __init__(
        self, name: str, lease: str, schema: str, work: Path, keystile: str = KEYSTILE
    ) -> None:
        self.name, self.lease, self.schema, self.keystile = name, lease, schema, keystile
        sep = "&" if "?" in PG_DSN else "?"
        self.db = f"{PG_DSN}{sep}search_path={schema}"
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("KEYSTILE_")}
        self.work = work
        self.procs: list[subprocess.Popen[bytes]] = []
        self.urls: list[str] = []
        self.revoke_ms: list[float] = []
        self.stale = 0

    def setup(self) -> None:
        sh("db", "upgrade", "--db", self.db, env=self.env, keystile=self.keystile)
        rs = sh("client", "create", "rs", "--grant-type", "none", "--json", "--db", self.db,
                env=self.env, keystile=self.keystile)  # fmt: skip
        sh("resource", "create", RESOURCE, "--client", "rs", "--db", self.db, env=self.env,
           keystile=self.keystile)  # fmt: skip
        app = sh("client", "create", "app", "--scope", "read", "--audience", RESOURCE,
                 "--json", "--db", self.db, env=self.env, keystile=self.keystile)  # fmt: skip
        self.rs = httpx.BasicAuth("rs", rs["client_secret"])
        self.app = httpx.BasicAuth("app", app["client_secret"])
        for i in range(2):
            log = open(self.work / f"{self.name}-{i}.log", "wb")  # noqa: SIM115
            proc = subprocess.Popen(
                [self.keystile, "serve", "--no-demo", "--port", "0", "--db", self.db,
                 "--log-level", "warning", "--answer-lease", self.lease],
                stdout=subprocess.PIPE, stderr=log, env=self.env, start_new_session=True,
            )  # fmt: skip
            self.procs.append(proc)
            assert proc.stdout is not None
            line = proc.stdout.readline().decode()
            match = LISTENING.search(line)
            assert match, line
            self.urls.append(match.group(1))
        self.a = httpx.Client(base_url=self.urls[0], trust_env=False)
        self.b = httpx.Client(base_url=self.urls[1], trust_env=False)

    def fast_answers(self, http: httpx.Client) -> float:
        text = http.get("/metrics").text
        found = re.search(r"^keystile_introspection_fast_answers_total (\S+)$", text, re.M)
        return float(found.group(1)) if found else 0.0

    def round(self, n: int) -> None:
        for _ in range(n):
            r = self.a.post("/oauth2/token", data={"grant_type": "client_credentials"},
                            auth=self.app)  # fmt: skip
            token = r.json()["access_token"]
            for http in (self.b, self.b, self.a, self.a):
                assert http.post("/oauth2/introspect", data={"token": token},
                                 auth=self.rs).json()["active"]  # fmt: skip
            started = time.perf_counter()
            r = self.a.post("/oauth2/revoke", data={"token": token}, auth=self.app)
            self.revoke_ms.append((time.perf_counter() - started) * 1000)
            assert r.status_code == 200
            if self.b.post("/oauth2/introspect", data={"token": token},
                           auth=self.rs).json()["active"]:  # fmt: skip
                self.stale += 1

    def stop(self) -> None:
        for proc in self.procs:
            os.killpg(proc.pid, signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)


def p99(values: list[float]) -> float:
    return statistics.quantiles(values, n=100)[98]


async def pg(sql: str) -> None:
    conn = await asyncpg.connect(PG_DSN)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--n", type=int, default=200)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="keystile-fence-"))
    variants = [
        Variant("lease-2s", "2", f"keystile_fence_{os.getpid()}_0", work),
        Variant("lease-0", "0", f"keystile_fence_{os.getpid()}_1", work),
    ]
    baseline = os.environ.get("BASELINE_KEYSTILE")
    if baseline:
        schema = f"keystile_fence_{os.getpid()}_2"
        variants.append(Variant("baseline-lease-2s", "2", schema, work, keystile=baseline))
    for v in variants:
        asyncio.run(pg(f"CREATE SCHEMA {v.schema}"))
    try:
        for v in variants:
            v.setup()
        fast_before = [v.fast_answers(v.b) for v in variants]
        for r in range(args.rounds):
            for v in variants if r % 2 == 0 else reversed(variants):
                v.round(args.n)
        print(f"# revocation round trip with a second AS process, {args.rounds} rounds x "
              f"{args.n} (interleaved), PostgreSQL at {PG_DSN.split('@')[-1]}")  # fmt: skip
        print("| variant | revocations | median ms | p99 ms | B's fast answers | stale answers |")
        print("|---|---:|---:|---:|---:|---:|")
        for v, before in zip(variants, fast_before, strict=True):
            print(f"| {v.name} | {len(v.revoke_ms)} | {statistics.median(v.revoke_ms):.2f} | "
                  f"{p99(v.revoke_ms):.2f} | {v.fast_answers(v.b) - before:.0f} | "
                  f"{v.stale} |")  # fmt: skip
        base = variants[1]
        print()
        for v in variants[:1] + variants[2:]:
            print(f"{v.name} / {base.name}: median ratio "
                  f"{statistics.median(v.revoke_ms) / statistics.median(base.revoke_ms):.2f}, "
                  f"p99 ratio {p99(v.revoke_ms) / p99(base.revoke_ms):.2f}")  # fmt: skip
        if baseline:
            lease, old = variants[0], variants[2]
            print(f"{lease.name} / {old.name}: median ratio "
                  f"{statistics.median(lease.revoke_ms) / statistics.median(old.revoke_ms):.2f}, "
                  f"p99 ratio {p99(lease.revoke_ms) / p99(old.revoke_ms):.2f}")  # fmt: skip
    finally:
        for v in variants:
            v.stop()
            asyncio.run(pg(f"DROP SCHEMA IF EXISTS {v.schema} CASCADE"))


if __name__ == "__main__":
    main()
