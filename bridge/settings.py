"""Every configuration option of the daemon, validated once at start.

Settings come from the environment (prefix ``BRIDGE_``, nested fields joined by ``__``):
``BRIDGE_ENDPOINTS`` is a JSON object of endpoint name -> endpoint settings, and
``BRIDGE_ENDPOINTS__<NAME>__<FIELD>`` sets (or overrides) one field of one endpoint. Every
secret is a ``SecretStr`` and can also be given as ``<FIELD>_FILE`` (a path whose stripped
content is the secret), e.g. ``BRIDGE_AMQP_URL_FILE`` or
``BRIDGE_ENDPOINTS__SF__AUTH__CLIENT_SECRET_FILE``.

``BRIDGE_CONFIG_FILE`` names a YAML file with the same fields (``endpoints`` a mapping of
name -> endpoint, secrets inline or as ``<field>_file``); environment variables override it,
field by field. :func:`value_sources` says where each effective value came from.

Use :func:`load_settings`; it raises :class:`ConfigError` whose ``problems`` name the
environment variable and the reason for each mistake, never the value (it may be a secret).
:func:`redacted_dump` renders the effective configuration with secrets hidden.
"""

from __future__ import annotations

import difflib
import json
import os
import re
import socket
import string
from collections.abc import Mapping
from contextvars import ContextVar
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal
from urllib.parse import urlsplit

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PositiveFloat,
    PositiveInt,
    SecretStr,
    StringConstraints,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic.fields import FieldInfo
from pydantic_core import PydanticCustomError
from pydantic_settings import (
    BaseSettings,
    EnvSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    SettingsError,
    YamlConfigSettingsSource,
)

from bridge.logging import redact_text


__all__ = [
    "ConfigError",
    "Settings",
    "Endpoint",
    "AuthSettings",
    "NoAuth",
    "BearerAuth",
    "OAuth2ClientCredentialsAuth",
    "OAuth2RefreshTokenAuth",
    "SalesforceJwtAuth",
    "load_settings",
    "unknown_variables",
    "redacted_dump",
    "value_sources",
    "suggest_variable",
    "CONFIG_FILE_VARIABLE",
    "ENV_PREFIX",
    "ROUTING_KEY_PLACEHOLDERS",
]

ENV_PREFIX = "BRIDGE_"
CONFIG_FILE_VARIABLE = "BRIDGE_CONFIG_FILE"
DEFAULT_SECRETS_DIR = Path("/run/secrets")
ROUTING_KEY_PLACEHOLDERS = frozenset({"endpoint", "channel", "channel_path"})

# Bayeux 1.0 grammar: channel = "/" segment *( "/" segment ), segment = 1*( alnum | mark );
# a subscription may end in one wildcard segment, "*" (one level) or "**" (any depth).
_SEGMENT = r"[A-Za-z0-9\-_!~()$@]+"
_CHANNEL_RE = re.compile(rf"^(/{_SEGMENT})*(/{_SEGMENT}|/\*|/\*\*)$")
_ENDPOINT_NAME = r"^[a-z][a-z0-9_-]*$"
_API_VERSION_RE = re.compile(r"^\d+\.\d+$")
# RFC 9110 §5.1: a field name is a token; a value has no CR, LF, NUL or other controls but tab.
_HEADER_NAME_RE = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_HEADER_VALUE_BAD = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")


# --------------------------------------------------------------------------- validators


def _check_http_url(value: str) -> str:
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise PydanticCustomError("url_scheme", "must be an http:// or https:// URL with a host")
    return value


def _check_channel(value: str) -> str:
    if not _CHANNEL_RE.match(value):
        raise PydanticCustomError(
            "channel",
            "not a Bayeux channel: expected /segment/... with an optional final * or **",
        )
    if value == "/meta" or value.startswith("/meta/"):
        raise PydanticCustomError("channel", "/meta channels are the protocol's own, not data")
    return value


def _check_routing_key(value: str) -> str:
    try:
        fields = [f for _, f, spec, conv in string.Formatter().parse(value) if f is not None]
        specs = [(spec, conv) for _, f, spec, conv in string.Formatter().parse(value) if f]
    except ValueError:
        raise PydanticCustomError("template", "unbalanced { or } in template") from None
    unknown = sorted(set(fields) - ROUTING_KEY_PLACEHOLDERS)
    if unknown:
        raise PydanticCustomError(
            "template",
            # Braces only through the context: pydantic substitutes, it does not str.format.
            "unknown placeholder(s) {unknown}; known: {known}",
            {
                "unknown": ", ".join("{" + u + "}" for u in unknown),
                "known": ", ".join("{" + k + "}" for k in ("endpoint", "channel", "channel_path")),
            },
        )
    if any(spec or conv for spec, conv in specs):
        raise PydanticCustomError("template", "format specs and conversions are not supported")
    return value


def _split_list(value: Any) -> Any:
    # A single value ("websocket") or a comma-separated env string is accepted for lists.
    if isinstance(value, str):
        return [item.strip() for item in value.split(",") if item.strip()]
    return value


def _normalise_connection_type(value: Any) -> Any:
    return value.strip().lower().replace("_", "-") if isinstance(value, str) else value


def _replay_alias(value: Any) -> Any:
    # Salesforce spells "new only" as -1 and "all retained" as -2.
    aliases = {"-1": "new", "-2": "all"}
    key = str(value).strip().lower() if isinstance(value, str | int) else value
    return aliases.get(key, key) if isinstance(key, str) else key


def _null(value: Any) -> Any:
    # An env value cannot be JSON null; "null" (or empty) means "none" for optional settings.
    if isinstance(value, str) and value.strip().lower() in ("", "null", "none"):
        return None
    return value


def _check_exchange_name(value: str | None) -> str | None:
    # An AMQP exchange name is a short string: at most 255 bytes, and not empty (the default
    # exchange routes by queue name, which a dead letter must never do).
    if value is not None and not 0 < len(value.encode()) <= 255:
        raise PydanticCustomError("exchange_name", "must be 1 to 255 bytes, or null to disable")
    return value


def _log_level(value: Any) -> Any:
    if not isinstance(value, str):
        return value
    level = value.strip().upper()
    return "WARNING" if level == "WARN" else level


def _read_secret_file(path: Any) -> SecretStr:
    if isinstance(path, SecretStr):
        return path
    try:
        return SecretStr(Path(path).read_text(encoding="utf-8").strip())
    except OSError as exc:
        raise PydanticCustomError(
            "secret_file", "cannot read secret file: {reason}", {"reason": exc.strerror or "error"}
        ) from None


HttpUrl = Annotated[str, AfterValidator(_check_http_url)]
Channel = Annotated[str, AfterValidator(_check_channel)]
ConnectionType = Annotated[
    Literal["websocket", "long-polling"], BeforeValidator(_normalise_connection_type)
]
# A path on input; the file's stripped content (a SecretStr) once validated.
SecretFile = Annotated[SecretStr, BeforeValidator(_read_secret_file)]
EndpointName = Annotated[str, StringConstraints(pattern=_ENDPOINT_NAME)]


class _Model(BaseModel):
    """Base of every settings section: unknown keys are mistakes, not ignored."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    # Names of the SecretStr fields that also accept ``<name>_file`` and whether each is required.
    _secrets: ClassVar[dict[str, bool]] = {}

    @model_validator(mode="before")
    @classmethod
    def _load_secret_files(cls, data: Any) -> Any:
        # Read "<field>_file" into "<field>" so the rest of the code sees one SecretStr.
        if not isinstance(data, dict) or not cls._secrets:
            return data
        data = dict(data)
        for name in cls._secrets:
            path = data.get(f"{name}_file")
            if path is None:
                continue
            if data.get(name) is not None:
                raise PydanticCustomError(
                    "secret_conflict",
                    "give {field} or {field}_file, not both",
                    {"field": name},
                )
        return data

    @model_validator(mode="after")
    def _require_secrets(self) -> Any:
        for name, required in self._secrets.items():
            from_file = getattr(self, f"{name}_file", None)
            if from_file is not None:
                object.__setattr__(self, name, from_file)
                object.__setattr__(self, f"{name}_file", None)
            if required and getattr(self, name) is None:
                raise PydanticCustomError(
                    "missing_secret", "{field} (or {field}_file) is required", {"field": name}
                )
        return self


# --------------------------------------------------------------------------- auth


class _AuthCommon(_Model):
    name: str | None = None
    """Credential name (metrics label, sharing key); default: the first endpoint using it."""
    placement: Literal["header", "ext"] = "header"
    """``header``: ``Authorization: Bearer``; ``ext``: inside the meta messages' ``ext``."""
    ext_path: str = "auth.token"
    """Dotted path inside ``ext`` when ``placement`` is ``ext``."""
    refresh_fraction: float = Field(default=0.8, gt=0, le=1)
    """Refresh the token after this fraction of its lifetime."""
    min_token_interval: float = Field(default=30.0, ge=0, allow_inf_nan=False)
    """Seconds between two token requests at least (growing, jittered, after failures)."""

    derives_url: ClassVar[bool] = False
    """True when the auth kind yields the CometD URL itself (Salesforce ``instance_url``)."""


class NoAuth(_AuthCommon):
    """No credentials."""

    kind: Literal["none"] = "none"


class BearerAuth(_AuthCommon):
    """A static bearer token."""

    _secrets: ClassVar[dict[str, bool]] = {"token": True}
    kind: Literal["bearer"]
    token: SecretStr | None = None
    token_file: SecretFile | None = None


class OAuth2ClientCredentialsAuth(_AuthCommon):
    """OAuth 2 client credentials grant."""

    _secrets: ClassVar[dict[str, bool]] = {"client_secret": True}
    kind: Literal["oauth2_client_credentials"]
    token_url: HttpUrl
    client_id: str
    client_secret: SecretStr | None = None
    client_secret_file: SecretFile | None = None
    scope: str | None = None
    client_auth: Literal["body", "basic"] = "body"
    default_lifetime: Annotated[PositiveFloat, Field(allow_inf_nan=False)] = 3600.0
    """Seconds a token lives when the reply's ``expires_in`` is missing or not finite and > 0."""


class OAuth2RefreshTokenAuth(_AuthCommon):
    """OAuth 2 refresh token grant (a rotated refresh token in a response replaces this one)."""

    _secrets: ClassVar[dict[str, bool]] = {"client_secret": False, "refresh_token": True}
    kind: Literal["oauth2_refresh_token"]
    token_url: HttpUrl
    client_id: str
    client_secret: SecretStr | None = None
    client_secret_file: SecretFile | None = None
    refresh_token: SecretStr | None = None
    refresh_token_file: SecretFile | None = None
    default_lifetime: Annotated[PositiveFloat, Field(allow_inf_nan=False)] = 3600.0
    """Seconds a token lives when the reply's ``expires_in`` is missing or not finite and > 0."""


class SalesforceJwtAuth(_AuthCommon):
    """Salesforce OAuth JWT bearer flow (RS256); the token response names the instance URL.

    After loading, ``private_key`` always holds the PEM (read from ``private_key_file`` if
    that was given).
    """

    _secrets: ClassVar[dict[str, bool]] = {"private_key": True}
    derives_url: ClassVar[bool] = True
    kind: Literal["salesforce_jwt"]
    login_url: HttpUrl = "https://login.salesforce.com"
    audience: HttpUrl | None = None
    """The assertion's ``aud`` (default ``login_url``): an org that takes the token request
    only at its My Domain may still expect ``https://login.salesforce.com`` here."""
    client_id: str
    username: str
    private_key: SecretStr | None = None
    private_key_file: SecretFile | None = None
    token_lifetime: Annotated[PositiveFloat, Field(allow_inf_nan=False)] = 7200.0
    """Seconds; Salesforce's response has no ``expires_in``."""

    @model_validator(mode="after")
    def _key_parses(self) -> SalesforceJwtAuth:
        # A key that does not parse is a configuration mistake: check-config must report it
        # and run must exit 2, not fail at the first token request. cryptography is imported
        # only here, when a salesforce_jwt endpoint is configured (it costs ~7 MB of RSS).
        # Whichever validator ran first; "is None", as an empty SecretStr is falsy.
        pem = self.private_key if self.private_key is not None else self.private_key_file
        if pem is None:
            return self  # _require_secrets reports it
        from bridge.auth.jwt import load_private_key

        try:
            load_private_key(pem.get_secret_value())
        except ValueError as exc:
            # The message is ours and fixed: never any of the key material.
            raise PydanticCustomError(
                "private_key", "{reason}", {"reason": str(exc), "field": "private_key"}
            ) from None
        return self


AuthSettings = Annotated[
    NoAuth | BearerAuth | OAuth2ClientCredentialsAuth | OAuth2RefreshTokenAuth | SalesforceJwtAuth,
    Field(discriminator="kind"),
]
_AUTH_KINDS = (
    "none",
    "bearer",
    "oauth2_client_credentials",
    "oauth2_refresh_token",
    "salesforce_jwt",
)


# --------------------------------------------------------------------------- endpoint


class Endpoint(_Model):
    """One CometD server, its subscriptions, and where its messages go in RabbitMQ."""

    url: HttpUrl | None = None
    """CometD URL; optional only when the auth kind derives it (see :meth:`resolve_url`)."""
    channels: Annotated[list[Channel], BeforeValidator(_split_list), Field(min_length=1)]
    connection_types: Annotated[
        list[ConnectionType], BeforeValidator(_split_list), Field(min_length=1)
    ] = ["websocket", "long-polling"]
    """In order of preference."""
    connection_timeout: Annotated[PositiveFloat | None, BeforeValidator(_null)] = 30.0
    """Seconds to establish a connection; ``null`` for no limit."""
    max_pending_count: PositiveInt = 1000
    max_pending_bytes: PositiveInt = 16 * 1024 * 1024
    max_inflight: PositiveInt = 512
    exchange: str = "cometd"
    exchange_type: Literal["topic", "direct", "fanout", "headers"] = "topic"
    routing_key: Annotated[str, AfterValidator(_check_routing_key)] = "{channel}"
    alternate_exchange: Annotated[str | None, BeforeValidator(_null)] = None
    dead_letter_exchange: Annotated[
        str | None, BeforeValidator(_null), AfterValidator(_check_exchange_name)
    ] = "cometd.dead-letter"
    """Durable topic exchange for messages that cannot be published; ``null`` disables. The
    default one gets a durable queue of the same name bound to it (``#``)."""
    max_nacks: PositiveInt = 10
    """Broker nacks of one message before it is dead-lettered (with a dead-letter exchange)."""
    headers: dict[str, str] = {}
    """Extra HTTP headers sent to the CometD server."""
    replay: Annotated[Literal["off", "new", "all", "stored"], BeforeValidator(_replay_alias)] = (
        "off"
    )
    replay_fallback: Annotated[Literal["new", "all"], BeforeValidator(_replay_alias)] = "new"
    """Where ``replay=stored`` starts when nothing is stored yet."""
    gap_policy: Literal["fail", "latest", "earliest"] = "earliest"
    ack: Literal["auto", "on", "off"] = "auto"
    auth: AuthSettings = NoAuth()
    api_version: str = "62.0"
    ca_file: Annotated[Path | None, BeforeValidator(_null)] = None
    """PEM CA bundle the CometD server's certificate is verified against (besides the system's)."""

    @field_validator("connection_types")
    @classmethod
    def _dedupe(cls, value: list[str]) -> list[str]:
        return list(dict.fromkeys(value))

    @field_validator("headers")
    @classmethod
    def _check_headers(cls, value: dict[str, str]) -> dict[str, str]:
        # Checked here, not by the HTTP library at the first request: there a bad header is a
        # bare ValueError on every (re)connect and the endpoint restart-loops.
        for name, header_value in value.items():
            if not _HEADER_NAME_RE.fullmatch(name):
                raise PydanticCustomError(
                    "header_name",
                    "header name {name} is not an HTTP token (letters, digits, !#$%&'*+-.^_`|~)",
                    {"name": repr(name)[:80]},
                )
            if _HEADER_VALUE_BAD.search(header_value):
                # The value may be a secret: named by its header, never shown.
                raise PydanticCustomError(
                    "header_value",
                    "header {name}: the value contains CR, LF or another control character",
                    {"name": name},
                )
        return value

    @field_validator("api_version")
    @classmethod
    def _check_api_version(cls, value: str) -> str:
        if not _API_VERSION_RE.match(value):
            raise PydanticCustomError("api_version", "must look like 62.0")
        return value

    @model_validator(mode="after")
    def _replay_needs_concrete_channels(self) -> Endpoint:
        wildcards = [c for c in self.channels if c.endswith(("/*", "/**"))]
        if self.replay != "off" and wildcards:
            raise PydanticCustomError(
                "replay_wildcard",
                "replay {replay} needs concrete channels, but {channels} is a wildcard: "
                "Salesforce has no wildcard subscriptions and replay positions are kept per "
                "concrete channel; list the channels one by one or set replay off",
                {"replay": self.replay, "channels": ", ".join(wildcards), "field": "replay"},
            )
        return self

    @model_validator(mode="after")
    def _dead_letters_elsewhere(self) -> Endpoint:
        if self.dead_letter_exchange is not None and self.dead_letter_exchange == self.exchange:
            raise PydanticCustomError(
                "dead_letter_exchange",
                "{field} must differ from exchange {exchange}: dead letters would be mixed with "
                "the messages",
                {"field": "dead_letter_exchange", "exchange": self.exchange},
            )
        return self

    @model_validator(mode="after")
    def _ca_file_usable(self) -> Endpoint:
        if self.ca_file is not None:
            _check_tls_files("ca_file", ca_file=self.ca_file)
        return self

    @model_validator(mode="after")
    def _url_or_derivable(self) -> Endpoint:
        if self.url is None and not self.auth.derives_url:
            raise PydanticCustomError(
                "missing_url",
                "{field} is required (only auth kind salesforce_jwt can derive it)",
                {"field": "url"},
            )
        return self

    def resolve_url(self, instance_url: str | None = None) -> str:
        """The CometD URL: ``url`` if set, else ``{instance_url}/cometd/{api_version}``."""
        if self.url is not None:
            return self.url
        if instance_url is None:
            raise ValueError("this endpoint's URL comes from the auth response's instance_url")
        return f"{instance_url.rstrip('/')}/cometd/{self.api_version}"


# --------------------------------------------------------------------------- top level


def _check_amqp_url(value: SecretStr) -> SecretStr:
    # Several comma-separated URLs (a broker cluster) are tried in order on (re)connect.
    for url in amqp_urls(value.get_secret_value()) or [""]:
        parts = urlsplit(url)
        if parts.scheme not in ("amqp", "amqps") or not parts.hostname:
            raise PydanticCustomError(
                "url_scheme", "must be an amqp:// or amqps:// URL with a host"
            )
    return value


def amqp_urls(value: str) -> list[str]:
    """``BRIDGE_AMQP_URL``'s comma-separated URLs, in order."""
    return [url.strip() for url in value.split(",") if url.strip()]


AmqpUrl = Annotated[SecretStr, AfterValidator(_check_amqp_url)]


def _check_tls_files(
    field: str,
    ca_file: Path | None = None,
    cert_file: Path | None = None,
    key_file: Path | None = None,
) -> None:
    # Built here once so a missing or unparsable file is a configuration error at load.
    from bridge.tls import TlsFileError, client_context

    try:
        client_context(ca_file, cert_file, key_file)
    except TlsFileError as exc:
        raise PydanticCustomError(
            "tls_file", "{reason}", {"reason": str(exc), "field": field}
        ) from None


# Set by load_settings() so the env source reads a given mapping instead of os.environ.
_ENV_OVERRIDE: ContextVar[Mapping[str, str] | None] = ContextVar("_ENV_OVERRIDE", default=None)
# Set by load_settings() to BRIDGE_CONFIG_FILE's path (None: no configuration file).
_CONFIG_FILE: ContextVar[Path | None] = ContextVar("_CONFIG_FILE", default=None)


class ConfigFileError(Exception):
    """BRIDGE_CONFIG_FILE cannot be read or is not a YAML mapping (the reason, never content)."""


class _YamlFileSource(YamlConfigSettingsSource):
    """The configuration file, below the environment: a missing or malformed file is an error
    (pydantic-settings skips a missing one silently), reported without any of its content."""

    def _read_file(self, file_path: Any) -> dict[str, Any]:
        import yaml  # type: ignore[import-untyped]

        try:
            with file_path.open(encoding="utf-8") as stream:
                data = yaml.safe_load(stream)
        except OSError as exc:
            raise ConfigFileError(f"cannot read {file_path}: {exc.strerror or 'error'}") from None
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f" at line {mark.line + 1} column {mark.column + 1}" if mark else ""
            problem = getattr(exc, "problem", None) or "syntax error"
            raise ConfigFileError(f"invalid YAML in {file_path}: {problem}{where}") from None
        if data is None:
            return {}
        if not isinstance(data, dict):
            raise ConfigFileError(
                f"{file_path} must be a YAML mapping of settings (amqp_url:, endpoints:, ...)"
            )
        return data


def _config_file_path(env: Mapping[str, str]) -> Path | None:
    for key, value in env.items():
        if key.upper() == CONFIG_FILE_VARIABLE and value.strip():
            return Path(value.strip()).expanduser()
    return None


def _read_config_file(path: Path | None) -> dict[str, Any]:
    if path is None:
        return {}
    if not path.is_file():
        raise ConfigFileError(f"{path}: no such file")
    return _YamlFileSource(Settings, yaml_file=path).yaml_data


class _EnvSource(EnvSettingsSource):
    def _load_env_vars(self) -> Mapping[str, str | None]:
        env = _ENV_OVERRIDE.get()
        if env is None:
            return super()._load_env_vars()
        return {k.lower(): v for k, v in env.items()}

    def decode_complex_value(self, field_name: str, field: FieldInfo | None, value: Any) -> Any:
        # Only values that look like JSON are JSON; anything else ("/a,/b", "websocket") goes
        # to the field's validators, which accept comma-separated lists or report the variable.
        if isinstance(value, str) and value.lstrip()[:1] not in ("[", "{"):
            return value
        return super().decode_complex_value(field_name, field, value)  # type: ignore[arg-type]


class Settings(BaseSettings):
    """The daemon's whole configuration (see README for the table of variables)."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_nested_delimiter="__",
        extra="forbid",
        frozen=True,
    )
    amqp_url: AmqpUrl = SecretStr("amqp://guest:guest@127.0.0.1:5672/")
    amqp_url_file: SecretFile | None = None
    endpoints: dict[EndpointName, Endpoint]
    http_host: str = "0.0.0.0"  # reachable from outside a container
    http_port: int = Field(default=8080, ge=0, le=65535)
    # When set, ``/`` and ``/status`` need it (bearer header or the login form's cookie);
    # ``/metrics``, ``/healthz`` and ``/readyz`` stay open for scrapers and probes.
    http_token: SecretStr | None = Field(default=None, min_length=8)
    log_level: Annotated[
        Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"], BeforeValidator(_log_level)
    ] = "INFO"
    log_format: Literal["auto", "json", "console"] = "auto"
    state_dir: Path = Path("./state")
    shutdown_timeout: PositiveFloat = 20.0
    publish_timeout: PositiveFloat = 10.0
    # Which publisher endpoints get (bridge/amqp/sink_factory.py): ``auto`` picks the fast one
    # on a tested aiormq version and the public-API one otherwise.
    amqp_publisher: Literal["auto", "fast", "public"] = "auto"
    position_flush_interval: PositiveFloat = 1.0
    position_flush_every: PositiveInt = 1000
    control_exchange: str = "cometd.control"
    # TLS to RabbitMQ (amqps://): a private CA and a client certificate.
    amqp_ca_file: Annotated[Path | None, BeforeValidator(_null)] = None
    amqp_cert_file: Annotated[Path | None, BeforeValidator(_null)] = None
    amqp_key_file: Annotated[Path | None, BeforeValidator(_null)] = None
    # ``file``: one replica, positions in state_dir under its lock. ``rabbitmq``: any number of
    # replicas; each endpoint is streamed by the holder of its lease in RabbitMQ, and the
    # positions live there too (bridge/coordination.py).
    coordination: Literal["file", "rabbitmq"] = "file"
    # Names this replica in /status and in logs; default: the host name (the pod's name).
    replica_id: str = Field(default_factory=socket.gethostname, min_length=1, max_length=200)

    @model_validator(mode="before")
    @classmethod
    def _amqp_url_file(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("amqp_url_file") and "amqp_url" in data:
            raise PydanticCustomError(
                "secret_conflict", "give {field} or {field}_file, not both", {"field": "amqp_url"}
            )
        return data

    @model_validator(mode="after")
    def _apply_amqp_url_file(self) -> Settings:
        if self.amqp_url_file is not None:
            object.__setattr__(self, "amqp_url", _check_amqp_url(self.amqp_url_file))
            object.__setattr__(self, "amqp_url_file", None)
        if not self.endpoints:
            raise PydanticCustomError(
                "no_endpoints", "at least one endpoint is required", {"field": "endpoints"}
            )
        return self

    @model_validator(mode="after")
    def _amqp_tls_files_usable(self) -> Settings:
        if self.amqp_ca_file or self.amqp_cert_file or self.amqp_key_file:
            field = "amqp_cert_file" if self.amqp_key_file else "amqp_ca_file"
            _check_tls_files(field, self.amqp_ca_file, self.amqp_cert_file, self.amqp_key_file)
        return self

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """Init kwargs, then the environment (or load_settings' mapping), then
        BRIDGE_CONFIG_FILE (merged field by field below the environment), then secret files."""
        path = _CONFIG_FILE.get()
        if path is None:
            return (init_settings, _EnvSource(settings_cls), file_secret_settings)
        yaml_source = _YamlFileSource(settings_cls, yaml_file=path)
        return (init_settings, _EnvSource(settings_cls), yaml_source, file_secret_settings)


# --------------------------------------------------------------------------- loading


class ConfigError(Exception):
    """Invalid configuration: ``problems`` is a list of (environment variable, reason)."""

    def __init__(self, problems: list[tuple[str, str]]) -> None:
        self.problems = problems
        super().__init__("; ".join(f"{var}: {reason}" for var, reason in problems))

    def render(self) -> str:
        """One line per problem, ``VARIABLE: reason``, for stderr at start (exit code 2)."""
        return "\n".join(f"{var}: {reason}" for var, reason in self.problems)


def load_settings(
    env: Mapping[str, str] | None = None,
    *,
    secrets_dir: Path | None = DEFAULT_SECRETS_DIR,
) -> Settings:
    """Load and validate settings from ``env`` (default: ``os.environ``).

    ``secrets_dir`` (default ``/run/secrets``, ignored when absent) may hold files named after
    top-level variables, e.g. ``bridge_amqp_url``. Raises :class:`ConfigError`.
    """
    source = os.environ if env is None else env
    path = _config_file_path(source)
    try:
        file_data = _read_config_file(path)
    except ConfigFileError as exc:
        raise ConfigError([(CONFIG_FILE_VARIABLE, str(exc))]) from None
    token = _ENV_OVERRIDE.set(source)
    file_token = _CONFIG_FILE.set(path)
    try:
        kwargs: dict[str, Any] = {}
        if secrets_dir is not None and secrets_dir.is_dir():
            kwargs["_secrets_dir"] = secrets_dir
        return Settings(**kwargs)
    except ValidationError as exc:
        raise ConfigError(_problems_from_validation(exc, source, file_data, path)) from None
    except SettingsError:
        raise ConfigError(_problems_from_json(source)) from None
    finally:
        _CONFIG_FILE.reset(file_token)
        _ENV_OVERRIDE.reset(token)


def value_sources(
    env: Mapping[str, str] | None = None,
    *,
    secrets_dir: Path | None = DEFAULT_SECRETS_DIR,
) -> dict[str, str]:
    """Where each effective value comes from, by dotted path (``endpoints.orders.exchange``):
    ``env`` (with the variable's name), ``file`` (BRIDGE_CONFIG_FILE), ``secret`` (a file in
    ``secrets_dir``) or ``default``.

    Call after :func:`load_settings` succeeded with the same arguments.
    """
    source = os.environ if env is None else env
    path = _config_file_path(source)
    file_data = _read_config_file(path)
    token = _ENV_OVERRIDE.set(source)
    try:
        env_data = _EnvSource(Settings)()
    finally:
        _ENV_OVERRIDE.reset(token)
    settings = load_settings(source, secrets_dir=secrets_dir)
    result: dict[str, str] = {}
    for dotted in _leaf_paths(redacted_dump(settings)):
        parts = dotted.split(".")
        if _has_path(env_data, parts):
            result[dotted] = f"env ({_env_name(parts, source)})"
        elif _has_path(file_data, parts):
            result[dotted] = f"file ({path})"
        elif secrets_dir is not None and (secrets_dir / f"bridge_{parts[0]}").is_file():
            result[dotted] = f"secret ({secrets_dir / f'bridge_{parts[0]}'})"
        else:
            result[dotted] = "default"
    return result


def _leaf_paths(value: Any, prefix: str = "") -> list[str]:
    if isinstance(value, dict) and value and not prefix.endswith("headers"):
        return [p for k, v in value.items() for p in _leaf_paths(v, f"{prefix}{k}.")]
    return [prefix.rstrip(".")]


def _has_path(data: Any, parts: list[str]) -> bool:
    # A secret given as <field>_file counts as the field; a whole JSON/YAML value counts for
    # everything inside it.
    for i, part in enumerate(parts):
        if not isinstance(data, dict):
            return False
        if part in data:
            data = data[part]
        else:
            return i == len(parts) - 1 and f"{part}_file" in data
    return True


def _env_name(parts: list[str], env: Mapping[str, str]) -> str:
    present = _env_keys(env)
    for cut in range(len(parts), 0, -1):
        for suffix in ("", "_FILE"):
            var = ENV_PREFIX + "__".join(p.upper() for p in parts[:cut]) + suffix
            if var in present:
                return var
    return ENV_PREFIX + "__".join(p.upper() for p in parts)


def unknown_variables(env: Mapping[str, str] | None = None) -> list[str]:
    """``BRIDGE_*`` variables that name no setting (likely typos); for a warning at start.

    Not an error: other tools (tests, wrappers) may use the prefix too.
    """
    source = os.environ if env is None else env
    known = {ENV_PREFIX + name.upper() for name in Settings.model_fields}
    known |= {ENV_PREFIX + "AMQP_URL_FILE", CONFIG_FILE_VARIABLE}
    return sorted(
        k
        for k in _env_keys(source)
        if k not in known and not k.startswith(f"{ENV_PREFIX}ENDPOINTS__")
    )


def suggest_variable(name: str) -> str | None:
    """The known top-level variable nearest to ``name`` (a likely typo), or None."""
    known = [ENV_PREFIX + f.upper() for f in Settings.model_fields]
    known += [ENV_PREFIX + "AMQP_URL_FILE", CONFIG_FILE_VARIABLE]
    close = difflib.get_close_matches(name.upper(), known, n=1, cutoff=0.8)
    return close[0] if close else None


def _env_keys(env: Mapping[str, str]) -> set[str]:
    return {k.upper() for k in env if k.upper().startswith(ENV_PREFIX)}


def _problems_from_validation(
    exc: ValidationError,
    env: Mapping[str, str],
    file_data: Mapping[str, Any] | None = None,
    file_path: Path | None = None,
) -> list[tuple[str, str]]:
    present = _env_keys(env)
    problems: list[tuple[str, str]] = []
    for err in exc.errors(include_input=False, include_url=False):
        loc = [str(part) for part in err["loc"]]
        known_fields = _fields_at(loc)
        ctx = err.get("ctx") or {}
        # Our model-level checks say which field they are about.
        if "field" in ctx and ctx["field"] not in loc:
            loc.append(str(ctx["field"]))
        reason = err["msg"]
        key_error = "[key]" in loc
        loc = [p for p in loc if p != "[key]"]
        # A discriminated union puts the tag into the location: endpoints.x.auth.bearer.token.
        if "auth" in loc:
            i = loc.index("auth")
            if i + 1 < len(loc) and loc[i + 1] in _AUTH_KINDS:
                del loc[i + 1]
        if key_error:
            name = loc[-1] if len(loc) > 1 else ""
            reason = (
                f"endpoint name {name!r} is not valid: names must match ^[a-z][a-z0-9_-]*$ "
                "(a BRIDGE_ENDPOINTS__<NAME>__... variable configures the lower-cased name)"
            )
        elif loc == ["endpoints"] and err["type"] == "dict_type":
            reason = 'must be a JSON object: {"name": {"url": ..., "channels": [...]}}'
        elif err["type"] == "extra_forbidden":
            reason = "unknown setting"
            close = difflib.get_close_matches(loc[-1].lower(), known_fields, n=1, cutoff=0.6)
            if close:
                reason += f"; did you mean `{close[0]}`?"
        # List indexes: name the list variable, say which item.
        while loc and loc[-1].isdigit():
            reason = f"item {loc.pop()}: {reason}"
        missing = err["type"] in _MISSING_TYPES
        # Environment names are case-insensitive and configure the lower-cased endpoint, so no
        # variable reaches an endpoint named with capitals; and a key that names no field has
        # no one-field variable worth suggesting.
        addressable = key_error or (
            not (len(loc) > 1 and loc[0] == "endpoints" and loc[1] != loc[1].lower())
            and err["type"] != "extra_forbidden"
        )
        named = _name_variable(
            loc, reason, present, key_error=key_error, missing=missing, suggest=addressable
        )
        if (
            file_path is not None
            and named[0] not in present
            and not key_error
            and _has_path(file_data or {}, loc[:1])
        ):
            # Not from the environment: name the file and the path inside it.
            named = (CONFIG_FILE_VARIABLE, f"{file_path}: {'.'.join(loc)}: {reason}")
        elif key_error and file_path is not None and named[0] not in present:
            named = (CONFIG_FILE_VARIABLE, f"{file_path}: {'.'.join(loc[:-1])}: {reason}")
        problems.append(named)
    return problems


def _fields_at(loc: list[str]) -> list[str]:
    """Field names of the model that holds ``loc``'s last element (for "did you mean")."""
    if len(loc) <= 1:
        return list(Settings.model_fields)
    if loc[0] != "endpoints":
        return []
    if len(loc) == 3:
        return list(Endpoint.model_fields)
    if len(loc) >= 4 and loc[2] == "auth":
        kinds: dict[str, type[BaseModel]] = {
            "none": NoAuth,
            "bearer": BearerAuth,
            "oauth2_client_credentials": OAuth2ClientCredentialsAuth,
            "oauth2_refresh_token": OAuth2RefreshTokenAuth,
            "salesforce_jwt": SalesforceJwtAuth,
        }
        model = kinds.get(loc[3]) if len(loc) == 5 else None
        if model is not None:
            return list(model.model_fields)
        return sorted({f for m in kinds.values() for f in m.model_fields})
    return []


_MISSING_TYPES = frozenset({"missing", "missing_secret", "missing_url"})


def _name_variable(
    loc: list[str],
    reason: str,
    present: set[str],
    *,
    key_error: bool = False,
    missing: bool = False,
    suggest: bool = True,
) -> tuple[str, str]:
    full = ENV_PREFIX + "__".join(part.upper() for part in loc)
    # Name the most specific variable that was actually set; a value inside a JSON object is
    # reported against that variable, with the path inside it.
    for cut in range(len(loc), 0, -1):
        var = ENV_PREFIX + "__".join(part.upper() for part in loc[:cut])
        if var in present:
            if cut == len(loc) or key_error:
                return var, reason
            inner = ".".join(loc[cut:])
            if not suggest:
                return var, f"{inner}: {reason}"
            if missing:
                # Nothing was given, so name the one-field variable first.
                return full, f"{reason} (or set {inner} in {var})"
            return var, f"{inner}: {reason} (or set {full})"
    if not suggest and len(loc) > 1 and loc[0] == "endpoints":
        # No variable spells this endpoint; name the JSON variable and the path inside it.
        return ENV_PREFIX + "ENDPOINTS", f"{'.'.join(loc[1:])}: {reason}"
    return full, reason


def _problems_from_json(env: Mapping[str, str]) -> list[tuple[str, str]]:
    # pydantic-settings failed to decode a JSON value; find which variable without echoing it.
    problems: list[tuple[str, str]] = []
    for key, value in env.items():
        name = key.upper()
        if not name.startswith(ENV_PREFIX) or name.endswith("_FILE"):
            continue
        looks_json = name == f"{ENV_PREFIX}ENDPOINTS" or value.lstrip()[:1] in ("[", "{")
        if not looks_json:
            continue
        try:
            json.loads(value)
        except json.JSONDecodeError as exc:
            # The decoder's message names the position, never the text.
            problems.append(
                (name, f"invalid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}")
            )
    if not problems:
        problems.append(
            (f"{ENV_PREFIX}ENDPOINTS", "invalid JSON in this variable or a __ nested one")
        )
    return problems


# --------------------------------------------------------------------------- redaction

MASK = "***"


def mask_url(url: str) -> str:
    """``scheme://user:pass@host`` -> ``scheme://user:***@host`` (a password may contain ``@``),
    and secret query parameters (``?access_token=``, ``sig``, ...) masked; see
    :func:`bridge.logging.redact_text`."""
    parts = urlsplit(url)
    if parts.password is not None:
        user = parts.username or ""
        host = parts.netloc.rsplit("@", 1)[1]
        url = parts._replace(netloc=f"{user}:{MASK}@{host}").geturl()
    return redact_text(url)


def redacted_dump(settings: Settings) -> dict[str, Any]:
    """The effective configuration as JSON-ready data: secrets ``***``, URL passwords masked."""
    raw = settings.model_dump(mode="python", exclude={"amqp_url_file"})
    raw["amqp_url"] = ",".join(
        mask_url(url) for url in amqp_urls(settings.amqp_url.get_secret_value())
    )
    result = _redact(raw)
    assert isinstance(result, dict)
    return result


def _redact(value: Any, key: str = "") -> Any:
    if isinstance(value, SecretStr):
        return MASK
    if isinstance(value, dict):
        # Configured header values are credentials more often than not (API keys, cookies,
        # signatures under any name): every value is hidden, the names stay.
        in_headers = key == "headers"
        return {
            k: (MASK if in_headers else _redact(v, str(k)))
            for k, v in value.items()
            if not (str(k).endswith("_file") and v is None)
        }
    if isinstance(value, list | tuple):
        return [_redact(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, str) and "://" in value:
        return mask_url(value)
    return value
