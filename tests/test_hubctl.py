"""hubctl against a live hub: every command in text and JSON, exit codes and
one-line messages for errors, watches stopped with Ctrl-C, shell completion.

Commands run in-process through ``hubctl.run`` in a worker thread (the hub runs
in the test's event loop), and as a real process where signals matter."""

from __future__ import annotations

import asyncio
import io
import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from aitrading.hub.v1 import observability_pb2 as obs
from aitrading.hub.v1 import observability_pb2_grpc

from hub_client import HubClient, ServiceNotFound, version_info
from hub_server.app import Hub
from hub_server.embedded_etcd import free_port
from hubctl import run
from hubctl.app import UsageError
from hubctl.config_commands import layer_of
from hubctl.observability_commands import parse_when
from hubctl.output import Style, table, usage_bar, use_colour
from tests.support.hubctl import ROOT, hubctl, table_row
from tests.support.waiting import eventually

# Runs hubctl as `python -m hubctl` would, with Ctrl-C restored first:
# a shell may start background jobs (like this test run) with SIGINT ignored.
# (No preexec_fn: forking a process that runs gRPC threads is not safe.)
_LAUNCH = (
    "import runpy, signal, sys; signal.signal(signal.SIGINT, signal.default_int_handler); "
    "sys.argv[0] = 'hubctl'; runpy.run_module('hubctl', run_name='__main__')"
)


async def spawn(hub: Hub, *argv: str) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable, "-c", _LAUNCH, "--target", hub.address, *argv,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, cwd=ROOT,
    )  # fmt: skip


def test_the_old_module_path_runs_hubctl() -> None:
    # `python -m hub_server.hubctl`: hubctl's entry point before it was a top-level package.
    old, new = [
        subprocess.run(
            [sys.executable, "-m", module, "--help"], capture_output=True, text=True, cwd=ROOT
        )
        for module in ("hub_server.hubctl", "hubctl")
    ]
    assert old.returncode == new.returncode == 0, old.stderr
    assert old.stdout == new.stdout


async def read_line(proc: asyncio.subprocess.Process) -> str:
    assert proc.stdout is not None
    line = await asyncio.wait_for(proc.stdout.readline(), 15)
    assert line, "hubctl ended early"
    return line.decode()


async def interrupt(proc: asyncio.subprocess.Process) -> tuple[int, str]:
    proc.send_signal(signal.SIGINT)
    code = await asyncio.wait_for(proc.wait(), 15)
    assert proc.stderr is not None
    return code, (await proc.stderr.read()).decode()


@pytest.fixture
async def fleet(client: HubClient) -> HubClient:
    """Two public instances of prices, one pro-only instance of signals."""
    await client.register(
        "prices", instance_id="p1", host="10.0.0.1", port=8001, version="1.0.0",
        metadata={"zone": "a"}, ttl=60,
    )  # fmt: skip
    await client.register(
        "prices", instance_id="p2", host="10.0.0.2", port=8002, version="1.1.0", ttl=60
    )
    await client.register(
        "signals", instance_id="s1", host="10.0.1.1", port=9001,
        subscription_requirements=["pro", "enterprise"], ttl=60,
    )  # fmt: skip
    return client


# -- services ------------------------------------------------------------------


async def test_services_list_text_and_json(hub: Hub, fleet: HubClient) -> None:
    text = await hubctl(hub, "services", "list")
    assert text.code == 0, text.err
    lines = text.out.splitlines()
    assert lines[0].split() == ["SERVICE", "INSTANCES", "HEALTHY", "VERSIONS", "TIERS"]
    assert lines[1].split() == ["prices", "2", "2/2", "1.0.0,1.1.0", "public"]
    assert lines[2].split() == ["signals", "1", "1/1", "-", "pro,enterprise"]
    assert "\x1b[" not in text.out  # not a terminal: no colour

    # Options after the command work as well as before it.
    for argv in (("-o", "json", "services", "list"), ("services", "list", "--output", "json")):
        res = await hubctl(hub, *argv)
        assert res.code == 0
        data = res.json()
        assert [s["name"] for s in data["services"]] == ["prices", "signals"]
        prices = data["services"][0]
        assert (prices["instance_count"], prices["healthy_count"]) == (2, 2)
        assert prices["instances"][0]["address"] == "10.0.0.1:8001"
        assert prices["instances"][0]["metadata"] == {"zone": "a"}
        assert int(data["revision"]) > 0  # int64: a string, as in proto3 JSON

    # A free tenant sees only what its tier may use.
    free = await hubctl(hub, "--tenant", "acme", "--tier", "free", "services", "list", "-o", "json")
    assert [s["name"] for s in free.json()["services"]] == ["prices"]
    every = await hubctl(hub, "--tier", "free", "services", "list", "--all", "-o", "json")
    assert [s["name"] for s in every.json()["services"]] == ["prices", "signals"]


async def test_services_list_empty(hub: Hub) -> None:
    res = await hubctl(hub, "services", "list")
    assert (res.code, res.out.strip()) == (0, "no services registered")
    assert (await hubctl(hub, "services", "list", "-o", "json")).json()["services"] == []


async def test_services_show_text_and_json(hub: Hub, fleet: HubClient) -> None:
    text = await hubctl(hub, "services", "show", "prices")
    assert text.code == 0, text.err
    lines = text.out.splitlines()
    assert lines[0].startswith("prices  2 instances, revision ")
    assert lines[1].split()[:6] == [
        "INSTANCE",
        "ADDRESS",
        "PROTOCOL",
        "VERSION",
        "HEALTH",
        "WEIGHT",
    ]
    assert lines[2].split()[:6] == ["p1", "10.0.0.1:8001", "http", "1.0.0", "healthy", "100"]
    assert lines[2].split()[-1] == "zone=a"

    data = (await hubctl(hub, "services", "show", "signals", "-o", "json")).json()
    assert data["name"] == "signals"
    [inst] = data["instances"]
    assert inst["instance_id"] == "s1"
    assert inst["subscription_requirements"] == ["pro", "enterprise"]
    assert inst["health"] == "healthy" and inst["registered_at"].endswith("+00:00")


async def test_services_watch_streams_until_ctrl_c(hub: Hub, client: HubClient) -> None:
    await client.register("prices", instance_id="p1", host="10.0.0.1", port=8001, ttl=60)
    proc = await spawn(hub, "services", "watch", "prices", "-o", "json")
    try:
        first = json.loads(await read_line(proc))
        assert (first["type"], first["initial"]) == ("ADDED", True)
        assert first["instance"]["instance_id"] == "p1"

        reg = await client.register("prices", instance_id="p2", host="10.0.0.2", port=8002)
        added = json.loads(await read_line(proc))
        assert (added["type"], added["initial"], added["instance"]["instance_id"]) == (
            "ADDED",
            False,
            "p2",
        )
        await reg.deregister()
        removed = json.loads(await read_line(proc))
        assert (removed["type"], removed["instance"]["instance_id"]) == ("REMOVED", "p2")
        assert int(removed["revision"]) > int(added["revision"]) > int(first["revision"]) - 1
    finally:
        code, err = await interrupt(proc)
    assert code == 0 and "Traceback" not in err, err
    assert "watching service prices" in err

    # Text mode: one readable line per event.
    proc = await spawn(hub, "services", "watch")
    try:
        line = await read_line(proc)
        assert "ADDED" in line and "prices/p1" in line and "(existing)" in line
    finally:
        code, err = await interrupt(proc)
    assert code == 0 and "Traceback" not in err, err


# -- health, pick, cluster -----------------------------------------------------


async def test_health_text_and_json(hub: Hub, fleet: HubClient) -> None:
    text = await hubctl(hub, "health")
    assert text.code == 0, text.err
    rows = [line.split() for line in text.out.splitlines()]
    assert rows[0][:4] == ["SERVICE", "INSTANCE", "STATUS", "CHECK"]
    assert [r[:4] for r in rows[1:]] == [
        ["prices", "p1", "healthy", "lease"],
        ["prices", "p2", "healthy", "lease"],
        ["signals", "s1", "healthy", "lease"],
    ]
    data = (await hubctl(hub, "health", "prices", "-o", "json")).json()
    assert [(h["instance_id"], h["status"]) for h in data["instances"]] == [
        ("p1", "healthy"),
        ("p2", "healthy"),
    ]
    missing = await hubctl(hub, "health", "nothing-here")
    assert missing.code == 4 and "ServiceNotFound" in missing.err


async def test_pick_text_and_json(hub: Hub, fleet: HubClient) -> None:
    await fleet.report_load("prices", "p1", 0.9)
    await fleet.report_load("prices", "p2", 0.1)

    async def picks_p2() -> bool:
        return (await fleet.pick("prices")).instance_id == "p2"

    await eventually(picks_p2)
    text = await hubctl(hub, "pick", "prices")
    assert text.code == 0, text.err
    assert text.out.startswith("prices -> 10.0.0.2:8002  (instance p2, load 0.10")
    data = (await hubctl(hub, "pick", "prices", "--strategy", "consistent-hash",
                         "--affinity-key", "user-7", "-o", "json")).json()  # fmt: skip
    assert data["strategy"] == "consistent_hash" and data["instance_id"] in ("p1", "p2")
    again = await hubctl(hub, "pick", "prices", "--strategy", "consistent_hash",
                         "--affinity-key", "user-7", "-o", "json")  # fmt: skip
    assert again.json()["instance_id"] == data["instance_id"]


async def test_cluster_status_text_and_json(hub: Hub) -> None:
    text = await hubctl(hub, "cluster", "status")
    assert text.code == 0, text.err
    assert f"answered by:  {hub.hub_id}" in text.out
    assert any(line.split()[:2] == [hub.hub_id, hub.address] for line in text.out.splitlines())
    data = (await hubctl(hub, "cluster", "status", "-o", "json")).json()
    assert data["hub_id"] == hub.hub_id
    [replica] = data["replicas"]
    assert replica["address"] == hub.address and replica["started_at"]
    build = version_info().build
    assert data["version"] == replica["version"] == build
    assert f"version:      {build}" in text.out
    assert build in next(line for line in text.out.splitlines() if line.startswith(hub.hub_id))

    async def has_leader() -> bool:
        res = await hubctl(hub, "cluster", "status", "-o", "json")
        return bool(res.json()["leader_id"] == hub.hub_id)

    await eventually(has_leader)


# -- circuits -------------------------------------------------------------------


async def test_circuits_show_override_and_watch(hub: Hub, fleet: HubClient) -> None:
    shown = await hubctl(hub, "circuits", "show", "prices")
    assert shown.code == 0, shown.err
    assert "state:" in shown.out and "CLOSED" in shown.out
    assert (await hubctl(hub, "circuits", "show", "prices", "-o", "json")).json()[
        "state"
    ] == "closed"

    proc = await spawn(hub, "circuits", "watch", "prices", "-o", "json")
    try:
        forced = await hubctl(hub, "circuits", "override", "prices", "force-open", "-o", "json")
        assert forced.code == 0, forced.err
        assert forced.json()["state"] == "forced_open"
        event = json.loads(await read_line(proc))
        while event["state"] != "forced_open":
            event = json.loads(await read_line(proc))
        assert event["service"] == "prices"

        text = await hubctl(hub, "circuits", "show", "prices")
        assert "FORCED_OPEN" in text.out
        picked = await hubctl(hub, "pick", "prices")
        assert picked.code == 3 and "NoEligibleInstance" in picked.err  # the balancer agrees

        reset = await hubctl(hub, "circuits", "override", "prices", "reset")
        assert reset.code == 0 and "CLOSED" in reset.out
        event = json.loads(await read_line(proc))
        assert event["state"] == "closed"

        per_instance = await hubctl(
            hub, "circuits", "override", "prices", "force-closed", "--instance", "p1", "-o", "json"
        )
        assert per_instance.json()["instance_id"] == "p1"
        assert per_instance.json()["state"] == "forced_closed"
        shown = await hubctl(hub, "circuits", "show", "prices", "--instance", "p1", "-o", "json")
        assert shown.json()["state"] == "forced_closed"
    finally:
        code, err = await interrupt(proc)
    assert code == 0 and "Traceback" not in err, err

    bad = await hubctl(hub, "circuits", "override", "prices", "explode")
    assert bad.code == 2 and "invalid choice" in bad.err


# -- register / deregister ------------------------------------------------------


async def test_register_outlives_hubctl_and_deregister_removes(hub: Hub, client: HubClient) -> None:
    res = await hubctl(
        hub, "register", "demo", "--host", "10.9.9.9", "--port", "80", "--version", "0.1",
        "--metadata", "owner=ops", "--tiers", "pro", "--health", "tcp", "--ttl", "120",
        "-o", "json",
    )  # fmt: skip
    assert res.code == 0, res.err
    assert res.json()["instance_id"] == "10.9.9.9-80"
    inst = (await client.discover("demo")).instances[0]
    assert (inst.version, inst.metadata, inst.subscription_requirements) == (
        "0.1",
        {"owner": "ops"},
        ("pro",),
    )
    assert inst.raw.health_check.WhichOneof("check") == "tcp"

    text = await hubctl(hub, "deregister", "demo", "10.9.9.9-80")
    assert (text.code, text.out.strip()) == (0, "deregistered demo/10.9.9.9-80")
    with pytest.raises(ServiceNotFound):
        await client.discover("demo")
    again = await hubctl(hub, "deregister", "demo", "10.9.9.9-80")
    assert again.code == 4 and "InstanceNotFound" in again.err


async def test_register_hold_keeps_it_until_ctrl_c(hub: Hub, client: HubClient) -> None:
    proc = await spawn(
        hub, "register", "held", "--host", "10.1.1.1", "--port", "81", "--ttl", "2", "--hold"
    )
    try:
        assert "registered held/10.1.1.1-81" in await read_line(proc)
        await asyncio.sleep(3)  # longer than the TTL: the lease is being renewed
        assert len((await client.discover("held")).instances) == 1
    finally:
        code, err = await interrupt(proc)
    assert code == 0 and "Traceback" not in err, err
    with pytest.raises(ServiceNotFound):
        await client.discover("held")


# -- errors and exit codes ------------------------------------------------------


async def test_not_found_exit_4_with_one_line_message(hub: Hub) -> None:
    res = await hubctl(hub, "services", "show", "ghost")
    assert res.code == 4 and res.out == ""
    assert res.err == (
        "hubctl: ServiceNotFound: service 'ghost' is not registered [SERVICE_NOT_FOUND]\n"
    )
    res = await hubctl(hub, "pick", "ghost", "-o", "json")
    assert res.code == 4
    err = json.loads(res.err)["error"]
    assert (err["type"], err["code"], err["reason"]) == (
        "ServiceNotFound",
        "NOT_FOUND",
        "SERVICE_NOT_FOUND",
    )


async def test_unreachable_hub_exit_3() -> None:
    target = f"127.0.0.1:{free_port()}"
    res = await hubctl(target, "--timeout", "0.5", "services", "list")
    assert res.code == 3 and res.out == ""
    assert res.err.startswith(f"hubctl: Unavailable: cannot reach the hub at {target} within 0.5s")
    assert res.err.count("\n") == 1
    # Names the program an installed hub has, not a make target of a checkout.
    assert "`central-hub serve` starts one" in res.err and "make" not in res.err
    res = await hubctl(target, "--timeout", "0.5", "cluster", "status", "-o", "json")
    assert res.code == 3 and json.loads(res.err)["error"]["reason"] == "HUB_UNREACHABLE"


async def test_permission_denied_exit_5(hub: Hub, fleet: HubClient) -> None:
    res = await hubctl(hub, "--tier", "free", "services", "show", "signals")
    assert res.code == 5
    assert res.err.startswith("hubctl: TierTooLow: service 'signals' requires a higher")
    assert "[SUBSCRIPTION_TIER_TOO_LOW]" in res.err and "--tier" in res.err


async def test_hub_errors_exit_1_and_usage_errors_exit_2(hub: Hub) -> None:
    bad = await hubctl(hub, "register", "Bad_Name", "--host", "h", "--port", "0")
    assert bad.code == 1
    assert bad.err.startswith("hubctl: InvalidArgument: ")
    assert "service:" in bad.err and "port:" in bad.err  # every bad field, on one line
    assert bad.err.count("\n") == 1

    for argv in (
        (),
        ("services",),
        ("services", "show"),
        ("pick", "prices", "--strategy", "fastest"),
        ("register", "x", "--host", "h", "--port", "1", "--metadata", "novalue"),
        ("register", "x", "--host", "h", "--port", "1", "--tiers", "gold"),
        ("register", "x", "--host", "h", "--port", "1", "--health", "udp"),
        ("--tier", "platinum", "services", "list"),
    ):
        res = await hubctl(hub, *argv)
        assert res.code == 2, (argv, res)
        assert "error" in res.err or "usage" in res.err, (argv, res.err)
    helped = await hubctl(hub, "--help")
    assert helped.code == 0 and "exit codes:" in helped.out


async def test_environment_variables(hub: Hub, fleet: HubClient, monkeypatch: Any) -> None:
    monkeypatch.setenv("HUB_TARGET", hub.address)
    monkeypatch.setenv("HUB_OUTPUT", "json")
    monkeypatch.setenv("HUB_TIER", "free")
    out, err = io.StringIO(), io.StringIO()
    code = await asyncio.to_thread(run, ["services", "list"], out, err)
    assert code == 0, err.getvalue()
    assert [s["name"] for s in json.loads(out.getvalue())["services"]] == ["prices"]


# -- completion and colours -------------------------------------------------------


async def test_completion_scripts(hub: Hub, fleet: HubClient, tmp_path: Path) -> None:
    bash = await hubctl(hub, "completion", "bash")
    assert bash.code == 0 and "complete -F _hubctl hubctl" in bash.out
    zsh = await hubctl(hub, "completion", "zsh")
    assert zsh.code == 0 and "bashcompinit" in zsh.out and "_hubctl" in zsh.out
    names = await hubctl(hub, "__complete", "services")
    assert names.out.split() == ["prices", "signals"]
    await fleet.create_tenant("acme", tier="pro")
    await fleet.create_tenant("beta", tier="free")
    tenants = await hubctl(hub, "__complete", "tenants")
    assert tenants.out.split() == ["acme", "beta"]

    # Drive the bash function as bash would, with a hubctl on PATH.
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    shim = bin_dir / "hubctl"
    shim.write_text(f'#!/bin/sh\nexec {sys.executable} -m hubctl "$@"\n')
    shim.chmod(0o755)
    (tmp_path / "hubctl.bash").write_text(bash.out)
    script = f"""
source {tmp_path / "hubctl.bash"}
t() {{ COMP_WORDS=("$@"); COMP_CWORD=$((${{#COMP_WORDS[@]}}-1)); COMPREPLY=(); _hubctl;
      echo "${{COMPREPLY[*]}}"; }}
t hubctl ""
t hubctl services ""
t hubctl --target {hub.address} services show ""
t hubctl circuits override prices f
t hubctl pick prices --strategy l
t hubctl config layer ""
t hubctl config set tier ""
t hubctl --target {hub.address} config history tenant ""
t hubctl --target {hub.address} usage a
t hubctl quota check acme w
t hubctl errors --category t
t hubctl tenants list --tier e
"""
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "PYTHONPATH": str(ROOT)}
    done = await asyncio.to_thread(
        subprocess.run, ["bash", "-c", script], capture_output=True, text=True, env=env,
        timeout=60,
    )  # fmt: skip
    lines = done.stdout.splitlines()
    assert len(lines) == 12, done.stderr
    assert lines[0].split()[:5] == ["services", "health", "pick", "circuits", "cluster"]
    assert lines[1].split() == ["list", "show", "watch"]
    assert lines[2].split()[:2] == ["prices", "signals"]
    assert lines[3].split() == ["force-open", "force-closed"]
    assert lines[4].split() == ["least_load", "latency_aware"]
    assert lines[5].split()[:3] == ["global", "tier", "tenant"]
    assert lines[6].split()[:3] == ["free", "pro", "enterprise"]
    assert lines[7].split()[:2] == ["acme", "beta"]
    assert lines[8].split() == ["acme"]
    assert lines[9].split() == ["websocket_connections"]
    assert lines[10].split() == ["timeout"]
    assert lines[11].split() == ["enterprise"]


def test_colours_only_on_a_terminal_without_no_color(monkeypatch: Any) -> None:
    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    monkeypatch.delenv("NO_COLOR", raising=False)
    monkeypatch.setenv("TERM", "xterm")
    assert use_colour(Tty()) and not use_colour(io.StringIO())
    assert not use_colour(Tty(), disabled=True)
    monkeypatch.setenv("NO_COLOR", "1")
    assert not use_colour(Tty())

    style = Style(True)
    lines = table(["A", "B"], [[style.state("healthy"), "1"], ["unhealthy", "2"]], style)
    assert "\x1b[32mhealthy\x1b[0m" in lines[1]
    # Columns line up by visible width, whatever the colour codes.
    assert lines[1].index("1") - len("\x1b[32m\x1b[0m") == lines[2].index("2") == 11


async def test_runs_as_a_program(hub: Hub) -> None:
    proc = await spawn(hub, "services", "list", "-o", "json")
    out, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 0, err
    assert json.loads(out) == {"revision": "0", "services": []}


# -- config ----------------------------------------------------------------------


async def test_config_get_layer_set_history_rollback(hub: Hub, client: HubClient) -> None:
    await client.create_tenant("acme", tier="pro")
    pro = await client.config("acme")

    got = await hubctl(hub, "config", "get", "acme")
    assert got.code == 0, got.err
    assert "tenant:    acme" in got.out and "pro, from the tenant record" in got.out
    assert table_row(got.out, "FIELD") == ["FIELD", "VALUE", "FROM"]
    calls = str(pro.rate_limits["api_calls_per_hour"])
    assert table_row(got.out, "rate_limits.api_calls_per_hour") == [
        "rate_limits.api_calls_per_hour", calls, "tier/pro"
    ]  # fmt: skip

    # set: only the fields given change; JSON says what changed.
    res = await hubctl(
        hub, "config", "set", "tenant", "acme", "--api-calls-per-hour", "20000",
        "--feature", "beta_ui=true", "--feature", "custom_models=on",
        "--setting", 'risk={"max_leverage": 5}', "--comment", "bigger", "-o", "json",
    )  # fmt: skip
    assert res.code == 0, res.err
    data = res.json()
    assert (data["layer"], data["version"], data["previous_version"]) == ("tenant/acme", 1, 0)
    assert data["values"] == {
        "rate_limits": {"api_calls_per_hour": 20000},
        "features": {"custom_models": True, "flags": {"beta_ui": True}},
        "settings": {"risk": {"max_leverage": 5}},
    }
    assert data["comment"] == "bigger"
    assert [c["field"] for c in data["changes"]] == [
        "rate_limits.api_calls_per_hour",
        "features.custom_models",
        "features.flags.beta_ui",
        "settings.risk",
    ]
    assert data["changes"][0] == {
        "field": "rate_limits.api_calls_per_hour", "old": None, "new": 20000
    }  # fmt: skip

    text = await hubctl(hub, "config", "set", "global", "--websocket-connections", "7")
    assert text.code == 0, text.err
    assert text.out.splitlines()[0] == "global: v0 -> v1"
    assert table_row(text.out, "rate_limits.websocket_connections")[1:] == ["unset", "7"]

    # get: the merged view says which layer set each value, and each layer's version.
    merged = (await hubctl(hub, "config", "get", "acme", "-o", "json")).json()
    assert merged["rate_limits"] == {"api_calls_per_hour": 20000, "websocket_connections": 7}
    assert merged["features"]["flags"] == {"beta_ui": True}
    assert merged["settings"] == {"risk": {"max_leverage": 5}}
    assert merged["versions"]["global"] == 1 and merged["versions"]["tenant"] == 1
    assert merged["sources"]["rate_limits.api_calls_per_hour"] == "tenant/acme"
    assert merged["sources"]["rate_limits.websocket_connections"] == "global"
    assert merged["sources"]["resource_limits.max_concurrent_requests"] == "tier/pro"
    got = await hubctl(hub, "config", "get", "acme")
    assert table_row(got.out, "rate_limits.websocket_connections")[1:] == ["7", "global"]
    assert table_row(got.out, "features.flags.beta_ui")[1:] == ["on", "tenant/acme"]
    assert table_row(got.out, "settings.risk")[1:] == ['{"max_leverage":5}', "tenant/acme"]
    # Without a tenant: tier defaults and global, at the caller's --tier.
    bare = (await hubctl(hub, "--tier", "enterprise", "config", "get", "-o", "json")).json()
    assert (bare["tenant_id"], bare["tier"], bare["tier_source"]) == (
        "", "enterprise", "request_header"
    )  # fmt: skip

    # layer: one layer as stored.
    layer = await hubctl(hub, "config", "layer", "tenant", "acme")
    assert layer.code == 0, layer.err
    assert "layer:    tenant/acme" in layer.out and "comment:  bigger" in layer.out
    assert table_row(layer.out, "rate_limits.api_calls_per_hour")[1] == "20000"
    tier = (await hubctl(hub, "config", "layer", "tier/pro", "-o", "json")).json()
    assert tier["layer"] == "tier/pro"
    assert set(tier["values"]) >= {"rate_limits", "resource_limits", "features"}
    empty = await hubctl(hub, "config", "layer", "tenant", "nobody")
    assert "sets nothing" in empty.out and "v0 (never written)" in empty.out

    # A second edit, then history (newest first, with what each version changed).
    edit = await hubctl(hub, "config", "set", "tenant", "acme", "--unset", "beta_ui",
                        "--setting", 'note="hi"', "--user", "alice")  # fmt: skip
    assert edit.code == 0, edit.err
    assert table_row(edit.out, "features.flags.beta_ui")[1:] == ["on", "unset"]
    hist = (await hubctl(hub, "config", "history", "tenant", "acme", "-o", "json")).json()
    assert [v["version"] for v in hist["versions"]] == [2, 1]
    assert hist["versions"][0]["updated_by"] == "alice"
    assert [c["field"] for c in hist["versions"][0]["changes"]] == [
        "features.flags.beta_ui",
        "settings.note",
    ]
    text = await hubctl(hub, "config", "history", "tenant", "acme")
    assert table_row(text.out, "v2")[3] == "alice" and 'settings.note unset -> "hi"' in text.out
    assert table_row(text.out, "v1")[4] == "bigger"
    short = await hubctl(hub, "config", "history", "tenant", "acme", "--limit", "1")
    assert "v1" not in short.out and "1 older versions" in short.err

    # rollback: the values of v1 again, as v3.
    back = await hubctl(hub, "config", "rollback", "tenant", "acme", "1", "-o", "json")
    assert back.code == 0, back.err
    assert (back.json()["version"], back.json()["restored_version"]) == (3, 1)
    assert (await client.config_layer("tenant/acme")).values == data["values"]
    text = await hubctl(hub, "config", "rollback", "tenant", "acme", "2")
    assert text.out.splitlines()[0] == "tenant/acme: v3 -> v4 (the values of v2)"

    # Errors: a stale --expected-version is a conflict (7), a missing version not
    # found (4), a bad value the hub refuses 1, a bad command line 2.
    stale = await hubctl(hub, "config", "set", "tenant", "acme", "--api-calls-per-hour", "5",
                         "--expected-version", "1")  # fmt: skip
    assert stale.code == 7 and stale.err.startswith("hubctl: VersionConflict: ")
    pinned = await hubctl(hub, "config", "set", "tenant", "acme", "--api-calls-per-hour", "5",
                          "--expected-version", "4", "-o", "json")  # fmt: skip
    assert pinned.code == 0 and pinned.json()["version"] == 5
    missing = await hubctl(hub, "config", "rollback", "tenant", "acme", "99")
    assert missing.code == 4 and "NotFound" in missing.err
    negative = await hubctl(hub, "config", "set", "global", "--api-calls-per-hour", "-5")
    assert negative.code == 1 and "api_calls_per_hour" in negative.err
    assert negative.err.count("\n") == 1
    for argv in (
        ("config", "layer", "tier"),
        ("config", "layer", "tier", "gold"),
        ("config", "layer", "planet"),
        ("config", "layer", "tenant"),
        ("config", "set", "global"),
        ("config", "set", "global", "--feature", "x=maybe"),
        ("config", "set", "global", "--feature", "novalue"),
        ("config", "set", "global", "--setting", "x=not json"),
        ("config", "set", "global", "--unset", "never_set"),
        ("config", "rollback", "global", "latest"),
        ("config", "history", "global", "--limit", "-1"),
    ):
        res = await hubctl(hub, *argv)
        assert res.code == 2, (argv, res)
        assert "error" in res.err, (argv, res.err)


async def test_config_watch_streams_until_ctrl_c(hub: Hub, client: HubClient) -> None:
    await client.create_tenant("acme", tier="free")
    proc = await spawn(hub, "config", "watch", "acme", "-o", "json")
    try:
        first = json.loads(await read_line(proc))
        assert (first["tenant_id"], first["tier"], first["initial"]) == ("acme", "free", True)

        await client.set_config_layer("tenant/acme", {"rate_limits": {"api_calls_per_hour": 7}})
        changed = json.loads(await read_line(proc))
        assert changed["initial"] is False and changed["versions"]["tenant"] == 1
        assert changed["changes"] == [
            {"field": "rate_limits.api_calls_per_hour", "old": first["rate_limits"][
                "api_calls_per_hour"], "new": 7}
        ]  # fmt: skip
        await client.set_tier("acme", "pro")
        upgraded = json.loads(await read_line(proc))
        assert (upgraded["tier"], upgraded["previous_tier"]) == ("pro", "free")
    finally:
        code, err = await interrupt(proc)
    assert code == 0 and "Traceback" not in err, err
    assert "watching tenant acme" in err

    proc = await spawn(hub, "--tenant", "acme", "config", "watch")  # the global --tenant
    try:
        line = await read_line(proc)
        assert "acme  pro" in line and "tenant/acme v1" in line and "(current)" in line
        await client.set_config_layer("global", {"features": {"flags": {"beta": True}}})
        line = await read_line(proc)
        assert "features.flags.beta unset -> on" in line and "global v1" in line
    finally:
        code, err = await interrupt(proc)
    assert code == 0 and "Traceback" not in err, err


# -- tenants, usage, quota --------------------------------------------------------------


async def test_tenants_usage_and_quota(hub: Hub, client: HubClient, monkeypatch: Any) -> None:
    empty = await hubctl(hub, "tenants", "list")
    assert (empty.code, empty.out.strip()) == (0, "no tenants")

    made = await hubctl(hub, "tenants", "create", "acme", "--tier", "pro", "--name", "Acme Corp")
    assert (made.code, made.out.strip()) == (0, "created tenant acme (pro)")
    data = (await hubctl(hub, "tenants", "create", "beta", "--tier", "free", "-o", "json")).json()
    assert (data["tenant_id"], data["tier"], data["display_name"]) == ("beta", "free", "")
    assert data["created_at"].endswith("+00:00") and int(data["revision"]) > 0
    again = await hubctl(hub, "tenants", "create", "acme", "--tier", "free")
    assert again.code == 7 and again.err.startswith("hubctl: AlreadyExists: ")
    bad = await hubctl(hub, "tenants", "create", "no spaces!", "--tier", "free")
    assert bad.code == 1 and "InvalidArgument" in bad.err and "tenant_id" in bad.err
    assert (await hubctl(hub, "tenants", "create", "x")).code == 2  # --tier is required

    listed = await hubctl(hub, "tenants", "list")
    assert listed.out.splitlines()[0].split() == ["TENANT", "NAME", "TIER", "CREATED", "UPDATED"]
    assert table_row(listed.out, "acme")[1:4] == ["Acme", "Corp", "pro"]
    assert table_row(listed.out, "beta")[1:3] == ["-", "free"]
    # After the command, --tier filters; HUB_TIER (the caller's tier) does not.
    monkeypatch.setenv("HUB_TIER", "free")
    pro = (await hubctl(hub, "tenants", "list", "--tier", "pro", "-o", "json")).json()
    assert [t["tenant_id"] for t in pro["tenants"]] == ["acme"]
    every = (await hubctl(hub, "tenants", "list", "-o", "json")).json()
    assert [t["tenant_id"] for t in every["tenants"]] == ["acme", "beta"]
    none = await hubctl(hub, "tenants", "list", "--tier", "enterprise")
    assert none.out.strip() == "no tenants of tier enterprise"

    shown = await hubctl(hub, "tenants", "show", "acme")
    assert shown.code == 0, shown.err
    assert "tenant:    acme" in shown.out and "name:      Acme Corp" in shown.out
    assert (await hubctl(hub, "tenants", "show", "acme", "-o", "json")).json()["tier"] == "pro"
    ghost = await hubctl(hub, "tenants", "show", "ghost")
    assert ghost.code == 4
    assert ghost.err == "hubctl: NotFound: tenant 'ghost' does not exist [TENANT_NOT_FOUND]\n"

    up = await hubctl(hub, "tenants", "set-tier", "beta", "enterprise")
    assert (up.code, up.out.strip()) == (0, "beta: free -> enterprise")
    same = await hubctl(hub, "tenants", "set-tier", "beta", "enterprise", "-o", "json")
    assert (same.json()["tier"], same.json()["previous_tier"]) == ("enterprise", "enterprise")
    stale = await hubctl(hub, "tenants", "set-tier", "beta", "pro", "--expected-revision", "1")
    assert stale.code == 7 and "VersionConflict" in stale.err
    assert (await hubctl(hub, "tenants", "set-tier", "ghost", "pro")).code == 4
    assert (await hubctl(hub, "tenants", "set-tier", "beta", "gold")).code == 2
    assert (await client.get_tenant("beta")).tier == "enterprise"

    # usage and quota, on a free tenant of its own
    await client.create_tenant("small", tier="free")
    limit = (await client.config("small")).rate_limits["websocket_connections"]
    assert limit == 5  # the free tier's; the numbers below depend on it

    took = await hubctl(hub, "quota", "allocate", "small", "websocket-connections", "4")
    assert took.code == 0, took.err
    assert took.out.strip() == "allocated 4 websocket_connections to small: 4 of 5 in use, 1 left"

    usage = await hubctl(hub, "usage", "small")
    assert usage.code == 0, usage.err
    lines = usage.out.splitlines()
    assert lines[0] == "small  tier free"
    assert lines[1].split() == ["RESOURCE", "USED", "LIMIT", "USE"]
    assert table_row(usage.out, "websocket_connections")[1:] == ["4", "5", "[################....]",
                                                           "80%"]  # fmt: skip
    assert "resets in" in next(li for li in lines if li.startswith("api_calls_per_hour"))
    # The tenant may come from the global --tenant (or HUB_TENANT).
    data = (await hubctl(hub, "--tenant", "small", "usage", "-o", "json")).json()
    assert (data["tenant_id"], data["tier"]) == ("small", "free")
    ws = {u["resource"]: u for u in data["usage"]}["websocket_connections"]
    assert (ws["used"], ws["limit"], ws["remaining"], ws["window_end"]) == (4, 5, 1, None)
    assert {u["resource"]: u for u in data["usage"]}["api_calls_per_hour"]["window_end"]

    # check: exit 0 if it fits, 6 if not; nothing is taken.
    fits = await hubctl(hub, "quota", "check", "small", "websocket_connections")
    assert fits.code == 0
    assert fits.out.strip() == "1 websocket_connections for small fits: 4 of 5 in use, 1 left"
    no = await hubctl(hub, "quota", "check", "small", "websocket_connections", "2", "-o", "json")
    assert no.code == 6 and no.json()["allowed"] is False and no.json()["usage"]["used"] == 4

    over = await hubctl(hub, "quota", "allocate", "small", "websocket_connections", "2")
    assert over.code == 6 and over.out == ""
    assert over.err.startswith("hubctl: QuotaExceeded: ") and over.err.count("\n") == 1
    assert "`hubctl usage small`" in over.err
    over = await hubctl(
        hub, "quota", "allocate", "small", "websocket_connections", "2", "-o", "json"
    )
    err = json.loads(over.err)["error"]
    assert (err["type"], err["metadata"]["limit"], err["metadata"]["current"]) == (
        "QuotaExceeded", "5", "4"
    )  # fmt: skip

    back = await hubctl(
        hub, "quota", "release", "small", "websocket_connections", "10", "-o", "json"
    )
    assert back.code == 0, back.err
    assert (back.json()["released"], back.json()["usage"]["used"]) == (4, 0)
    text = await hubctl(hub, "quota", "release", "small", "websocket_connections")
    assert text.out.strip().startswith("released 0 websocket_connections of small (of 1 asked")

    for argv in (
        ("usage",),  # no tenant at all
        ("quota", "check", "small", "cpu"),
        ("quota", "allocate", "small", "websocket_connections", "0"),
        ("quota", "allocate", "small", "websocket_connections", "lots"),
        ("quota", "release", "small"),
    ):
        res = await hubctl(hub, *argv)
        assert res.code == 2, (argv, res)


# -- alerts, audit, errors, metrics -------------------------------------------------------


async def test_alerts_list_and_watch(hub_factory: Any) -> None:
    hub = await hub_factory(alert_interval=0.1)
    quiet = await hubctl(hub, "alerts", "list")
    assert (quiet.code, quiet.out.strip()) == (0, "no active alerts")
    assert (await hubctl(hub, "alerts", "list", "-o", "json")).json()["active"] == []

    opened = await hubctl(hub, "circuits", "override", "ml", "force-open")
    assert opened.code == 0, opened.err

    async def raised() -> bool:
        return bool((await hubctl(hub, "alerts", "list", "-o", "json")).json()["active"])

    await eventually(raised)
    listed = await hubctl(hub, "alerts", "list")
    assert listed.out.splitlines()[0].split() == [
        "SEVERITY", "RULE", "SUBJECT", "RAISED", "SUMMARY"
    ]  # fmt: skip
    assert table_row(listed.out, "warning")[1:3] == ["CIRCUIT_OPENED", "ml"]
    # --tenant after the command filters: nothing is about tenant nobody.
    other = await hubctl(hub, "alerts", "list", "--tenant", "nobody", "-o", "json")
    assert other.json()["active"] == []

    # A watch starts with the active alerts, then raises and resolves.
    proc = await spawn(hub, "alerts", "watch")
    try:
        line = await read_line(proc)
        assert "ACTIVE" in line and "CIRCUIT_OPENED" in line and "(existing)" in line
    finally:
        code, err = await interrupt(proc)
    assert code == 0 and "Traceback" not in err, err
    proc = await spawn(hub, "alerts", "watch", "-o", "json")
    try:
        existing = json.loads(await read_line(proc))
        assert (existing["event"], existing["service"], existing["initial"]) == (
            "active", "ml", True
        )  # fmt: skip
        await hubctl(hub, "circuits", "override", "db", "force-open")
        new = json.loads(await read_line(proc))
        assert (new["event"], new["rule"], new["service"]) == ("raised", "CIRCUIT_OPENED", "db")
        assert (new["severity"], new["active"], new["initial"]) == ("warning", True, False)
        await hubctl(hub, "circuits", "override", "db", "reset")
        gone = json.loads(await read_line(proc))
        assert (gone["event"], gone["id"], gone["active"]) == ("resolved", new["id"], False)
    finally:
        code, err = await interrupt(proc)
    assert code == 0 and "Traceback" not in err, err

    history = (await hubctl(hub, "alerts", "list", "--history", "5", "-o", "json")).json()
    assert [a["service"] for a in history["active"]] == ["ml"]
    assert [(a["service"], a["active"]) for a in history["history"]] == [
        ("db", False),
        ("db", True),
        ("ml", True),
    ]
    text = await hubctl(hub, "alerts", "list", "--history", "5")
    assert "history, newest first:" in text.out
    resolved = next(li for li in text.out.splitlines() if "RESOLVED" in li).split()
    assert resolved[2:6] == ["RESOLVED", "warning", "CIRCUIT_OPENED", "db"]
    assert (await hubctl(hub, "alerts", "list", "--history", "-1")).code == 2
    assert (await hubctl(hub, "alerts", "list", "--history", "5000")).code == 1


async def test_audit(hub: Hub, monkeypatch: Any) -> None:
    assert (await hubctl(hub, "audit")).out.strip() == "no audit events"
    for tenant in ("acme", "beta"):
        res = await hubctl(hub, "--tenant", tenant, "--user", "alice", "tenants", "create",
                           tenant, "--tier", "pro")  # fmt: skip
        assert res.code == 0, res.err
    await hubctl(hub, "config", "set", "global", "--websocket-connections", "9")

    async def recorded() -> bool:
        return len((await hubctl(hub, "audit", "-o", "json")).json()["events"]) == 3

    await eventually(recorded)
    text = await hubctl(hub, "audit")
    assert text.code == 0, text.err
    lines = text.out.splitlines()
    assert lines[0].split() == ["TIME", "METHOD", "OUTCOME", "TARGET", "WHO", "VERSION"]
    assert lines[1].split()[2:7] == [
        "TenantService/CreateTenant", "OK", "tenant/acme", "alice@acme", "-"
    ]  # fmt: skip
    assert lines[3].split()[2:5] == ["ConfigService/SetConfigLayer", "OK", "config/global"]

    # Filters: --tenant (after the command; HUB_TENANT is only the caller's), --method.
    monkeypatch.setenv("HUB_TENANT", "beta")
    acme = (await hubctl(hub, "audit", "--tenant", "acme", "-o", "json")).json()
    assert [e["target"] for e in acme["events"]] == ["tenant/acme"]
    event = acme["events"][0]
    assert (event["method"], event["user_id"], event["version_after"]) == (
        "/aitrading.hub.v1.TenantService/CreateTenant", "alice", "pro"
    )  # fmt: skip
    every = (await hubctl(hub, "audit", "-o", "json")).json()
    assert len(every["events"]) == 3 and every["more"] is False
    writes = (await hubctl(hub, "audit", "--method", "SetConfigLayer", "-o", "json")).json()
    assert [e["target"] for e in writes["events"]] == ["config/global"]

    # Time windows and paging.
    recent = (await hubctl(hub, "audit", "--since", "1h", "-o", "json")).json()
    assert len(recent["events"]) == 3
    old = await hubctl(hub, "audit", "--until", "1h")
    assert old.out.strip() == "no audit events match"
    future = await hubctl(hub, "audit", "--since", "2999-01-01T00:00:00Z", "-o", "json")
    assert future.json()["events"] == []
    first = await hubctl(hub, "audit", "--limit", "2", "-o", "json")
    assert len(first.json()["events"]) == 2 and first.json()["more"] is True
    assert "more events after these 2" in first.err
    for argv in (
        ("audit", "--since", "yesterday"),
        ("audit", "--since", "1h", "--until", "2h"),
        ("audit", "--limit", "0"),
    ):
        res = await hubctl(hub, *argv)
        assert res.code == 2, (argv, res)


async def test_errors_and_metrics(hub: Hub, fleet: HubClient) -> None:
    assert (await hubctl(hub, "errors")).out.strip() == "no error patterns reported"
    stub = observability_pb2_grpc.ObservabilityServiceStub(fleet.channel)
    patterns = [
        obs.ErrorPattern(
            fingerprint="ab" * 8, category="timeout", severity="medium",
            exception_type="TimeoutError", normalized_message="read timed out after <num>s",
            sample="read timed out after 30.2s", count=5, tenant_id="acme",
        ),
        obs.ErrorPattern(
            fingerprint="cd" * 8, category="connection", severity="high",
            normalized_message="connection refused to <addr>", count=2,
        ),
    ]  # fmt: skip
    await stub.ReportErrors(obs.ReportErrorsRequest(service="pricing", patterns=patterns))
    await stub.ReportErrors(obs.ReportErrorsRequest(service="orders", patterns=patterns[1:]))

    text = await hubctl(hub, "errors")
    assert text.code == 0, text.err
    lines = text.out.splitlines()
    assert lines[0].split() == [
        "COUNT", "SERVICE", "TENANT", "CATEGORY", "SEVERITY", "LAST", "SEEN", "MESSAGE"
    ]  # fmt: skip
    assert lines[1].split()[:5] == ["5", "pricing", "acme", "timeout", "medium"]
    assert lines[1].endswith("TimeoutError: read timed out after <num>s")
    assert len(lines) == 4

    data = (await hubctl(hub, "errors", "--service", "pricing", "-o", "json")).json()
    assert [(p["category"], p["count"]) for p in data["patterns"]] == [
        ("timeout", 5),
        ("connection", 2),
    ]
    assert data["patterns"][0]["sample"] == "read timed out after 30.2s"
    only = (await hubctl(hub, "errors", "--category", "connection", "-o", "json")).json()
    assert {p["service"] for p in only["patterns"]} == {"pricing", "orders"}
    acme = (await hubctl(hub, "errors", "--tenant", "acme", "-o", "json")).json()
    assert [p["fingerprint"] for p in acme["patterns"]] == ["ab" * 8]
    top = (await hubctl(hub, "errors", "--limit", "1", "-o", "json")).json()
    assert len(top["patterns"]) == 1
    assert (await hubctl(hub, "errors", "--category", "cosmic")).code == 2
    too_many = await hubctl(hub, "errors", "--limit", "5000")
    assert too_many.code == 1 and "limit" in too_many.err

    # metrics: services by health, tenants' usage, RPC traffic
    await fleet.create_tenant("acme", tier="pro")
    await fleet.allocate("websocket_connections", 2, tenant="acme")
    text = await hubctl(hub, "metrics")
    assert text.code == 0, text.err
    assert f"hub:            {hub.hub_id}" in text.out
    assert table_row(text.out, "SERVICE") == [
        "SERVICE", "INSTANCES", "HEALTHY", "DEGRADED", "UNHEALTHY", "UNKNOWN"
    ]  # fmt: skip
    assert table_row(text.out, "prices") == ["prices", "2", "2", "0", "0", "0"]
    tenant_row = table_row(text.out, "acme")
    assert tenant_row[1] == "pro" and tenant_row[3].startswith("2/")  # websockets used/limit
    assert table_row(text.out, "RegistryService/Register")[1] == "3"

    data = (await hubctl(hub, "metrics", "-o", "json")).json()
    assert data["hub_id"] == hub.hub_id and data["uptime_seconds"] > 0
    assert {s["service"]: s["healthy"] for s in data["services"]} == {"prices": 2, "signals": 1}
    [tenant] = data["tenants"]
    assert tenant["tenant_id"] == "acme" and tenant["usage"]["websocket_connections"] == 2
    rpcs = {r["method"]: r for r in data["rpcs"]}
    register = rpcs["/aitrading.hub.v1.RegistryService/Register"]
    assert register["calls"] == 3 and register["errors"] == 0 and register["p99_ms"] > 0


# -- pure helpers ---------------------------------------------------------------------


def test_time_and_layer_arguments() -> None:
    now = 1_700_000_000.0
    assert parse_when("90s", now) == now - 90
    assert parse_when("1h30m", now) == now - 5400
    assert parse_when("2d", now) == now - 172800
    assert parse_when("now", now) == now
    assert parse_when("2023-11-14T22:13:20Z") == 1_700_000_000.0
    assert parse_when("2023-11-14T22:13:20+00:00") == 1_700_000_000.0
    assert parse_when("2023-11-14") > 0  # local midnight
    with pytest.raises(UsageError):
        parse_when("last tuesday")
    assert layer_of("global", "") == "global"
    assert layer_of("tier", "pro") == layer_of("tier/pro", "") == "tier/pro"
    assert layer_of("tenant", "acme") == layer_of("tenant/acme", "") == "tenant/acme"
    for kind, name in (("tier", "gold"), ("global", "x"), ("tenant", ""), ("planet", "")):
        with pytest.raises(UsageError):
            layer_of(kind, name)


def test_usage_bar() -> None:
    plain = Style(False)
    assert usage_bar(0, 10, plain) == "[....................]   0%"
    assert usage_bar(4, 5, plain) == "[################....]  80%"
    assert usage_bar(1, 1000, plain) == "[#...................]   0%"  # in use: visible
    assert usage_bar(9, 6, plain) == "[####################] 150%"
    assert usage_bar(0, 0, plain).endswith("none allowed")
    coloured = usage_bar(9, 10, Style(True))
    assert "\x1b[33m" in coloured  # yellow from 80%
    assert "\x1b[31m" in usage_bar(10, 10, Style(True))  # red at the limit


async def test_quota_commands_take_the_tenant_from_the_global_flag(
    hub: Hub, client: HubClient
) -> None:
    """`hubctl --tenant T quota allocate RESOURCE N` answered `invalid choice: '3'`."""
    await client.create_tenant("flagged", tier="free")
    took = await hubctl(
        hub, "--tenant", "flagged", "quota", "allocate", "websocket_connections", "3"
    )
    assert took.code == 0, took.err
    assert took.out.strip() == "allocated 3 websocket_connections to flagged: 3 of 5 in use, 2 left"
    one = await hubctl(hub, "--tenant", "flagged", "quota", "check", "websocket-connections")
    assert one.out.strip() == "1 websocket_connections for flagged fits: 3 of 5 in use, 2 left"
    # An explicit TENANT still wins over the flag.
    named = await hubctl(
        hub, "--tenant", "other", "quota", "release", "flagged", "websocket_connections", "3"
    )
    assert named.code == 0, named.err
    assert "of flagged" in named.out
    # Without any tenant, or with words that make no sense, a usage error (exit 2).
    for argv in (
        ("quota", "allocate", "websocket_connections", "3"),
        ("--tenant", "flagged", "quota", "allocate", "websocket_connections", "x"),
        ("quota", "allocate", "flagged", "sockets"),
    ):
        bad = await hubctl(hub, *argv)
        assert bad.code == 2 and "invalid choice" not in bad.err, (argv, bad.err)


async def test_pick_with_only_unhealthy_instances_says_why_not_outage(
    hub: Hub, client: HubClient
) -> None:
    """It said `the hub or its etcd cannot serve now; retry shortly`: the hub was
    fine, no instance was usable. The reason stays NO_ELIGIBLE_INSTANCE."""
    from hub_client import health_check

    check = health_check(tcp=True, interval=0.1, timeout=0.1)
    check.unhealthy_threshold = 1
    closed = free_port()  # nothing listens there
    await client.register("down", instance_id="d1", host="127.0.0.1", port=closed, health=check)
    result: list[Any] = []

    async def refused_as_unhealthy() -> bool:
        result[:] = [await hubctl(hub, "pick", "down")]
        return "UNHEALTHY" in result[0].err

    await eventually(refused_as_unhealthy)
    picked = result[0]
    assert picked.code == 3, picked.err
    assert "[NO_ELIGIBLE_INSTANCE]" in picked.err
    assert "none is HEALTHY, DEGRADED or STARTING (1 UNHEALTHY)" in picked.err
    assert "no instance is usable now" in picked.err
    assert "cannot serve now" not in picked.err
