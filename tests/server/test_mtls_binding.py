"""Certificate-bound tokens behind a TLS-terminating proxy (RFC 8705 §3): the AS believes
tls_client_certificate_header from trusted_proxies only; the gateway does the same with its
certificate_header."""

from __future__ import annotations

import base64
import hashlib
from urllib.parse import quote

import httpx
import pytest

from keystile.core.mtls import forwarded_thumbprint, pem_thumbprint
from keystile.gateway.app import GatewayApp
from keystile.gateway.config import parse_config
from keystile.resource import TokenValidator
from keystile.settings import ServerSettings
from tests.conftest import ISSUER, TOKEN
from tests.mtls_support import make_ca_and_clients

CC = {"grant_type": "client_credentials"}
HEADER = "X-SSL-Client-Cert"


@pytest.fixture
def settings(db_path) -> ServerSettings:
    # The `http` fixture's peer, 203.0.113.7, is the trusted proxy.
    return ServerSettings(
        db=str(db_path),
        issuer=ISSUER,
        purge_interval=0,
        access_log=False,
        trusted_proxies=["203.0.113.7"],
        tls_client_certificate_header=HEADER,
    )


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    _, clients = make_ca_and_clients(tmp_path_factory.mktemp("mtls"))
    return clients


class TestAuthorizationServer:
    async def test_trusted_proxy_header_binds(self, http, setup, introspect, certs):
        """The certificate a trusted proxy forwards (nginx $ssl_client_escaped_cert) binds
        the token: cnf.x5t#S256 (RFC 8705 §3.1); metadata says so (§3.3)."""
        pem = certs[0].cert.read_text()
        r = await http.post(TOKEN, data=CC, auth=setup.app.auth, headers={HEADER: quote(pem)})
        assert r.status_code == 200, r.text

        body = (await introspect(setup.rs, r.json()["access_token"])).json()
        assert body["cnf"] == {"x5t#S256": certs[0].x5t}
        metadata = (await http.get("/.well-known/oauth-authorization-server")).json()
        assert metadata["tls_client_certificate_bound_access_tokens"] is True

    async def test_untrusted_peer_header_ignored(self, http_from, setup, introspect, certs):
        """The same header from any other address is ignored: the token is unbound."""
        pem = certs[0].cert.read_text()
        caller = http_from("198.51.100.9")
        r = await caller.post(TOKEN, data=CC, auth=setup.app.auth, headers={HEADER: quote(pem)})
        assert r.status_code == 200, r.text

        body = (await introspect(setup.rs, r.json()["access_token"])).json()
        assert "cnf" not in body


class TestForwardedShapes:
    def test_each_proxy_format(self, certs):
        """nginx's escaped PEM, Traefik's base64 DER and Envoy's XFCC give one thumbprint."""
        pem = certs[0].cert.read_text()
        der_b64 = "".join(line for line in pem.splitlines() if "CERTIFICATE" not in line)
        der = base64.b64decode(der_b64)
        expected = base64.urlsafe_b64encode(hashlib.sha256(der).digest()).rstrip(b"=").decode()
        xfcc = f'Hash=abc;Cert="{quote(pem)}";Subject="CN=x"'

        assert pem_thumbprint(pem) == expected
        for value in (quote(pem), der_b64, xfcc):
            assert forwarded_thumbprint(value) == expected
        assert forwarded_thumbprint("") is None
        assert forwarded_thumbprint("not a certificate") is None


class TestGateway:
    async def test_certificate_header(self, app, http, setup, certs):
        """The gateway takes a certificate-bound token only with that certificate in its
        certificate_header from a trusted proxy (RFC 8705 §3), proxy and forward-auth alike."""
        pem = [quote(c.cert.read_text()) for c in certs]
        r = await http.post(TOKEN, data=CC, auth=setup.app.auth, headers={HEADER: pem[0]})
        token = r.json()["access_token"]
        config = parse_config(
            {
                "gateway": {"trusted_proxies": ["10.0.0.0/8"], "certificate_header": HEADER},
                "authorization_server": {
                    "introspection_endpoint": ISSUER + "/oauth2/introspect",
                    "client_id": setup.rs.client_id,
                    "client_secret": setup.rs.secret,
                    "events": False,
                },
                "routes": [{"path": "/orders"}],
            }
        )
        as_http = httpx.AsyncClient(transport=httpx.ASGITransport(app=app))
        validator = TokenValidator(
            introspection_endpoint=ISSUER + "/oauth2/introspect",
            client_id=setup.rs.client_id,
            client_secret=setup.rs.secret,
            events=False,
            http=as_http,
        )
        gw = GatewayApp(config, validator=validator)
        auth = {"Authorization": f"Bearer {token}"}
        try:
            for peer, cert, proxied, forward in [
                ("10.0.0.5", pem[0], 404, 200),  # the right certificate, from the proxy
                ("10.0.0.5", pem[1], 401, 401),  # another certificate
                ("10.0.0.5", None, 401, 401),  # none
            ]:
                transport = httpx.ASGITransport(app=gw, client=(peer, 5000))
                headers = {**auth, **({HEADER: cert} if cert else {})}
                async with httpx.AsyncClient(transport=transport, base_url="http://gw") as c:
                    assert (await c.get("/orders", headers=headers)).status_code == proxied
                    nginx = {**headers, "X-Original-URI": "/orders"}
                    r = await c.get("/_keystile/auth", headers=nginx)
                    assert r.status_code == forward
            # From an untrusted peer the header is not believed, even with the right one.
            transport = httpx.ASGITransport(app=gw, client=("198.51.100.9", 5000))
            async with httpx.AsyncClient(transport=transport, base_url="http://gw") as c:
                r = await c.get("/orders", headers={**auth, HEADER: pem[0]})
                assert r.status_code == 401
        finally:
            await validator.close()
            await as_http.aclose()
            await gw.proxy.close()


class TestRefreshTokens:
    async def test_public_client_refresh_needs_its_certificate(
        self, http, store, clock, register_client, setup, certs
    ):
        """A public client's refresh token bound to its certificate (RFC 8705 §4) refreshes
        only with that certificate; another one, or none, is invalid_grant."""
        from tests.server.test_user_grants import Flow, _code_client, _user, authorize

        await _code_client(store, register_client, "spa", public=True)
        flow = Flow("spa", None, "http://127.0.0.1:8765/cb", await _user(store, clock, "bob"))
        code, verifier = await authorize(store, clock, flow)
        mine, other = (quote(c.cert.read_text()) for c in certs)
        data = {
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": flow.redirect_uri,
            "code_verifier": verifier,
            "client_id": "spa",
        }
        r = await http.post(TOKEN, data=data, headers={HEADER: mine})
        assert r.status_code == 200, r.text
        refresh = {"grant_type": "refresh_token", "refresh_token": r.json()["refresh_token"]}
        refresh["client_id"] = "spa"
        for headers in ({HEADER: other}, {}):
            r = await http.post(TOKEN, data=refresh, headers=headers)
            assert r.status_code == 400
            assert r.json()["error"] == "invalid_grant"
        r = await http.post(TOKEN, data=refresh, headers={HEADER: mine})
        assert r.status_code == 200, r.text
