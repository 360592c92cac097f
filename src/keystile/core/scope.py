"""Scope strings (RFC 6749 §3.3): parsed into frozensets at the edge, joined back on the wire."""

from __future__ import annotations

import re

from keystile.errors import InvalidScope

# scope-token = 1*( %x21 / %x23-5B / %x5D-7E )  (RFC 6749 §3.3, Appendix A.4)
_SCOPE_TOKEN = re.compile(r"[\x21\x23-\x5b\x5d-\x7e]+")


def is_scope_token(value: str) -> bool:
    return _SCOPE_TOKEN.fullmatch(value) is not None


def parse_scope(value: str | None) -> frozenset[str]:
    """Split a space-delimited scope string; raise InvalidScope on characters §3.3 forbids."""
    if not value:
        return frozenset()
    parts = value.split(" ")
    out: set[str] = set()
    for part in parts:
        if part == "":
            continue  # tolerate doubled spaces; they carry no scope
        if not is_scope_token(part):
            raise InvalidScope("scope contains characters not allowed by RFC 6749 section 3.3")
        out.add(part)
    return frozenset(out)


def format_scope(scopes: frozenset[str] | set[str] | tuple[str, ...]) -> str:
    """Join scopes in a stable order, so the same grant always prints the same string."""
    return " ".join(sorted(scopes))
