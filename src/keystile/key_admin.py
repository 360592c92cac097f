"""Signing-key administration: the key-encryption key, and creating, rotating and retiring keys.

Used by ``keystile key …`` and by the server's first start. The life of a key:

    create (next) ──rotate──► active ──rotate──► retired ──(not_after passes)──► unpublished

``rotate`` activates the ``next`` key (or, if there is none, a new one made on the spot) and
retires the active key in one transaction. A retired key signs nothing more, its private part
is deleted, and it stays in the JWKS until the last token it signed expires.

The key-encryption key (KEK) comes from ``key_encryption_key`` or ``key_encryption_key_file``.
With SQLite and neither set, a KEK is generated on first use into ``<db>.kek`` (mode 0600)
with a warning; with PostgreSQL it must be configured, since every server process needs the
same one (without it, JWT features stay off and opaque tokens work as before).
"""

from __future__ import annotations

import base64
import binascii
import logging
import os
import secrets
import stat
from dataclasses import replace
from pathlib import Path
from typing import Any

from keystile.clock import Clock
from keystile.core.jwt_profile import PUBLISH_GRANULARITY
from keystile.core.models import SigningKey
from keystile.core.signing_keys import KEK_BYTES, SIGNING_ALGS, new_signing_key
from keystile.errors import ConfigurationError
from keystile.settings import ServerSettings
from keystile.store.base import Conflict, NotFound, Store

log = logging.getLogger("keystile.keys")


def decode_kek(text: str, *, source: str) -> bytes:
    """A KEK from its base64 (standard or URL-safe) text; ConfigurationError otherwise."""
    value = text.strip()
    try:
        standard = value.replace("-", "+").replace("_", "/").rstrip("=")
        raw = base64.b64decode(standard + "=" * (-len(standard) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise ConfigurationError(f"{source}: not base64") from None
    if len(raw) != KEK_BYTES:
        raise ConfigurationError(
            f"{source}: the key-encryption key must be {KEK_BYTES} random bytes, base64-encoded"
            f" (got {len(raw)} bytes); make one with: openssl rand -base64 32"
        )
    return raw


def _read_kek_file(path: Path) -> bytes:
    try:
        text = path.read_text("ascii")
        mode = path.stat().st_mode
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigurationError(f"cannot read the key-encryption key file {path}: {exc}") from None
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        log.warning(
            "the key-encryption key file is readable by others; chmod 600 it",
            extra={"path": str(path)},
        )
    return decode_kek(text, source=str(path))


def _write_new_kek(path: Path) -> bytes:
    """Generate a KEK into ``path`` (0600), unless another process just did: then read it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    text = base64.b64encode(secrets.token_bytes(KEK_BYTES)).decode("ascii") + "\n"
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w", encoding="ascii") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        try:
            # link() fails if the name exists: of two processes starting at once, one wins
            # and both use its key.
            os.link(tmp, path)
            created = True
        except FileExistsError:
            created = False
    finally:
        tmp.unlink(missing_ok=True)
    if created:
        log.warning(
            "generated a key-encryption key next to the database; it encrypts the signing "
            "keys at rest, so keep it out of database backups: move it and set "
            "key_encryption_key_file (docs/tokens.md)",
            extra={"path": str(path)},
        )
    return _read_kek_file(path)


def load_kek(settings: ServerSettings, *, create: bool = True) -> bytes | None:
    """The configured KEK; for SQLite without one, ``<db>.kek`` (made if ``create``)."""
    if settings.key_encryption_key is not None:
        return decode_kek(settings.key_encryption_key, source="key_encryption_key")
    if settings.key_encryption_key_file is not None:
        return _read_kek_file(settings.key_encryption_key_file)
    path = settings.default_kek_file
    if path is None:
        return None
    if path.exists():
        return _read_kek_file(path)
    return _write_new_kek(path) if create else None


def require_kek(settings: ServerSettings) -> bytes:
    kek = load_kek(settings)
    if kek is None:
        raise ConfigurationError(
            "signing keys need a key-encryption key: set key_encryption_key (base64 of 32 "
            "random bytes, e.g. `openssl rand -base64 32`) or key_encryption_key_file"
        )
    return kek


def _check_alg(alg: str) -> str:
    if alg not in SIGNING_ALGS:
        raise ConfigurationError(
            f"unknown algorithm {alg!r}; choose from {', '.join(SIGNING_ALGS)}"
        )
    return alg


async def ensure_active_key(
    store: Store, clock: Clock, kek: bytes | None, alg: str
) -> SigningKey | None:
    """The active key, made now if there is none (the first start). None without a KEK."""
    keys = await store.list_signing_keys()
    for key in keys:
        if key.state == "active" and key.use_for == "all":
            return key
    if kek is None:
        return None
    key = new_signing_key(_check_alg(alg), kek=kek, now=clock.now(), state="active")
    try:
        await store.insert_signing_key(key)
    except Conflict:
        pass  # another process made one at the same moment: use that one
    else:
        log.info("signing key created", extra={"kid": key.kid, "alg": key.alg})
        return key
    for other in await store.list_signing_keys():
        if other.state == "active" and other.use_for == "all":
            return other
    return None


async def ensure_id_token_key(store: Store, clock: Clock, kek: bytes, alg: str) -> SigningKey:
    """The active ID-token key of ``alg``, made now if there is none: for clients whose
    id_token_signed_response_alg is not the active key's (OIDC Registration §2). A rotation
    retires it with the active key; the next one is made on first need again."""
    for key in await store.list_signing_keys():
        if key.state == "active" and key.use_for == "id_token" and key.alg == alg:
            return key
    made = new_signing_key(_check_alg(alg), kek=kek, now=clock.now(), state="active")
    key = replace(made, use_for="id_token")
    try:
        await store.insert_signing_key(key)
    except Conflict:
        pass  # another process made one at the same moment: use that one
    else:
        log.info("ID-token signing key created", extra={"kid": key.kid, "alg": key.alg})
        return key
    for other in await store.list_signing_keys():
        if other.state == "active" and other.use_for == "id_token" and other.alg == alg:
            return other
    raise Conflict(f"no ID-token key for {alg}")


async def create_key(store: Store, clock: Clock, kek: bytes, *, alg: str = "ES256") -> SigningKey:
    """A new ``next`` key: published from now on, signing from the next rotation."""
    key = new_signing_key(_check_alg(alg), kek=kek, now=clock.now(), state="next")
    await store.insert_signing_key(key)
    log.info("signing key created", extra={"kid": key.kid, "alg": key.alg, "state": "next"})
    return key


async def rotate(
    store: Store, clock: Clock, kek: bytes, *, alg: str | None = None
) -> tuple[SigningKey, SigningKey | None]:
    """Activate the ``next`` key (the oldest, if several), or a new one of ``alg`` if there is
    none; the active key retires. Returns (new active key, retired key or None)."""
    keys = await store.list_signing_keys()
    previous = next((k for k in keys if k.state == "active" and k.use_for == "all"), None)
    upcoming = [k for k in keys if k.state == "next" and (alg is None or k.alg == alg)]
    if upcoming:
        chosen = upcoming[0]
    else:
        chosen = await create_key(store, clock, kek, alg=alg or "ES256")
    now = clock.now()
    # Introspection answers the retired key signed moments ago may still be checked: keep it
    # published a little while even if it signed no access token.
    await store.activate_signing_key(chosen.kid, now, retired_until=now + PUBLISH_GRANULARITY)
    log.info(
        "signing key rotated",
        extra={"kid": chosen.kid, "retired_kid": previous.kid if previous else None},
    )
    by_kid = {k.kid: k for k in await store.list_signing_keys()}
    retired = by_kid.get(previous.kid) if previous is not None else None
    return by_kid[chosen.kid], retired


async def retire(store: Store, clock: Clock, kid: str, *, immediately: bool = False) -> SigningKey:
    """Retire a key that does not sign (``next``, or retired already). ``immediately`` also
    unpublishes it now, so every token it signed stops validating: for a compromised key."""
    await store.retire_signing_key(kid, clock.now(), immediately=immediately)
    level = logging.WARNING if immediately else logging.INFO
    log.log(level, "signing key retired", extra={"kid": kid, "immediately": immediately})
    for key in await store.list_signing_keys():
        if key.kid == kid:
            return key
    raise NotFound(f"no signing key {kid!r}")


def key_view(key: SigningKey, now: int) -> dict[str, Any]:
    """A signing key as JSON for the CLI (never the private part)."""
    return {
        "kid": key.kid,
        "alg": key.alg,
        "state": key.state,
        "use": "id_token" if key.use_for == "id_token" else "all",
        "published": key.is_published(now),
        "created_at": key.created_at,
        "activated_at": key.activated_at,
        "retired_at": key.retired_at,
        "not_after": key.not_after if key.state == "retired" else None,
    }
