"""Throttling of failed client authentications: failures are counted per (client id,
address) and per address, and only failing attempts are refused; a credential that
verifies is never refused (THREAT_MODEL.md, "Lockout and denial of service")."""

from __future__ import annotations

import pytest

from keystile.settings import ServerSettings
from tests.conftest import INTROSPECT, ISSUER, REVOKE, TOKEN

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


async def _wrong(http, client_id: str = "app-1"):
    return await http.post(TOKEN, data=CC, auth=(client_id, "wrong-secret"))


class TestPerClientAndAddress:
    async def test_failures_past_the_limit_get_429(self, http, setup):
        """After the allowed failures, a wrong secret for that client id from that address
        gets 429 with Retry-After (and no-store, like every token endpoint answer)."""
        await _fail(http, "app-1")
        r = await _wrong(http)

        assert r.status_code == 429
        assert r.json() == TOO_MANY
        assert r.headers["retry-after"] == str(WINDOW)
        assert r.headers["cache-control"] == "no-store"

    async def test_right_secret_is_never_refused(self, http, setup):
        """Past the limit the right secret still gets its token: it verifies, and a 256-bit
        secret leaves nothing to guess (issue 11)."""
        await _fail(http, "app-1")
        for _ in range(LIMIT * 3):
            assert (await _wrong(http)).status_code == 429
        assert (await http.post(TOKEN, data=CC, auth=setup.app.auth)).status_code == 200

    async def test_below_limit_a_failure_gets_401(self, http, setup):
        """One failure fewer than the limit leaves the next wrong secret at 401."""
        await _fail(http, "app-1", LIMIT - 1)

        assert (await _wrong(http)).status_code == 401

    async def test_retry_after_counts_down(self, http, setup, clock):
        """Retry-After is the time left in the window."""
        await _fail(http, "app-1")
        clock.advance(WINDOW - 1)
        r = await _wrong(http)

        assert r.status_code == 429
        assert r.headers["retry-after"] == "1"

    async def test_window_end_lifts_block(self, http, setup, clock):
        """Once the window has passed a wrong secret is answered 401 again."""
        await _fail(http, "app-1")
        clock.advance(WINDOW)

        assert (await _wrong(http)).status_code == 401

    async def test_client_not_blocked_from_another_address(self, http, setup, http_from):
        """Failures for a client id from one address do not touch that client's failures
        from another address: there, a wrong secret is still 401."""
        await _fail(http, "app-1")
        elsewhere = http_from("198.51.100.20")

        assert (await _wrong(elsewhere)).status_code == 401
        assert (await elsewhere.post(TOKEN, data=CC, auth=setup.app.auth)).status_code == 200

    async def test_successes_are_not_counted(self, http, setup):
        """Successful authentications never count towards the limit."""
        for _ in range(LIMIT * 3):
            assert (await http.post(TOKEN, data=CC, auth=setup.app.auth)).status_code == 200
        assert (await _wrong(http)).status_code == 401

    @pytest.mark.parametrize("path", [TOKEN, INTROSPECT, REVOKE])
    async def test_every_endpoint(self, http, setup, path):
        """The same rules at the token, introspection and revocation endpoints."""
        form = CC if path == TOKEN else {"token": "x"}
        for _ in range(LIMIT):
            r = await http.post(path, data=form, auth=("rs-1", "wrong"))
            assert r.status_code == 401
        r = await http.post(path, data=form, auth=("rs-1", "wrong"))
        assert r.status_code == 429
        assert r.json() == TOO_MANY
        if path != TOKEN:  # rs-1 has no grant types: its right secret gets 200 elsewhere
            assert (await http.post(path, data=form, auth=setup.rs.auth)).status_code == 200

    async def test_verified_introspection_caller_is_not_throttled(self, http, setup):
        """A resource server whose credentials were verified before keeps introspecting
        while failures for its client id are over the limit (the cached path follows the
        same rule as the full one)."""
        ok = await http.post(INTROSPECT, data={"token": "x"}, auth=setup.rs.auth)
        assert ok.status_code == 200
        for _ in range(LIMIT + 2):
            await http.post(INTROSPECT, data={"token": "x"}, auth=("rs-1", "wrong"))

        r = await http.post(INTROSPECT, data={"token": "x"}, auth=setup.rs.auth)
        assert r.status_code == 200
        assert r.json() == {"active": False}


class TestPerAddress:
    async def test_many_ids_from_one_address(self, http, setup):
        """Failures spread over many client ids from one address make that address's next
        failure, for any client id, a 429."""
        for i in range(LIMIT):
            await _fail(http, f"ghost-{i}", 1)
        r = await _wrong(http)

        assert r.status_code == 429
        assert r.headers["retry-after"] == str(WINDOW)

    async def test_address_block_spares_right_credentials(self, http, setup):
        """A blocked address does not lock out the clients calling from it: every right
        secret there still authenticates (issue 11: ten failures locked out every client)."""
        for i in range(LIMIT):
            await _fail(http, f"ghost-{i}", 1)

        assert (await http.post(TOKEN, data=CC, auth=setup.app.auth)).status_code == 200
        r = await http.post(INTROSPECT, data={"token": "x"}, auth=setup.other_rs.auth)
        assert r.status_code == 200

    async def test_other_address_unaffected(self, http, setup, http_from):
        """A blocked address leaves failures from other addresses at 401."""
        for i in range(LIMIT):
            await _fail(http, f"ghost-{i}", 1)
        elsewhere = http_from("198.51.100.20")

        assert (await _wrong(elsewhere)).status_code == 401

    async def test_unknown_ids_do_not_count_against_a_client(self, http, setup, http_from):
        """Unknown client ids count against the address only: a registered client's own
        count (from another address) is untouched by them."""
        elsewhere = http_from("198.51.100.20")
        for i in range(LIMIT * 2):
            await _wrong(elsewhere, f"ghost-{i}")
        await _fail(http, "app-1", LIMIT - 1)

        assert (await _wrong(http)).status_code == 401

    async def test_address_block_lifts_after_window(self, http, setup, clock):
        """The address block ends with the window."""
        for i in range(LIMIT):
            await _fail(http, f"ghost-{i}", 1)
        clock.advance(WINDOW)

        assert (await _wrong(http)).status_code == 401


class TestDefaultLimit:
    @pytest.fixture
    def settings(self, db_path) -> ServerSettings:
        return ServerSettings(db=str(db_path), issuer=ISSUER, purge_interval=0, access_log=False)

    async def test_ten_failures_per_minute(self, http, setup, clock):
        """By default the 11th failure within 60 s is throttled, the right secret is not,
        and the block ends at 60 s."""
        assert ServerSettings(db="x").throttle_failures == 10
        await _fail(http, "app-1", 10)

        r = await _wrong(http)
        assert r.status_code == 429
        assert r.headers["retry-after"] == "60"
        assert (await http.post(TOKEN, data=CC, auth=setup.app.auth)).status_code == 200
        clock.advance(60)
        assert (await _wrong(http)).status_code == 401
