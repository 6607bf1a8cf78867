"""Writes gen/openapi/hub.json: the OpenAPI 3.1 document of the hub's HTTP/JSON
API, from the protos' google.api.http annotations and message descriptors (the
same route table the hub serves, and the same document it serves at
/openapi.json). Run by `make gen` (scripts/gen.sh), so `make check-gen` fails
when it is stale; the document is checked with openapi-spec-validator.

    .venv/bin/python scripts/gen_openapi.py
"""

from __future__ import annotations

import json
from pathlib import Path

from openapi_spec_validator import validate

from hub_server.gateway.openapi import document
from hub_server.gateway.routes import hub_routes

OUT = Path(__file__).resolve().parent.parent / "gen" / "openapi" / "hub.json"


def render() -> str:
    doc = document(hub_routes())
    validate(doc)  # type: ignore[arg-type]
    return json.dumps(doc, indent=2, sort_keys=False) + "\n"


def main() -> None:
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(render())
    print(f"wrote {OUT.relative_to(OUT.parent.parent.parent)}")


if __name__ == "__main__":
    main()
