"""Opaque tokens: recognizable, high-entropy, checksummed, and stored only as SHA-256.

Format: ``ks_<kind>_<43 chars base64url of 32 random bytes><6 chars checksum>``, where
kind is ``at`` (access token), ``rt`` (refresh token) or ``ac`` (authorization code) and
the checksum is the CRC-32 of prefix and random part in base64url (6 chars carry its 32
bits). The prefix lets secret
scanners match our tokens; the checksum lets the server reject garbage and typos before
any I/O. Neither adds secrecy: the 256 random bits do that. Client secrets use the same
scheme with kind ``cs``; initial and registration access tokens (RFC 7591, RFC 7592)
kinds ``ia`` and ``ra``.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import zlib

_KIND_PREFIX: dict[str, str] = {
    "access_token": "ks_at_",
    "refresh_token": "ks_rt_",
    "authorization_code": "ks_ac_",
    "client_secret": "ks_cs_",
    # RFC 7591 §3 / RFC 7592 §3: bearer tokens of the registration endpoint only.
    "initial_access_token": "ks_ia_",
    "registration_access_token": "ks_ra_",
}
_PREFIX_KIND: dict[str, str] = {v: k for k, v in _KIND_PREFIX.items()}
_RANDOM_BYTES = 32  # 256 bits (RFC 6749 §10.10 asks for at least 128)
_RANDOM_CHARS = 43  # base64url of 32 bytes, unpadded
_CHECK_CHARS = 6
_PREFIX_LEN = 6
TOKEN_LENGTH = _PREFIX_LEN + _RANDOM_CHARS + _CHECK_CHARS


def _checksum(body: str) -> str:
    crc = zlib.crc32(body.encode("ascii"))
    # 4 bytes -> 8 base64 chars with 2 of padding; the first 6 carry all 32 bits.
    return base64.urlsafe_b64encode(crc.to_bytes(4, "big"))[:_CHECK_CHARS].decode("ascii")


def _generate(kind: str) -> str:
    prefix = _KIND_PREFIX[kind]
    rand = base64.urlsafe_b64encode(secrets.token_bytes(_RANDOM_BYTES)).rstrip(b"=").decode()
    body = prefix + rand
    return body + _checksum(body)


def new_access_token() -> str:
    return _generate("access_token")


def new_refresh_token() -> str:
    return _generate("refresh_token")


def new_authorization_code() -> str:
    """An authorization code (RFC 6749 §4.1.2): single use, stored only as SHA-256."""
    return _generate("authorization_code")


def new_client_secret() -> str:
    """A server-generated client secret with 256 bits of entropy."""
    return _generate("client_secret")


def new_initial_access_token() -> str:
    """An initial access token (RFC 7591 §3): lets its holder register clients."""
    return _generate("initial_access_token")


def new_registration_access_token() -> str:
    """A registration access token (RFC 7592 §3): manages one registered client."""
    return _generate("registration_access_token")


def token_kind(value: str) -> str | None:
    """The kind of a well-formed keystile token, or None for anything else (no I/O needed).

    Rejects wrong length, unknown prefix and a bad checksum; a token that fails here
    cannot exist in the store, so the caller can answer "inactive" at once.
    """
    if len(value) != TOKEN_LENGTH or not value.isascii():  # non-ASCII: no checksum to take
        return None
    kind = _PREFIX_KIND.get(value[:_PREFIX_LEN])
    if kind is None:
        return None
    # Not secret: the checksum is public structure, so a plain comparison is fine.
    if _checksum(value[:-_CHECK_CHARS]) != value[-_CHECK_CHARS:]:
        return None
    return kind


def stored_digest(value: str) -> bytes | None:
    """The digest an opaque access or refresh token is stored under, or None for anything
    that cannot be one (codes, secrets, garbage): those need no lookup at all."""
    if token_kind(value) in ("access_token", "refresh_token"):
        return token_hash(value)
    return None


def token_hash(value: str) -> bytes:
    """SHA-256 of a token or secret: the only form in which the store keeps them.

    A plain digest is enough because the values carry 256 bits from ``secrets``; there is
    nothing for a slow hash to protect against, and this runs on every request.
    """
    return hashlib.sha256(value.encode("utf-8", "surrogateescape")).digest()


def verify_secret(presented: str, stored_hash: bytes) -> bool:
    """Compare a presented secret with a stored digest in constant time."""
    return hmac.compare_digest(token_hash(presented), stored_hash)


def new_jti() -> str:
    """A unique, non-secret identifier for a token (logged and used in events)."""
    return secrets.token_urlsafe(16)
