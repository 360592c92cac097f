"""Scope strings (keystile.core.scope, RFC 6749 §3.3)."""

from __future__ import annotations

import pytest

from keystile.core.scope import format_scope, is_scope_token, parse_scope
from keystile.errors import InvalidScope


class TestParse:
    def test_space_delimited(self):
        """A scope is a space-delimited set of scope-tokens (RFC 6749 §3.3)."""
        assert parse_scope("read write") == frozenset({"read", "write"})

    def test_order_and_duplicates(self):
        """Order does not matter and duplicates collapse: a scope is a set (§3.3)."""
        assert parse_scope("write read write") == frozenset({"read", "write"})

    @pytest.mark.parametrize("value", [None, "", " ", "   "])
    def test_empty(self, value):
        """No scope, or only spaces, is the empty set."""
        assert parse_scope(value) == frozenset()

    def test_extra_spaces_tolerated(self):
        """Doubled, leading and trailing spaces carry no scope."""
        assert parse_scope("  read   write ") == frozenset({"read", "write"})

    def test_full_allowed_range(self):
        """Every character in %x21 / %x23-5B / %x5D-7E is allowed (RFC 6749 Appendix A.4)."""
        allowed = "".join(chr(c) for c in range(0x21, 0x7F) if c not in (0x22, 0x5C))

        assert parse_scope(allowed) == frozenset({allowed})
        assert parse_scope("api:read https://x/y.z") == frozenset({"api:read", "https://x/y.z"})

    @pytest.mark.parametrize(
        "value", ['"quoted"', "back\\slash", "tab\there", "new\nline", "é", "nul\x00", "del\x7f"]
    )
    def test_forbidden_characters(self, value):
        """Quote, backslash, controls and non-ASCII are invalid_scope (RFC 6749 §3.3)."""
        with pytest.raises(InvalidScope) as info:
            parse_scope("read " + value)

        assert info.value.error == "invalid_scope"
        assert info.value.status_code == 400


class TestToken:
    @pytest.mark.parametrize(
        ("value", "ok"),
        [("a", True), ("", False), ("a b", False), ("!", True), ("~", True), ('"', False)],
    )
    def test_is_scope_token(self, value, ok):
        """is_scope_token matches exactly one non-empty scope-token (RFC 6749 Appendix A.4)."""
        assert is_scope_token(value) is ok


class TestFormat:
    def test_sorted_and_joined(self):
        """format_scope joins a set in a stable sorted order."""
        assert format_scope(frozenset({"write", "admin", "read"})) == "admin read write"

    def test_empty(self):
        """The empty set formats as the empty string."""
        assert format_scope(frozenset()) == ""

    def test_round_trip(self):
        """Parsing a formatted scope gives back the same set."""
        scopes = frozenset({"b", "a:x", "c/d"})

        assert parse_scope(format_scope(scopes)) == scopes
