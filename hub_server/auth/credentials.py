"""The credentials file: who the hub knows, by token hash or certificate name.

TOML, read at start and again on SIGHUP::

    [[tokens]]
    name = "ops"                  # shows in the audit trail as token:ops
    role = "admin"
    sha256 = "9f86d081..."        # hash of the token; the token itself is never stored

    [[tokens]]
    name = "orders@acme"
    role = "service"
    service = "orders"            # required for service tokens
    tenant = "acme"               # optional: binds reads and quotas to one tenant
    sha256 = "..."

    [[certificates]]              # mTLS clients (--tls-client-ca), by CN or DNS SAN
    subject = "gateway.internal"
    role = "gateway"

    [[certificates]]              # a proxyless xDS client: its tenant's stored tier
    subject = "xds.acme.internal" # decides what it is offered (node metadata does not)
    role = "reader"
    tenant = "acme"

`central-hub token create` makes a random token and prints its entry.
"""

from __future__ import annotations

import hashlib
import re
import secrets
import tomllib
from dataclasses import dataclass
from pathlib import Path

from hub_server.auth.roles import Role

_SHA256 = re.compile(r"[0-9a-f]{64}")
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@:-]{0,127}")
_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


class CredentialsError(ValueError):
    """The credentials file is unreadable or wrong; the message names the entry."""


@dataclass(frozen=True, slots=True)
class Identity:
    """An authenticated caller."""

    name: str  # "token:ops", "cert:gateway.internal", "anonymous"
    role: Role
    tenant: str = ""  # bound tenant: this caller's tenant headers are replaced by it
    service: str = ""  # bound service: the only one it may register or report for

    @property
    def trusts_headers(self) -> bool:
        """Admin and gateway act for any tenant; everyone else acts for itself."""
        return self.role in (Role.ADMIN, Role.GATEWAY)


# Who a call is when the hub runs without credentials (loopback only).
ANONYMOUS = Identity("anonymous", Role.ADMIN)


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def new_token() -> str:
    return "hub_" + secrets.token_urlsafe(32)


@dataclass(frozen=True)
class Credentials:
    by_token_hash: dict[str, Identity]
    by_subject: dict[str, Identity]


NO_CREDENTIALS = Credentials({}, {})


def _identity(entry: object, where: str, kind: str) -> Identity:
    if not isinstance(entry, dict):
        raise CredentialsError(f"{where}: expected a table")
    label = entry.get("name") if kind == "token" else entry.get("subject")
    if not isinstance(label, str) or not _NAME.fullmatch(label):
        field = "name" if kind == "token" else "subject"
        raise CredentialsError(f"{where}.{field}: required, letters, digits and ._@:- only")
    try:
        role = Role(str(entry.get("role", "")))
    except ValueError:
        roles = ", ".join(r.value for r in Role)
        raise CredentialsError(f"{where}.role: one of {roles}") from None
    tenant, service = str(entry.get("tenant", "")), str(entry.get("service", ""))
    for field, value in (("tenant", tenant), ("service", service)):
        if value and not _ID.fullmatch(value):
            raise CredentialsError(f"{where}.{field}: letters, digits and ._- only")
    if role is Role.SERVICE and not service:
        raise CredentialsError(f"{where}.service: required for a service credential")
    if role in (Role.ADMIN, Role.GATEWAY) and (tenant or service):
        raise CredentialsError(f"{where}: an {role} credential is bound to no tenant or service")
    if role is Role.READER and service:
        raise CredentialsError(f"{where}.service: a reader may be bound to a tenant only")
    return Identity(f"{kind}:{label}", role, tenant, service)


def parse_credentials(text: str) -> Credentials:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise CredentialsError(f"not valid TOML: {e}") from None
    unknown = set(data) - {"tokens", "certificates"}
    if unknown:
        raise CredentialsError(f"unknown section(s): {', '.join(sorted(unknown))}")
    by_hash: dict[str, Identity] = {}
    for i, entry in enumerate(data.get("tokens", [])):
        where = f"tokens[{i}]"
        identity = _identity(entry, where, "token")
        digest = str(entry.get("sha256", "")).lower()
        if not _SHA256.fullmatch(digest):
            raise CredentialsError(f"{where}.sha256: 64 hex digits (sha256 of the token)")
        if digest in by_hash:
            raise CredentialsError(f"{where}.sha256: same token as {by_hash[digest].name}")
        by_hash[digest] = identity
    by_subject: dict[str, Identity] = {}
    for i, entry in enumerate(data.get("certificates", [])):
        identity = _identity(entry, f"certificates[{i}]", "cert")
        by_subject[identity.name.removeprefix("cert:")] = identity
    return Credentials(by_hash, by_subject)


def load_credentials(path: Path) -> Credentials:
    try:
        text = path.read_text()
    except OSError as e:
        raise CredentialsError(f"cannot read {path}: {e.strerror}") from None
    return parse_credentials(text)


def token_entry(name: str, role: Role, token: str, *, tenant: str = "", service: str = "") -> str:
    """The TOML entry for a token (what `central-hub token create` prints)."""
    lines = ["[[tokens]]", f'name = "{name}"', f'role = "{role}"']
    if service:
        lines.append(f'service = "{service}"')
    if tenant:
        lines.append(f'tenant = "{tenant}"')
    lines.append(f'sha256 = "{hash_token(token)}"')
    return "\n".join(lines) + "\n"
