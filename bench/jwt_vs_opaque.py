"""JWT vs opaque access tokens, side by side: issuing, introspecting, validating locally.

Runs the real app in-process over a real SQLite file (synchronous=FULL, as served) and
drives its raw ASGI handlers directly, so the figures are the server's own cost per request
without an HTTP client or network in the way (the method of docs/decisions/0002). Cases
are interleaved round by round; each figure is the median over rounds of the mean time per
operation, and every JWT case is also given as a ratio to its opaque counterpart.

    .venv/bin/python bench/jwt_vs_opaque.py [--rounds 5] [--n 2000] [--issue-n 300]

Cases:
  issue opaque / issue JWT ES256 / issue JWT RS256      POST /oauth2/token
  introspect opaque                                     POST /oauth2/introspect (JSON)
  introspect JWT, first sight                           each JWT introspected once: verify
  introspect JWT, seen before                           the same JWT again: verified digest
  introspect opaque, RFC 9701 answer                    Accept: application/token-introspection+jwt
  validate JWT locally (resource server)                keystile.resource JWTValidator, no I/O
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from keystile import admin, key_admin
from keystile.clock import SystemClock
from keystile.server.app import KeystileApp, create_app
from keystile.settings import ServerSettings
from keystile.store.sqlite import SQLiteStore

ISSUER = "https://as.bench.test"
API = "https://api.bench.test"
API_SIGNED = "https://signed-api.bench.test"


class Driver:
    """Calls the app's ASGI interface directly: one request, the status and body back."""

    def __init__(self, app: KeystileApp) -> None:
        self.app = app

    async def post(
        self, path: str, form: dict[str, str], auth: tuple[str, str], accept: str | None = None
    ) -> tuple[int, bytes]:
        body = urlencode(form).encode()
        basic = base64.b64encode(f"{auth[0]}:{auth[1]}".encode())
        headers = [
            (b"content-type", b"application/x-www-form-urlencoded"),
            (b"content-length", str(len(body)).encode()),
            (b"authorization", b"Basic " + basic),
        ]
        if accept is not None:
            headers.append((b"accept", accept.encode()))
        scope = {
            "type": "http",
            "method": "POST",
            "path": path,
            "headers": headers,
            "client": ("127.0.0.1", 50000),
        }
        sent = False
        status = 0
        chunks: list[bytes] = []

        async def receive() -> dict[str, Any]:
            nonlocal sent
            if sent:
                return {"type": "http.disconnect"}
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}

        async def send(message: dict[str, Any]) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            else:
                chunks.append(message.get("body", b""))

        await self.app(scope, receive, send)
        return status, b"".join(chunks)


async def timed(n: int, op: Callable[[int], Awaitable[None]]) -> tuple[float, float]:
    """Mean wall and CPU seconds per call of ``op(i)`` over ``n`` calls. CPU time counts
    every thread of the process (the SQLite writer too) but not waiting for an fsync."""
    started, cpu = time.perf_counter(), time.process_time()
    for i in range(n):
        await op(i)
    return (time.perf_counter() - started) / n, (time.process_time() - cpu) / n


async def main(args: argparse.Namespace) -> None:
    folder = Path(tempfile.mkdtemp(prefix="keystile-bench-jwt-"))
    db = folder / "bench.db"
    kek = base64.b64encode(os.urandom(32)).decode()  # a throwaway key-encryption key
    settings = ServerSettings(
        db=str(db), issuer=ISSUER, purge_interval=0, access_log=False, key_encryption_key=kek
    )
    store = SQLiteStore(db)
    await store.open()
    clock = SystemClock()
    app = create_app(settings, store=store, clock=clock)
    http = Driver(app)
    audience = [API, API_SIGNED]
    _, opaque_secret = await admin.create_client(
        store, clock, client_id="opaque", scopes=["read"], default_audience=audience
    )
    _, jwt_secret = await admin.create_client(
        store,
        clock,
        client_id="jwt",
        scopes=["read"],
        default_audience=audience,
        token_format="jwt",
    )
    _, rs_secret = await admin.create_client(store, clock, client_id="rs", grant_types=[])
    _, signed_secret = await admin.create_client(store, clock, client_id="rs9701", grant_types=[])
    await admin.create_resource_server(store, clock, identifier=API, introspection_clients=["rs"])
    await admin.create_resource_server(
        store,
        clock,
        identifier=API_SIGNED,
        introspection_clients=["rs9701"],
        introspection_response="jwt",
    )
    opaque, jwt_client = ("opaque", opaque_secret), ("jwt", jwt_secret)
    rs, rs9701 = ("rs", rs_secret), ("rs9701", signed_secret)
    cc = {"grant_type": "client_credentials"}

    async def issue(creds: tuple[str, str]) -> str:
        status, body = await http.post("/oauth2/token", cc, creds)
        assert status == 200, body
        return str(json.loads(body)["access_token"])

    async def introspect(creds: tuple[str, str], token: str, accept: str | None = None) -> bytes:
        status, body = await http.post("/oauth2/introspect", {"token": token}, creds, accept)
        assert status == 200, body
        return body

    one_opaque = await issue(opaque)
    one_jwt = await issue(jwt_client)
    assert json.loads(await introspect(rs, one_jwt))["active"] is True
    assert (await introspect(rs9701, one_opaque, "application/token-introspection+jwt"))[:3] == (
        b"eyJ"
    )
    validator = await local_validator(http, one_jwt)

    n, issue_n = args.n, args.issue_n
    fresh: list[str] = []

    async def c_issue_opaque(i: int) -> None:
        await issue(opaque)

    async def c_issue_jwt(i: int) -> None:
        fresh.append(await issue(jwt_client))

    async def c_intro_opaque(i: int) -> None:
        await introspect(rs, one_opaque)

    async def c_intro_jwt_first(i: int) -> None:
        if i == 0:
            # As in a process that did not issue them: the issuer remembers what it signed.
            app.endpoints.signing.ring.verified.clear()
        await introspect(rs, fresh[i])

    async def c_intro_jwt_again(i: int) -> None:
        await introspect(rs, one_jwt)

    async def c_intro_9701(i: int) -> None:
        await introspect(rs9701, one_opaque, "application/token-introspection+jwt")

    async def c_local(i: int) -> None:
        await validator(one_jwt)

    results: dict[str, list[tuple[float, float]]] = {}
    for r in range(args.rounds):
        fresh.clear()
        for name, count, case in [
            ("issue opaque", issue_n, c_issue_opaque),
            ("issue JWT ES256", issue_n, c_issue_jwt),
            ("introspect opaque", n, c_intro_opaque),
            ("introspect JWT, first sight", issue_n, c_intro_jwt_first),
            ("introspect JWT, seen before", n, c_intro_jwt_again),
            ("introspect opaque, RFC 9701 answer", n, c_intro_9701),
            ("validate JWT locally (resource server)", n, c_local),
        ]:
            results.setdefault(name, []).append(await timed(count, case))
        print(f"round {r + 1}/{args.rounds} done", file=sys.stderr)

    # RS256: slower to sign, faster to verify. Measured after the ES256 rounds, on its own key.
    await key_admin.rotate(store, clock, key_admin.require_kek(settings), alg="RS256")
    for _ in range(args.rounds):
        fresh.clear()
        results.setdefault("issue JWT RS256", []).append(await timed(issue_n, c_issue_jwt))
        results.setdefault("introspect JWT RS256, first sight", []).append(
            await timed(issue_n, c_intro_jwt_first)
        )
    await store.close()
    shutil.rmtree(folder, ignore_errors=True)
    report(results, args)


async def local_validator(http: Driver, token: str) -> Callable[[str], Awaitable[object]]:
    """What a resource server does instead of introspecting: verify against the JWKS."""
    from keystile.resource.jwt import JWTValidator

    status, body = 0, b""
    send_body: list[bytes] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]
        else:
            send_body.append(message.get("body", b""))

    scope = {
        "type": "http",
        "method": "GET",
        "path": "/oauth2/jwks",
        "headers": [],
        "query_string": b"",
        "client": ("127.0.0.1", 1),
        "server": ("bench", 443),
        "scheme": "https",
        "root_path": "",
        "http_version": "1.1",
    }
    await http.app(scope, receive, send)
    body = b"".join(send_body)
    assert status == 200, body
    validator = JWTValidator(issuer=ISSUER, audience=API, jwks=json.loads(body))
    await validator.validate(token)
    return validator.validate


def report(results: dict[str, list[tuple[float, float]]], args: argparse.Namespace) -> None:
    wall = {name: statistics.median(v[0] for v in values) for name, values in results.items()}
    cpu = {name: statistics.median(v[1] for v in values) for name, values in results.items()}
    baseline = {
        "issue JWT ES256": "issue opaque",
        "issue JWT RS256": "issue opaque",
        "introspect JWT, first sight": "introspect opaque",
        "introspect JWT, seen before": "introspect opaque",
        "introspect JWT RS256, first sight": "introspect opaque",
        "introspect opaque, RFC 9701 answer": "introspect opaque",
        "validate JWT locally (resource server)": "introspect opaque",
    }
    print(
        f"\nJWT vs opaque, in-process, SQLite synchronous=FULL, {args.rounds} rounds "
        f"(introspection n={args.n}, issuance n={args.issue_n}). Medians over rounds of the "
        "mean per operation; wall ratios are medians of per-round ratios to the opaque case "
        "of the same round.\n"
    )
    print("| case | wall µs/op | CPU µs/op | vs opaque (wall) | vs opaque (CPU) |")
    print("|---|---:|---:|---:|---:|")
    for name, values in results.items():
        base = baseline.get(name)
        if base is None:
            ratios = "1.00x | 1.00x"
        else:
            rounds = range(min(len(values), len(results[base])))
            by_wall = statistics.median(values[i][0] / results[base][i][0] for i in rounds)
            ratios = f"{by_wall:.2f}x | {cpu[name] / cpu[base]:.2f}x"
        print(f"| {name} | {wall[name] * 1e6:,.0f} | {cpu[name] * 1e6:,.0f} | {ratios} |")
    print("\nper-round wall min-max µs:")
    for name, values in results.items():
        walls = [v[0] * 1e6 for v in values]
        print(f"  {name}: {min(walls):,.0f}-{max(walls):,.0f}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--n", type=int, default=2000, help="introspections per case and round")
    parser.add_argument("--issue-n", type=int, default=300, help="issuances per case and round")
    asyncio.run(main(parser.parse_args()))
