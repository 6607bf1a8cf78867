"""hubctl deployments and backups: roll a new version of a service out (rolling
or canary), follow it batch by batch, pause, resume, abort or roll it back; export
the hub's keyspace to a file, list the backups the hub keeps, restore one.

``deployments status ID --watch`` (and ``--follow`` on start, resume and
rollback) prints a line per change until the deployment reaches a final state.
The hub's stream stays open after that, so the command stops by itself when it
sees one, or when the roll-out stops PAUSED or FAILED (it needs a person then);
it exits 0 if the deployment SUCCEEDED (ROLLED_BACK for ``rollback --follow``),
8 if it stopped PAUSED or FAILED, 1 if it ended otherwise, and 3 when a
``--timeout`` given on the command line passes first.

``backups restore FILE`` rewrites the hub's keyspace: ``--dry-run`` reports per
kind of key what would change and writes nothing; the real restore wants ``--yes``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import os
import re
import time
from collections.abc import AsyncGenerator, Iterable
from pathlib import Path
from typing import Any

from aitrading.hub.v1 import backup_pb2, deployment_pb2

from hub_client import BackupInfo, Deployment, KindChanges, RestoreReport, resume_watch
from hubctl.app import (
    EXIT_ERROR,
    EXIT_NEEDS_PERSON,
    EXIT_UNAVAILABLE,
    Context,
    UsageError,
    arg,
    command,
    group,
)
from hubctl.output import (
    Style,
    ago,
    clock,
    iso,
    key_values,
    local_time,
    seconds_of,
    span,
    table,
)

group(
    "deployments",
    "start, follow, pause, resume, abort and roll back roll-outs, release the drains they left",
)
group("backups", "export the hub's keyspace, list stored backups, restore one")

STRATEGIES = ("rolling", "canary")
FINAL_STATES = ("SUCCEEDED", "FAILED", "ABORTED", "ROLLED_BACK")
# Where a roll-out stops until someone resumes, rolls back or aborts it: following
# it ends there (exit 8), not only at a final state.
NEEDS_PERSON = ("PAUSED", "FAILED")
# Colours by deployment and batch state.
_COLOURS = {
    "PENDING": "dim",
    "RUNNING": "cyan",
    "PAUSED": "yellow",
    "SUCCEEDED": "green",
    "FAILED": "red",
    "ABORTED": "red",
    "ROLLING_BACK": "yellow",
    "ROLLED_BACK": "magenta",
    "DRAINING": "yellow",
    "OBSERVING": "cyan",
    "DONE": "green",
    "CANCELLED": "dim",
}
# Old instances per batch state, as the hub's DeploymentProgress counts them.
_BUCKETS = {
    "PENDING": "pending",
    "DRAINING": "draining",
    "OBSERVING": "draining",
    "DONE": "replaced",
    "CANCELLED": "cancelled",
}
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h)")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
# Backups move the whole keyspace: allow them at least this long, whatever --timeout.
_TRANSFER_TIMEOUT = 300.0


def _state(st: Style, word: str, text: str | None = None) -> str:
    return st(word if text is None else text, _COLOURS.get(word, ""))


# -- argument types ----------------------------------------------------------------


def duration(text: str) -> float:
    """Seconds from ``90``, ``90s``, ``5m``, ``1m30s`` or ``500ms`` (an argparse type)."""
    value = text.strip()
    try:
        seconds = float(value)
    except ValueError:
        if not re.fullmatch(rf"(?:{_DURATION_PART.pattern})+", value):
            raise argparse.ArgumentTypeError(
                f"{text!r} is not a duration (30, 30s, 5m, 1m30s, 500ms)"
            ) from None
        seconds = sum(float(n) * _UNITS[u] for n, u in _DURATION_PART.findall(value))
    if not math.isfinite(seconds) or seconds < 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a duration (30, 30s, 5m, 1m30s, 500ms)")
    return seconds


def share(text: str) -> float:
    """A share in (0, 1] from ``0.2`` or ``20%`` (an argparse type)."""
    value = text.strip()
    try:
        number = float(value[:-1]) / 100 if value.endswith("%") else float(value)
    except ValueError:
        number = math.nan
    if not 0 < number <= 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a share in (0, 1] (0.2 or 20%)")
    return number


# -- deployments: JSON shapes --------------------------------------------------------


def settings_json(s: deployment_pb2.DeploymentSettings) -> dict[str, Any]:
    return {
        "batch_size": s.batch_size,
        "max_unavailable": s.max_unavailable,
        "health_gate_timeout_s": seconds_of(s.health_gate_timeout),
        "canary_share": s.canary_share,
        "canary_observation_s": seconds_of(s.canary_observation),
        "rollback_on_failure": s.rollback_on_failure,
    }


def progress_json(
    d: Deployment, p: deployment_pb2.DeploymentProgress | None = None
) -> dict[str, Any]:
    """The hub's progress summary (from GetDeployment or WatchDeployment), or the
    same figures worked out from the batches when the answer carries none."""
    counts = dict.fromkeys(("pending", "draining", "replaced", "cancelled"), 0)
    if p is not None:
        counts.update(p.instances)
        return {"batch": p.batch, "batches": p.batches, "instances": counts, "phase": p.phase}
    for b in d.batches:
        counts[_BUCKETS.get(b.state, "pending")] += len(b.instance_ids)
    batch = min(d.current_batch + 1, len(d.batches)) if d.state != "PENDING" else 0
    return {"batch": batch, "batches": len(d.batches), "instances": counts, "phase": d.phase}


def deployment_json(
    d: Deployment, p: deployment_pb2.DeploymentProgress | None = None
) -> dict[str, Any]:
    raw = d.raw
    return {
        "id": d.id,
        "service": d.service,
        "target_version": d.target_version,
        "previous_version": raw.previous_version,
        "strategy": d.strategy.lower(),
        "state": d.state,
        "finished": d.finished,
        "phase": d.phase,
        "reason": d.reason,
        "current_batch": d.current_batch,
        "progress": progress_json(d, p),
        "settings": settings_json(raw.settings),
        "batches": [
            {
                "index": b.index,
                "canary": b.canary,
                "state": b.state,
                "instance_ids": b.instance_ids,
                "replacement_ids": b.replacement_ids,
                "started_at": iso(m.started_at),
                "healthy_at": iso(m.healthy_at),
                "finished_at": iso(m.finished_at),
            }
            for b, m in zip(d.batches, raw.batches, strict=True)
        ],
        "created_at": iso(raw.created_at),
        "updated_at": iso(raw.updated_at),
        "finished_at": iso(raw.finished_at),
        "revision": d.revision,
    }


# -- deployments: text ---------------------------------------------------------------


def _seconds(ts: Any) -> float:
    return float(ts.ToNanoseconds() / 1e9)


def _versions(d: Deployment) -> str:
    before = d.raw.previous_version
    return f"{before} -> {d.target_version}" if before else d.target_version


def _names(ids: list[str], most: int = 3) -> str:
    if not ids:
        return "-"
    shown = ", ".join(ids[:most])
    return shown + (f" +{len(ids) - most}" if len(ids) > most else "")


def _plan(d: Deployment) -> str:
    s = d.raw.settings
    if d.strategy == "CANARY":
        observed = seconds_of(s.canary_observation)
        watch = f"observed {span(observed)}" if observed else "not observed"
        text = f"canary ({s.canary_share:.0%} first, {watch}), then batches of {s.batch_size}"
    else:
        text = f"rolling, batches of {s.batch_size}"
    if s.max_unavailable:
        text += f", at most {s.max_unavailable} out of rotation"
    text += f", health gate {span(seconds_of(s.health_gate_timeout))}"
    if s.rollback_on_failure:
        text += ", rolls back on failure"
    return text


def _bar(done: int, total: int, st: Style, width: int = 10) -> str:
    part = done / total if total else 0.0
    filled = round(part * width)
    return f"[{st('#' * filled, 'green')}{st('.' * (width - filled), 'dim')}] {part:4.0%}"


def _progress_text(p: dict[str, Any], st: Style) -> str:
    n = p["instances"]
    total = sum(n.values())
    text = f"batch {p['batch']}/{p['batches']}  {_bar(n['replaced'], total, st)}  "
    text += f"{n['replaced']}/{total} replaced"
    for word in ("draining", "cancelled"):
        if n[word]:
            text += f", {n[word]} {word}"
    return text


def _deployment_text(d: Deployment, p: dict[str, Any], st: Style) -> Iterable[str]:
    raw = d.raw
    created, finished = _seconds(raw.created_at), _seconds(raw.finished_at)
    pairs = [
        ("deployment", st(d.id, "bold")),
        ("service", d.service),
        ("version", _versions(d)),
        ("strategy", _plan(d)),
        ("state", _state(st, d.state)),
        ("phase", d.phase or "-"),
        ("progress", _progress_text(p, st)),
    ]
    if d.reason:
        pairs.append(("reason", d.reason))
    pairs.append(("started", f"{local_time(raw.created_at)} ({ago(created)})"))
    if finished:
        took = span(max(finished - created, 0.0))
        pairs.append(("finished", f"{local_time(raw.finished_at)} (took {took})"))
    else:
        pairs.append(("updated", ago(_seconds(raw.updated_at))))
    pairs.append(("revision", str(d.revision)))
    yield from key_values(pairs, st)
    if not d.batches:
        return
    yield ""
    now = time.time()
    body = []
    for b, m in zip(d.batches, raw.batches, strict=True):
        started, done = _seconds(m.started_at), _seconds(m.finished_at)
        body.append(
            [f"{b.index + 1}" + (" canary" if b.canary else ""), _state(st, b.state),
             _names(b.instance_ids), _names(b.replacement_ids),
             ago(started, now) if started else "-",
             span(max(done - started, 0.0)) if started and done else "-"]
        )  # fmt: skip
    yield from table(["BATCH", "STATE", "INSTANCES", "REPLACEMENTS", "DRAINED", "TOOK"], body, st)


def _event_line(d: Deployment, p: dict[str, Any], initial: bool, st: Style) -> str:
    note = d.phase
    if d.reason and d.state in ("PAUSED", "FAILED", "ABORTED", "ROLLING_BACK", "ROLLED_BACK"):
        note = f"{note}: {d.reason}" if note and note != d.reason else d.reason
    tail = st(f"rev {d.revision}" + ("  (current)" if initial else ""), "dim")
    return (
        f"{st(clock(), 'dim')}  {_state(st, d.state, f'{d.state:<12}')}  {st(d.id, 'bold')}  "
        f"{d.service} {_versions(d)}  {_progress_text(p, st)}  {note or '-'}  {tail}"
    )


def _summary(d: Deployment) -> str:
    raw = d.raw
    took = span(max(_seconds(raw.finished_at) - _seconds(raw.created_at), 0.0))
    if d.state == "SUCCEEDED":
        n = sum(len(b.instance_ids) for b in d.batches)
        return (
            f"{d.id} SUCCEEDED in {took}: {d.service} runs {d.target_version} "
            f"({n} instance{'s' if n != 1 else ''} replaced in {len(d.batches)} batches)"
        )
    return f"{d.id} ended {d.state} after {took}" + (f": {d.reason}" if d.reason else "")


def _stopped(d: Deployment) -> str:
    what = f"{d.id} stopped {d.state}" + (f": {d.reason}" if d.reason else "")
    if d.state == "PAUSED":
        return (
            f"{what}; it needs a person: hubctl deployments resume {d.id}, "
            f"rollback {d.id} or abort {d.id}"
        )
    return f"{what}; it needs a person: hubctl deployments rollback {d.id}"


# -- deployments: following one ----------------------------------------------------------


async def _watch_deployment(
    ctx: Context, deployment_id: str
) -> AsyncGenerator[tuple[Deployment, deployment_pb2.DeploymentProgress, bool], None]:
    """(deployment, progress, initial) for its current state and every change;
    resumes from the last revision after a disconnect. It never ends by itself:
    the caller stops at a final state."""
    initial = True

    def open_stream(start: int) -> Any:
        return ctx.hub.deployment_stub.WatchDeployment(
            deployment_pb2.WatchDeploymentRequest(id=deployment_id, start_revision=start),
            metadata=ctx.hub.context.metadata(),
            wait_for_ready=True,
        )

    def interrupted(why: str) -> None:
        ctx.output.note(f"deployment watch interrupted ({why}); resuming")

    stream = resume_watch(open_stream, on_interrupt=interrupted)
    async with contextlib.aclosing(stream):
        async for msg in stream:
            if msg.HasField("deployment"):  # a RESYNC_REQUIRED has none: the current state follows
                yield Deployment.from_pb(msg.deployment), msg.progress, initial
                initial = False


async def follow(ctx: Context, deployment_id: str, goal: str = "SUCCEEDED") -> int:
    """Prints a line (or a JSON object) per change until the roll-out ends or
    stops: exit 0 if it ended in ``goal`` (ROLLED_BACK after an asked-for
    roll-back), 8 if it stopped PAUSED or FAILED (someone must decide), 1 if it
    ended otherwise, 3 if a --timeout given passed first."""
    if ctx.deadline is None:
        return await _follow(ctx, deployment_id, goal)
    try:
        return await asyncio.wait_for(_follow(ctx, deployment_id, goal), ctx.deadline)
    except TimeoutError:
        ctx.output.note(
            f"{deployment_id} did not finish within --timeout {ctx.deadline:g}s; "
            "it goes on (hubctl deployments status to see where it is)"
        )
        return EXIT_UNAVAILABLE


async def _follow(ctx: Context, deployment_id: str, goal: str) -> int:
    last = -1
    async with contextlib.aclosing(_watch_deployment(ctx, deployment_id)) as stream:
        async for d, p, initial in stream:
            if d.revision == last:
                continue  # the same state again (after a resume)
            last = d.revision
            progress = progress_json(d, p)

            def line(
                st: Style, d: Deployment = d, p: dict[str, Any] = progress, initial: bool = initial
            ) -> str:
                return _event_line(d, p, initial, st)

            ctx.output.event({**deployment_json(d, p), "initial": initial}, line)
            if d.state == goal:
                ctx.output.note(_summary(d))
                return 0
            if d.state in NEEDS_PERSON:
                ctx.output.note(_stopped(d))
                return EXIT_NEEDS_PERSON
            if d.state in FINAL_STATES:
                ctx.output.note(_summary(d))
                return EXIT_ERROR
    raise AssertionError("unreachable: the watch never ends by itself")  # pragma: no cover


def _id_arg() -> Any:
    return arg("deployment_id", metavar="ID", complete="deployments", help="the deployment id")


def _follow_arg(goal: str = "SUCCEEDED") -> Any:
    return arg(
        "-f",
        "--follow",
        action="store_true",
        help=f"then follow it, a line per change, until it ends (exit 1 unless {goal}) or "
        "stops PAUSED or FAILED (exit 8)",
    )


FOLLOW = _follow_arg()
REASON = arg("--reason", default="", help="why (kept with the deployment)")


# -- deployments: commands ------------------------------------------------------------


@command(
    "deployments start",
    "roll a version of a service out, batch by batch (one active deployment per service)",
    arg("service", metavar="SERVICE", complete="services",
        help="the service (it must have instances)"),
    arg("version", metavar="VERSION", help="the version to roll out"),
    arg("--strategy", choices=STRATEGIES, default="rolling",
        help="rolling: batches one after another; canary: a first small batch observed "
             "healthy for a while, then the rest (default rolling)"),
    arg("--batch-size", type=int, default=1, metavar="N", help="instances per batch (default 1)"),
    arg("--max-unavailable", type=int, default=0, metavar="N",
        help="instances out of rotation at once; caps --batch-size (default: the batch size)"),
    arg("--health-gate-timeout", type=duration, default=None, metavar="DURATION",
        help="how long a batch may take to get healthy replacements (default 5m)"),
    arg("--canary-share", type=share, default=None, metavar="SHARE",
        help="canary: share of the instances in the first batch, 0.2 or 20%% (default 10%%)"),
    arg("--canary-observation", type=duration, default=None, metavar="DURATION",
        help="canary: how long its replacements must stay healthy (default 1m)"),
    arg("--rollback-on-failure", action="store_true",
        help="roll back when a batch misses its health gate (default: pause)"),
    FOLLOW,
)  # fmt: skip
async def deployments_start(ctx: Context, args: argparse.Namespace) -> int:
    if args.batch_size < 1:
        raise UsageError(f"--batch-size must be at least 1 (got {args.batch_size})")
    if args.max_unavailable < 0:
        raise UsageError(f"--max-unavailable must be 0 or more (got {args.max_unavailable})")
    if args.health_gate_timeout is not None and args.health_gate_timeout <= 0:
        raise UsageError("--health-gate-timeout must be more than 0")
    if args.strategy != "canary":
        for flag, value in (("--canary-share", args.canary_share),
                            ("--canary-observation", args.canary_observation)):  # fmt: skip
            if value is not None:
                raise UsageError(f"{flag} applies to --strategy canary only")
    d = await ctx.hub.deploy(
        args.service,
        args.version,
        strategy=args.strategy,
        batch_size=args.batch_size,
        max_unavailable=args.max_unavailable,
        health_gate_timeout=args.health_gate_timeout,
        canary_share=args.canary_share or 0.0,
        canary_observation=args.canary_observation,
        rollback_on_failure=args.rollback_on_failure,
    )

    def text(st: Style) -> Iterable[str]:
        n = len(d.batches)
        yield (
            f"started {st(d.id, 'bold')}: {d.service} {_versions(d)} in {n} "
            f"batch{'es' if n != 1 else ''} ({_plan(d)})"
        )
        if args.follow:
            return
        body = [
            [f"{b.index + 1}" + (" canary" if b.canary else ""), _names(b.instance_ids, 8)]
            for b in d.batches
        ]
        yield from table(["BATCH", "INSTANCES"], body, st)

    if args.follow:
        if not ctx.output.json:
            ctx.emit(None, text)
        ctx.output.note(f"following {d.id} until it ends; Ctrl-C stops following (not it)")
        return await follow(ctx, d.id)
    ctx.emit(deployment_json(d), text)
    ctx.output.note(f"follow it: hubctl deployments status {d.id} --watch")
    return 0


@command(
    "deployments list",
    "deployments, newest first",
    arg("service", nargs="?", default="", metavar="SERVICE", complete="services",
        help="only this service's"),
    arg("--active", action="store_true", help="only those not yet in a final state"),
    arg("--limit", type=int, default=20, help="deployments to show (default 20; 0: all)"),
)  # fmt: skip
async def deployments_list(ctx: Context, args: argparse.Namespace) -> None:
    if args.limit < 0:
        raise UsageError("--limit must be 0 (all) or more")
    found = await ctx.hub.deployments(args.service, active_only=args.active)
    shown = found[: args.limit] if args.limit else found
    data = {"deployments": [deployment_json(d) for d in shown], "more": len(shown) < len(found)}

    def text(st: Style) -> Iterable[str]:
        if not found:
            what = "active deployments" if args.active else "deployments"
            yield st(f"no {what}" + (f" of {args.service}" if args.service else ""), "dim")
            return
        now = time.time()
        body = []
        for d in shown:
            done = sum(b.state == "DONE" for b in d.batches)
            note = d.reason if d.reason and d.state != "SUCCEEDED" else d.phase
            body.append(
                [st(d.id, "bold"), d.service, _versions(d), d.strategy.lower(),
                 _state(st, d.state), f"{done}/{len(d.batches)}",
                 ago(_seconds(d.raw.created_at), now), note or "-"]
            )  # fmt: skip
        headers = ["ID", "SERVICE", "VERSION", "STRATEGY", "STATE", "BATCHES", "STARTED"]
        yield from table([*headers, "NOTE"], body, st)

    ctx.emit(data, text)
    if len(shown) < len(found):
        ctx.output.note(f"{len(found) - len(shown)} older deployments; --limit 0 shows all")


@command(
    "deployments status",
    "one deployment, batch by batch; --watch follows it to a final state",
    _id_arg(),
    arg("-w", "--watch", action="store_true",
        help="print a line per change until it ends (exit 1 unless it SUCCEEDED) or "
             "stops PAUSED or FAILED (exit 8)"),
    streaming=True,
)  # fmt: skip
async def deployments_status(ctx: Context, args: argparse.Namespace) -> int:
    if args.watch:
        ctx.output.note(f"following {args.deployment_id} on {ctx.target} until it ends; "
                        "Ctrl-C to stop")  # fmt: skip
        return await follow(ctx, args.deployment_id)
    resp = await ctx.hub.call(
        ctx.hub.deployment_stub.GetDeployment,
        deployment_pb2.GetDeploymentRequest(id=args.deployment_id),
    )
    d = Deployment.from_pb(resp.deployment)
    p = progress_json(d, resp.progress)
    ctx.emit(deployment_json(d, resp.progress), lambda st: _deployment_text(d, p, st))
    return 0


async def _change(
    ctx: Context, deployment_id: str, verb: str, op: Any, *, follow_goal: str = ""
) -> int:
    """Reads the deployment, applies ``op``, prints the state before and after;
    with ``follow_goal`` then follows it to a final state."""
    before = await ctx.hub.deployment(deployment_id)
    after: Deployment = await op()

    def text(st: Style) -> list[str]:
        line = (
            f"{verb} {st(after.id, 'bold')} ({after.service} {_versions(after)}): "
            f"{_state(st, before.state)} -> {_state(st, after.state)}"
        )
        if after.reason:
            line += f"  {st(after.reason, 'dim')}"
        return [line]

    if follow_goal:
        if not ctx.output.json:
            ctx.emit(None, text)
        return await follow(ctx, deployment_id, follow_goal)
    ctx.emit({**deployment_json(after), "previous_state": before.state}, text)
    return 0


@command("deployments pause", "stop a running roll-out where it is", _id_arg(), REASON)
async def deployments_pause(ctx: Context, args: argparse.Namespace) -> int:
    return await _change(
        ctx,
        args.deployment_id,
        "paused",
        lambda: ctx.hub.pause_deployment(args.deployment_id, args.reason),
    )


@command(
    "deployments resume",
    "continue a paused roll-out (its health gate starts anew)",
    _id_arg(),
    FOLLOW,
)
async def deployments_resume(ctx: Context, args: argparse.Namespace) -> int:
    return await _change(
        ctx,
        args.deployment_id,
        "resumed",
        lambda: ctx.hub.resume_deployment(args.deployment_id),
        follow_goal="SUCCEEDED" if args.follow else "",
    )


@command(
    "deployments abort",
    "stop a roll-out for good; drained instances not yet retired go back into service",
    _id_arg(),
    REASON,
)
async def deployments_abort(ctx: Context, args: argparse.Namespace) -> int:
    return await _change(
        ctx,
        args.deployment_id,
        "aborted",
        lambda: ctx.hub.abort_deployment(args.deployment_id, args.reason),
    )


@command(
    "deployments rollback",
    "bring the service back to the version it ran before",
    _id_arg(),
    REASON,
    _follow_arg("ROLLED_BACK"),
)
async def deployments_rollback(ctx: Context, args: argparse.Namespace) -> int:
    return await _change(
        ctx,
        args.deployment_id,
        "rolling back",
        lambda: ctx.hub.rollback_deployment(args.deployment_id, args.reason),
        follow_goal="ROLLED_BACK" if args.follow else "",
    )


@command(
    "deployments release-drains",
    "put every instance the deployment left drained (and still registered) back into use, "
    "whatever its state",
    _id_arg(),
    REASON,
)
async def deployments_release_drains(ctx: Context, args: argparse.Namespace) -> int:
    resp = await ctx.hub.call(
        ctx.hub.deployment_stub.ReleaseDeploymentDrains,
        deployment_pb2.ReleaseDeploymentDrainsRequest(id=args.deployment_id, reason=args.reason),
    )
    d = Deployment.from_pb(resp.deployment)
    released = list(resp.released_instance_ids)

    def text(st: Style) -> list[str]:
        what = f"{st(d.id, 'bold')} ({d.service} {_versions(d)}, {_state(st, d.state)})"
        if not released:
            return [f"{what}: {st('no drained instance left to release', 'dim')}"]
        n = len(released)
        return [f"released {n} instance{'s' if n != 1 else ''} of {what}: {', '.join(released)}"]

    ctx.emit({**deployment_json(d), "released_instance_ids": released}, text)
    return 0


# -- backups -------------------------------------------------------------------------


def backup_json(b: BackupInfo) -> dict[str, Any]:
    return {
        "name": b.name or None,
        "size_bytes": b.size_bytes,
        "revision": b.revision,
        "created_at": iso(b.created_at.timestamp()),
        "hub_id": b.hub_id,
        "key_count": b.key_count,
        "lease_bound_count": b.lease_bound_count,
        "sha256": b.sha256,
        "scheduled": b.scheduled,
    }


def changes_json(kind: str, c: KindChanges) -> dict[str, Any]:
    return {
        "kind": kind,
        "added": c.added,
        "updated": c.updated,
        "removed": c.removed,
        "unchanged": c.unchanged,
        "skipped_lease_bound": c.skipped_lease_bound,
        "kept_live": c.kept_live,
        "kept_records": c.kept_records,
        "append_only": c.append_only,
        "changed": c.changed,
    }


def restore_json(r: RestoreReport, source: str) -> dict[str, Any]:
    return {
        "source": source,
        "dry_run": r.dry_run,
        "revision": r.revision,
        "backup": backup_json(r.backup),
        "kinds": [changes_json(kind, c) for kind, c in sorted(r.kinds.items())],
        "total": changes_json("total", r.total),
        "notes": r.notes,
        "transactions": r.transactions,
    }


def _size(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB"):
        if size < 1024:
            return f"{n} B" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} GiB"


def _holds(b: BackupInfo) -> str:
    lease = f" ({b.lease_bound_count} lease-bound, not restored)" if b.lease_bound_count else ""
    return f"revision {b.revision}, {b.key_count} keys{lease}, {_size(b.size_bytes)}"


def _transfer_timeout(ctx: Context) -> float:
    return max(ctx.timeout, _TRANSFER_TIMEOUT)


@command(
    "backups create",
    "export the hub's whole keyspace at one revision to FILE (and/or keep it on the hub)",
    arg("file", nargs="?", default=None, metavar="FILE", complete="files",
        help="where to write the backup (replaced if it exists)"),
    arg("--store", action="store_true",
        help="also keep it in the hub's backup directory (without FILE: only there)"),
)  # fmt: skip
async def backups_create(ctx: Context, args: argparse.Namespace) -> None:
    path = Path(args.file) if args.file else None
    if path is None and not args.store:
        raise UsageError("give FILE to write the backup to, or --store to keep it on the hub")
    if path is not None and (path.is_dir() or not path.parent.is_dir()):
        what = "is a directory" if path.is_dir() else "is in a directory that does not exist"
        raise UsageError(f"cannot write {path}: it {what}")
    b, data = await ctx.hub.export_backup(
        store=args.store, download=path is not None, timeout=_transfer_timeout(ctx)
    )
    if path is not None:
        tmp = path.with_name(f".{path.name}.partial")
        try:
            await asyncio.to_thread(tmp.write_bytes, data)
            await asyncio.to_thread(os.replace, tmp, path)
        except OSError as e:
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise UsageError(f"cannot write {path}: {e.strerror or e}") from None

    def text(st: Style) -> Iterable[str]:
        if path is not None:
            yield f"wrote {st(str(path), 'bold')}: {_holds(b)}"
        if b.name:
            yield f"kept on the hub as {st(b.name, 'bold')}" + ("" if path else f": {_holds(b)}")
        yield st(f"taken {local_time(b.created_at.timestamp())} by {b.hub_id}, "
                 f"sha256 {b.sha256[:16]}...", "dim")  # fmt: skip

    ctx.emit({**backup_json(b), "file": str(path) if path else None, "stored": bool(b.name)}, text)


@command("backups list", "the backups kept in the hub's backup directory, newest first")
async def backups_list(ctx: Context, args: argparse.Namespace) -> None:
    resp = await ctx.hub.call(ctx.hub.backup_stub.ListBackups, backup_pb2.ListBackupsRequest())
    found = [BackupInfo.from_pb(b) for b in resp.backups]
    hub_id = resp.header.hub_id
    data = {"directory": resp.directory or None, "hub_id": hub_id,
            "backups": [backup_json(b) for b in found]}  # fmt: skip

    def text(st: Style) -> Iterable[str]:
        if not resp.directory:
            yield st(f"{hub_id or 'this hub'} keeps no backups: it runs without --backup-dir "
                     "(`backups create FILE` still works)", "dim")  # fmt: skip
            return
        yield from key_values([("directory", f"{resp.directory} (on {hub_id})")], st)
        if not found:
            yield st("no backups stored yet: `hubctl backups create --store` makes one", "dim")
            return
        yield ""
        now = time.time()
        body = [
            [st(b.name, "bold"), local_time(b.created_at.timestamp()),
             ago(b.created_at.timestamp(), now), str(b.revision), str(b.key_count),
             _size(b.size_bytes), "scheduled" if b.scheduled else "manual"]
            for b in found
        ]  # fmt: skip
        headers = ["NAME", "CREATED", "AGE", "REVISION", "KEYS", "SIZE", "KIND"]
        yield from table(headers, body, st)

    ctx.emit(data, text)


def _count(n: int, colour: str, st: Style) -> str:
    return st(str(n), colour) if n else st("0", "dim")


def _restore_text(r: RestoreReport, source: str, st: Style) -> Iterable[str]:
    t = r.total
    counts = f"{t.added} added, {t.updated} updated, {t.removed} removed, {t.unchanged} unchanged"
    if r.dry_run:
        yield (
            f"{st('dry run', 'yellow', 'bold')} of {st(source, 'bold')}: would change "
            f"{t.changed} keys ({counts}); nothing was written"
        )
    else:
        yield (
            f"restored {st(source, 'bold')}: {t.changed} keys changed ({counts}) "
            f"in {r.transactions} transaction{'s' if r.transactions != 1 else ''}, "
            f"now at revision {r.revision}"
        )
    b = r.backup
    yield st(f"the backup: {_holds(b)}, taken {local_time(b.created_at.timestamp())} "
             f"by {b.hub_id}", "dim")  # fmt: skip
    yield ""
    # Append-only records (audit, alert history, config history) are only added
    # to: KEPT RECORDS counts their entries not in the backup, which stay.
    body = [
        [kind if c.changed else st(kind, "dim"), _count(c.added, "green", st),
         _count(c.updated, "yellow", st), _count(c.removed, "red", st), str(c.unchanged),
         str(c.skipped_lease_bound), str(c.kept_live), str(c.kept_records),
         "yes" if c.append_only else st("no", "dim")]
        for kind, c in sorted(r.kinds.items())
    ]  # fmt: skip
    body.append(
        [st("total", "bold"), str(t.added), str(t.updated), str(t.removed), str(t.unchanged),
         str(t.skipped_lease_bound), str(t.kept_live), str(t.kept_records), ""]
    )  # fmt: skip
    headers = ["KIND", "ADDED", "UPDATED", "REMOVED", "UNCHANGED", "LEASE-BOUND", "KEPT LIVE",
               "KEPT RECORDS", "APPEND-ONLY"]  # fmt: skip
    yield from table(headers, body, st)
    for note in r.notes:
        yield st(f"note: {note}", "dim")


@command(
    "backups restore",
    "make the hub's state what a backup holds (keys it lacks are deleted, except "
    "append-only records: audit, alert history, config history); --dry-run first "
    "shows what would change",
    arg("file", metavar="FILE", complete="files",
        help="a backup file (from `backups create`), or with --stored a backup the hub keeps"),
    arg("--stored", action="store_true",
        help="FILE names a backup in the hub's backup directory (see `backups list`)"),
    arg("--dry-run", action="store_true",
        help="only report, per kind of key, what would change; write nothing"),
    arg("--yes", action="store_true",
        help="really restore (required without --dry-run): this rewrites the hub's state"),
)  # fmt: skip
async def backups_restore(ctx: Context, args: argparse.Namespace) -> None:
    if not args.dry_run and not args.yes:
        raise UsageError(
            "a restore rewrites the hub's state (keys not in the backup are deleted): "
            "see what would change with --dry-run, then restore with --yes"
        )
    data: bytes | None = None
    if not args.stored:
        try:
            data = await asyncio.to_thread(Path(args.file).read_bytes)
        except OSError as e:
            raise UsageError(f"cannot read {args.file}: {e.strerror or e}") from None
    report = await ctx.hub.restore(
        data,
        dry_run=args.dry_run,
        stored=args.file if args.stored else "",
        timeout=_transfer_timeout(ctx),
    )
    source = f"stored backup {args.file}" if args.stored else args.file
    data_json = {**restore_json(report, args.file), "stored": args.stored}
    ctx.emit(data_json, lambda st: _restore_text(report, source, st))
    if report.dry_run and report.total.changed:
        again = " --stored" if args.stored else ""
        ctx.output.note(f"to restore it: hubctl backups restore {args.file}{again} --yes")
