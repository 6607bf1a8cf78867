"""The `central-hub` command. `health` runs before the server is imported: probes
run every few seconds for a replica's whole life, and the server's imports are
most of a probe's CPU (hub_server/probe.py). Everything else is hub_server/cli.py."""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["health"]:
        from hub_server import probe

        return probe.main(argv[1:])
    from hub_server import cli

    return cli.main(argv)
