"""Human passwords: argon2id (RFC 9106) with RFC 8265 normalisation (core/passwords.py)."""

from __future__ import annotations

import unicodedata

import pytest
from argon2 import PasswordHasher

from keystile.core.passwords import (
    MAX_LENGTH,
    MIN_LENGTH,
    PasswordPolicyError,
    hash_password,
    needs_rehash,
    verify_password,
)

# One hash for the module: argon2id is slow on purpose.
COMPOSED = "caf\u00e9 au lait"  # é as one code point
HASH = hash_password(COMPOSED)


def test_hash_is_argon2id_and_salted() -> None:
    assert HASH.startswith("$argon2id$")
    assert hash_password(COMPOSED) != HASH  # a new salt every time


def test_right_and_wrong_password() -> None:
    assert verify_password(HASH, COMPOSED)
    assert not verify_password(HASH, "cafe au lait")


def test_unicode_forms_are_one_password() -> None:
    """RFC 8265 §4.2.2: NFC, so a decomposed é (e + U+0301) is the same password."""
    decomposed = unicodedata.normalize("NFD", COMPOSED)
    assert decomposed != COMPOSED
    assert verify_password(HASH, decomposed)


def test_unknown_user_never_matches() -> None:
    """None stands for a user that does not exist: the same work, always False."""
    assert not verify_password(None, "keystile-dummy-password-never-matches")
    assert not verify_password(None, COMPOSED)


@pytest.mark.parametrize("password", ["x" * (MIN_LENGTH - 1), "x" * (MAX_LENGTH + 1)])
def test_policy(password: str) -> None:
    with pytest.raises(PasswordPolicyError):
        hash_password(password)


def test_overlong_password_is_refused_without_hashing() -> None:
    assert not verify_password(HASH, "x" * (MAX_LENGTH + 1))


def test_garbage_hash_is_no_match_and_needs_rehash() -> None:
    assert not verify_password("not-a-hash", COMPOSED)
    assert needs_rehash("not-a-hash")


def test_weaker_parameters_need_a_rehash() -> None:
    weak = PasswordHasher(time_cost=1, memory_cost=8192, parallelism=1).hash(COMPOSED)
    assert verify_password(weak, COMPOSED)
    assert needs_rehash(weak)
    assert not needs_rehash(HASH)
