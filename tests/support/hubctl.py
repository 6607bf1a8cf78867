"""Running hubctl in tests: in-process through ``hubctl.run`` in a worker thread
(the hub runs in the test's event loop), its exit code and output captured."""

from __future__ import annotations

import asyncio
import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hub_server.app import Hub
from hubctl import run

ROOT = Path(__file__).resolve().parent.parent.parent  # the checkout


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


def table_row(out: str, first: str) -> list[str]:
    """The whitespace-split table row whose first cell is ``first``."""
    for line in out.splitlines():
        cells = line.split()
        if cells and cells[0] == first:
            return cells
    raise AssertionError(f"no row {first!r} in:\n{out}")
