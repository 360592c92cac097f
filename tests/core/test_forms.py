"""Strict form parsing (keystile.core.forms.parse_form, RFC 6749 §3.1, Appendix B)."""

from __future__ import annotations

import pytest

from keystile.core.forms import MAX_FIELDS, parse_form
from keystile.errors import InvalidRequest

FORM = "application/x-www-form-urlencoded"
REPEATABLE = frozenset({"resource"})


def _error(body: bytes, content_type: str | None = FORM) -> str:
    with pytest.raises(InvalidRequest) as info:
        parse_form(body, content_type, repeatable=REPEATABLE)
    assert info.value.status_code == 400
    return str(info.value.description)


class TestValues:
    def test_simple(self):
        """name=value pairs become a dict of strings."""
        form = parse_form(b"grant_type=client_credentials&scope=read", FORM)

        assert dict(form) == {"grant_type": "client_credentials", "scope": "read"}

    def test_percent_and_plus_decoding(self):
        """'+' is a space and %XX are UTF-8 bytes (Appendix B)."""
        form = parse_form(b"scope=read+write&x=%C3%A9%2B&k%20y=v", FORM)

        assert dict(form) == {"scope": "read write", "x": "é+", "k y": "v"}

    def test_empty_value_is_omitted(self):
        """A parameter sent without a value is treated as omitted (RFC 6749 §3.1)."""
        form = parse_form(b"scope=&grant_type=x", FORM)

        assert dict(form) == {"grant_type": "x"}
        assert "scope" not in form

    def test_empty_body(self):
        """An empty body is an empty form."""
        assert dict(parse_form(b"", FORM)) == {}

    def test_content_type_parameters_and_case(self):
        """The media type is matched case-insensitively, parameters ignored (RFC 9110 §8.3)."""
        form = parse_form(b"a=b", "Application/X-WWW-Form-Urlencoded ; charset=utf-8")

        assert dict(form) == {"a": "b"}


class TestRepeats:
    def test_repeated_name_refused(self):
        """A repeated parameter is invalid_request (RFC 6749 §3.1)."""
        assert _error(b"a=1&a=2") == "parameter 'a' is repeated"

    def test_repeated_equal_values_refused(self):
        """A parameter repeated with the same value is still refused (RFC 6749 §3.1)."""
        assert _error(b"a=1&a=1") == "parameter 'a' is repeated"

    def test_empty_then_value_refused(self):
        """An empty and a non-empty occurrence of one name is still a repetition."""
        assert _error(b"a=&a=x") == "parameter 'a' is repeated"

    def test_repeatable_collected(self):
        """Names declared repeatable are collected in order in form.multi (RFC 8707 §2)."""
        form = parse_form(
            b"resource=https%3A%2F%2Fa&resource=https%3A%2F%2Fb&x=1", FORM, repeatable=REPEATABLE
        )

        assert form.getall("resource") == ["https://a", "https://b"]
        assert "resource" not in form
        assert dict(form) == {"x": "1"}

    def test_repeatable_empty_dropped(self):
        """Empty values of a repeatable name are dropped like other empty values."""
        form = parse_form(b"resource=&resource=u", FORM, repeatable=REPEATABLE)

        assert form.getall("resource") == ["u"]

    def test_getall_missing(self):
        """getall on an absent name is an empty list."""
        assert parse_form(b"a=b", FORM).getall("resource") == []

    def test_not_repeatable_by_default(self):
        """Without the repeatable declaration even resource may not repeat."""
        with pytest.raises(InvalidRequest):
            parse_form(b"resource=a&resource=b", FORM)


class TestMalformed:
    @pytest.mark.parametrize(
        "content_type", [None, "application/json", "multipart/form-data", "text/plain", ""]
    )
    def test_wrong_content_type(self, content_type):
        """Only application/x-www-form-urlencoded is accepted (RFC 6749 §3.2)."""
        assert _error(b"a=b", content_type) == (
            "Content-Type must be application/x-www-form-urlencoded"
        )

    @pytest.mark.parametrize("body", [b"a=\xe9", "a=é".encode(), b"\xff=1"])
    def test_raw_non_ascii(self, body):
        """Raw bytes above 0x7F are not urlencoded: invalid_request."""
        assert _error(body) == "request body is not application/x-www-form-urlencoded"

    @pytest.mark.parametrize("body", [b"a=%ff", b"%ff=a", b"a=%C3%28", b"a=%ED%A0%80"])
    def test_non_utf8_escapes(self, body):
        """Percent-escapes that do not decode as UTF-8 are invalid_request."""
        assert _error(body) == "form parameters must be UTF-8"

    @pytest.mark.parametrize("body", [b"a", b"a=b&&c=d", b"a=b&", b"&a=b", b"a=b&&="])
    def test_fields_without_equals(self, body):
        """Every field needs a name and '=': anything else is malformed."""
        assert _error(body) == "malformed application/x-www-form-urlencoded body"

    def test_too_many_fields(self):
        """More fields than MAX_FIELDS are refused before parsing them all."""
        body = "&".join(f"f{i}=1" for i in range(MAX_FIELDS + 1)).encode()

        assert _error(body)  # an InvalidRequest with a description

    def test_max_fields_accepted(self):
        """Exactly MAX_FIELDS distinct fields are accepted."""
        body = "&".join(f"f{i}=1" for i in range(MAX_FIELDS)).encode()

        assert len(parse_form(body, FORM)) == MAX_FIELDS
