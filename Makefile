# Central Hub. `make run` starts a hub with embedded etcd on 127.0.0.1:7000;
# `make test` installs everything and runs every test.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install browser h2load gen check-gen lint breaking release-baseline run test test-faults bench bench-scale clean image-deps test-image dist

install: $(STAMP) node_modules/.installed

# Envoy's generated protos (xDS) come as a local wheel of just their packages:
# xds-protos as is would overwrite opentelemetry-proto's files (scripts/envoy_protos.py).
# The three distributions (packaging/: the stubs, the client, the server) are installed
# editable; the wheelhouse holds the client side's dependencies, so tests/test_dists.py
# installs the built wheels into a fresh virtualenv offline. A venv from before the
# split has a central-hub that owned bin/hubctl: it is removed first, so that its
# uninstall does not delete the hubctl central-hub-client installs.
DISTS := packaging/aitrading-protos/pyproject.toml packaging/central-hub-client/pyproject.toml
$(STAMP): pyproject.toml $(DISTS) scripts/envoy_protos.py scripts/build_dists.py
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip uninstall -q -y central-hub 2>/dev/null || true
	$(PY) -m pip install -q -e packaging/aitrading-protos -e packaging/central-hub-client -e '.[dev]'
	$(PY) scripts/envoy_protos.py install
	$(PY) scripts/build_dists.py --wheelhouse $(VENV)/wheelhouse
	touch $@

node_modules/.installed: package.json package-lock.json
	npm ci --no-audit --no-fund --loglevel=error
	touch $@

gen: install
	VENV=$(VENV) scripts/gen.sh

# Fails when the committed stubs differ from what `make gen` produces.
check-gen: gen
	@if [ -n "$$(git status --porcelain -- gen)" ]; then \
	  echo "generated code is stale: run 'make gen' and commit gen/"; \
	  git status --short -- gen | head -20; exit 1; fi

# deploy/kubernetes (kustomization.yaml has no schema), against the oldest and newest
# Kubernetes schemas kubernetes-validate bundles.
KUBE_MANIFESTS = $(filter-out %/kustomization.yaml,$(wildcard deploy/kubernetes/*.yaml))

lint: install
	$(BIN)/buf lint
	$(BIN)/buf format --diff --exit-code
	$(BIN)/ruff check hub_server hub_client hubctl tests scripts examples bench
	$(BIN)/ruff format --check hub_server hub_client hubctl tests scripts examples bench
	$(BIN)/mypy
	$(BIN)/lint-imports
	$(BIN)/hadolint Dockerfile
	$(BIN)/kubernetes-validate --strict --quiet -k 1.25.0 $(KUBE_MANIFESTS)
	$(BIN)/kubernetes-validate --strict --quiet $(KUBE_MANIFESTS)

# buf breaking against the committed API baseline (api/), not against a commit.
breaking: install
	scripts/breaking.sh

# A release step: moves the API baseline after a version bump and a CHANGELOG entry.
release-baseline: install
	scripts/release-baseline.sh

run: install
	$(BIN)/central-hub serve --listen 127.0.0.1:7000

# The dashboard's browser tests drive Debian's chromium (never a downloaded build).
browser:
	@command -v chromium >/dev/null || { \
	  SUDO=""; [ "$$(id -u)" -eq 0 ] || SUDO="sudo"; \
	  $$SUDO apt-get update -q && \
	  $$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends chromium; }

test: install browser image-deps check-gen lint breaking
	scripts/run-tests.sh

# The container image test (tests/test_image.py, also part of `make test`) builds
# with Debian's buildah from a debootstrapped base, installed as chromium is above;
# scripts/image_deps.py caches the base and a wheelhouse in ~/.cache/central-hub.
image-deps: install
	@command -v buildah >/dev/null && command -v debootstrap >/dev/null || { \
	  SUDO=""; [ "$$(id -u)" -eq 0 ] || SUDO="sudo"; \
	  $$SUDO apt-get update -q && \
	  $$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends buildah debootstrap; }
	$(PY) scripts/image_deps.py

test-image: install image-deps
	$(BIN)/pytest -q -p no:cacheprovider tests/test_image.py

test-faults: install
	$(BIN)/pytest -m faults -q

# The benchmark's unary load comes from h2load (Debian's nghttp2-client), installed
# as the browser tests' chromium is; its README tables are rewritten from the run.
h2load:
	@command -v h2load >/dev/null || { \
	  SUDO=""; [ "$$(id -u)" -eq 0 ] || SUDO="sudo"; \
	  $$SUDO apt-get update -q && \
	  $$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends nghttp2-client; }

bench: install h2load
	$(PY) -m bench.run
	$(PY) scripts/bench_readme.py

# The instance curve to a million (bench/results/scale/; about 2 minutes here).
bench-scale: install
	$(PY) -m bench.run --scale
	$(PY) scripts/bench_readme.py

# What a release hands out, in dist/: the three wheels, the envoy protos wheel
# the hub needs for xDS (scripts/envoy_protos.py; never looked up on an index, so
# no distribution requires it by name) and the two npm tarballs.
dist: install
	$(PY) scripts/build_dists.py --out dist
	cp build/wheelhouse/central_hub_envoy_protos-*.whl dist/
	cd clients/node/stubs && npm pack --pack-destination $(CURDIR)/dist
	cd clients/node/client && npm pack --pack-destination $(CURDIR)/dist

clean:
	rm -rf $(VENV) node_modules .hub-data dist
