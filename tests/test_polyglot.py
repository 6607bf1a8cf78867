"""The generated stubs of other languages against a live hub: Node (gen/node, over
@connectrpc/connect-node), TypeScript (gen/ts, type-checked with tsc) and Python
betterproto2 (gen/python_betterproto, over grpcio). Each runs as a subprocess,
so the hub in this process keeps serving while the client blocks."""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import sys
from pathlib import Path

import pytest

from hub_server.app import Hub

ROOT = Path(__file__).resolve().parents[1]
TIMEOUT = 60.0


async def _run(*args: str, env: dict[str, str] | None = None) -> tuple[int, str]:
    """Runs a command from the repo root; returns its exit code and merged output."""
    proc = await asyncio.create_subprocess_exec(
        *args,
        cwd=ROOT,
        env={**os.environ, **(env or {})},
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), TIMEOUT)
    except TimeoutError:
        proc.kill()
        out, _ = await proc.communicate()
        pytest.fail(f"{args} did not finish within {TIMEOUT}s:\n{out.decode(errors='replace')}")
    return proc.returncode or 0, out.decode(errors="replace")


def _node() -> str:
    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not on PATH")
    return node


async def test_node_client_against_live_hub(hub: Hub) -> None:
    node = _node()
    code, out = await _run(
        node, "--test", "--test-reporter=tap", "tests/node/", env={"HUB_ADDR": hub.address}
    )
    assert code == 0, f"node --test failed ({code}):\n{out}"
    # A skipped test exits 0 too: make sure the hub was really exercised.
    counts = dict(re.findall(r"^# (pass|fail|skipped|todo|cancelled) (\d+)$", out, re.M))
    assert int(counts.get("pass", 0)) >= 1, out
    assert counts.get("skipped") == counts.get("fail") == counts.get("cancelled") == "0", out


async def test_typescript_stubs_typecheck() -> None:
    _node()
    tsc = ROOT / "node_modules" / ".bin" / "tsc"
    assert tsc.exists(), "node_modules/.bin/tsc is missing: run `npm ci` at the repo root"
    code, out = await _run(str(tsc), "-p", "gen/ts/tsconfig.json", "--noEmit")
    assert code == 0, f"tsc failed ({code}):\n{out}"


async def test_betterproto_client_against_live_hub(hub: Hub) -> None:
    # gen/ on the path: the betterproto2 output is the package `python_betterproto`.
    pythonpath = os.pathsep.join(filter(None, [str(ROOT / "gen"), os.environ.get("PYTHONPATH")]))
    code, out = await _run(
        sys.executable,
        "tests/polyglot/betterproto_client.py",
        hub.address,
        env={"PYTHONPATH": pythonpath},
    )
    assert code == 0, f"betterproto2 client failed ({code}):\n{out}"
