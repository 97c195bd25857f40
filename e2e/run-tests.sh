#!/usr/bin/env bash
# The end-to-end suite: a fresh local cluster (cluster.sh), the CRD, the operator as a process,
# then the Rust tests in e2e/tests/. Extra arguments go to the test binary, so
#   e2e/run-tests.sh a_spec_change_rolls_the_deployment
# runs one test. E2E_KEEP=1 leaves the cluster up afterwards for debugging.
set -euo pipefail
E2E_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$E2E_DIR/.." && pwd)
export E2E_STATE_DIR=${E2E_STATE_DIR:-${TMPDIR:-/tmp}/appserver-e2e-test}
OPERATOR_LOG=$E2E_STATE_DIR/logs/operator.log

log() { printf '[run-tests %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

cd "$REPO"
log "building the operator and the tests"
cargo build -q -p appserver-operator
cargo test -q -p appserver-e2e --no-run
"$REPO/charts/helm.sh" version --short >/dev/null  # built on first use, before the tests need it
"$REPO/charts/helm.sh" version --short >/dev/null

if [[ -f $E2E_STATE_DIR/up.done ]]; then
  log "a cluster is already up in $E2E_STATE_DIR: tearing it down for a clean run"
  "$E2E_DIR/cluster.sh" down
fi
"$E2E_DIR/cluster.sh" up
eval "$("$E2E_DIR/cluster.sh" env)"

operator_pid=
finish() {
  local rc=$?
  [[ -n $operator_pid ]] && kill "$operator_pid" 2>/dev/null && wait "$operator_pid" 2>/dev/null
  if [[ $rc -ne 0 ]]; then
    log "FAILED: the operator's log (tail) and the components' logs follow"
    tail -n 80 "$OPERATOR_LOG" 2>/dev/null || true
    "$E2E_DIR/cluster.sh" logs || true
  fi
  if [[ ${E2E_KEEP:-0} == 1 ]]; then
    log "cluster kept: eval \"\$($E2E_DIR/cluster.sh env)\"; '$E2E_DIR/cluster.sh down' when done"
  else
    "$E2E_DIR/cluster.sh" down || true
  fi
  exit "$rc"
}
trap finish EXIT

log "installing the CRD"
kubectl apply --server-side -f "$REPO/crds/" >/dev/null
kubectl wait --for condition=established --timeout=60s crd/appservers.appserver.dev >/dev/null

port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
log "starting the operator (log: $OPERATOR_LOG)"
# Tuning on a test's time scale: observe every 2s over a 10s window, from the cluster's
# Prometheus (tests/tuning.rs and tests/closed_loop.rs count on these numbers).
RUST_LOG=${RUST_LOG:-info,kube=warn} "$REPO/target/debug/appserver-operator" run \
  --metrics-addr "127.0.0.1:$port" \
  --tune-interval 2s --tune-window 10s --prometheus-url "$PROMETHEUS_URL" >"$OPERATOR_LOG" 2>&1 &
operator_pid=$!
for _ in $(seq 1 60); do
  curl -fs "http://127.0.0.1:$port/readyz" >/dev/null 2>&1 && break
  kill -0 "$operator_pid" 2>/dev/null || { log "the operator exited"; exit 1; }
  sleep 0.5
done
curl -fs "http://127.0.0.1:$port/readyz" >/dev/null || { log "the operator never became ready"; exit 1; }

# Test files that need the shared operator, and those that start their own operators and so
# must run while it is stopped (they would otherwise both reconcile the same objects).
WITH_OPERATOR=(static_mode argocd_health tuning closed_loop)
STANDALONE=(leader_election install)
targets() { local t; for t in "$@"; do [[ -f $E2E_DIR/tests/$t.rs ]] && printf -- '--test %s ' "$t"; done; }

log "running the end-to-end tests"
start=$SECONDS
# shellcheck disable=SC2046 # word splitting of the --test flags is intended
cargo test -q -p appserver-e2e $(targets "${WITH_OPERATOR[@]}") -- --test-threads "${E2E_TEST_THREADS:-4}" "$@"
curl -fs "http://127.0.0.1:$port/metrics" | grep -E '^appserver_operator_(reconciliations_total|reconcile_errors_total)' >&2 || true
kill "$operator_pid" 2>/dev/null || true
wait "$operator_pid" 2>/dev/null || true
operator_pid=
log "the shared operator is stopped; running the tests that start their own"
# shellcheck disable=SC2046
cargo test -q -p appserver-e2e --lib $(targets "${STANDALONE[@]}") -- --test-threads 1 "$@"
log "end-to-end tests passed in $((SECONDS - start))s"
