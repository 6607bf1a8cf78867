"""Layered configuration in etcd: versioned layers, their history, merged views,
and the subscriptions behind WatchConfig.

Each layer is one key holding its current version and values; every write is a
transaction that compares that key's mod_revision, puts the new version and
appends it to the layer's history (one key per version, the last
``history_keep`` kept), so the history is exactly the sequence of versions.
Tier defaults are seeded on first start with "create if absent", so later edits
are never overwritten.

Merged views are computed from memory: a mirror of the layers and the tenants
directory's mirror of tenant records (for tiers).

WatchConfig subscribers with the same (tenant, header tier) share a group. A
change marks the groups it can affect (a tenant's layer or record: that
tenant's groups; the global layer: all; a tier's defaults: the groups currently
on that tier) by bumping their generation. A woken stream asks for the group's
state, which is computed once per generation from the mirrors' latest state,
never from the change that woke it: however many changes come in a burst, the
last state a stream sends is the current one.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from typing import Any

from aitrading.hub.v1.errors_pb2 import ERROR_REASON_CONFIG_VERSION_NOT_FOUND

from hub_server.config.merge import (
    GLOBAL_LAYER,
    TIER_DEFAULTS,
    ConfigValues,
    MergeCache,
    MergedConfig,
    StoredLayer,
    check_tier_layer,
    empty_layer,
    merge_config,
    parse_layer,
    resolve_tier,
    tenant_layer,
    tier_layer,
)
from hub_server.kernel.errors import NotFound, VersionConflict
from hub_server.kernel.tiers import parse_tier
from hub_server.store import keys
from hub_server.store.cas import CompareAndSet, contended
from hub_server.store.etcd import EtcdStore, KeyValue, Txn
from hub_server.store.mirror import Change, PrefixMirror
from hub_server.store.waiters import Waiters
from hub_server.tenancy.service import Tenants

log = logging.getLogger(__name__)

HISTORY_KEEP = 1000
SEED_COMMENT = "tier defaults from the product write-up"


def _decode_layer(kv: KeyValue) -> StoredLayer:
    return StoredLayer.from_json(keys.parse_config_layer_key(kv.key), kv.value, kv.mod_revision)


@dataclass
class ConfigState:
    """What a group of subscribers should have: the merged config at one generation."""

    generation: int
    config: MergedConfig
    # A revision the state reflects everything up to (safe to resume from + 1).
    revision: int
    # Whatever the API builds once per state (the response message), not once per stream.
    cache: Any = None


class _Group:
    """The subscribers of one (tenant, header tier)."""

    __slots__ = ("_changed", "generation", "header_tier", "state", "streams", "tenant_id")

    def __init__(self, tenant_id: str, header_tier: str) -> None:
        self.tenant_id = tenant_id
        self.header_tier = header_tier
        self.streams = 0
        self.generation = 0
        self.state: ConfigState | None = None
        self._changed = Waiters()

    def bump(self) -> None:
        self.generation += 1
        self._changed.wake_all()

    async def wait(self, generation: int, timeout: float) -> None:
        if self.generation != generation:
            return
        await self._changed.wait(timeout)


class ConfigSubscription:
    """One WatchConfig stream's handle. ``state()`` is the current merged config;
    ``wait(generation)`` returns once it may have changed since that generation."""

    def __init__(self, configs: Configs, group: _Group) -> None:
        self._configs = configs
        self._group = group
        self._closed = False

    def state(self) -> ConfigState:
        group = self._group
        state = group.state
        if state is None or state.generation != group.generation:
            state = ConfigState(
                group.generation,
                self._configs.merged(group.tenant_id, group.header_tier),
                self._configs.revision,
            )
            group.state = state
        return state

    async def wait(self, generation: int, timeout: float) -> None:
        await self._group.wait(generation, timeout)

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._configs._unsubscribe(self._group)


class Configs:
    """Config layers: reads from memory, versioned compare-and-set writes."""

    def __init__(
        self,
        store: EtcdStore,
        tenants: Tenants,
        *,
        write_wait: float = 5.0,
        history_keep: int = HISTORY_KEEP,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._store = store
        self._tenants = tenants
        self._write_wait = write_wait
        self._history_keep = history_keep
        self._clock = clock
        self._groups: dict[str, dict[str, _Group]] = {}
        self._merge_cache: MergeCache = {}
        self.mirror: PrefixMirror[StoredLayer] = PrefixMirror(
            store, keys.CONFIG, _decode_layer, on_change=self._layer_changed
        )
        tenants.add_listener(self._tenant_changed)

    @property
    def revision(self) -> int:
        """A revision both views are complete up to."""
        return min(self.mirror.revision, self._tenants.revision)

    @property
    def layers_revision(self) -> int:
        """The layers' view alone (what reading one layer reflects)."""
        return self.mirror.revision

    def ensure_live(self) -> None:
        self.mirror.ensure_live()
        self._tenants.ensure_live()

    async def seed_tier_defaults(self) -> list[str]:
        """Writes the built-in defaults of every tier whose layer does not exist yet;
        returns the tiers seeded. Safe with any number of replicas starting at once."""
        seeded = []
        for tier, values in TIER_DEFAULTS.items():
            layer = tier_layer(tier)
            key = keys.config_layer_key(layer)
            doc = StoredLayer(
                layer, 1, values, self._clock(), "hub", comment=SEED_COMMENT
            ).to_json()
            txn = Txn().absent(key)
            txn.success += [Txn.put(key, doc), Txn.put(keys.config_history_key(layer, 1), doc)]
            if (await self._store.txn(txn)).succeeded:
                seeded.append(tier)
        if seeded:
            log.info("seeded config tier defaults: %s", ", ".join(seeded))
        return seeded

    # -- reads -------------------------------------------------------------

    def layer(self, layer: str) -> StoredLayer:
        """The current version of a layer (version 0 if never written)."""
        return self.mirror.items.get(keys.config_layer_key(layer)) or empty_layer(layer)

    def merged(self, tenant_id: str, header_tier: str) -> MergedConfig:
        """A tenant's merged config; with no tenant, tier defaults + global.

        The tier is the tenant record's, else ``header_tier`` (x-subscription-tier),
        else free."""
        record = self._tenants.get(tenant_id) if tenant_id else None
        tier, source = resolve_tier(record.tier if record else None, header_tier)
        return merge_config(
            tenant_id,
            tier,
            source,
            self.layer(tier_layer(tier)),
            self.layer(GLOBAL_LAYER),
            self.layer(tenant_layer(tenant_id)) if tenant_id else None,
            record_revision=record.revision if record else 0,
            cache=self._merge_cache,
        )

    async def history(self, layer: str) -> tuple[list[StoredLayer], int]:
        """Every kept version of a layer, newest first, and the revision of the read."""
        kvs, revision = await self._store.get_prefix(keys.config_history_prefix(layer))
        versions = [StoredLayer.from_json(layer, kv.value, kv.mod_revision) for kv in kvs]
        versions.sort(key=lambda v: v.version, reverse=True)
        return versions, revision

    # -- writes ------------------------------------------------------------

    async def set_layer(
        self,
        layer: str,
        values: ConfigValues,
        *,
        expected_version: int | None = None,
        user: str = "",
        comment: str = "",
        restored_version: int = 0,
    ) -> StoredLayer:
        """Writes a new version of a layer.

        Raises:
            InvalidArgument: a tier defaults layer that leaves a typed field unset.
            VersionConflict: ``expected_version`` is given and not the current one.
        """
        kind, _ = parse_layer(layer)
        if kind == "tier":
            check_tier_layer(values)
        self.mirror.ensure_live()
        key = keys.config_layer_key(layer)
        # First try from memory; the txn checks it.
        cas = CompareAndSet(self._store, key, _decode_layer, known=self.mirror.items.get(key))
        for current in cas.attempts():
            version = current.version if current is not None else 0
            if expected_version is not None and expected_version != version:
                if not cas.fresh:
                    await cas.read()
                    continue
                raise VersionConflict(
                    f"config layer {layer!r} is at version {version}, not {expected_version}",
                    layer=layer,
                    expected_version=str(expected_version),
                    current_version=str(version),
                )
            new = StoredLayer(
                layer,
                version + 1,
                values,
                self._clock(),
                user,
                restored_version=restored_version,
                comment=comment,
            )
            doc = new.to_json()
            txn = Txn().mod_revision_is(key, current.revision if current is not None else 0)
            txn.success += [
                Txn.put(key, doc),
                Txn.put(keys.config_history_key(layer, new.version), doc),
            ]
            dropped = new.version - self._history_keep
            if dropped >= 1:
                txn.success.append(Txn.delete(keys.config_history_key(layer, dropped)))
            result = await cas.write(txn)
            if result is not None:
                await self.mirror.log.wait_for_revision(result.revision, self._write_wait)
                return replace(new, revision=result.revision)
        raise contended(f"config layer {layer!r}")

    async def rollback(
        self,
        layer: str,
        version: int,
        *,
        expected_version: int | None = None,
        user: str = "",
        comment: str = "",
    ) -> StoredLayer:
        """Writes the values of an earlier version as a new version."""
        kv, _ = await self._store.get(keys.config_history_key(layer, version))
        if kv is None:
            raise NotFound(
                f"config layer {layer!r} has no version {version} (kept: the last "
                f"{self._history_keep})",
                reason=ERROR_REASON_CONFIG_VERSION_NOT_FOUND,
                layer=layer,
                version=str(version),
            )
        old = StoredLayer.from_json(layer, kv.value, kv.mod_revision)
        return await self.set_layer(
            layer,
            old.values,
            expected_version=expected_version,
            user=user,
            comment=comment or f"rollback to version {version}",
            restored_version=version,
        )

    # -- subscriptions -----------------------------------------------------

    def subscribe(self, tenant_id: str, header_tier: str) -> ConfigSubscription:
        """A handle on the merged config of (tenant, header tier); close it when done."""
        self.ensure_live()
        tier_key = parse_tier(header_tier) or ""  # unknown tiers behave alike
        groups = self._groups.setdefault(tenant_id, {})
        group = groups.get(tier_key)
        if group is None:
            group = groups[tier_key] = _Group(tenant_id, tier_key)
        group.streams += 1
        return ConfigSubscription(self, group)

    def _unsubscribe(self, group: _Group) -> None:
        group.streams -= 1
        if group.streams <= 0:
            groups = self._groups.get(group.tenant_id, {})
            if groups.get(group.header_tier) is group:
                del groups[group.header_tier]
            if not groups:
                self._groups.pop(group.tenant_id, None)

    def _all_groups(self) -> Iterator[_Group]:
        for groups in self._groups.values():
            yield from groups.values()

    def _layer_changed(self, change: Change[StoredLayer]) -> None:
        try:
            kind, name = parse_layer(keys.parse_config_layer_key(change.key))
        except ValueError:
            return
        if kind == GLOBAL_LAYER:
            affected: list[_Group] = list(self._all_groups())
        elif kind == "tenant":
            affected = list(self._groups.get(name, {}).values())
        else:
            affected = [g for g in self._all_groups() if self._tier_of(g) == name]
        for group in affected:
            group.bump()

    def _tenant_changed(self, tenant_id: str) -> None:
        for group in list(self._groups.get(tenant_id, {}).values()):
            group.bump()

    def _tier_of(self, group: _Group) -> str:
        record = self._tenants.get(group.tenant_id) if group.tenant_id else None
        return resolve_tier(record.tier if record else None, group.header_tier)[0]
