"""Layered config without I/O: validation of every section, merge precedence,
settings merge patch, tier resolution and the write-up's tier defaults."""

from __future__ import annotations

import json
from typing import Any

import pytest

from hub_server.config.merge import (
    INT32_MAX,
    INT64_LIMIT_MAX,
    MAX_FLAGS,
    TIER_DEFAULTS,
    TIER_FROM_DEFAULT,
    TIER_FROM_HEADER,
    TIER_FROM_RECORD,
    TYPED_FIELDS,
    ConfigValues,
    StoredLayer,
    check_tier_layer,
    complete,
    empty_layer,
    merge,
    merge_config,
    merge_patch,
    parse_layer,
    parse_values,
    resolve_tier,
)
from hub_server.kernel.errors import InvalidArgument

FULL = {
    "rate_limits": {"api_calls_per_hour": 10, "websocket_connections": 2},
    "features": {
        "basic_analytics": True,
        "advanced_ai": False,
        "custom_models": False,
        "flags": {"beta-ui": True, "old.export": False},
    },
    "resource_limits": {"max_concurrent_requests": 3, "max_data_storage_mb": 4},
    "settings": {"ui": {"theme": "dark"}, "retries": 3},
}


def values(data: dict[str, Any]) -> ConfigValues:
    return ConfigValues.from_dict(data)


# -- validation ------------------------------------------------------------------


def test_full_layer_round_trips() -> None:
    parsed = values(FULL)
    assert parsed.to_dict() == FULL
    assert ConfigValues.from_dict(json.loads(json.dumps(parsed.to_dict()))) == parsed
    assert parsed.missing() == []
    assert parsed.get("rate_limits.api_calls_per_hour") == 10
    assert parsed.limit("resource_limits.max_data_storage_mb") == 4


def test_empty_and_unset_fields() -> None:
    assert values({}) == ConfigValues()
    assert ConfigValues.from_dict(None) == ConfigValues()
    # null means "not set in this layer"; sections may be null too.
    v = values({"rate_limits": {"api_calls_per_hour": None}, "features": None, "settings": None})
    assert v == ConfigValues()
    assert v.missing() == [f.path for f in TYPED_FIELDS]
    # Zero and false are values, not "unset".
    v = values({"rate_limits": {"websocket_connections": 0}, "features": {"advanced_ai": False}})
    assert v.fields == {"rate_limits.websocket_connections": 0, "features.advanced_ai": False}


def test_whole_floats_are_integers() -> None:
    v = values({"rate_limits": {"api_calls_per_hour": 5.0}})
    assert v.fields["rate_limits.api_calls_per_hour"] == 5
    assert isinstance(v.fields["rate_limits.api_calls_per_hour"], int)


TOO_DEEP: dict[str, Any] = {}
_node = TOO_DEEP
for _ in range(17):
    _node["x"] = {}
    _node = _node["x"]

BAD: list[tuple[Any, str, str]] = [
    # (layer dict, field path, words of the description)
    ([], "values", "must be an object"),
    ({"limits": {}}, "values.limits", "not a config section"),
    ({"rate_limits": 5}, "values.rate_limits", "must be an object"),
    ({"rate_limits": {"api_calls_per_hour": -1}}, "values.rate_limits.api_calls_per_hour",
     "negative"),
    ({"rate_limits": {"api_calls_per_hour": INT64_LIMIT_MAX + 1}},
     "values.rate_limits.api_calls_per_hour", "at most"),
    ({"rate_limits": {"api_calls_per_hour": 1.5}}, "values.rate_limits.api_calls_per_hour",
     "integer"),
    ({"rate_limits": {"api_calls_per_hour": "100"}}, "values.rate_limits.api_calls_per_hour",
     "integer"),
    ({"rate_limits": {"websocket_connections": True}}, "values.rate_limits.websocket_connections",
     "integer"),
    ({"rate_limits": {"websocket_connections": INT32_MAX + 1}},
     "values.rate_limits.websocket_connections", "at most"),
    ({"rate_limits": {"websocket_connections": -5}}, "values.rate_limits.websocket_connections",
     "negative"),
    ({"rate_limits": {"calls": 1}}, "values.rate_limits.calls", "not a field"),
    ({"features": {"basic_analytics": 1}}, "values.features.basic_analytics", "boolean"),
    ({"features": {"advanced_ai": "true"}}, "values.features.advanced_ai", "boolean"),
    ({"features": {"custom_models": None, "dark_mode": True}}, "values.features.dark_mode",
     "not a field"),
    ({"features": {"flags": {"beta": "yes"}}}, "values.features.flags['beta']", "boolean"),
    ({"features": {"flags": {"beta": 1}}}, "values.features.flags['beta']", "boolean"),
    ({"features": {"flags": {"bad name!": True}}}, "values.features.flags['bad name!']", "name"),
    ({"features": {"flags": {"": True}}}, "values.features.flags['']", "name"),
    ({"features": {"flags": {"advanced_ai": True}}}, "values.features.flags['advanced_ai']",
     "typed feature"),
    ({"features": {"flags": ["beta"]}}, "values.features.flags", "must be an object"),
    ({"features": {"flags": {f"f{i}": True for i in range(MAX_FLAGS + 1)}}},
     "values.features.flags", f"at most {MAX_FLAGS}"),
    ({"resource_limits": {"max_concurrent_requests": -1}},
     "values.resource_limits.max_concurrent_requests", "negative"),
    ({"resource_limits": {"max_data_storage_mb": "lots"}},
     "values.resource_limits.max_data_storage_mb", "integer"),
    ({"resource_limits": {"max_data_storage_mb": INT64_LIMIT_MAX + 1}},
     "values.resource_limits.max_data_storage_mb", "at most"),
    ({"settings": ["a"]}, "values.settings", "must be an object"),
    ({"settings": {"x": float("nan")}}, "values.settings", "not finite"),
    ({"settings": {"x": float("inf")}}, "values.settings", "not finite"),
    ({"settings": TOO_DEEP}, "values.settings", "nested"),
    ({"settings": {"blob": "x" * (64 * 1024)}}, "values.settings", "bytes"),
    ({"settings": {"x": {1, 2}}}, "values.settings", "type"),
    ({"settings": {"x": {3: "a"}}}, "values.settings", "key"),
]  # fmt: skip


@pytest.mark.parametrize(("data", "path", "words"), BAD, ids=[p for _, p, _ in BAD])
def test_bad_values_name_the_field(data: Any, path: str, words: str) -> None:
    with pytest.raises(InvalidArgument) as err:
        ConfigValues.from_dict(data, path="values")
    assert [v.field for v in err.value.violations] == [path]
    assert words in err.value.violations[0].description


def test_every_bad_field_is_reported_at_once() -> None:
    data = {
        "rate_limits": {"api_calls_per_hour": -1, "websocket_connections": "x"},
        "features": {"advanced_ai": 0, "flags": {"ok": True, "bad": "no"}},
        "resource_limits": {"max_concurrent_requests": 5},
        "oops": 1,
    }
    _, violations = parse_values(data, path="values")
    assert sorted(v.field for v in violations) == [
        "values.features.advanced_ai",
        "values.features.flags['bad']",
        "values.oops",
        "values.rate_limits.api_calls_per_hour",
        "values.rate_limits.websocket_connections",
    ]


def test_tier_layer_must_set_every_typed_field() -> None:
    for tier_values in TIER_DEFAULTS.values():
        check_tier_layer(tier_values)
    partial = values({"rate_limits": {"api_calls_per_hour": 5, "websocket_connections": 1}})
    with pytest.raises(InvalidArgument) as err:
        check_tier_layer(partial)
    assert [v.field for v in err.value.violations] == [
        f"values.{f.path}" for f in TYPED_FIELDS if f.section != "rate_limits"
    ]


# -- merging -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("tier", "global_", "tenant", "expected"),
    [
        # A higher layer wins; an unset field falls through to the layer below.
        (5, None, None, 5),
        (5, 7, None, 7),
        (5, None, 9, 9),
        (5, 7, 9, 9),
        (5, 0, None, 0),  # zero is a value, not "unset"
        (5, 7, 0, 0),
        (None, None, None, None),
    ],
)
def test_typed_field_precedence(
    tier: int | None, global_: int | None, tenant: int | None, expected: int | None
) -> None:
    def layer(n: int | None) -> ConfigValues:
        return values({"rate_limits": {"websocket_connections": n}})

    merged = merge([layer(tier), layer(global_), layer(tenant)])
    assert merged.get("rate_limits.websocket_connections") == expected


def test_features_and_flags_merge_per_name() -> None:
    tier = values({"features": {"advanced_ai": False, "flags": {"a": True, "b": True}}})
    glob = values({"features": {"flags": {"b": False, "c": True}}})
    tenant = values({"features": {"advanced_ai": True, "flags": {"c": False}}})
    merged = merge([tier, glob, tenant])
    assert merged.get("features.advanced_ai") is True
    assert merged.flags == {"a": True, "b": False, "c": False}


def test_settings_merge_like_a_json_merge_patch() -> None:
    tier = values({"settings": {"ui": {"theme": "light", "lang": "en"}, "tags": [1, 2], "n": 1}})
    glob = values({"settings": {"ui": {"theme": "dark"}, "tags": [3]}})
    tenant = values({"settings": {"ui": {"lang": None}, "n": {"nested": True}, "extra": "x"}})
    merged = merge([tier, glob, tenant])
    assert merged.settings == {
        "ui": {"theme": "dark"},  # merged key by key; null removed "lang"
        "tags": [3],  # arrays replace
        "n": {"nested": True},  # an object replaces a scalar
        "extra": "x",
    }
    # Inputs are never modified.
    assert tier.settings["ui"] == {"theme": "light", "lang": "en"}


# RFC 7386, appendix A.
RFC_7386 = [
    ({"a": "b"}, {"a": "c"}, {"a": "c"}),
    ({"a": "b"}, {"b": "c"}, {"a": "b", "b": "c"}),
    ({"a": "b"}, {"a": None}, {}),
    ({"a": "b", "b": "c"}, {"a": None}, {"b": "c"}),
    ({"a": ["b"]}, {"a": "c"}, {"a": "c"}),
    ({"a": "c"}, {"a": ["b"]}, {"a": ["b"]}),
    ({"a": {"b": "c"}}, {"a": {"b": "d", "c": None}}, {"a": {"b": "d"}}),
    ({"a": [{"b": "c"}]}, {"a": [1]}, {"a": [1]}),
    (["a", "b"], ["c", "d"], ["c", "d"]),
    ({"a": "b"}, ["c"], ["c"]),
    ({"a": "foo"}, None, None),
    ({"a": "foo"}, "bar", "bar"),
    ({"e": None}, {"a": 1}, {"e": None, "a": 1}),
    ([1, 2], {"a": "b", "c": None}, {"a": "b"}),
    ({}, {"a": {"bb": {"ccc": None}}}, {"a": {"bb": {}}}),
]


@pytest.mark.parametrize(("target", "patch", "result"), RFC_7386)
def test_merge_patch_rfc_7386_examples(target: Any, patch: Any, result: Any) -> None:
    assert merge_patch(target, patch) == result


def test_complete_fails_closed() -> None:
    got = complete(values({"rate_limits": {"api_calls_per_hour": 3}}))
    assert got.missing() == []
    assert got.limit("rate_limits.api_calls_per_hour") == 3
    assert got.limit("rate_limits.websocket_connections") == 0
    assert got.get("features.basic_analytics") is False


@pytest.mark.parametrize(
    ("record", "header", "expected"),
    [
        ("enterprise", "free", ("enterprise", TIER_FROM_RECORD)),  # the record wins
        ("pro", "", ("pro", TIER_FROM_RECORD)),
        (None, "pro", ("pro", TIER_FROM_HEADER)),
        (None, "Enterprise ", ("enterprise", TIER_FROM_HEADER)),
        (None, "gold", ("free", TIER_FROM_DEFAULT)),
        (None, "", ("free", TIER_FROM_DEFAULT)),
        ("bogus", "pro", ("pro", TIER_FROM_HEADER)),  # an unreadable record falls through
    ],
)
def test_resolve_tier(record: str | None, header: str, expected: tuple[str, str]) -> None:
    assert resolve_tier(record, header) == expected


def test_merge_config_reports_layer_versions_and_revision() -> None:
    tier = StoredLayer("tier/pro", 3, TIER_DEFAULTS["pro"], revision=10)
    glob = StoredLayer("global", 2, values({"rate_limits": {"api_calls_per_hour": 1}}), revision=40)
    tenant = StoredLayer("tenant/t", 5, values({"features": {"custom_models": True}}), revision=30)
    merged = merge_config("t", "pro", TIER_FROM_RECORD, tier, glob, tenant, record_revision=50)
    assert (merged.tier_defaults_version, merged.global_version, merged.tenant_version) == (3, 2, 5)
    assert merged.revision == 50
    assert merged.values.limit("rate_limits.api_calls_per_hour") == 1
    assert merged.values.get("features.custom_models") is True
    assert merged.values.limit("rate_limits.websocket_connections") == 50
    # The revision is not part of equality: the same config from a later write is equal.
    again = merge_config("t", "pro", TIER_FROM_RECORD, tier, glob, tenant, record_revision=99)
    assert again == merged
    no_tenant = merge_config("", "pro", TIER_FROM_HEADER, tier, glob, None)
    assert no_tenant.tenant_version == 0 and no_tenant.revision == 40


def test_tier_defaults_are_the_write_ups() -> None:
    def typed(tier: str) -> dict[str, Any]:
        return TIER_DEFAULTS[tier].to_dict()

    assert typed("free") == {
        "rate_limits": {"api_calls_per_hour": 1000, "websocket_connections": 5},
        "features": {"basic_analytics": True, "advanced_ai": False, "custom_models": False},
        "resource_limits": {"max_concurrent_requests": 10, "max_data_storage_mb": 100},
    }
    assert typed("pro") == {
        "rate_limits": {"api_calls_per_hour": 10000, "websocket_connections": 50},
        "features": {"basic_analytics": True, "advanced_ai": True, "custom_models": False},
        "resource_limits": {"max_concurrent_requests": 100, "max_data_storage_mb": 1000},
    }
    assert typed("enterprise") == {
        "rate_limits": {"api_calls_per_hour": 100000, "websocket_connections": 500},
        "features": {"basic_analytics": True, "advanced_ai": True, "custom_models": True},
        "resource_limits": {"max_concurrent_requests": 1000, "max_data_storage_mb": 10000},
    }
    # Every limit grows tenfold per tier, as the write-up's rate limits do.
    for f in TYPED_FIELDS:
        if f.kind is int:
            free, pro, ent = (TIER_DEFAULTS[t].limit(f.path) for t in ("free", "pro", "enterprise"))
            assert pro == 10 * free and ent == 10 * pro, f.path


def test_layers_and_stored_form() -> None:
    assert parse_layer("global") == ("global", "")
    assert parse_layer("tier/pro") == ("tier", "pro")
    assert parse_layer("tenant/company_abc") == ("tenant", "company_abc")
    for bad in ("", "tier/", "tenants/x", "globalx"):
        with pytest.raises(ValueError):
            parse_layer(bad)
    assert empty_layer("tier/free").values == TIER_DEFAULTS["free"]
    assert empty_layer("tier/free").version == 0
    assert empty_layer("tenant/x").values == ConfigValues()
    stored = StoredLayer("global", 4, values(FULL), 12.5, "ops", 2, "why", revision=0)
    back = StoredLayer.from_json("global", stored.to_json(), 77)
    assert back == StoredLayer("global", 4, values(FULL), 12.5, "ops", 2, "why", revision=77)


def test_merge_cache_shares_values_of_identical_layer_contents() -> None:
    cache: dict = {}  # type: ignore[type-arg]
    tier = StoredLayer("tier/pro", 1, TIER_DEFAULTS["pro"], revision=3)
    glob = StoredLayer("global", 2, values({"settings": {"a": 1}}), revision=8)

    def build(tenant_id: str, tenant: StoredLayer, g: StoredLayer = glob) -> Any:
        return merge_config(tenant_id, "pro", TIER_FROM_RECORD, tier, g, tenant, cache=cache)

    a = build("a", empty_layer("tenant/a"))
    b = build("b", empty_layer("tenant/b"))
    assert a.values is b.values  # tenants without overrides share one merge
    own = build("c", StoredLayer("tenant/c", 1, values({"settings": {"a": 2}}), revision=9))
    assert own.values.settings == {"a": 2}
    newer = StoredLayer("global", 3, values({"settings": {"a": 5}}), revision=12)
    assert build("a", empty_layer("tenant/a"), newer).values.settings == {"a": 5}
    # The same result as without a cache.
    assert a == merge_config("a", "pro", TIER_FROM_RECORD, tier, glob, empty_layer("tenant/a"))
