"""What build this is: the package version, the git commit when running from a
checkout, and the API (proto package) it speaks. Computed once per process."""

from __future__ import annotations

import functools
import subprocess
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from aitrading.hub.v1 import cluster_pb2

# The distribution that ships hub_client (the server's, central-hub, is released in
# step with it; a checkout installed before the split has only that one).
_DISTS = ("central-hub-client", "central-hub")
_FALLBACK_VERSION = "0+unknown"  # not installed (a bare source tree on sys.path)


@dataclass(frozen=True)
class VersionInfo:
    version: str
    commit: str  # short git commit, "" when not run from a git checkout
    api: str  # the proto package, e.g. aitrading.hub.v1

    @property
    def build(self) -> str:
        """``0.1.0 (commit abc1234)``, or ``0.1.0`` when the commit is unknown
        (GetClusterStatus' ``version``)."""
        return f"{self.version} (commit {self.commit})" if self.commit else self.version

    def describe(self, program: str) -> str:
        """``central-hub 0.1.0 (commit abc1234, API aitrading.hub.v1)``."""
        commit = f"commit {self.commit}, " if self.commit else ""
        return f"{program} {self.version} ({commit}API {self.api})"


def _git_commit() -> str:
    try:
        done = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=Path(__file__).resolve().parent,
            capture_output=True,
            text=True,
            timeout=5,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):  # no git, or it hung
        return ""
    return done.stdout.strip() if done.returncode == 0 else ""


@functools.cache
def version_info() -> VersionInfo:
    """This build's version, commit and API package (cached: git runs once)."""
    version = _FALLBACK_VERSION
    for dist in _DISTS:
        try:
            version = metadata.version(dist)
            break
        except metadata.PackageNotFoundError:
            continue
    return VersionInfo(version, _git_commit(), cluster_pb2.DESCRIPTOR.package)
