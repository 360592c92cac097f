"""An MCP server (the official `mcp` SDK) whose tools need a keystile access token.

    pip install uvicorn 'keystile[mcp] @ file:///path/to/keystile'  # or the wheel
    MCP_RS_SECRET=ks_cs_... uvicorn --factory mcp_server:main --port 8001

Set ISSUER (the AS) and MCP_URL (this server's URL, its RFC 8707 resource identifier).
"""

import os

from mcp.server.auth.middleware.auth_context import get_access_token
from mcp.server.auth.settings import AuthSettings
from mcp.server.fastmcp import FastMCP
from starlette.types import ASGIApp

from keystile.resource import TokenValidator
from keystile.resource.mcp import KeystileTokenVerifier

ISSUER = os.environ.get("ISSUER", "http://127.0.0.1:8000")
MCP_URL = os.environ.get("MCP_URL", "http://127.0.0.1:8001/mcp")


def main() -> ASGIApp:
    """The ASGI app: uvicorn --factory mcp_server:main."""
    validator = TokenValidator(  # introspection, cache, revocation events
        issuer=ISSUER, client_id="mcp-rs", client_secret=os.environ["MCP_RS_SECRET"]
    )
    verifier = KeystileTokenVerifier(validator, resource=MCP_URL)
    server = FastMCP(
        "notes",
        token_verifier=verifier,
        auth=AuthSettings(
            issuer_url=ISSUER,  # named in the RFC 9728 document the SDK serves
            resource_server_url=MCP_URL,  # 401s carry resource_metadata (RFC 9728 §5.1)
            required_scopes=["notes:read"],  # 403 insufficient_scope without it
            validate_token_resource=True,  # the SDK checks the resource too (RFC 8707)
        ),
    )

    @server.tool()
    def add_note(text: str) -> str:
        """Keep a note, for the person who signed in."""
        token = get_access_token()  # the AccessToken the verifier gave for this request
        who = (token.claims or {}).get("username") if token else None
        return f"noted for {who}: {text}"

    return verifier.protect(server.streamable_http_app())  # 503 when the AS is down
