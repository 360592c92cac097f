"""The server's view of its signing keys: a KeyRing kept in step with the store.

Key changes in any process (``keystile key rotate`` in a shell, a second worker making the
first key) bump the registry version through database triggers, the same number the
introspection hot path reads with every token. So the ring is checked against the version a
request observed, and reloaded only when it moved: no extra read on the hot path.
"""

from __future__ import annotations

import logging

from keystile import key_admin
from keystile.clock import Clock
from keystile.core.jwt_profile import verify_access_token
from keystile.core.models import TokenRecord
from keystile.core.signing_keys import KeyEncryptionError, KeyRing, Signer
from keystile.errors import ConfigurationError, ServerError
from keystile.settings import ServerSettings
from keystile.store.base import Store

log = logging.getLogger("keystile.server")

NO_SIGNING_KEY = "the server has no usable signing key (see docs/tokens.md)"


class SigningKeys:
    """Signing keys for one server process: ``signer()``, ``lookup(jwt)``, ``jwks(now)``."""

    def __init__(self, settings: ServerSettings, store: Store, clock: Clock) -> None:
        self.settings = settings
        self.store = store
        self.clock = clock
        self.issuer = settings.effective_issuer
        self.ring = KeyRing((), version=-1, kek=None)
        self._kek: bytes | None = None
        self._kek_loaded = False
        self._warned = False
        self._started = False

    def kek(self) -> bytes | None:
        """The key-encryption key, read (or, for SQLite, made) once, on first need. A broken
        KEK setting is logged and counts as none: verifying needs only public keys."""
        if not self._kek_loaded:
            self._kek_loaded = True
            try:
                self._kek = key_admin.load_kek(self.settings)
            except ConfigurationError as exc:
                log.error("signing keys unavailable", extra={"error": str(exc)})
        return self._kek

    async def start(self) -> None:
        """First start: make an active key if there is none (and a KEK to protect it)."""
        kek = self.kek()
        key = await key_admin.ensure_active_key(
            self.store, self.clock, kek, self.settings.signing_key_alg
        )
        self._started = True
        if key is None:
            self._warn_no_key()
        await self.current()

    def _warn_no_key(self) -> None:
        if not self._warned:
            self._warned = True
            log.warning(
                "no signing key and no key_encryption_key: JWT access tokens and signed "
                "introspection answers are unavailable until one is configured"
            )

    async def refresh(self, version: int) -> KeyRing:
        ring = KeyRing(await self.store.list_signing_keys(), version=version, kek=self._kek)
        self.ring = ring
        return ring

    async def current(self, version: int | None = None) -> KeyRing:
        """The ring as of ``version`` (read from the store if not given)."""
        if version is None:
            version, _ = await self.store.lookup_token(None)
        if version != self.ring.version:
            self.kek()  # the ring decrypts with it
            return await self.refresh(version)
        return self.ring

    async def ready(self, version: int | None = None) -> KeyRing:
        """The current ring, after the first start's key creation (for apps run without a
        lifespan, such as in-process tests, it happens on first need)."""
        ring = await self.current(version)
        if ring.active is None and not self._started:
            await self.start()
            ring = await self.current()
        return ring

    async def signer(self, version: int | None = None) -> Signer:
        """The active key, ready to sign; ServerError (500) if there is none."""
        ring = await self.ready(version)
        try:
            signer = ring.signer()
        except KeyEncryptionError as exc:
            log.error("cannot use the active signing key", extra={"error": str(exc)})
            raise ServerError(NO_SIGNING_KEY) from None
        if signer is None:
            self._warn_no_key()
            raise ServerError(NO_SIGNING_KEY)
        return signer

    async def id_token_signer(self, alg: str | None) -> Signer:
        """The key for an ID token of ``alg`` (None: the active key's): the active key, or
        an ID-token key of that algorithm, made on first need (OIDC Registration §2)."""
        signer = await self.signer()
        if alg is None or alg == signer.alg:
            return signer
        ring = self.ring
        if ring.id_token_key(alg) is None:
            kek = self.kek()
            if kek is None:
                raise ServerError(NO_SIGNING_KEY)
            await key_admin.ensure_id_token_key(self.store, self.clock, kek, alg)
            ring = await self.current()
        try:
            found = ring.id_token_signer(alg)
        except KeyEncryptionError as exc:
            log.error("cannot use the ID-token signing key", extra={"error": str(exc)})
            raise ServerError(NO_SIGNING_KEY) from None
        if found is None:
            raise ServerError(NO_SIGNING_KEY)
        return found

    async def lookup(self, token: str) -> tuple[int, TokenRecord | None]:
        """Introspection's single read for a JWT-shaped token: the registry version, and the
        record only if the token is one of ours (RFC 9068), decided before the lookup."""
        ring = self.ring
        digest = verify_access_token(token, ring, issuer=self.issuer, now=self.clock.now())
        version, record = await self.store.lookup_token(digest)
        if version == ring.version:
            return version, record
        # Keys may have changed since the ring was loaded (rotation, retirement, first key):
        # decide again with the keys as of this version. Rare: once per registry change.
        ring = await self.current(version)
        again = verify_access_token(token, ring, issuer=self.issuer, now=self.clock.now())
        if again is None:
            return version, None
        if digest is None:
            return await self.store.lookup_token(again)
        return version, record
