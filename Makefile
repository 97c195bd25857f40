# The two commands a newcomer runs are `make run` (the operator on a local cluster with a
# sample AppServer) and `make test` (every test). The rest are for development.
SHELL := /bin/bash
CARGO ?= cargo

.PHONY: run down test unit e2e lint core-deps crd build image helm-lint bench

## The operator on a local cluster with a sample AppServer; Ctrl-C tears it down.
run:
	e2e/demo.sh

## Tears down what `make run` started (from another terminal).
down:
	-kill $$(cat $${TMPDIR:-/tmp}/appserver-demo/pids/operator 2>/dev/null) 2>/dev/null
	E2E_STATE_DIR=$${TMPDIR:-/tmp}/appserver-demo e2e/cluster.sh down

## Every test: unit, property and mocked-API tests, then the end-to-end suite.
test: unit e2e

## Unit, property and mocked-API tests (no cluster; the observer's tests start a Prometheus,
## installed from Debian's packages on first use).
unit:
	e2e/cluster.sh prometheus
	$(CARGO) test --workspace --exclude appserver-e2e --all-targets

## The end-to-end suite on a local control plane (builds it on first use).
e2e:
	e2e/run-tests.sh

lint: core-deps
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

## Fails when the pure core (core/) gains a Kubernetes client, an async runtime or an HTTP stack
## (docs/architecture.md). CRATE=appserver-operator shows what it would report.
CRATE ?= appserver-core
FORBIDDEN := kube-client|kube-runtime|tokio|hyper|reqwest|axum|tower|prometheus-http-query
core-deps:
	@bad=$$($(CARGO) tree -p $(CRATE) -e normal,build --prefix none | grep -oE '^($(FORBIDDEN)) v[^ ]+' | sort -u | tr '\n' ' '); \
	if [ -n "$$bad" ]; then echo "$(CRATE) must stay pure, but depends on: $$bad" >&2; exit 1; fi; \
	echo "$(CRATE): no $(FORBIDDEN)"

## Regenerate the committed CRD from the Rust types.
crd:
	$(CARGO) run -q -p appserver-operator -- crd > crds/appserver.dev_appservers.yaml
	cp crds/appserver.dev_appservers.yaml charts/appserver-operator/crds/
	cp crds/appserver.dev_appservers.yaml config/crd/bases/

## Lint the Helm chart (builds the pinned Helm on first use).
helm-lint:
	charts/helm.sh lint --strict charts/appserver-operator

build:
	$(CARGO) build --release -p appserver-operator

## The container image without a container engine (root; apt: umoci skopeo jq): an OCI layout
## and a docker-archive in target/image/, then its checks.
image:
	image/build.sh
	image/check.sh

## The tuning-quality benchmark: docs/benchmark.{md,json,png} (a venv for the chart on first use).
bench:
	bench/run.sh
