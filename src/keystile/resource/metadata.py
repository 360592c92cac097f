"""Protected resource metadata (RFC 9728): what a resource server tells clients about itself.

Clients that get a 401 find, through the ``resource_metadata`` parameter of the challenge
(RFC 9728 §5.1), which authorization servers issue tokens for this API and which scopes it
knows::

    metadata = ProtectedResourceMetadata(
        resource="https://api.example.com",
        authorization_servers=["https://auth.example.com"],
        scopes_supported=["orders:read", "orders:write"],
        resource_name="Orders API",
    )
    metadata.url   # "https://api.example.com/.well-known/oauth-protected-resource"
    metadata.path  # "/.well-known/oauth-protected-resource": mount the endpoint there

Serve it with ``metadata_endpoint(metadata)`` (pure ASGI), ``metadata_route(metadata)``
(a Starlette/FastAPI route) or the Flask extension (``KeystileFlask(..., metadata=...)``),
and give ``metadata.url`` to the middleware or framework helper as ``resource_metadata``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, MutableMapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit, urlunsplit

import orjson

if TYPE_CHECKING:
    from starlette.routing import Route

WELL_KNOWN = "/.well-known/oauth-protected-resource"

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


@dataclass(frozen=True)
class ProtectedResourceMetadata:
    """The RFC 9728 §2 document of one protected resource (its identifier is ``resource``)."""

    resource: str
    authorization_servers: Sequence[str] = ()
    scopes_supported: Sequence[str] = ()
    # Only the Authorization header: the SDK does not accept RFC 6750 §2.2/2.3 (form body,
    # query). An empty list says "no bearer method" (RFC 9728 §2); None leaves it out.
    bearer_methods_supported: Sequence[str] | None = ("header",)
    resource_name: str | None = None
    resource_documentation: str | None = None
    resource_policy_uri: str | None = None
    resource_tos_uri: str | None = None
    jwks_uri: str | None = None
    # Further RFC 9728 §2 members or registered extensions, copied as given.
    extra: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        parts = urlsplit(self.resource)
        # RFC 9728 §1.2: an https URL without a fragment (http is allowed for local testing).
        if parts.scheme not in ("https", "http") or not parts.netloc or parts.fragment:
            raise ValueError("resource must be an absolute http(s) URL without a fragment")
        if isinstance(self.authorization_servers, str) or isinstance(self.scopes_supported, str):
            raise ValueError("authorization_servers and scopes_supported are lists, not strings")

    @property
    def path(self) -> str:
        """Where to serve the document: the well-known prefix, then the resource's path
        (RFC 9728 §3.1)."""
        resource_path = urlsplit(self.resource).path.rstrip("/")
        return WELL_KNOWN + resource_path

    @property
    def url(self) -> str:
        """The document's URL, for the ``resource_metadata`` challenge parameter (§5.1)."""
        parts = urlsplit(self.resource)
        return urlunsplit((parts.scheme, parts.netloc, self.path, parts.query, ""))

    def document(self) -> dict[str, Any]:
        """The JSON object (RFC 9728 §2), empty members left out."""
        body: dict[str, Any] = {"resource": self.resource}
        if self.authorization_servers:
            body["authorization_servers"] = list(self.authorization_servers)
        if self.jwks_uri:
            body["jwks_uri"] = self.jwks_uri
        if self.scopes_supported:
            body["scopes_supported"] = list(self.scopes_supported)
        if self.bearer_methods_supported is not None:
            body["bearer_methods_supported"] = list(self.bearer_methods_supported)
        for name in (
            "resource_name",
            "resource_documentation",
            "resource_policy_uri",
            "resource_tos_uri",
        ):
            value = getattr(self, name)
            if value:
                body[name] = value
        for name, value in self.extra.items():
            body.setdefault(name, value)
        return body

    def json(self) -> bytes:
        return orjson.dumps(self.document())


class MetadataEndpoint:
    """A pure ASGI app answering ``GET`` with the document (RFC 9728 §3.2)."""

    def __init__(self, metadata: ProtectedResourceMetadata) -> None:
        self.metadata = metadata
        self.body = metadata.json()
        self.headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(self.body)).encode()),
            # Public and stable: clients and caches may keep it for a while.
            (b"cache-control", b"public, max-age=3600"),
        ]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        method = scope.get("method", "GET")
        if method not in ("GET", "HEAD"):
            headers = [(b"allow", b"GET, HEAD"), (b"content-length", b"0")]
            await send({"type": "http.response.start", "status": 405, "headers": headers})
            await send({"type": "http.response.body", "body": b""})
            return
        await send({"type": "http.response.start", "status": 200, "headers": self.headers})
        await send({"type": "http.response.body", "body": b"" if method == "HEAD" else self.body})


def metadata_endpoint(metadata: ProtectedResourceMetadata) -> ASGIApp:
    """The document as a pure ASGI app, to mount at ``metadata.path`` in any framework."""
    return MetadataEndpoint(metadata)


def metadata_route(metadata: ProtectedResourceMetadata) -> Route:
    """A Starlette/FastAPI route serving the document at ``metadata.path``::

    app = FastAPI(routes=[metadata_route(metadata)])
    """
    try:
        from starlette.routing import Route
    except ImportError as exc:  # pragma: no cover - depends on the installed extras
        raise ImportError(
            "metadata_route needs Starlette: "
            "pip install 'fastapi>=0.110' (keystile's fastapi extra)"
        ) from exc
    return Route(metadata.path, metadata_endpoint(metadata), methods=["GET", "HEAD"])
