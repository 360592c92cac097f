"""Route matching: host first, then the longest path prefix on segment boundaries."""

from __future__ import annotations

import pytest

from keystile.gateway.config import RouteConfig
from keystile.gateway.routes import BadPath, RouteTable, normalize_path


def table(*routes: dict[str, object]) -> RouteTable:
    return RouteTable([RouteConfig.model_validate({"public": True, **r}) for r in routes])


class TestMatch:
    def test_longest_prefix_wins(self):
        """Of /api and /api/admin, a request under /api/admin gets /api/admin."""
        t = table({"path": "/api"}, {"path": "/api/admin"}, {"path": "/"})
        assert t.match(None, "/api/admin/users").prefix == "/api/admin"
        assert t.match(None, "/api/orders").prefix == "/api"
        assert t.match(None, "/other").prefix == "/"

    def test_segment_boundaries(self):
        """/api matches /api and /api/x, never /apix."""
        t = table({"path": "/api"})
        assert t.match(None, "/api") is not None
        assert t.match(None, "/api/") is not None
        assert t.match(None, "/apix") is None

    def test_host_routes_before_hostless(self):
        """A route for the request's host wins; ports and case do not matter."""
        t = table({"path": "/", "name": "any"}, {"host": "api.example.test", "name": "api"})
        assert t.match("API.example.test:8443", "/x").label == "api"
        assert t.match("other.test", "/x").label == "any"
        assert t.match(None, "/x").label == "any"

    def test_wildcard_host(self):
        """*.example.test matches subdomains only, and an exact host beats it."""
        t = table(
            {"host": "*.example.test", "name": "wild"},
            {"host": "a.example.test", "name": "exact"},
        )
        assert t.match("b.example.test", "/").label == "wild"
        assert t.match("a.example.test", "/").label == "exact"
        assert t.match("example.test", "/") is None

    def test_falls_back_when_host_routes_do_not_cover_the_path(self):
        """Host routes that do not cover the path leave it to the host-less routes."""
        t = table({"host": "h.test", "path": "/only"}, {"path": "/", "name": "any"})
        assert t.match("h.test", "/elsewhere").label == "any"


class TestNormalize:
    def test_dot_segments_refused(self):
        """'.' and '..' segments are refused, so a prefix cannot be escaped upstream."""
        for path in ("/a/../b", "/a/./b", "/..", "/a/.."):
            with pytest.raises(BadPath):
                normalize_path(path)

    def test_slashes_collapsed(self):
        """//api//x is judged as /api/x."""
        assert normalize_path("//api//x") == "/api/x"
        assert normalize_path("/a/.hidden") == "/a/.hidden"
