"""Reading what the hub stored in etcd, for checks."""

from __future__ import annotations

import json

from hub_server.store import keys
from hub_server.store.etcd import EtcdStore


async def plain_keys(
    store: EtcdStore, *, leaving_out: tuple[bytes, ...] = ()
) -> dict[bytes, bytes]:
    """The hub's keys that are not bound to a lease, but those under ``leaving_out``
    and the webhook cursor (the leader moves it as changes happen, subscribed or not)."""
    kvs, _ = await store.get_prefix(keys.ROOT)
    leaving_out += (keys.WEBHOOK_CURSOR,)
    return {
        kv.key: kv.value
        for kv in kvs
        if not kv.lease and not any(kv.key.startswith(p) for p in leaving_out)
    }


async def usage_in_etcd(store: EtcdStore, tenant_id: str, resource: str) -> int:
    kv, _ = await store.get(keys.usage_key(tenant_id, resource))
    return int(json.loads(kv.value)["used"]) if kv is not None else 0
