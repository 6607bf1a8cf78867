"""Tenant limit alerts: TENANT_NEAR_LIMIT when a tenant uses at least a share of a
limit (default 80%), TENANT_OVER_LIMIT when it uses more than the limit (which
happens when a limit is lowered, e.g. a tier change, under existing usage).

Usage is mirrored from etcd, limits come from each tenant's merged config, so
the conditions cost no etcd round trip; the alert engine asks for them with its
other rules.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable

from hub_server.config.service import Configs
from hub_server.observability.alerts import CRITICAL, WARNING, Condition
from hub_server.quotas import arithmetic as quotas
from hub_server.store import keys
from hub_server.store.etcd import EtcdStore, KeyValue
from hub_server.store.mirror import PrefixMirror

DEFAULT_SHARE = 0.8


def _decode_used(kv: KeyValue) -> int:
    return max(0, int(json.loads(kv.value).get("used", 0)))


def limit_conditions(
    tenant_id: str, resource: str, used: int, limit: int, share: float
) -> list[Condition]:
    """Pure: the alert (if any) for one resource of one tenant."""
    if limit <= 0 or used < share * limit:
        return []
    percent = 100 * used / limit
    if used > limit:
        rule, severity = "TENANT_OVER_LIMIT", CRITICAL
        summary = f"tenant {tenant_id} is over its {resource} limit: {used} of {limit}"
    else:
        rule, severity = "TENANT_NEAR_LIMIT", WARNING
        summary = f"tenant {tenant_id} uses {percent:.0f}% of its {resource} limit ({used}/{limit})"
    return [Condition(rule, severity, summary, instance_id=resource, tenant_id=tenant_id)]


class TenantLimits:
    def __init__(
        self,
        store: EtcdStore,
        configs: Configs,
        *,
        share: float = DEFAULT_SHARE,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.share = share
        self._configs = configs
        self._clock = clock
        self.usage: PrefixMirror[int] = PrefixMirror(store, keys.USAGE, _decode_used)

    def current(self) -> list[tuple[str, str, int, int]]:
        """(tenant, resource, used, limit) of every usage now (this hour's for rates)."""
        window_start = str(quotas.window(self._clock())[0])
        out = []
        for key, used in self.usage.items.items():
            tenant_id, _, rest = key[len(keys.USAGE) :].decode().partition("/")
            name, _, window = rest.partition("/")
            resource = quotas.BY_NAME.get(name)
            if resource is None or (window and window != window_start):
                continue  # unknown, or a past hour's rate window
            limit = quotas.limit_of(resource, self._configs.merged(tenant_id, "").values)
            out.append((tenant_id, name, used, limit))
        return out

    def conditions(self) -> list[Condition]:
        out: list[Condition] = []
        for tenant_id, name, used, limit in self.current():
            out += limit_conditions(tenant_id, name, used, limit, self.share)
        return out
