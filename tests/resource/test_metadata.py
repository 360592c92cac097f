"""Protected resource metadata (RFC 9728): the document, where it lives, how it is served."""

import httpx
import pytest
from starlette.applications import Starlette

from keystile.resource.metadata import (
    ProtectedResourceMetadata,
    metadata_endpoint,
    metadata_route,
)


class TestDocument:
    def test_minimal_document(self):
        """With only a resource, the document has it and the header bearer method (§2)."""
        m = ProtectedResourceMetadata(resource="https://api.example.test")
        assert m.document() == {
            "resource": "https://api.example.test",
            "bearer_methods_supported": ["header"],
        }

    def test_full_document(self):
        """Every given member appears with its RFC 9728 §2 name; extras are added, never
        overriding a standard member."""
        m = ProtectedResourceMetadata(
            resource="https://api.example.test",
            authorization_servers=["https://as.example.test"],
            scopes_supported=["read"],
            bearer_methods_supported=[],
            resource_name="API",
            resource_documentation="https://api.example.test/docs",
            resource_policy_uri="https://api.example.test/policy",
            resource_tos_uri="https://api.example.test/tos",
            jwks_uri="https://api.example.test/jwks",
            extra={"dpop_bound_access_tokens_required": False, "resource": "ignored"},
        )
        assert m.document() == {
            "resource": "https://api.example.test",
            "authorization_servers": ["https://as.example.test"],
            "jwks_uri": "https://api.example.test/jwks",
            "scopes_supported": ["read"],
            "bearer_methods_supported": [],
            "resource_name": "API",
            "resource_documentation": "https://api.example.test/docs",
            "resource_policy_uri": "https://api.example.test/policy",
            "resource_tos_uri": "https://api.example.test/tos",
            "dpop_bound_access_tokens_required": False,
        }

    @pytest.mark.parametrize(
        ("resource", "path", "url"),
        [
            (
                "https://api.example.test",
                "/.well-known/oauth-protected-resource",
                "https://api.example.test/.well-known/oauth-protected-resource",
            ),
            (
                "https://api.example.test/",
                "/.well-known/oauth-protected-resource",
                "https://api.example.test/.well-known/oauth-protected-resource",
            ),
            (
                "https://api.example.test:8443/v1/orders",
                "/.well-known/oauth-protected-resource/v1/orders",
                "https://api.example.test:8443/.well-known/oauth-protected-resource/v1/orders",
            ),
        ],
    )
    def test_well_known_location(self, resource, path, url):
        """The well-known suffix goes between the host and the resource's path (§3.1)."""
        m = ProtectedResourceMetadata(resource=resource)
        assert m.path == path
        assert m.url == url

    @pytest.mark.parametrize(
        "resource", ["api.example.test", "https://api.example.test/#frag", "urn:example:api"]
    )
    def test_bad_resource_identifiers_are_refused(self, resource):
        """A resource identifier must be an absolute http(s) URL without fragment (§1.2)."""
        with pytest.raises(ValueError, match="resource"):
            ProtectedResourceMetadata(resource=resource)

    def test_a_string_for_a_list_is_refused(self):
        """A single string given for a list member is a mistake, not a list of characters."""
        with pytest.raises(ValueError, match="lists"):
            ProtectedResourceMetadata(
                resource="https://api.example.test", authorization_servers="https://as.test"
            )


class TestServing:
    async def test_asgi_endpoint_and_route(self):
        """The Starlette route answers GET and HEAD with the JSON document and refuses
        other methods (§3.2)."""
        m = ProtectedResourceMetadata(resource="https://api.example.test/v1", resource_name="v1")
        app = Starlette(routes=[metadata_route(m)])
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="https://api.test") as c:
            r = await c.get(m.path)
            assert r.status_code == 200
            assert r.headers["content-type"] == "application/json"
            assert r.json()["resource"] == "https://api.example.test/v1"
            head = await c.head(m.path)
            assert head.status_code == 200
            assert head.content == b""
            assert (await c.post(m.path)).status_code == 405
            assert (await c.get("/.well-known/oauth-protected-resource")).status_code == 404

    async def test_bare_endpoint_refuses_post(self):
        """The pure ASGI endpoint itself answers 405 with Allow to anything but GET/HEAD."""
        endpoint = metadata_endpoint(ProtectedResourceMetadata(resource="https://api.test"))
        transport = httpx.ASGITransport(app=endpoint)
        async with httpx.AsyncClient(transport=transport, base_url="https://api.test") as c:
            r = await c.put("/anything")
            assert r.status_code == 405
            assert r.headers["allow"] == "GET, HEAD"
