"""The keystile gateway: an introspecting reverse proxy, and forward-auth for other proxies.

Built on the resource-server SDK (cache, single-flight, revocation events)::

    keystile gateway --config gateway.toml

See docs/gateway.md for the configuration, the route options and the nginx, Traefik and
Envoy integrations.
"""

from keystile.gateway.app import GatewayApp
from keystile.gateway.config import GatewayConfig, load_config

__all__ = ["GatewayApp", "GatewayConfig", "load_config"]
