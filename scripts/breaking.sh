#!/usr/bin/env bash
# buf breaking against the previous commit on main. With a single commit there is
# nothing to compare against, which is not a failure.
set -euo pipefail
cd "$(dirname "$0")/.."
BUF=${VENV:-.venv}/bin/buf
if ! git rev-parse -q --verify HEAD~1 >/dev/null; then
  echo "buf breaking: no previous commit, nothing to compare"
  exit 0
fi
# Compare against HEAD~1 only when protos existed there.
if ! git cat-file -e HEAD~1:protos 2>/dev/null; then
  echo "buf breaking: no protos in the previous commit"
  exit 0
fi
"$BUF" breaking protos --against ".git#ref=HEAD~1,subdir=protos"
