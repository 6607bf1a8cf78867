"""Authentication (bearer token or client certificate) and authorization (the
role table plus the tenant and service a caller is bound to). gRPC-free: the
interceptor hands in metadata and the TLS peer's names."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from google.protobuf.message import Message

from hub_server.auth.credentials import (
    ANONYMOUS,
    NO_CREDENTIALS,
    Credentials,
    CredentialsError,
    Identity,
    hash_token,
    load_credentials,
)
from hub_server.auth.roles import Rule, Scope, is_open, rule_for
from hub_server.kernel.errors import PermissionDenied, Unauthenticated

log = logging.getLogger(__name__)

_BEARER = "bearer "
# How deep nested messages are searched for a tenant_id naming another tenant.
_MAX_DEPTH = 4


class Authorizer:
    """Knows the credentials; says who a caller is and whether it may do a call.

    With no credentials file every caller is the anonymous admin: the hub then
    serves on loopback only (see Hub.start)."""

    def __init__(self, credentials_file: Path | None = None, *, client_certs: bool = False):
        self.credentials_file = credentials_file
        self.client_certs = client_certs
        self._credentials = NO_CREDENTIALS
        if credentials_file is not None:
            self._credentials = load_credentials(credentials_file)

    @property
    def enabled(self) -> bool:
        return self.credentials_file is not None or self.client_certs

    def reload(self) -> bool:
        """Re-reads the credentials file (SIGHUP). A bad file keeps the old
        credentials, so a typo cannot lock everyone out."""
        if self.credentials_file is None:
            return False
        try:
            self._credentials = load_credentials(self.credentials_file)
        except CredentialsError as e:
            log.error("credentials not reloaded, keeping the previous ones: %s", e)
            return False
        log.info(
            "credentials reloaded: %d tokens, %d certificates",
            len(self._credentials.by_token_hash),
            len(self._credentials.by_subject),
        )
        return True

    @property
    def credentials(self) -> Credentials:
        return self._credentials

    # -- who ---------------------------------------------------------------

    def authenticate(
        self, metadata: Iterable[tuple[str, Any]], cert_names: Sequence[str] = ()
    ) -> Identity:
        """The caller's identity from an ``authorization: Bearer`` header, else
        from its client certificate's names (CN first, then SANs)."""
        if not self.enabled:
            return ANONYMOUS
        for key, value in metadata:
            if key == "authorization" and isinstance(value, str):
                if not value[: len(_BEARER)].lower() == _BEARER:
                    raise Unauthenticated("authorization must be 'Bearer <token>'")
                identity = self._credentials.by_token_hash.get(
                    hash_token(value[len(_BEARER) :].strip())
                )
                if identity is None:
                    raise Unauthenticated("unknown or revoked token")
                return identity
        for name in cert_names:
            identity = self._credentials.by_subject.get(name)
            if identity is not None:
                return identity
        if cert_names:
            raise Unauthenticated(f"client certificate {cert_names[0]!r} has no credentials entry")
        raise Unauthenticated(
            "this hub requires credentials: send 'authorization: Bearer <token>' "
            "or a client certificate"
        )

    # -- may it ------------------------------------------------------------

    @staticmethod
    def check_method(identity: Identity, method: str) -> Rule:
        rule = rule_for(method)
        if not is_open(method) and identity.role not in rule.roles:
            raise PermissionDenied(
                f"{identity.name} (role {identity.role}) may not call {method}",
                role=str(identity.role),
            )
        if rule.scope is Scope.FLEET and identity.tenant and not identity.trusts_headers:
            raise PermissionDenied(
                f"{identity.name} is bound to tenant {identity.tenant!r} and may not call "
                f"{method}, which spans all tenants"
            )
        return rule

    @staticmethod
    def check_request(identity: Identity, rule: Rule, request: Message) -> None:
        """Holds a bound caller to its tenant and service. May fill the request's
        top-level tenant_id / service with the bound one when they are empty."""
        if identity.trusts_headers:
            return
        if identity.tenant:
            _bind_field(request, "tenant_id", identity.tenant, identity)
            _no_other_tenant(request, identity, _MAX_DEPTH)
        if identity.service and rule.scope is Scope.OWN_SERVICE:
            _bind_field(request, "service", identity.service, identity)

    def authorize(self, method: str, metadata: Iterable[tuple[str, Any]]) -> Identity:
        """Authenticates a bearer token and checks the role table (for callers
        outside gRPC, e.g. the dashboard's actions)."""
        identity = self.authenticate(metadata)
        self.check_method(identity, method)
        return identity


def _bind_field(request: Message, field: str, bound: str, identity: Identity) -> None:
    if field not in request.DESCRIPTOR.fields_by_name:
        return
    value = getattr(request, field)
    if not value:
        setattr(request, field, bound)
    elif value != bound:
        raise PermissionDenied(
            f"{identity.name} is bound to {field.removesuffix('_id')} {bound!r}, not {value!r}",
            field=field,
        )


def _no_other_tenant(message: Message, identity: Identity, depth: int) -> None:
    for fd, value in message.ListFields():
        if fd.name == "tenant_id" and isinstance(value, str) and value != identity.tenant:
            raise PermissionDenied(
                f"{identity.name} is bound to tenant {identity.tenant!r}, not {value!r}",
                field="tenant_id",
            )
        if fd.message_type is None or depth == 0 or fd.message_type.GetOptions().map_entry:
            continue
        for item in value if fd.is_repeated else (value,):
            _no_other_tenant(item, identity, depth - 1)
