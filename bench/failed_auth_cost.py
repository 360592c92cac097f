"""What failed client authentications cost the AS, side by side with a right one (issue 11).

A throttle that refuses failures only is safe if failing is cheap: a flood of wrong secrets or
bad private_key_jwt assertions must cost no more than the traffic the server serves anyway.
Runs the real app in-process over a real SQLite file and drives its raw ASGI handler for
``POST /oauth2/introspect`` directly (the method of docs/decisions/0002), so the figures are
the server's own cost per request. Cases are interleaved round by round; each figure is the
median over rounds of the mean time per request, and its ratio to the first case.

    .venv/bin/python bench/failed_auth_cost.py [--rounds 5] [--n 1000]

Logging is off (each failure logs two warnings). Cases (each from its own source address,
default throttle settings):
  right secret (verified, cached)            200: the everyday introspection
  right secret, verified every time          200: a caller's first request
  wrong secret, under the limit              401: read the client, SHA-256, compare, count
  wrong secret, over the limit               429: the same check, then Retry-After
  right assertion (private_key_jwt ES256)    200: claims, one signature check, jti record
  forged assertion, over the limit           429: claims, one signature check (fails)
  assertion with a wrong aud, over the limit 429: claims only, no cryptography
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import logging
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import jwt as pyjwt
from cryptography.hazmat.primitives.asymmetric import ec
from joserfc.jwk import ECKey

from keystile import admin
from keystile.clock import SystemClock
from keystile.server.app import KeystileApp, create_app
from keystile.server.endpoints import CallerCache
from keystile.settings import ServerSettings
from keystile.store.sqlite import SQLiteStore

ISSUER = "https://as.bench.test"
API = "https://api.bench.test"
JWT_BEARER = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
TOKEN = "ks_at_" + "A" * 49  # well-formed enough to be looked up: inactive


async def call(app: KeystileApp, form: dict[str, str], source: str, basic: bytes | None) -> int:
    body = urlencode(form).encode()
    headers = [
        (b"content-type", b"application/x-www-form-urlencoded"),
        (b"content-length", str(len(body)).encode()),
    ]
    if basic is not None:
        headers.append((b"authorization", b"Basic " + basic))
    scope = {
        "type": "http",
        "method": "POST",
        "path": "/oauth2/introspect",
        "headers": headers,
        "client": (source, 50000),
    }
    status = 0
    sent = False

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

    await app(scope, receive, send)
    return status


def basic(client_id: str, secret: str) -> bytes:
    return base64.b64encode(f"{client_id}:{secret}".encode())


def assertions(key: Any, kid: str, n: int, aud: str) -> list[dict[str, str]]:
    now = int(time.time())
    out = []
    for i in range(n):
        claims = {"iss": "pkj", "sub": "pkj", "aud": aud, "iat": now, "exp": now + 60}
        claims["jti"] = f"{now}-{i}-{time.perf_counter_ns()}"
        signed = pyjwt.encode(claims, key, algorithm="ES256", headers={"kid": kid})
        out.append(
            {"token": TOKEN, "client_assertion_type": JWT_BEARER, "client_assertion": signed}
        )
    return out


async def main(args: argparse.Namespace) -> None:
    folder = Path(tempfile.mkdtemp(prefix="keystile-bench-failed-auth-"))
    try:
        await run(folder / "bench.db", args)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


async def run(db: Path, args: argparse.Namespace) -> None:
    # Each failure logs two warnings; the figures are the server's work without log I/O.
    logging.getLogger("keystile").disabled = True
    settings = ServerSettings(db=str(db), issuer=ISSUER, purge_interval=0, access_log=False)
    store = SQLiteStore(db)
    await store.open()
    clock = SystemClock()
    app = create_app(settings, store=store, clock=clock)
    # A second app over the same store that never reaches its limit: the 401 case.
    lenient = create_app(
        settings.model_copy(update={"throttle_failures": 10**9}), store=store, clock=clock
    )
    _, rs_secret = await admin.create_client(store, clock, client_id="rs", grant_types=[])
    private = ec.generate_private_key(ec.SECP256R1())
    public = ECKey.import_key(private.public_key()).as_dict()
    kid = "bench-key"
    jwks = json.dumps({"keys": [{**public, "kid": kid, "alg": "ES256"}]})
    await admin.create_client(
        store, clock, client_id="pkj", grant_types=[], auth_method="private_key_jwt", jwks=jwks
    )
    await admin.create_resource_server(
        store, clock, identifier=API, introspection_clients=["rs", "pkj"]
    )
    forger = ec.generate_private_key(ec.SECP256R1())
    right, wrong = basic("rs", rs_secret), basic("rs", "ks_cs_" + "x" * 49)
    # Put every "over the limit" address over it first.
    for source in ("10.0.0.3", "10.0.0.5", "10.0.0.6"):
        for _ in range(settings.throttle_failures):
            assert await call(app, {"token": TOKEN}, source, wrong) == 401
    assert await call(app, {"token": TOKEN}, "10.0.0.1", right) == 200

    n = args.n

    async def uncached(creds: bytes) -> int:
        lenient.endpoints.callers = CallerCache()  # as on a caller's first request
        return await call(lenient, {"token": TOKEN}, "10.0.0.7", creds)

    names = [
        "right secret (verified, cached)",
        "right secret, verified every time",
        "wrong secret, under the limit",
        "wrong secret, over the limit",
        "right assertion (private_key_jwt ES256)",
        "forged assertion, over the limit",
        "assertion with a wrong aud, over the limit",
    ]
    results: dict[str, list[float]] = {name: [] for name in names}
    for r in range(args.rounds):
        good = assertions(private, kid, n, ISSUER)
        forged = assertions(forger, kid, n, ISSUER)
        misaddressed = assertions(private, kid, n, "https://elsewhere.example")
        cases: list[tuple[str, Callable[[int], Any], int]] = [
            (names[0], lambda i: call(app, {"token": TOKEN}, "10.0.0.1", right), 200),
            (names[1], lambda i: uncached(right), 200),
            (names[2], lambda i: call(lenient, {"token": TOKEN}, "10.0.0.2", wrong), 401),
            (names[3], lambda i: call(app, {"token": TOKEN}, "10.0.0.3", wrong), 429),
            (names[4], lambda i, good=good: call(app, good[i], "10.0.0.4", None), 200),
            (names[5], lambda i, forged=forged: call(app, forged[i], "10.0.0.5", None), 429),
            (names[6], lambda i, bad=misaddressed: call(app, bad[i], "10.0.0.6", None), 429),
        ]
        for name, op, expected in cases:
            started = time.perf_counter()
            for i in range(n):
                status = await op(i)
                assert status == expected, (name, status)
            results[name].append((time.perf_counter() - started) / n)
        print(f"round {r + 1}/{args.rounds} done", file=sys.stderr)
    await store.close()

    base = statistics.median(results[names[0]])
    print(f"{'case':45} {'µs/request':>11} {'x right secret':>15}")
    for name in names:
        median = statistics.median(results[name])
        print(f"{name:45} {median * 1e6:11.1f} {median / base:15.2f}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--n", type=int, default=1000)
    asyncio.run(main(parser.parse_args()))
