"""hubctl deployments and backups against a live hub: every subcommand in text
and JSON, following a roll-out until it ends by itself, dry-run restores that
change nothing, exit codes and one-line messages for errors.

Deployments progress as in test_deployments.py: real gRPC instances the hub
probes, and a controller that starts a replacement on UPGRADE and stops an old
instance on RETIRE."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from hub_client import HubClient
from hub_server.app import Hub
from hub_server.store import keys
from hub_server.store.etcd import EtcdStore
from hubctl.management_commands import duration, share
from hubctl.output import int64_strings
from tests.support.fleet import deployment_is, fleet
from tests.support.hubctl import ROOT, Result, hubctl, table_row
from tests.support.hubs import HubFactory
from tests.support.keyspace import plain_keys
from tests.support.waiting import eventually

# A watch that does not stop by itself at a final state would hang: give up after this.
FOLLOW_LIMIT = 60


async def follow(hub: Hub, *argv: str) -> Result:
    return await asyncio.wait_for(hubctl(hub, *argv), FOLLOW_LIMIT)


def _lines(res: Result) -> list[dict[str, Any]]:
    """The JSON objects of a --follow / --watch run, one a line."""
    return [json.loads(line) for line in res.out.splitlines()]


# -- deployments -------------------------------------------------------------------


async def test_start_follow_status_and_list(hub: Hub, client: HubClient) -> None:
    async with fleet(client, "quotes", 2):
        res = await hubctl(
            hub, "deployments", "start", "quotes", "2.0.0", "--batch-size", "1",
            "--health-gate-timeout", "20s", "-o", "json",
        )  # fmt: skip
        assert res.code == 0, res.err
        started = res.json()
        dep = started["id"]
        assert dep.startswith("dep-") and started["service"] == "quotes"
        assert (started["target_version"], started["previous_version"]) == ("2.0.0", "1.0.0")
        assert started["strategy"] == "rolling" and not started["finished"]
        assert started["settings"]["batch_size"] == 1
        assert started["settings"]["health_gate_timeout_s"] == 20
        assert [len(b["instance_ids"]) for b in started["batches"]] == [1, 1]
        assert f"hubctl deployments status {dep} --watch" in res.err

        # --watch prints the progress batch by batch and ends by itself at SUCCEEDED.
        watched = await follow(hub, "deployments", "status", dep, "--watch")
        assert watched.code == 0, watched.err
        lines = watched.out.splitlines()
        assert lines[0].split()[2] == dep and "(current)" in lines[0]
        assert lines[-1].split()[1] == "SUCCEEDED"
        assert "quotes 1.0.0 -> 2.0.0" in lines[-1] and "batch 2/2" in lines[-1]
        assert "2/2 replaced" in lines[-1] and "[##########] 100%" in lines[-1]
        assert any("batch 1/2" in line for line in lines)
        assert f"{dep} SUCCEEDED in " in watched.err and "quotes runs 2.0.0" in watched.err

        # Watching a finished deployment: its state, at once.
        again = await follow(hub, "deployments", "status", dep, "--watch", "-o", "json")
        assert again.code == 0, again.err
        assert [(e["state"], e["initial"]) for e in _lines(again)] == [("SUCCEEDED", True)]

        status = await hubctl(hub, "deployments", "status", dep)
        assert status.code == 0, status.err
        assert f"deployment:  {dep}" in status.out
        assert "version:     1.0.0 -> 2.0.0" in status.out
        assert "strategy:    rolling, batches of 1, health gate 20s" in status.out
        assert "state:       SUCCEEDED" in status.out and "(took " in status.out
        assert table_row(status.out, "BATCH")[:4] == ["BATCH", "STATE", "INSTANCES", "REPLACEMENTS"]
        assert table_row(status.out, "1")[1:3] == ["DONE", "quotes-old-00"]
        assert table_row(status.out, "2")[1:3] == ["DONE", "quotes-old-01"]
        data = (await hubctl(hub, "deployments", "status", dep, "-o", "json")).json()
        assert data["state"] == "SUCCEEDED" and data["finished"]
        assert data["progress"] == {
            "batch": 2, "batches": 2, "phase": "done",
            "instances": {"pending": 0, "draining": 0, "replaced": 2, "cancelled": 0},
        }  # fmt: skip
        assert all(b["state"] == "DONE" and len(b["replacement_ids"]) == 1 for b in data["batches"])
        assert data["finished_at"] and data["created_at"]

        # start --follow: JSON lines until the end, exit 0 on SUCCEEDED.
        res = await follow(
            hub, "deployments", "start", "quotes", "3.0.0", "--batch-size", "2", "--follow",
            "-o", "json",
        )  # fmt: skip
        assert res.code == 0, res.err
        events = _lines(res)
        assert events[0]["initial"] and not any(e["initial"] for e in events[1:])
        assert events[-1]["state"] == "SUCCEEDED" and events[-1]["target_version"] == "3.0.0"
        assert events[-1]["previous_version"] == "2.0.0"
        second = events[-1]["id"]
        revisions = [int(e["revision"]) for e in events]
        assert revisions == sorted(set(revisions))  # each change once, in order

        listed = await hubctl(hub, "deployments", "list")
        assert listed.code == 0, listed.err
        assert table_row(listed.out, "ID") == [
            "ID", "SERVICE", "VERSION", "STRATEGY", "STATE", "BATCHES", "STARTED", "NOTE"
        ]  # fmt: skip
        assert table_row(listed.out, second)[1:7] == [
            "quotes", "2.0.0", "->", "3.0.0", "rolling", "SUCCEEDED"
        ]  # fmt: skip
        assert table_row(listed.out, dep)[6:8] == ["SUCCEEDED", "2/2"]
        assert listed.out.index(second) < listed.out.index(dep)  # newest first
        js = (await hubctl(hub, "deployments", "list", "quotes", "-o", "json")).json()
        assert [d["id"] for d in js["deployments"]] == [second, dep] and not js["more"]
        one = await hubctl(hub, "deployments", "list", "--limit", "1", "-o", "json")
        assert [d["id"] for d in one.json()["deployments"]] == [second]
        assert one.json()["more"] and "1 older deployments" in one.err
        active = await hubctl(hub, "deployments", "list", "quotes", "--active")
        assert (active.code, active.out.strip()) == (0, "no active deployments of quotes")
        assert (await hubctl(hub, "deployments", "list", "nothing")).out.strip() == (
            "no deployments of nothing"
        )

        # Deployment ids complete from the hub.
        ids = await hubctl(hub, "__complete", "deployments")
        assert ids.out.split() == [second, dep]


async def test_canary_start_text(hub: Hub, client: HubClient) -> None:
    async with fleet(client, "pricing", 3) as f:
        f.replace = False  # nothing comes up: the roll-out waits at the canary
        res = await hubctl(
            hub, "deployments", "start", "pricing", "2.0.0", "--strategy", "canary",
            "--canary-share", "34%", "--canary-observation", "1m30s", "--batch-size", "2",
            "--max-unavailable", "2", "--rollback-on-failure",
        )  # fmt: skip
        assert res.code == 0, res.err
        lines = res.out.splitlines()
        dep = lines[0].split()[1].rstrip(":")
        assert lines[0] == (
            f"started {dep}: pricing 1.0.0 -> 2.0.0 in 2 batches (canary (34% first, "
            "observed 2m), then batches of 2, at most 2 out of rotation, health gate 5m, "
            "rolls back on failure)"
        )
        assert table_row(res.out, "BATCH") == ["BATCH", "INSTANCES"]
        assert table_row(res.out, "1")[:2] == ["1", "canary"]
        data = (await hubctl(hub, "deployments", "status", dep, "-o", "json")).json()
        assert data["strategy"] == "canary" and data["batches"][0]["canary"]
        assert data["settings"]["canary_observation_s"] == 90
        assert data["settings"]["canary_share"] == pytest.approx(0.34)
        await hubctl(hub, "deployments", "abort", dep)


async def test_pause_resume_abort(hub: Hub, client: HubClient) -> None:
    async with fleet(client, "alerts", 2) as f:
        f.replace = False  # no replacements: the first batch waits at its gate
        res = await hubctl(
            hub, "deployments", "start", "alerts", "2.0.0", "--health-gate-timeout", "60",
            "-o", "json",
        )  # fmt: skip
        assert res.code == 0, res.err
        dep = res.json()["id"]
        await eventually(lambda: f.count("UPGRADE"))
        await eventually(lambda: deployment_is(client, dep, "RUNNING"))

        busy = await hubctl(hub, "deployments", "start", "alerts", "3.0.0")
        assert busy.code == 1 and busy.err.startswith("hubctl: FailedPrecondition: ")
        assert "[DEPLOYMENT_ACTIVE]" in busy.err and busy.err.count("\n") == 1

        paused = await hubctl(hub, "deployments", "pause", dep, "--reason", "market open")
        assert paused.code == 0, paused.err
        assert paused.out == (
            f"paused {dep} (alerts 1.0.0 -> 2.0.0): RUNNING -> PAUSED  market open\n"
        )
        status = await hubctl(hub, "deployments", "status", dep)
        assert "state:       PAUSED" in status.out and "reason:      market open" in status.out
        assert "0/2 replaced, 1 draining" in status.out

        twice = await hubctl(hub, "deployments", "pause", dep)
        assert twice.code == 1 and twice.err.startswith("hubctl: FailedPrecondition: ")
        assert "the current state does not allow this" in twice.err

        resumed = await hubctl(hub, "deployments", "resume", dep, "-o", "json")
        assert resumed.code == 0, resumed.err
        data = resumed.json()
        assert (data["previous_state"], data["state"]) == ("PAUSED", "RUNNING")

        aborted = await hubctl(hub, "deployments", "abort", dep, "--reason", "enough")
        assert aborted.code == 0, aborted.err
        assert aborted.out.startswith(f"aborted {dep} (alerts 1.0.0 -> 2.0.0): RUNNING -> ABORTED")
        # Its drained instance goes back into service.
        await eventually(lambda: f.count("RESUME"))

        # Following an aborted deployment: one line, and exit 1 (it did not succeed).
        watched = await follow(hub, "deployments", "status", dep, "--watch")
        assert watched.code == 1, watched.err
        assert len(watched.out.splitlines()) == 1 and " ABORTED " in watched.out
        assert f"{dep} ended ABORTED after " in watched.err and "enough" in watched.err

        again = await hubctl(hub, "deployments", "abort", dep, "-o", "json")
        assert again.code == 1
        err = json.loads(again.err)["error"]
        assert (err["type"], err["code"]) == ("FailedPrecondition", "FAILED_PRECONDITION")
        assert (await hubctl(hub, "deployments", "list", "--active", "-o", "json")).json() == {
            "deployments": [],
            "more": False,
        }


async def test_rollback_follow(hub: Hub, client: HubClient) -> None:
    async with fleet(client, "orders", 2):
        res = await follow(
            hub, "deployments", "start", "orders", "2.0.0", "--batch-size", "2", "--follow",
            "--health-gate-timeout", "20",
        )  # fmt: skip
        assert res.code == 0, res.err
        first = res.out.splitlines()[0]
        dep = first.split()[1].rstrip(":")
        assert first.startswith(f"started {dep}: orders 1.0.0 -> 2.0.0 in 1 batch (rolling")
        assert res.out.splitlines()[-1].split()[1] == "SUCCEEDED"

        back = await follow(hub, "deployments", "rollback", dep, "--reason", "bad", "--follow")
        assert back.code == 0, back.err  # the goal of a roll-back is ROLLED_BACK
        lines = back.out.splitlines()
        assert (
            lines[0]
            == f"rolling back {dep} (orders 1.0.0 -> 2.0.0): SUCCEEDED -> ROLLING_BACK  bad"
        )
        assert lines[1].split()[1] in ("ROLLING_BACK", "ROLLED_BACK")
        assert lines[-1].split()[1] == "ROLLED_BACK" and "bad" in lines[-1]
        assert f"{dep} ended ROLLED_BACK after " in back.err

        async def old_version_back() -> bool:
            svc = await client.discover("orders")
            return {i.version for i in svc.instances} == {"1.0.0"}

        await eventually(old_version_back, timeout=30)
        gone = await hubctl(hub, "deployments", "rollback", dep)
        assert gone.code == 1 and "FailedPrecondition" in gone.err


async def test_release_drains(hub: Hub, client: HubClient) -> None:
    async with fleet(client, "feeds", 2) as f:
        f.replace = False  # the first batch stays drained
        d = await client.deploy("feeds", "2.0.0", batch_size=1, health_gate_timeout=60)
        await eventually(lambda: f.count("UPGRADE"))
        await eventually(lambda: hub.services.deployments.is_draining("feeds", "feeds-old-00"))
        res = await hubctl(hub, "deployments", "release-drains", d.id, "--reason", "need it")
        assert res.code == 0, res.err
        assert res.out == (
            f"released 1 instance of {d.id} (feeds 1.0.0 -> 2.0.0, RUNNING): feeds-old-00\n"
        )
        assert not hub.services.deployments.is_draining("feeds", "feeds-old-00")
        again = await hubctl(hub, "deployments", "release-drains", d.id, "-o", "json")
        assert again.code == 0, again.err
        data = again.json()
        assert (data["id"], data["state"], data["released_instance_ids"]) == (d.id, "RUNNING", [])
        text = await hubctl(hub, "deployments", "release-drains", d.id)
        assert text.out.endswith(": no drained instance left to release\n")
        await client.abort_deployment(d.id)
    gone = await hubctl(hub, "deployments", "release-drains", "dep-nope")
    assert gone.code == 4 and "NotFound: deployment 'dep-nope' does not exist" in gone.err
    assert (await hubctl(hub, "deployments", "release-drains")).code == 2


async def test_deployment_errors_and_usage(hub: Hub, client: HubClient) -> None:
    for argv in (
        ("status", "dep-nope"),
        ("status", "dep-nope", "--watch"),
        ("pause", "dep-nope"),
        ("resume", "dep-nope"),
        ("abort", "dep-nope"),
        ("rollback", "dep-nope", "--follow"),
    ):
        res = await asyncio.wait_for(hubctl(hub, "deployments", *argv), 30)
        assert res.code == 4, (argv, res)
        assert res.out == ""
        assert res.err.splitlines()[-1] == (
            "hubctl: NotFound: deployment 'dep-nope' does not exist [DEPLOYMENT_NOT_FOUND]"
        )
    res = await hubctl(hub, "deployments", "status", "dep-nope", "-o", "json")
    assert res.code == 4 and json.loads(res.err)["error"]["code"] == "NOT_FOUND"
    res = await hubctl(hub, "deployments", "start", "ghost", "1.0.0")
    assert res.code == 4 and res.err.startswith("hubctl: ")

    # The hub's own checks: exit 1, every bad field on one line.
    await client.register("books", instance_id="b1", host="10.0.0.1", port=1, version="1", ttl=60)
    bad = await hubctl(hub, "deployments", "start", "books", "v" * 200)
    assert bad.code == 1 and bad.err.startswith("hubctl: InvalidArgument: ")
    assert "target_version:" in bad.err and bad.err.count("\n") == 1

    for argv in (
        ("deployments",),
        ("deployments", "start", "books"),
        ("deployments", "start", "books", "2", "--strategy", "blue-green"),
        ("deployments", "start", "books", "2", "--batch-size", "0"),
        ("deployments", "start", "books", "2", "--max-unavailable", "-1"),
        ("deployments", "start", "books", "2", "--health-gate-timeout", "5x"),
        ("deployments", "start", "books", "2", "--health-gate-timeout", "0"),
        ("deployments", "start", "books", "2", "--canary-share", "0.2"),
        ("deployments", "start", "books", "2", "--canary-observation", "1m"),
        ("deployments", "start", "books", "2", "--strategy", "canary", "--canary-share", "1.5"),
        ("deployments", "status"),
        ("deployments", "pause"),
        ("deployments", "list", "--limit", "-1"),
        ("deployments", "promote", "dep-1"),
    ):
        res = await hubctl(hub, *argv)
        assert res.code == 2, (argv, res)
        assert "error" in res.err or "usage" in res.err, (argv, res.err)
    res = await hubctl(hub, "deployments", "start", "books", "2", "--canary-share", "0.2")
    assert res.err == (
        "hubctl deployments start: error: --canary-share applies to --strategy canary only\n"
    )
    assert not await client.deployments()  # none of that started anything


def test_duration_and_share_arguments() -> None:
    assert duration("90") == duration("90s") == duration("1m30s") == 90
    assert duration("500ms") == 0.5 and duration("2h") == 7200 and duration("1.5m") == 90
    assert share("0.25") == share("25%") == 0.25 and share("1") == 1
    for bad in ("5x", "m", "-1", "inf", "nan", ""):
        with pytest.raises(argparse.ArgumentTypeError):
            duration(bad)
    for bad in ("0", "1.5", "150%", "-0.1", "half", "nan"):
        with pytest.raises(argparse.ArgumentTypeError):
            share(bad)


# -- backups ------------------------------------------------------------------------


@pytest.fixture
async def backup_hub(hub_factory: HubFactory, tmp_path: Path) -> Hub:
    return await hub_factory(backup_dir=tmp_path / "stored")


async def _plain(store: EtcdStore) -> dict[bytes, bytes]:
    return await plain_keys(store, leaving_out=(keys.AUDIT,))  # every call may add to it


async def test_backups_create_list_restore(
    backup_hub: Hub, etcd_store: EtcdStore, tmp_path: Path
) -> None:
    hub = backup_hub
    async with HubClient(hub.address) as client:
        await client.create_tenant("acme", tier="pro")
        await client.set_config_layer("global", {"settings": {"limit": 6}})
        reg = await client.register("pricing", host="127.0.0.1", port=9001, ttl=30)

        # create FILE: the file, and what it holds.
        path = tmp_path / "hub.chub"
        res = await hubctl(hub, "backups", "create", str(path), "-o", "json")
        assert res.code == 0, res.err
        made = res.json()
        assert path.read_bytes()[:4] == b"CHUB"
        assert made["file"] == str(path) and not made["stored"] and made["name"] is None
        assert made["size_bytes"] == path.stat().st_size and made["lease_bound_count"] >= 1
        assert made["key_count"] > made["lease_bound_count"] and len(made["sha256"]) == 64
        text = await hubctl(hub, "backups", "create", str(tmp_path / "b.chub"))
        assert text.code == 0, text.err
        assert text.out.startswith(f"wrote {tmp_path / 'b.chub'}: revision ")
        assert "lease-bound, not restored" in text.out and "sha256 " in text.out

        # --store: kept on the hub only.
        stored = await hubctl(hub, "backups", "create", "--store")
        assert stored.code == 0, stored.err
        name = stored.out.split()[5].rstrip(":")
        assert stored.out.startswith(f"kept on the hub as {name}: revision ")
        assert name.startswith("manual-")

        listed = await hubctl(hub, "backups", "list")
        assert listed.code == 0, listed.err
        assert listed.out.startswith(f"directory:  {tmp_path / 'stored'} (on ")
        assert table_row(listed.out, "NAME") == [
            "NAME", "CREATED", "AGE", "REVISION", "KEYS", "SIZE", "KIND"
        ]  # fmt: skip
        assert table_row(listed.out, name)[-1] == "manual"
        data = (await hubctl(hub, "backups", "list", "-o", "json")).json()
        assert data["directory"] == str(tmp_path / "stored")
        assert [b["name"] for b in data["backups"]] == [name] and not data["backups"][0][
            "scheduled"
        ]

        # The state moves on: a new tenant, a changed layer, the instance gone.
        await client.create_tenant("intruder", tier="free")
        await client.set_config_layer("global", {"settings": {"limit": 7}})
        await reg.deregister()
        before = await _plain(etcd_store)

        # --dry-run: per kind what would change; nothing is written.
        dry = await hubctl(hub, "backups", "restore", str(path), "--dry-run")
        assert dry.code == 0, dry.err
        assert dry.out.startswith(f"dry run of {path}: would change ")
        assert "nothing was written" in dry.out.splitlines()[0]
        assert table_row(dry.out, "KIND") == [
            "KIND", "ADDED", "UPDATED", "REMOVED", "UNCHANGED", "LEASE-BOUND", "KEPT", "LIVE",
            "KEPT", "RECORDS", "APPEND-ONLY"
        ]  # fmt: skip
        assert table_row(dry.out, "tenants")[1:4] == ["0", "0", "1"]  # intruder would go
        assert table_row(dry.out, "tenants")[-2:] == ["0", "no"]
        # Records written since (the calls above, the version of global) are kept.
        audit_row = table_row(dry.out, "audit")
        assert audit_row[3] == "0" and int(audit_row[7]) >= 2 and audit_row[-1] == "yes"
        assert table_row(dry.out, "config-history")[3] == "0"
        assert table_row(dry.out, "config-history")[-2:] == ["1", "yes"]
        assert table_row(dry.out, "config")[2] == "1"  # global would go back to limit 6
        assert table_row(dry.out, "registry")[5] == "1"  # the instance is not restored
        assert table_row(dry.out, "total")
        assert f"hubctl backups restore {path} --yes" in dry.err
        js = await hubctl(hub, "backups", "restore", str(path), "--dry-run", "-o", "json")
        assert js.code == 0, js.err
        report = js.json()
        assert report["dry_run"] and report["transactions"] == 0 and report["source"] == str(path)
        kinds = {k["kind"]: k for k in report["kinds"]}
        assert (kinds["tenants"]["removed"], kinds["tenants"]["added"]) == (1, 0)
        assert kinds["config"]["updated"] == 1
        assert kinds["audit"]["append_only"] and kinds["audit"]["kept_records"] >= 2
        assert not kinds["tenants"]["append_only"] and kinds["tenants"]["kept_records"] == 0
        assert report["total"]["kept_records"] >= 3
        assert report["total"]["changed"] == sum(k["changed"] for k in report["kinds"])
        assert report["backup"]["revision"] == made["revision"]
        assert await _plain(etcd_store) == before  # the dry runs wrote nothing

        # Without --yes nothing happens either.
        refused = await hubctl(hub, "backups", "restore", str(path))
        assert refused.code == 2 and "--yes" in refused.err and refused.out == ""
        assert await _plain(etcd_store) == before

        # The real restore.
        done = await hubctl(hub, "backups", "restore", str(path), "--yes")
        assert done.code == 0, done.err
        assert done.out.startswith(f"restored {path}: ") and " transaction" in done.out
        assert "now at revision " in done.out
        assert any(line.startswith("note: ") for line in done.out.splitlines())

        async def restored() -> bool:
            return {t.tenant_id for t in await client.list_tenants()} == {"acme"}

        await eventually(restored)
        assert (await client.config_layer("global")).values == {"settings": {"limit": 6}}

        # Again, from the stored copy (the same state): nothing left to change, the
        # records written since (audit, config versions) are kept.
        await client.create_tenant("again", tier="free")
        again = await hubctl(hub, "backups", "restore", name, "--stored", "--dry-run", "-o", "json")
        assert again.code == 0, again.err
        assert again.json()["stored"] and again.json()["dry_run"]
        text_again = await hubctl(hub, "backups", "restore", name, "--stored", "--dry-run")
        assert text_again.out.startswith(f"dry run of stored backup {name}: would change 1 keys")
        assert f"hubctl backups restore {name} --stored --yes" in text_again.err


async def test_backup_errors_and_usage(hub: Hub, client: HubClient, tmp_path: Path) -> None:
    # This hub has no backup directory.
    listed = await hubctl(hub, "backups", "list")
    assert listed.code == 0 and "keeps no backups: it runs without --backup-dir" in listed.out
    assert (await hubctl(hub, "backups", "list", "-o", "json")).json()["directory"] is None
    res = await hubctl(hub, "backups", "create", "--store")
    assert res.code == 1 and res.err.startswith("hubctl: FailedPrecondition: ")
    assert "[BACKUP_DIRECTORY_UNSET]" in res.err
    res = await hubctl(hub, "backups", "restore", "x.chub", "--stored", "--dry-run")
    assert res.code == 1 and "[BACKUP_DIRECTORY_UNSET]" in res.err

    # Not a backup: refused by the hub, nothing changed.
    junk = tmp_path / "junk.chub"
    junk.write_bytes(b"not a backup at all")
    res = await hubctl(hub, "backups", "restore", str(junk), "--yes", "-o", "json")
    assert res.code == 1
    err = json.loads(res.err)["error"]
    assert (err["type"], err["reason"]) == ("InvalidArgument", "BACKUP_NOT_RECOGNIZED")

    for argv in (
        ("backups",),
        ("backups", "create"),  # neither FILE nor --store
        ("backups", "create", str(tmp_path / "no" / "such" / "dir.chub")),
        ("backups", "create", str(tmp_path)),  # a directory
        ("backups", "restore"),
        ("backups", "restore", str(tmp_path / "missing.chub"), "--dry-run"),
        ("backups", "restore", str(junk)),  # no --yes
    ):
        res = await hubctl(hub, *argv)
        assert res.code == 2, (argv, res)
        assert "error" in res.err or "usage" in res.err, (argv, res.err)
    res = await hubctl(hub, "backups", "restore", str(tmp_path / "missing.chub"), "--dry-run")
    assert res.err == (
        f"hubctl backups restore: error: cannot read {tmp_path / 'missing.chub'}: "
        "No such file or directory\n"
    )


async def test_backup_stored_not_found(backup_hub: Hub) -> None:
    res = await hubctl(backup_hub, "backups", "restore", "manual-nope.chub", "--stored",
                       "--dry-run")  # fmt: skip
    assert res.code == 4
    assert res.err == "hubctl: NotFound: no backup named manual-nope.chub [BACKUP_NOT_FOUND]\n"
    listed = await hubctl(backup_hub, "backups", "list")
    assert "no backups stored yet" in listed.out


# -- completion -----------------------------------------------------------------------


async def test_completion_of_ids_and_files(hub: Hub, client: HubClient, tmp_path: Path) -> None:
    await client.register("books", instance_id="b1", host="10.0.0.1", port=1, version="1", ttl=60)
    dep = (await client.deploy("books", "2.0.0")).id
    bash = await hubctl(hub, "completion", "bash")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    shim = bin_dir / "hubctl"
    shim.write_text(f'#!/bin/sh\nexec {sys.executable} -m hubctl "$@"\n')
    shim.chmod(0o755)
    (tmp_path / "hubctl.bash").write_text(bash.out)
    (tmp_path / "saved.chub").write_bytes(b"")
    script = f"""
cd {tmp_path}
source {tmp_path / "hubctl.bash"}
t() {{ COMP_WORDS=("$@"); COMP_CWORD=$((${{#COMP_WORDS[@]}}-1)); COMPREPLY=(); _hubctl;
      echo "${{COMPREPLY[*]}}"; }}
t hubctl deployments ""
t hubctl --target {hub.address} deployments status ""
t hubctl deployments start books 2 --strategy c
t hubctl backups ""
t hubctl backups restore sa
t hubctl backups restore saved.chub --d
"""
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "PYTHONPATH": str(ROOT)}
    done = await asyncio.to_thread(
        subprocess.run, ["bash", "-c", script], capture_output=True, text=True, env=env,
        timeout=60,
    )  # fmt: skip
    lines = done.stdout.splitlines()
    assert len(lines) == 6, done.stderr
    assert lines[0].split() == [
        "start", "list", "status", "pause", "resume", "abort", "rollback", "release-drains",
    ]  # fmt: skip
    assert lines[1].split()[0] == dep
    assert lines[2].split() == ["canary"]
    assert lines[3].split() == ["create", "list", "restore"]
    assert lines[4].split() == ["saved.chub"]
    assert lines[5].split() == ["--dry-run"]
    await client.abort_deployment(dep)


async def test_follow_stops_where_a_person_is_needed_and_at_timeout(
    hub: Hub, client: HubClient
) -> None:
    async with fleet(client, "fills", 2) as f:
        f.replace = False  # no replacements: the first batch misses its gate
        res = await hubctl(
            hub, "deployments", "start", "fills", "2.0.0", "--health-gate-timeout", "60",
            "-o", "json",
        )  # fmt: skip
        assert res.code == 0, res.err
        dep = res.json()["id"]
        await eventually(lambda: deployment_is(client, dep, "RUNNING"))
        # --timeout given: following ends when it passes, with the timeout code (3).
        timed = await follow(hub, "--timeout", "1", "deployments", "status", dep, "--watch")
        assert timed.code == 3, timed.err
        assert f"{dep} did not finish within --timeout 1s" in timed.err
        assert timed.out.splitlines()[0].split()[1] == "RUNNING"
        await hubctl(hub, "deployments", "abort", dep)

        # A gate that times out pauses the roll-out: following stops there (exit 8).
        res = await follow(
            hub, "deployments", "start", "fills", "3.0.0", "--health-gate-timeout", "1s",
            "--follow",
        )  # fmt: skip
        assert res.code == 8, res.err
        dep = res.out.splitlines()[0].split()[1].rstrip(":")
        assert res.out.splitlines()[-1].split()[1] == "PAUSED"
        assert f"{dep} stopped PAUSED: " in res.err and "it needs a person" in res.err
        watched = await follow(hub, "deployments", "status", dep, "--watch", "-o", "json")
        assert watched.code == 8, watched.err
        assert [line["state"] for line in _lines(watched)] == ["PAUSED"]
        await hubctl(hub, "deployments", "abort", dep)


async def test_json_writes_lease_ids_and_revisions_as_strings(hub: Hub, client: HubClient) -> None:
    # int64 as in proto3 JSON: jq and JavaScript would round a lease id as a number.
    reg = await client.register("ledger", host="10.0.0.9", port=9000, keep_alive=False)
    assert reg.instance is not None
    lease = str(reg.instance.lease_id)
    shown = (await hubctl(hub, "services", "show", "ledger", "-o", "json")).json()
    assert shown["instances"][0]["lease_id"] == lease
    assert isinstance(shown["revision"], str) and int(shown["revision"]) > 0
    listed = (await hubctl(hub, "services", "list", "-o", "json")).json()
    assert isinstance(listed["revision"], str)
    assert listed["services"][0]["instances"][0]["lease_id"] == lease
    tenant = (
        await hubctl(hub, "tenants", "create", "ledgers", "--tier", "pro", "-o", "json")
    ).json()
    assert isinstance(tenant["revision"], str)
    async with fleet(client, "books", 1):
        res = await hubctl(
            hub,
            "deployments",
            "start",
            "books",
            "2.0.0",
            "--health-gate-timeout",
            "60",
            "-o",
            "json",
        )
        assert res.code == 0, res.err
        dep = res.json()
        assert isinstance(dep["revision"], str)
        status = (await hubctl(hub, "deployments", "status", dep["id"], "-o", "json")).json()
        assert isinstance(status["revision"], str)
        await hubctl(hub, "deployments", "abort", dep["id"])


def test_int64_strings_leaves_config_values_alone() -> None:
    data = {
        "revision": 3493845877466214136,
        "values": {"revision": 5},
        "settings": {"lease_id": 7},
        "items": [{"lease_id": 2**62, "count": 4, "mod_revision": 9, "ok": True}],
    }
    assert int64_strings(data) == {
        "revision": "3493845877466214136",
        "values": {"revision": 5},
        "settings": {"lease_id": 7},
        "items": [{"lease_id": str(2**62), "count": 4, "mod_revision": "9", "ok": True}],
    }
