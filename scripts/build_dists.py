"""Builds the Python distributions of this repository, by audience:

    aitrading-protos     the generated stubs (gen/python: the `aitrading` package)
    central-hub-client   hub_client and hubctl, on aitrading-protos
    central-hub          the server (hub_server), on both

    .venv/bin/python scripts/build_dists.py                  # every wheel into dist/
    .venv/bin/python scripts/build_dists.py --out D central-hub-client aitrading-protos
    .venv/bin/python scripts/build_dists.py --wheelhouse .venv/wheelhouse

Each distribution is built from a copy of just the files it packages (in a
temporary folder laid out as the repository is, so packaging/*/pyproject.toml's
``../..`` paths hold), with the running interpreter's setuptools and no
download; builds running side by side share no build/ folder. ``--wheelhouse``
also fetches the wheels the client-side distributions depend on (grpcio,
protobuf, ...), so tests install them offline: `make install` runs it.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# Distribution -> (its project folder, the repository paths it needs).
DISTS: dict[str, tuple[str, tuple[str, ...]]] = {
    "aitrading-protos": ("packaging/aitrading-protos", ("gen/python/aitrading",)),
    "central-hub-client": ("packaging/central-hub-client", ("hub_client", "hubctl")),
    "central-hub": (".", ("pyproject.toml", "README.md", "LICENSE", "hub_server")),
}
# What a service team installs; the wheelhouse holds their dependencies.
CLIENT_SIDE = ("aitrading-protos", "central-hub-client")

_SKIP = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info", "build")


def _stage(name: str, into: Path) -> Path:
    project, paths = DISTS[name]
    for rel in paths:
        source = ROOT / rel
        target = into / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        if source.is_dir():
            shutil.copytree(source, target, ignore=_SKIP)
        else:
            shutil.copy(source, target)
    if project != ".":
        # pyproject.toml, README.md, and LICENSE (a link to the repository's, copied as a file).
        shutil.copytree(ROOT / project, into / project, ignore=_SKIP)
    return into / project


def build(names: list[str], out: Path) -> list[Path]:
    """The wheels of ``names``, built into ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    wheels: list[Path] = []
    for name in names:
        with tempfile.TemporaryDirectory(prefix=f"build-{name}-") as tmp:
            project = _stage(name, Path(tmp))
            made = Path(tmp) / "wheels"
            subprocess.run(
                [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps",
                 "--no-build-isolation", "--wheel-dir", str(made), str(project)],
                check=True,
            )  # fmt: skip
            for wheel in made.glob("*.whl"):
                target = out / wheel.name
                shutil.move(wheel, target)
                wheels.append(target)
    return wheels


def fill_wheelhouse(wheelhouse: Path) -> None:
    """Fetches what the client-side wheels depend on (never the wheels themselves:
    tests build those fresh)."""
    with tempfile.TemporaryDirectory(prefix="client-wheels-") as tmp:
        ours = build(list(CLIENT_SIDE), Path(tmp))
        wheelhouse.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--quiet", "--dest", str(wheelhouse),
             *map(str, ours)],
            check=True,
        )  # fmt: skip
    for wheel in ours:
        (wheelhouse / wheel.name).unlink(missing_ok=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", help=f"of {', '.join(DISTS)} (default: all)")
    parser.add_argument("--out", type=Path, default=ROOT / "dist")
    parser.add_argument("--wheelhouse", type=Path, help="fetch the client side's dependencies")
    args = parser.parse_args()
    unknown = set(args.names) - set(DISTS)
    if unknown:
        parser.error(f"unknown distribution(s): {', '.join(sorted(unknown))}")
    if args.wheelhouse is not None:
        fill_wheelhouse(args.wheelhouse)
        if not args.names:
            return 0
    for wheel in build(args.names or list(DISTS), args.out):
        print(wheel)
    return 0


if __name__ == "__main__":
    sys.exit(main())
