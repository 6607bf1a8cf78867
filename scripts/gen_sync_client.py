"""Writes hub_client/_private/sync_client.py: the blocking HubClient, one method
per public method of the async HubClient, with the same names, arguments,
defaults, annotations and docstrings (``async with`` reads ``with``).

    .venv/bin/python scripts/gen_sync_client.py          # rewrite the file
    .venv/bin/python scripts/gen_sync_client.py --check  # exit 1 when it is stale

How each async method maps (by its kind and return annotation):
  async def -> R            blocking, same R, run in the client's loop thread
  async def -> Registration the blocking Registration handle
  def -> AsyncIterator[T]   Iterator[T] (a WatchIterator)
  def -> Allocation         the blocking Allocation (``with``)
  def -> CircuitGuard       the blocking CircuitGuard (``with``, or a decorator)
  property                  read through the loop thread
A return type that is some other handle with coroutine methods stops the
generator: it needs a blocking wrapper in sync_runtime.py first.
"""

from __future__ import annotations

import argparse
import builtins
import inspect
import re
import subprocess
import sys
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from hub_client._private import client as async_module  # noqa: E402
from hub_client._private import sync_runtime  # noqa: E402

OUT = ROOT / "hub_client/_private/sync_client.py"
RUFF = Path(sys.executable).parent / "ruff"

AsyncHubClient = async_module.HubClient

# Written by hand in SyncClientBase (or meaningless for a blocking client).
HAND_WRITTEN = {"with_context", "close", "context", "timeout"}
# The constructor's arguments that a blocking client cannot take.
NOT_IN_SYNC_INIT = {"channel"}
# Async handles and the blocking wrappers that replace them.
HANDLES = {"Registration": "_handle", "Allocation": "_local", "CircuitGuard": "_local"}

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*")
_TYPING_FROM = {"Iterator": "collections.abc", "Any": "typing", "Sequence": "collections.abc"}


def _sync_doc(doc: str | None) -> str:
    if not doc:
        return ""
    doc = doc.replace("``async with ", "``with ").replace("async with", "with")
    doc = doc.replace("``async for ", "``for ").replace("async for", "for")
    doc = doc.replace("``await ", "``").replace("await ", "")
    return doc


def _quote_doc(doc: str, indent: str) -> str:
    lines = doc.splitlines()
    body = "\n".join((indent + line) if line.strip() else "" for line in lines[1:])
    head = lines[0] if lines else ""
    if len(lines) == 1:
        return f'{indent}"""{head}"""\n'
    return f'{indent}"""{head}\n{body}\n{indent}"""\n'


class Imports:
    """The imports the generated annotations need, found from the async module's
    own names."""

    def __init__(self) -> None:
        self.lines: set[str] = set()

    def note(self, annotation: str) -> None:
        for name in _NAME.findall(annotation):
            head = name.split(".")[0]
            if head in vars(builtins) or head in ("None", "Iterator", "WatchIterator"):
                continue
            if head in HANDLES:
                continue  # the blocking wrappers, imported with the runtime
            if head in _TYPING_FROM:
                self.lines.add(f"from {_TYPING_FROM[head]} import {head}")
                continue
            obj = getattr(async_module, head, None)
            if obj is None:
                raise SystemExit(f"gen_sync_client: cannot resolve {head!r} in {annotation!r}")
            if isinstance(obj, ModuleType):
                package, _, leaf = obj.__name__.rpartition(".")
                self.lines.add(f"from {package} import {leaf}" if package else f"import {leaf}")
            else:
                self.lines.add(f"from {obj.__module__} import {head}")


def _check_plain(annotation: str, where: str) -> None:
    """A returned object with coroutine methods needs a blocking wrapper."""
    for name in _NAME.findall(annotation):
        obj = getattr(async_module, name.split(".")[0], None)
        if not inspect.isclass(obj) or name in HANDLES:
            continue
        if any(inspect.iscoroutinefunction(v) for v in vars(obj).values()) or hasattr(
            obj, "__aenter__"
        ):
            raise SystemExit(
                f"gen_sync_client: {where} returns {name}, which has coroutine methods: "
                "give it a blocking wrapper in sync_runtime.py and HANDLES here"
            )


def _params(sig: inspect.Signature, imports: Imports, skip: set[str]) -> tuple[str, str]:
    """The parameter list (without self) and the call's argument list."""
    params, args = [], []
    star = False
    for p in list(sig.parameters.values())[1:]:
        if p.name in skip:
            continue
        if p.kind is inspect.Parameter.KEYWORD_ONLY and not star:
            params.append("*")
            star = True
        text = p.name
        if p.annotation is not inspect.Parameter.empty:
            imports.note(str(p.annotation))
            text += f": {p.annotation}"
        if p.default is not inspect.Parameter.empty:
            text += f" = {p.default!r}"
        params.append(text)
        args.append(_arg(p))
    return ", ".join(params), ", ".join(args)


def _arg(p: inspect.Parameter) -> str:
    """How the wrapper passes a parameter on: by position or by keyword, as declared."""
    return f"{p.name}={p.name}" if p.kind is inspect.Parameter.KEYWORD_ONLY else p.name


def _method(name: str, fn: object, imports: Imports) -> str:
    sig = inspect.signature(fn)  # type: ignore[arg-type]
    params, args = _params(sig, imports, set())
    ret = str(sig.return_annotation)
    doc = _sync_doc(inspect.getdoc(fn))
    call = f"lambda hub: hub.{name}({args})"
    is_async = inspect.iscoroutinefunction(fn)
    if ret.startswith("AsyncIterator["):
        item = ret.removeprefix("AsyncIterator[").removesuffix("]")
        imports.note(item)
        _check_plain(item, name)
        ret, body = f"WatchIterator[{item}]", f"return self._iterate({call})"
    elif ret in HANDLES:
        helper = HANDLES[ret]
        if (helper == "_handle") != is_async:
            raise SystemExit(f"gen_sync_client: {name} returns {ret} in an unexpected way")
        body = f"return self.{helper}({ret}, {call})"
    elif is_async:
        imports.note(ret)
        _check_plain(ret, name)
        body = f"return self._run({call})"
    else:
        raise SystemExit(
            f"gen_sync_client: {name} is neither a coroutine nor a watch nor a known handle"
        )
    out = f"    def {name}(self{', ' if params else ''}{params}) -> {ret}:\n"
    if doc:
        out += _quote_doc(doc, "        ")
    return out + f"        {body}\n"


def _property(name: str, prop: property, imports: Imports) -> str:
    ret = str(inspect.signature(prop.fget).return_annotation)  # type: ignore[arg-type]
    imports.note(ret)
    return (
        "    @property\n"
        f"    def {name}(self) -> {ret}:\n"
        f"        return self._run(lambda hub: _read(hub, {name!r}))\n"
    )


def _init(imports: Imports) -> str:
    sig = inspect.signature(AsyncHubClient.__init__)
    params, _ = _params(sig, imports, NOT_IN_SYNC_INIT)
    kwargs = [_arg(p) for p in list(sig.parameters.values())[1:] if p.name not in NOT_IN_SYNC_INIT]
    return (
        f"    def __init__(self, {params}) -> None:\n"
        f"        self._start(functools.partial(AsyncHubClient, {', '.join(kwargs)}))\n"
    )


HEADER = '''"""hub_client.sync.HubClient: the async HubClient's surface, blocking.

GENERATED by scripts/gen_sync_client.py from hub_client/_private/client.py: do
not edit; change the async client (or the generator) and run the script.
How it runs (a loop thread of its own, forks): sync_runtime.py.
"""

from __future__ import annotations

import functools
from typing import Any

{imports}
from hub_client._private.client import HubClient as AsyncHubClient
from hub_client._private.sync_runtime import (
    Allocation,
    CircuitGuard,
    Registration,
    SyncClientBase,
    WatchIterator,
)


async def _read(hub: AsyncHubClient, name: str) -> Any:
    return getattr(hub, name)  # in the loop thread: a stub binds to its loop


class HubClient(SyncClientBase):
    """A blocking client of Central Hub, for threaded and prefork servers (Flask,
    Django, Celery, Gunicorn), with the async ``hub_client.HubClient``'s methods,
    arguments and models::

        with HubClient("127.0.0.1:7000", tenant_id="company_abc") as hub:
            reg = hub.register("data-bridge", host="10.0.0.5", port=8001)
            svc = hub.discover("data-bridge")
            for event in hub.watch("data-bridge", timeout=30):
                ...

    One client serves any number of threads. Leases are kept alive by a
    background thread (started by the first call, stopped by ``close()``);
    watches are iterators (``close()`` them, or use ``with``). A forked worker
    makes its own channel and thread on its first call (see sync_runtime.py).
    """

'''


def generate() -> str:
    imports = Imports()
    parts = [_init(imports)]
    for name, member in vars(AsyncHubClient).items():
        if name.startswith("_") or name in HAND_WRITTEN:
            continue
        if isinstance(member, property):
            parts.append(_property(name, member, imports))
        elif inspect.isfunction(member):
            parts.append(_method(name, member, imports))
    text = HEADER.replace("{imports}", "\n".join(sorted(imports.lines))) + "\n".join(parts)
    return _format(text)


def _format(text: str) -> str:
    fixed = subprocess.run(
        [str(RUFF), "check", "--fix", "--quiet", "--exit-zero", "--stdin-filename", str(OUT), "-"],
        input=text,
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
    ).stdout
    return subprocess.run(
        [str(RUFF), "format", "--quiet", "--stdin-filename", str(OUT), "-"],
        input=fixed,
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
    ).stdout


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail when the file is stale")
    args = parser.parse_args()
    text = generate()
    if args.check:
        if not OUT.exists() or OUT.read_text() != text:
            stale = OUT.relative_to(ROOT)
            print(f"{stale} is stale: run scripts/gen_sync_client.py", file=sys.stderr)
            return 1
        return 0
    OUT.write_text(text)
    print(f"wrote {OUT.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    assert sync_runtime  # the wrappers the generated module imports exist
    sys.exit(main())
