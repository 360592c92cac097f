"""The route table: which policy and upstream a request gets, by host and path prefix.

Matching, in order:

1. the host: routes naming the request's host exactly, then those naming a ``*.suffix`` that
   matches it (the longest suffix first), then routes without a host; the first group with any
   matching route decides, as virtual hosts do;
2. within that group, the longest path prefix wins, on segment boundaries: ``/api`` matches
   ``/api``, ``/api/`` and ``/api/orders``, never ``/apix``.

Paths are compared after percent-decoding and collapsing repeated slashes; a path with a ``.``
or ``..`` segment is refused before matching (``BadPath``), so ``/public/../admin`` can never
be judged by the policy of ``/public`` and then reach ``/admin`` upstream.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field

import httpx

from keystile.gateway.config import RouteConfig
from keystile.gateway.pool import Origin, origin_of

_SLASHES = re.compile(r"/{2,}")


class BadPath(ValueError):
    """A request path the gateway will not judge (dot segments, not absolute)."""


@dataclass(frozen=True, slots=True)
class Route:
    """A compiled route: its configuration plus what the hot path needs precomputed."""

    config: RouteConfig
    label: str
    prefix: str
    upstream: httpx.URL | None
    origin: Origin | None
    upstream_host: bytes
    upstream_path: bytes
    scopes: frozenset[str]
    methods: frozenset[str]
    allow_header: bytes
    scope_text: str = field(default="")

    @classmethod
    def compile(cls, config: RouteConfig) -> Route:
        upstream = httpx.URL(config.upstream) if config.upstream else None
        methods = frozenset(config.methods)
        if methods and "GET" in methods:
            methods = methods | {"HEAD"}  # RFC 9110 §9.3.2: HEAD is GET without the body
        return cls(
            config=config,
            label=config.label,
            prefix=config.path,
            upstream=upstream,
            origin=origin_of(upstream) if upstream else None,
            upstream_host=upstream.netloc if upstream else b"",
            upstream_path=(upstream.raw_path.rstrip(b"/") if upstream else b""),
            scopes=frozenset(config.scopes),
            methods=methods,
            allow_header=", ".join(sorted(methods)).encode(),
            scope_text=" ".join(config.scopes),
        )

    def allows_method(self, method: str) -> bool:
        return not self.methods or method in self.methods


def normalize_path(path: str) -> str:
    """The path as routes see it: repeated slashes collapsed; dot segments refused."""
    if not path.startswith("/"):
        raise BadPath("the request path must be absolute")
    if "//" in path:
        path = _SLASHES.sub("/", path)
    if "/." in path:
        for segment in path.split("/"):
            if segment in (".", ".."):
                raise BadPath("the request path has a '.' or '..' segment")
    return path


def _host_of(host_header: str | None) -> str | None:
    """The host name of a Host header value, lower-case, without port or trailing dot."""
    if not host_header:
        return None
    host = host_header.strip().lower()
    if host.startswith("["):  # an IPv6 literal
        end = host.find("]")
        return host[: end + 1] if end > 0 else host
    return host.split(":", 1)[0].rstrip(".")


class RouteTable:
    """``table.match(host_header, path)`` → the Route, or None."""

    def __init__(self, routes: Iterable[RouteConfig]) -> None:
        self.routes = [Route.compile(r) for r in routes]
        self._exact: dict[str, list[Route]] = {}
        self._wildcard: list[tuple[str, list[Route]]] = []
        self._any: list[Route] = []
        wild: dict[str, list[Route]] = {}
        for route in self.routes:
            host = route.config.host
            if host is None:
                self._any.append(route)
            elif host.startswith("*."):
                wild.setdefault(host[1:], []).append(route)  # ".example.com"
            else:
                self._exact.setdefault(host, []).append(route)
        # Longest suffix first, so *.api.example.com beats *.example.com.
        self._wildcard = sorted(wild.items(), key=lambda kv: -len(kv[0]))
        for group in (self._any, *self._exact.values(), *wild.values()):
            group.sort(key=lambda r: -len(r.prefix))  # longest prefix first
        self._single_any = not self._exact and not self._wildcard

    def match(self, host_header: str | None, path: str) -> Route | None:
        """The route for a request; ``path`` must already be normalized."""
        if not self._single_any:
            host = _host_of(host_header)
            if host is not None:
                group = self._exact.get(host)
                if group is not None:
                    found = _longest(group, path)
                    if found is not None:
                        return found
                for suffix, group in self._wildcard:
                    if host.endswith(suffix) and len(host) > len(suffix):
                        found = _longest(group, path)
                        if found is not None:
                            return found
        return _longest(self._any, path)


def _longest(group: list[Route], path: str) -> Route | None:
    for route in group:  # sorted longest prefix first
        prefix = route.prefix
        if prefix == "/":
            return route
        if path.startswith(prefix) and (len(path) == len(prefix) or path[len(prefix)] == "/"):
            return route
    return None
