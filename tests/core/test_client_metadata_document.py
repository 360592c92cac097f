"""Client ID metadata documents, the pure rules (draft-ietf-oauth-client-id-metadata-document):
client identifier URLs (§3), special-use addresses (§8.6), cache lifetimes (§5.2) and the
document checks (§4, §4.1)."""

from __future__ import annotations

import ipaddress
from typing import Any

import pytest

from keystile.core.client_metadata_document import (
    ClientIdUrlError,
    cache_lifetime,
    check_client_id_url,
    check_document,
    host_matches,
    is_client_id_url,
    is_special_use,
)
from keystile.errors import InvalidClientMetadata, InvalidRedirectUri, OAuthError

URL = "https://app.example.com/oauth/client.json"


class TestClientIdUrl:
    @pytest.mark.parametrize(
        ("url", "host", "port"),
        [
            (URL, "app.example.com", 443),
            ("https://app.example.com:8443/c", "app.example.com", 8443),
            ("https://app.example.com/c?v=1", "app.example.com", 443),
            ("https://APP.example.com/c", "app.example.com", 443),
        ],
    )
    def test_valid(self, url, host, port):
        """Draft §3: https, a host, a path; a port and a query are allowed."""
        assert check_client_id_url(url) == (host, port)

    @pytest.mark.parametrize(
        "url",
        [
            "http://app.example.com/c",
            "https://app.example.com",
            "https://app.example.com/",
            "https://user@app.example.com/c",
            "https://user:pw@app.example.com/c",
            "https://app.example.com/c#frag",
            "https://app.example.com/./c",
            "https://app.example.com/a/../c",
            "https://app.example.com/a/%2e%2E/c",
            "https://app.example.com/a/.",
            "https://app.exämple.com/c",
            "https://app.example.com/c d",
            "https://app.example.com:99999/c",
            "https://app_example.com/c",
            "https:///c",
            "https://app.example.com/%zz",
            "https://app.example.com/" + "a" * 2000,
        ],
    )
    def test_invalid(self, url):
        """Draft §3: no other scheme, no missing or root path, no user information, no
        fragment, no dot segments (also percent-encoded); and only what we can resolve."""
        with pytest.raises(ClientIdUrlError):
            check_client_id_url(url)

    def test_candidates(self):
        """Only https URLs are looked up as documents (draft §7.1); keystile's own ids are
        never URLs."""
        assert is_client_id_url(URL)
        assert not is_client_id_url("dcr_abc")
        assert not is_client_id_url("http://app.example.com/c")


class TestSpecialUse:
    @pytest.mark.parametrize(
        "address",
        [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",  # cloud metadata endpoints
            "100.64.0.1",  # shared address space (CGNAT)
            "0.0.0.0",  # noqa: S104 - an address under test, not a bind
            "224.0.0.1",
            "240.0.0.1",
            "255.255.255.255",
            "192.0.2.1",
            "198.18.0.1",
            "::1",
            "::",
            "fe80::1",
            "fc00::1",
            "ff02::1",
            "2001:db8::1",
            "::ffff:127.0.0.1",
            "::ffff:10.0.0.1",
            "64:ff9b::a00:1",  # NAT64 of 10.0.0.1
            "2002:a00:1::1",  # 6to4
            "2001::1",  # Teredo
        ],
    )
    def test_refused(self, address):
        """Draft §8.6: RFC 6890 special-use addresses, also when embedded in IPv6."""
        assert is_special_use(ipaddress.ip_address(address))

    @pytest.mark.parametrize(
        "address", ["93.184.216.34", "8.8.8.8", "2606:4700::1111", "::ffff:93.184.216.34"]
    )
    def test_public(self, address):
        """Public unicast addresses may be fetched."""
        assert not is_special_use(ipaddress.ip_address(address))


def test_host_patterns():
    """Exact hosts and *.example.com (names below it only), case-insensitive."""
    patterns = ["Exact.example", "*.example.com"]
    assert host_matches("exact.example", patterns)
    assert host_matches("a.b.example.com", patterns)
    assert not host_matches("example.com", patterns)
    assert not host_matches("badexample.com", patterns)
    assert not host_matches("other.example", patterns)


@pytest.mark.parametrize(
    ("header", "ttl"),
    [
        (None, 60),
        ("max-age=600", 600),
        ("public, max-age=600", 600),
        ('max-age="600"', 600),
        ("max-age=5", 60),
        ("max-age=999999", 3600),
        ("no-store", 60),
        ("max-age=600, no-cache", 60),
        ("max-age=abc", 60),
        ("s-maxage=900", 900),
    ],
)
def test_cache_lifetime(header, ttl):
    """Draft §5.2: Cache-Control max-age (RFC 9111 §5.2.2) within the configured bounds;
    no-store, no-cache, invalid or absent: the lower bound."""
    assert cache_lifetime(header, minimum=60, maximum=3600) == ttl


def document(**fields: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "client_id": URL,
        "client_name": "Example",
        "redirect_uris": ["https://app.example.com/cb"],
    }
    body.update(fields)
    return {k: v for k, v in body.items() if v is not None}


class TestDocument:
    def test_public_client_by_default(self):
        """Draft §4.1: without token_endpoint_auth_method the client is public (none)."""
        metadata = check_document(document(), url=URL, scope_ceiling=frozenset({"read"}))
        assert metadata.token_endpoint_auth_method == "none"
        assert metadata.grant_types == ("authorization_code",)
        assert metadata.scope == frozenset({"read"})
        assert metadata.redirect_uris == ("https://app.example.com/cb",)

    @pytest.mark.parametrize(
        ("fields", "message"),
        [
            ({"client_id": URL + "?"}, "must equal its URL"),
            ({"client_id": "https://app.example.com:443/oauth/client.json"}, "must equal"),
            ({"client_id": None}, "must equal"),
            ({"client_secret": "x"}, "client_secret must not appear"),
            ({"client_secret_expires_at": 0}, "client_secret_expires_at"),
            ({"token_endpoint_auth_method": "client_secret_post"}, "shared secret"),
            ({"token_endpoint_auth_method": "private_key_jwt"}, "jwks"),
            ({"jwks_uri": "https://app.example.com/jwks"}, "jwks_uri"),
            ({"jwks": {"keys": [{"kty": "oct", "k": "c2VjcmV0"}]}}, "public keys only"),
            ({"grant_types": ["client_credentials"]}, "client_credentials"),
            ({"scope": "read admin"}, "scope beyond"),
            # draft §4.3 allows one, but no statement issuer is trusted here
            ({"software_statement": "a.b.c"}, "software statements"),
        ],
    )
    def test_refused(self, fields, message):
        """Draft §4 (client_id equals the URL, simple string comparison), §4.1 (no shared
        secrets, public keys only) and the registration rules."""
        with pytest.raises(OAuthError, match=message):
            check_document(document(**fields), url=URL, scope_ceiling=frozenset({"read"}))

    @pytest.mark.parametrize(
        "uris", [[], ["https://app.example.com/cb#x"], ["http://app.example.com/cb"], "x"]
    )
    def test_bad_redirect_uris(self, uris):
        """Draft §4.2: redirect URIs are required and checked as for registration."""
        with pytest.raises(InvalidRedirectUri):
            check_document(document(redirect_uris=uris), url=URL, scope_ceiling=frozenset())

    def test_not_an_object(self):
        """Draft §4: a JSON object."""
        with pytest.raises(InvalidClientMetadata, match="JSON object"):
            check_document([URL], url=URL, scope_ceiling=frozenset())
