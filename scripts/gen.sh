#!/usr/bin/env bash
# Regenerates every stub under gen/ from protos/. The only way generated code is made.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
export PATH="$PWD/$VENV/bin:$PWD/node_modules/.bin:$PATH"

protos=$(cd protos && find . -name '*.proto' | sed 's|^\./||' | sort)

rm -rf gen/python gen/python_betterproto gen/node/src gen/ts/src
mkdir -p gen/python gen/python_betterproto gen/node/src gen/ts/src

# Python: messages, gRPC stubs and typed .pyi.
(cd protos && python -m grpc_tools.protoc -I . \
  --python_out=../gen/python --grpc_python_out=../gen/python \
  --mypy_out=../gen/python --mypy_grpc_out=../gen/python $protos)
# Every folder a regular package, so setuptools and mypy find them.
find gen/python -type d -exec touch {}/__init__.py \;
rm -f gen/python/__init__.py

# Python dataclass stubs (betterproto2), for teams that prefer them.
(cd protos && python -m grpc_tools.protoc -I . \
  --python_betterproto2_out=../gen/python_betterproto $protos)

# Node (JavaScript + .d.ts) and TypeScript.
buf generate
