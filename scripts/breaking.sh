#!/usr/bin/env bash
# buf breaking against the committed baseline of the released API (api/baseline.binpb,
# built from protos/ at the release named in api/baseline.version). It needs no git
# history, so a breaking change fails however many commits follow it, in a shallow
# clone too. Moving the baseline is a release step: scripts/release-baseline.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
BUF=${VENV:-.venv}/bin/buf
baseline=api/baseline.binpb
if [ ! -s "$baseline" ]; then
  echo "buf breaking: $baseline is missing; the API baseline is part of the repository" >&2
  exit 1
fi
"$BUF" breaking protos --against "$baseline"
echo "buf breaking: no breaking change against the $(cat api/baseline.version) API baseline"
