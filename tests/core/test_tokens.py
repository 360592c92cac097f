"""Opaque token format: prefix, length, checksum and hashing (keystile.core.tokens)."""

from __future__ import annotations

import hashlib
import re
import string

import pytest

from keystile.core.tokens import (
    TOKEN_LENGTH,
    new_access_token,
    new_client_secret,
    new_jti,
    new_refresh_token,
    token_hash,
    token_kind,
    verify_secret,
)

B64URL = string.ascii_letters + string.digits + "-_"
MAKERS = {
    "ks_at_": new_access_token,
    "ks_rt_": new_refresh_token,
    "ks_cs_": new_client_secret,
}


class TestFormat:
    @pytest.mark.parametrize(("prefix", "make"), MAKERS.items())
    def test_shape(self, prefix, make):
        """A value is its kind prefix plus 49 base64url characters, 55 in all."""
        value = make()

        assert TOKEN_LENGTH == 55
        assert len(value) == 55
        assert re.fullmatch(re.escape(prefix) + r"[A-Za-z0-9_-]{49}", value)

    @pytest.mark.parametrize("make", MAKERS.values())
    def test_unique(self, make):
        """Values never repeat (256 random bits each, RFC 6749 §10.10)."""
        values = {make() for _ in range(200)}

        assert len(values) == 200

    def test_kinds(self):
        """token_kind names the kind from the prefix of a well-formed value."""
        assert token_kind(new_access_token()) == "access_token"
        assert token_kind(new_refresh_token()) == "refresh_token"
        assert token_kind(new_client_secret()) == "client_secret"

    def test_url_safe(self):
        """Tokens need no escaping in a form or header (RFC 6750 §2.1 b64token)."""
        for _ in range(50):
            value = new_access_token()
            assert all(ch in B64URL for ch in value)

    def test_jti_is_unique_and_not_a_token(self):
        """A jti is a random identifier that is not itself token-shaped."""
        jtis = {new_jti() for _ in range(100)}

        assert len(jtis) == 100
        assert all(token_kind(j) is None for j in jtis)
        assert all(len(j) >= 16 for j in jtis)


class TestChecksum:
    def test_every_single_char_change_is_rejected(self):
        """Changing any one character after the prefix breaks the checksum."""
        value = new_access_token()
        for i in range(6, len(value)):
            for ch in B64URL:
                if ch == value[i]:
                    continue
                changed = value[:i] + ch + value[i + 1 :]
                assert token_kind(changed) is None, (i, ch)

    def test_prefix_swap_is_rejected(self):
        """Turning an access token into a refresh token by editing the prefix fails."""
        value = new_access_token()

        assert token_kind("ks_rt_" + value[6:]) is None
        assert token_kind("ks_cs_" + value[6:]) is None

    def test_adjacent_swap_is_rejected(self):
        """Swapping two adjacent different characters (a typical typo) is detected."""
        value = new_access_token()
        i = next(i for i in range(6, 48) if value[i] != value[i + 1])
        swapped = value[:i] + value[i + 1] + value[i] + value[i + 2 :]

        assert token_kind(swapped) is None

    @pytest.mark.parametrize(
        "value",
        [
            "",
            "ks_at_",
            "garbage",
            "x" * 55,
            "ks_xx_" + "A" * 49,
            "KS_AT_" + "A" * 49,
        ],
    )
    def test_garbage(self, value):
        """Values of the wrong length or prefix are not tokens."""
        assert token_kind(value) is None

    def test_wrong_length(self):
        """A real token with a character added or removed is not a token."""
        value = new_access_token()

        assert token_kind(value + "A") is None
        assert token_kind(value[:-1]) is None
        assert token_kind(" " + value) is None

    def test_non_ascii_does_not_raise(self):
        """A 55-character value with non-ASCII characters is rejected, not an exception."""
        value = "ks_at_" + "é" * 49

        assert token_kind(value) is None


class TestHash:
    def test_sha256(self):
        """token_hash is the SHA-256 digest of the UTF-8 value."""
        value = new_access_token()

        assert token_hash(value) == hashlib.sha256(value.encode()).digest()
        assert len(token_hash(value)) == 32

    def test_surrogates_do_not_raise(self):
        """Hashing a string with lone surrogates (from odd input) does not raise."""
        assert len(token_hash("a\udcff")) == 32

    def test_verify_secret(self):
        """verify_secret accepts the right secret and refuses any other."""
        secret = new_client_secret()
        stored = token_hash(secret)

        assert verify_secret(secret, stored)
        assert not verify_secret(secret + "x", stored)
        assert not verify_secret("", stored)
        assert not verify_secret(secret, b"\0" * 32)
