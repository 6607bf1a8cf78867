"""The Node packages of clients/node as a team gets them: packed with ``npm pack``
(whose prepack builds them) and installed from the tarballs into a scratch
folder, offline, from the npm cache that ``make install``'s ``npm ci`` filled.

The scratch folder's package-lock.json is made from the repository's, so npm
resolves nothing: every registry package is the exact version (and tarball)
the repository's lock names, which is what the cache holds."""

from __future__ import annotations

import json
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ROOT / "clients" / "node"
# The registry packages a consumer of ours installs beside them.
CONSUMER_DEPENDENCIES = (
    "@bufbuild/protobuf",
    "@connectrpc/connect",
    "@connectrpc/connect-node",
    "@grpc/grpc-js",
    "typescript",
    "@types/node",
)


@dataclass(frozen=True)
class Installed:
    folder: Path
    tarballs: dict[str, Path]  # package name -> .tgz


def npm_pack(package: Path, destination: Path) -> Path:
    """Packs one package (its prepack builds dist/); returns the tarball."""
    out = subprocess.run(
        ["npm", "pack", "--json", "--pack-destination", str(destination)],
        cwd=package,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    if out.returncode != 0:
        raise RuntimeError(f"npm pack {package} failed:\n{out.stdout}\n{out.stderr}")
    listing = json.loads(out.stdout[out.stdout.index("[") :])
    return destination / listing[0]["filename"]


def install(folder: Path) -> Installed:
    """Packs the stubs and client packages and installs them, with the consumer
    dependencies, into ``folder``; copies tests/node/packages there too."""
    folder.mkdir(parents=True, exist_ok=True)
    tarballs = {}
    for name in ("stubs", "client"):  # the client's build compiles against the stubs
        tgz = npm_pack(PACKAGES / name, folder)
        manifest = json.loads((PACKAGES / name / "package.json").read_text())
        tarballs[manifest["name"]] = tgz
    lock = json.loads((ROOT / "package-lock.json").read_text())
    locked = {k: dict(v) for k, v in lock["packages"].items() if k.startswith("node_modules/")}
    for entry in locked.values():
        entry.pop("dev", None)
        entry.pop("devOptional", None)
    deps = {name: locked[f"node_modules/{name}"]["version"] for name in CONSUMER_DEPENDENCIES}
    deps |= {name: f"file:./{tgz.name}" for name, tgz in tarballs.items()}
    manifest = {"name": "hub-consumer", "private": True, "dependencies": deps}
    (folder / "package.json").write_text(json.dumps(manifest, indent=2))
    (folder / "package-lock.json").write_text(
        json.dumps(
            {
                "name": "hub-consumer",
                "lockfileVersion": 3,
                "requires": True,
                "packages": {"": {"name": "hub-consumer", "dependencies": deps}, **locked},
            },
            indent=2,
        )
    )
    out = subprocess.run(
        ["npm", "install", "--offline", "--no-audit", "--no-fund", "--loglevel=error"],
        cwd=folder,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    if out.returncode != 0:
        raise RuntimeError(f"npm install --offline failed:\n{out.stdout}\n{out.stderr}")
    shutil.copytree(ROOT / "tests" / "node" / "packages", folder / "test", dirs_exist_ok=True)
    return Installed(folder, tarballs)
