"""Tests of fastapi_app.py without an authorization server (keystile.testing).

pip install pytest pytest-asyncio httpx
pytest test_fastapi_app.py
"""

import httpx
import pytest
from fastapi_app import API, create_app

from keystile.testing import StaticValidator


@pytest.mark.asyncio
async def test_orders_need_a_token() -> None:
    validator = StaticValidator(audience=API)
    app = create_app(validator)
    token = validator.add(sub="alice", scopes="orders:read", aud=API)
    transport = httpx.ASGITransport(app=app)
    async with (
        app.router.lifespan_context(app),  # ASGITransport does not run the lifespan itself
        httpx.AsyncClient(transport=transport, base_url="https://api.test") as client,
    ):
        auth = {"authorization": f"Bearer {token}"}
        r = await client.get("/orders", headers=auth)
        assert r.status_code == 200
        assert r.json()["sub"] == "alice"

        assert (await client.get("/orders")).status_code == 401  # no token
        assert (await client.post("/orders", headers=auth)).status_code == 403  # no orders:write

        validator.revoke(token)  # from now on: 401 invalid_token
        assert (await client.get("/orders", headers=auth)).status_code == 401

        validator.unavailable = True  # as when the AS is down: 503, not 401
        other = validator.add(sub="bob", scopes="orders:read", aud=API)
        r = await client.get("/orders", headers={"authorization": f"Bearer {other}"})
        assert r.status_code == 503
