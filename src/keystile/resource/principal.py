"""What a validated bearer token grants: the typed view of an introspection response."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True, slots=True)
class Principal:
    """An active token's subject, client, scopes and audience (RFC 7662 §2.2 claims)."""

    sub: str | None
    client_id: str | None
    username: str | None
    scopes: frozenset[str]
    aud: tuple[str, ...]
    exp: int | None
    iat: int | None = None
    iss: str | None = None
    jti: str | None = None
    token_type: str | None = None
    claims: Mapping[str, Any] = field(default_factory=dict, repr=False)

    def has_scopes(self, *required: str) -> bool:
        return self.scopes.issuperset(required)

    @classmethod
    def from_introspection(cls, body: Mapping[str, Any]) -> Principal | None:
        """The principal of an RFC 7662 response, or None unless ``active`` is exactly true.

        Anything odd (non-boolean ``active``, wrongly typed claims) counts as inactive:
        fail closed.
        """
        if body.get("active") is not True:
            return None
        scope = body.get("scope")
        aud = body.get("aud")
        if isinstance(aud, str):
            auds: tuple[str, ...] = (aud,)
        elif isinstance(aud, list) and all(isinstance(a, str) for a in aud):
            auds = tuple(aud)
        elif aud is None:
            auds = ()
        else:
            return None
        exp = body.get("exp")
        if exp is not None and (not isinstance(exp, int) or isinstance(exp, bool)):
            return None
        if scope is not None and not isinstance(scope, str):
            return None
        iat = body.get("iat")
        return cls(
            sub=_str(body.get("sub")),
            client_id=_str(body.get("client_id")),
            username=_str(body.get("username")),
            scopes=frozenset(scope.split()) if scope else frozenset(),
            aud=auds,
            exp=exp,
            iat=iat if isinstance(iat, int) and not isinstance(iat, bool) else None,
            iss=_str(body.get("iss")),
            jti=_str(body.get("jti")),
            token_type=_str(body.get("token_type")),
            claims=dict(body),
        )


def _str(value: Any) -> str | None:
    return value if isinstance(value, str) else None
