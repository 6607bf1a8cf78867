"""Layered configuration, without I/O: the values a layer holds, how they are
validated, how layers merge, and the built-in tier defaults.

Layers, lowest first: the defaults of the tenant's subscription tier, the global
layer, the tenant's own overrides. A typed field (a limit or a feature) that a
layer leaves unset is taken from the layer below; ``features.flags`` merge flag
by flag; free-form ``settings`` merge like a JSON merge patch (RFC 7386): objects
merge recursively, ``null`` removes a key, any other value replaces. A tier
defaults layer must set every typed field, so a merged config always has them.

The dict form of a layer (what is stored in etcd and what the API layer hands
in) is ``{"rate_limits": {...}, "features": {..., "flags": {...}},
"resource_limits": {...}, "settings": {...}}``; sections and fields a layer does
not set are left out.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from hub_server.kernel.errors import FieldViolation, InvalidArgument
from hub_server.kernel.tiers import DEFAULT_TIER, TIER_LEVELS, parse_tier

INT32_MAX = 2**31 - 1
# Large enough for any real limit, small enough to stay exact in a double (JSON).
INT64_LIMIT_MAX = 10**15


@dataclass(frozen=True)
class TypedField:
    """One typed config field: ``section.name``, an int limit or a bool feature."""

    section: str
    name: str
    kind: type  # int or bool
    maximum: int = 0  # for ints

    @property
    def path(self) -> str:
        return f"{self.section}.{self.name}"


TYPED_FIELDS: tuple[TypedField, ...] = (
    TypedField("rate_limits", "api_calls_per_hour", int, INT64_LIMIT_MAX),
    TypedField("rate_limits", "websocket_connections", int, INT32_MAX),
    TypedField("features", "basic_analytics", bool),
    TypedField("features", "advanced_ai", bool),
    TypedField("features", "custom_models", bool),
    TypedField("resource_limits", "max_concurrent_requests", int, INT32_MAX),
    TypedField("resource_limits", "max_data_storage_mb", int, INT64_LIMIT_MAX),
)
FIELDS_BY_PATH: dict[str, TypedField] = {f.path: f for f in TYPED_FIELDS}
SECTIONS = ("rate_limits", "features", "resource_limits")
FLAGS = "flags"  # the map of other flags, inside "features"
SETTINGS = "settings"

MAX_FLAGS = 256
_FLAG_NAME = re.compile(r"[A-Za-z0-9]([A-Za-z0-9._-]{0,62}[A-Za-z0-9])?")  # fullmatch
MAX_SETTINGS_BYTES = 64 * 1024
MAX_SETTINGS_DEPTH = 16  # levels of objects and lists, settings itself included

Scalar = int | bool


@dataclass(frozen=True)
class ConfigValues:
    """The content of one layer, or a merged config.

    Attributes:
        fields: the typed fields this layer sets, by path (``rate_limits.api_calls_per_hour``).
        flags: other feature flags, by name.
        settings: free-form settings (a JSON object).
    """

    fields: Mapping[str, Scalar] = field(default_factory=dict)
    flags: Mapping[str, bool] = field(default_factory=dict)
    settings: Mapping[str, Any] = field(default_factory=dict)

    def get(self, path: str) -> Scalar | None:
        return self.fields.get(path)

    def limit(self, path: str) -> int:
        """A limit of a merged config (0, which allows nothing, if unset)."""
        value = self.fields.get(path)
        return int(value) if value is not None and not isinstance(value, bool) else 0

    def missing(self) -> list[str]:
        """Paths of the typed fields this layer leaves unset."""
        return [f.path for f in TYPED_FIELDS if f.path not in self.fields]

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for f in TYPED_FIELDS:
            if f.path in self.fields:
                out.setdefault(f.section, {})[f.name] = self.fields[f.path]
        if self.flags:
            out.setdefault("features", {})[FLAGS] = dict(sorted(self.flags.items()))
        if self.settings:
            out[SETTINGS] = dict(self.settings)
        return out

    @classmethod
    def from_dict(cls, data: Any, *, path: str = "") -> ConfigValues:
        """Parses and validates the dict form.

        Raises:
            InvalidArgument: naming every bad field, with paths under ``path``.
        """
        values, violations = parse_values(data, path=path)
        if violations:
            raise InvalidArgument(violations)
        return values


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


def parse_values(data: Any, *, path: str = "") -> tuple[ConfigValues, list[FieldViolation]]:
    """The values of the dict form and every violation found (all at once)."""
    bad: list[FieldViolation] = []
    fields: dict[str, Scalar] = {}
    flags: dict[str, bool] = {}
    settings: dict[str, Any] = {}
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        return ConfigValues(), [FieldViolation(path or "values", "must be an object")]
    for section, content in data.items():
        where = _join(path, str(section))
        if section == SETTINGS:
            if content is not None:
                settings = _check_settings(bad, where, content)
            continue
        if section not in SECTIONS:
            bad.append(FieldViolation(where, "is not a config section"))
            continue
        if content is None:
            continue
        if not isinstance(content, Mapping):
            bad.append(FieldViolation(where, "must be an object"))
            continue
        for name, value in content.items():
            field_path = f"{section}.{name}"
            where = _join(path, field_path)
            if section == "features" and name == FLAGS:
                flags = _check_flags(bad, where, value)
                continue
            spec = FIELDS_BY_PATH.get(field_path)
            if spec is None:
                bad.append(FieldViolation(where, f"is not a field of {section}"))
                continue
            if value is None:  # unset in this layer
                continue
            if spec.kind is bool:
                if not isinstance(value, bool):
                    bad.append(FieldViolation(where, "must be a boolean"))
                    continue
            elif isinstance(value, bool) or not isinstance(value, int | float):
                bad.append(FieldViolation(where, "must be an integer"))
                continue
            elif isinstance(value, float) and not value.is_integer():
                bad.append(FieldViolation(where, "must be an integer"))
                continue
            else:
                value = int(value)
                if value < 0:
                    bad.append(FieldViolation(where, "must not be negative"))
                    continue
                if value > spec.maximum:
                    bad.append(FieldViolation(where, f"must be at most {spec.maximum}"))
                    continue
            fields[field_path] = value
    return ConfigValues(fields, flags, settings), bad


def _check_flags(bad: list[FieldViolation], where: str, value: Any) -> dict[str, bool]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        bad.append(FieldViolation(where, "must be an object of flag name to boolean"))
        return {}
    if len(value) > MAX_FLAGS:
        bad.append(FieldViolation(where, f"has {len(value)} flags, at most {MAX_FLAGS}"))
        return {}
    flags: dict[str, bool] = {}
    for name, flag in value.items():
        at = f"{where}[{str(name)[:64]!r}]"
        if not isinstance(name, str) or not _FLAG_NAME.fullmatch(name):
            bad.append(FieldViolation(at, "name must be 1-64 of letters, digits, '.', '_', '-'"))
        elif f"features.{name}" in FIELDS_BY_PATH:
            bad.append(FieldViolation(at, f"is a typed feature: set features.{name} instead"))
        elif not isinstance(flag, bool):
            bad.append(FieldViolation(at, "must be a boolean"))
        else:
            flags[name] = flag
    return flags


def _check_settings(bad: list[FieldViolation], where: str, value: Any) -> dict[str, Any]:
    if not isinstance(value, Mapping):
        bad.append(FieldViolation(where, "must be an object"))
        return {}
    problem = _json_problem(value, 1)
    if problem:
        bad.append(FieldViolation(where, problem))
        return {}
    size = len(json.dumps(value, separators=(",", ":")).encode())
    if size > MAX_SETTINGS_BYTES:
        bad.append(FieldViolation(where, f"is {size} bytes as JSON, at most {MAX_SETTINGS_BYTES}"))
        return {}
    return dict(value)


def _json_problem(value: Any, depth: int) -> str:
    """What makes ``value`` not plain JSON within the depth bound ("" if nothing).
    ``depth`` counts objects and lists only (settings itself is 1): a scalar
    inside the 16th level is allowed, as the message says."""
    if isinstance(value, Mapping | list) and depth > MAX_SETTINGS_DEPTH:
        return (
            f"is nested more than {MAX_SETTINGS_DEPTH} deep "
            "(objects and lists; settings itself is the first)"
        )
    if isinstance(value, Mapping):
        for k, v in value.items():
            if not isinstance(k, str):
                return "has a key that is not a string"
            problem = _json_problem(v, depth + 1)
            if problem:
                return problem
    elif isinstance(value, list):
        for v in value:
            problem = _json_problem(v, depth + 1)
            if problem:
                return problem
    elif isinstance(value, float):
        if not math.isfinite(value):
            return "has a number that is not finite"
    elif value is not None and not isinstance(value, str | int | bool):
        return f"has a value of type {type(value).__name__}"
    return ""


def check_tier_layer(values: ConfigValues, *, path: str = "values") -> None:
    """A tier defaults layer is the bottom of every merge: it sets every typed field."""
    missing = values.missing()
    if missing:
        raise InvalidArgument(
            [FieldViolation(f"{path}.{p}", "is required in a tier defaults layer") for p in missing]
        )


# -- merging -------------------------------------------------------------------


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386: ``patch`` applied to ``target`` (neither is modified)."""
    if not isinstance(patch, Mapping):
        return patch
    out = dict(target) if isinstance(target, Mapping) else {}
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        else:
            out[key] = merge_patch(out.get(key), value)
    return out


def merge(layers: Sequence[ConfigValues]) -> ConfigValues:
    """Layers merged, lowest first; a typed field no layer sets stays unset."""
    fields: dict[str, Scalar] = {}
    flags: dict[str, bool] = {}
    settings: Any = {}
    for layer in layers:
        fields.update(layer.fields)
        flags.update(layer.flags)
        settings = merge_patch(settings, dict(layer.settings))
    ordered = {f.path: fields[f.path] for f in TYPED_FIELDS if f.path in fields}
    return ConfigValues(ordered, dict(sorted(flags.items())), settings)


def complete(values: ConfigValues) -> ConfigValues:
    """Every typed field set: one no layer sets fails closed (limit 0, feature off).

    Only reachable if a tier defaults layer was written around the API: the API
    requires tier layers to be complete."""
    fields = {
        f.path: values.fields.get(f.path, False if f.kind is bool else 0) for f in TYPED_FIELDS
    }
    return ConfigValues(fields, values.flags, values.settings)


# -- tier defaults (the product write-up) ----------------------------------------

# Rate limits and features are the write-up's. Resource limits: the write-up gives
# pro's (100 concurrent requests, 1000 MiB); free and enterprise scale them by the
# same factor of ten between tiers that the write-up's rate limits use.
TIER_DEFAULTS: dict[str, ConfigValues] = {
    "free": ConfigValues.from_dict(
        {
            "rate_limits": {"api_calls_per_hour": 1000, "websocket_connections": 5},
            "features": {"basic_analytics": True, "advanced_ai": False, "custom_models": False},
            "resource_limits": {"max_concurrent_requests": 10, "max_data_storage_mb": 100},
        }
    ),
    "pro": ConfigValues.from_dict(
        {
            "rate_limits": {"api_calls_per_hour": 10000, "websocket_connections": 50},
            "features": {"basic_analytics": True, "advanced_ai": True, "custom_models": False},
            "resource_limits": {"max_concurrent_requests": 100, "max_data_storage_mb": 1000},
        }
    ),
    "enterprise": ConfigValues.from_dict(
        {
            "rate_limits": {"api_calls_per_hour": 100000, "websocket_connections": 500},
            "features": {"basic_analytics": True, "advanced_ai": True, "custom_models": True},
            "resource_limits": {"max_concurrent_requests": 1000, "max_data_storage_mb": 10000},
        }
    ),
}

# -- layers ----------------------------------------------------------------------

GLOBAL_LAYER = "global"


def tier_layer(tier: str) -> str:
    return f"tier/{tier}"


def tenant_layer(tenant_id: str) -> str:
    return f"tenant/{tenant_id}"


def parse_layer(layer: str) -> tuple[str, str]:
    """("tier", tier), ("global", "") or ("tenant", tenant id) of a layer name."""
    if layer == GLOBAL_LAYER:
        return GLOBAL_LAYER, ""
    kind, _, name = layer.partition("/")
    if kind not in ("tier", "tenant") or not name:
        raise ValueError(f"not a config layer: {layer!r}")
    return kind, name


@dataclass(frozen=True)
class StoredLayer:
    """One version of a layer, as kept in etcd (the current one, or history)."""

    layer: str
    version: int  # 0: never written
    values: ConfigValues
    updated_at: float = 0.0
    updated_by: str = ""
    restored_version: int = 0
    comment: str = ""
    revision: int = 0  # etcd mod revision of the current key (0 if never written)

    def to_json(self) -> bytes:
        return json.dumps(
            {
                "version": self.version,
                "values": self.values.to_dict(),
                "updated_at": self.updated_at,
                "updated_by": self.updated_by,
                "restored_version": self.restored_version,
                "comment": self.comment,
            },
            separators=(",", ":"),
        ).encode()

    @classmethod
    def from_json(cls, layer: str, raw: bytes, revision: int) -> StoredLayer:
        doc = json.loads(raw)
        # Stored values were validated when written; parse leniently so that one
        # bad record (written around the API) cannot take the view down.
        values, _ = parse_values(doc.get("values"))
        return cls(
            layer=layer,
            version=int(doc.get("version", 0)),
            values=values,
            updated_at=float(doc.get("updated_at", 0.0)),
            updated_by=str(doc.get("updated_by", "")),
            restored_version=int(doc.get("restored_version", 0)),
            comment=str(doc.get("comment", "")),
            revision=revision,
        )


def empty_layer(layer: str) -> StoredLayer:
    """A layer never written: tier defaults are the built-in ones, others empty."""
    kind, name = parse_layer(layer)
    if kind == "tier":
        return StoredLayer(layer, 0, TIER_DEFAULTS[name], updated_by="hub")
    return StoredLayer(layer, 0, ConfigValues())


# -- the merged view ---------------------------------------------------------------

TIER_FROM_RECORD = "tenant_record"
TIER_FROM_HEADER = "request_header"
TIER_FROM_DEFAULT = "default"


def resolve_tier(record_tier: str | None, header_tier: str) -> tuple[str, str]:
    """The tier to merge with and where it came from: the tenant's stored record,
    else the caller's x-subscription-tier, else free."""
    if record_tier is not None and record_tier in TIER_LEVELS:
        return record_tier, TIER_FROM_RECORD
    tier = parse_tier(header_tier)
    if tier is not None:
        return tier, TIER_FROM_HEADER
    return DEFAULT_TIER, TIER_FROM_DEFAULT


@dataclass(frozen=True)
class MergedConfig:
    """A tenant's merged config and the version of every layer it used."""

    tenant_id: str
    tier: str
    tier_source: str
    values: ConfigValues
    tier_defaults_version: int
    global_version: int
    tenant_version: int
    # The newest etcd revision among what it was built from; not part of
    # equality, so a write that changes nothing here is not a new config.
    revision: int = field(default=0, compare=False)


MergeCache = dict[tuple[Any, ...], ConfigValues]


def _identity(layer: StoredLayer | None) -> tuple[str, int, int] | None:
    """What identifies a layer's content: a layer never writes two contents under
    one (version, revision); every tenant's unwritten layer is the same (empty)."""
    if layer is None or (layer.version == 0 and parse_layer(layer.layer)[0] == "tenant"):
        return None
    return layer.layer, layer.version, layer.revision


def merge_config(
    tenant_id: str,
    tier: str,
    tier_source: str,
    tier_defaults: StoredLayer,
    global_layer: StoredLayer,
    tenant: StoredLayer | None,
    *,
    record_revision: int = 0,
    cache: MergeCache | None = None,
) -> MergedConfig:
    """The merged config. With ``cache``, merged values are shared by every config
    built from the same layer contents (all tenants of a tier without overrides
    of their own), so computing many of them costs one merge."""
    layers = [tier_defaults, global_layer] + ([tenant] if tenant is not None else [])
    key = (_identity(tier_defaults), _identity(global_layer), _identity(tenant))
    values = cache.get(key) if cache is not None else None
    if values is None:
        values = complete(merge([layer.values for layer in layers]))
        if cache is not None:
            if len(cache) >= 10_000:
                cache.clear()
            cache[key] = values
    return MergedConfig(
        tenant_id=tenant_id,
        tier=tier,
        tier_source=tier_source,
        values=values,
        tier_defaults_version=tier_defaults.version,
        global_version=global_layer.version,
        tenant_version=tenant.version if tenant is not None else 0,
        revision=max([record_revision, *(layer.revision for layer in layers)]),
    )
