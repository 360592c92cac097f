"""User-facing examples of the resource-server SDK, type-checked by mypy (never run).

If a change to the SDK's types breaks one of these, users' own type checks break the same
way: fix the SDK, or change the example in the same pull request and say so in the changelog.
"""

from typing import Annotated, assert_type

from fastapi import Depends, FastAPI
from flask import Flask
from mcp.server.auth.provider import AccessToken, TokenVerifier
from mcp.server.auth.settings import AuthSettings
from mcp.server.fastmcp import FastMCP
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from keystile.errors import InsufficientScope, IntrospectionUnavailable, InvalidToken
from keystile.resource import (
    Principal,
    ProtectedResourceMetadata,
    SyncTokenValidator,
    SyncValidator,
    TokenValidator,
    Validator,
)
from keystile.resource.fastapi import BearerError, KeystileAuth, require_scopes
from keystile.resource.flask import KeystileFlask, current_principal
from keystile.resource.flask import require_scopes as flask_require_scopes
from keystile.resource.mcp import KeystileTokenVerifier
from keystile.resource.metadata import metadata_route
from keystile.resource.middleware import BearerAuthMiddleware, principal_of
from keystile.testing import (
    StaticValidator,
    SyncStaticValidator,
    issue_test_token,
    make_principal,
)

metadata = ProtectedResourceMetadata(
    resource="https://api.example.com",
    authorization_servers=["https://auth.example.com"],
    scopes_supported=["orders:read", "orders:write"],
    resource_name="Orders API",
)


# -- every validator fits its protocol ---------------------------------------------------------


def async_validators() -> list[Validator]:
    return [
        TokenValidator(issuer="https://auth.example.com", client_id="api", client_secret="s"),
        StaticValidator({"token": make_principal("alice")}),
    ]


def sync_validators() -> list[SyncValidator]:
    return [
        SyncTokenValidator(issuer="https://auth.example.com", client_id="api", client_secret="s"),
        SyncStaticValidator({"token": {"sub": "alice", "scope": "read"}}),
    ]


async def validate_directly(validator: Validator, token: str) -> str | None:
    try:
        principal = await validator.validate(token)
        validator.require(principal, {"orders:read"})
    except (InvalidToken, InsufficientScope, IntrospectionUnavailable):
        return None
    assert_type(principal.scopes, frozenset[str])
    assert_type(principal.aud, tuple[str, ...])
    return principal.sub


# -- FastAPI -----------------------------------------------------------------------------------

auth = KeystileAuth(
    TokenValidator(issuer="https://auth.example.com", client_id="api", client_secret="s"),
    realm="orders",
    resource_metadata=metadata.url,
)
app = FastAPI(
    lifespan=auth.lifespan,
    exception_handlers=auth.exception_handlers,
    routes=[metadata_route(metadata)],
)


@app.get("/orders")
async def list_orders(
    principal: Annotated[Principal, Depends(auth.require_scopes("orders:read"))],
) -> dict[str, str | None]:
    return {"sub": principal.sub, "client_id": principal.client_id}


@app.post("/orders")
async def create_order(
    principal: Annotated[Principal, Depends(require_scopes("orders:write"))],
) -> dict[str, str | None]:
    return {"sub": principal.sub}


# -- plain Starlette, with the middleware or per endpoint --------------------------------------


async def whoami(request: Request) -> JSONResponse:
    principal: Principal = principal_of(request)
    return JSONResponse({"sub": principal.sub})


async def orders_endpoint(request: Request) -> JSONResponse:
    try:
        principal = await auth.authenticate(request, {"orders:read"})
    except BearerError as exc:
        return JSONResponse({"status": exc.status_code}, status_code=exc.status_code)
    return JSONResponse({"sub": principal.sub})


starlette_app = BearerAuthMiddleware(
    Starlette(routes=[Route("/whoami", whoami)], lifespan=auth.lifespan),
    StaticValidator(),
    scopes={"orders:read"},
    exempt_paths={metadata.path},
)


# -- Flask -------------------------------------------------------------------------------------

flask_app = Flask(__name__)
keystile = KeystileFlask(
    flask_app,
    SyncTokenValidator(issuer="https://auth.example.com", client_id="api", client_secret="s"),
    metadata=metadata,
)


@flask_app.get("/orders")
@flask_require_scopes("orders:read")
def flask_orders() -> dict[str, str | None]:
    return {"sub": current_principal().sub}


@flask_app.post("/orders")
@keystile.require_scopes("orders:write")
def flask_create_order() -> tuple[dict[str, str], int]:
    return {"created": "yes"}, 201


# -- testing helpers ---------------------------------------------------------------------------


def testing_helpers() -> None:
    fake = SyncStaticValidator()
    token: str = fake.add(sub="bob", scopes="orders:read")
    fake.revoke(token)
    fake.unavailable = True
    other: str = issue_test_token()
    assert_type(fake.validate(other), Principal)


# -- MCP servers (keystile.resource.mcp) --------------------------------------------------------


def mcp_server(validator: TokenValidator) -> object:
    """The verifier is the mcp SDK's TokenVerifier, for a real validator or the static one."""
    verifier = KeystileTokenVerifier(validator, resource="https://mcp.example.com/mcp")
    protocol: TokenVerifier = verifier
    in_tests: TokenVerifier = KeystileTokenVerifier(StaticValidator())
    del protocol, in_tests
    server = FastMCP(
        "notes",
        token_verifier=verifier,
        auth=AuthSettings(
            issuer_url="https://auth.example.com",
            resource_server_url="https://mcp.example.com/mcp",
            required_scopes=["notes:read"],
            validate_token_resource=True,
        ),
    )
    return verifier.protect(server.streamable_http_app())  # an ASGI app for uvicorn


async def mcp_access(verifier: KeystileTokenVerifier, token: str) -> None:
    access = await verifier.verify_token(token)
    assert_type(access, AccessToken | None)


# -- sender-constrained tokens (RFC 9449, RFC 8705; docs/sender-constrained.md) ---------------


def dpop_protected(app: Starlette, validator: TokenValidator) -> BearerAuthMiddleware:
    """An API that checks DPoP proofs and client certificates on every request."""
    from keystile.core.dpop_state import NonceSource
    from keystile.resource import SenderCheck

    sender = SenderCheck(mode="required", max_age=60, nonces=NonceSource(b"shared secret"))
    KeystileAuth(validator, sender=sender, origin="https://api.example.com")
    return BearerAuthMiddleware(
        app, validator, scopes={"orders:read"}, sender=sender, origin="https://api.example.com"
    )
