"""Which credentials a request carries (keystile.core.client_auth, RFC 6749 §2.3)."""

from __future__ import annotations

from base64 import b64encode

import pytest

from keystile.core.client_auth import (
    BASIC_CHALLENGE,
    ClientCredentials,
    check_client,
    extract_credentials,
)
from keystile.core.models import Client
from keystile.core.tokens import new_client_secret, token_hash
from keystile.errors import InvalidClient, InvalidRequest


def _basic(raw: str | bytes) -> str:
    data = raw.encode() if isinstance(raw, str) else raw
    return "Basic " + b64encode(data).decode()


class TestBasic:
    def test_plain(self):
        """Basic credentials give client id, secret and method client_secret_basic (§2.3.1)."""
        creds = extract_credentials(_basic("app-1:s3cret"), {})

        assert creds == ClientCredentials("app-1", "s3cret", "client_secret_basic")

    def test_urlencoded(self):
        """Id and secret are form-urlencoded inside Basic (RFC 6749 §2.3.1)."""
        creds = extract_credentials(_basic("svc%3Areports%40x:a%2Bb+c"), {})

        assert creds is not None
        assert creds.client_id == "svc:reports@x"
        assert creds.secret == "a+b c"

    def test_colon_in_secret(self):
        """Only the first colon separates id and secret (RFC 7617 §2)."""
        creds = extract_credentials(_basic("app-1:a:b"), {})

        assert creds is not None
        assert (creds.client_id, creds.secret) == ("app-1", "a:b")

    def test_scheme_case_insensitive(self):
        """The scheme name is case-insensitive (RFC 9110 §11.1)."""
        creds = extract_credentials("bAsIc " + b64encode(b"a:b").decode(), {})

        assert creds is not None
        assert creds.client_id == "a"

    def test_matching_client_id_in_form_ok(self):
        """A form client_id equal to the Basic id is accepted."""
        creds = extract_credentials(_basic("app-1:s"), {"client_id": "app-1"})

        assert creds is not None
        assert creds.client_id == "app-1"

    def test_differing_client_id_in_form_refused(self):
        """A form client_id different from the Basic id is invalid_request."""
        with pytest.raises(InvalidRequest):
            extract_credentials(_basic("app-1:s"), {"client_id": "other"})

    @pytest.mark.parametrize(
        "header",
        [
            "Basic",
            "Basic ",
            "Basic %%%",
            "Basic " + b64encode(b"nocolon").decode(),
            _basic(b"\xff:\xfe"),
            _basic("a%ff:b"),
            _basic("a:b%ff"),
            "Basic YTpi=extra",
        ],
    )
    def test_malformed(self, header):
        """Undecodable Basic credentials are invalid_request (400), not an exception."""
        with pytest.raises(InvalidRequest) as info:
            extract_credentials(header, {})

        assert info.value.description == "malformed Basic credentials"
        assert info.value.status_code == 400

    @pytest.mark.parametrize("header", ["Bearer abc", "Digest x", "Token"])
    def test_other_scheme(self, header):
        """Any scheme but Basic is invalid_client with a Basic challenge (RFC 6749 §2.3.1)."""
        with pytest.raises(InvalidClient) as info:
            extract_credentials(header, {})

        assert info.value.status_code == 401
        assert info.value.headers == {"WWW-Authenticate": BASIC_CHALLENGE}

    @pytest.mark.parametrize("raw", [":secret", "app-1:", ":"])
    def test_empty_parts(self, raw):
        """An empty id or secret is invalid_client (401 with challenge)."""
        with pytest.raises(InvalidClient) as info:
            extract_credentials(_basic(raw), {})

        assert info.value.headers == {"WWW-Authenticate": BASIC_CHALLENGE}

    def test_overlong_id(self):
        """A client id over 255 characters is invalid_client."""
        with pytest.raises(InvalidClient):
            extract_credentials(_basic("a" * 256 + ":s"), {})


class TestPost:
    def test_post(self):
        """client_id and client_secret in the form give client_secret_post (§2.3.1)."""
        form = {"client_id": "app-1", "client_secret": "s3cret", "scope": "read"}
        creds = extract_credentials(None, form)

        assert creds == ClientCredentials("app-1", "s3cret", "client_secret_post")

    def test_secret_removed_from_form(self):
        """client_secret is taken out of the form so it cannot be echoed or logged later."""
        form = {"client_id": "app-1", "client_secret": "s3cret"}
        extract_credentials(None, form)

        assert form == {"client_id": "app-1"}

    def test_secret_without_id(self):
        """client_secret without client_id is invalid_request."""
        with pytest.raises(InvalidRequest):
            extract_credentials(None, {"client_secret": "s"})

    def test_both_methods(self):
        """Basic plus client_secret is invalid_request (RFC 6749 §2.3: one method only)."""
        with pytest.raises(InvalidRequest) as info:
            extract_credentials(_basic("a:b"), {"client_id": "a", "client_secret": "b"})

        assert info.value.description == "use one client authentication method, not two"

    def test_none(self):
        """No Authorization and no client_secret: no credentials at all."""
        assert extract_credentials(None, {}) is None
        assert extract_credentials(None, {"client_id": "app-1"}) is None

    def test_secret_not_in_repr(self):
        """The credentials' repr never shows the secret."""
        creds = extract_credentials(None, {"client_id": "a", "client_secret": "topsecret"})

        assert "topsecret" not in repr(creds)


def _client(secret: str, **changes) -> Client:
    fields = {
        "client_id": "app-1",
        "name": "app-1",
        "secret_hash": token_hash(secret),
        "auth_method": "client_secret_basic",
        "grant_types": frozenset({"client_credentials"}),
        "scopes": frozenset({"read"}),
        "default_audience": (),
        "access_token_ttl": 3600,
        "enabled": True,
        "created_at": 0,
        "updated_at": 0,
        **changes,
    }
    return Client(**fields)


class TestCheckClient:
    def test_right_secret(self):
        """The right secret with the registered method returns the client."""
        secret = new_client_secret()
        client = _client(secret)

        assert check_client(client, ClientCredentials("app-1", secret, "client_secret_basic")) is (
            client
        )

    @pytest.mark.parametrize("case", ["unknown", "wrong", "disabled"])
    def test_failures_read_the_same(self, case):
        """Unknown client, wrong secret and disabled client raise the same error (§5.2)."""
        secret = new_client_secret()
        client = {
            "unknown": None,
            "wrong": _client(new_client_secret()),
            "disabled": _client(secret, enabled=False),
        }[case]
        with pytest.raises(InvalidClient) as info:
            check_client(client, ClientCredentials("app-1", secret, "client_secret_basic"))

        assert info.value.body() == {
            "error": "invalid_client",
            "error_description": "client authentication failed",
        }
        assert info.value.headers == {"WWW-Authenticate": BASIC_CHALLENGE}

    def test_wrong_method(self):
        """The right secret by the wrong method is invalid_client (RFC 6749 §2.3)."""
        secret = new_client_secret()
        with pytest.raises(InvalidClient) as info:
            check_client(_client(secret), ClientCredentials("app-1", secret, "client_secret_post"))

        assert info.value.description == "client is registered for client_secret_basic"
