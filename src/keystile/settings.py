"""Settings, read in one place: flags > ``KEYSTILE_*`` environment > TOML file > defaults.

``ServerSettings.load(config_file, **flags)`` is the front door; code below it receives
typed values and never reads the environment itself.
"""

from __future__ import annotations

import ipaddress
import re
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationError, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
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
    fast_path: bool = Field(
        True,
        description="Answer common introspection requests without ASGI (server/fastpath.py).",
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

    @property
    def default_kek_file(self) -> Path | None:
        """Where the SQLite store keeps a generated key-encryption key: next to the database
        (None for PostgreSQL, whose processes must all be given the same key)."""
        if self.uses_postgres:
            return None
        db = self.db.removeprefix("sqlite:///")
        return Path(db + ".kek")

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
            raise ConfigurationError(_describe(exc, config_file)) from exc
        except ValueError as exc:  # the TOML file does not parse
            raise ConfigurationError(f"invalid settings file {config_file}: {exc}") from exc
        finally:
            _TOML_FILE.pop("path", None)


_TOML_FILE: dict[str, Path | None] = {}


def _describe(exc: ValidationError, config_file: Path | None) -> str:
    """One clause per problem, naming the setting, without pydantic's boilerplate and URLs."""
    problems = []
    for error in exc.errors(include_url=False):
        name = ".".join(str(part) for part in error["loc"])
        message = error["msg"].removeprefix("Value error, ")
        if error["type"] == "extra_forbidden":
            # Only the TOML file can carry extra keys: flags are fixed, stray env vars ignored.
            where = f" in {config_file}" if config_file is not None else ""
            known = ", ".join(sorted(ServerSettings.model_fields))
            problems.append(f"unknown setting {name!r}{where} (known settings: {known})")
        elif name:
            problems.append(f"{name}: {message}")
        else:
            problems.append(message)
    return "invalid settings: " + "; ".join(problems)
