"""SyncTokenValidator and the shared event logic, with the AS replaced by httpx.MockTransport."""

import json
import threading
import time

import httpx
import pytest

from keystile.errors import IntrospectionUnavailable, InvalidToken
from keystile.resource import SyncTokenValidator
from keystile.resource.cache import MISS, TokenCache, cache_key
from keystile.resource.events import EventParser, apply_event
from keystile.testing import make_principal

ISSUER = "https://as.example.test"
INTROSPECT = ISSUER + "/oauth2/introspect"


def metadata(issuer: str = ISSUER) -> httpx.Response:
    return httpx.Response(200, json={"issuer": issuer, "introspection_endpoint": INTROSPECT})


class TestSyncValidator:
    def test_followers_share_a_failure_and_it_is_not_cached(self):
        """Threads waiting on a failing introspection all get IntrospectionUnavailable from
        one AS call, and the failure is not cached: the next validation asks again."""
        release = threading.Event()
        calls: list[httpx.Request] = []

        def handler(request: httpx.Request) -> httpx.Response:
            calls.append(request)
            release.wait(5)
            return httpx.Response(503)

        http = httpx.Client(transport=httpx.MockTransport(handler))
        v = SyncTokenValidator(
            introspection_endpoint=INTROSPECT, client_id="rs", client_secret="s", http=http
        )
        errors: list[BaseException] = []

        def worker() -> None:
            try:
                v.validate("tok")
            except IntrospectionUnavailable as exc:
                errors.append(exc)

        threads = [threading.Thread(target=worker) for _ in range(8)]
        for t in threads:
            t.start()
        while not calls:
            time.sleep(0.001)
        release.set()
        for t in threads:
            t.join(5)
        assert len(errors) == 8
        assert len(calls) == 1
        assert v.cached("tok") is MISS
        with pytest.raises(IntrospectionUnavailable):
            v.validate("tok")
        assert len(calls) == 2

    def test_discovery_refuses_metadata_for_another_issuer(self):
        """Metadata naming another issuer is not trusted (RFC 8414 §3.3)."""
        http = httpx.Client(transport=httpx.MockTransport(lambda r: metadata("https://evil")))
        v = SyncTokenValidator(issuer=ISSUER, client_id="rs", client_secret="s", http=http)
        with pytest.raises(IntrospectionUnavailable, match="another issuer"):
            v.start()

    def test_client_secret_post_and_audience(self):
        """client_secret_post puts the credentials in the form; a token for another
        audience is invalid_token even though the AS says active."""
        seen: list[bytes] = []

        def handler(request: httpx.Request) -> httpx.Response:
            if request.url.path.startswith("/.well-known/"):
                return metadata()
            seen.append(request.content)
            assert "authorization" not in request.headers
            return httpx.Response(200, json={"active": True, "aud": "https://other.test"})

        http = httpx.Client(transport=httpx.MockTransport(handler))
        with (
            SyncTokenValidator(
                issuer=ISSUER,
                client_id="rs",
                client_secret="s 1",
                auth_method="client_secret_post",
                audience="https://api.test",
                http=http,
            ) as v,
            pytest.raises(InvalidToken, match="not meant"),
        ):
            v.validate("tok")
        assert b"client_id=rs" in seen[0]
        assert b"client_secret=s+1" in seen[0]
        assert b"token_type_hint=access_token" in seen[0]

    def test_non_boolean_active_is_unavailable(self):
        """An answer without a boolean active cannot be judged: unavailable, never cached."""
        http = httpx.Client(
            transport=httpx.MockTransport(lambda r: httpx.Response(200, json={"active": "yes"}))
        )
        v = SyncTokenValidator(
            introspection_endpoint=INTROSPECT, client_id="rs", client_secret="s", http=http
        )
        with pytest.raises(IntrospectionUnavailable):
            v.validate("tok")
        assert len(v.cache) == 0


class TestEvents:
    def test_parser_frames_events(self):
        """Fields accumulate until a blank line; comments and id-only frames yield nothing."""
        parser = EventParser()
        lines = [": keepalive", "id: 7", "", "id: 8", "event: ready", "data: {}", ""]
        frames = [f for f in map(parser.feed, lines) if f is not None]
        assert frames == [{"id": "8", "event": "ready", "data": "{}"}]

    def test_apply_event(self):
        """token_revoked evicts by SHA-256, client_disabled by client, malformed data or an
        unknown event flushes, ready leaves degraded mode."""
        cache = TokenCache()
        cache.stream_connected = False
        keys = [cache_key(t) for t in ("a", "b", "c")]
        cache.put(keys[0], make_principal(client_id="one"))
        cache.put(keys[1], make_principal(client_id="two"))
        cache.put(keys[2], make_principal(client_id="two"))
        apply_event(cache, "ready", "{}")
        assert cache.stream_connected is True
        apply_event(cache, "token_revoked", json.dumps({"token_sha256": keys[0].hex()}))
        assert len(cache) == 2
        apply_event(cache, "client_disabled", '{"client_id": "two"}')
        assert len(cache) == 0
        cache.put(keys[0], make_principal())
        apply_event(cache, "token_revoked", "[1, 2]")  # not an object: cannot target, flush
        assert len(cache) == 0
        cache.put(keys[0], make_principal())
        apply_event(cache, "something_new", "{}")
        assert len(cache) == 0
