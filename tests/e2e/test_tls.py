"""HTTPS: `keystile serve --tls-cert --tls-key` with a self-signed certificate for 127.0.0.1."""

from __future__ import annotations

import httpx
import pytest

from tests.e2e.conftest import LOOPBACK, ServerStarter, Tls, parse_demo

pytestmark = pytest.mark.process


class TestTls:
    def test_token_flow_over_https(self, start_server: ServerStarter, tls_files: Tls) -> None:
        """Over HTTPS the issuer is https://, the demo commands use it, and a token request
        verified against the certificate gets a token that introspects active."""
        server = start_server(tls=tls_files)
        assert server.url == f"https://{LOOPBACK}:{server.port}"
        assert server.stdout.endswith(f"\nkeystile listening on {server.url}\n")
        assert f"curl -sS -X POST {server.url}/oauth2/token" in server.stdout
        demo = parse_demo(server.stdout)

        metadata = server.http.get("/.well-known/oauth-authorization-server").json()
        assert metadata["issuer"] == server.url
        assert metadata["issuer"].startswith("https://")
        assert metadata["token_endpoint"] == f"{server.url}/oauth2/token"

        r = server.token(demo.app, scope="read")
        assert r.status_code == 200, r.text
        claims = server.introspect(demo.rs, r.json()["access_token"]).json()
        assert claims["active"] is True
        assert claims["iss"] == server.url

    def test_unverified_certificate_is_rejected(
        self, start_server: ServerStarter, tls_files: Tls
    ) -> None:
        """A client that does not trust the self-signed certificate cannot talk to the server,
        and plain HTTP on the TLS port gets no answer at all."""
        server = start_server("--no-demo", tls=tls_files)
        with httpx.Client(trust_env=False, timeout=5.0) as default_trust:
            with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
                default_trust.get(f"{server.url}/healthz")
            # The TLS handshake fails on clear text: the connection closes without an answer.
            with pytest.raises(httpx.TransportError):
                default_trust.get(f"http://{LOOPBACK}:{server.port}/healthz")
