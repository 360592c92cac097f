"""Helpers for the JWT tests: a third-party JOSE library (PyJWT) on the verifying side, and
client key pairs that sign private_key_jwt assertions with it.

PyJWT is deliberately not what the server uses (joserfc): a token that PyJWT accepts against
the JWKS the server publishes is interoperable, not merely self-consistent.
"""

from __future__ import annotations

import json
import secrets
import time
from dataclasses import dataclass, field
from typing import Any

import httpx
import jwt as pyjwt
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from tests.conftest import ISSUER

JWKS_PATH = "/oauth2/jwks"
METADATA = "/.well-known/oauth-authorization-server"
JWT_BEARER = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
INTROSPECTION_JWT = "application/token-introspection+jwt"
# PyJWT checks iat and exp against the real clock, so JWT tests run the app at real time.
WALL = int(time.time())


async def fetch_jwks(http: httpx.AsyncClient) -> dict[str, Any]:
    r = await http.get(JWKS_PATH)
    assert r.status_code == 200, r.text
    return dict(r.json())


def pyjwt_verify(
    token: str,
    jwks: dict[str, Any],
    *,
    audience: str,
    typ: str = "at+jwt",
    issuer: str = ISSUER,
) -> dict[str, Any]:
    """Verify ``token`` with PyJWT against a JWK Set: signature by the key its kid names,
    typ, iss, aud, exp and iat; returns the claims."""
    header = pyjwt.get_unverified_header(token)
    assert header["typ"] == typ
    key = pyjwt.PyJWKSet.from_dict(jwks)[header["kid"]]
    claims: dict[str, Any] = pyjwt.decode(
        token,
        key.key,
        algorithms=[header["alg"]],
        audience=audience,
        issuer=issuer,
        options={"require": ["iss", "aud", "iat"]},
    )
    return claims


def unverified_claims(token: str) -> dict[str, Any]:
    return dict(pyjwt.decode(token, options={"verify_signature": False}))


@dataclass
class ClientKey:
    """A client's key pair, signing private_key_jwt assertions with PyJWT."""

    alg: str = "ES256"
    kid: str = field(default_factory=lambda: secrets.token_hex(8))
    private: Any = None

    def __post_init__(self) -> None:
        if self.private is None:
            if self.alg == "ES256":
                self.private = ec.generate_private_key(ec.SECP256R1())
            elif self.alg == "RS256":
                self.private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
            else:
                self.private = ed25519.Ed25519PrivateKey.generate()

    @property
    def public_jwk(self) -> dict[str, Any]:
        algorithm = pyjwt.get_algorithm_by_name(self.alg)
        jwk: dict[str, Any] = json.loads(algorithm.to_jwk(self.private.public_key()))
        return {**jwk, "kid": self.kid, "alg": self.alg, "use": "sig"}

    def assertion(
        self,
        client_id: str,
        *,
        aud: str | list[str] = ISSUER,
        lifetime: int | None = 60,
        jti: str | None = None,
        now: int | None = None,
        headers: dict[str, Any] | None = None,
        **claims: Any,
    ) -> str:
        """A signed assertion (RFC 7523 §3); ``lifetime=None`` leaves out exp."""
        now = WALL if now is None else now
        body: dict[str, Any] = {
            "iss": client_id,
            "sub": client_id,
            "aud": aud,
            "iat": now,
            "jti": jti or secrets.token_urlsafe(12),
        }
        if lifetime is not None:
            body["exp"] = now + lifetime
        body.update(claims)
        return pyjwt.encode(
            body, self.private, algorithm=self.alg, headers={"kid": self.kid, **(headers or {})}
        )


def jwks_text(*keys: ClientKey) -> str:
    return json.dumps({"keys": [k.public_jwk for k in keys]})


def assertion_form(assertion: str, **extra: str) -> dict[str, str]:
    return {"client_assertion_type": JWT_BEARER, "client_assertion": assertion, **extra}
