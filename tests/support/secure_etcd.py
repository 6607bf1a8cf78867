"""An etcd as production runs it: client TLS with client certificates required,
and authentication on (a root user and a hub user whose role may use only the
hub's prefix). JWT tokens with a short TTL, so a hub must authenticate again
while it runs."""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from hub_server.embedded_etcd import etcd_binary, free_port
from tests.support.certs import CertificateAuthority, Issued

HUB_PREFIX = "/hub/v1/"


@dataclass
class HubLogin:
    user: str
    password_file: Path


class SecureEtcd:
    def __init__(self, directory: Path, *, token_ttl: str = "2s") -> None:
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        self.ca = CertificateAuthority(directory, "etcd-ca")
        self.server = self.ca.issue("etcd-server", server=True)
        # etcd takes a client certificate's CN as the user when no token is sent.
        self.root = self.ca.issue("root")
        self.hub_client = self.ca.issue("central-hub")
        self.port = free_port()
        self.peer_port = free_port()
        self.token_ttl = token_ttl
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def endpoint(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    def _jwt_keys(self) -> tuple[Path, Path]:
        key = ec.generate_private_key(ec.SECP256R1())
        private, public = self.directory / "jwt.key", self.directory / "jwt.pub"
        private.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
        public.write_bytes(
            key.public_key().public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
        )
        return private, public

    def start(self) -> None:
        private, public = self._jwt_keys()
        client = f"https://127.0.0.1:{self.port}"
        peer = f"http://127.0.0.1:{self.peer_port}"
        args = [
            etcd_binary(),
            "--name", "secure",
            "--data-dir", str(self.directory / "data"),
            "--listen-client-urls", client,
            "--advertise-client-urls", client,
            "--listen-peer-urls", peer,
            "--initial-advertise-peer-urls", peer,
            "--initial-cluster", f"secure={peer}",
            "--cert-file", str(self.server.cert),
            "--key-file", str(self.server.key),
            "--trusted-ca-file", str(self.ca.cert),
            "--client-cert-auth",
            "--auth-token",
            f"jwt,pub-key={public},priv-key={private},sign-method=ES256,ttl={self.token_ttl}",
            "--log-level", "warn",
        ]  # fmt: skip
        setpriv = shutil.which("setpriv")
        if setpriv:
            args = [setpriv, "--pdeathsig", "TERM", "--", *args]
        with open(self.directory / "etcd.log", "ab") as log:
            self.proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 30
        while self.etcdctl("endpoint", "health", check=False).returncode != 0:
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"secure etcd did not start; see {self.directory}/etcd.log")
            time.sleep(0.1)

    def etcdctl(
        self, *args: str, cert: Issued | None = None, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        cert = cert or self.root
        argv = [
            str(Path(sys.executable).parent / "etcdctl"),
            "--endpoints", self.endpoint,
            "--cacert", str(self.ca.cert),
            "--cert", str(cert.cert),
            "--key", str(cert.key),
            "--dial-timeout", "2s",
            *args,
        ]  # fmt: skip
        return subprocess.run(
            argv,
            capture_output=True,
            text=True,
            check=check,
            timeout=30,
        )

    def enable_auth(self, user: str = "hub", password: str = "hub-password") -> HubLogin:
        """root, and ``user`` whose role reads and writes the hub's prefix only."""
        self.etcdctl("user", "add", "root", "--new-user-password", "root-password")
        self.etcdctl("role", "add", "hub-role")
        self.etcdctl(
            "role", "grant-permission", "hub-role", "--prefix=true", "readwrite", HUB_PREFIX
        )
        self.etcdctl("user", "add", user, "--new-user-password", password)
        self.etcdctl("user", "grant-role", user, "hub-role")
        self.etcdctl("auth", "enable")
        password_file = self.directory / f"{user}.password"
        password_file.write_text(password + "\n")
        password_file.chmod(0o600)
        return HubLogin(user, password_file)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
