#!/usr/bin/env bash
# Moves the API baseline that `make breaking` compares against to the protos as they
# are now. A deliberate release step: it refuses unless pyproject.toml's version was
# bumped past the baseline's and CHANGELOG.md has a section for the new version.
set -euo pipefail
cd "$(dirname "$0")/.."
BUF=${VENV:-.venv}/bin/buf
version=$(sed -n 's/^version = "\(.*\)"/\1/p' pyproject.toml | head -n 1)
current=$(cat api/baseline.version 2>/dev/null || echo none)
if [ "$version" = "$current" ]; then
  echo "release-baseline: the baseline is already $version; bump the version in pyproject.toml first" >&2
  exit 2
fi
if ! grep -q "^## $version\b" CHANGELOG.md; then
  echo "release-baseline: CHANGELOG.md has no '## $version' section saying what changed" >&2
  exit 2
fi
# Clients rely on wire compatibility within a major version (README "Compatibility"):
# an API that breaks the current baseline moves it only with a new major version.
if ! "$BUF" breaking protos --against api/baseline.binpb >/dev/null 2>&1 \
    && [ "${version%%.*}" = "${current%%.*}" ]; then
  echo "release-baseline: the API breaks the $current baseline; that needs a new major version, not $version" >&2
  exit 2
fi
"$BUF" build protos --exclude-source-info -o api/baseline.binpb
echo "$version" > api/baseline.version
echo "API baseline moved from $current to $version: commit api/ with the version bump"
