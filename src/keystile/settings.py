"""Settings, read in one place: flags > ``KEYSTILE_*`` environment > TOML file > defaults.

``ServerSettings.load(config_file, **flags)`` is the front door; code below it receives
typed values and never reads the environment itself.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationError, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    SettingsError,
    TomlConfigSettingsSource,
)

from keystile.errors import ConfigurationError


def is_loopback(host: str) -> bool:
    if host in ("localhost", "localhost.localdomain"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


class ServerSettings(BaseSettings):
    """Settings of the authorization server (``keystile serve``)."""

    model_config = SettingsConfigDict(
        env_prefix="KEYSTILE_", extra="forbid", frozen=True, validate_default=True
    )

    db: str = Field(
        "keystile.db",
        description="SQLite file path (the embedded default), or a postgresql:// URL.",
    )
    # -- PostgreSQL (scale-out): used only when `db` is a postgresql:// URL ------------------
    db_pool_size: int = Field(
        10, ge=1, le=500, description="PostgreSQL connections per AS process, at most."
    )
    db_acquire_timeout: float = Field(
        2.0, gt=0, le=60, description="Longest wait for a free connection, then 503 (seconds)."
    )
    db_max_waiting: int = Field(
        100,
        ge=0,
        description="Requests (or batches of introspection lookups) allowed to queue for a "
        "connection; beyond that, 503.",
    )
    db_query_timeout: float = Field(
        5.0, gt=0, le=300, description="Longest a PostgreSQL statement may take, then 503."
    )
    redis_url: str | None = Field(
        None,
        description="redis:// URL: share failed-authentication throttling across AS processes.",
    )
    redis_prefix: str = Field(
        "keystile",
        min_length=1,
        max_length=64,
        description="Prefix of keystile's Redis keys and channels (one per deployment).",
    )
    host: str = Field("127.0.0.1", description="Address to bind.")
    port: int = Field(8000, ge=0, le=65535, description="Port to bind (0: any free port).")
    issuer: str | None = Field(
        None, description="Issuer URL (RFC 8414 §2). Default: derived from scheme, host, port."
    )
    tls_cert: Path | None = Field(None, description="PEM certificate chain for HTTPS.")
    tls_key: Path | None = Field(None, description="PEM private key for HTTPS.")
    tls_client_ca: Path | None = Field(
        None,
        description="PEM CA certificates: with HTTPS, ask clients for a certificate verified "
        "against them, and bind their tokens to it (RFC 8705 section 3).",
    )
    tls_client_certificate_header: str | None = Field(
        None,
        description="Header a TLS-terminating proxy puts the client certificate in (URL-escaped "
        "PEM, base64 DER or Envoy's x-forwarded-client-cert); believed from trusted_proxies only.",
    )
    allow_insecure_http: bool = Field(
        False, description="Allow plain HTTP on a non-loopback address (behind a TLS proxy)."
    )
    workers: int = Field(1, ge=1, le=64, description="Server worker processes.")
    trusted_proxies: list[str] = Field(
        default_factory=list,
        description="Addresses of reverse proxies whose X-Forwarded-For/-Proto are believed.",
    )
    access_token_ttl: int = Field(
        3600, ge=1, le=86400 * 30, description="Default access-token lifetime for new clients."
    )
    id_token_ttl: int = Field(
        3600,
        ge=60,
        le=86400,
        description="ID-token lifetime in seconds (OpenID Connect; it grants nothing).",
    )
    max_body_bytes: int = Field(16384, ge=1024, le=1 << 20, description="Largest request body.")
    throttle_failures: int = Field(
        10, ge=1, description="Failed client authentications allowed per window, per key."
    )
    throttle_window: int = Field(60, ge=1, description="Throttle window in seconds.")
    purge_interval: int = Field(300, ge=0, description="Seconds between purges (0: never).")
    token_grace: int = Field(
        86400, ge=0, description="Keep expired token rows this long before purging."
    )
    event_retention: int = Field(7 * 86400, ge=60, description="Keep revocation events this long.")
    demo: bool | None = Field(
        None,
        description="Create the demo setup on an empty database. Default: only on loopback.",
    )
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    log_format: Literal["json", "text"] = "json"
    access_log: bool = Field(
        False,
        description="Also log successful requests (refusals, issuance and revocation always are).",
    )
    max_in_flight: int = Field(
        256,
        ge=0,
        le=100_000,
        description="Requests one process works on at once; past it, 503 with Retry-After: 1 "
        "(0: no limit). Fast-path introspection answers, /healthz, /readyz, /metrics and "
        "event streams are not counted.",
    )
    fast_path: bool = Field(
        True,
        description="Answer common introspection requests without ASGI (server/fastpath.py).",
    )
    stats_interval: float = Field(
        5.0,
        ge=0,
        le=300,
        description="With admin_api: seconds between publications of this process's "
        "dashboard counters to the store, so the console and GET /admin/v1/stats add up every "
        "process on the database; a process silent for three intervals is left out (0: each "
        "process shows only its own).",
    )
    answer_lease: float = Field(
        2.0,
        ge=0,
        le=60,
        description="PostgreSQL: seconds of an AS process's answer lease, under which it may "
        "answer introspection from memory; also the longest a write waits for a process that "
        "stopped answering (0: always read the database).",
    )
    # -- JWT access tokens and signing keys (docs/tokens.md) -----------------------------------
    key_encryption_key: str | None = Field(
        None,
        repr=False,
        description="Base64 of 32 random bytes: encrypts signing keys at rest (AES-256-GCM).",
    )
    key_encryption_key_file: Path | None = Field(
        None,
        description="File holding key_encryption_key. Default for SQLite: <db>.kek, made on "
        "first use.",
    )
    signing_key_alg: Literal["ES256", "RS256", "Ed25519", "EdDSA"] = Field(
        "ES256", description="Algorithm of the signing key made on first start."
    )
    jwks_max_age: int = Field(
        300, ge=0, le=86400, description="Cache-Control max-age of the JWKS, in seconds."
    )
    # -- people: sign-in, consent, authorization codes (issue 3) --------------------------------
    authorization_code_ttl: int = Field(
        60,
        ge=10,
        le=600,
        description="Lifetime of an authorization code, in seconds (RFC 6749 §4.1.2: at most "
        "10 minutes).",
    )
    session_ttl: int = Field(
        28800, ge=60, le=90 * 86400, description="How long a sign-in lasts, in seconds."
    )
    login_failures: int = Field(
        5, ge=1, description="Failed sign-ins allowed per window, per username and per address."
    )
    login_window: int = Field(300, ge=1, description="Sign-in throttle window in seconds.")
    # -- dynamic client registration (RFC 7591, RFC 7592; docs/registration.md) ---------------
    # -- sender-constrained tokens (RFC 9449 DPoP, RFC 8705 mTLS; docs/sender-constrained.md)
    dpop_nonce: bool = Field(
        False,
        description="Require a server nonce in DPoP proofs at the token endpoint (RFC 9449 "
        "section 8): proofs without a current one get use_dpop_nonce and a DPoP-Nonce header.",
    )
    dpop_nonce_secret: str | None = Field(
        None,
        description="Secret the DPoP nonces are made with; give every AS process the same one "
        "(default: random per process, fine for one process).",
    )
    dpop_max_age: int = Field(
        60, ge=5, le=600, description="Seconds a DPoP proof is accepted after its iat."
    )
    registration: Literal["off", "initial-access-token", "open"] = Field(
        "off",
        description="Who may register clients over HTTP: nobody (off), holders of an initial "
        "access token made with the CLI, or anyone (open; public clients only).",
    )
    registration_scopes: list[str] = Field(
        default_factory=list,
        description="The scopes a registered client may have (a ceiling); a registration "
        "without `scope` gets all of them.",
    )
    registration_audience: list[str] = Field(
        default_factory=list,
        description="Default audience (resource identifiers) of registered clients' tokens.",
    )
    registration_rate_limit: int = Field(
        20, ge=1, description="Registration requests allowed per address per window."
    )
    registration_rate_window: int = Field(
        3600, ge=1, description="Registration rate-limit window in seconds."
    )
    registration_open_max: int = Field(
        100, ge=0, description="Open registrations that may exist at once (a cap)."
    )
    registration_open_unused_ttl: int = Field(
        86400,
        ge=60,
        description="An open registration never used (no token issued) is deleted after this "
        "many seconds.",
    )

    # -- client ID metadata documents (draft-ietf-oauth-client-id-metadata-document;
    #    docs/client-metadata-documents.md) ----------------------------------------------------
    client_metadata_documents: bool = Field(
        False,
        description="Accept an https URL as client_id: fetch the client's metadata document "
        "from it and treat it as a public client (or private_key_jwt with jwks).",
    )
    client_metadata_documents_max_bytes: int = Field(
        5120,
        ge=256,
        le=1 << 20,
        description="Largest metadata document read, in bytes (the draft recommends 5 KB).",
    )
    client_metadata_documents_timeout: float = Field(
        5.0,
        gt=0,
        le=60,
        description="Longest a document fetch may take in all (resolve, connect, TLS, read).",
    )
    client_metadata_documents_min_ttl: int = Field(
        60,
        ge=0,
        le=86400,
        description="Shortest time a fetched document is used before fetching it again "
        "(also for no-store, no-cache or no Cache-Control).",
    )
    client_metadata_documents_max_ttl: int = Field(
        86400,
        ge=0,
        le=30 * 86400,
        description="Longest time a fetched document is used, whatever its max-age says.",
    )
    client_metadata_documents_unused_ttl: int = Field(
        86400,
        ge=60,
        description="A client known by its document that never got a token is forgotten "
        "after this many seconds (disabled ones are kept: they stay blocked).",
    )
    client_metadata_documents_allowed_hosts: list[str] = Field(
        default_factory=list,
        description="Hosts whose client ids are accepted: exact names or *.example.com "
        "(empty: any public host).",
    )
    client_metadata_documents_blocked_hosts: list[str] = Field(
        default_factory=list,
        description="Hosts whose client ids are refused: exact names or *.example.com.",
    )
    client_metadata_documents_allow_private: bool = Field(
        False,
        description="DEVELOPMENT ONLY: also fetch from loopback, private and other "
        "special-use addresses (draft section 8.6 forbids it in production).",
    )
    client_metadata_documents_ca_file: Path | None = Field(
        None,
        description="PEM file of the CAs trusted for document fetches instead of the "
        "default bundle (certifi's, as httpx uses): a private PKI, or a development CA.",
    )

    # -- the admin API and console (docs/admin.md) ---------------------------------------------
    admin_api: bool = Field(
        False,
        description="Serve the admin API under /admin/v1 (and the console under /admin/), for "
        "bearer tokens with scope keystile:admin or keystile:admin:read.",
    )
    admin_api_allow: list[str] = Field(
        default_factory=list,
        description="Addresses (CIDRs such as 10.0.0.0/8 or single addresses) the admin API "
        "and console answer; empty: any address.",
    )

    @field_validator("admin_api_allow")
    @classmethod
    def _check_admin_allow(cls, value: list[str]) -> list[str]:
        for item in value:
            try:
                ipaddress.ip_network(item, strict=False)
            except ValueError:
                raise ValueError(
                    f"admin_api_allow: {item!r} is not an address or CIDR (such as 10.0.0.0/8)"
                ) from None
        return value

    @field_validator("issuer")
    @classmethod
    def _check_issuer(cls, value: str | None) -> str | None:
        if value is None:
            return None
        # RFC 8414 §2: an https URL with no query or fragment (http only for loopback dev).
        from urllib.parse import urlsplit

        parts = urlsplit(value)
        if parts.scheme not in ("https", "http") or not parts.netloc:
            raise ValueError("issuer must be an absolute http(s) URL")
        if parts.query or parts.fragment:
            raise ValueError("issuer must have no query or fragment (RFC 8414 section 2)")
        return value.rstrip("/")

    @field_validator("redis_url")
    @classmethod
    def _check_redis_url(cls, value: str | None) -> str | None:
        if not value:
            return None
        if not value.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError("redis_url must start with redis://, rediss:// or unix://")
        return value

    @model_validator(mode="after")
    def _check_kek(self) -> ServerSettings:
        if self.key_encryption_key is not None and self.key_encryption_key_file is not None:
            raise ValueError("give key_encryption_key or key_encryption_key_file, not both")
        return self

    @model_validator(mode="after")
    def _check_metadata_document_ttl(self) -> ServerSettings:
        if self.client_metadata_documents_min_ttl > self.client_metadata_documents_max_ttl:
            raise ValueError(
                "client_metadata_documents_min_ttl must not exceed "
                "client_metadata_documents_max_ttl"
            )
        return self

    @property
    def default_kek_file(self) -> Path | None:
        """Where the SQLite store keeps a generated key-encryption key: next to the database
        (None for PostgreSQL, whose processes must all be given the same key)."""
        if self.uses_postgres:
            return None
        db = self.db.removeprefix("sqlite:///")
        return Path(db + ".kek")

    @property
    def sqlite_path(self) -> Path | None:
        """The SQLite file ``db`` names (None for PostgreSQL and for ``:memory:``)."""
        if self.uses_postgres:
            return None
        db = self.db.removeprefix("sqlite:///")
        return None if db == ":memory:" else Path(db)

    @property
    def uses_postgres(self) -> bool:
        return self.db.startswith(("postgres://", "postgresql://"))

    @property
    def db_display(self) -> str:
        """``db`` without any password in it, for messages and logs."""
        return re.sub(r"(://[^:/@]+:)[^@]*@", r"\1***@", self.db)

    @model_validator(mode="after")
    def _check_tls(self) -> ServerSettings:
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("tls_cert and tls_key go together")
        return self

    @property
    def tls(self) -> bool:
        return self.tls_cert is not None

    @property
    def effective_issuer(self) -> str:
        if self.issuer:
            return self.issuer
        scheme = "https" if self.tls else "http"
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{scheme}://{host}:{self.port}"

    @property
    def demo_enabled(self) -> bool:
        return is_loopback(self.host) if self.demo is None else self.demo

    def check_bind(self) -> None:
        """Refuse plain HTTP on a non-loopback address unless explicitly allowed."""
        if not self.tls and not is_loopback(self.host) and not self.allow_insecure_http:
            raise ConfigurationError(
                f"refusing to serve plain HTTP on {self.host}: bearer tokens and client "
                "secrets would cross the network in clear. Give --tls-cert/--tls-key, or "
                "--allow-insecure-http when a TLS-terminating proxy is in front."
            )

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        toml_file = _TOML_FILE.get("path")
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        if toml_file is not None:
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=toml_file))
        return tuple(sources)

    @classmethod
    def load(cls, config_file: Path | None = None, **flags: Any) -> ServerSettings:
        """Build settings from a TOML file, the environment and flags (None = not given)."""
        given = {k: v for k, v in flags.items() if v is not None}
        if config_file is not None and not config_file.is_file():
            raise ConfigurationError(f"config file not found: {config_file}")
        _TOML_FILE["path"] = config_file
        try:
            return cls(**given)
        except ValidationError as exc:
            raise ConfigurationError(_describe(exc, config_file, given)) from exc
        except SettingsError as exc:  # an environment value that is not JSON for a list
            raise ConfigurationError(_describe_unparsed(exc, config_file, given)) from exc
        except ValueError as exc:  # the TOML file does not parse
            raise ConfigurationError(f"invalid settings file {config_file}: {exc}") from exc
        finally:
            _TOML_FILE.pop("path", None)


_TOML_FILE: dict[str, Path | None] = {}


def _describe(exc: ValidationError, config_file: Path | None, flags: dict[str, Any]) -> str:
    """One clause per problem, naming where the bad value came from (the flag, the
    ``KEYSTILE_*`` variable or the TOML key) and the rule, without pydantic's boilerplate:
    ``KEYSTILE_PORT=abc: port must be an integer``."""
    problems = []
    for error in exc.errors(include_url=False):
        name = str(error["loc"][0]) if error["loc"] else ""
        if error["type"] == "extra_forbidden":
            # Only the TOML file can carry extra keys: flags are fixed, stray env vars ignored.
            where = f" in {config_file}" if config_file is not None else ""
            known = ", ".join(sorted(ServerSettings.model_fields))
            problems.append(f"unknown setting {name!r}{where} (known settings: {known})")
        elif name:
            whole = len(error["loc"]) == 1  # the input is the setting's value, not a part
            value = error["input"] if whole else _NOT_SHOWN
            source = _source(name, value, config_file, flags)
            problems.append(f"{source}: {_rule(name, error)}")
        else:
            problems.append(error["msg"].removeprefix("Value error, "))
    return "invalid settings: " + "; ".join(problems)


def _describe_unparsed(exc: SettingsError, config_file: Path | None, flags: dict[str, Any]) -> str:
    match = re.search(r'field "(\w+)"', str(exc))
    if match is None or match.group(1) not in ServerSettings.model_fields:
        return f"invalid settings: {exc}"
    name = match.group(1)
    return (
        f"invalid settings: {_source(name, _NOT_SHOWN, config_file, flags)}: "
        f'{name} must be a JSON list, such as ["10.0.0.1"]'
    )


_NOT_SHOWN = object()
_SECRET_SETTINGS = frozenset({"key_encryption_key"})


def _shown(name: str, value: object) -> str:
    """A value for an error message: never a secret, passwords in URLs masked, cut short."""
    if value is _NOT_SHOWN or name in _SECRET_SETTINGS:
        return ""
    text = re.sub(r"(://[^:/@]+:)[^@]*@", r"\1***@", str(value))
    return text if len(text) <= 60 else text[:57] + "..."


def _source(name: str, value: object, config_file: Path | None, flags: dict[str, Any]) -> str:
    """Where the value of setting ``name`` came from, by precedence: flag, environment, file."""
    shown = _shown(name, value)
    if name in flags:
        flag = "--" + name.replace("_", "-")
        return f"{flag} {shown}" if shown else flag
    env = f"KEYSTILE_{name}".upper()
    for key, raw in os.environ.items():
        if key.upper() == env:  # pydantic-settings matches names case-insensitively
            shown = _shown(name, raw)
            return f"{key}={shown}" if shown else key
    if config_file is not None:
        if not shown:
            return f"{name} in {config_file}"
        # As TOML writes it: strings quoted (and masked), numbers, booleans and lists as is.
        literal = json.dumps(shown if isinstance(value, str) else value, default=str)
        return f"{name} = {literal} in {config_file}"
    return name


def _rule(name: str, error: Any) -> str:
    """The broken rule in words, starting with the setting's name."""
    kind, ctx, msg = error["type"], error.get("ctx") or {}, error["msg"]
    phrases = {
        "int_parsing": "must be an integer",
        "int_from_float": "must be an integer",
        "int_type": "must be an integer",
        "float_parsing": "must be a number",
        "float_type": "must be a number",
        "bool_parsing": "must be true or false",
        "bool_type": "must be true or false",
        "greater_than_equal": f"must be at least {ctx.get('ge')}",
        "greater_than": f"must be more than {ctx.get('gt')}",
        "less_than_equal": f"must be at most {ctx.get('le')}",
        "less_than": f"must be less than {ctx.get('lt')}",
        "literal_error": f"must be {ctx.get('expected')}",
        "string_too_short": f"must have at least {ctx.get('min_length')} characters",
        "string_too_long": f"must have at most {ctx.get('max_length')} characters",
    }
    if kind in phrases:
        return f"{name} {phrases[kind]}"
    message = str(msg).removeprefix("Value error, ")
    if message.startswith(f"{name} "):
        return message  # our own validators already name the setting
    if message.startswith("Input should be"):
        return f"{name} must be" + message.removeprefix("Input should be")
    return f"{name}: {message}"
