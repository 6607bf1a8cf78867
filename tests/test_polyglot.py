"""The Python betterproto2 stubs (gen/python_betterproto) against a live hub, sync
over grpcio and async over grpclib. The client runs as a subprocess, so the hub
in this process keeps serving while it blocks. The Node and TypeScript packages
have their own tests: tests/test_node_packages.py."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from hub_server.app import Hub
from tests.support.commands import run

ROOT = Path(__file__).resolve().parents[1]


async def test_betterproto_client_against_live_hub(hub: Hub) -> None:
    # gen/ on the path: the betterproto2 output is the package `python_betterproto`.
    pythonpath = os.pathsep.join(filter(None, [str(ROOT / "gen"), os.environ.get("PYTHONPATH")]))
    code, out = await run(
        sys.executable,
        "tests/polyglot/betterproto_client.py",
        hub.address,
        cwd=ROOT,
        env={"PYTHONPATH": pythonpath},
    )
    assert code == 0, f"betterproto2 client failed ({code}):\n{out}"
