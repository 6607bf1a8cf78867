"""The container image (Dockerfile), built as CI can build it here: Debian's
buildah with chroot isolation (`--format docker`, which keeps HEALTHCHECK), from
the debootstrapped base and the wheelhouse that `make image-deps` cached, with
no network (as root, buildah runs in a new network namespace holding only
loopback). Inside the result: `central-hub --version`, and the image's own CMD
(plus --insecure: it listens beyond loopback) answering the image's own
HEALTHCHECK command. `make test-image` runs just this file.

Skipped only where buildah is not installed; a missing cache is a failure that
names the install step."""

from __future__ import annotations

import importlib.util
import json
import os
import shlex
import shutil
import subprocess
import sys
import tomllib
import uuid
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from hub_server.cli import build_parser
from hub_server.embedded_etcd import free_port

ROOT = Path(__file__).resolve().parent.parent
pytestmark = [pytest.mark.image, pytest.mark.timeout(600)]


def _image_deps() -> ModuleType:
    spec = importlib.util.spec_from_file_location("image_deps", ROOT / "scripts/image_deps.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules["image_deps"] = module
    spec.loader.exec_module(module)
    return module


deps = _image_deps()
VERSION = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
# A private network namespace (root only) proves the build needs no network and
# lets the image's fixed ports (7000, 8080, 9090) be used as they are.
ISOLATED = os.geteuid() == 0 and all(shutil.which(tool) for tool in ("unshare", "ip"))


def _run(argv: list[str], timeout: float = 300, **kw: Any) -> subprocess.CompletedProcess[str]:
    if ISOLATED:
        up = 'ip link set lo up 2>/dev/null; exec "$@"'
        argv = ["unshare", "--net", "sh", "-c", up, "-", *argv]
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False, **kw)


def _commit() -> str:
    done = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
    )
    return done.stdout.strip() if done.returncode == 0 else "unknown"


VCS_REF = _commit()  # once: other commits may land while the image builds


@pytest.fixture(scope="module")
def image() -> Iterator[str]:
    if shutil.which("buildah") is None:
        pytest.skip("buildah is not installed (make image-deps installs Debian's buildah)")
    if not (deps.WHEELHOUSE / "requirements.txt").exists() or not deps.base_imported():
        pytest.fail(f"no cached base image or wheelhouse in {deps.CACHE}: run make image-deps")
    if (deps.WHEELHOUSE / "requirements.txt").read_text().split() != deps.requirements():
        pytest.fail("pyproject.toml's requirements changed since the wheelhouse: make image-deps")
    tag = f"localhost/central-hub-test:{uuid.uuid4().hex[:12]}"
    build_args = {
        "BASE_IMAGE": deps.BASE_IMAGE,
        "PIP_NO_INDEX": "1",
        "PIP_FIND_LINKS": "/wheelhouse",
        "VERSION": VERSION,
        "VCS_REF": VCS_REF,
    }
    argv = [
        "buildah",
        "bud",
        "--isolation",
        "chroot",
        "--format",
        "docker",
        "--quiet",
    ]
    argv += ["--volume", f"{deps.WHEELHOUSE}:/wheelhouse:ro", "--tag", tag]
    for name, value in build_args.items():
        argv += ["--build-arg", f"{name}={value}"]
    built = _run([*argv, str(ROOT)], timeout=540)
    assert built.returncode == 0, built.stdout[-3000:] + built.stderr[-3000:]
    try:
        yield tag
    finally:
        subprocess.run(["buildah", "rmi", "--force", tag], capture_output=True, check=False)


@pytest.fixture(scope="module")
def config(image: str) -> dict[str, Any]:
    inspected = subprocess.run(
        ["buildah", "inspect", "--type", "image", image], capture_output=True, text=True, check=True
    )
    return dict(json.loads(inspected.stdout)["Docker"]["config"])


@pytest.fixture(scope="module")
def container(image: str) -> Iterator[str]:
    made = subprocess.run(["buildah", "from", image], capture_output=True, text=True, check=True)
    name = made.stdout.strip()
    try:
        yield name
    finally:
        subprocess.run(["buildah", "rm", name], capture_output=True, check=False)


def _inside(container: str, script: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """A shell script run in the container as the image's user; `timeout` inside
    too, so nothing it starts outlives the test."""
    argv = ["buildah", "run", "--isolation", "chroot", container, "--"]
    return _run([*argv, "timeout", "-s", "KILL", str(int(timeout)), "sh", "-c", script], timeout)


def test_metadata_labels_volumes_ports_and_user(config: dict[str, Any]) -> None:
    labels = config["Labels"]
    assert labels["org.opencontainers.image.version"] == VERSION
    assert labels["org.opencontainers.image.revision"] == VCS_REF
    assert labels["org.opencontainers.image.licenses"] == "Apache-2.0"
    assert set(config["Volumes"]) == {"/var/lib/central-hub/data", "/var/lib/central-hub/backups"}
    assert set(config["ExposedPorts"]) == {"7000/tcp", "8080/tcp", "9090/tcp"}
    assert config["User"] == "10001:10001"
    assert config["Entrypoint"] == ["central-hub"]
    assert "CENTRAL_HUB_CONFIG=/etc/central-hub/hub.toml" in config["Env"]
    health = config["Healthcheck"]["Test"]
    assert health[0] == "CMD" and health[1:3] == ["central-hub", "health"]
    build_parser().parse_args(health[2:])  # flags the CLI knows
    build_parser().parse_args(config["Cmd"])


def test_version_inside_and_no_build_leftovers(container: str) -> None:
    done = _inside(
        container,
        "central-hub --version && id -u"
        " && test ! -e /opt/central-hub/bin/pip && test ! -e /src && test ! -e /wheels"
        " && ! /opt/central-hub/bin/python -c 'import setuptools' 2>/dev/null"
        " && ! command -v cc && ! command -v gcc",
    )
    assert done.returncode == 0, done.stdout + done.stderr
    version, uid = done.stdout.split("\n")[:2]
    assert version.startswith(f"central-hub {VERSION} (") and "API aitrading.hub.v1" in version
    assert uid == "10001"


def test_the_image_command_answers_its_healthcheck(config: dict[str, Any], container: str) -> None:
    """The CMD as a single node with embedded etcd, on the image's settings file,
    probed with the HEALTHCHECK's command until SERVING; its metrics endpoint
    answers (set in that file only); then SIGTERM, as a container runtime stops it."""
    serve, probe = list(config["Cmd"]), list(config["Healthcheck"]["Test"][1:])
    env = ["CENTRAL_HUB_INSECURE=true"]  # it listens beyond loopback, with no credentials
    metrics = "127.0.0.1:9090"
    if not ISOLATED:  # sharing the host's network: the image's ports may be taken
        grpc_port, ui_port, metrics_port = free_port(), free_port(), free_port()
        metrics = f"127.0.0.1:{metrics_port}"
        env += [
            f"CENTRAL_HUB_LISTEN=127.0.0.1:{grpc_port}",
            f"CENTRAL_HUB_UI_LISTEN=127.0.0.1:{ui_port}",
            f"CENTRAL_HUB_METRICS_LISTEN={metrics}",
        ]
        probe = [a.replace("127.0.0.1:7000", f"127.0.0.1:{grpc_port}") for a in probe]
    scrape = f"import urllib.request; urllib.request.urlopen('http://{metrics}/metrics', timeout=5)"
    script = f"""
        env {shlex.join(env)} {shlex.join(["central-hub", *serve])} & hub=$!
        tries=0
        until {shlex.join(probe)}; do
          tries=$((tries + 1))
          if [ $tries -ge 60 ] || ! kill -0 $hub 2>/dev/null; then kill $hub; exit 7; fi
          sleep 0.5
        done
        python3 -c {shlex.quote(scrape)} && echo "metrics answered"
        kill -TERM $hub; wait $hub; echo "hub exited $?"
    """
    done = _inside(container, script)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SERVING" in done.stdout
    assert "metrics answered" in done.stdout
    assert "hub exited 0" in done.stdout
    assert "embedded etcd serving" in done.stderr
