"""Scope and audience of client_credentials tokens (keystile.core.issuance, RFC 6749 §4.4)."""

from __future__ import annotations

import pytest

from keystile.core.issuance import check_resource_uri, client_credentials_grant
from keystile.core.models import Client
from keystile.errors import InvalidScope, InvalidTarget, UnauthorizedClient

API = "https://api.example.test"
OTHER = "https://other.example.test"
KNOWN = frozenset({API, OTHER})


def _client(**changes) -> Client:
    fields = {
        "client_id": "app-1",
        "name": "app-1",
        "secret_hash": b"\0" * 32,
        "auth_method": "client_secret_basic",
        "grant_types": frozenset({"client_credentials"}),
        "scopes": frozenset({"read", "write"}),
        "default_audience": (API,),
        "access_token_ttl": 600,
        "enabled": True,
        "created_at": 0,
        "updated_at": 0,
        **changes,
    }
    return Client(**fields)


def _grant(client=None, scope=None, resources=()):
    return client_credentials_grant(
        client or _client(),
        requested_scope=scope,
        resources=list(resources),
        known_resources=KNOWN,
    )


class TestScope:
    def test_default_all(self):
        """No requested scope grants all the client's scopes (RFC 6749 §3.3)."""
        assert _grant().scope == frozenset({"read", "write"})

    def test_subset(self):
        """A subset is granted as asked (RFC 6749 §3.3)."""
        assert _grant(scope="read").scope == frozenset({"read"})

    def test_beyond(self):
        """A scope beyond the client's is invalid_scope, not echoing the input (RFC 6749 §5.2)."""
        with pytest.raises(InvalidScope) as info:
            _grant(scope="read admin delete")

        assert info.value.description == ("requested scope exceeds what this client may have")

    def test_ttl(self):
        """The grant carries the client's access-token lifetime."""
        assert _grant().ttl == 600


class TestAudience:
    def test_default(self):
        """Without resources the client's default audience applies."""
        assert _grant().aud == (API,)

    def test_resources_in_order_deduplicated(self):
        """Resources become the audience, in order, each once (RFC 8707 §2)."""
        assert _grant(resources=[OTHER, API, OTHER]).aud == (OTHER, API)

    def test_unknown(self):
        """An unregistered resource is invalid_target (RFC 8707 §2)."""
        with pytest.raises(InvalidTarget):
            _grant(resources=["https://unknown.example.test"])

    def test_grant_type_required(self):
        """A client without the client_credentials grant is unauthorized_client (§5.2)."""
        with pytest.raises(UnauthorizedClient):
            _grant(_client(grant_types=frozenset()))


class TestResourceUri:
    @pytest.mark.parametrize("value", [API, API + "/v1?x=1", "http://localhost:8080"])
    def test_absolute(self, value):
        """An absolute URI, with path or query, is accepted (RFC 8707 §2)."""
        assert check_resource_uri(value) == value

    @pytest.mark.parametrize(
        "value", [API + "#f", API + "#", "/path", "api.example.test", "", "https://[::1"]
    )
    def test_refused(self, value):
        """Relative URIs, fragments (even empty) and unparsable URIs are invalid_target."""
        with pytest.raises(InvalidTarget) as info:
            check_resource_uri(value)

        assert info.value.status_code == 400
