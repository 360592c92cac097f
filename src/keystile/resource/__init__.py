"""Resource-server SDK: validate bearer tokens against any RFC 7662 authorization server.

Never imports the authorization server or its stores; needs only ``httpx``
(the ``resource`` extra)::

    from keystile.resource import TokenValidator

    async with TokenValidator(issuer="https://auth.example.com",
                              client_id="orders-api", client_secret="…") as validator:
        principal = await validator.validate(token)

Framework helpers: ``keystile.resource.middleware`` (any ASGI app),
``keystile.resource.fastapi`` (FastAPI/Starlette dependency), ``keystile.resource.flask``
(Flask extension, with ``SyncTokenValidator``); ``keystile.testing`` for your own tests.
"""

from keystile.resource.cache import TokenCache
from keystile.resource.introspector import TokenValidator
from keystile.resource.metadata import ProtectedResourceMetadata
from keystile.resource.principal import Principal
from keystile.resource.sender import SenderCheck
from keystile.resource.sync import SyncTokenValidator
from keystile.resource.validator import SyncValidator, Validator

__all__ = [
    "Principal",
    "ProtectedResourceMetadata",
    "SenderCheck",
    "SyncTokenValidator",
    "SyncValidator",
    "TokenCache",
    "TokenValidator",
    "Validator",
]
