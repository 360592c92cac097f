"""What a DPoP proof check costs a resource server per request, beside a bearer request.

In one run, on one core, each request goes through ``BearerAuthMiddleware`` to a no-op ASGI
app with its token already cached (the SDK's steady state, ARCHITECTURE.md "SDK cache hit"):

  bearer       Authorization: Bearer, an unbound token: the baseline
  dpop ES256   Authorization: DPoP + a fresh proof signed with ES256, checked in full
  dpop EdDSA   the same with an Ed25519 key
  dpop RS256   the same with a 2048-bit RSA key

A proof check is: parse the JWS, check typ/alg/jwk, htm/htu/iat/ath, import the key, verify
the signature, compute the RFC 7638 thumbprint, record the jti. Proofs are signed before
timing (signing is the client's cost). Each figure is the median of REPEATS runs of N
requests, in µs per request; the ratio is against bearer in the same run.

    .venv/bin/python bench/dpop_check.py [--n 2000] [--repeats 7] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import gc
import hashlib
import json
import os
import platform
import secrets
import statistics
import sys
import time
from typing import Any

from joserfc import jws
from joserfc.jwk import ECKey, Key, OKPKey, RSAKey

from keystile.core.signing_keys import jws_registry
from keystile.resource import Principal, TokenValidator
from keystile.resource.cache import cache_key
from keystile.resource.middleware import BearerAuthMiddleware
from keystile.resource.sender import SenderCheck

URL = "https://api.example.test/orders"
SIGN = jws_registry(("ES256", "EdDSA", "RS256"))  # without the EdDSA-name warning
BEARER = "ks_at_" + "A" * 43 + "abcdef"  # the shape of a keystile access token
BOUND = "ks_at_" + "B" * 43 + "abcdef"


def principal(jkt: str | None) -> Principal:
    claims: dict[str, Any] = {"active": True}
    if jkt is not None:
        claims["cnf"] = {"jkt": jkt}
    return Principal(
        sub="alice",
        client_id="app-1",
        username=None,
        scopes=frozenset({"orders:read"}),
        aud=("https://api.example.test",),
        exp=int(time.time()) + 3600,
        token_type="DPoP" if jkt else "Bearer",
        claims=claims,
    )


def make_key(alg: str) -> Key:
    if alg == "ES256":
        return ECKey.generate_key("P-256")
    if alg == "EdDSA":
        return OKPKey.generate_key("Ed25519")
    return RSAKey.generate_key(2048)


def proofs(key: Key, alg: str, n: int) -> list[str]:
    ath = base64.urlsafe_b64encode(hashlib.sha256(BOUND.encode()).digest()).rstrip(b"=")
    header = {"typ": "dpop+jwt", "alg": alg, "jwk": key.as_dict(private=False)}
    now = int(time.time())
    out = []
    for _ in range(n):
        claims = {
            "jti": secrets.token_urlsafe(12),
            "htm": "GET",
            "htu": URL,
            "iat": now,
            "ath": ath.decode(),
        }
        out.append(jws.serialize_compact(header, json.dumps(claims), key, registry=SIGN))
    return out


async def noop(scope: Any, receive: Any, send: Any) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b""})


async def run(mw: BearerAuthMiddleware, headers_list: list[list[tuple[bytes, bytes]]]) -> float:
    """Seconds for one request per header list, all answered 200."""
    status: list[int] = []

    async def send(message: Any) -> None:
        if message["type"] == "http.response.start":
            status.append(message["status"])

    async def receive() -> Any:
        return {"type": "http.request", "body": b"", "more_body": False}

    base = {
        "type": "http",
        "method": "GET",
        "scheme": "https",
        "path": "/orders",
        "root_path": "",
        "query_string": b"",
    }
    gc.disable()
    try:
        started = time.perf_counter()
        for headers in headers_list:
            await mw({**base, "headers": headers}, receive, send)
        elapsed = time.perf_counter() - started
    finally:
        gc.enable()
    assert set(status) == {200}, set(status)
    return elapsed


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=2000, help="requests per run")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    validator = TokenValidator(
        introspection_endpoint="http://127.0.0.1:9/introspect",  # never called: all cached
        client_id="bench",
        client_secret="unused",
        events=False,
    )
    host = (b"host", b"api.example.test")
    results: dict[str, list[float]] = {}
    bearer_mw = BearerAuthMiddleware(noop, validator, sender=SenderCheck(max_age=3600))
    bearer_headers = [[host, (b"authorization", f"Bearer {BEARER}".encode())]] * args.n
    validator.cache.put(cache_key(BEARER), principal(None))
    algs = ("ES256", "EdDSA", "RS256")
    keys = {alg: make_key(alg) for alg in algs}
    for _ in range(args.repeats):
        results.setdefault("bearer", []).append(await run(bearer_mw, bearer_headers))
        for alg in algs:
            key = keys[alg]
            validator.cache.put(cache_key(BOUND), principal(key.thumbprint()))
            mw = BearerAuthMiddleware(noop, validator, sender=SenderCheck(max_age=3600))
            signed = proofs(key, alg, args.n)
            headers = [
                [host, (b"authorization", f"DPoP {BOUND}".encode()), (b"dpop", p.encode())]
                for p in signed
            ]
            results.setdefault(f"dpop {alg}", []).append(await run(mw, headers))
    await validator.close()

    us = {name: statistics.median(runs) * 1e6 / args.n for name, runs in results.items()}
    base = us["bearer"]
    report = {
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "n": args.n,
        "repeats": args.repeats,
        "us_per_request": {k: round(v, 2) for k, v in us.items()},
        "ratio_to_bearer": {k: round(v / base, 1) for k, v in us.items()},
    }
    if args.json:
        json.dump(report, sys.stdout, indent=2)
        print()
        return
    print(f"per request through BearerAuthMiddleware, token cached; median of {args.repeats}")
    print(f"runs of {args.n} (Python {report['python']}, {report['cpus']} CPUs)")
    print(f"{'':<12} {'µs/request':>11} {'ratio':>7} {'extra µs':>9}")
    for name, value in us.items():
        print(f"{name:<12} {value:>11.2f} {value / base:>7.1f} {value - base:>9.2f}")


if __name__ == "__main__":
    asyncio.run(main())
