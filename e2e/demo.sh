#!/usr/bin/env bash
# The main job in one command (`make run`): a local cluster, the CRD, the operator, and a sample
# AppServer; then it shows what the operator made and keeps running until Ctrl-C, which tears it
# all down (as does `make down` from another terminal).
set -euo pipefail
E2E_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$E2E_DIR/.." && pwd)
export E2E_STATE_DIR=${E2E_STATE_DIR:-${TMPDIR:-/tmp}/appserver-demo}
SAMPLE=${SAMPLE:-$REPO/config/samples/gunicorn.yaml}
SHAPE=${SHAPE:-medium}

say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

cd "$REPO"
cargo build -q -p appserver-operator
"$E2E_DIR/cluster.sh" up
eval "$("$E2E_DIR/cluster.sh" env)"

operator_pid=
teardown() {
  trap - INT TERM EXIT
  [[ -n $operator_pid ]] && kill "$operator_pid" 2>/dev/null
  "$E2E_DIR/cluster.sh" down || true
}
trap teardown EXIT
trap 'teardown; exit 0' INT TERM  # a deliberate stop is not a failure

kubectl apply --server-side -f "$REPO/crds/" >/dev/null
kubectl wait --for condition=established --timeout=60s crd/appservers.appserver.dev >/dev/null
RUST_LOG=${RUST_LOG:-info,kube=warn} "$REPO/target/debug/appserver-operator" run \
  --metrics-addr 127.0.0.1:0 >"$E2E_STATE_DIR/logs/operator.log" 2>&1 &
operator_pid=$!
echo "$operator_pid" >"$E2E_STATE_DIR/pids/operator"

say "kubectl apply -f ${SAMPLE#"$REPO"/} (pinned to the $SHAPE node)"
kubectl create namespace demo --dry-run=client -o yaml | kubectl apply -f - >/dev/null
python3 - "$SAMPLE" "$SHAPE" <<'PY' | kubectl apply -n demo -f -
import json, sys, yaml
obj = yaml.safe_load(open(sys.argv[1]))
obj["spec"]["nodeSelector"] = {"appserver.dev/e2e-shape": sys.argv[2]}
print(json.dumps(obj))
PY
name=$(python3 -c 'import sys, yaml; print(yaml.safe_load(open(sys.argv[1]))["metadata"]["name"])' "$SAMPLE")
kubectl wait -n demo --for=condition=Ready --timeout=120s "appserver/$name" >/dev/null

say "kubectl get appservers -n demo"
kubectl get appservers -n demo
say "why (status.explanation)"
kubectl get appserver -n demo "$name" -o jsonpath='{.status.explanation}{"\n"}'
say "the Deployment's worker/thread settings"
kubectl get deployment -n demo "$name" \
  -o jsonpath='{range .spec.template.spec.containers[0].env[*]}{.name}={.value}{"\n"}{end}'
say "pods"
kubectl get pods -n demo -o wide

echo
echo "The cluster stays up: eval \"\$($E2E_DIR/cluster.sh env)\" to use kubectl against it."
echo "Operator log: $E2E_STATE_DIR/logs/operator.log. Ctrl-C (or 'make down') tears it all down."
wait "$operator_pid"
