"""Malformed requests get a clear 4xx JSON answer, never a 500."""

from __future__ import annotations

import pytest

from tests.conftest import INTROSPECT, REVOKE, TOKEN, basic

OAUTH_PATHS = [TOKEN, INTROSPECT, REVOKE]
FORM = "application/x-www-form-urlencoded"
WRONG_TYPE = {
    "error": "invalid_request",
    "error_description": "Content-Type must be application/x-www-form-urlencoded",
}


def _headers(setup, content_type: str | None = FORM) -> dict[str, str]:
    out = {"authorization": basic(*setup.rs.auth)}
    if content_type is not None:
        out["content-type"] = content_type
    return out


class TestContentType:
    @pytest.mark.parametrize("path", OAUTH_PATHS)
    async def test_json(self, http, setup, path):
        """A JSON body is refused with invalid_request (RFC 6749 §3.2, RFC 7662 §2.1)."""
        r = await http.post(path, json={"token": "x"}, auth=setup.rs.auth)

        assert r.status_code == 400
        assert r.json() == WRONG_TYPE
        assert r.headers["cache-control"] == "no-store"

    @pytest.mark.parametrize("path", OAUTH_PATHS)
    async def test_multipart(self, http, setup, path):
        """A multipart body is refused with invalid_request (RFC 6749 §3.2)."""
        r = await http.post(path, data={"token": "x"}, files={"f": b"x"}, auth=setup.rs.auth)

        assert r.status_code == 400
        assert r.json() == WRONG_TYPE

    @pytest.mark.parametrize("path", OAUTH_PATHS)
    async def test_missing(self, http, setup, path):
        """A body without Content-Type is refused with invalid_request (RFC 6749 §3.2)."""
        r = await http.post(path, content=b"token=x", headers=_headers(setup, None))

        assert r.status_code == 400
        assert r.json() == WRONG_TYPE

    async def test_text_plain(self, http, setup):
        """A text/plain body is refused even if it looks like a form."""
        r = await http.post(INTROSPECT, content=b"token=x", headers=_headers(setup, "text/plain"))

        assert r.status_code == 400
        assert r.json() == WRONG_TYPE

    async def test_media_type_case_insensitive(self, http, setup):
        """Media type names are case-insensitive (RFC 9110 §8.3.1)."""
        r = await http.post(
            INTROSPECT,
            content=b"token=x",
            headers=_headers(setup, "Application/X-WWW-Form-URLEncoded"),
        )

        assert r.status_code == 200
        assert r.json() == {"active": False}


class TestEncoding:
    @pytest.mark.parametrize("body", [b"token=%ff", b"token=%C3%28", b"%ff=x", b"token=a%e9b"])
    async def test_non_utf8_percent_encoding(self, http, setup, body):
        """Percent-encoded bytes that are not UTF-8 are 400 invalid_request (RFC 6749 App. B)."""
        r = await http.post(INTROSPECT, content=body, headers=_headers(setup))

        assert r.status_code == 400
        assert r.json() == {
            "error": "invalid_request",
            "error_description": "form parameters must be UTF-8",
        }

    @pytest.mark.parametrize("body", [b"token=\xe9", "token=é".encode(), b"token=\x00\xff"])
    async def test_raw_non_ascii(self, http, setup, body):
        """Raw non-ASCII bytes in a urlencoded body are 400 invalid_request."""
        r = await http.post(INTROSPECT, content=body, headers=_headers(setup))

        assert r.status_code == 400
        assert r.json() == {
            "error": "invalid_request",
            "error_description": "request body is not application/x-www-form-urlencoded",
        }

    @pytest.mark.parametrize("body", [b"a=b&&=", b"token", b"token=x&&", b"&token=x", b"=&="])
    async def test_malformed_form(self, http, setup, body):
        """A body that is not name=value pairs is 400 invalid_request."""
        r = await http.post(INTROSPECT, content=body, headers=_headers(setup))

        assert r.status_code == 400
        assert r.json() == {
            "error": "invalid_request",
            "error_description": "malformed application/x-www-form-urlencoded body",
        }

    async def test_empty_body(self, http, setup):
        """An empty form is a request without token: 400 invalid_request (RFC 7662 §2.1)."""
        r = await http.post(INTROSPECT, content=b"", headers=_headers(setup))

        assert r.status_code == 400
        assert r.json()["error_description"] == "missing parameter: token"

    async def test_too_many_fields(self, http, setup):
        """A form with an absurd number of fields is refused, not parsed."""
        body = "&".join(f"f{i}=x" for i in range(200)).encode()
        r = await http.post(INTROSPECT, content=body, headers=_headers(setup))

        assert r.status_code == 400
        assert r.json()["error"] == "invalid_request"

    async def test_percent_encoded_utf8_is_fine(self, http, setup):
        """Percent-encoded UTF-8 is decoded normally (RFC 6749 Appendix B)."""
        r = await http.post(INTROSPECT, content=b"token=%C3%A9", headers=_headers(setup))

        assert r.status_code == 200
        assert r.json() == {"active": False}


class TestSize:
    @pytest.mark.parametrize("path", OAUTH_PATHS)
    async def test_oversized_body(self, http, setup, path):
        """A body above max_body_bytes is 413 with a JSON error."""
        r = await http.post(path, content=b"token=" + b"a" * 20000, headers=_headers(setup))

        assert r.status_code == 413
        assert r.json() == {
            "error": "invalid_request",
            "error_description": "request body exceeds 16384 bytes",
        }
        assert r.headers["cache-control"] == "no-store"

    async def test_oversized_streamed_body(self, http, setup):
        """A body streamed without Content-Length is cut off at the limit with 413."""

        async def chunks():
            yield b"token="
            for _ in range(40):
                yield b"a" * 1024

        r = await http.post(INTROSPECT, content=chunks(), headers=_headers(setup))

        assert r.status_code == 413
        assert r.json()["error"] == "invalid_request"

    async def test_streamed_body_within_limit(self, http, setup):
        """A small body sent in several chunks is read whole."""

        async def chunks():
            yield b"tok"
            yield b"en=abc"

        r = await http.post(INTROSPECT, content=chunks(), headers=_headers(setup))

        assert r.status_code == 200
        assert r.json() == {"active": False}

    async def test_at_limit_is_accepted(self, http, setup):
        """A body of exactly max_body_bytes is accepted."""
        body = b"token=" + b"a" * (16384 - 6)
        r = await http.post(INTROSPECT, content=body, headers=_headers(setup))

        assert r.status_code == 200
        assert r.json() == {"active": False}

    async def test_bad_content_length(self, http, setup):
        """A non-numeric Content-Length is 400, never 500."""
        r = await http.post(
            INTROSPECT,
            content=b"token=x",
            headers={**_headers(setup), "content-length": "7x"},
        )

        assert r.status_code == 400
        assert r.json() == {
            "error": "invalid_request",
            "error_description": "malformed Content-Length",
        }


class TestMethodAndPath:
    @pytest.mark.parametrize("method", ["GET", "PUT", "DELETE", "PATCH", "OPTIONS"])
    @pytest.mark.parametrize("path", OAUTH_PATHS)
    async def test_non_post_is_405(self, http, path, method):
        """Other methods on the POST-only OAuth endpoints are 405 with Allow: POST (§3.2)."""
        r = await http.request(method, path)

        assert r.status_code == 405
        assert r.headers["allow"] == "POST"
        assert r.headers["content-type"] == "application/json"
        body = r.json()
        assert body["error"] == "invalid_request"
        assert body["error_description"].startswith("use POST for the ")

    async def test_get_with_query_is_405(self, http, setup, issue_token):
        """Credentials or tokens in a query string are never processed (RFC 6749 §3.2)."""
        token = await issue_token(setup.app)
        r = await http.get(INTROSPECT, params={"token": token}, auth=setup.rs.auth)

        assert r.status_code == 405

    async def test_unknown_path(self, http):
        """An unknown path is 404 with a JSON error body."""
        r = await http.get("/nope")

        assert r.status_code == 404
        assert r.headers["content-type"] == "application/json"
        assert r.json() == {"error": "invalid_request", "error_description": "Not Found"}

    async def test_post_to_unknown_path(self, http):
        """A POST to an unknown path is 404 JSON too."""
        r = await http.post("/oauth2/nothing-here", data={"a": "b"})

        assert r.status_code == 404
        assert r.json()["error"] == "invalid_request"

    async def test_post_on_metadata_is_405(self, http):
        """The metadata document only answers GET: other methods are 405 JSON."""
        r = await http.post("/.well-known/oauth-authorization-server")

        assert r.status_code == 405
        assert r.json()["error"] == "invalid_request"
        assert "GET" in r.headers["allow"]


class TestRequestId:
    async def test_given_id_is_echoed(self, http):
        """A well-formed X-Request-Id is echoed back for correlation."""
        r = await http.post(TOKEN, data={}, headers={"x-request-id": "abc-123"})

        assert r.headers["x-request-id"] == "abc-123"

    async def test_bad_id_is_replaced(self, http):
        """An X-Request-Id with unsafe characters is replaced by a fresh one."""
        r = await http.post(TOKEN, data={}, headers={"x-request-id": "a b<script>"})

        rid = r.headers["x-request-id"]
        assert rid != "a b<script>"
        assert len(rid) == 16
        int(rid, 16)
