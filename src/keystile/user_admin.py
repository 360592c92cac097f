"""Administration of users, the people who sign in: the operations behind `keystile user`.

Their standard claims (OIDC Core §5.1: name, preferred_username, email, email_verified) are
set here too, for the profile and email scopes (docs/oidc.md).
"""

from __future__ import annotations

import asyncio
import re
import secrets
from collections.abc import Iterable
from dataclasses import replace
from typing import Any

from keystile.clock import Clock
from keystile.core.models import User
from keystile.core.passwords import PasswordPolicyError, check_policy, hash_password
from keystile.errors import ConfigurationError
from keystile.store.base import Conflict, NotFound, Store

# -- users (people who sign in; docs/cli.md) -------------------------------------------------

_USERNAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@+-]{0,127}")
USER_ID_PREFIX = "usr_"
# Roles a user may hold; "admin" signs in to the admin console (docs/admin.md).
USER_ROLES = ("admin",)
ADMIN_ROLE = "admin"


def check_username(username: str) -> str:
    """A valid username, lower-cased as stored (so sign-in ignores case)."""
    if not _USERNAME.fullmatch(username):
        raise ConfigurationError(
            "username must be 1-128 characters of letters, digits and . _ @ + -, "
            "starting with a letter or digit"
        )
    name = username.lower()
    if name.startswith(USER_ID_PREFIX):
        # User ids start so: a name that did too could be read as someone else's id.
        raise ConfigurationError(f"a username may not start with {USER_ID_PREFIX!r}")
    return name


def check_password(password: str) -> None:
    """ConfigurationError unless the password meets the policy (before any change is made)."""
    try:
        check_policy(password)
    except PasswordPolicyError as exc:
        raise ConfigurationError(str(exc)) from None


async def _hash(password: str) -> str:
    """The argon2id hash of a password that meets the policy; the slow part off the loop."""
    check_password(password)
    try:
        return await asyncio.to_thread(hash_password, password)
    except PasswordPolicyError as exc:
        raise ConfigurationError(str(exc)) from None


def _roles(values: Iterable[str]) -> frozenset[str]:
    out = frozenset(values)
    for role in out:
        if role not in USER_ROLES:
            raise ConfigurationError(f"unknown role {role!r}; choose from {', '.join(USER_ROLES)}")
    return out


_EMAIL = re.compile(r"[^@\s]{1,64}@[^@\s]{1,253}")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
MAX_CLAIM = 256


def _claim(kind: str, value: str | None) -> str | None:
    """A standard claim's value as stored: None (or "") for none; no control characters."""
    if not value:
        return None
    value = value.strip()
    if len(value) > MAX_CLAIM or _CONTROL.search(value):
        raise ConfigurationError(f"{kind} must be at most {MAX_CLAIM} printable characters")
    if kind == "email" and not _EMAIL.fullmatch(value):
        raise ConfigurationError("email must look like name@domain")
    return value or None


async def create_user(
    store: Store,
    clock: Clock,
    *,
    username: str,
    password: str,
    name: str | None = None,
    preferred_username: str | None = None,
    email: str | None = None,
    email_verified: bool = False,
    roles: Iterable[str] = (),
) -> User:
    """Register a user with a new opaque, stable id (their ``sub``); Conflict if the
    username is taken. ``name``, ``preferred_username``, ``email`` and ``email_verified``
    are their standard claims (OIDC Core §5.1); ``roles`` (``admin``) open the admin
    console (docs/admin.md)."""
    name_ = check_username(username)
    user_roles = _roles(roles)
    claims = {
        "name": _claim("name", name),
        "preferred_username": _claim("preferred_username", preferred_username),
        "email": _claim("email", email),
    }
    if await store.get_user_by_name(name_) is not None:  # before the slow hash
        raise Conflict(f"user {name_!r} exists already")
    password_hash = await _hash(password)
    now = clock.now()
    user = User(
        user_id=USER_ID_PREFIX + secrets.token_urlsafe(16),
        username=name_,
        password_hash=password_hash,
        enabled=True,
        created_at=now,
        updated_at=now,
        roles=user_roles,
        email_verified=email_verified,
        **claims,
    )
    await store.create_user(user)
    return user


async def update_user(
    store: Store,
    clock: Clock,
    ref: str,
    *,
    name: str | None = None,
    preferred_username: str | None = None,
    email: str | None = None,
    email_verified: bool | None = None,
) -> User:
    """Change a user's standard claims (OIDC Core §5.1); None leaves one as it is, "" clears
    it. A new email is unverified unless ``email_verified`` says otherwise."""
    user = await get_user(store, ref)
    changes: dict[str, Any] = {}
    if name is not None:
        changes["name"] = _claim("name", name)
    if preferred_username is not None:
        changes["preferred_username"] = _claim("preferred_username", preferred_username)
    if email is not None:
        changes["email"] = _claim("email", email)
        if changes["email"] != user.email:
            changes["email_verified"] = False
    if email_verified is not None:
        changes["email_verified"] = email_verified
    updated = replace(user, **changes, updated_at=clock.now())
    await store.update_user(updated)
    return updated


async def get_user(store: Store, ref: str) -> User:
    """A user by id (``usr_...``) or by username (any case); NotFound otherwise."""
    if ref.startswith(USER_ID_PREFIX):
        user = await store.get_user(ref)
    else:
        user = await store.get_user_by_name(ref.lower())
    if user is None:
        raise NotFound(f"no user {ref!r}")
    return user


async def set_password(store: Store, clock: Clock, ref: str, password: str) -> User:
    """Give a user a new password. Their sessions and grants stay: end them with
    revoke_user_sessions if the old password may be known to someone else."""
    user = await get_user(store, ref)
    updated = replace(user, password_hash=await _hash(password), updated_at=clock.now())
    await store.update_user(updated)
    return updated


def refuse_yourself(username: str, acting: str | None, what: str) -> None:
    """An admin cannot take their own admin access away (the API or console call made as
    ``acting``, a username): the last admin could otherwise lock everyone out of the console
    with one click. Another admin, or the CLI on the database host, can."""
    if acting is not None and username == acting:
        raise Conflict(f"you cannot {what} your own account: ask another admin, or use the CLI")


async def set_user_roles(
    store: Store, clock: Clock, ref: str, roles: Iterable[str], *, acting: str | None = None
) -> User:
    """Replace a user's roles (``admin`` or none). Taking ``admin`` away refuses their
    console session and admin tokens on the next request; not from one's own account."""
    user = await get_user(store, ref)
    new_roles = _roles(roles)
    if ADMIN_ROLE in user.roles and ADMIN_ROLE not in new_roles:
        refuse_yourself(user.username, acting, "remove the admin role from")
    updated = replace(user, roles=new_roles, updated_at=clock.now())
    await store.update_user(updated)
    return updated


async def set_user_enabled(
    store: Store, clock: Clock, ref: str, enabled: bool, *, acting: str | None = None
) -> tuple[User, int]:
    """Enable or disable a user. Disabling ends their sessions and revokes their grants and
    tokens in the same transaction; returns the user and the number of tokens revoked."""
    user = await get_user(store, ref)
    if not enabled:
        refuse_yourself(user.username, acting, "disable")
    now = clock.now()
    revoked = await store.set_user_enabled(user.user_id, enabled, now)
    return replace(user, enabled=enabled, updated_at=now), revoked


async def delete_user(
    store: Store, clock: Clock, ref: str, *, acting: str | None = None
) -> tuple[User, int]:
    """Revoke everything of a user, then delete them; the user and tokens revoked."""
    user = await get_user(store, ref)
    refuse_yourself(user.username, acting, "delete")
    return user, await store.delete_user(user.user_id, clock.now())


async def revoke_user_sessions(store: Store, clock: Clock, ref: str) -> tuple[User, int]:
    """End every session of a user and revoke their grants and tokens (they stay enabled
    and may sign in again); the user and tokens revoked."""
    user = await get_user(store, ref)
    return user, await store.revoke_user_sessions(user.user_id, clock.now())


def user_view(user: User) -> dict[str, Any]:
    """A user as JSON for the CLI: never the password hash."""
    return {
        "user_id": user.user_id,
        "username": user.username,
        "enabled": user.enabled,
        "roles": sorted(user.roles),
        "name": user.name,
        "preferred_username": user.preferred_username,
        "email": user.email,
        "email_verified": user.email_verified,
        "created_at": user.created_at,
        "updated_at": user.updated_at,
    }
