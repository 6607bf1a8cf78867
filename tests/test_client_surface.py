"""The client's surface as a whole: the blocking HubClient mirrors the async one
(and its generated module is current), every method that calls the hub takes a
per-call ``timeout=`` whose expiry is DeadlineExceeded, and every method returns
a model, never a raw message."""

from __future__ import annotations

import inspect
import subprocess
import sys
from pathlib import Path

import pytest

from hub_client import DeadlineExceeded, HubClient, InvalidArgument, Unavailable, sync
from hub_server.embedded_etcd import free_port

ROOT = Path(__file__).resolve().parent.parent


def public(cls: type) -> dict[str, object]:
    return {n: m for n, m in vars(cls).items() if not n.startswith("_")}


def is_watch(method: object) -> bool:
    if not inspect.isfunction(method):
        return False
    return str(inspect.signature(method).return_annotation).startswith("AsyncIterator")


def hub_calls(cls: type) -> dict[str, object]:
    """The methods that call the hub: coroutines and watches."""
    return {n: m for n, m in public(cls).items() if inspect.iscoroutinefunction(m) or is_watch(m)}


def test_the_sync_client_has_every_public_name_of_the_async_one() -> None:
    mirrored = set(public(HubClient)) | {"__init__"}
    for name in sorted(mirrored):
        assert hasattr(sync.HubClient, name), name
        a, s = getattr(HubClient, name), getattr(sync.HubClient, name)
        if isinstance(a, property):
            assert isinstance(inspect.getattr_static(sync.HubClient, name), property), name
            continue
        a_params = inspect.signature(a).parameters
        s_params = inspect.signature(s).parameters
        expected = [p for n, p in a_params.items() if not (name == "__init__" and n == "channel")]
        assert [(p.name, p.kind, p.default) for p in expected] == [
            (p.name, p.kind, p.default) for p in s_params.values()
        ], name


def test_the_generated_sync_client_is_current() -> None:
    done = subprocess.run(
        [sys.executable, "scripts/gen_sync_client.py", "--check"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr


def test_every_method_that_calls_the_hub_takes_a_timeout() -> None:
    calls = hub_calls(HubClient)
    del calls["close"]  # the lifecycle: deregisters everything, then closes the channel
    assert len(calls) > 40
    missing = [n for n, m in calls.items() if "timeout" not in inspect.signature(m).parameters]  # type: ignore[arg-type]
    assert missing == []


def test_every_method_returns_a_model_not_a_message() -> None:
    for name, method in hub_calls(HubClient).items():
        returned = str(inspect.signature(method).return_annotation)  # type: ignore[arg-type]
        if name == "call":  # the escape hatch: the stub's own answer
            continue
        assert "_pb2" not in returned, f"{name} returns {returned}"


async def test_a_per_call_timeout_overrides_the_clients() -> None:
    # Nothing listens here: each call waits for the channel until its deadline.
    async with HubClient(f"127.0.0.1:{free_port()}", timeout=60) as c:
        with pytest.raises(DeadlineExceeded) as err:
            await c.discover("x", timeout=0.2)
        assert isinstance(err.value, Unavailable)  # what callers already retry on
        with pytest.raises(DeadlineExceeded):
            await c.list_services(timeout=0.2)
        with pytest.raises(DeadlineExceeded):
            await c.allocate("concurrent_requests", tenant="t", timeout=0.3)  # retried within
        with pytest.raises(DeadlineExceeded):
            await anext(c.watch("x", timeout=0.2))  # a watch: the wait for its next item


@pytest.mark.parametrize(
    ("field", "call"),
    [
        ("tier", lambda c: c.create_tenant("t", tier="gold")),
        ("tier", lambda c: c.set_tier("t", "gold")),
        ("tier", lambda c: c.list_tenants(tier="gold")),
        ("layer", lambda c: c.config_layer("tier/gold")),
        ("layer", lambda c: c.set_config_layer("tier/gold", {})),
        ("layer", lambda c: c.config_versions("nonsense")),
        ("values", lambda c: c.set_config_layer("global", {"rate_limits": {"nope": 1}})),
        ("strategy", lambda c: c.deploy("s", "2.0", strategy="big_bang")),
    ],
)
async def test_admin_calls_refuse_unknown_values_before_any_rpc(field: str, call: object) -> None:
    # An RPC would time out here; InvalidArgument (not ValueError) comes first.
    async with HubClient(f"127.0.0.1:{free_port()}", timeout=0.5) as c:
        with pytest.raises(InvalidArgument) as err:
            await call(c)  # type: ignore[operator]
    assert [v.field for v in err.value.field_violations] == [field]
