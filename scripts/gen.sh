#!/usr/bin/env bash
# Regenerates every stub under gen/ from protos/. The only way generated code is made.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
export PATH="$PWD/$VENV/bin:$PWD/node_modules/.bin:$PATH"

protos=$(cd protos && find . -name '*.proto' | sed 's|^\./||' | sort)

rm -rf gen/python gen/python_betterproto gen/ts/src
mkdir -p gen/python gen/python_betterproto gen/ts/src

# Python: messages, gRPC stubs and typed .pyi. Only protos/ is generated: the
# google.api.http annotations they import (third_party/googleapis, an include
# path here) are googleapis-common-protos' google.api.annotations_pb2.
(cd protos && python -m grpc_tools.protoc -I . -I ../third_party/googleapis \
  --python_out=../gen/python --grpc_python_out=../gen/python \
  --mypy_out=../gen/python --mypy_grpc_out=../gen/python $protos)
# Every folder a regular package, so setuptools and mypy find them.
find gen/python -type d -exec touch {}/__init__.py \;
rm -f gen/python/__init__.py
# Typed (PEP 561): the .pyi stubs above are what type checkers read.
touch gen/python/aitrading/py.typed

# Python dataclass stubs (betterproto2), for teams that prefer them: sync clients
# (grpcio) and async ones (grpclib, the *AsyncStub classes), both taking timeout=
# and metadata=. The sync stubs' template is ours (scripts/betterproto2/), since
# the compiler's own sync stubs take neither.
(cd protos && python -m grpc_tools.protoc -I . -I ../third_party/googleapis \
  --plugin=protoc-gen-python_betterproto2=../scripts/betterproto2/protoc-gen-hub-betterproto2 \
  --python_betterproto2_out=../gen/python_betterproto \
  --python_betterproto2_opt=client_generation=sync_async $protos)

# TypeScript (compiled to JavaScript + .d.ts by the Node packages' build), with
# the google.rpc error details from our copy of googleapis' protos (a fixed copy,
# so the output does not move with an installed package's version).
buf generate
buf generate third_party/googleapis --template buf.gen.rpc.yaml \
  --path third_party/googleapis/google/rpc/status.proto \
  --path third_party/googleapis/google/rpc/error_details.proto

# The HTTP/JSON API's OpenAPI document, from the annotations just compiled.
python scripts/gen_openapi.py
