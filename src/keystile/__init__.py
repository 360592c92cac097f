"""keystile: OAuth 2.0 token introspection (RFC 7662) made fast, safe and standard.

The public API is deliberately short; the authorization server lives in
``keystile.server`` (the ``server`` extra) and is usually started with the
``keystile`` command.
"""

from keystile.clock import Clock, FixedClock, SystemClock
from keystile.errors import OAuthError

__version__ = "0.1.0"

__all__ = ["Clock", "FixedClock", "OAuthError", "SystemClock", "__version__"]
