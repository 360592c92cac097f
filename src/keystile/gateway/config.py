"""The gateway's configuration: one TOML file, validated in full before anything starts.

``load_config(path)`` reads the file, checks every key (unknown keys, bad URLs, duplicate
routes, options that cannot work together) and reports all problems at once as a
``ConfigurationError``; ``keystile gateway`` turns that into exit code 2. The client secret the
gateway introspects with comes from the file (``client_secret``), a file it names
(``client_secret_file``), or the ``KEYSTILE_GATEWAY_CLIENT_SECRET`` environment variable, which
wins over both (see docs/gateway.md).
"""

from __future__ import annotations

import ipaddress
import os
import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)

from keystile.errors import ConfigurationError
from keystile.resource.introspection import tls_verify

SECRET_ENV = "KEYSTILE_GATEWAY_CLIENT_SECRET"  # noqa: S105 - a variable name, not a secret

# RFC 9110 §5.1 field-name / §9.1 method: a token.
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_HOST = re.compile(r"(\*\.)?[a-z0-9]([a-z0-9\-]*[a-z0-9])?(\.[a-z0-9]([a-z0-9\-]*[a-z0-9])?)*")
# Headers the gateway manages itself; identity headers may not take these names.
_RESERVED_HEADERS = frozenset(
    {
        "authorization",
        "host",
        "content-length",
        "content-type",
        "transfer-encoding",
        "connection",
        "keep-alive",
        "upgrade",
        "te",
        "trailer",
        "proxy-authorization",
        "proxy-authenticate",
        "x-forwarded-for",
        "x-forwarded-proto",
        "x-forwarded-host",
        "forwarded",
        "cookie",
        "set-cookie",
        "www-authenticate",
    }
)


def _folded(name: str) -> str:
    """A header name as CGI/WSGI upstreams see it: case and ``_``/``-`` do not count."""
    return name.lower().replace("_", "-")


def _http_url(value: str, *, what: str, allow_path: bool = True) -> str:
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"{what} must be an absolute http:// or https:// URL, not {value!r}")
    if parts.username is not None or parts.password is not None:
        raise ValueError(f"{what} must not carry credentials in the URL")
    if parts.query or parts.fragment:
        raise ValueError(f"{what} must have no query or fragment: {value!r}")
    if not allow_path and parts.path not in ("", "/"):
        raise ValueError(f"{what} must have no path: {value!r}")
    try:
        parts.port  # noqa: B018 - raises on a bad port
    except ValueError as exc:
        raise ValueError(f"{what} has an invalid port: {value!r}") from exc
    return value


def _path(value: str, *, what: str) -> str:
    """A normalized path prefix: starts with '/', no trailing '/', no dot or empty segments."""
    if not value.startswith("/"):
        raise ValueError(f"{what} must start with '/': {value!r}")
    if "?" in value or "#" in value or "%" in value:
        raise ValueError(f"{what} must be a plain path, without '?', '#' or '%': {value!r}")
    stripped = value.rstrip("/") or "/"
    segments = stripped.split("/")[1:]
    if stripped != "/" and any(s in ("", ".", "..") for s in segments):
        raise ValueError(f"{what} must have no empty, '.' or '..' segments: {value!r}")
    return stripped


def _words(value: Any) -> Any:
    """Lists of scopes or methods may be given as a list or one space-separated string."""
    if isinstance(value, str):
        return value.split()
    return value


WordList = Annotated[tuple[str, ...], BeforeValidator(_words)]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ListenSection(_Section):
    """``[gateway]``: where the gateway listens and its own endpoints."""

    host: str = "127.0.0.1"
    port: int = Field(8080, ge=0, le=65535)
    tls_cert: Path | None = None
    tls_key: Path | None = None
    # RFC 8705 §3 when the gateway terminates TLS: ask callers for a certificate verified
    # against this CA, for certificate-bound tokens.
    tls_client_ca: Path | None = None
    allow_insecure_http: bool = False
    realm: str | None = None
    trusted_proxies: tuple[str, ...] = ()
    # RFC 8705 §3 behind a proxy that terminates TLS: the header carrying the client
    # certificate (URL-escaped PEM as nginx's $ssl_client_escaped_cert, base64 DER as
    # Traefik's passTLSClientCert, or Envoy's x-forwarded-client-cert); believed only from
    # trusted_proxies, and at the forward-auth endpoint.
    certificate_header: str | None = None
    # DPoP at the gateway (RFC 9449 §7, §9, §11.1): how old a proof may be, server nonces
    # (every gateway instance needs the same secret), and a Redis shared by all instances
    # so that a proof is accepted once by all of them.
    dpop_max_age: int = Field(60, ge=5, le=600)
    dpop_nonce: bool = False
    dpop_nonce_secret: SecretStr | None = None
    dpop_replay_redis: str | None = None
    forward_auth_path: str | None = "/_keystile/auth"
    metrics_path: str | None = "/metrics"
    health_path: str | None = "/healthz"
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    log_format: Literal["json", "text"] = "json"
    # Answer bodiless requests whose token is a cache hit below ASGI (gateway/fastpath.py,
    # decision 0009); false serves everything through the ASGI app (the benchmark baseline).
    fast_path: bool = True
    # Gateway processes sharing the listening socket, each with its own cache and its own
    # subscription to the revocation event stream (`keystile gateway --workers`).
    workers: int = Field(1, ge=1, le=64)

    @field_validator("forward_auth_path", "metrics_path", "health_path")
    @classmethod
    def _check_paths(cls, value: str | None) -> str | None:
        if value in (None, ""):
            return None  # "" switches the endpoint off
        assert value is not None
        return _path(value, what="the path")

    @field_validator("trusted_proxies")
    @classmethod
    def _check_proxies(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for item in value:
            try:
                ipaddress.ip_network(item, strict=False)
            except ValueError as exc:
                raise ValueError(f"{item!r} is not an IP address or network") from exc
        return value

    @model_validator(mode="after")
    def _check_tls(self) -> ListenSection:
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("tls_cert and tls_key go together")
        if self.tls_client_ca is not None and self.tls_cert is None:
            raise ValueError("tls_client_ca needs tls_cert and tls_key (the gateway's TLS)")
        return self


class AuthorizationServerSection(_Section):
    """``[authorization_server]``: whom to ask, and as which client (RFC 7662 §2.1)."""

    issuer: str | None = None
    introspection_endpoint: str | None = None
    events_endpoint: str | None = None
    events: bool = True
    client_id: str
    client_secret: SecretStr | None = None
    client_secret_file: Path | None = None
    auth_method: Literal["client_secret_basic", "client_secret_post"] = "client_secret_basic"
    timeout: float = Field(5.0, gt=0, le=60)
    # PEM CA certificates to trust for the AS's TLS certificate instead of the default store
    # (certifi): an AS behind a private CA. Relative to the config file's folder.
    ca_file: Path | None = None

    @field_validator("issuer", "introspection_endpoint", "events_endpoint")
    @classmethod
    def _check_url(cls, value: str | None) -> str | None:
        if value is None:
            return None
        return _http_url(value, what="the URL")

    @model_validator(mode="after")
    def _check_source(self) -> AuthorizationServerSection:
        if self.issuer is None and self.introspection_endpoint is None:
            raise ValueError("give issuer (RFC 8414 discovery) or introspection_endpoint")
        if self.client_secret is not None and self.client_secret_file is not None:
            raise ValueError("give client_secret or client_secret_file, not both")
        return self


class CacheSection(_Section):
    """``[cache]``: the SDK's introspection cache (ARCHITECTURE.md, decision 5)."""

    max_ttl: float = Field(60.0, ge=0)
    negative_ttl: float = Field(5.0, ge=0)
    degraded_ttl: float = Field(5.0, ge=0)
    max_entries: int = Field(100_000, ge=1)


class UpstreamSection(_Section):
    """``[upstream]``: the pooled connections to upstream services, and default timeouts."""

    connect_timeout: float = Field(2.0, gt=0, le=300)
    timeout: float = Field(30.0, gt=0, le=3600)
    max_connections: int = Field(512, ge=1)
    max_keepalive_connections: int = Field(128, ge=0)
    # Below the common 5 s idle timeout of upstream servers (uvicorn, Node), so the gateway
    # drops a pooled connection before the upstream does.
    keepalive_expiry: float = Field(4.0, ge=0)


class IdentityHeaders(_Section):
    """``[identity_headers]``: names of the headers that tell upstream who is calling."""

    subject: str = "X-Auth-Subject"
    client_id: str = "X-Auth-Client-Id"
    username: str = "X-Auth-Username"
    scope: str = "X-Auth-Scope"

    @field_validator("subject", "client_id", "username", "scope")
    @classmethod
    def _check_name(cls, value: str) -> str:
        if not _TOKEN.fullmatch(value):
            raise ValueError(f"{value!r} is not a valid header name")
        if _folded(value) in _RESERVED_HEADERS:
            raise ValueError(f"{value!r} is a header the gateway manages; pick another name")
        return value

    @model_validator(mode="after")
    def _distinct(self) -> IdentityHeaders:
        # Compared as CGI/WSGI see them: X-User and x_user are one header there.
        names = [_folded(n) for n in self.names]
        if len(set(names)) != len(names):
            raise ValueError("identity header names must all differ (with '_' read as '-')")
        return self

    @property
    def names(self) -> tuple[str, str, str, str]:
        return (self.subject, self.client_id, self.username, self.scope)


class RouteConfig(_Section):
    """One ``[[routes]]`` entry."""

    name: str | None = None
    host: str | None = None
    path: str = "/"
    upstream: str | None = None
    public: bool = False
    scopes: WordList = ()
    scope_match: Literal["all", "any"] = "all"
    audience: str | None = None
    methods: WordList = ()
    realtime: bool = False
    on_unavailable: Literal["deny", "stale"] = "deny"
    stale_max_age: float | None = Field(None, gt=0)
    strip_prefix: bool = False
    preserve_host: bool = False
    forward_token: bool = True
    timeout: float | None = Field(None, gt=0, le=3600)
    phantom_token: bool = False
    # RFC 9449 / RFC 8705: bound tokens are always checked; "required" refuses unbound ones.
    sender_constrained: Literal["if_bound", "required"] = "if_bound"

    @field_validator("host")
    @classmethod
    def _check_host(cls, value: str | None) -> str | None:
        if value is None:
            return None
        host = value.lower().rstrip(".")
        if not _HOST.fullmatch(host):
            raise ValueError(
                f"host must be a DNS name (optionally '*.' + a suffix), without port: {value!r}"
            )
        return host

    @field_validator("path")
    @classmethod
    def _check_path(cls, value: str) -> str:
        return _path(value, what="path")

    @field_validator("upstream")
    @classmethod
    def _check_upstream(cls, value: str | None) -> str | None:
        if value is None:
            return None
        return _http_url(value, what="upstream").rstrip("/")

    @field_validator("scopes")
    @classmethod
    def _check_scopes(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        # RFC 6749 §3.3: scope-token = 1*( %x21 / %x23-5B / %x5D-7E )
        for s in value:
            if not re.fullmatch(r"[\x21\x23-\x5b\x5d-\x7e]+", s):
                raise ValueError(f"{s!r} is not a valid scope token (RFC 6749 section 3.3)")
        return tuple(dict.fromkeys(value))

    @field_validator("methods")
    @classmethod
    def _check_methods(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for m in value:
            if not _TOKEN.fullmatch(m):
                raise ValueError(f"{m!r} is not an HTTP method")
        return tuple(dict.fromkeys(m.upper() for m in value))

    @model_validator(mode="after")
    def _check_policy(self) -> RouteConfig:
        if self.public:
            given = [
                name
                for name, present in (
                    ("scopes", bool(self.scopes)),
                    ("audience", self.audience is not None),
                    ("realtime", self.realtime),
                    ("on_unavailable", self.on_unavailable != "deny"),
                    ("phantom_token", self.phantom_token),
                )
                if present
            ]
            if given:
                raise ValueError(
                    f"a public route checks no token, so {', '.join(given)} cannot apply"
                )
        if self.on_unavailable == "stale" and self.stale_max_age is None:
            raise ValueError("on_unavailable = 'stale' needs stale_max_age (seconds)")
        if self.on_unavailable != "stale" and self.stale_max_age is not None:
            raise ValueError("stale_max_age applies only with on_unavailable = 'stale'")
        if self.phantom_token and not self.forward_token:
            raise ValueError(
                "phantom_token forwards a token (the signed answer): not with forward_token = false"
            )
        if self.strip_prefix and self.path == "/":
            raise ValueError("strip_prefix on path '/' strips nothing")
        return self

    @property
    def label(self) -> str:
        """The route's name in metrics and logs."""
        return self.name or f"{self.host or '*'}{self.path}"


class GatewayConfig(_Section):
    """The whole file."""

    gateway: ListenSection = Field(default_factory=ListenSection)
    authorization_server: AuthorizationServerSection
    cache: CacheSection = Field(default_factory=CacheSection)
    upstream: UpstreamSection = Field(default_factory=UpstreamSection)
    identity_headers: IdentityHeaders = Field(default_factory=IdentityHeaders)
    routes: tuple[RouteConfig, ...] = Field(min_length=1)

    @model_validator(mode="after")
    def _check_routes(self) -> GatewayConfig:
        keys = [(i, r.host, r.path, r.name) for i, r in enumerate(self.routes)]
        problems = _route_problems(keys, self.gateway)
        if problems:
            raise ValueError("; ".join(problems))
        return self

    @property
    def client_secret(self) -> str:
        secret = self.authorization_server.client_secret
        if secret is None:  # pragma: no cover - load_config always resolves one
            raise ConfigurationError("no client secret")
        return secret.get_secret_value()


RouteKey = tuple[int, str | None, str, str | None]  # index, host, path, name


def _route_problems(keys: list[RouteKey], listen: ListenSection) -> list[str]:
    """Problems between routes: duplicates, and routes the gateway's own endpoints shadow."""
    problems: list[str] = []
    seen: dict[tuple[str | None, str], int] = {}
    names: dict[str, int] = {}
    for i, host, path, name in keys:
        if (host, path) in seen:
            problems.append(
                f"routes[{i}] duplicates routes[{seen[(host, path)]}]: both match host "
                f"{host or '(any)'} and path {path}"
            )
        else:
            seen[(host, path)] = i
        if name is not None:
            if name in names:
                problems.append(f"routes[{i}] has the same name as routes[{names[name]}]: {name}")
            else:
                names[name] = i
    own = {
        "forward_auth_path": listen.forward_auth_path,
        "metrics_path": listen.metrics_path,
        "health_path": listen.health_path,
    }
    for what, own_path in own.items():
        if own_path is None:
            continue
        if own_path == "/":
            problems.append(f"gateway.{what} cannot be '/': it would shadow every route")
        for i, _, path, _ in keys:
            if path != "/" and _under(path, own_path):
                problems.append(
                    f"routes[{i}] (path {path}) is shadowed by the gateway's own "
                    f"endpoint gateway.{what} = {own_path!r}"
                )
    paths = [p for p in own.values() if p is not None]
    if len(set(paths)) != len(paths):
        problems.append("gateway.forward_auth_path, metrics_path and health_path must differ")
    return problems


def _lenient_route_problems(data: Mapping[str, Any]) -> list[str]:
    """The cross-route checks on a file with errors elsewhere (pydantic skips them then),
    using what can be read of each route's host, path and name."""
    try:
        listen = ListenSection.model_validate(data.get("gateway", {}))
    except ValidationError:
        listen = ListenSection()
    routes = data.get("routes")
    if not isinstance(routes, list):
        return []
    keys: list[RouteKey] = []
    for i, raw in enumerate(routes):
        if not isinstance(raw, dict):
            continue
        subset = {k: raw[k] for k in ("host", "path", "name") if k in raw}
        try:
            route = RouteConfig.model_validate({**subset, "public": True})
        except ValidationError:
            continue
        keys.append((i, route.host, route.path, route.name))
    return _route_problems(keys, listen)


def _under(path: str, prefix: str) -> bool:
    return path == prefix or path.startswith(prefix + "/")


def _location(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + part
    return out


_SECTIONS: dict[str, type[BaseModel]] = {
    "": GatewayConfig,
    "gateway": ListenSection,
    "authorization_server": AuthorizationServerSection,
    "cache": CacheSection,
    "upstream": UpstreamSection,
    "identity_headers": IdentityHeaders,
    "routes": RouteConfig,
}


def describe(exc: ValidationError) -> list[str]:
    """One line per problem, naming the key as written in the file."""
    lines = []
    for error in exc.errors(include_url=False):
        loc = tuple(error["loc"])
        where = _location(loc)
        message = str(error["msg"]).removeprefix("Value error, ")
        if error["type"] == "extra_forbidden":
            section = str(loc[0]) if len(loc) > 1 else ""
            model = _SECTIONS.get(section, GatewayConfig)
            known = ", ".join(sorted(model.model_fields))
            lines.append(f"{where}: unknown key (known keys here: {known})")
        elif error["type"] == "missing":
            lines.append(f"{where}: required key is missing")
        else:
            lines.append(f"{where}: {message}" if where else message)
    return lines


def parse_config(data: Mapping[str, Any], *, source: str = "config") -> GatewayConfig:
    """Validate an already-parsed mapping (the TOML document)."""
    try:
        return GatewayConfig.model_validate(data)
    except ValidationError as exc:
        problems = describe(exc)
        if all(error["loc"] for error in exc.errors()):
            # A field failed, so the model-level checks did not run: run them now.
            problems += _lenient_route_problems(data)
        raise ConfigurationError(
            f"invalid gateway configuration in {source}:\n" + "\n".join(f"  {p}" for p in problems)
        ) from exc


def load_config(path: Path, environ: Mapping[str, str] | None = None) -> GatewayConfig:
    """Read, validate and complete the configuration: ``load_config(Path("gateway.toml"))``."""
    environ = os.environ if environ is None else environ
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ConfigurationError(f"cannot read gateway config {path}: {exc.strerror}") from exc
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigurationError(f"{path} is not valid TOML: {exc}") from exc
    config = parse_config(data, source=str(path))
    return _with_secret(config, environ, base=path.parent)


def _with_secret(config: GatewayConfig, environ: Mapping[str, str], *, base: Path) -> GatewayConfig:
    section = config.authorization_server
    secret: str | None = None
    if environ.get(SECRET_ENV):
        secret = environ[SECRET_ENV]
    elif section.client_secret_file is not None:
        file = section.client_secret_file
        if not file.is_absolute():
            file = base / file
        try:
            secret = file.read_text().strip()
        except OSError as exc:
            raise ConfigurationError(
                f"authorization_server.client_secret_file: cannot read {file}: {exc.strerror}"
            ) from exc
        if not secret:
            raise ConfigurationError(f"authorization_server.client_secret_file: {file} is empty")
    elif section.client_secret is not None:
        secret = section.client_secret.get_secret_value()
    if not secret:
        raise ConfigurationError(
            "no client secret for the authorization server: set "
            "authorization_server.client_secret or client_secret_file, or the "
            f"{SECRET_ENV} environment variable"
        )
    ca_file = section.ca_file
    if ca_file is not None:
        if not ca_file.is_absolute():
            ca_file = base / ca_file
        try:
            tls_verify(ca_file)
        except ValueError as exc:
            raise ConfigurationError(f"authorization_server.ca_file: {exc}") from exc
    resolved = section.model_copy(
        update={"client_secret": SecretStr(secret), "client_secret_file": None, "ca_file": ca_file}
    )
    return config.model_copy(update={"authorization_server": resolved})
