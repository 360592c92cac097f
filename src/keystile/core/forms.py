"""Strict parsing of application/x-www-form-urlencoded request bodies (RFC 6749 Appendix B).

OAuth endpoints take form parameters; RFC 6749 §3.1 and §3.2 say that parameters must not
be repeated and that a parameter sent without a value counts as omitted. This module turns
a raw body into a dict once, with clear ``invalid_request`` errors for every bad input.
"""

from __future__ import annotations

from urllib.parse import unquote_plus

from keystile.errors import InvalidRequest

MAX_FIELDS = 64


class Form(dict[str, str]):
    """Single-valued parameters as a dict; parameters allowed to repeat in ``multi``."""

    __slots__ = ("multi",)

    def __init__(self) -> None:
        super().__init__()
        self.multi: dict[str, list[str]] = {}

    def getall(self, name: str) -> list[str]:
        return self.multi.get(name, [])


_EMPTY: frozenset[str] = frozenset()


def parse_form(
    body: bytes, content_type: str | None, *, repeatable: frozenset[str] = _EMPTY
) -> Form:
    """Parse a form body; every problem is an InvalidRequest with a description.

    Names in ``repeatable`` (such as RFC 8707 ``resource``) may appear more than once and
    are collected in ``form.multi``; any other repeated name is refused.
    """
    if content_type is None:
        raise InvalidRequest("Content-Type must be application/x-www-form-urlencoded")
    media_type = content_type.split(";", 1)[0].strip().lower()
    if media_type != "application/x-www-form-urlencoded":
        raise InvalidRequest("Content-Type must be application/x-www-form-urlencoded")
    try:
        text = body.decode("ascii")  # a urlencoded body is ASCII; anything else is malformed
    except UnicodeDecodeError:
        raise InvalidRequest("request body is not application/x-www-form-urlencoded") from None
    out = Form()
    if not text:
        return out
    pairs = _split_pairs(text)
    seen: set[str] = set()
    for name, value in pairs:
        if name in repeatable:
            if value != "":
                out.multi.setdefault(name, []).append(value)
            continue
        if name in seen:
            # RFC 6749 §3.1: "Request and response parameters MUST NOT be included more
            # than once." Checked before dropping empty values, so "a=&a=x" is refused too.
            raise InvalidRequest(f"parameter '{name}' is repeated")
        seen.add(name)
        if value != "":  # RFC 6749 §3.1: sent without a value = omitted
            out[name] = value
    return out


def _split_pairs(text: str) -> list[tuple[str, str]]:
    """Split ``name=value&...`` strictly: every field needs '=', percent-escapes must be
    UTF-8. The common case (no escapes) skips unquoting: this runs on every request."""
    fields = text.split("&")
    if len(fields) > MAX_FIELDS:
        raise InvalidRequest(f"too many form parameters (at most {MAX_FIELDS})")
    pairs: list[tuple[str, str]] = []
    for field in fields:
        name, sep, value = field.partition("=")
        if not sep or not name:
            raise InvalidRequest("malformed application/x-www-form-urlencoded body")
        if "%" in field or "+" in field:
            try:
                name = unquote_plus(name, encoding="utf-8", errors="strict")
                value = unquote_plus(value, encoding="utf-8", errors="strict")
            except UnicodeDecodeError:
                raise InvalidRequest("form parameters must be UTF-8") from None
        pairs.append((name, value))
    return pairs
