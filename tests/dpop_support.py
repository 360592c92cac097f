"""DPoP proofs for tests, made with PyJWT and cryptography: not the JOSE library the server
verifies with (joserfc), so an accepted proof is interoperable, not merely self-consistent."""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
from dataclasses import dataclass, field
from typing import Any

import jwt as pyjwt
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def ath(token: str) -> str:
    return b64url(hashlib.sha256(token.encode()).digest())


@dataclass
class DpopKey:
    """A client's DPoP key pair: ``key.proof("POST", url, now)`` signs a proof."""

    alg: str = "ES256"
    private: Any = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if self.alg == "ES256":
            self.private = ec.generate_private_key(ec.SECP256R1())
        elif self.alg == "RS256":
            self.private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        elif self.alg in ("EdDSA", "Ed25519"):
            self.private = ed25519.Ed25519PrivateKey.generate()
        else:  # pragma: no cover
            raise ValueError(self.alg)

    @property
    def public_jwk(self) -> dict[str, Any]:
        public = self.private.public_key()
        if self.alg == "ES256":
            jwk = json.loads(pyjwt.algorithms.ECAlgorithm.to_jwk(public))
        elif self.alg == "RS256":
            jwk = json.loads(pyjwt.algorithms.RSAAlgorithm.to_jwk(public))
        else:
            jwk = json.loads(pyjwt.algorithms.OKPAlgorithm.to_jwk(public))
        return {k: v for k, v in jwk.items() if k in ("kty", "crv", "x", "y", "n", "e")}

    @property
    def jkt(self) -> str:
        """RFC 7638 thumbprint, computed here by hand (required members, sorted)."""
        jwk = self.public_jwk
        members = {
            "EC": ("crv", "kty", "x", "y"),
            "RSA": ("e", "kty", "n"),
            "OKP": ("crv", "kty", "x"),
        }
        canon = json.dumps({k: jwk[k] for k in members[jwk["kty"]]}, separators=(",", ":"))
        return b64url(hashlib.sha256(canon.encode()).digest())

    def proof(
        self,
        htm: str,
        htu: str,
        iat: int,
        *,
        access_token: str | None = None,
        nonce: str | None = None,
        jti: str | None = None,
        header: dict[str, Any] | None = None,
        claims: dict[str, Any] | None = None,
        drop: tuple[str, ...] = (),
    ) -> str:
        body: dict[str, Any] = {
            "jti": jti or secrets.token_urlsafe(12),
            "htm": htm,
            "htu": htu,
            "iat": iat,
        }
        if access_token is not None:
            body["ath"] = ath(access_token)
        if nonce is not None:
            body["nonce"] = nonce
        body.update(claims or {})
        for name in drop:
            body.pop(name, None)
        head = {"typ": "dpop+jwt", "jwk": self.public_jwk, **(header or {})}
        alg = "EdDSA" if self.alg == "Ed25519" else self.alg
        return pyjwt.encode(body, self.private, algorithm=alg, headers=head)
