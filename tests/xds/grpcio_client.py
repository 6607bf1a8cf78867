"""A proxyless grpcio client, one per process (grpcio reads its bootstrap once
per process and keeps one xDS client): calls ``xds:///<service>`` as told.

Run by tests/support/xds.py with ``GRPC_XDS_BOOTSTRAP`` set. Reads one JSON
command per line on stdin, answers one JSON line on stdout:

  {"calls": N, "user": "u1" | null, "timeout": seconds}
      -> {"backends": {name: count}, "errors": {status: count}}

Each call is the backends' ``/hubtest.Backend/Who``, which answers with the
backend's name; ``user`` is sent as the ``x-user-id`` header.
"""

from __future__ import annotations

import json
import sys
from collections import Counter

import grpc

WHO = "/hubtest.Backend/Who"


def main() -> int:
    service = sys.argv[1]
    with grpc.insecure_channel(f"xds:///{service}") as channel:
        who = channel.unary_unary(WHO)  # bytes in, bytes out
        print(json.dumps({"ready": True}), flush=True)
        for line in sys.stdin:
            command = json.loads(line)
            backends: Counter[str] = Counter()
            errors: Counter[str] = Counter()
            metadata = [("x-user-id", command["user"])] if command.get("user") else None
            for _ in range(command["calls"]):
                try:
                    answer = who(b"", timeout=command.get("timeout", 5.0), metadata=metadata)
                    backends[answer.decode()] += 1
                except grpc.RpcError as e:
                    errors[e.code().name] += 1
            print(json.dumps({"backends": backends, "errors": errors}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
