"""hubctl config: merged per-tenant configuration, its layers (tier defaults,
global, tenant overrides), their versions, rollback, and a live watch.

A layer is named ``global``, ``tier NAME`` or ``tenant ID`` (``tier/NAME`` and
``tenant/ID`` work too). ``config set`` changes only the fields it is given: it
reads the layer, applies them, and writes the result as the version it read
(retrying if someone else wrote meanwhile, unless ``--expected-version`` pins it).
"""

from __future__ import annotations

import argparse
import asyncio
import copy
import json
from collections.abc import Iterable
from typing import Any

from hub_client import ConfigLayer, TenantConfig, VersionConflict
from hubctl.app import Context, UsageError, arg, command, group
from hubctl.commands import TIERS
from hubctl.output import (
    Style,
    ago,
    clock,
    iso,
    key_values,
    plain,
    show,
    table,
)

group("config", "merged tenant configuration, its layers, versions and rollback")

# Typed fields: (section, field). Order is the display order.
TYPED_FIELDS = (
    ("rate_limits", "api_calls_per_hour"),
    ("rate_limits", "websocket_connections"),
    ("resource_limits", "max_concurrent_requests"),
    ("resource_limits", "max_data_storage_mb"),
    ("features", "basic_analytics"),
    ("features", "advanced_ai"),
    ("features", "custom_models"),
)
_INT_FIELDS = {name: section for section, name in TYPED_FIELDS if section != "features"}
_TYPED_FEATURES = {name for section, name in TYPED_FIELDS if section == "features"}
_SECTION_ORDER = ("rate_limits", "resource_limits", "features")
_TRUE = {"true", "on", "yes", "1"}
_FALSE = {"false", "off", "no", "0"}
_TIER_SOURCES = {
    "tenant_record": "from the tenant record",
    "request_header": "from --tier: not a stored tenant",
    "default": "by default: not a stored tenant, and no --tier",
}
_TIER_SOURCES_NO_TENANT = {"request_header": "from --tier", "default": "by default (no --tier)"}
_SET_RETRIES = 3


# -- layers ---------------------------------------------------------------------


def _layer_args(name_help: str = "the tier (free, pro, enterprise) or the tenant id") -> list[Any]:
    return [
        arg("kind", metavar="LAYER", complete="layer", help="global, tier or tenant"),
        arg("name", nargs="?", default="", metavar="NAME", complete="layer-name", help=name_help),
    ]


def layer_of(kind: str, name: str) -> str:
    """``global``, ``tier/<tier>`` or ``tenant/<id>`` from the command line words."""
    if "/" in kind and not name:
        kind, _, name = kind.partition("/")
    if kind == "global":
        if name:
            raise UsageError(f"the global layer takes no name (got {name!r})")
        return "global"
    if kind == "tier":
        if name not in TIERS:
            got = f" (not {name!r})" if name else ""
            raise UsageError(f"tier needs a NAME: {', '.join(TIERS)}{got}")
        return f"tier/{name}"
    if kind == "tenant":
        if not name:
            raise UsageError("tenant takes a tenant id: config ... tenant ID")
        return f"tenant/{name}"
    raise UsageError(f"a layer is global, tier NAME or tenant ID (got {kind!r})")


def flatten(values: dict[str, Any]) -> dict[str, Any]:
    """A layer's (or merged) values as ``section.field`` -> value, in display
    order: typed fields, feature flags (``features.flags.NAME``), then each
    top-level setting (``settings.KEY``)."""
    out: dict[str, Any] = {}
    for section in _SECTION_ORDER:
        fields = values.get(section) or {}
        for s, name in TYPED_FIELDS:
            if s == section and name in fields:
                out[f"{section}.{name}"] = fields[name]
    for name, on in sorted((values.get("features") or {}).get("flags", {}).items()):
        out[f"features.flags.{name}"] = on
    for key, value in sorted((values.get("settings") or {}).items()):
        out[f"settings.{key}"] = plain(value)
    return out


_TYPED_ORDER = {f"{section}.{name}": i for i, (section, name) in enumerate(TYPED_FIELDS)}


def _display_order(key: str) -> tuple[int, int, str]:
    if key in _TYPED_ORDER:
        return (0, _TYPED_ORDER[key], "")
    return (1 if key.startswith("features.flags.") else 2, 0, key)


def changes(before: dict[str, Any], after: dict[str, Any]) -> list[dict[str, Any]]:
    """Fields whose value differs, with old and new (None: not set), in display order."""
    a, b = flatten(before), flatten(after)
    keys = sorted(set(a) | set(b), key=_display_order)
    return [{"field": k, "old": a.get(k), "new": b.get(k)} for k in keys if a.get(k) != b.get(k)]


def _change_text(c: dict[str, Any], st: Style) -> str:
    old = "unset" if c["old"] is None else show(c["old"], st)
    new = "unset" if c["new"] is None else show(c["new"], st)
    return f"{c['field']} {old} -> {new}"


def layer_json(layer: ConfigLayer) -> dict[str, Any]:
    return {
        "layer": layer.layer,
        "version": layer.version,
        "values": plain(layer.values),
        "updated_at": iso(layer.updated_at),
        "updated_by": layer.updated_by,
        "restored_version": layer.restored_version,
        "comment": layer.comment,
        "revision": layer.revision,
    }


def _version_word(layer: ConfigLayer) -> str:
    if layer.version:
        return f"v{layer.version}"
    return "v0 (built-in)" if layer.layer.startswith("tier/") else "v0 (never written)"


def _layer_text(layer: ConfigLayer, st: Style) -> Iterable[str]:
    pairs = [("layer", st(layer.layer, "bold")), ("version", _version_word(layer))]
    if layer.version:
        who = f" by {layer.updated_by}" if layer.updated_by else ""
        pairs.append(("written", f"{ago(layer.updated_at)}{who}"))
    if layer.restored_version:
        pairs.append(("restores", f"v{layer.restored_version}"))
    if layer.comment:
        pairs.append(("comment", layer.comment))
    yield from key_values(pairs, st)
    yield ""
    flat = flatten(layer.values)
    if not flat:
        yield st("sets nothing: every value comes from the layers below", "dim")
        return
    yield from table(["FIELD", "VALUE"], [[k, show(v, st)] for k, v in flat.items()], st)


# -- config get -------------------------------------------------------------------


def merged_values(cfg: TenantConfig) -> dict[str, Any]:
    """The merged values in the nested shape layers use."""
    features: dict[str, Any] = {
        name: cfg.features.get(name, False)
        for section, name in TYPED_FIELDS
        if section == "features"
    }
    features["flags"] = dict(cfg.raw.values.features.flags)
    return {
        "rate_limits": dict(cfg.rate_limits),
        "resource_limits": dict(cfg.resource_limits),
        "features": features,
        "settings": plain(cfg.settings),
    }


def config_json(cfg: TenantConfig) -> dict[str, Any]:
    return {
        "tenant_id": cfg.tenant_id,
        "tier": cfg.tier,
        "tier_source": cfg.tier_source,
        **merged_values(cfg),
        "versions": {
            "tier_defaults": cfg.tier_defaults_version,
            "global": cfg.global_version,
            "tenant": cfg.tenant_version,
        },
        "revision": cfg.revision,
    }


def _layers_used(cfg: TenantConfig) -> list[tuple[str, int]]:
    used = [(f"tier/{cfg.tier}", cfg.tier_defaults_version), ("global", cfg.global_version)]
    if cfg.tenant_id:
        used.append((f"tenant/{cfg.tenant_id}", cfg.tenant_version))
    return used


def _versions_text(cfg: TenantConfig, st: Style) -> str:
    parts = []
    for name, version in _layers_used(cfg):
        word = f"v{version}" if version else ("built-in" if name.startswith("tier/") else "none")
        parts.append(f"{name} {st(word, 'bold') if version else st(word, 'dim')}")
    return "  ".join(parts)


def _tenant_arg() -> Any:
    return arg(
        "tenant_id",
        nargs="?",
        default=None,
        metavar="TENANT",
        complete="tenants",
        help="the tenant (default: --tenant / HUB_TENANT; none: tier defaults + global)",
    )


@command("config get", "a tenant's merged configuration, and which layer set each value",
         _tenant_arg())  # fmt: skip
async def config_get(ctx: Context, args: argparse.Namespace) -> None:
    cfg = await ctx.hub.config(args.tenant_id)
    # Which layer each value comes from: the highest one that sets it.
    names = [name for name, _ in _layers_used(cfg)]
    layers = await asyncio.gather(*(ctx.hub.config_layer(name) for name in names))
    sources: dict[str, str] = {}
    for layer in layers:  # lowest first: higher layers overwrite
        for key in flatten(layer.values):
            sources[key] = layer.layer
    flat = flatten(merged_values(cfg))
    data = {**config_json(cfg), "sources": {k: sources.get(k, "") for k in flat}}

    def text(st: Style) -> Iterable[str]:
        who = st(cfg.tenant_id, "bold") if cfg.tenant_id else st("(no tenant)", "dim")
        words = _TIER_SOURCES if cfg.tenant_id else _TIER_SOURCES_NO_TENANT
        tier = f"{st.state(cfg.tier)}, {words.get(cfg.tier_source, cfg.tier_source)}"
        yield from key_values(
            [
                ("tenant", who),
                ("tier", tier),
                ("layers", _versions_text(cfg, st)),
                ("revision", str(cfg.revision)),
            ],
            st,
        )
        yield ""
        body = [[k, show(v, st), st(sources.get(k, "-"), "dim")] for k, v in flat.items()]
        yield from table(["FIELD", "VALUE", "FROM"], body, st)

    ctx.emit(data, text)


# -- config layer / history -------------------------------------------------------------


@command("config layer", "one layer as stored: global, tier NAME or tenant ID", *_layer_args())
async def config_layer(ctx: Context, args: argparse.Namespace) -> None:
    layer = await ctx.hub.config_layer(layer_of(args.kind, args.name))
    ctx.emit(layer_json(layer), lambda st: _layer_text(layer, st))


@command(
    "config history",
    "a layer's versions, newest first, with what each changed",
    *_layer_args(),
    arg("--limit", type=int, default=20, help="versions to show (default 20; 0: all)"),
)
async def config_history(ctx: Context, args: argparse.Namespace) -> None:
    if args.limit < 0:
        raise UsageError("--limit must be 0 (all) or more")
    name = layer_of(args.kind, args.name)
    versions = await ctx.hub.config_versions(name)
    shown = versions[: args.limit] if args.limit else versions
    # What each version changed, against the one before it (older = later in the list).
    diffs = [
        changes(versions[i + 1].values if i + 1 < len(versions) else {}, v.values)
        for i, v in enumerate(shown)
    ]
    data = {
        "layer": name,
        "versions": [{**layer_json(v), "changes": d} for v, d in zip(shown, diffs, strict=True)],
        "more": len(shown) < len(versions),
    }

    def text(st: Style) -> Iterable[str]:
        if not versions:
            default = "built-in defaults" if name.startswith("tier/") else "nothing"
            yield st(f"{name} has never been written (it holds {default})", "dim")
            return
        body = []
        for v, d in zip(shown, diffs, strict=True):
            note = v.comment or (f"rollback to v{v.restored_version}" if v.restored_version else "")
            summary = ", ".join(_change_text(c, st) for c in d) or st("no change", "dim")
            body.append(
                [st(f"v{v.version}", "bold"), ago(v.updated_at), v.updated_by or "-",
                 note or "-", summary]
            )  # fmt: skip
        yield from table(["VERSION", "WRITTEN", "BY", "NOTE", "CHANGES"], body, st)

    ctx.emit(data, text)
    if len(shown) < len(versions):
        ctx.output.note(f"{len(versions) - len(shown)} older versions; --limit 0 shows all")


# -- config set / rollback --------------------------------------------------------------


def _bool(text: str, what: str) -> bool:
    word = text.strip().lower()
    if word in _TRUE:
        return True
    if word in _FALSE:
        return False
    raise UsageError(f"{what}: {text!r} is not true or false")


def _pairs(items: list[str], flag: str) -> list[tuple[str, str]]:
    out = []
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise UsageError(f"{flag} takes NAME=VALUE, not {item!r}")
        out.append((key.strip(), value))
    return out


def apply_edits(values: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    """The layer's values with the command line's edits applied (a new dict)."""
    out: dict[str, Any] = {} if args.replace else copy.deepcopy(values)
    edited = bool(args.replace)
    for name, section in _INT_FIELDS.items():
        value = getattr(args, name)
        if value is not None:
            out.setdefault(section, {})[name] = value
            edited = True
    for name, value in _pairs(args.feature, "--feature"):
        on = _bool(value, f"--feature {name}")
        features = out.setdefault("features", {})
        if name in _TYPED_FEATURES:
            features[name] = on
        else:
            features.setdefault("flags", {})[name] = on
        edited = True
    for key, value in _pairs(args.setting, "--setting"):
        try:
            parsed = json.loads(value)
        except ValueError:
            raise UsageError(
                f"--setting {key}: {value!r} is not JSON (quote strings: {key}='\"text\"')"
            ) from None
        out.setdefault("settings", {})[key] = parsed
        edited = True
    for name in args.unset:
        if not _unset(out, name):
            raise UsageError(f"--unset {name}: the layer does not set it")
        edited = True
    if not edited:
        raise UsageError(
            "nothing to set: give --api-calls-per-hour, --websocket-connections, "
            "--max-concurrent-requests, --max-data-storage-mb, --feature, --setting or --unset"
        )
    # Drop sections left empty, so the layer says exactly what it sets.
    for section in ("rate_limits", "resource_limits", "features", "settings"):
        sub = out.get(section)
        if isinstance(sub, dict) and "flags" in sub and not sub["flags"]:
            del sub["flags"]
        if section in out and not out[section]:
            del out[section]
    return out


_UNSET_PLACES = (
    ("features.flags.", "flags"),
    ("rate_limits.", "rate_limits"),
    ("resource_limits.", "resource_limits"),
    ("features.", "features"),
    ("settings.", "settings"),
)


def _unset(values: dict[str, Any], name: str) -> bool:
    """Removes a typed field, a feature flag or a setting the layer sets; a
    ``section.`` prefix says where to look, else the first place that has it."""
    for prefix, place in _UNSET_PLACES:
        if name.startswith(prefix):
            return _remove(values, place, name.removeprefix(prefix))
    return any(_remove(values, place, name) for _, place in _UNSET_PLACES)


def _remove(values: dict[str, Any], place: str, name: str) -> bool:
    if place == "flags":
        where = (values.get("features") or {}).get("flags") or {}
    elif place == "settings":
        where = values.get("settings") or {}
    else:
        where = values.get(place) or {}
        name = name.replace("-", "_")
        if name == "flags":
            return False
    if name in where:
        del where[name]
        return True
    return False


def _write_text(
    before: ConfigLayer, after: ConfigLayer, diff: list[dict[str, Any]], note: str = ""
) -> Any:
    def text(st: Style) -> Iterable[str]:
        yield (
            f"{st(after.layer, 'bold')}: v{before.version} -> {st(f'v{after.version}', 'bold')}"
            + (f" {note}" if note else "")
        )
        if not diff:
            yield st("no value changed", "dim")
            return
        body = [
            [c["field"], "unset" if c["old"] is None else show(c["old"], st),
             "unset" if c["new"] is None else show(c["new"], st)]
            for c in diff
        ]  # fmt: skip
        yield from table(["FIELD", "BEFORE", "AFTER"], body, st)

    return text


EXPECTED = arg(
    "--expected-version",
    type=int,
    default=None,
    metavar="V",
    help="write only if the layer is at version V (0: never written); else exit 7",
)
COMMENT = arg("--comment", default="", help="a note kept with the new version")


@command(
    "config set",
    "change fields of a layer (the rest stay as they are), making a new version",
    *_layer_args(),
    arg("--api-calls-per-hour", type=int, metavar="N", help="rate_limits.api_calls_per_hour"),
    arg("--websocket-connections", type=int, metavar="N",
        help="rate_limits.websocket_connections"),
    arg("--max-concurrent-requests", type=int, metavar="N",
        help="resource_limits.max_concurrent_requests"),
    arg("--max-data-storage-mb", type=int, metavar="N",
        help="resource_limits.max_data_storage_mb"),
    arg("--feature", action="append", default=[], metavar="NAME=true|false",
        help="a feature (basic_analytics, advanced_ai, custom_models) or any flag; repeatable"),
    arg("--setting", action="append", default=[], metavar="KEY=JSON",
        help="a top-level setting, as JSON (5, true, '\"text\"', '{\"a\":1}'); repeatable"),
    arg("--unset", action="append", default=[], metavar="NAME",
        help="stop setting a field, flag or setting here (the layer below applies); repeatable"),
    arg("--replace", action="store_true",
        help="start from an empty layer instead of its current values"),
    EXPECTED,
    COMMENT,
)  # fmt: skip
async def config_set(ctx: Context, args: argparse.Namespace) -> None:
    name = layer_of(args.kind, args.name)
    for attempt in range(_SET_RETRIES):
        before = await ctx.hub.config_layer(name)
        values = apply_edits(before.values, args)
        expected = before.version if args.expected_version is None else args.expected_version
        try:
            after = await ctx.hub.set_config_layer(
                name, values, expected_version=expected, comment=args.comment
            )
            break
        except VersionConflict:
            # Our edit was made against an older version: redo it on the newest,
            # unless the caller pinned the version.
            if args.expected_version is not None or attempt == _SET_RETRIES - 1:
                raise
    diff = changes(before.values, after.values)
    ctx.emit(
        {**layer_json(after), "previous_version": before.version, "changes": diff},
        _write_text(before, after, diff),
    )


@command(
    "config rollback",
    "write an earlier version's values as a new version of the layer",
    *_layer_args(),
    arg("version", type=int, metavar="VERSION", help="the version to restore"),
    EXPECTED,
    COMMENT,
)
async def config_rollback(ctx: Context, args: argparse.Namespace) -> None:
    name = layer_of(args.kind, args.name)
    before = await ctx.hub.config_layer(name)
    after = await ctx.hub.rollback_config(
        name, args.version, expected_version=args.expected_version, comment=args.comment
    )
    diff = changes(before.values, after.values)
    ctx.emit(
        {**layer_json(after), "previous_version": before.version, "changes": diff},
        _write_text(before, after, diff, f"(the values of v{args.version})"),
    )


# -- config watch --------------------------------------------------------------------


@command(
    "config watch",
    "stream a tenant's merged configuration as it changes (Ctrl-C to stop)",
    _tenant_arg(),
    streaming=True,
)
async def config_watch(ctx: Context, args: argparse.Namespace) -> None:
    tenant = ctx.hub.context.tenant_id if args.tenant_id is None else args.tenant_id
    what = f"tenant {tenant}" if tenant else "the configuration without tenant overrides"
    ctx.output.note(f"watching {what} on {ctx.target}; Ctrl-C to stop")
    previous: TenantConfig | None = None
    async for cfg in ctx.hub.watch_config(tenant):
        diff = changes(merged_values(previous), merged_values(cfg)) if previous else []
        tier_was = previous.tier if previous is not None else cfg.tier

        def line(st: Style, cfg: TenantConfig = cfg, diff: list[Any] = diff,
                 initial: bool = previous is None, tier_was: str = tier_was) -> str:  # fmt: skip
            head = f"{st(clock(), 'dim')}  {st(cfg.tenant_id or '(no tenant)', 'bold')}"
            head += f"  {st.state(cfg.tier)}  {_versions_text(cfg, st)}"
            tail = st(f"rev {cfg.revision}", "dim")
            if initial:
                return f"{head}  {tail}  {st('(current)', 'dim')}"
            what = [_change_text(c, st) for c in diff]
            if tier_was != cfg.tier:
                what.insert(0, f"tier {st.state(tier_was)} -> {st.state(cfg.tier)}")
            return f"{head}  {tail}  " + (", ".join(what) or st("no value changed", "dim"))

        event = {**config_json(cfg), "initial": previous is None, "changes": diff}
        if tier_was != cfg.tier:
            event["previous_tier"] = tier_was
        ctx.output.event(event, line)
        previous = cfg
