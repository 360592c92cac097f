"""X-Forwarded-For is believed only from configured proxies (throttling counts real callers)."""

from __future__ import annotations

import pytest

from tests.conftest import Creds
from tests.e2e.conftest import ServerStarter, clean_env, parse_demo

pytestmark = pytest.mark.process

ATTACKER = "198.51.100.1"
VICTIM = "198.51.100.2"


def _fail_ten_times(server, xff: str) -> None:
    for i in range(10):
        r = server.http.post(
            "/oauth2/token",
            data={"grant_type": "client_credentials"},
            auth=(f"ghost-{i}", "wrong"),
            headers={"x-forwarded-for": xff},
        )
        assert r.status_code == 401


def _token_status(server, creds, xff: str) -> int:
    r = server.http.post(
        "/oauth2/token",
        data={"grant_type": "client_credentials"},
        auth=creds.auth,
        headers={"x-forwarded-for": xff},
    )
    return r.status_code


def _wrong_status(server, xff: str) -> int:
    return _token_status(server, Creds("demo-app", "wrong"), xff)


def test_trusted_proxy_throttles_per_forwarded_address(start_server: ServerStarter):
    """Behind a trusted proxy, failures from one forwarded address throttle only that
    address's failures; right credentials get through from both."""
    server = start_server(env=clean_env(KEYSTILE_TRUSTED_PROXIES='["127.0.0.1"]'))
    demo = parse_demo(server.stdout)
    _fail_ten_times(server, ATTACKER)
    assert _wrong_status(server, ATTACKER) == 429
    assert _wrong_status(server, VICTIM) == 401
    assert _token_status(server, demo.app, ATTACKER) == 200
    assert _token_status(server, demo.app, VICTIM) == 200


def test_forwarded_header_ignored_by_default(start_server: ServerStarter):
    """Without trusted proxies a caller cannot choose the address the throttle counts."""
    server = start_server()
    demo = parse_demo(server.stdout)
    _fail_ten_times(server, ATTACKER)
    # The TCP peer (127.0.0.1) is what was throttled, whatever the header claims.
    assert _wrong_status(server, VICTIM) == 429
    assert _token_status(server, demo.app, VICTIM) == 200
