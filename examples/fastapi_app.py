"""An orders API protected by keystile (FastAPI).

    pip install fastapi uvicorn 'keystile[fastapi] @ file:///path/to/keystile'  # or the wheel
    ORDERS_API_SECRET=ks_cs_... uvicorn --factory fastapi_app:main

Set ISSUER and API (defaults below) to your authorization server and this API's identifier.
"""

import os
from typing import Annotated

from fastapi import Depends, FastAPI

from keystile.resource import Principal, ProtectedResourceMetadata, TokenValidator, Validator
from keystile.resource.fastapi import KeystileAuth, require_scopes
from keystile.resource.metadata import metadata_route

ISSUER = os.environ.get("ISSUER", "https://auth.example.com")
API = os.environ.get("API", "https://api.example.com")

metadata = ProtectedResourceMetadata(
    resource=API,
    authorization_servers=[ISSUER],
    scopes_supported=["orders:read", "orders:write"],
    resource_name="Orders API",
)


def create_app(validator: Validator) -> FastAPI:
    """The app around any validator: the real one, or keystile.testing's in tests."""
    auth = KeystileAuth(validator, realm="orders", resource_metadata=metadata.url)
    app = FastAPI(
        lifespan=auth.lifespan,  # starts/stops discovery and the event stream
        exception_handlers=auth.exception_handlers,  # refusals rendered as RFC 6750 says
        routes=[metadata_route(metadata)],  # GET /.well-known/oauth-protected-resource
    )

    @app.get("/orders")
    async def list_orders(
        principal: Annotated[Principal, Depends(auth.require_scopes("orders:read"))],
    ) -> dict[str, str | None]:
        return {"sub": principal.sub, "client_id": principal.client_id}

    @app.post("/orders", status_code=201)
    async def create_order(
        principal: Annotated[Principal, Depends(require_scopes("orders:write"))],
    ) -> dict[str, str | None]:
        return {"created_by": principal.sub}

    return app


def main() -> FastAPI:
    """The production app: uvicorn --factory fastapi_app:main."""
    validator = TokenValidator(
        issuer=ISSUER,  # RFC 8414 discovery
        client_id="orders-api",
        client_secret=os.environ["ORDERS_API_SECRET"],
        audience=API,  # optional: refuse tokens meant for other APIs
    )
    return create_app(validator)
