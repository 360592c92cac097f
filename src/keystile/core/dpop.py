"""DPoP proofs (RFC 9449): checking a proof of possession and the key it binds a token to.

One function, ``verify_proof``, does every check of RFC 9449 §4.3 that needs no I/O, for
the authorization server's token endpoint (§5) and for resource servers (§7.1) alike. What
needs state is the caller's: remembering each proof's ``jti`` (§11.1; a
``core.dpop_state.ReplayCache``), and which nonces are current (§8, §9;
``core.dpop_state.NonceSource``).

Our choices where the RFC leaves one:

- Algorithms: ES256, EdDSA (and its RFC 9864 name Ed25519) and RS256 (2048 bits or more);
  never ``none`` or HMAC (§4.2: "MUST NOT be none or an identifier for a symmetric
  algorithm").
- ``iat`` may be at most ``max_age`` seconds old (default 60) and ``LEEWAY`` seconds ahead
  (§11.1: "a relatively brief period"); a replayed ``jti`` is refused within that window.
- ``htu`` is compared without query and fragment, after syntax-based normalization
  (§4.3 item 9, RFC 3986 §6.2.2 and §6.2.3).
"""

from __future__ import annotations

import base64
import hashlib
import re
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import orjson
from joserfc import jws
from joserfc.errors import JoseError, SecurityWarning
from joserfc.jwk import ECKey, Key, OKPKey, RSAKey

from keystile.core.dpop_scheme import DPOP_ALGS
from keystile.core.signing_keys import jws_registry
from keystile.errors import InvalidDpopProof, UseDpopNonce

DPOP_TYP = "dpop+jwt"  # RFC 9449 §4.2: the typ of every proof
MAX_AGE = 60  # seconds a proof is accepted after its iat (RFC 9449 §11.1)
LEEWAY = 5  # seconds of clock skew allowed for an iat in the future
MAX_PROOF_LENGTH = 8192  # an RS256 proof with a 4096-bit key is ~1.6 KB
MAX_JTI_LENGTH = 256
_REGISTRY = jws_registry(DPOP_ALGS, strict_header=False)
# The header carries the public key: an RSA jwk alone is ~400 (2048 bits) to ~750 (4096)
# characters, past joserfc's default limit of 512.
_REGISTRY.max_header_length = 2048
# Private JWK members (RFC 7517 §4, RFC 7518 §6): a proof carries the public key only (§4.2).
_PRIVATE_MEMBERS = frozenset({"d", "p", "q", "dp", "dq", "qi", "oth", "k"})
_ALG_KEY: dict[str, tuple[str, str | None]] = {
    "ES256": ("EC", "P-256"),
    "EdDSA": ("OKP", "Ed25519"),
    "Ed25519": ("OKP", "Ed25519"),
    "RS256": ("RSA", None),
}
_KEY_TYPES: dict[str, type[Key]] = {"EC": ECKey, "OKP": OKPKey, "RSA": RSAKey}
_DEFAULT_PORTS = {"http": 80, "https": 443}
_KEY_CACHE_SIZE = 4096
_KEYS: dict[bytes, tuple[Key, str]] = {}
_PERCENT = re.compile(r"%[0-9A-Fa-f]{2}")
_UNRESERVED = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")


@dataclass(frozen=True, slots=True)
class DpopProof:
    """A verified proof: the thumbprint of its key (``jkt``) and the claims that matter."""

    jkt: str  # RFC 7638 SHA-256 thumbprint of the proof's public key, base64url
    jti: str
    htm: str
    htu: str
    iat: int
    ath: str | None = None
    nonce: str | None = None

    @property
    def replay_key(self) -> str:
        """What a replay cache remembers: the jti, per key (RFC 9449 §11.1)."""
        return f"{self.jkt}:{self.jti}"

    def replay_expiry(self, max_age: int = MAX_AGE) -> int:
        """Until when its jti must be remembered: past that, ``iat`` alone refuses it."""
        return self.iat + max_age + LEEWAY


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def access_token_hash(access_token: str) -> str:
    """``ath`` (RFC 9449 §4.2): base64url of SHA-256 of the access token's ASCII bytes."""
    return b64url(hashlib.sha256(access_token.encode("ascii", "surrogateescape")).digest())


def jwk_thumbprint(jwk: dict[str, Any]) -> str:
    """RFC 7638 SHA-256 thumbprint of a public JWK, base64url: the ``jkt`` (RFC 9449 §6.1)."""
    return _public_key(jwk)[1]


def normalize_htu(url: str) -> str:
    """The form an ``htu`` is compared in (RFC 9449 §4.3 item 9): scheme and host
    lower-cased, the default port dropped, percent-encoding normalized, an empty path as
    ``/`` (RFC 3986 §6.2.2, §6.2.3), and no query or fragment. ValueError if not an
    absolute http(s) URL."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in _DEFAULT_PORTS or not parts.hostname:
        raise ValueError("htu must be an absolute http or https URL")
    host = parts.hostname.lower()
    if ":" in host:  # an IPv6 literal keeps its brackets
        host = f"[{host}]"
    port = parts.port  # ValueError for a port out of range
    netloc = host if port is None or port == _DEFAULT_PORTS[scheme] else f"{host}:{port}"
    return f"{scheme}://{netloc}{_normalize_path(parts.path) or '/'}"


def _normalize_path(path: str) -> str:
    def fix(match: re.Match[str]) -> str:
        char = chr(int(match.group(0)[1:], 16))
        # Unreserved characters are decoded (§6.2.2.2), other escapes upper-cased (§6.2.2.1).
        return char if char in _UNRESERVED else match.group(0).upper()

    return _PERCENT.sub(fix, path)


def verify_proof(
    proof: str,
    *,
    htm: str,
    htu: str,
    now: int,
    access_token: str | None = None,
    nonce_ok: Callable[[str | None], bool] | None = None,
    max_age: int = MAX_AGE,
    algorithms: tuple[str, ...] = DPOP_ALGS,
) -> DpopProof:
    """Check a ``DPoP`` header value (RFC 9449 §4.3), without I/O.

    ``htm``/``htu``: the method and URL of the request it came with; ``access_token``: the
    token it must be bound to via ``ath`` (resource servers, §7.1); ``nonce_ok``: whether a
    nonce (None when absent) is current, for servers that require nonces (§8, §9).

    Raises ``InvalidDpopProof``, or ``UseDpopNonce`` when only the nonce is missing or stale.
    The replay check is the caller's: record ``replay_key`` until ``replay_expiry()``.
    ::

        proof = verify_proof(request.headers["dpop"], htm="POST",
                             htu="https://as.example/oauth2/token", now=clock.now())
    """
    # §4.3 item 2: a well-formed JWT.
    if len(proof) > MAX_PROOF_LENGTH or proof.count(".") != 2:
        raise InvalidDpopProof("the DPoP proof is not a signed JWT")
    try:
        parts = jws.extract_compact(proof.encode("ascii"), registry=_REGISTRY)
        header = parts.headers()
        claims = orjson.loads(parts.payload)
    except (JoseError, ValueError, UnicodeError, TypeError):
        raise InvalidDpopProof("the DPoP proof is not a signed JWT") from None
    if not isinstance(claims, dict):
        raise InvalidDpopProof("the DPoP proof's payload is not a JSON object")
    # §4.3 items 4-7: typ, an asymmetric algorithm we support, a public key in jwk.
    if header.get("typ") != DPOP_TYP:
        raise InvalidDpopProof(f"the DPoP proof's typ must be {DPOP_TYP}")
    alg = header.get("alg")
    if not isinstance(alg, str) or alg not in algorithms:
        raise InvalidDpopProof("the DPoP proof's alg is not supported")
    jwk = header.get("jwk")
    if not isinstance(jwk, dict):
        raise InvalidDpopProof("the DPoP proof has no jwk header")
    if _PRIVATE_MEMBERS & set(jwk):
        # §4.3 item 7: "does not contain a private key".
        raise InvalidDpopProof("the DPoP proof's jwk must be a public key")
    kty, crv = _ALG_KEY[alg]
    if jwk.get("kty") != kty or (crv is not None and jwk.get("crv") != crv):
        raise InvalidDpopProof("the DPoP proof's jwk does not fit its alg")
    # The claims before the signature: no cryptography for a proof that cannot pass.
    checked = _check_claims(claims, htm=htm, htu=htu, now=now, max_age=max_age)
    ath = claims.get("ath")
    # §4.3 item 12: bound to the access token presented with it.
    if access_token is not None and (
        not isinstance(ath, str) or ath != access_token_hash(access_token)
    ):
        raise InvalidDpopProof("the DPoP proof's ath does not match the access token")
    key, jkt = _public_key(jwk)
    try:
        # §4.3 item 8: the signature, with the key the proof carries, over the very
        # header and payload checked above.
        valid = jws.validate_compact(parts, key, registry=_REGISTRY)
    except (JoseError, ValueError, LookupError, TypeError):
        valid = False
    if not valid:
        raise InvalidDpopProof("the DPoP proof's signature does not verify")
    nonce = claims.get("nonce")
    if nonce is not None and not isinstance(nonce, str):
        raise InvalidDpopProof("the DPoP proof's nonce must be a string")
    if nonce_ok is not None and not nonce_ok(nonce):
        # §8 / §9: the client retries with the nonce the error carries.
        raise UseDpopNonce("a current DPoP nonce is required" if nonce else None)
    return DpopProof(
        jkt=jkt,
        jti=checked[0],
        htm=checked[1],
        htu=checked[2],
        iat=checked[3],
        ath=ath if isinstance(ath, str) else None,
        nonce=nonce,
    )


def _check_claims(
    claims: dict[str, Any], *, htm: str, htu: str, now: int, max_age: int
) -> tuple[str, str, str, int]:
    jti = claims.get("jti")
    if not isinstance(jti, str) or not jti or len(jti) > MAX_JTI_LENGTH:
        raise InvalidDpopProof("the DPoP proof needs a jti")
    # §4.3 item 9: htm matches the request's method.
    proof_htm = claims.get("htm")
    if not isinstance(proof_htm, str) or proof_htm != htm:
        raise InvalidDpopProof("the DPoP proof's htm does not match the request method")
    proof_htu = claims.get("htu")
    try:
        same = isinstance(proof_htu, str) and normalize_htu(proof_htu) == normalize_htu(htu)
    except ValueError:
        same = False
    if not same:
        raise InvalidDpopProof("the DPoP proof's htu does not match the request URL")
    assert isinstance(proof_htu, str)  # for mypy: checked just above
    # §4.3 item 11: created within an acceptable window.
    iat = claims.get("iat")
    if not isinstance(iat, int | float) or isinstance(iat, bool):
        raise InvalidDpopProof("the DPoP proof needs an iat")
    if iat > now + LEEWAY:
        raise InvalidDpopProof("the DPoP proof's iat is in the future")
    if iat < now - max_age:
        raise InvalidDpopProof("the DPoP proof is too old (iat)")
    return jti, proof_htm, proof_htu, int(iat)


def _public_key(jwk: dict[str, Any]) -> tuple[Key, str]:
    """The key and its thumbprint, remembered by the JWK's canonical JSON: a client signs
    every proof with the same key, and importing it costs about as much as verifying."""
    name = orjson.dumps(jwk, option=orjson.OPT_SORT_KEYS)
    found = _KEYS.get(name)
    if found is None:
        key = _import_public(jwk)
        if len(_KEYS) >= _KEY_CACHE_SIZE:
            _KEYS.clear()  # public keys only: forgetting them costs an import, nothing else
        found = _KEYS[name] = (key, key.thumbprint())
    return found


def _import_public(jwk: dict[str, Any]) -> Key:
    if _PRIVATE_MEMBERS & set(jwk):
        raise InvalidDpopProof("the DPoP proof's jwk must be a public key")
    key_type = _KEY_TYPES.get(str(jwk.get("kty")))
    if key_type is None:
        raise InvalidDpopProof("the DPoP proof's jwk has an unsupported kty")
    with warnings.catch_warnings():
        # joserfc warns about short RSA keys; we refuse them instead (RFC 7518 §3.3).
        warnings.simplefilter("error", SecurityWarning)
        try:
            key = key_type.import_key(jwk)
        except (JoseError, ValueError, TypeError, KeyError, SecurityWarning):
            raise InvalidDpopProof("the DPoP proof's jwk is not a usable public key") from None
    if key.is_private:
        raise InvalidDpopProof("the DPoP proof's jwk must be a public key")
    if isinstance(key, RSAKey) and key.raw_value.key_size < 2048:
        raise InvalidDpopProof("the DPoP proof's RSA key is shorter than 2048 bits")
    return key
