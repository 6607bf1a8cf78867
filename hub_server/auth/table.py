"""The role table as Markdown, for the README (tests/test_auth_logic.py keeps
the README's copy equal to this)."""

from __future__ import annotations

from hub_server.auth.roles import RULES, Role, Scope

_SCOPE_NOTE = {
    Scope.TENANT: "",
    Scope.OWN_SERVICE: "own service",
    Scope.FLEET: "not tenant-bound",
}


def markdown() -> str:
    roles = [Role.ADMIN, Role.GATEWAY, Role.SERVICE, Role.READER]
    lines = [
        "| RPC | " + " | ".join(r.value for r in roles) + " | bound callers |",
        "|---|" + "---|" * (len(roles) + 1),
    ]
    for method, rule in RULES.items():
        name = method.removeprefix("/aitrading.hub.v1.").removeprefix("/")
        marks = " | ".join("✓" if r in rule.roles else "" for r in roles)
        lines.append(f"| `{name}` | {marks} | {_SCOPE_NOTE[rule.scope]} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(markdown(), end="")
