"""Sender-constrained tokens in the store (issue 12), on every backend: the cnf a token is
bound to and a client's require_dpop (DPoP proof jtis: test_contract.TestReplayCaches)."""

from __future__ import annotations

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
