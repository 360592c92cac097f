"""The AS's signing keys (RFC 7517, RFC 7518): generation, encryption at rest, the JWK Set.

A key is made for one JWS algorithm and named by its RFC 7638 thumbprint (``kid``). Its
private JWK is stored encrypted with AES-256-GCM under the key-encryption key (KEK) from the
settings; the stored blob is ``0x01 | SHA-256(KEK)[:8] | 12-byte nonce | ciphertext+tag``,
authenticated together with the kid, so a blob moved to another row does not decrypt, and a
wrong KEK is reported as such instead of as a broken key.

A ``KeyRing`` is what one process knows at one registry version: which keys are published,
which one signs, and a small cache of JWTs it verified already.
"""

from __future__ import annotations

import hashlib
import json
import secrets
import warnings
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from joserfc.errors import SecurityWarning
from joserfc.jwk import ECKey, Key, OKPKey, RSAKey
from joserfc.jws import JWSRegistry

from keystile.core.models import SigningKey, SigningKeyState
from keystile.errors import KeystileError

if TYPE_CHECKING:
    from joserfc._rfc7515.model import JWSAlgModel

SigningAlg = Literal["ES256", "RS256", "Ed25519", "EdDSA"]
# ES256 is the default: small keys and signatures, fast to sign. RS256 is what every verifier
# supports (RFC 9068 §4 makes it mandatory for resource servers). Ed25519 is the fully
# specified name of EdDSA over Ed25519 (RFC 9864 §2.2); "EdDSA" is the older, now deprecated
# name of the same signatures, offered for verifiers that know only that one.
SIGNING_ALGS: tuple[SigningAlg, ...] = ("ES256", "RS256", "Ed25519", "EdDSA")
KEK_BYTES = 32  # AES-256
_BLOB_VERSION = b"\x01"
_FINGERPRINT_BYTES = 8
_NONCE_BYTES = 12  # the GCM nonce size (NIST SP 800-38D); random, never reused for a KEK
_AAD_PREFIX = b"keystile signing key "


class KeyEncryptionError(KeystileError):
    """A private key cannot be decrypted: the KEK is missing or not the one it was stored with."""


class _Registry(JWSRegistry):
    """joserfc's registry, minus its warning about the deprecated name "EdDSA", which we use
    only when an operator chose it (see SIGNING_ALGS)."""

    def get_alg(self, name: str) -> JWSAlgModel:
        if name != "EdDSA":
            return super().get_alg(name)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", SecurityWarning)
            return super().get_alg(name)


def jws_registry(algorithms: Iterable[str], *, strict_header: bool = True) -> JWSRegistry:
    """A JWS registry that accepts exactly ``algorithms`` (never ``none``, never by guess)."""
    return _Registry(algorithms=sorted(set(algorithms)), strict_check_header=strict_header)


# -- the key-encryption key -------------------------------------------------------------------


def kek_fingerprint(kek: bytes) -> bytes:
    return hashlib.sha256(b"keystile kek " + kek).digest()[:_FINGERPRINT_BYTES]


def encrypt_private_jwk(private_jwk: str, *, kek: bytes, kid: str) -> bytes:
    """AES-256-GCM under the KEK, bound to ``kid`` as associated data."""
    if len(kek) != KEK_BYTES:
        raise KeyEncryptionError(f"the key-encryption key must be {KEK_BYTES} bytes")
    nonce = secrets.token_bytes(_NONCE_BYTES)
    sealed = AESGCM(kek).encrypt(nonce, private_jwk.encode(), _AAD_PREFIX + kid.encode())
    return _BLOB_VERSION + kek_fingerprint(kek) + nonce + sealed


def decrypt_private_jwk(blob: bytes, *, kek: bytes | None, kid: str) -> str:
    if kek is None:
        raise KeyEncryptionError("no key-encryption key is configured (key_encryption_key)")
    if blob[:1] != _BLOB_VERSION or len(blob) < 1 + _FINGERPRINT_BYTES + _NONCE_BYTES + 16:
        raise KeyEncryptionError(f"signing key {kid}: unknown private-key format")
    fingerprint = blob[1 : 1 + _FINGERPRINT_BYTES]
    if fingerprint != kek_fingerprint(kek):
        raise KeyEncryptionError(
            f"signing key {kid} was encrypted under another key-encryption key than the one "
            "configured"
        )
    nonce = blob[1 + _FINGERPRINT_BYTES : 1 + _FINGERPRINT_BYTES + _NONCE_BYTES]
    try:
        plain = AESGCM(kek).decrypt(
            nonce, blob[1 + _FINGERPRINT_BYTES + _NONCE_BYTES :], _AAD_PREFIX + kid.encode()
        )
    except InvalidTag:
        raise KeyEncryptionError(f"signing key {kid}: private key fails authentication") from None
    return plain.decode()


# -- keys ---------------------------------------------------------------------------------------


def _generate(alg: str) -> Key:
    if alg == "ES256":
        return ECKey.generate_key("P-256")
    if alg == "RS256":
        return RSAKey.generate_key(2048)
    if alg in ("Ed25519", "EdDSA"):
        return OKPKey.generate_key("Ed25519")
    raise ValueError(f"unsupported signing algorithm {alg!r}; choose from {SIGNING_ALGS}")


def new_signing_key(
    alg: str, *, kek: bytes, now: int, state: SigningKeyState = "next"
) -> SigningKey:
    """A fresh key pair for ``alg``, its private part encrypted under ``kek``."""
    key = _generate(alg)
    kid = key.thumbprint()  # RFC 7638: stable, and says nothing but the public key
    public = {**key.as_dict(private=False), "kid": kid, "alg": alg, "use": "sig"}
    private = {**key.as_dict(private=True), "kid": kid, "alg": alg, "use": "sig"}
    return SigningKey(
        kid=kid,
        alg=alg,
        state=state,
        public_jwk=json.dumps(public, sort_keys=True, separators=(",", ":")),
        private_jwk_enc=encrypt_private_jwk(
            json.dumps(private, sort_keys=True, separators=(",", ":")), kek=kek, kid=kid
        ),
        created_at=now,
        activated_at=now if state == "active" else None,
    )


def _import(jwk: dict[str, Any]) -> Key:
    kty = jwk.get("kty")
    if kty == "EC":
        return ECKey.import_key(jwk)
    if kty == "RSA":
        return RSAKey.import_key(jwk)
    if kty == "OKP":
        return OKPKey.import_key(jwk)
    raise ValueError(f"unsupported key type {kty!r}")


@dataclass(frozen=True, slots=True)
class Signer:
    """The active key, ready to sign: ``jws.serialize_compact(header, payload, signer.key)``."""

    kid: str
    alg: str
    key: Key
    registry: JWSRegistry


# How many verified JWT digests a ring remembers. A hit skips the signature check: the digest
# is SHA-256 of the exact token string, so a hit means these very bytes verified before.
VERIFIED_CACHE_LIMIT = 10_000


class KeyRing:
    """The signing keys one process knows at one registry ``version``."""

    def __init__(self, keys: Iterable[SigningKey], *, version: int, kek: bytes | None) -> None:
        self.version = version
        self.keys = tuple(keys)
        self._kek = kek
        self._public: dict[str, tuple[SigningKey, Key]] = {}
        for k in self.keys:
            self._public[k.kid] = (k, _import(json.loads(k.public_jwk)))
        self._registries: dict[str, JWSRegistry] = {a: jws_registry([a]) for a in SIGNING_ALGS}
        self._signer: Signer | None = None
        self._id_token_signers: dict[str, Signer] = {}
        self.verified: dict[bytes, str] = {}  # token digest -> kid

    @property
    def active(self) -> SigningKey | None:
        """The active key: it signs access tokens, introspection answers and ID tokens."""
        for k in self.keys:
            if k.state == "active" and k.use_for == "all":
                return k
        return None

    def id_token_key(self, alg: str) -> SigningKey | None:
        """The key that signs ID tokens with ``alg``: the active key if it is of that
        algorithm, else the active ID-token key of ``alg`` (OIDC Registration §2)."""
        active = self.active
        if active is not None and active.alg == alg:
            return active
        for k in self.keys:
            if k.state == "active" and k.use_for == "id_token" and k.alg == alg:
                return k
        return None

    def id_token_signer(self, alg: str) -> Signer | None:
        """``id_token_key(alg)`` with its private part decrypted (once per key)."""
        key = self.id_token_key(alg)
        if key is None or key.private_jwk_enc is None:
            return None
        if key is self.active:
            return self.signer()
        found = self._id_token_signers.get(key.kid)
        if found is None:
            private = json.loads(
                decrypt_private_jwk(key.private_jwk_enc, kek=self._kek, kid=key.kid)
            )
            found = Signer(key.kid, key.alg, _import(private), self._registries[key.alg])
            self._id_token_signers[key.kid] = found
        return found

    def signer(self) -> Signer | None:
        """The active key with its private part decrypted (once), or None if there is none."""
        if self._signer is None:
            key = self.active
            if key is None or key.private_jwk_enc is None:
                return None
            private = json.loads(
                decrypt_private_jwk(key.private_jwk_enc, kek=self._kek, kid=key.kid)
            )
            self._signer = Signer(key.kid, key.alg, _import(private), self._registries[key.alg])
        return self._signer

    def published(self, now: int) -> list[SigningKey]:
        return [k for k in self.keys if k.is_published(now)]

    def jwks(self, now: int) -> dict[str, Any]:
        """The JWK Set document (RFC 7517 §5): every published key, public parts only."""
        return {"keys": [json.loads(k.public_jwk) for k in self.published(now)]}

    def signing_algs(self) -> list[str]:
        """The algorithms of the keys that sign now or will next (for metadata)."""
        return sorted(
            {k.alg for k in self.keys if k.state in ("active", "next") and k.use_for == "all"}
        )

    def id_token_algs(self) -> list[str]:
        """The algorithms ID tokens can be signed with (OIDC Discovery §3): the active key's
        first, then every other one an ID-token key can be made for (with a KEK) or exists."""
        active = self.active
        if active is None:
            return []
        others = {k.alg for k in self.keys if k.state == "active" and k.use_for == "id_token"}
        if self._kek is not None:
            others.update(SIGNING_ALGS)
        return [active.alg, *(a for a in SIGNING_ALGS if a in others and a != active.alg)]

    def verification_key(self, kid: object, alg: object, now: int) -> tuple[Key, JWSRegistry]:
        """The published key named ``kid``, if its algorithm is ``alg``; else LookupError."""
        if not isinstance(kid, str):
            raise LookupError("no kid")
        found = self._public.get(kid)
        if found is None or found[0].alg != alg or not found[0].is_published(now):
            raise LookupError("not one of our published keys")
        return found[1], self._registries[found[0].alg]

    def remember(self, digest: bytes, kid: str) -> None:
        if len(self.verified) >= VERIFIED_CACHE_LIMIT:
            self.verified.clear()
        self.verified[digest] = kid

    def recall(self, digest: bytes, now: int) -> bool:
        """True if these exact token bytes verified before with a key still published."""
        kid = self.verified.get(digest)
        if kid is None:
            return False
        found = self._public.get(kid)
        return found is not None and found[0].is_published(now)
