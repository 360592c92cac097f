"""Resource-server SDK: validate bearer tokens against any RFC 7662 authorization server.

Never imports the authorization server or its stores; needs only ``httpx``
(``pip install 'keystile[resource]'``)::

    from keystile.resource import TokenValidator

    async with TokenValidator(issuer="https://auth.example.com",
                              client_id="orders-api", client_secret="…") as validator:
        principal = await validator.validate(token)
"""

from keystile.resource.cache import TokenCache
from keystile.resource.introspector import TokenValidator
from keystile.resource.principal import Principal

__all__ = ["Principal", "TokenCache", "TokenValidator"]
