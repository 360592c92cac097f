"""Throttling of failed client authentications, per client id and per source address."""

from __future__ import annotations

import pytest

from keystile.settings import ServerSettings
from tests.conftest import INTROSPECT, ISSUER, TOKEN

CC = {"grant_type": "client_credentials"}
LIMIT = 3
WINDOW = 60
TOO_MANY = {
    "error": "too_many_requests",
    "error_description": "too many failed client authentications; retry later",
}


@pytest.fixture
def settings(db_path) -> ServerSettings:
    return ServerSettings(
        db=str(db_path),
        issuer=ISSUER,
        purge_interval=0,
        access_log=False,
        throttle_failures=LIMIT,
        throttle_window=WINDOW,
    )


async def _fail(http, client_id: str, times: int = LIMIT) -> None:
    for _ in range(times):
        r = await http.post(TOKEN, data=CC, auth=(client_id, "wrong-secret"))
        assert r.status_code == 401


class TestPerClient:
    async def test_limit_then_429_even_with_right_secret(self, http, setup):
        """After the allowed failures a client id gets 429 with Retry-After, right secret or not."""
        await _fail(http, "app-1")
        r = await http.post(TOKEN, data=CC, auth=setup.app.auth)

        assert r.status_code == 429
        assert r.json() == TOO_MANY
        assert r.headers["retry-after"] == str(WINDOW)
        assert r.headers["cache-control"] == "no-store"

    async def test_below_limit_still_authenticates(self, http, setup):
        """One failure fewer than the limit does not block the right secret."""
        await _fail(http, "app-1", LIMIT - 1)

        assert (await http.post(TOKEN, data=CC, auth=setup.app.auth)).status_code == 200

    async def test_retry_after_counts_down(self, http, setup, clock):
        """Retry-After is the time left in the window."""
        await _fail(http, "app-1")
        clock.advance(WINDOW - 1)
        r = await http.post(TOKEN, data=CC, auth=setup.app.auth)

        assert r.status_code == 429
        assert r.headers["retry-after"] == "1"

    async def test_window_end_lifts_block(self, http, setup, clock):
        """Once the window has passed the client authenticates again."""
        await _fail(http, "app-1")
        clock.advance(WINDOW)

        assert (await http.post(TOKEN, data=CC, auth=setup.app.auth)).status_code == 200

    async def test_other_client_unaffected(self, http, setup, http_from):
        """Failures of one client id do not block another client from another address."""
        await _fail(http, "app-1")
        elsewhere = http_from("198.51.100.20")
        r = await elsewhere.post(INTROSPECT, data={"token": "x"}, auth=setup.rs.auth)

        assert r.status_code == 200

    async def test_client_blocked_from_every_address(self, http, setup, http_from):
        """A throttled client id is refused from any address, not only the failing one."""
        await _fail(http, "app-1")
        elsewhere = http_from("198.51.100.20")
        r = await elsewhere.post(TOKEN, data=CC, auth=setup.app.auth)

        assert r.status_code == 429

    async def test_successes_are_not_counted(self, http, setup):
        """Successful authentications never count towards the limit."""
        for _ in range(LIMIT * 3):
            assert (await http.post(TOKEN, data=CC, auth=setup.app.auth)).status_code == 200

    async def test_throttled_at_every_endpoint(self, http, setup):
        """The throttle guards introspection as well as the token endpoint."""
        for _ in range(LIMIT):
            r = await http.post(INTROSPECT, data={"token": "x"}, auth=("rs-1", "wrong"))
            assert r.status_code == 401
        r = await http.post(INTROSPECT, data={"token": "x"}, auth=setup.rs.auth)

        assert r.status_code == 429
        assert r.json() == TOO_MANY

    async def test_verified_introspection_caller_is_throttled_too(self, http, setup):
        """A resource server that introspected successfully before is still blocked by 429.

        Otherwise, during a lockout, the right secret answers 200 and every wrong one 429:
        an oracle that makes the throttle useless against guessing.
        """
        ok = await http.post(INTROSPECT, data={"token": "x"}, auth=setup.rs.auth)
        assert ok.status_code == 200
        for _ in range(LIMIT):
            r = await http.post(INTROSPECT, data={"token": "x"}, auth=("rs-1", "wrong"))
            assert r.status_code == 401

        r = await http.post(INTROSPECT, data={"token": "x"}, auth=setup.rs.auth)
        assert r.status_code == 429
        assert r.headers["retry-after"] == str(WINDOW)


class TestPerSource:
    async def test_many_ids_from_one_address(self, http, setup):
        """Failures spread over many client ids from one address block that address."""
        for i in range(LIMIT):
            await _fail(http, f"ghost-{i}", 1)
        r = await http.post(TOKEN, data=CC, auth=setup.app.auth)

        assert r.status_code == 429
        assert r.headers["retry-after"] == str(WINDOW)

    async def test_other_address_unaffected(self, http, setup, http_from):
        """A blocked address does not block the same client calling from elsewhere."""
        for i in range(LIMIT):
            await _fail(http, f"ghost-{i}", 1)
        elsewhere = http_from("198.51.100.20")

        assert (await elsewhere.post(TOKEN, data=CC, auth=setup.app.auth)).status_code == 200

    async def test_blocks_verified_introspection_caller(self, http, setup):
        """A blocked address is refused even for credentials verified earlier."""
        ok = await http.post(INTROSPECT, data={"token": "x"}, auth=setup.rs.auth)
        assert ok.status_code == 200
        for i in range(LIMIT):
            await _fail(http, f"ghost-{i}", 1)

        r = await http.post(INTROSPECT, data={"token": "x"}, auth=setup.rs.auth)
        assert r.status_code == 429

    async def test_address_block_lifts_after_window(self, http, setup, clock):
        """The address block ends with the window."""
        for i in range(LIMIT):
            await _fail(http, f"ghost-{i}", 1)
        clock.advance(WINDOW)

        assert (await http.post(TOKEN, data=CC, auth=setup.app.auth)).status_code == 200


class TestDefaultLimit:
    @pytest.fixture
    def settings(self, db_path) -> ServerSettings:
        return ServerSettings(db=str(db_path), issuer=ISSUER, purge_interval=0, access_log=False)

    async def test_ten_failures_per_minute(self, http, setup, clock):
        """By default the 11th attempt within 60 s is throttled, and the block ends at 60 s."""
        assert ServerSettings(db="x").throttle_failures == 10
        await _fail(http, "app-1", 10)

        r = await http.post(TOKEN, data=CC, auth=setup.app.auth)
        assert r.status_code == 429
        assert r.headers["retry-after"] == "60"
        clock.advance(60)
        assert (await http.post(TOKEN, data=CC, auth=setup.app.auth)).status_code == 200
