"""Client ID metadata documents (draft-ietf-oauth-client-id-metadata-document): fetching a
client's document from its client_id URL, safely, and knowing the client by it.

``DocumentFetcher`` is the SSRF-hardened GET (draft §5, §8.6, §8.7); ``MetadataDocumentClients``
answers "which client is this client_id?" for the authorization and token endpoints: a
registered client as before, or, for an https URL while the feature is on, the client its
document describes (kept as a client row, so it shows in ``keystile client list`` and an
operator can disable it like any other).
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import logging
import secrets
import socket
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, replace
from typing import Any

import httpx

from keystile.clock import Clock
from keystile.core.client_metadata_document import (
    METADATA_DOCUMENT,
    ClientIdUrlError,
    cache_lifetime,
    check_client_id_url,
    check_document,
    host_matches,
    is_client_id_url,
    is_special_use,
)
from keystile.core.models import Client, ClientRegistration
from keystile.core.registration import ClientMetadata
from keystile.core.tokens import token_hash
from keystile.errors import OAuthError
from keystile.settings import ServerSettings
from keystile.store.base import Conflict, Store

log = logging.getLogger("keystile.server")

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Resolver = Callable[[str, int], Awaitable[list[IPAddress]]]
MAX_ADDRESSES_TRIED = 3
_JSON_TYPES = ("application/json",)


class DocumentUnavailable(Exception):
    """A client_id URL whose document could not be fetched or is not acceptable. The
    ``reason`` names the rule, never the document's content, and may be shown to people."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class FetchedDocument:
    body: Any  # the parsed JSON
    ttl: int  # seconds it may be used (draft §5.2)
    address: str  # the address it came from
    size: int


async def resolve_host(host: str, port: int) -> list[IPAddress]:
    """The addresses ``host`` resolves to, in the resolver's order (an IP literal: itself)."""
    try:
        return [ipaddress.ip_address(host)]
    except ValueError:
        pass
    loop = asyncio.get_running_loop()
    infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP)
    out: list[IPAddress] = []
    for _family, _type, _proto, _name, sockaddr in infos:
        address = ipaddress.ip_address(sockaddr[0])
        if address not in out:
            out.append(address)
    return out


class DocumentFetcher:
    """GET one Client ID Metadata Document, refusing what could turn the AS into a proxy
    for an attacker (draft §8.6) or tie it up (§8.7).

    - The host is resolved once, every address it resolves to is checked (none may be a
      special-use address of RFC 6890), and the connection goes to a checked address: the
      URL's host is replaced by that address while TLS still sends the name (SNI) and
      verifies the certificate for it, and ``Host`` names it. No second lookup happens, so
      DNS rebinding between the check and the connection is impossible.
    - No redirects are followed (draft §5), no proxy from the environment is used, and a
      new connection is made per fetch (a pooled one, verified for another name on the
      same address, is never reused).
    - The whole fetch (resolve, connect, TLS, headers, body) has one deadline, and the
      body is read in chunks and abandoned past ``max_bytes``.
    """

    def __init__(
        self,
        *,
        max_bytes: int,
        timeout: float,
        min_ttl: int,
        max_ttl: int,
        allow_private: bool = False,
        verify: ssl.SSLContext | None = None,
        resolve: Resolver = resolve_host,
    ) -> None:
        self.max_bytes = max_bytes
        self.timeout = timeout
        self.min_ttl = min_ttl
        self.max_ttl = max_ttl
        self.allow_private = allow_private
        # Built once (loading a CA bundle costs milliseconds): httpx's default trust store.
        self._verify = verify if verify is not None else _default_trust()
        self._resolve = resolve

    @classmethod
    def from_settings(cls, settings: ServerSettings) -> DocumentFetcher:
        verify = None
        if settings.client_metadata_documents_ca_file is not None:
            verify = ssl.create_default_context(
                cafile=str(settings.client_metadata_documents_ca_file)
            )
        return cls(
            max_bytes=settings.client_metadata_documents_max_bytes,
            timeout=settings.client_metadata_documents_timeout,
            min_ttl=settings.client_metadata_documents_min_ttl,
            max_ttl=settings.client_metadata_documents_max_ttl,
            allow_private=settings.client_metadata_documents_allow_private,
            verify=verify,
        )

    async def fetch(self, url: str) -> FetchedDocument:
        """Fetch and parse the document at a checked Client Identifier URL."""
        try:
            host, port = check_client_id_url(url)
        except ClientIdUrlError as exc:
            raise DocumentUnavailable(
                f"client_id is not a valid client identifier URL: {exc}"
            ) from None
        try:
            async with asyncio.timeout(self.timeout):
                return await self._fetch(url, host, port)
        except TimeoutError:
            raise DocumentUnavailable(
                f"fetching the document took longer than {self.timeout:g} s"
            ) from None

    async def _fetch(self, url: str, host: str, port: int) -> FetchedDocument:
        try:
            addresses = await self._resolve(host, port)
        except OSError:
            raise DocumentUnavailable("the client_id host does not resolve") from None
        if not addresses:
            raise DocumentUnavailable("the client_id host does not resolve")
        if not self.allow_private:
            # draft §8.6: MUST NOT fetch from special-use addresses. All must pass, not
            # just the one used: a name that also points inside is not to be trusted.
            for address in addresses:
                if is_special_use(address):
                    raise DocumentUnavailable(
                        "the client_id host resolves to a special-use (private, loopback, "
                        "link-local or reserved) address (draft section 8.6)"
                    )
        last: Exception | None = None
        for address in addresses[:MAX_ADDRESSES_TRIED]:
            try:
                async with self._get(url, host, port, address) as response:
                    return await self._read(response, address)
            except httpx.ConnectError as exc:
                last = exc  # try the next address (an IPv6 one that does not answer, say)
            except httpx.HTTPError as exc:
                raise DocumentUnavailable(f"fetching the document failed ({_kind(exc)})") from None
        raise DocumentUnavailable(f"could not connect to the client_id host ({_kind(last)})")

    @contextlib.asynccontextmanager
    async def _get(
        self, url: str, host: str, port: int, address: IPAddress
    ) -> AsyncIterator[httpx.Response]:
        pinned = httpx.URL(url).copy_with(host=str(address))
        host_header = host if port == 443 else f"{host}:{port}"
        async with (
            httpx.AsyncClient(
                verify=self._verify,
                follow_redirects=False,
                trust_env=False,
                timeout=self.timeout,
                limits=httpx.Limits(max_connections=1, max_keepalive_connections=0),
            ) as client,
            client.stream(
                "GET",
                pinned,
                # identity: the byte limit then counts what is parsed (no compression bomb).
                headers={
                    "Host": host_header,
                    "Accept": "application/json",
                    "Accept-Encoding": "identity",
                },
                # TLS: SNI and certificate verification for the name, not the address.
                extensions={"sni_hostname": host},
            ) as response,
        ):
            yield response

    async def _read(self, response: httpx.Response, address: IPAddress) -> FetchedDocument:
        if response.is_redirect:
            # draft §5: MUST NOT follow redirects; a document must be served at its URL.
            raise DocumentUnavailable(
                f"the client_id URL answered a redirect ({response.status_code}); redirects "
                "are not followed (draft section 5)"
            )
        if response.status_code != 200:
            raise DocumentUnavailable(
                f"the client_id URL answered {response.status_code}, not 200 (draft section 5)"
            )
        media_type = response.headers.get("content-type", "").split(";")[0].strip().lower()
        if media_type not in _JSON_TYPES and not (
            media_type.startswith("application/") and media_type.endswith("+json")
        ):
            raise DocumentUnavailable("the document is not served as JSON (draft section 4)")
        if response.headers.get("content-encoding", "identity").lower() != "identity":
            raise DocumentUnavailable("the document is compressed; it must be sent as is")
        length = response.headers.get("content-length", "")
        if length.isdigit() and int(length) > self.max_bytes:
            raise DocumentUnavailable(_too_large(self.max_bytes))
        raw = bytearray()
        async for chunk in response.aiter_raw():
            raw += chunk
            if len(raw) > self.max_bytes:
                # draft §8.7: stop reading past the limit and treat it as an error.
                raise DocumentUnavailable(_too_large(self.max_bytes))
        try:
            body = json.loads(bytes(raw))
        except ValueError:
            raise DocumentUnavailable("the document is not valid JSON") from None
        ttl = cache_lifetime(
            response.headers.get("cache-control"), minimum=self.min_ttl, maximum=self.max_ttl
        )
        return FetchedDocument(body=body, ttl=ttl, address=str(address), size=len(raw))


def _default_trust() -> ssl.SSLContext:
    import certifi  # httpx's own dependency and default CA bundle

    return ssl.create_default_context(cafile=certifi.where())


def _too_large(limit: int) -> str:
    return f"the document is larger than {limit} bytes (draft section 8.7)"


def _kind(exc: Exception | None) -> str:
    if isinstance(exc, httpx.ConnectError) and "CERTIFICATE_VERIFY_FAILED" in str(exc):
        return "certificate not trusted"
    return type(exc).__name__ if exc is not None else "no address"


class MetadataDocumentClients:
    """Which client a client_id names, for the authorization and token endpoints.

    ``get_client("app-1")`` reads the store, as before. ``get_client("https://…")`` with
    the feature on:

    1. a client registered by other means under that id (an operator's pre-registration,
       draft §7.2) is used as it is, never fetched;
    2. a blocked host, or a host outside the allow-list, is refused; a client an operator
       disabled stays disabled (callers refuse it), without any fetch;
    3. a document fetched less than its cache lifetime ago (draft §5.2) is used from the
       store; otherwise it is fetched again (one fetch at a time per URL), checked, and its
       client row written. A failure is never cached (§5.2: MUST NOT cache errors or
       invalid documents): the next request tries again.
    """

    def __init__(
        self,
        settings: ServerSettings,
        store: Store,
        clock: Clock,
        *,
        fetcher: DocumentFetcher | None = None,
        on_fetch: Callable[[str], None] | None = None,
    ) -> None:
        self.enabled = settings.client_metadata_documents
        self.store = store
        self.clock = clock
        self.fetcher = fetcher or DocumentFetcher.from_settings(settings)
        self.allowed = list(settings.client_metadata_documents_allowed_hosts)
        self.blocked = list(settings.client_metadata_documents_blocked_hosts)
        self.scope_ceiling = frozenset(settings.registration_scopes)
        self.audience = tuple(settings.registration_audience)
        self.ttl = settings.access_token_ttl
        self.unused_ttl = settings.client_metadata_documents_unused_ttl
        self._fresh: dict[str, int] = {}  # URL -> the clock's second its document goes stale
        self._locks: dict[str, asyncio.Lock] = {}
        self._on_fetch = on_fetch or (lambda result: None)

    async def get_client(self, client_id: str) -> Client | None:
        """The client ``client_id`` names, or None if there is none.

        Raises ``DocumentUnavailable`` for a client_id URL whose document cannot be used.
        """
        if not is_client_id_url(client_id):
            return await self.store.get_client(client_id)
        existing = await self.store.get_client(client_id)
        if existing is not None:
            registration = await self.store.get_registration(client_id)
            if registration is None or registration.method != METADATA_DOCUMENT:
                return existing  # draft §7.2: pre-registered; nothing to fetch
        if not self.enabled:
            return None  # turned off: clients known by their documents are unknown again
        try:
            host, _port = check_client_id_url(client_id)
        except ClientIdUrlError as exc:
            raise DocumentUnavailable(
                f"client_id is not a valid client identifier URL: {exc}"
            ) from None
        if host_matches(host, self.blocked) or (
            self.allowed and not host_matches(host, self.allowed)
        ):
            # draft §8.9: the operator's own policy on domains.
            raise DocumentUnavailable("clients from this host are not accepted here")
        if existing is not None and not existing.enabled:
            return existing  # disabled by an operator: refused by the caller, never fetched
        if existing is not None and self.clock.now() < self._fresh.get(client_id, 0):
            return existing
        lock = self._locks.setdefault(client_id, asyncio.Lock())
        try:
            async with lock:  # concurrent requests for one URL share one fetch
                if self.clock.now() < self._fresh.get(client_id, 0):
                    again = await self.store.get_client(client_id)
                    if again is not None:
                        return again
                return await self._refresh(client_id, host)
        finally:
            if not lock.locked() and self._locks.get(client_id) is lock:
                del self._locks[client_id]

    async def _refresh(self, url: str, host: str) -> Client | None:
        try:
            document = await self.fetcher.fetch(url)
            try:
                metadata = check_document(document.body, url=url, scope_ceiling=self.scope_ceiling)
            except OAuthError as exc:  # any RFC 7591 §3.2.2 refusal of registration rules
                raise DocumentUnavailable(
                    f"the document is not acceptable: {exc.description}"
                ) from None
        except DocumentUnavailable as exc:
            self._fresh.pop(url, None)
            self._on_fetch("refused")
            log.warning(
                "client metadata document refused",
                extra={"client_id": url, "host": host, "reason": exc.reason},
            )
            raise
        client = await self._store(url, host, metadata)
        now = self.clock.now()
        if len(self._fresh) >= 4096:
            self._fresh.clear()
        self._fresh[url] = now + document.ttl
        self._on_fetch("ok")
        log.info(
            "client metadata document fetched",
            extra={
                "client_id": url,
                "host": host,
                "address": document.address,
                "bytes": document.size,
                "ttl": document.ttl,
                "token_endpoint_auth_method": metadata.token_endpoint_auth_method,
            },
        )
        return client

    async def _store(self, url: str, host: str, metadata: ClientMetadata) -> Client | None:
        """Write the client row the document describes (created, or updated when the
        document changed) and answer it as stored."""
        now = self.clock.now()
        client = Client(
            client_id=url,
            # The name it gives itself; people are also shown the host (draft §8.5).
            name=metadata.extra.get("client_name", host),
            # No secret exists (draft §4.1): an unusable random digest, as for public
            # clients made with the CLI, so no empty digest ever exists to match.
            secret_hash=token_hash(secrets.token_urlsafe(32)),
            auth_method=metadata.token_endpoint_auth_method,
            grant_types=frozenset(metadata.grant_types),
            scopes=metadata.scope,
            default_audience=self.audience,
            access_token_ttl=self.ttl,
            enabled=True,
            created_at=now,
            updated_at=now,
            jwks=metadata.jwks,
            redirect_uris=metadata.redirect_uris,
        )
        stored = metadata.stored()
        existing = await self.store.get_client(url)
        if existing is None:
            # Anyone can publish documents at new URLs: forget the ones that never got a
            # token, so that they cannot fill the store (disabled ones stay blocked).
            await self.store.expire_registrations(
                METADATA_DOCUMENT, now - self.unused_ttl, now, keep_disabled=True
            )
            registration = ClientRegistration(
                client_id=url,
                method=METADATA_DOCUMENT,
                registered_at=now,
                # No registration access token either (RFC 7592 does not apply): a digest
                # of a random value nobody holds.
                access_token_hash=token_hash(secrets.token_urlsafe(32)),
                metadata=stored,
            )
            with contextlib.suppress(Conflict):  # another process wrote it meanwhile
                await self.store.register_client(client, registration)
            return await self.store.get_client(url)
        known = await self.store.get_registration(url)
        if known is not None and known.metadata == stored:
            return existing
        if not existing.enabled:
            return existing
        updated = replace(
            client,
            secret_hash=existing.secret_hash,
            created_at=existing.created_at,
            # What an operator may have set with `keystile client update` stays.
            default_audience=existing.default_audience,
            access_token_ttl=existing.access_token_ttl,
            token_format=existing.token_format,
            refresh_token_ttl=existing.refresh_token_ttl,
            refresh_token_max_ttl=existing.refresh_token_max_ttl,
        )
        await self.store.update_registration(updated, stored)
        log.info("client metadata document changed", extra={"client_id": url, "host": host})
        return updated
