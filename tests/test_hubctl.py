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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from hub_client import HubClient, ServiceNotFound
from hub_server.app import Hub
from hub_server.embedded_etcd import free_port
from hub_server.hubctl import run
from hub_server.hubctl.output import Style, table, use_colour
from tests.conftest import eventually

ROOT = Path(__file__).resolve().parent.parent


@dataclass
class Result:
    code: int
    out: str
    err: str

    def json(self) -> Any:
        return json.loads(self.out)


async def hubctl(hub: Hub | str, *argv: str) -> Result:
    target = hub if isinstance(hub, str) else hub.address
    out, err = io.StringIO(), io.StringIO()
    code = await asyncio.to_thread(run, ["--target", target, *argv], out, err)
    return Result(code, out.getvalue(), err.getvalue())


# Runs hubctl as `python -m hub_server.hubctl` would, with Ctrl-C restored first:
# a shell may start background jobs (like this test run) with SIGINT ignored.
# (No preexec_fn: forking a process that runs gRPC threads is not safe.)
_LAUNCH = (
    "import runpy, signal, sys; signal.signal(signal.SIGINT, signal.default_int_handler); "
    "sys.argv[0] = 'hubctl'; runpy.run_module('hub_server.hubctl', run_name='__main__')"
)


async def spawn(hub: Hub, *argv: str) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable, "-c", _LAUNCH, "--target", hub.address, *argv,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, cwd=ROOT,
    )  # fmt: skip


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
        assert data["revision"] > 0

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
        assert removed["revision"] > added["revision"] > first["revision"] - 1
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

    # Drive the bash function as bash would, with a hubctl on PATH.
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    shim = bin_dir / "hubctl"
    shim.write_text(f'#!/bin/sh\nexec {sys.executable} -m hub_server.hubctl "$@"\n')
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
"""
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "PYTHONPATH": str(ROOT)}
    done = await asyncio.to_thread(
        subprocess.run, ["bash", "-c", script], capture_output=True, text=True, env=env,
        timeout=60,
    )  # fmt: skip
    lines = done.stdout.splitlines()
    assert len(lines) == 5, done.stderr
    assert lines[0].split()[:5] == ["services", "health", "pick", "circuits", "cluster"]
    assert lines[1].split() == ["list", "show", "watch"]
    assert lines[2].split()[:2] == ["prices", "signals"]
    assert lines[3].split() == ["force-open", "force-closed"]
    assert lines[4].split() == ["least_load", "latency_aware"]


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
    assert json.loads(out) == {"revision": 0, "services": []}
