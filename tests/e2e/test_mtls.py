"""Certificate-bound access tokens (RFC 8705 §3) over real TLS: `keystile serve` with
--tls-cert/--tls-key and a client CA asks for client certificates and binds tokens to the
one presented; the SDK accepts the token only with that certificate."""

from __future__ import annotations

import ssl
from pathlib import Path

import httpx
import pytest

from keystile.resource.principal import Principal
from keystile.resource.sender import SenderCheck, SenderRefused
from tests.e2e.conftest import ServerStarter, Tls, parse_demo
from tests.mtls_support import make_ca_and_clients

pytestmark = pytest.mark.process


def test_token_bound_to_client_certificate(
    start_server: ServerStarter, tls_files: Tls, tmp_path: Path
) -> None:
    """A token requested over TLS with a client certificate carries cnf.x5t#S256 of it
    (RFC 8705 §3.1), metadata says tls_client_certificate_bound_access_tokens, a request
    without a certificate gets an unbound token, and the SDK takes the bound token only from
    the connection with that certificate."""
    ca, (mine, other) = make_ca_and_clients(tmp_path)
    server = start_server(tls=tls_files, env={"KEYSTILE_TLS_CLIENT_CA": str(ca)})
    demo = parse_demo(server.stdout)
    metadata = server.http.get("/.well-known/oauth-authorization-server").json()
    assert metadata["tls_client_certificate_bound_access_tokens"] is True

    context = ssl.create_default_context(cafile=str(tls_files.cert))
    context.load_cert_chain(str(mine.cert), str(mine.key))
    with httpx.Client(base_url=server.url, verify=context, trust_env=False) as mtls:
        r = mtls.post(
            "/oauth2/token", data={"grant_type": "client_credentials"}, auth=demo.app.auth
        )
    assert r.status_code == 200, r.text
    assert r.json()["token_type"] == "Bearer"  # RFC 8705 §3: still a Bearer token
    body = server.introspect(demo.rs, r.json()["access_token"]).json()
    assert body["cnf"] == {"x5t#S256": mine.x5t}
    assert body["token_type"] == "Bearer"

    unbound = server.introspect(demo.rs, server.issue(demo.app)).json()
    assert "cnf" not in unbound

    principal = Principal.from_introspection(body)
    assert principal is not None
    check = SenderCheck()
    token = r.json()["access_token"]
    check.check(
        principal,
        scheme="bearer",
        token=token,
        proof=None,
        method="GET",
        url="https://api.test/",
        certificate_x5t=mine.x5t,
    )
    for presented in (other.x5t, None):
        with pytest.raises(SenderRefused, match="certificate"):
            check.check(
                principal,
                scheme="bearer",
                token=token,
                proof=None,
                method="GET",
                url="https://api.test/",
                certificate_x5t=presented,
            )


GATEWAY = """
[gateway]
port = {port}
tls_cert = "CERT"
tls_key = "KEY"
tls_client_ca = "CLIENT_CA"

[authorization_server]
issuer = "AS_URL"
client_id = "demo-rs"
client_secret_file = "rs.secret"

[[routes]]
path = "/api"
upstream = "UPSTREAM"
"""


def test_gateway_over_tls_takes_the_bound_certificate_only(
    start_server: ServerStarter, tls_files: Tls, tmp_path: Path
) -> None:
    """`keystile gateway` terminating TLS with a client CA: a certificate-bound token passes
    on a connection with its certificate, and is refused (401, DPoP challenge) with another
    certificate or none. The AS here binds through a trusted proxy's certificate header."""
    from urllib.parse import quote

    from tests.e2e.gateway_procs import start_gateway, start_upstream

    ca, (mine, other) = make_ca_and_clients(tmp_path)
    server = start_server(
        env={
            "KEYSTILE_TRUSTED_PROXIES": '["127.0.0.1"]',
            "KEYSTILE_TLS_CLIENT_CERTIFICATE_HEADER": "X-SSL-Client-Cert",
        }
    )
    demo = parse_demo(server.stdout)
    r = server.http.post(
        "/oauth2/token",
        data={"grant_type": "client_credentials", "scope": "read"},
        auth=demo.app.auth,
        headers={"X-SSL-Client-Cert": quote(mine.cert.read_text())},
    )
    assert r.status_code == 200, r.text
    token = r.json()["access_token"]
    assert server.introspect(demo.rs, token).json()["cnf"] == {"x5t#S256": mine.x5t}

    upstream = start_upstream(tmp_path)
    (tmp_path / "rs.secret").write_text(demo.rs.secret + "\n")
    config = (
        GATEWAY.replace("CERT", str(tls_files.cert))
        .replace("KEY", str(tls_files.key))
        .replace("CLIENT_CA", str(ca))
        .replace("AS_URL", server.url)
        .replace("UPSTREAM", upstream.url)
    )
    gateway = start_gateway(tmp_path, config, tls=tls_files.context())
    try:
        auth = {"Authorization": f"Bearer {token}"}
        for cert, status in ((mine, 200), (other, 401), (None, 401)):
            context = tls_files.context()
            if cert is not None:
                context.load_cert_chain(str(cert.cert), str(cert.key))
            with httpx.Client(base_url=gateway.url, verify=context, trust_env=False) as c:
                r = c.get("/api/orders", headers=auth)
            assert r.status_code == status, (cert, r.text)
            if status == 401:
                assert "client certificate" in r.json()["error_description"]
    finally:
        gateway.stop()
        upstream.stop()
