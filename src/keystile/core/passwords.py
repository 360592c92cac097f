"""Human passwords: argon2id (RFC 9106) through argon2-cffi, never a hand-made scheme.

Only people's passwords take this slow path (the login form and ``keystile user passwd``).
Client secrets are server-generated with 256 bits and checked with one SHA-256
(``tokens.verify_secret``); a slow hash there would only slow every API call.

Verification costs tens of milliseconds of CPU by design, so servers call these through a
thread (``asyncio.to_thread``) and never on the event loop.
"""

from __future__ import annotations

import functools
import unicodedata

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

# argon2-cffi's defaults follow RFC 9106 §4's second recommended option (64 MiB, t=3, p=4).
_HASHER = PasswordHasher()

MIN_LENGTH = 8
MAX_LENGTH = 1024  # long enough for any passphrase, short enough to bound the work


@functools.cache
def dummy_hash() -> str:
    """A hash of a password nobody has, verified against when the username is unknown, so
    the time a failed login takes does not tell whether the account exists. Made on first
    use, not at import (it costs ~0.1 s of CPU, which every CLI command paid); the server
    makes it in the background as it starts (``server/app.py``)."""
    return _HASHER.hash("keystile-dummy-password-never-matches")


class PasswordPolicyError(ValueError):
    """The password does not meet the policy; the message says why, never what it was."""


def check_policy(password: str) -> None:
    if len(password) < MIN_LENGTH:
        raise PasswordPolicyError(f"a password needs at least {MIN_LENGTH} characters")
    if len(password) > MAX_LENGTH:
        raise PasswordPolicyError(f"a password may have at most {MAX_LENGTH} characters")


def normalize(password: str) -> str:
    """RFC 8265 §4.2 (OpaqueString): Unicode NFC, so "é" typed as one code point or as
    "e" plus a combining accent is the same password on every keyboard and platform."""
    return unicodedata.normalize("NFC", password)


def hash_password(password: str) -> str:
    """The argon2id PHC string for ``password`` (salted; checked against the policy)."""
    password = normalize(password)
    check_policy(password)
    return _HASHER.hash(password)


def verify_password(password_hash: str | None, password: str) -> bool:
    """True if ``password`` matches; with ``password_hash`` None (no such user) the same
    work is done against a dummy hash and the answer is False."""
    if len(password) > MAX_LENGTH:
        return False
    try:
        matched = _HASHER.verify(password_hash or dummy_hash(), normalize(password))
        return matched and password_hash is not None
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return False


def needs_rehash(password_hash: str) -> bool:
    """True when the hash was made with weaker parameters than today's."""
    try:
        return _HASHER.check_needs_rehash(password_hash)
    except InvalidHashError:
        return True
