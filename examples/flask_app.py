"""An orders API protected by keystile (Flask).

    pip install 'keystile[flask] @ file:///path/to/keystile'  # or the wheel
    ORDERS_API_SECRET=ks_cs_... flask --app flask_app run

Set ISSUER and API (defaults below) to your authorization server and this API's identifier.
"""

import os

from flask import Flask

from keystile.resource import ProtectedResourceMetadata, SyncTokenValidator
from keystile.resource.flask import KeystileFlask, current_principal, require_scopes

ISSUER = os.environ.get("ISSUER", "https://auth.example.com")
API = os.environ.get("API", "https://api.example.com")

metadata = ProtectedResourceMetadata(
    resource=API,
    authorization_servers=[ISSUER],
    scopes_supported=["orders:read", "orders:write"],
    resource_name="Orders API",
)
app = Flask(__name__)
validator = SyncTokenValidator(
    issuer=ISSUER,
    client_id="orders-api",
    client_secret=os.environ["ORDERS_API_SECRET"],
    audience=API,
)
keystile = KeystileFlask(app, validator, realm="orders", metadata=metadata)


@app.get("/orders")
@require_scopes("orders:read")  # or @keystile.require_scopes(...)
def list_orders() -> dict[str, str | None]:
    return {"sub": current_principal().sub}


@app.post("/orders")
@keystile.require_scopes("orders:write")
def create_order() -> tuple[dict[str, str | None], int]:
    return {"created_by": current_principal().sub}, 201
