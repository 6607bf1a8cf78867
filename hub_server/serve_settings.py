"""`central-hub serve`'s settings: one definition each (name, type, default,
help), from which the flags (``--etcd-endpoints``), the environment variables
(``CENTRAL_HUB_ETCD_ENDPOINTS``) and the TOML keys (``etcd_endpoints``) derive,
so they cannot drift. pydantic-settings reads the file, the environment and
the flags; pydantic checks the values.

Precedence: flag > environment > file > default. Each source is checked on its
own, so an error names the setting and where its bad value came from, and the
combination is checked once merged; all of it before anything starts.
"""

from __future__ import annotations

import argparse
import difflib
import json
import os
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    FilePath,
    SecretStr,
    ValidationError,
)
from pydantic_settings import (
    BaseSettings,
    CliSettingsSource,
    EnvSettingsSource,
    NoDecode,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from hub_server.addresses import split_host_port
from hub_server.settings import HubConfig

ENV_PREFIX = "CENTRAL_HUB_"
# Where the configuration file is named when --config is not given.
CONFIG_ENV = ENV_PREFIX + "CONFIG"
MASK = "********"


class SettingsError(ValueError):
    """Settings refused before anything starts; one line per problem."""


def _address(value: str) -> str:
    split_host_port(value)
    return value


def _optional_address(value: str) -> str:
    return value and _address(value)


def _dashboard_address(value: str) -> str:
    """The dashboard also takes a bare PORT (on loopback)."""
    return value if value.isdigit() and int(value) <= 65535 else _optional_address(value)


def _comma_list(value: object) -> object:
    """ "a:1,b:2" (a flag, a variable) or ["a:1", "b:2"] (TOML) alike."""
    if isinstance(value, str):
        value = [value]
    if isinstance(value, list | tuple):
        return [p.strip() for v in value for p in str(v).split(",") if p.strip()]
    return value


def _endpoints(value: list[str]) -> list[str]:
    for endpoint in value:
        rest = endpoint.removeprefix("http://").removeprefix("https://")
        split_host_port(rest)
    return value


def _upper(value: object) -> object:
    return value.upper() if isinstance(value, str) else value


def _setting(default: Any, help: str, *, metavar: str | None = None, **checks: Any) -> Any:
    extra: dict[str, Any] | None = {"metavar": metavar} if metavar else None
    if isinstance(default, list):
        return Field(default_factory=list, description=help, json_schema_extra=extra, **checks)
    return Field(default, description=help, json_schema_extra=extra, **checks)


Address = Annotated[str, AfterValidator(_address)]
OptionalAddress = Annotated[str, AfterValidator(_optional_address)]
Port = Annotated[int, Field(ge=0, le=65535)]


class ServeSettings(BaseModel):
    """Every setting of `central-hub serve`. Relative paths are relative to the
    working directory, wherever they are given."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    listen: Address = _setting("127.0.0.1:7000", "gRPC address", metavar="HOST:PORT")
    data_dir: Path = _setting(
        Path(".hub-data"), "where the embedded etcd keeps its data", metavar="DIR"
    )
    etcd_endpoints: Annotated[
        list[str], NoDecode, BeforeValidator(_comma_list), AfterValidator(_endpoints)
    ] = _setting(
        [],
        "comma-separated host:port of an existing etcd cluster; none: an embedded etcd",
        metavar="HOST:PORT,...",
    )
    etcd_client_port: Port = _setting(
        0, "the embedded etcd's client port on loopback (0: kept from last time, else free)",
        metavar="PORT",
    )  # fmt: skip
    etcd_peer_port: Port = _setting(
        0, "the embedded etcd's peer port on loopback (0: kept from last time, else free)",
        metavar="PORT",
    )  # fmt: skip
    etcd_cacert: FilePath | None = _setting(
        None, "CA (PEM) that signs etcd's server certificates: TLS to etcd", metavar="PEM"
    )
    etcd_cert: FilePath | None = _setting(
        None, "client certificate (PEM) presented to etcd", metavar="PEM"
    )
    etcd_key: FilePath | None = _setting(None, "its private key (PEM)", metavar="PEM")
    etcd_user: str = _setting("", "etcd user (etcd authentication)", metavar="NAME")
    etcd_password_file: FilePath | None = _setting(
        None, "file holding etcd_user's password (never give it on the command line)",
        metavar="FILE",
    )  # fmt: skip
    # From the environment or the file only (secret; see _refuse_secret_flags).
    etcd_password: SecretStr | None = _setting(
        None, "etcd_user's password: environment or file only, never a flag"
    )
    hub_id: str = _setting("", "this replica's name (empty: host-pid-rand)", metavar="NAME")
    watch_progress_interval: float = _setting(
        10.0, "seconds between PROGRESS messages on idle watch streams", metavar="S", gt=0
    )
    ui_listen: Annotated[str, AfterValidator(_dashboard_address)] = _setting(
        "", "HOST:PORT (or PORT, on loopback) of the operators' web dashboard (none if empty)",
        metavar="HOST:PORT",
    )  # fmt: skip
    http_listen: OptionalAddress = _setting(
        "", "HOST:PORT of the HTTP/JSON API (none if empty); loopback only without credentials",
        metavar="HOST:PORT",
    )  # fmt: skip
    http_cors_origin: Annotated[list[str], NoDecode, BeforeValidator(_comma_list)] = _setting(
        [], "comma-separated origins whose browser pages may call the HTTP/JSON API "
        "(CORS; * for any); none: CORS off", metavar="ORIGIN,...",
    )  # fmt: skip
    metrics_listen: OptionalAddress = _setting(
        "", "HOST:PORT of a Prometheus /metrics endpoint (none if empty)", metavar="HOST:PORT"
    )
    otlp_endpoint: str = _setting(
        "", "HOST:PORT of an OpenTelemetry collector: OTLP/gRPC export of metrics and traces",
        metavar="HOST:PORT",
    )  # fmt: skip
    audit_retention_days: float = _setting(
        30.0, "how long audit records are kept, in days", metavar="DAYS", gt=0
    )
    backup_dir: Path | None = _setting(
        None, "where backups are stored (default <data_dir>/backups with the embedded etcd; "
        "required for backup_interval with etcd_endpoints)", metavar="DIR",
    )  # fmt: skip
    backup_interval: float = _setting(
        0.0, "seconds between scheduled backups, taken by the elected replica (0: none)",
        metavar="S", ge=0,
    )  # fmt: skip
    backup_keep: int = _setting(7, "scheduled backups kept (newest first)", metavar="N", ge=1)
    workers: int = _setting(
        1, "serving processes on the same port (SO_REUSEPORT)", metavar="N", ge=1
    )
    credentials_file: FilePath | None = _setting(
        None, "TOML file of tokens (as sha256) and client certificates with their roles; "
        "re-read on SIGHUP (see `central-hub token create`)", metavar="FILE",
    )  # fmt: skip
    tls_cert: FilePath | None = _setting(None, "server certificate (PEM)", metavar="PEM")
    tls_key: FilePath | None = _setting(None, "server private key (PEM)", metavar="PEM")
    tls_client_ca: FilePath | None = _setting(
        None, "CA (PEM) that signs client certificates; makes them required", metavar="PEM"
    )
    insecure: bool = _setting(
        False, "serve a non-loopback address with no credentials (everyone is admin)"
    )
    caller_rate_limit: float = _setting(
        10_000.0, "calls per second per caller before RESOURCE_EXHAUSTED (0: none)",
        metavar="N", ge=0,
    )  # fmt: skip
    caller_max_streams: int = _setting(
        10_000, "open streams per caller (0: unbounded)", metavar="N", ge=0
    )
    webhook_allow_private: bool = _setting(
        False, "let webhook targets be loopback, link-local or cloud metadata addresses"
    )
    webhook_allowed_hosts: Annotated[list[str], NoDecode, BeforeValidator(_comma_list)] = (
        _setting(
            [], "comma-separated hosts webhook targets may name (*.example.com: its "
            "subdomains); none: any host", metavar="HOST,...",
        )
    )  # fmt: skip
    webhook_retry_for: float = _setting(
        3600.0, "seconds a webhook delivery is retried before its subscription is failing",
        metavar="S", gt=0,
    )  # fmt: skip
    log_level: Annotated[
        Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"], BeforeValidator(_upper)
    ] = _setting("INFO", "DEBUG, INFO, WARNING, ERROR or CRITICAL", metavar="LEVEL")
    log_format: Literal["text", "json"] = _setting(
        "text", "json: one JSON object per line with tenant and correlation ids"
    )

    def password(self) -> str:
        """etcd_user's password, from etcd_password or etcd_password_file."""
        if self.etcd_password is not None:
            return self.etcd_password.get_secret_value()
        if self.etcd_password_file is not None:
            return self.etcd_password_file.read_text().rstrip("\r\n")
        return ""

    def hub_config(self) -> HubConfig:
        return HubConfig(
            listen=self.listen,
            data_dir=self.data_dir,
            etcd_endpoints=list(self.etcd_endpoints),
            etcd_client_port=self.etcd_client_port,
            etcd_peer_port=self.etcd_peer_port,
            etcd_cacert=self.etcd_cacert,
            etcd_cert=self.etcd_cert,
            etcd_key=self.etcd_key,
            etcd_user=self.etcd_user,
            etcd_password=self.password(),
            hub_id=self.hub_id,
            watch_progress_interval=self.watch_progress_interval,
            metrics_listen=self.metrics_listen,
            ui_listen=self.ui_listen,
            http_listen=self.http_listen,
            http_cors_origins=list(self.http_cors_origin),
            otlp_endpoint=self.otlp_endpoint,
            audit_retention=self.audit_retention_days * 86400,
            backup_dir=self.backup_dir,
            backup_interval=self.backup_interval,
            backup_keep=self.backup_keep,
            credentials_file=self.credentials_file,
            tls_cert=self.tls_cert,
            tls_key=self.tls_key,
            tls_client_ca=self.tls_client_ca,
            insecure=self.insecure,
            caller_rate_limit=self.caller_rate_limit,
            caller_max_streams=self.caller_max_streams,
            webhook_allow_private=self.webhook_allow_private,
            webhook_allowed_hosts=list(self.webhook_allowed_hosts),
            webhook_retry_for=self.webhook_retry_for,
        )


SECRETS = frozenset(
    name for name, f in ServeSettings.model_fields.items() if f.annotation == SecretStr | None
)


class _Sources(ServeSettings, BaseSettings):
    """The same fields, as pydantic-settings reads them: env names, flags."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_ignore_empty=True,
        extra="forbid",
        cli_kebab_case=True,
        cli_implicit_flags=True,  # --insecure / --no-insecure
        cli_hide_none_type=True,
        cli_avoid_json=True,
        cli_show_env_vars=True,
    )


def env_name(name: str) -> str:
    return ENV_PREFIX + name.upper()


def flag_name(name: str) -> str:
    return "--" + name.replace("_", "-")


# -- the command line ------------------------------------------------------


def add_settings_flags(parser: argparse.ArgumentParser) -> None:
    """Every setting as a flag of ``parser``, and ``--config FILE``."""
    parser.add_argument(
        "--config",
        type=Path,
        default=None,
        metavar="FILE",
        help=f"TOML file of settings (keys as the flags, with _ for -) [env: {CONFIG_ENV}]",
    )
    source: CliSettingsSource[Any] = CliSettingsSource(
        _Sources, root_parser=parser, add_argument_method=_add_argument
    )
    parser.set_defaults(settings_source=source)


def _add_argument(parser: Any, *names: str, **kwargs: Any) -> Any:
    field = ServeSettings.model_fields.get(kwargs.get("dest", ""))
    if field is not None:
        extra = field.json_schema_extra
        if isinstance(extra, dict) and "metavar" in kwargs and extra.get("metavar"):
            kwargs["metavar"] = extra["metavar"]
        if kwargs["dest"] in SECRETS:
            kwargs["help"] = argparse.SUPPRESS  # refused if given: see load()
    return parser.add_argument(*names, **kwargs)


# -- loading ---------------------------------------------------------------


@dataclass(frozen=True)
class Effective:
    """The settings in force and where each value came from: "default",
    "file PATH", "environment NAME" or "flag --name"."""

    settings: ServeSettings
    sources: Mapping[str, str]

    def show(self) -> str:
        """The effective configuration as TOML (a usable file), each line with
        its source; secrets masked, unset values commented out."""
        lines = ["# central-hub serve: effective configuration (each value's source after #)"]
        for name in ServeSettings.model_fields:
            value = getattr(self.settings, name)
            source = self.sources[name]
            if value is None:
                lines.append(f"# {name} is not set  # {source}")
            else:
                lines.append(f"{name} = {_toml_value(value)}  # {source}")
        return "\n".join(lines) + "\n"


def _toml_value(value: object) -> str:
    if isinstance(value, SecretStr):
        return json.dumps(MASK)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    return json.dumps(str(value))  # a JSON string is a TOML basic string


def load(args: argparse.Namespace) -> Effective:
    """The settings from ``args`` (a parser given add_settings_flags), the
    environment and the configuration file."""
    source: CliSettingsSource[Any] = args.settings_source
    flags: dict[str, Any] = source(parsed_args=args)()
    config = args.config or (Path(os.environ[CONFIG_ENV]) if os.environ.get(CONFIG_ENV) else None)
    config_source = "flag --config" if args.config else f"environment {CONFIG_ENV}"
    return load_from(flags, config, config_source=config_source)


def load_from(
    flags: Mapping[str, Any], config: Path | None, *, config_source: str = "flag --config"
) -> Effective:
    errors: list[str] = []
    layers: list[tuple[dict[str, Any], Callable[[str], str]]] = []  # lowest first
    if config is not None:
        file_values = _read_file(config, config_source, errors)
        layers.append((file_values, lambda _name: f"file {config}"))
    env_values = EnvSettingsSource(_Sources)()
    layers.append((env_values, lambda name: f"environment {env_name(name)}"))
    layers.append((dict(flags), lambda name: f"flag {flag_name(name)}"))

    values: dict[str, Any] = {}
    sources = dict.fromkeys(ServeSettings.model_fields, "default")
    for raw, where in layers:
        for name, value in _checked(raw, where, errors).items():
            values[name] = value
            sources[name] = where(name)
    for name in SECRETS & flags.keys():
        errors.append(
            f"{name} (from {sources[name]}): not accepted on the command line, where every "
            f"user sees it; use {env_name(name)}, the config file or etcd_password_file"
        )
    if errors:
        raise SettingsError("\n".join(errors))
    settings = ServeSettings.model_validate(values)
    effective = Effective(settings, sources)
    _check_combination(effective)
    return effective


def _read_file(path: Path, named_by: str, errors: list[str]) -> dict[str, Any]:
    if not path.is_file():
        errors.append(f"config file {path} ({named_by}): no such file")
        return {}
    try:
        return TomlConfigSettingsSource(_Sources, toml_file=path)()
    except (tomllib.TOMLDecodeError, OSError, UnicodeDecodeError) as e:
        errors.append(f"config file {path}: {e}")
        return {}


def _checked(raw: dict[str, Any], where: Callable[[str], str], errors: list[str]) -> dict[str, Any]:
    """The values one source gives, each checked; errors name setting and source."""
    try:
        checked = ServeSettings.model_validate(raw)
    except ValidationError as e:
        bad = set()
        for err in e.errors():
            name = str(err["loc"][0]) if err["loc"] else ""
            bad.add(name)
            if err["type"] == "extra_forbidden":
                errors.append(f"unknown setting {name!r} in {where(name)}{_did_you_mean(name)}")
                continue
            message = str(err["msg"]).removeprefix("Value error, ")
            shown = MASK if name in SECRETS else repr(raw.get(name, err.get("input")))
            errors.append(f"{name} (from {where(name)}): {shown}: {message}")
        return {k: v for k, v in raw.items() if k not in bad and k in ServeSettings.model_fields}
    return {name: getattr(checked, name) for name in raw}


def _did_you_mean(name: str) -> str:
    close = difflib.get_close_matches(name, ServeSettings.model_fields, n=1, cutoff=0.75)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _check_combination(effective: Effective) -> None:
    """What no single setting can tell, each message naming the settings
    involved and their sources."""
    s, src = effective.settings, effective.sources

    def named(name: str) -> str:
        return f"{name} (from {src[name]})"

    errors = []
    if s.workers > 1 and s.metrics_listen:
        errors.append(
            f"{named('metrics_listen')} serves one process, not {named('workers')}; "
            "use otlp_endpoint"
        )
    if s.workers > 1 and s.ui_listen:
        errors.append(f"{named('ui_listen')} serves one process, not {named('workers')}")
    if s.workers > 1 and s.http_listen.endswith(":0"):
        errors.append(
            f"{named('http_listen')}: port 0 would give each of {named('workers')} "
            "a port of its own; name a port"
        )
    if s.http_cors_origin and not s.http_listen:
        errors.append(f"{named('http_cors_origin')} needs http_listen")
    if s.backup_interval > 0 and s.etcd_endpoints and s.backup_dir is None:
        errors.append(f"{named('backup_interval')} with {named('etcd_endpoints')} needs backup_dir")
    for a, b in (("tls_cert", "tls_key"), ("etcd_cert", "etcd_key")):
        if (getattr(s, a) is None) != (getattr(s, b) is None):
            given = a if getattr(s, a) is not None else b
            errors.append(f"{named(given)}: {a} and {b} go together")
    if s.tls_client_ca is not None and s.tls_cert is None:
        errors.append(f"{named('tls_client_ca')} needs tls_cert and tls_key")
    if s.etcd_password is not None and s.etcd_password_file is not None:
        errors.append(f"{named('etcd_password')} and {named('etcd_password_file')}: give one")
    has_password = s.etcd_password is not None or s.etcd_password_file is not None
    if has_password and not s.etcd_user:
        given = "etcd_password" if s.etcd_password is not None else "etcd_password_file"
        errors.append(f"{named(given)}: needs etcd_user")
    if s.etcd_user and not has_password:
        errors.append(f"{named('etcd_user')} needs etcd_password_file (or etcd_password)")
    if s.etcd_user and s.etcd_password_file is not None:
        try:
            if not s.password():
                errors.append(f"{named('etcd_password_file')}: the file is empty")
        except (OSError, UnicodeDecodeError) as e:
            errors.append(f"{named('etcd_password_file')}: cannot read it: {e}")
    embedded_only = ("etcd_client_port", "etcd_peer_port")
    external_only = (
        "etcd_cacert", "etcd_cert", "etcd_key", "etcd_user", "etcd_password_file", "etcd_password"
    )  # fmt: skip
    for name in embedded_only if s.etcd_endpoints else external_only:
        if getattr(s, name):
            other = "an external etcd (etcd_endpoints)" if s.etcd_endpoints else "the embedded etcd"
            errors.append(f"{named(name)} does not apply to {other}")
    if s.etcd_client_port and s.etcd_client_port == s.etcd_peer_port:
        errors.append(f"{named('etcd_client_port')} and {named('etcd_peer_port')} must differ")
    if errors:
        raise SettingsError("\n".join(errors))


# -- --workers -------------------------------------------------------------


def worker_flags(
    settings: ServeSettings, *, exclude: frozenset[str] | set[str] = frozenset(), **overrides: Any
) -> list[str]:
    """Every setting but ``exclude`` as flags (a worker of --workers gets them
    all, so neither the environment nor a file can change what it runs with);
    secrets are left out (see worker_environment)."""
    settings = settings.model_copy(update=overrides)
    flags: list[str] = []
    for name in ServeSettings.model_fields:
        value = getattr(settings, name)
        if value is None or name in SECRETS or name in exclude:
            continue
        if isinstance(value, bool):
            flags.append(flag_name(name) if value else "--no-" + name.replace("_", "-"))
        elif isinstance(value, list):
            flags += [flag_name(name), ",".join(value)]
        else:
            flags += [flag_name(name), str(value)]
    return flags


def worker_environment(settings: ServeSettings) -> dict[str, str]:
    """The environment of a worker: ours without CENTRAL_HUB_* (its flags say
    everything), plus the secrets, which no flag carries."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(ENV_PREFIX)}
    for name in SECRETS:
        value = getattr(settings, name)
        if value is not None:
            env[env_name(name)] = value.get_secret_value()
    return env
