"""A Flask app protected by the SDK's sync client, against a real keystile AS process."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from keystile.errors import IntrospectionUnavailable, InvalidToken
from keystile.resource import ProtectedResourceMetadata, SyncTokenValidator
from keystile.resource.flask import KeystileFlask, current_principal, require_scopes
from tests.e2e.conftest import DEMO_AUDIENCE, DemoServer, ServerStarter, parse_demo
from tests.e2e.sdk_support import introspections_on_as, wait_until

pytestmark = pytest.mark.process

METADATA = ProtectedResourceMetadata(
    resource=DEMO_AUDIENCE + "/v1",
    authorization_servers=["http://127.0.0.1"],
    scopes_supported=["read", "write"],
    resource_documentation="https://api.example.test/docs",
)


@pytest.fixture(scope="module")
def shared_as(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DemoServer]:
    """One AS process for the module's tests (each test uses its own tokens)."""
    starter = ServerStarter(tmp_path_factory.mktemp("as"))
    server = starter("--log-level", "warning")
    yield DemoServer(server, parse_demo(server.stdout))
    starter.stop_all()


def validator_for(d: DemoServer, **kwargs: Any) -> SyncTokenValidator:
    return SyncTokenValidator(
        issuer=d.server.url, client_id=d.demo.rs.client_id, client_secret=d.demo.rs.secret, **kwargs
    )


def make_app(validator: SyncTokenValidator) -> tuple[Flask, KeystileFlask]:
    """The sample API: /me needs "read" (module-level decorator), /write needs "write" (the
    extension's decorator); the RFC 9728 document is served by the extension."""
    app = Flask(__name__)
    keystile = KeystileFlask(app, validator, realm="api", metadata=METADATA)

    @app.get("/me")
    @require_scopes("read")
    def me() -> dict[str, Any]:
        principal = current_principal()
        return {
            "sub": principal.sub,
            "client_id": principal.client_id,
            "scopes": sorted(principal.scopes),
            "aud": list(principal.aud),
            "exp": principal.exp,
        }

    @app.get("/write")
    @keystile.require_scopes("write")
    def write() -> dict[str, Any]:
        return {"wrote": current_principal().sub}

    return app, keystile


def bearer(token: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"}


@pytest.fixture(scope="module")
def api(shared_as: DemoServer) -> Iterator[tuple[FlaskClient, DemoServer, SyncTokenValidator]]:
    """The sample app without the event stream, shared by the TestFlask tests."""
    validator = validator_for(shared_as, events=False)
    app, keystile = make_app(validator)
    yield app.test_client(), shared_as, validator
    keystile.close()


class TestFlask:
    def test_valid_token_gives_the_principal(self, api):
        """An active token with the scope reaches the view, which reads the Principal."""
        c, d, _ = api
        token = d.server.issue(d.demo.app, scope="read write")
        r = c.get("/me", headers=bearer(token))
        assert r.status_code == 200, r.text
        body = r.get_json()
        assert body["sub"] == "demo-app"
        assert body["client_id"] == "demo-app"
        assert body["scopes"] == ["read", "write"]
        assert body["aud"] == [DEMO_AUDIENCE]
        assert body["exp"] > time.time()

    def test_missing_token_is_bare_401(self, api):
        """No credentials: 401 with a challenge carrying no error code (RFC 6750 §3.1) and
        the resource_metadata URL of the served document (RFC 9728 §5.1)."""
        c, _, _ = api
        r = c.get("/me")
        assert r.status_code == 401
        assert r.headers["www-authenticate"] == (
            'Bearer realm="api", resource_metadata='
            '"https://api.example.test/.well-known/oauth-protected-resource/v1"'
        )
        assert r.headers["cache-control"] == "no-store"
        assert r.data == b""  # no error information in the body either
        assert "content-type" not in r.headers

    def test_other_scheme_or_empty_header_is_bare_401(self, api):
        """An Authorization header with another scheme or no credentials in it lacks any
        authentication information: the same bare 401 with an empty body (RFC 6750 §3.1)."""
        c, _, _ = api
        for value in ("Basic abc", "Digest x=1", "", "Bearer", "Bearer  "):
            r = c.get("/me", headers={"authorization": value})
            assert r.status_code == 401, value
            assert "error" not in r.headers["www-authenticate"]
            assert r.data == b""

    def test_malformed_header_is_400(self, api):
        """A malformed bearer credential is invalid_request (§3.1)."""
        c, _, _ = api
        for value in ("Bearer a b", "Bearer a,b", 'Bearer ab"c'):
            r = c.get("/me", headers={"authorization": value})
            assert r.status_code == 400, value
            assert 'error="invalid_request"' in r.headers["www-authenticate"]
            assert r.get_json()["error"] == "invalid_request"

    def test_revoked_token_is_401(self, api):
        """A revoked token is 401 invalid_token."""
        c, d, _ = api
        token = d.server.issue(d.demo.app, scope="read")
        assert d.server.revoke(d.demo.app, token).status_code == 200
        r = c.get("/me", headers=bearer(token))
        assert r.status_code == 401
        assert r.headers["www-authenticate"].startswith('Bearer realm="api", error="invalid_token"')

    def test_missing_scope_is_403_with_scope(self, api):
        """A token without the view's scope is 403 insufficient_scope naming the scope."""
        c, d, _ = api
        token = d.server.issue(d.demo.app, scope="read")
        r = c.get("/write", headers=bearer(token))
        assert r.status_code == 403
        assert 'error="insufficient_scope"' in r.headers["www-authenticate"]
        assert 'scope="write"' in r.headers["www-authenticate"]
        assert c.get("/me", headers=bearer(token)).status_code == 200

    def test_protected_resource_metadata(self, api):
        """The RFC 9728 document is served at the well-known path built from the resource's
        path (§3.1), without a token."""
        c, _, _ = api
        r = c.get("/.well-known/oauth-protected-resource/v1")
        assert r.status_code == 200
        assert r.content_type == "application/json"
        assert r.get_json() == {
            "resource": "https://api.example.test/v1",
            "authorization_servers": ["http://127.0.0.1"],
            "scopes_supported": ["read", "write"],
            "bearer_methods_supported": ["header"],
            "resource_documentation": "https://api.example.test/docs",
        }

    def test_protect_guards_a_whole_app(self, shared_as: DemoServer):
        """protect() refuses requests without a token on every route but the metadata one."""
        validator = validator_for(shared_as, events=False)
        app = Flask(__name__)
        keystile = KeystileFlask(app, validator, metadata=METADATA)
        keystile.protect(app, "read")
        app.add_url_rule("/open", "open", lambda: {"sub": current_principal().sub})
        c = app.test_client()
        try:
            assert c.get("/open").status_code == 401
            assert c.get(METADATA.path).status_code == 200
            token = shared_as.server.issue(shared_as.demo.app, scope="read")
            assert c.get("/open", headers=bearer(token)).get_json() == {"sub": "demo-app"}
        finally:
            keystile.close()


class TestSyncValidator:
    def test_single_flight_across_threads(self, shared_as: DemoServer):
        """64 threads validating one uncached token at once make one AS call, and all get
        the same principal."""
        d = shared_as
        token = d.server.issue(d.demo.app, scope="read")
        results: list[object] = []
        with validator_for(d, events=False) as validator:
            barrier = threading.Barrier(64)

            def worker() -> None:
                barrier.wait()
                results.append(validator.validate(token))

            before = introspections_on_as(d.server)
            threads = [threading.Thread(target=worker) for _ in range(64)]
            for t in threads:
                t.start()
            for t in threads:
                t.join(10)
            assert len(results) == 64
            assert len({id(r) for r in results}) == 1
            assert introspections_on_as(d.server) - before == 1
            assert validator.introspections == 1

    def test_negative_cache_and_no_caching_of_errors(self, start_server: ServerStarter):
        """An inactive answer is cached for negative_ttl; an unreachable AS is never cached
        and gives IntrospectionUnavailable, not InvalidToken."""
        server = start_server("--log-level", "warning")
        d = DemoServer(server, parse_demo(server.stdout))
        token = server.issue(d.demo.app)
        server.revoke(d.demo.app, token)
        with validator_for(d, events=False, negative_ttl=60) as validator:
            for _ in range(3):
                with pytest.raises(InvalidToken):
                    validator.validate(token)
            assert validator.introspections == 1
            other = server.issue(d.demo.app)
            server.stop()
            for _ in range(2):
                with pytest.raises(IntrospectionUnavailable):
                    validator.validate(other)
            assert validator.introspections == 3


class TestEventsThread:
    def test_revoked_token_is_blocked_while_cached(self, shared_as: DemoServer):
        """With the events thread on, a token cached for a minute is refused within a second
        of its revocation; without events the same cache would still let it through."""
        d = shared_as
        with_events = validator_for(d, max_ttl=60)
        without = validator_for(d, events=False, max_ttl=60)
        app, keystile = make_app(with_events)
        plain_app, plain = make_app(without)
        c, plain_c = app.test_client(), plain_app.test_client()
        token = d.server.issue(d.demo.app, scope="read")
        try:
            keystile.start()
            assert with_events.stream is not None
            assert with_events.stream.connected.wait(5)
            for client in (c, plain_c, c, plain_c):
                assert client.get("/me", headers=bearer(token)).status_code == 200
            assert with_events.introspections == 1  # the second answer came from the cache
            assert d.server.revoke(d.demo.app, token).status_code == 200
            took = wait_until(lambda: len(with_events.cache) == 0, limit=1.0)
            assert took < 1.0
            r = c.get("/me", headers=bearer(token))
            assert r.status_code == 401
            assert 'error="invalid_token"' in r.headers["www-authenticate"]
            # Pure TTL mode: the stale entry is still served (what the events are for).
            assert plain_c.get("/me", headers=bearer(token)).status_code == 200
        finally:
            keystile.close()
            plain.close()

    def test_events_thread_resumes_after_as_restart(self, start_server: ServerStarter):
        """The thread reconnects after the AS restarts, resumes with Last-Event-ID, and
        applies a revocation made while it was away; close() ends the thread."""
        server = start_server("--log-level", "warning")
        d = DemoServer(server, parse_demo(server.stdout))
        token = server.issue(d.demo.app, scope="read")
        validator = validator_for(d, degraded_ttl=60)
        validator.start()
        stream = validator.stream
        assert stream is not None
        try:
            assert stream.connected.wait(5)
            validator.validate(token)
            server.stop()
            wait_until(lambda: validator.cache.stream_connected is False)
            assert validator.cached(token) is not None  # degraded, still within degraded_ttl
            again = start_server("--log-level", "warning", port=server.port)
            assert again.revoke(d.demo.app, token).status_code == 200
            wait_until(lambda: stream.connects >= 2 and validator.cache.stream_connected is True)
            wait_until(lambda: len(validator.cache) == 0)
            with pytest.raises(InvalidToken):
                validator.validate(token)
        finally:
            validator.close()
        assert not stream._thread.is_alive()

    def test_as_down_is_503_with_retry_after(self, start_server: ServerStarter):
        """With the AS unreachable, at startup or later, the app fails closed: 503
        temporarily_unavailable with Retry-After, never 401."""
        server = start_server("--log-level", "warning")
        d = DemoServer(server, parse_demo(server.stdout))
        token = server.issue(d.demo.app, scope="read")
        server.stop()
        app, keystile = make_app(validator_for(d))
        c = app.test_client()
        try:
            r = c.get("/me", headers=bearer(token))  # the lazy start cannot discover the AS
            assert r.status_code == 503
            assert r.headers["retry-after"] == "1"
            assert r.get_json()["error"] == "temporarily_unavailable"
            again = start_server("--log-level", "warning", port=server.port)
            assert c.get("/me", headers=bearer(token)).status_code == 200
            other = again.issue(d.demo.app, scope="read")
            again.stop()
            r = c.get("/me", headers=bearer(other))
            assert r.status_code == 503
            assert r.headers["retry-after"] == "1"
            assert "www-authenticate" not in r.headers
        finally:
            keystile.close()
