"""`central-hub xds-bootstrap` (hub_server/xds/bootstrap.py): the bootstrap file of
a proxyless gRPC client. That real clients accept it is tests/test_xds_clients.py's
part (grpcio insecure and mTLS, grpc-js insecure)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from hub_server import cli
from hub_server.xds.bootstrap import BootstrapError, bootstrap


def test_insecure_bootstrap_for_a_hub_without_tls() -> None:
    doc = bootstrap("10.0.0.5:7000", node_id="quotes-1", tenant="acme", tier="Pro")
    [server] = doc["xds_servers"]
    assert server == {
        "server_uri": "10.0.0.5:7000",
        "channel_creds": [{"type": "insecure"}],
        "server_features": ["xds_v3", "ignore_resource_deletion"],
    }
    assert doc["node"] == {
        "id": "quotes-1",
        "locality": {},  # grpc-js needs it, even empty
        "metadata": {"tenant_id": "acme", "tier": "pro"},
    }
    assert "certificate_providers" not in doc


def test_several_replicas_as_a_grpc_target() -> None:
    for target in ("ipv4:10.0.0.1:7000,10.0.0.2:7000", "dns:///hubs.internal:7000"):
        assert bootstrap(target)["xds_servers"][0]["server_uri"] == target
    with pytest.raises(BootstrapError):
        bootstrap("dns:")


def test_node_ids_are_unique_and_metadata_only_when_given() -> None:
    a, b = bootstrap(), bootstrap()
    assert a["node"]["id"] != b["node"]["id"]
    assert "metadata" not in a["node"]
    assert a["xds_servers"][0]["server_uri"] == "127.0.0.1:7000"


def test_tls_bootstrap_names_absolute_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("ca.pem", "client.pem", "client.key"):
        (tmp_path / name).write_text("x")
    monkeypatch.chdir(tmp_path)
    doc = bootstrap("hub:7443", ca=Path("ca.pem"), cert=Path("client.pem"), key=Path("client.key"))
    files = {
        "ca_certificate_file": str(tmp_path / "ca.pem"),
        "certificate_file": str(tmp_path / "client.pem"),
        "private_key_file": str(tmp_path / "client.key"),
    }
    assert doc["xds_servers"][0]["channel_creds"] == [{"type": "tls", "config": files}]
    provider = doc["certificate_providers"]["default"]
    assert provider["plugin_name"] == "file_watcher"
    assert provider["config"] == {**files, "refresh_interval": "600s"}
    # TLS without a client certificate (a hub with TLS but no client CA).
    only_ca = bootstrap("hub:7443", ca=Path("ca.pem"))
    assert only_ca["xds_servers"][0]["channel_creds"][0]["config"] == {
        "ca_certificate_file": str(tmp_path / "ca.pem")
    }


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"server_uri": "no-port"}, "HOST:PORT"),
        ({"server_uri": "h:99999"}, "HOST:PORT"),
        ({"tier": "gold"}, "--tier 'gold'"),
        ({"cert": Path("c.pem")}, "--cert and --key go together"),
        ({"cert": Path("c.pem"), "key": Path("k.pem")}, "--cert needs --ca"),
        ({"ca": Path("/nonexistent/ca.pem")}, "no such file"),
    ],
)
def test_bad_flags_are_refused(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(BootstrapError, match=message):
        bootstrap(**kwargs)  # type: ignore[arg-type]


def test_the_command_prints_or_writes_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["xds-bootstrap", "--server-uri", "127.0.0.1:7100", "--node-id", "n1"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["node"]["id"] == "n1"
    out = tmp_path / "bootstrap.json"
    assert cli.main(["xds-bootstrap", "--tenant", "acme", "-o", str(out)]) == 0
    assert json.loads(out.read_text())["node"]["metadata"] == {"tenant_id": "acme"}
    assert cli.main(["xds-bootstrap", "--server-uri", "nope"]) == 2
    assert "HOST:PORT" in capsys.readouterr().err
