"""hubctl's machinery: the command table, the parser built from it, global
options, exit codes and error messages.

A command is an async function registered with ``@command("group verb", ...)``.
Adding a group is a module with a ``group(...)`` call and one decorated function
per verb, listed in ``COMMAND_MODULES``.

A command may define an option a global option also has (``audit --tenant``
filters by tenant; the global ``--tenant`` is the caller's x-tenant-id): after
the command's name the command's own meaning applies, and it takes its value
only from the command line, never from the environment.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import json
import os
import sys
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import IO, Any, NoReturn

import grpc
from aitrading.hub.v1.errors_pb2 import (
    ERROR_REASON_HUB_UNREACHABLE,
    ERROR_REASON_NO_ELIGIBLE_INSTANCE,
)

from hub_client import (
    TLS,
    AlreadyExists,
    HubClient,
    HubError,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    QuotaExceeded,
    Unauthenticated,
    Unavailable,
    VersionConflict,
    reason_text,
    version_info,
)
from hubctl.output import Output, use_colour

# Exit codes: stable, documented in `hubctl --help`.
EXIT_OK = 0
EXIT_ERROR = 1  # the hub answered with an error
EXIT_USAGE = 2  # bad command line
EXIT_UNAVAILABLE = 3  # the hub (or its etcd) cannot be reached or cannot serve
EXIT_NOT_FOUND = 4
EXIT_PERMISSION = 5  # unauthenticated, or not allowed (role, tenant, tier)
EXIT_QUOTA = 6  # over a tenant's quota (or `quota check` says it would not fit)
EXIT_CONFLICT = 7  # someone else changed it first, or it exists already
EXIT_NEEDS_PERSON = 8  # a followed roll-out stopped PAUSED or FAILED: someone must decide
EXIT_INTERRUPTED = 130  # Ctrl-C on a command that is not a watch

EPILOG = """\
environment:
  HUB_TARGET   hub address (--target)          HUB_OUTPUT  text or json (--output)
  HUB_TENANT   tenant id (--tenant)            HUB_USER    user id (--user)
  HUB_TIER     subscription tier (--tier)      HUB_TIMEOUT seconds (--timeout)
  NO_COLOR     set to disable colours

exit codes:
  0 ok   1 error from the hub   2 usage
  3 unavailable: hub unreachable, etcd down, or nothing eligible to pick;
    also --timeout passed (a followed roll-out not finished within --timeout)
  4 not found   5 unauthenticated or permission denied
  6 over quota (also: `quota check` says it would not fit)
  7 conflict: changed by someone else first (--expected-version), or exists already
  8 needs a person: a followed roll-out stopped PAUSED or FAILED
  130 interrupted (Ctrl-C ends a watch normally, with 0)

shell completion:
  source <(hubctl completion bash)      # or: hubctl completion zsh > ~/.zfunc/_hubctl
"""


@dataclass(frozen=True)
class Arg:
    """One argparse argument of a command; ``complete`` names a dynamic completer
    (``"services"``) for shell completion."""

    flags: tuple[str, ...]
    kwargs: dict[str, Any]
    complete: str = ""


def arg(*flags: str, complete: str = "", **kwargs: Any) -> Arg:
    return Arg(flags, kwargs, complete)


Handler = Callable[["Context", argparse.Namespace], Awaitable[int | None]]


@dataclass(frozen=True)
class Command:
    path: tuple[str, ...]
    help: str
    handler: Handler
    args: tuple[Arg, ...] = ()
    # Runs until Ctrl-C (watches, --hold): Ctrl-C is its normal end, exit 0.
    streaming: bool = False
    # Talks to the hub (a connection check runs first).
    needs_hub: bool = True
    hidden: bool = False


COMMANDS: dict[tuple[str, ...], Command] = {}
GROUPS: dict[str, str] = {}

# Modules whose import registers commands, in the order `hubctl --help` lists them.
COMMAND_MODULES = (
    "hubctl.commands",
    "hubctl.config_commands",
    "hubctl.tenant_commands",
    "hubctl.observability_commands",
    "hubctl.management_commands",
    "hubctl.routing_commands",
    "hubctl.webhook_commands",
    "hubctl.completion",
)


def group(name: str, help: str) -> None:
    """Declares a command group (``services``, ``circuits``, later ``config`` ...)."""
    GROUPS[name] = help


def command(
    path: str,
    help: str,
    *args: Arg,
    streaming: bool = False,
    needs_hub: bool = True,
    hidden: bool = False,
) -> Callable[[Handler], Handler]:
    """Registers a command: ``@command("services list", "list services", arg(...))``."""

    def register(fn: Handler) -> Handler:
        key = tuple(path.split())
        COMMANDS[key] = Command(key, help, fn, args, streaming, needs_hub, hidden)
        return fn

    return register


@dataclass
class Context:
    """What a command runs with."""

    args: argparse.Namespace
    output: Output
    target: str
    timeout: float
    hub: HubClient = field(init=False)
    # --timeout given on the command line: it also bounds following a roll-out
    # (which otherwise waits as long as the roll-out takes).
    deadline: float | None = None

    def emit(self, data: Any, text: Callable[..., Any]) -> None:
        self.output.emit(data, text)


class UsageError(Exception):
    """A bad command line found after parsing (exit 2)."""


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser that writes to the streams given to ``run``."""

    streams: tuple[IO[str], IO[str]] | None = None

    def _print_message(self, message: str, file: Any = None) -> None:
        if not message:
            return
        if self.streams is None:
            super()._print_message(message, file)
            return
        out, err = self.streams
        (out if file is None or file is sys.stdout else err).write(message)

    def exit(self, status: int = 0, message: str | None = None) -> NoReturn:
        if message:
            self._print_message(message, sys.stderr)
        raise SystemExit(status)


def _env(name: str, default: str) -> str:
    return os.environ.get(name, "") or default


class _GlobalGroup:
    """An argument group that leaves out the options a command defines itself."""

    def __init__(self, group: Any, skip: set[str]) -> None:
        self._group = group
        self._skip = skip

    def add_argument(self, *flags: str, **kwargs: Any) -> None:
        if not self._skip.intersection(flags):
            self._group.add_argument(*flags, **kwargs)


def _global_options(
    parser: argparse.ArgumentParser, *, suppress: bool, skip: set[str] | None = None
) -> None:
    """The options every command takes, before or after its name. On leaf parsers
    defaults are suppressed so a value given before the command survives; options
    the command defines itself (``skip``) are left out there."""

    def default(value: Any) -> Any:
        return argparse.SUPPRESS if suppress else value

    g = _GlobalGroup(parser.add_argument_group("global options"), skip or set())
    g.add_argument(
        "--target",
        default=default(_env("HUB_TARGET", "127.0.0.1:7000")),
        metavar="HOST:PORT[,...]",
        help="hub address, or several replicas separated by commas "
        "(env HUB_TARGET, default 127.0.0.1:7000)",
    )
    g.add_argument(
        "-o",
        "--output",
        choices=("text", "json"),
        default=default(_env("HUB_OUTPUT", "text")),
        help="text tables, or JSON for scripts (env HUB_OUTPUT)",
    )
    g.add_argument(
        "--tenant", default=default(_env("HUB_TENANT", "")), help="tenant id (env HUB_TENANT)"
    )
    g.add_argument("--user", default=default(_env("HUB_USER", "")), help="user id (env HUB_USER)")
    g.add_argument(
        "--tier",
        choices=("free", "pro", "enterprise"),
        default=default(_env("HUB_TIER", "") or None),
        help="subscription tier (env HUB_TIER)",
    )
    g.add_argument(
        "--timeout",
        type=float,
        default=default(None),  # None: HUB_TIMEOUT or 5; see run()
        metavar="SECONDS",
        help="connect and call deadline (env HUB_TIMEOUT, default 5); given here, it "
        "also bounds --follow/--watch of a roll-out (exit 3 when it passes)",
    )
    g.add_argument(
        "--token",
        default=default(_env("HUB_TOKEN", "")),
        help="bearer token for a hub with credentials (env HUB_TOKEN)",
    )
    g.add_argument(
        "--tls-ca",
        default=default(_env("HUB_TLS_CA", "")),
        metavar="PEM",
        help="connect with TLS, checking the hub against this CA (env HUB_TLS_CA)",
    )
    g.add_argument(
        "--tls-cert",
        default=default(_env("HUB_TLS_CERT", "")),
        metavar="PEM",
        help="client certificate for a hub that requires one (env HUB_TLS_CERT)",
    )
    g.add_argument(
        "--tls-key",
        default=default(_env("HUB_TLS_KEY", "")),
        metavar="PEM",
        help="client certificate's key (env HUB_TLS_KEY)",
    )
    g.add_argument(
        "--no-color",
        action="store_true",
        default=default(False),
        help="no colours (also: NO_COLOR set, or output not a terminal)",
    )


def build_parser(streams: tuple[IO[str], IO[str]] | None = None) -> argparse.ArgumentParser:
    """The parser for every registered command."""
    for module in COMMAND_MODULES:
        importlib.import_module(module)
    parser = _Parser(
        prog="hubctl",
        description="Operate a Central Hub: services, health, balancing, circuits, cluster, "
        "configuration, tenants and quotas, alerts, audit, error patterns, metrics.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.streams = streams
    parser.add_argument("--version", action="version", version=version_info().describe("hubctl"))
    _global_options(parser, suppress=False)
    top = parser.add_subparsers(dest="_command", metavar="COMMAND", parser_class=_Parser)
    top.required = True
    groups: dict[str, Any] = {}
    for path, cmd in COMMANDS.items():
        subparsers = top
        for depth, word in enumerate(path[:-1]):
            key = " ".join(path[: depth + 1])
            if key not in groups:
                gp = subparsers.add_parser(word, help=GROUPS.get(word, ""))
                gp.streams = streams
                groups[key] = gp.add_subparsers(
                    dest=f"_{key.replace(' ', '_')}", metavar="COMMAND", parser_class=_Parser
                )
                groups[key].required = True
            subparsers = groups[key]
        kwargs: dict[str, Any] = {"description": cmd.help}
        if not cmd.hidden:
            kwargs["help"] = cmd.help
        leaf = subparsers.add_parser(path[-1], **kwargs)
        leaf.streams = streams
        own: set[str] = set()
        for a in cmd.args:
            leaf.add_argument(*a.flags, **a.kwargs)
            own.update(a.flags)
        _global_options(leaf, suppress=True, skip=own)
        leaf.set_defaults(_cmd=cmd)
    return parser


# -- errors ------------------------------------------------------------------


def exit_code_for(error: HubError) -> int:
    if isinstance(error, NotFound):
        return EXIT_NOT_FOUND
    if isinstance(error, QuotaExceeded):
        return EXIT_QUOTA
    if isinstance(error, VersionConflict | AlreadyExists):
        return EXIT_CONFLICT
    if isinstance(error, PermissionDenied | Unauthenticated):
        return EXIT_PERMISSION
    if isinstance(error, Unavailable):
        return EXIT_UNAVAILABLE
    return EXIT_ERROR


# What to add to the hub's message, by status: what it means and what to try.
_HINTS: dict[grpc.StatusCode, str] = {
    grpc.StatusCode.UNAVAILABLE: "the hub or its etcd cannot serve now; retry shortly",
    grpc.StatusCode.DEADLINE_EXCEEDED: "no answer within --timeout; is the hub at {target} "
    "overloaded, or its etcd down?",
    grpc.StatusCode.UNAUTHENTICATED: "the hub wants credentials",
    grpc.StatusCode.PERMISSION_DENIED: "check --tenant/--user/--tier (or HUB_TENANT/HUB_TIER)",
    grpc.StatusCode.ABORTED: "someone else changed it first; read it again and retry",
    grpc.StatusCode.OUT_OF_RANGE: "that revision is older than the history the hub keeps",
    grpc.StatusCode.FAILED_PRECONDITION: "the current state does not allow this",
    grpc.StatusCode.RESOURCE_EXHAUSTED: "`hubctl usage {tenant}` shows what is in use",
    grpc.StatusCode.INTERNAL: "a bug in the hub; its log says more",
    grpc.StatusCode.UNIMPLEMENTED: "this hub does not offer that call (older version?)",
}


def describe(error: HubError, target: str) -> str:
    """One line: the typed exception's name, the hub's message, its reason, a hint."""
    parts = [f"{type(error).__name__}: {error.message}"]
    if error.reason:
        parts.append(f"[{error.reason}]")
    if isinstance(error, InvalidArgument) and error.field_violations:
        parts.append(
            "(" + "; ".join(f"{v.field}: {v.description}" for v in error.field_violations) + ")"
        )
    if isinstance(error, QuotaExceeded):
        # The first violation is usually the message itself.
        extra = [v for v in error.quota_violations if v.description not in error.message]
        if extra:
            parts.append("(" + "; ".join(f"{v.subject}: {v.description}" for v in extra) + ")")
    cause = error.metadata.get("cause")
    if cause:
        parts.append(f"(cause: {cause})")
    hint = _HINTS.get(error.code)
    if error.reason == reason_text(ERROR_REASON_NO_ELIGIBLE_INSTANCE):
        # UNAVAILABLE (so clients retry), but the hub is fine: say what to look at.
        hint = "no instance is usable now, for the reason above; `hubctl health` shows each one"
    if hint and error.reason != reason_text(ERROR_REASON_HUB_UNREACHABLE):
        tenant = error.metadata.get("tenant_id") or "TENANT"
        parts.append(f"- {hint.format(target=target, tenant=tenant)}")
    return " ".join(parts)


def error_json(error: HubError) -> dict[str, Any]:
    return {
        "error": {
            "type": type(error).__name__,
            "code": error.code.name,
            "reason": error.reason,
            "message": error.message,
            "metadata": error.metadata,
            "field_violations": [
                {"field": v.field, "description": v.description} for v in error.field_violations
            ],
            "quota_violations": [
                {"subject": v.subject, "description": v.description} for v in error.quota_violations
            ],
        }
    }


def _report(output: Output, error: HubError, target: str) -> int:
    if output.json:
        output.err.write(json.dumps(error_json(error)) + "\n")
    else:
        output.err.write(
            output.err_style("hubctl: ", "red", "bold") + describe(error, target) + "\n"
        )
    output.err.flush()
    return exit_code_for(error)


# -- running -----------------------------------------------------------------


def _tls(args: argparse.Namespace) -> TLS | None:
    if not (args.tls_ca or args.tls_cert):
        return None
    return TLS(ca=args.tls_ca or None, cert=args.tls_cert or None, key=args.tls_key or None)


def connect(ctx: Context, target: str) -> HubClient:
    """A client of ``target`` with the command line's identity, TLS and timeout
    (``ctx.hub`` is one of ``ctx.target``; `xds clients` asks every replica)."""
    args = ctx.args
    try:
        return HubClient(
            target,
            tenant_id=args.tenant,
            user_id=args.user,
            subscription_tier=args.tier or "",
            timeout=ctx.timeout,
            token=args.token or "",
            tls=_tls(args),
            # One command, one lookup: the hub's own answer, no local view to open.
            resolution="remote",
        )
    except ValueError as e:  # an address that is not host:port or does not resolve
        raise UsageError(f"--target: {e}") from None


async def _execute(ctx: Context, cmd: Command) -> int:
    args = ctx.args
    if not cmd.needs_hub:
        return await cmd.handler(ctx, args) or EXIT_OK
    async with connect(ctx, ctx.target) as hub:
        ctx.hub = hub
        try:
            await asyncio.wait_for(hub.channel.channel_ready(), ctx.timeout)
        except TimeoutError:
            raise Unavailable(
                f"cannot reach the hub at {ctx.target} within {ctx.timeout:g}s "
                "(is it running? `central-hub serve` starts one; "
                "--target or HUB_TARGET point elsewhere)",
                code=grpc.StatusCode.UNAVAILABLE,
                reason=reason_text(ERROR_REASON_HUB_UNREACHABLE),
            ) from None
        return await cmd.handler(ctx, args) or EXIT_OK


def run(argv: Sequence[str] | None, out: IO[str], err: IO[str]) -> int:
    """Runs one hubctl command line, printing to ``out``/``err``; returns the exit code."""
    parser = build_parser((out, err))
    try:
        args = parser.parse_args(list(argv) if argv is not None else None)
    except SystemExit as e:
        return int(e.code) if isinstance(e.code, int) else EXIT_USAGE
    cmd: Command = args._cmd
    output = Output(
        out, err, json_mode=args.output == "json", colour=use_colour(out, args.no_color)
    )
    timeout = args.timeout if args.timeout is not None else float(_env("HUB_TIMEOUT", "5"))
    ctx = Context(
        args=args, output=output, target=args.target, timeout=timeout, deadline=args.timeout
    )
    try:
        return asyncio.run(_execute(ctx, cmd))
    except KeyboardInterrupt:
        # Ctrl-C is how a watch (or `register --hold`) ends: that is success.
        streaming = cmd.streaming or getattr(args, "hold", False)
        return EXIT_OK if streaming else EXIT_INTERRUPTED
    except UsageError as e:
        err.write(f"hubctl {' '.join(cmd.path)}: error: {e}\n")
        return EXIT_USAGE
    except HubError as e:
        return _report(output, e, ctx.target)


def main(argv: Sequence[str] | None = None) -> int:
    """The ``hubctl`` console script."""
    try:
        return run(argv, sys.stdout, sys.stderr)
    except BrokenPipeError:
        # `hubctl services watch | head`: the reader left; leave quietly.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_OK
