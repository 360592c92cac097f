"""Sender-constrained tokens in the store (issue 12), on every backend: the cnf a token is
bound to, a client's require_dpop, and DPoP proof jtis accepted once across processes."""

from __future__ import annotations

import asyncio
from dataclasses import replace

from keystile.store.base import Store
from tests.store.conftest import Connect
from tests.store.test_contract import NOW, client, token


class TestBoundTokens:
    async def test_cnf_round_trips(self, store: Store, connect: Connect) -> None:
        """A token's cnf.jkt and cnf.x5t#S256 come back from every read path (RFC 9449 §6,
        RFC 8705 §3.1), in this process and another."""
        dpop = token(cnf_jkt="jkt-thumbprint")
        mtls = token(cnf_x5t="x5t-thumbprint")
        bearer = token()
        for record in (dpop, mtls, bearer):
            await store.insert_token(record)
        other = await connect()

        for s in (store, other):
            assert await s.find_token(dpop.token_hash) == dpop
            assert (await s.lookup_token(mtls.token_hash))[1] == mtls
            found = (await s.lookup_token(bearer.token_hash))[1]
            assert found is not None
            assert (found.cnf_jkt, found.cnf_x5t) == (None, None)

    async def test_require_dpop_round_trips(self, store: Store) -> None:
        """A client's require_dpop is stored, updated and read back."""
        await store.create_client(client("app-1", require_dpop=True))
        found = await store.get_client("app-1")
        assert found is not None
        assert found.require_dpop is True

        await store.update_client(replace(found, require_dpop=False, updated_at=NOW + 1))
        again = await store.get_client("app-1")
        assert again is not None
        assert again.require_dpop is False


class TestDpopJtis:
    async def test_once_per_key(self, store: Store) -> None:
        """A proof jti is recorded once per key (RFC 9449 §11.1)."""
        assert await store.record_dpop_jti("k1", "j1", NOW + 65) is True
        assert await store.record_dpop_jti("k1", "j1", NOW + 65) is False
        assert await store.record_dpop_jti("k2", "j1", NOW + 65) is True

    async def test_concurrent_replays_admit_exactly_one(
        self, store: Store, connect: Connect
    ) -> None:
        """Of many processes presenting one proof at once, exactly one wins."""
        other = await connect()
        results = await asyncio.gather(
            *(s.record_dpop_jti("k1", "same", NOW + 65) for s in (store, other) * 5)
        )
        assert sorted(results) == [False] * 9 + [True]

    async def test_purge_forgets_expired(self, store: Store) -> None:
        """The purge drops jtis past their window; live ones keep refusing replays."""
        await store.record_dpop_jti("k1", "old", NOW - 1)
        await store.record_dpop_jti("k1", "live", NOW + 65)

        await store.purge(NOW, token_grace=0, event_retention=60)

        assert await store.record_dpop_jti("k1", "old", NOW + 65) is True
        assert await store.record_dpop_jti("k1", "live", NOW + 65) is False
