"""Metadata, health, readiness, metrics, store outages and purging."""

from __future__ import annotations

import pytest
from prometheus_client.parser import text_string_to_metric_families

from keystile.core.tokens import token_hash
from tests.conftest import API, INTROSPECT, ISSUER, REVOKE, TOKEN

METADATA = "/.well-known/oauth-authorization-server"
CC = {"grant_type": "client_credentials"}
UNAVAILABLE = {
    "error": "temporarily_unavailable",
    "error_description": "the token store is unavailable; retry shortly",
}


class TestMetadata:
    async def test_document(self, http, setup):
        """The metadata document lists issuer, endpoints and what is supported (RFC 8414 §2)."""
        r = await http.get(METADATA)

        assert r.status_code == 200
        assert r.headers["content-type"] == "application/json"
        confidential = ["client_secret_basic", "client_secret_post", "private_key_jwt"]
        methods = [*confidential, "none"]  # public clients: code, refresh, revoke (issue 3)
        body = r.json()
        # The JWT members (issue 4) are pinned down in tests/server/test_jwt_keys.py.
        for name in (
            "jwks_uri",
            "introspection_signing_alg_values_supported",
            "token_endpoint_auth_signing_alg_values_supported",
            "introspection_endpoint_auth_signing_alg_values_supported",
            "revocation_endpoint_auth_signing_alg_values_supported",
        ):
            body.pop(name)
        assert body == {
            "issuer": ISSUER,
            "authorization_endpoint": ISSUER + "/oauth2/authorize",
            "token_endpoint": ISSUER + TOKEN,
            "introspection_endpoint": ISSUER + INTROSPECT,
            "revocation_endpoint": ISSUER + REVOKE,
            "grant_types_supported": ["client_credentials", "authorization_code", "refresh_token"],
            "response_types_supported": ["code"],
            "response_modes_supported": ["query"],
            "code_challenge_methods_supported": ["S256"],  # RFC 7636 §6.2; plain refused
            "authorization_response_iss_parameter_supported": True,  # RFC 9207 §3
            "scopes_supported": ["read", "write"],
            "token_endpoint_auth_methods_supported": methods,
            "introspection_endpoint_auth_methods_supported": confidential,
            "revocation_endpoint_auth_methods_supported": methods,
            "keystile_events_endpoint": f"{ISSUER}/events",
            # RFC 9449 §5.1 and RFC 8705 §3.3 (issue 12): DPoP always; certificate binding
            # only with a client CA or a trusted proxy's certificate header.
            "dpop_signing_alg_values_supported": ["ES256", "EdDSA", "Ed25519", "RS256"],
            "tls_client_certificate_bound_access_tokens": False,
        }

    async def test_endpoints_are_under_issuer(self, http, setup):
        """Every endpoint URL starts with the issuer identifier (RFC 8414 §2, §3.3)."""
        body = (await http.get(METADATA)).json()

        for name in (
            "authorization_endpoint",
            "token_endpoint",
            "introspection_endpoint",
            "revocation_endpoint",
        ):
            assert body[name].startswith(body["issuer"] + "/")

    async def test_scopes_follow_registry(self, http, setup, register_client, store, clock):
        """scopes_supported reflects enabled clients' scopes (RFC 8414 §2: RECOMMENDED)."""
        await register_client("admin-1", scopes=["admin"])
        assert (await http.get(METADATA)).json()["scopes_supported"] == ["admin", "read", "write"]

        await store.set_client_enabled("admin-1", False, clock.now())
        assert (await http.get(METADATA)).json()["scopes_supported"] == ["read", "write"]

    async def test_cacheable(self, http, setup):
        """The metadata is public and may be cached briefly (RFC 8414 §3)."""
        r = await http.get(METADATA)

        assert r.headers["cache-control"] == "public, max-age=300"


class TestHealth:
    async def test_healthz(self, http):
        """/healthz answers 200 while the process runs."""
        r = await http.get("/healthz")

        assert r.status_code == 200
        assert r.json() == {"status": "ok"}

    async def test_readyz_ok(self, http):
        """/readyz answers 200 when the store works."""
        r = await http.get("/readyz")

        assert r.status_code == 200
        assert r.json() == {"status": "ok", "store": "ok"}
        assert r.headers["cache-control"] == "no-store"

    async def test_readyz_store_closed(self, http, store):
        """/readyz answers 503 with Retry-After when the store cannot answer."""
        await store.close()
        r = await http.get("/readyz")

        assert r.status_code == 503
        assert r.json()["status"] == "unavailable"
        assert r.headers["retry-after"] == "1"

    async def test_healthz_store_closed(self, http, store):
        """/healthz is liveness only: it stays 200 while the store is down."""
        await store.close()

        assert (await http.get("/healthz")).status_code == 200


class TestStoreUnavailable:
    async def test_introspect_is_503_not_inactive(self, http, setup, issue_token, store):
        """A store outage is 503 with Retry-After, never {"active": false} (RFC 7662 §2.2)."""
        token = await issue_token(setup.app)
        await store.close()
        r = await http.post(INTROSPECT, data={"token": token}, auth=setup.rs.auth)

        assert r.status_code == 503
        assert r.json() == UNAVAILABLE
        assert r.headers["retry-after"] == "1"
        assert r.headers["cache-control"] == "no-store"

    async def test_introspect_garbage_is_503_too(self, http, setup, store):
        """Even a malformed token gets 503 when the caller cannot be checked."""
        await store.close()
        r = await http.post(INTROSPECT, data={"token": "garbage"}, auth=setup.rs.auth)

        assert r.status_code == 503
        assert r.json() == UNAVAILABLE

    async def test_introspect_after_earlier_success_is_503(self, http, setup, issue_token, store):
        """A caller verified before the outage still gets 503, not a cached answer."""
        token = await issue_token(setup.app)
        assert (await http.post(INTROSPECT, data={"token": token}, auth=setup.rs.auth)).json()[
            "active"
        ]
        await store.close()
        r = await http.post(INTROSPECT, data={"token": token}, auth=setup.rs.auth)

        assert r.status_code == 503
        assert r.json() == UNAVAILABLE

    async def test_token_is_503(self, http, setup, store):
        """The token endpoint answers 503 when the store is down (RFC 6749 §5.2 is no fit)."""
        await store.close()
        r = await http.post(TOKEN, data=CC, auth=setup.app.auth)

        assert r.status_code == 503
        assert r.json() == UNAVAILABLE
        assert r.headers["retry-after"] == "1"

    async def test_revoke_is_503(self, http, setup, issue_token, store):
        """Revocation answers 503 rather than a 200 that revoked nothing (RFC 7009 §2.2.1)."""
        token = await issue_token(setup.app)
        await store.close()
        r = await http.post(REVOKE, data={"token": token}, auth=setup.app.auth)

        assert r.status_code == 503
        assert r.json() == UNAVAILABLE


def _samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


class TestMetrics:
    async def test_requests_by_endpoint_and_outcome(self, http, setup, issue_token):
        """keystile_requests_total counts requests by endpoint and outcome."""
        token = await issue_token(setup.app)
        await http.post(TOKEN, data=CC, auth=("app-1", "wrong"))
        await http.post(INTROSPECT, data={"token": token}, auth=setup.rs.auth)
        await http.post(REVOKE, data={"token": token}, auth=setup.app.auth)
        await http.post(REVOKE, data={}, auth=setup.app.auth)

        r = await http.get("/metrics")
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/plain")
        samples = _samples(r.text)

        def count(endpoint: str, outcome: str) -> float:
            labels = (("endpoint", endpoint), ("outcome", outcome))
            return samples.get(("keystile_requests_total", labels), 0.0)

        assert count("token", "ok") == 1
        assert count("token", "invalid_client") == 1
        assert count("introspect", "ok") == 1
        assert count("revoke", "ok") == 1
        assert count("revoke", "invalid_request") == 1

    async def test_introspections_by_result(self, http, setup, issue_token):
        """keystile_introspections_total{result=...} counts active and inactive answers."""
        token = await issue_token(setup.app)

        async def counts() -> tuple[float, float]:
            samples = _samples((await http.get("/metrics")).text)
            return (
                samples.get(("keystile_introspections_total", (("result", "active"),)), 0.0),
                samples.get(("keystile_introspections_total", (("result", "inactive"),)), 0.0),
            )

        assert await counts() == (0, 0)
        await http.post(INTROSPECT, data={"token": token}, auth=setup.rs.auth)
        assert await counts() == (1, 0)
        await http.post(INTROSPECT, data={"token": "nope"}, auth=setup.rs.auth)
        await http.post(INTROSPECT, data={"token": token}, auth=setup.other_rs.auth)
        assert await counts() == (1, 2)

    async def test_store_outage_counted(self, http, setup, store):
        """A 503 is counted under outcome temporarily_unavailable."""
        await store.close()
        await http.post(INTROSPECT, data={"token": "x"}, auth=setup.rs.auth)
        samples = _samples((await http.get("/metrics")).text)

        key = (
            "keystile_requests_total",
            (("endpoint", "introspect"), ("outcome", "temporarily_unavailable")),
        )
        assert samples[key] == 1


class TestPurge:
    @pytest.fixture
    async def tokens(self, http, setup, register_client, issue_token):
        """Tokens: one 60 s (short), one 3600 s (app-1)."""
        short = await register_client("short-1", access_token_ttl=60, default_audience=[API])
        return {"short": await issue_token(short), "long": await issue_token(setup.app)}

    async def test_removes_only_long_expired(self, store, clock, tokens, http, setup):
        """purge deletes tokens expired for longer than the grace and keeps live ones."""
        clock.advance(60 + 100 + 1)  # short expired 101 s ago, long still live
        result = await store.purge(clock.now(), token_grace=100, event_retention=3600)

        assert result.tokens == 1
        assert await store.find_token(token_hash(tokens["short"])) is None
        assert await store.find_token(token_hash(tokens["long"])) is not None
        r = await http.post(INTROSPECT, data={"token": tokens["long"]}, auth=setup.rs.auth)
        assert r.json()["active"] is True

    async def test_keeps_within_grace(self, store, clock, tokens):
        """A token expired less than the grace ago is kept (it still answers inactive)."""
        clock.advance(60 + 100)
        result = await store.purge(clock.now(), token_grace=100, event_retention=3600)

        assert result.tokens == 0
        assert await store.find_token(token_hash(tokens["short"])) is not None

    async def test_removes_old_events(self, store, clock, tokens, http, setup):
        """purge deletes events older than the retention and keeps newer ones."""
        await http.post(REVOKE, data={"token": tokens["long"]}, auth=setup.app.auth)
        clock.advance(1000)
        await store.set_client_enabled("short-1", False, clock.now())
        assert [e.type for e in await store.events_after(0)] == [
            "token_revoked",
            "client_disabled",
        ]

        result = await store.purge(clock.now(), token_grace=10**6, event_retention=500)
        assert result.events == 1
        assert [e.type for e in await store.events_after(0)] == ["client_disabled"]

    async def test_in_batches(self, store, clock, register_client, issue_token):
        """purge removes more rows than one batch holds."""
        c = await register_client("many", access_token_ttl=1)
        for _ in range(7):
            await issue_token(c)
        clock.advance(10)
        result = await store.purge(clock.now(), token_grace=0, event_retention=3600, batch=3)

        assert result.tokens == 7
