"""Install step of the container image test (`make image-deps`, which `make test`
runs; the Makefile installs Debian's buildah and debootstrap first). It fetches,
once, what tests/test_image.py builds the image from, into a cache outside the
clone (``$CENTRAL_HUB_CACHE``, default ``~/.cache/central-hub``), so that the test
itself downloads nothing:

- a minimal Debian rootfs with python3, made by debootstrap from Debian's packages
  (no image registry is reachable here), kept as a tarball and imported into
  buildah's storage as the image's BASE_IMAGE;
- a wheelhouse of the hub's dependencies (and its build backend) for that rootfs'
  Python, fetched again only when pyproject.toml's requirements change.

    python scripts/image_deps.py                # fetch what is missing, import the base
    python3 scripts/image_deps.py requirements  # what the image installs first (stdlib only)
"""

from __future__ import annotations

import argparse
import fcntl
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path
from types import ModuleType
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
CACHE = Path(os.environ.get("CENTRAL_HUB_CACHE") or Path.home() / ".cache/central-hub") / "image"
SUITE = "bookworm"  # Debian 12: python3 is 3.11, glibc 2.36
PYTHON_VERSION, GLIBC_MINOR = "3.11", 36
MIRROR = os.environ.get("DEBIAN_MIRROR", "http://deb.debian.org/debian")
ROOTFS = CACHE / f"rootfs-{SUITE}.tar"
WHEELHOUSE = CACHE / "wheelhouse"
BASE_IMAGE = f"localhost/central-hub-base:{SUITE}"

# What the base image holds beyond debootstrap's minbase: python3 and its venv
# module (the Dockerfile's builder makes a virtualenv).
PACKAGES = ("python3", "python3-venv")
# Left out of the tarball: package caches, indexes and documentation.
TRIM = ("var/cache/apt", "var/lib/apt/lists", "usr/share/doc", "usr/share/man", "usr/share/locale")


def _as_root(argv: list[str]) -> list[str]:
    return argv if os.geteuid() == 0 else ["sudo", *argv]


def _projects() -> list[dict[str, Any]]:
    """The repository's distributions: the server's pyproject.toml and any under
    packaging/ (scripts/build_dists.py builds them all)."""
    paths = [ROOT / "pyproject.toml", *sorted(ROOT.glob("packaging/*/pyproject.toml"))]
    return [tomllib.loads(path.read_text()) for path in paths]


def _name(requirement: str) -> str:
    found = re.match(r"[A-Za-z0-9._-]+", requirement)
    assert found, requirement
    return re.sub(r"[._-]+", "-", found.group(0)).lower()


def install_requirements() -> list[str]:
    """What the image's virtualenv takes from the index (or the wheelhouse)
    before the repository's own wheels: their dependencies, less each other,
    and their build backend."""
    projects = _projects()
    ours = {_name(p["project"]["name"]) for p in projects}
    wanted = {
        requirement
        for p in projects
        for requirement in p["project"]["dependencies"] + p["build-system"]["requires"]
        if _name(requirement) not in ours
    }
    return sorted(wanted)


def requirements() -> list[str]:
    """The wheelhouse: install_requirements() and the xds-protos wheel that
    scripts/envoy_protos.py takes envoy's protos from."""
    envoy = _envoy_protos()
    return sorted([*install_requirements(), f"{envoy.XDS_PROTOS}=={envoy.XDS_PROTOS_VERSION}"])


def _envoy_protos() -> ModuleType:
    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        import envoy_protos
    finally:
        sys.path.pop(0)
    return envoy_protos


def make_rootfs() -> None:
    work = Path(tempfile.mkdtemp(prefix="central-hub-rootfs-"))
    try:
        target = work / "rootfs"
        subprocess.run(
            _as_root(
                [
                    "debootstrap",
                    "--variant=minbase",
                    f"--include={','.join(PACKAGES)}",
                    SUITE,
                    str(target),
                    MIRROR,
                ]
            ),
            check=True,
        )
        for path in (p for p in TRIM if (target / p).exists()):
            subprocess.run(
                _as_root(["find", str(target / path), "-mindepth", "1", "-delete"]), check=True
            )
        partial = ROOTFS.with_suffix(".tar.partial")
        with partial.open("wb") as out:
            subprocess.run(_as_root(["tar", "-C", str(target), "-c", "."]), stdout=out, check=True)
        partial.replace(ROOTFS)
    finally:
        subprocess.run(_as_root(["rm", "-rf", str(work)]), check=False)


def _platforms() -> list[str]:
    """Every manylinux tag a glibc 2.GLIBC_MINOR machine of this architecture runs
    (pip does not widen --platform by itself)."""
    arch = platform.machine()
    tags = [f"manylinux_2_{minor}_{arch}" for minor in range(GLIBC_MINOR, 4, -1)]
    return tags + [f"manylinux{legacy}_{arch}" for legacy in ("2014", "2010", "1")]


def fill_wheelhouse(wanted: list[str]) -> None:
    partial = CACHE / "wheelhouse.partial"
    shutil.rmtree(partial, ignore_errors=True)
    argv = [sys.executable, "-m", "pip", "download", "--quiet", "--dest", str(partial)]
    argv += ["--only-binary=:all:", "--implementation", "cp", "--python-version", PYTHON_VERSION]
    argv += ["--abi", "cp" + PYTHON_VERSION.replace(".", "")]
    for tag in _platforms():
        argv += ["--platform", tag]
    subprocess.run([*argv, *wanted], check=True)
    (partial / "requirements.txt").write_text("\n".join(wanted) + "\n")
    shutil.rmtree(WHEELHOUSE, ignore_errors=True)
    partial.replace(WHEELHOUSE)


def _wheelhouse_holds(wanted: list[str]) -> bool:
    recorded = WHEELHOUSE / "requirements.txt"
    return recorded.exists() and recorded.read_text().split() == wanted


def base_imported() -> bool:
    found = subprocess.run(
        ["buildah", "images", "--quiet", BASE_IMAGE], capture_output=True, text=True, check=False
    )
    return found.returncode == 0 and bool(found.stdout.strip())


def import_base() -> None:
    """buildah has no `import`: a scratch container gets the tarball's contents."""
    container = subprocess.run(
        ["buildah", "from", "scratch"], capture_output=True, text=True, check=True
    ).stdout.strip()
    try:
        subprocess.run(["buildah", "add", "--quiet", container, str(ROOTFS), "/"], check=True)
        subprocess.run(["buildah", "config", "--cmd", "/bin/bash", container], check=True)
        subprocess.run(["buildah", "commit", "--quiet", container, BASE_IMAGE], check=True)
    finally:
        subprocess.run(["buildah", "rm", container], capture_output=True, check=False)


def fetch() -> None:
    CACHE.mkdir(parents=True, exist_ok=True)
    with (CACHE / ".lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # two installs at once share one fetch
        fresh_rootfs = not ROOTFS.exists()
        if fresh_rootfs:
            print(f"image-deps: debootstrap {SUITE} into {ROOTFS}", flush=True)
            make_rootfs()
        wanted = requirements()
        if not _wheelhouse_holds(wanted):
            print(f"image-deps: wheelhouse for Python {PYTHON_VERSION} in {WHEELHOUSE}", flush=True)
            fill_wheelhouse(wanted)
        if fresh_rootfs or not base_imported():
            print(f"image-deps: importing {ROOTFS.name} as {BASE_IMAGE}", flush=True)
            import_base()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "command",
        nargs="?",
        choices=("fetch", "requirements"),
        default="fetch",
        help="fetch what is missing (default), or print what the image installs "
        "before the repository's wheels (the Dockerfile's builder runs this)",
    )
    if parser.parse_args().command == "requirements":
        print("\n".join(install_requirements()))
    else:
        fetch()
    return 0


if __name__ == "__main__":
    sys.exit(main())
