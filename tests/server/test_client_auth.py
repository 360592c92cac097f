"""Client authentication at the OAuth endpoints (RFC 6749 §2.3)."""

from __future__ import annotations

from base64 import b64encode

import pytest

from keystile.core.client_auth import BASIC_CHALLENGE
from tests.conftest import INTROSPECT, REVOKE, TOKEN, basic

CC = {"grant_type": "client_credentials"}
FORM = "application/x-www-form-urlencoded"
INVALID_CLIENT = {"error": "invalid_client", "error_description": "client authentication failed"}


def _raw_auth(value: bytes | str) -> dict[str, bytes | str]:
    return {"authorization": value, "content-type": FORM}


class TestMethods:
    async def test_basic_works_for_basic_client(self, http, setup):
        """client_secret_basic authenticates a client registered for it (RFC 6749 §2.3.1)."""
        r = await http.post(TOKEN, data=CC, auth=setup.app.auth)

        assert r.status_code == 200

    async def test_post_works_for_post_client(self, http, register_client):
        """client_secret_post authenticates a client registered for it (RFC 6749 §2.3.1)."""
        c = await register_client("post-1", auth_method="client_secret_post")
        r = await http.post(TOKEN, data={**CC, "client_id": c.client_id, "client_secret": c.secret})

        assert r.status_code == 200

    async def test_post_for_basic_client_is_invalid_client(self, http, setup):
        """A client registered for Basic may not use client_secret_post (RFC 6749 §2.3)."""
        r = await http.post(
            TOKEN, data={**CC, "client_id": "app-1", "client_secret": setup.app.secret}
        )

        assert r.status_code == 401
        assert r.json() == {
            "error": "invalid_client",
            "error_description": "client is registered for client_secret_basic",
        }
        assert r.headers["www-authenticate"] == BASIC_CHALLENGE

    async def test_basic_for_post_client_is_invalid_client(self, http, register_client):
        """A client registered for client_secret_post may not use Basic (RFC 6749 §2.3)."""
        c = await register_client("post-1", auth_method="client_secret_post")
        r = await http.post(TOKEN, data=CC, auth=c.auth)

        assert r.status_code == 401
        assert r.json() == {
            "error": "invalid_client",
            "error_description": "client is registered for client_secret_post",
        }
        assert r.headers["www-authenticate"] == BASIC_CHALLENGE

    async def test_both_methods_at_once_is_invalid_request(self, http, setup):
        """Basic and client_secret at once is invalid_request (RFC 6749 §2.3: only one method)."""
        r = await http.post(
            TOKEN, data={**CC, "client_secret": setup.app.secret}, auth=setup.app.auth
        )

        assert r.status_code == 400
        assert r.json() == {
            "error": "invalid_request",
            "error_description": "use one client authentication method, not two",
        }

    async def test_secret_without_client_id_is_invalid_request(self, http, setup):
        """client_secret without client_id names no client: invalid_request (RFC 6749 §2.3.1)."""
        r = await http.post(TOKEN, data={**CC, "client_secret": setup.app.secret})

        assert r.status_code == 400
        assert r.json()["error"] == "invalid_request"

    @pytest.mark.parametrize("path", [TOKEN, INTROSPECT, REVOKE])
    async def test_no_credentials_is_401_with_challenge(self, http, setup, path):
        """A request without credentials is 401 invalid_client with WWW-Authenticate (§5.2)."""
        r = await http.post(path, data={**CC, "token": "x"})

        assert r.status_code == 401
        assert r.json() == {
            "error": "invalid_client",
            "error_description": "client authentication required",
        }
        assert r.headers["www-authenticate"] == BASIC_CHALLENGE
        assert r.headers["cache-control"] == "no-store"

    async def test_client_id_alone_is_not_authentication(self, http, setup):
        """A client_id without a secret authenticates nobody (RFC 6749 §2.3.1)."""
        r = await http.post(TOKEN, data={**CC, "client_id": "app-1"})

        assert r.status_code == 401
        assert r.headers["www-authenticate"] == BASIC_CHALLENGE

    async def test_empty_secret_in_post_is_omitted(self, http, register_client):
        """client_secret= with no value counts as omitted (RFC 6749 §3.1), so 401."""
        c = await register_client("post-1", auth_method="client_secret_post")
        r = await http.post(TOKEN, data={**CC, "client_id": c.client_id, "client_secret": ""})

        assert r.status_code == 401
        assert r.json()["error"] == "invalid_client"


class TestFailures:
    async def test_wrong_secret(self, http, setup):
        """A wrong secret is 401 invalid_client with a Basic challenge (RFC 6749 §5.2)."""
        r = await http.post(TOKEN, data=CC, auth=("app-1", setup.app.secret + "x"))

        assert r.status_code == 401
        assert r.json() == INVALID_CLIENT
        assert r.headers["www-authenticate"] == BASIC_CHALLENGE

    async def test_unknown_client(self, http, setup):
        """An unknown client id is 401 invalid_client with a Basic challenge (RFC 6749 §5.2)."""
        r = await http.post(TOKEN, data=CC, auth=("nobody", setup.app.secret))

        assert r.status_code == 401
        assert r.json() == INVALID_CLIENT
        assert r.headers["www-authenticate"] == BASIC_CHALLENGE

    async def test_unknown_and_wrong_secret_read_the_same(self, http, setup):
        """Unknown client and wrong secret give byte-identical answers, hiding which ids exist."""
        wrong = await http.post(TOKEN, data=CC, auth=("app-1", "nope"))
        unknown = await http.post(TOKEN, data=CC, auth=("ghost", "nope"))

        assert wrong.status_code == unknown.status_code == 401
        assert wrong.content == unknown.content
        drop = {"x-request-id"}
        assert {k: v for k, v in wrong.headers.items() if k not in drop} == {
            k: v for k, v in unknown.headers.items() if k not in drop
        }

    async def test_disabled_client(self, http, setup, store, clock):
        """A disabled client cannot authenticate, even with its right secret (RFC 6749 §5.2)."""
        await store.set_client_enabled("app-1", False, clock.now())
        r = await http.post(TOKEN, data=CC, auth=setup.app.auth)

        assert r.status_code == 401
        assert r.json() == INVALID_CLIENT
        assert r.headers["www-authenticate"] == BASIC_CHALLENGE

    async def test_reenabled_client_works_again(self, http, setup, store, clock):
        """Re-enabling a client lets it authenticate again."""
        await store.set_client_enabled("app-1", False, clock.now())
        await store.set_client_enabled("app-1", True, clock.now())

        assert (await http.post(TOKEN, data=CC, auth=setup.app.auth)).status_code == 200

    async def test_rotated_secret_stops_old_one(self, http, setup, store, clock):
        """After a secret rotation the old secret fails and the new one works."""
        from keystile import admin

        _, new = await admin.rotate_secret(store, clock, "app-1")

        assert (await http.post(TOKEN, data=CC, auth=setup.app.auth)).status_code == 401
        assert (await http.post(TOKEN, data=CC, auth=("app-1", new))).status_code == 200

    async def test_introspection_with_wrong_secret(self, http, setup, issue_token):
        """The introspection endpoint refuses a wrong secret with 401 (RFC 7662 §2.1)."""
        token = await issue_token(setup.app)
        r = await http.post(INTROSPECT, data={"token": token}, auth=("rs-1", "wrong"))

        assert r.status_code == 401
        assert r.json() == INVALID_CLIENT
        assert r.headers["www-authenticate"] == BASIC_CHALLENGE

    async def test_overlong_client_id(self, http, setup):
        """A client id longer than any registrable one is invalid_client, not a crash."""
        r = await http.post(TOKEN, data=CC, auth=("a" * 300, "secret"))

        assert r.status_code == 401
        assert r.json() == INVALID_CLIENT


class TestBasicEncoding:
    @pytest.mark.parametrize("client_id", ["svc:reports", "bot@example.test", "a.b_c-d:e@f"])
    async def test_urlencoded_client_id(self, http, register_client, client_id):
        """Basic credentials are form-urlencoded first, so ':' and '@' in ids work (§2.3.1)."""
        c = await register_client(client_id)
        r = await http.post(
            TOKEN, content="grant_type=client_credentials", headers=_raw_auth(basic(*c.auth))
        )

        assert r.status_code == 200

    async def test_colon_id_unencoded_fails(self, http, register_client):
        """An unencoded ':' in a Basic user splits the id at the colon (RFC 6749 §2.3.1)."""
        c = await register_client("svc:reports")
        raw = b64encode(f"{c.client_id}:{c.secret}".encode()).decode()
        r = await http.post(
            TOKEN, content="grant_type=client_credentials", headers=_raw_auth("Basic " + raw)
        )

        assert r.status_code == 401
        assert r.json() == INVALID_CLIENT

    async def test_lowercase_scheme(self, http, setup):
        """The auth scheme name is case-insensitive (RFC 9110 §11.1)."""
        value = "basic " + basic(*setup.app.auth).split(" ", 1)[1]
        r = await http.post(
            TOKEN, content="grant_type=client_credentials", headers=_raw_auth(value)
        )

        assert r.status_code == 200

    async def test_post_client_id_with_colon(self, http, register_client):
        """client_secret_post takes the id from the form, percent-decoded (RFC 6749 §2.3.1)."""
        c = await register_client("svc:post@x", auth_method="client_secret_post")
        r = await http.post(TOKEN, data={**CC, "client_id": c.client_id, "client_secret": c.secret})

        assert r.status_code == 200


class TestMalformedAuthorization:
    @pytest.mark.parametrize(
        "value",
        [
            "Basic !!!notbase64!!!",
            "Basic " + b64encode(b"no-colon-here").decode(),
            "Basic",
            "Basic    ",
            "Basic " + b64encode(b"\xff\xfe:\xff").decode(),
            "Basic " + b64encode(b"app-1%ff:secret").decode(),
            "Basic " + b64encode(b"app-1:sec%ffret").decode(),
        ],
        ids=[
            "bad-base64",
            "no-colon",
            "no-param",
            "blank-param",
            "not-utf8",
            "bad-pct-id",
            "bad-pct-secret",
        ],
    )
    async def test_malformed_basic_is_invalid_request(self, http, setup, value):
        """Undecodable Basic credentials are 400 invalid_request, never 500 (RFC 6749 §5.2)."""
        r = await http.post(
            TOKEN, content="grant_type=client_credentials", headers=_raw_auth(value)
        )

        assert r.status_code == 400
        assert r.json() == {
            "error": "invalid_request",
            "error_description": "malformed Basic credentials",
        }
        assert r.headers["cache-control"] == "no-store"

    @pytest.mark.parametrize("value", ["Bearer abc", "Digest username=x", "Negotiate"])
    async def test_other_scheme_is_invalid_client(self, http, setup, value):
        """A non-Basic scheme is 401 invalid_client with a Basic challenge (RFC 6749 §2.3.1)."""
        r = await http.post(
            TOKEN, content="grant_type=client_credentials", headers=_raw_auth(value)
        )

        assert r.status_code == 401
        assert r.json() == {
            "error": "invalid_client",
            "error_description": "unsupported authorization scheme; use HTTP Basic",
        }
        assert r.headers["www-authenticate"] == BASIC_CHALLENGE

    async def test_non_ascii_header_bytes(self, http, setup):
        """Raw non-ASCII bytes in Authorization are 400 invalid_request, never 500."""
        r = await http.post(
            TOKEN,
            content="grant_type=client_credentials",
            headers=[(b"authorization", b"Basic \xe9\xff"), (b"content-type", FORM.encode())],
        )

        assert r.status_code == 400
        assert r.json() == {
            "error": "invalid_request",
            "error_description": "malformed Authorization header",
        }

    async def test_empty_client_id_in_basic(self, http, setup):
        """Basic credentials with an empty user name are invalid_client (RFC 6749 §2.3.1)."""
        value = "Basic " + b64encode(b":" + setup.app.secret.encode()).decode()
        r = await http.post(
            TOKEN, content="grant_type=client_credentials", headers=_raw_auth(value)
        )

        assert r.status_code == 401
        assert r.json() == INVALID_CLIENT

    async def test_two_authorization_headers(self, http, setup):
        """Two Authorization headers are a malformed request: 400 (RFC 6749 §2.3)."""
        good = basic(*setup.app.auth)
        r = await http.post(
            TOKEN,
            content="grant_type=client_credentials",
            headers=[("authorization", good), ("authorization", good), ("content-type", FORM)],
        )

        assert r.status_code == 400
        assert r.json() == {
            "error": "invalid_request",
            "error_description": "more than one Authorization header",
        }
