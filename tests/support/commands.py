"""Running a command from a test without blocking the hub in the same process."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path


async def run(
    *args: str, cwd: Path, env: dict[str, str] | None = None, timeout: float = 120.0
) -> tuple[int, str]:
    """Runs a command; returns its exit code and merged output (killed after
    ``timeout``, with what it printed so far)."""
    proc = await asyncio.create_subprocess_exec(
        *args,
        cwd=cwd,
        env={**os.environ, **(env or {})},
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), timeout)
    except TimeoutError:
        proc.kill()
        out, _ = await proc.communicate()
        return -1, f"{args} did not finish within {timeout}s:\n" + out.decode(errors="replace")
    return proc.returncode or 0, out.decode(errors="replace")
