"""Helpers for the OpenID Connect tests: an RP client, a user with claims, the browser side of
the code flow (login and consent pages), the token exchange, and ID token checks with PyJWT
(a JOSE library the server does not use)."""

from __future__ import annotations

import base64
import hashlib
import secrets
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import jwt as pyjwt

from keystile import admin
from keystile.core.models import User
from keystile.core.pkce import s256
from tests.conftest import ISSUER, Creds
from tests.server.jwt_support import fetch_jwks
from tests.server.test_authorize import hidden

AUTHORIZE = "/oauth2/authorize"
CONSENT = "/oauth2/consent"
LOGIN = "/login"
TOKEN = "/oauth2/token"
USERINFO = "/oauth2/userinfo"
END_SESSION = "/oauth2/logout"
DISCOVERY = "/.well-known/openid-configuration"

RP = "rp-1"
REDIRECT = "https://rp.example.test/cb"
POST_LOGOUT = "https://rp.example.test/signed-out"
USERNAME = "alice"
PASSWORD = "correct horse battery staple"
VERIFIER = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk"


@dataclass
class Rp:
    creds: Creds
    user: User


async def make_rp(register_client: Any, store: Any, clock: Any, **client: Any) -> Rp:
    client.setdefault("scopes", ["openid", "profile", "email", "read"])
    creds = await register_client(
        RP,
        name="Example RP",
        redirect_uris=[REDIRECT],
        post_logout_redirect_uris=[POST_LOGOUT],
        **client,
    )
    user = await admin.create_user(
        store,
        clock,
        username=USERNAME,
        password=PASSWORD,
        name="Alice Liddell",
        email="alice@example.test",
        email_verified=True,
    )
    return Rp(creds, user)


def auth_params(**changes: str | None) -> dict[str, str]:
    params: dict[str, str | None] = {
        "response_type": "code",
        "client_id": RP,
        "redirect_uri": REDIRECT,
        "scope": "openid",
        "state": "st-" + secrets.token_hex(4),
        "nonce": "n-" + secrets.token_hex(8),
        "code_challenge": s256(VERIFIER),
        "code_challenge_method": "S256",
    }
    params.update(changes)
    return {k: v for k, v in params.items() if v is not None}


def query(r: httpx.Response) -> dict[str, str]:
    """The parameters of a redirect to the RP (each sent once)."""
    assert r.status_code in (302, 303), r.text
    parts = urlsplit(r.headers["location"])
    return {k: v[0] for k, v in parse_qs(parts.query).items()}


async def log_in(http: httpx.AsyncClient, page: httpx.Response) -> httpx.Response:
    """Fill in the login page shown, then follow the 303 back to the authorization endpoint."""
    assert page.status_code == 200, page.text
    assert 'action="/login"' in page.text, page.text
    r = await http.post(
        LOGIN, data={**hidden(page.text), "username": USERNAME, "password": PASSWORD}
    )
    assert r.status_code == 303, r.text
    return await http.get(r.headers["location"])


async def allow(http: httpx.AsyncClient, page: httpx.Response, **extra: str) -> httpx.Response:
    assert page.status_code == 200, page.text
    assert 'action="/oauth2/consent"' in page.text, page.text
    return await http.post(CONSENT, data={**hidden(page.text), "decision": "allow", **extra})


async def code_for(http: httpx.AsyncClient, params: dict[str, str]) -> str:
    """Run the browser side (sign in if asked, consent if asked) and return the code."""
    r = await http.get(AUTHORIZE, params=params)
    if r.status_code == 200 and 'action="/login"' in r.text:
        r = await log_in(http, r)
    if r.status_code == 200 and 'action="/oauth2/consent"' in r.text:
        r = await allow(http, r)
    got = query(r)
    assert "code" in got, got
    assert got["state"] == params["state"]
    return got["code"]


async def exchange(http: httpx.AsyncClient, rp: Rp, code: str) -> httpx.Response:
    return await http.post(
        TOKEN,
        data={
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": REDIRECT,
            "code_verifier": VERIFIER,
        },
        auth=rp.creds.auth,
    )


async def tokens(http: httpx.AsyncClient, rp: Rp, **params: str | None) -> dict[str, Any]:
    """The whole code flow: the token response of an authorization with ``params``."""
    r = await exchange(http, rp, await code_for(http, auth_params(**params)))
    assert r.status_code == 200, r.text
    return dict(r.json())


def at_hash(access_token: str) -> str:
    """OIDC Core §3.1.3.6, computed independently: left half of SHA-256, base64url."""
    digest = hashlib.sha256(access_token.encode("ascii")).digest()
    return base64.urlsafe_b64encode(digest[:16]).rstrip(b"=").decode("ascii")


async def verify_id_token(
    http: httpx.AsyncClient, id_token: str, *, audience: str = RP
) -> dict[str, Any]:
    """Check an ID token with PyJWT against the published JWKS: signature, iss, aud, exp,
    iat (OIDC Core §3.1.3.7); returns its claims."""
    jwks = await fetch_jwks(http)
    header = pyjwt.get_unverified_header(id_token)
    key = pyjwt.PyJWKSet.from_dict(jwks)[header["kid"]]
    claims: dict[str, Any] = pyjwt.decode(
        id_token,
        key.key,
        algorithms=[header["alg"]],
        audience=audience,
        issuer=ISSUER,
        options={"require": ["iss", "sub", "aud", "exp", "iat"]},
        # Tests move a FixedClock forward; iat and exp are checked exactly by the tests.
        leeway=3600,
    )
    return claims
