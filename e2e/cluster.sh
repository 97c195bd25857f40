#!/usr/bin/env bash
# Local Kubernetes cluster for the operator's e2e tests, no container engine:
# etcd + kube-apiserver + kube-controller-manager + kube-scheduler built from
# source, kwok faking nodes and pods, and a Prometheus. See e2e/README.md.
set -euo pipefail

E2E_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# The wrapper go.mod files are the single source of truth for the versions.
K8S_VERSION=$(awk '$1 == "require" && $2 == "k8s.io/kubernetes" {print $3}' "$E2E_DIR/cluster/go.mod")
ETCD_VERSION=$(awk '$1 == "require" && $2 == "go.etcd.io/etcd/server/v3" {print $3}' "$E2E_DIR/cluster/etcd/go.mod")
KWOK_VERSION=v0.8.0

BIN=${XDG_CACHE_HOME:-$HOME/.cache}/appserver-operator/e2e/k${K8S_VERSION#v}-etcd${ETCD_VERSION#v}-kwok${KWOK_VERSION#v}/bin
STATE=${E2E_STATE_DIR:-${TMPDIR:-/tmp}/appserver-e2e}
WAIT_SECONDS=${E2E_WAIT_SECONDS:-120}
SERVICE_CIDR=10.96.0.0/16
# `down` stops them in this order: clients first, etcd last.
COMPONENTS=(kwok kube-scheduler kube-controller-manager prometheus kube-apiserver etcd)

log() { printf '[cluster.sh %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }
kubectl() { "$BIN/kubectl" --kubeconfig "$STATE/admin.kubeconfig" "$@"; }

go_cmd() {
  local go=go
  command -v go >/dev/null || go=/usr/local/go/bin/go
  # Reproducible, static binaries built with the installed toolchain only.
  CGO_ENABLED=0 GOTOOLCHAIN=local GOFLAGS=-mod=readonly "$go" "$@"
}

# --- build -------------------------------------------------------------------

version_of() { # first line of the binary's version output; fails if it does not run
  local out args=(--version)
  [[ $1 == kubectl ]] && args=(version --client)
  out=$("$BIN/$1" "${args[@]}" 2>&1) || { echo "$out"; return 1; }
  echo "${out%%$'\n'*}"
}

# A binary counts as cached only if it runs; a half-written one gets rebuilt.
cached() { [[ -x $BIN/$1 ]] && version_of "$1" >/dev/null; }

timed_build() {
  local name=$1; shift
  if cached "$name"; then
    log "$name: cached ($(version_of "$name"))"
    return
  fi
  local start=$SECONDS
  log "$name: building..."
  "$@"
  cached "$name" || die "$name: built but does not run: $(version_of "$name")"
  log "$name: built in $((SECONDS - start))s ($(version_of "$name"))"
}

build_k8s() { # name package
  local minor=${K8S_VERSION#v1.}; minor=${minor%%.*}
  (cd "$E2E_DIR/cluster" && go_cmd build -trimpath -o "$BIN/$1.tmp" -ldflags "-s -w \
    -X k8s.io/component-base/version.gitVersion=$K8S_VERSION \
    -X k8s.io/component-base/version.gitMajor=1 \
    -X k8s.io/component-base/version.gitMinor=$minor \
    -X k8s.io/component-base/version.gitTreeState=clean" "$2")
  mv "$BIN/$1.tmp" "$BIN/$1"
}

build_etcd() {
  (cd "$E2E_DIR/cluster/etcd" && go_cmd build -trimpath -ldflags "-s -w" -o "$BIN/etcd.tmp" go.etcd.io/etcd/server/v3)
  mv "$BIN/etcd.tmp" "$BIN/etcd"
}

build_kwok() {
  # kwok has no replace directives, so a plain versioned install works.
  GOBIN=$BIN go_cmd install -trimpath -ldflags "-s -w" \
    "sigs.k8s.io/kwok/cmd/kwok@$KWOK_VERSION"
}

cmd_build() {
  mkdir -p "$BIN"
  local start=$SECONDS
  timed_build etcd build_etcd
  timed_build kube-apiserver build_k8s kube-apiserver k8s.io/kubernetes/cmd/kube-apiserver
  timed_build kube-controller-manager build_k8s kube-controller-manager k8s.io/kubernetes/cmd/kube-controller-manager
  timed_build kube-scheduler build_k8s kube-scheduler k8s.io/kubernetes/cmd/kube-scheduler
  timed_build kubectl build_k8s kubectl k8s.io/kubernetes/cmd/kubectl
  timed_build kwok build_kwok
  log "binaries ready in $BIN ($((SECONDS - start))s)"
}

# --- processes -----------------------------------------------------------------

# Prints the pid recorded for a component if that process is still ours: every
# component gets a path under the state dir on its command line, so a recycled
# pid is never taken for it.
pid_of() {
  local f=$STATE/pids/$1 pid
  [[ -f $f ]] || return 1
  pid=$(<"$f")
  tr '\0' ' ' 2>/dev/null <"/proc/$pid/cmdline" | grep -qF -- "$STATE/" || return 1
  echo "$pid"
}

any_running() {
  local c
  for c in "${COMPONENTS[@]}"; do pid_of "$c" >/dev/null && return 0; done
  return 1
}

start() { # name command...
  local name=$1; shift
  # setsid: the cluster outlives this script and ignores the terminal's ^C.
  setsid "$@" >"$STATE/logs/$name.log" 2>&1 </dev/null &
  echo $! >"$STATE/pids/$name"
}

stop_one() {
  local pid deadline=$((SECONDS + 30))
  pid=$(pid_of "$1") || return 0
  log "stopping $1 (pid $pid)"
  kill -TERM "$pid" 2>/dev/null || true
  # A zombie has an empty cmdline: it is gone as far as we care.
  while kill -0 "$pid" 2>/dev/null && [[ -n $(tr -d '\0' 2>/dev/null <"/proc/$pid/cmdline") ]]; do
    if ((SECONDS >= deadline)); then
      log "$1 still alive after 30s: SIGKILL"
      kill -KILL "$pid" 2>/dev/null || true
      return
    fi
    sleep 0.1
  done
}

# One at a time, clients first and etcd last: an apiserver whose etcd is gone
# hangs in its shutdown hooks.
stop_all() {
  local c
  for c in "${COMPONENTS[@]}"; do stop_one "$c"; done
}

fail() { # component message
  log "ERROR: $1: $2"
  if [[ -f $STATE/logs/$1.log ]]; then
    log "--- last 40 lines of $STATE/logs/$1.log ---"
    tail -n 40 "$STATE/logs/$1.log" >&2
  fi
  exit 1
}

wait_for() { # component what command...
  local name=$1 what=$2 start=$SECONDS; shift 2
  until "$@" >/dev/null 2>&1; do
    pid_of "$name" >/dev/null || fail "$name" "exited while waiting until $what"
    ((SECONDS - start < WAIT_SECONDS)) || fail "$name" "not $what after ${WAIT_SECONDS}s"
    sleep 0.5
  done
  log "$name: $what ($((SECONDS - start))s)"
}

# Ports come from below the kernel's ephemeral range: outgoing connections (an apiserver has
# many) take their local ports from that range, so a port that is free there now may be taken
# before the component binds it. A real bind checks that nothing holds the port.
EPHEMERAL_LOW=$(cut -f1 /proc/sys/net/ipv4/ip_local_port_range 2>/dev/null || echo 32768)
free_port() { # variable to set
  local p low=10000 span=$((EPHEMERAL_LOW - 10000))
  while :; do
    p=$((low + (RANDOM * 32768 + RANDOM) % span))
    [[ " ${USED_PORTS:-} " == *" $p "* ]] && continue
    if python3 -c 'import socket, sys; s = socket.socket(); s.bind(("127.0.0.1", int(sys.argv[1])))' "$p" 2>/dev/null; then
      USED_PORTS="${USED_PORTS:-} $p"
      printf -v "$1" '%s' "$p"
      return
    fi
  done
}

# --- certificates --------------------------------------------------------------

PKI() { echo "$STATE/pki"; }
# P-256 keys: as widely supported as RSA here, and generated in no time.
EC=(-newkey ec -pkeyopt ec_paramgen_curve:P-256)

gen_ca() {
  openssl req -x509 -new -nodes "${EC[@]}" -days 7 -subj "/CN=appserver-e2e-ca" \
    -keyout "$(PKI)/ca.key" -out "$(PKI)/ca.crt" -extensions ext -config <(printf '%s\n' \
      '[req]' 'distinguished_name=dn' '[dn]' '[ext]' \
      'basicConstraints=critical,CA:TRUE' 'keyUsage=critical,keyCertSign,cRLSign,digitalSignature' \
      'subjectKeyIdentifier=hash') 2>/dev/null
}

sign() { # name subject extendedKeyUsage [subjectAltName]
  local pki; pki=$(PKI)
  openssl req -new -nodes "${EC[@]}" -subj "$2" -keyout "$pki/$1.key" -out "$pki/$1.csr" 2>/dev/null
  openssl x509 -req -days 7 -in "$pki/$1.csr" -CA "$pki/ca.crt" -CAkey "$pki/ca.key" \
    -out "$pki/$1.crt" -extfile <(printf '%s\n' 'basicConstraints=CA:FALSE' \
      'keyUsage=critical,digitalSignature' "extendedKeyUsage=$3" \
      'authorityKeyIdentifier=keyid' ${4:+"subjectAltName=$4"}) 2>/dev/null
  rm "$pki/$1.csr"
}

gen_pki() {
  gen_ca
  sign kube-apiserver "/CN=kube-apiserver" serverAuth \
    "IP:127.0.0.1,IP:${SERVICE_CIDR%.0/*}.1,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local"
  sign admin "/O=system:masters/CN=e2e-admin" clientAuth
  sign kube-controller-manager "/CN=system:kube-controller-manager" clientAuth
  sign kube-scheduler "/CN=system:kube-scheduler" clientAuth
  # The apiserver's identity towards aggregated API servers.
  sign front-proxy-client "/CN=front-proxy-client" clientAuth
  # kwok writes node and pod status and deletes pods: simplest as an admin.
  sign kwok "/O=system:masters/CN=kwok" clientAuth
  openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$(PKI)/sa.key"
  openssl pkey -in "$(PKI)/sa.key" -pubout -out "$(PKI)/sa.pub"
}

write_kubeconfig() { # user
  cat >"$STATE/$1.kubeconfig" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: e2e
  cluster:
    server: https://127.0.0.1:$API_PORT
    certificate-authority-data: $(base64 -w0 <"$(PKI)/ca.crt")
users:
- name: $1
  user:
    client-certificate-data: $(base64 -w0 <"$(PKI)/$1.crt")
    client-key-data: $(base64 -w0 <"$(PKI)/$1.key")
contexts:
- name: e2e
  context: {cluster: e2e, user: $1}
current-context: e2e
EOF
}

# --- up ------------------------------------------------------------------------

# name cpu memory; one kwok node per shape, named kwok-<shape>.
SHAPES=("small 1 2Gi" "medium 2 4Gi" "large 4 16Gi" "xlarge 16 64Gi")

ensure_prometheus() {
  command -v prometheus >/dev/null && return
  ((EUID == 0)) || die "prometheus is missing: apt-get install prometheus"
  log "installing Debian's prometheus"
  # Keep the package from starting its own prometheus on :9090 during install.
  local policy=/usr/sbin/policy-rc.d created=""
  if [[ ! -e $policy ]]; then printf '#!/bin/sh\nexit 101\n' >"$policy"; chmod +x "$policy"; created=1; fi
  local -x DEBIAN_FRONTEND=noninteractive
  local install=(apt-get install -y --no-install-recommends prometheus) ok=1
  # A fresh machine may have no package lists yet.
  { "${install[@]}" || { apt-get update && "${install[@]}"; }; } >/dev/null || ok=""
  if [[ -n $created ]]; then rm -f "$policy"; fi
  [[ -n $ok ]] || die "apt-get install prometheus failed"
}

prepare_state_dir() {
  any_running && die "a cluster is already up in $STATE: run '$0 down' first (or set E2E_STATE_DIR)"
  # Only ever delete a directory that an earlier `up` made.
  if [[ -e $STATE && ! -e $STATE/.appserver-e2e ]] && [[ -n $(ls -A "$STATE" 2>/dev/null) ]]; then
    die "$STATE exists and was not made by $0: refusing to use it"
  fi
  rm -rf "$STATE"
  mkdir -p "$STATE"/{pki,logs,pids,etcd,kwok,prometheus/sd,prometheus/data}
  chmod 700 "$STATE/etcd" "$STATE/pki"
  touch "$STATE/.appserver-e2e"
}

nodes_ready() {
  # One line per node: <Ready status>:<taints>; all must read "True:".
  local lines
  lines=$(kubectl get nodes -l appserver.dev/e2e-shape \
    -o jsonpath='{range .items[*]}{.status.conditions[?(@.type=="Ready")].status}:{.spec.taints}{"\n"}{end}')
  [[ $(grep -cx 'True:' <<<"$lines") -eq ${#SHAPES[@]} ]]
}

create_nodes() {
  local i=0 shape name cpu mem
  for shape in "${SHAPES[@]}"; do
    read -r name cpu mem <<<"$shape"
    i=$((i + 1))
    cat <<EOF
---
apiVersion: v1
kind: Node
metadata:
  name: kwok-$name
  annotations:
    kwok.x-k8s.io/node: fake
  labels:
    appserver.dev/e2e-shape: $name
    kubernetes.io/hostname: kwok-$name
    kubernetes.io/os: linux
    kubernetes.io/arch: amd64
    type: kwok
status:
  addresses:
  - {type: InternalIP, address: 10.243.0.$((10 + i))}
  - {type: Hostname, address: kwok-$name}
  capacity: &res {cpu: "$cpu", memory: $mem, pods: "110", ephemeral-storage: 100Gi}
  allocatable: *res
EOF
  done | kubectl create -f - >/dev/null
}

cmd_up() {
  local t0=$SECONDS
  prepare_state_dir
  cmd_build
  ensure_prometheus
  command -v curl >/dev/null || die "curl is needed"

  # From here on, a failure stops whatever was started.
  trap '[[ -f $STATE/up.done ]] || { log "up failed: stopping what was started (logs kept in $STATE/logs)"; stop_all; }' EXIT

  local v
  for v in ETCD_PORT ETCD_PEER_PORT API_PORT KCM_PORT SCHED_PORT PROM_PORT; do free_port "$v"; done
  gen_pki
  local u
  for u in admin kube-controller-manager kube-scheduler kwok; do write_kubeconfig "$u"; done
  local pki; pki=$(PKI)

  start etcd "$BIN/etcd" --name e2e --data-dir "$STATE/etcd" \
    --listen-client-urls "http://127.0.0.1:$ETCD_PORT" --advertise-client-urls "http://127.0.0.1:$ETCD_PORT" \
    --listen-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" --initial-advertise-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" \
    --initial-cluster "e2e=http://127.0.0.1:$ETCD_PEER_PORT" \
    --unsafe-no-fsync --log-level warn
  wait_for etcd healthy curl -fsS "http://127.0.0.1:$ETCD_PORT/health"

  # No endpoint reconciler: a loopback address cannot go into Endpoints. The
  # requestheader flags let aggregated API servers work, and keep the other
  # components from logging that their CA bundle is missing. Open watches
  # would hold a graceful shutdown for a minute: give them 2s.
  start kube-apiserver "$BIN/kube-apiserver" \
    --etcd-servers "http://127.0.0.1:$ETCD_PORT" \
    --bind-address 127.0.0.1 --advertise-address 127.0.0.1 --secure-port "$API_PORT" \
    --tls-cert-file "$pki/kube-apiserver.crt" --tls-private-key-file "$pki/kube-apiserver.key" \
    --client-ca-file "$pki/ca.crt" \
    --authorization-mode Node,RBAC \
    --service-account-issuer https://kubernetes.default.svc.cluster.local \
    --service-account-key-file "$pki/sa.pub" --service-account-signing-key-file "$pki/sa.key" \
    --service-cluster-ip-range "$SERVICE_CIDR" \
    --endpoint-reconciler-type none \
    --requestheader-client-ca-file "$pki/ca.crt" --requestheader-allowed-names front-proxy-client \
    --requestheader-username-headers X-Remote-User --requestheader-group-headers X-Remote-Group \
    --requestheader-extra-headers-prefix X-Remote-Extra- \
    --proxy-client-cert-file "$pki/front-proxy-client.crt" --proxy-client-key-file "$pki/front-proxy-client.key" \
    --shutdown-watch-termination-grace-period 2s \
    --allow-privileged --profiling=false
  wait_for kube-apiserver ready curl -fsS --cacert "$pki/ca.crt" \
    --cert "$pki/admin.crt" --key "$pki/admin.key" "https://127.0.0.1:$API_PORT/readyz"

  start kube-controller-manager "$BIN/kube-controller-manager" \
    --kubeconfig "$STATE/kube-controller-manager.kubeconfig" \
    --authentication-kubeconfig "$STATE/kube-controller-manager.kubeconfig" \
    --authorization-kubeconfig "$STATE/kube-controller-manager.kubeconfig" \
    --bind-address 127.0.0.1 --secure-port "$KCM_PORT" --leader-elect=false \
    --controllers '*' --use-service-account-credentials \
    --service-account-private-key-file "$pki/sa.key" --root-ca-file "$pki/ca.crt" \
    --cluster-signing-cert-file "$pki/ca.crt" --cluster-signing-key-file "$pki/ca.key" \
    --cluster-name e2e
  start kube-scheduler "$BIN/kube-scheduler" \
    --kubeconfig "$STATE/kube-scheduler.kubeconfig" \
    --authentication-kubeconfig "$STATE/kube-scheduler.kubeconfig" \
    --authorization-kubeconfig "$STATE/kube-scheduler.kubeconfig" \
    --bind-address 127.0.0.1 --secure-port "$SCHED_PORT" --leader-elect=false
  # KWOK_WORKDIR keeps a ~/.kwok/kwok.yaml of the user's out of our config.
  # Without a lease duration kwok renews no node Lease and nodes go NotReady.
  start kwok env KWOK_WORKDIR="$STATE/kwok" "$BIN/kwok" \
    --kubeconfig "$STATE/kwok.kubeconfig" --config "$E2E_DIR/kwok.yaml" \
    --manage-all-nodes=false --manage-nodes-with-annotation-selector kwok.x-k8s.io/node=fake \
    --node-lease-duration-seconds 40 --cidr 10.244.0.0/16 --node-ip 10.243.0.1

  cat >"$STATE/prometheus/prometheus.yml" <<EOF
global:
  scrape_interval: 2s
  scrape_timeout: 1s
  evaluation_interval: 2s
scrape_configs:
- job_name: e2e
  file_sd_configs:
  - files: ['$STATE/prometheus/sd/*.json']
    refresh_interval: 2s
EOF
  start prometheus prometheus --config.file "$STATE/prometheus/prometheus.yml" \
    --storage.tsdb.path "$STATE/prometheus/data" --storage.tsdb.retention.time 1d \
    --web.listen-address "127.0.0.1:$PROM_PORT" --web.enable-lifecycle

  # Both serve a self-signed certificate of their own: -k.
  wait_for kube-controller-manager healthy curl -kfsS "https://127.0.0.1:$KCM_PORT/healthz"
  wait_for kube-scheduler healthy curl -kfsS "https://127.0.0.1:$SCHED_PORT/healthz"
  wait_for prometheus ready curl -fsS "http://127.0.0.1:$PROM_PORT/-/ready"
  create_nodes
  wait_for kwok "nodes Ready and untainted" nodes_ready
  # Proves the service account controllers run; pods need this account.
  wait_for kube-controller-manager "default ServiceAccount created" kubectl get serviceaccount default -n default

  # PATH: the pinned kubectl, of the server's version, comes first ($PATH stays literal).
  # shellcheck disable=SC2016
  printf 'export KUBECONFIG=%q\nexport PROMETHEUS_URL=%q\nexport PROMETHEUS_SD_DIR=%q\nexport E2E_STATE_DIR=%q\nexport PATH=%q:"$PATH"\n' \
    "$STATE/admin.kubeconfig" "http://127.0.0.1:$PROM_PORT" "$STATE/prometheus/sd" "$STATE" "$BIN" >"$STATE/env"
  touch "$STATE/up.done"
  log "cluster up in $((SECONDS - t0))s; state in $STATE"
  cmd_env
}

# --- other commands ------------------------------------------------------------

require_up() { [[ -f $STATE/up.done ]] || die "no cluster is up in $STATE: run '$0 up'"; }

cmd_down() {
  any_running || log "nothing running in $STATE"
  stop_all
  any_running && die "some processes would not stop; state kept in $STATE"
  if [[ -e $STATE/.appserver-e2e ]]; then rm -rf "$STATE"; fi
  log "down"
}

cmd_env() { require_up; cat "$STATE/env"; }

cmd_logs() {
  local f
  for f in "$STATE"/logs/*.log; do
    [[ -f $f ]] || continue
    printf '\n===== %s (last %s lines) =====\n' "$f" "${LOG_LINES:-50}"
    tail -n "${LOG_LINES:-50}" "$f"
  done
}

# Plays what the kubelet reports after an OOM kill: the container restarted,
# its last state is terminated with OOMKilled/137. kwok leaves Running pods'
# status alone, so the patch stays.
cmd_oom() { # namespace pod [container]
  (($# >= 2)) || die "usage: $0 oom NAMESPACE POD [CONTAINER]"
  require_up
  local ns=$1 pod=$2 want=${3:-} i=0 found="" name restarts started
  while read -r name restarts started; do
    if [[ -z $want || $name == "$want" ]]; then found=1; break; fi
    i=$((i + 1))
  done < <(kubectl get pod -n "$ns" "$pod" \
    -o jsonpath='{range .status.containerStatuses[*]}{.name} {.restartCount} {.state.running.startedAt}{"\n"}{end}')
  [[ -n $found ]] || die "pod $ns/$pod has no container status${want:+ for container $want}"
  local now; now=$(date -u +%Y-%m-%dT%H:%M:%SZ)
  local at=/status/containerStatuses/$i
  # The test ops make a concurrent status change fail the patch, not mix with it.
  local patch='[{"op":"test","path":"'$at'/name","value":"'$name'"},
    {"op":"test","path":"'$at'/restartCount","value":'$restarts'},
    {"op":"replace","path":"'$at'/restartCount","value":'$((restarts + 1))'},
    {"op":"add","path":"'$at'/lastState","value":{"terminated":{"exitCode":137,"reason":"OOMKilled"'${started:+',"startedAt":"'$started'"'}',"finishedAt":"'$now'"}}},
    {"op":"replace","path":"'$at'/state","value":{"running":{"startedAt":"'$now'"}}}]'
  kubectl patch pod -n "$ns" "$pod" --subresource=status --type=json -p "$patch" >/dev/null
  echo "patched pod $ns/$pod container $name: restartCount $restarts -> $((restarts + 1)), lastState.terminated {reason: OOMKilled, exitCode: 137, finishedAt: $now}"
}

usage() {
  cat >&2 <<EOF
usage: $0 COMMAND
  build                         build the binaries into $BIN (cached)
  up                            start a cluster in $STATE (E2E_STATE_DIR)
  down                          stop it and remove the state dir
  env                           print eval-able exports (KUBECONFIG, PROMETHEUS_URL, ...)
  logs                          tail every component log (LOG_LINES=50)
  oom NAMESPACE POD [CONTAINER] make a container look OOM-killed
  prometheus                    install Debian's prometheus if it is missing (the observer's
                                unit tests start one too)
  kubectl ARGS...               run the pinned kubectl as the cluster admin
EOF
  exit 2
}

case ${1:-} in
  build) cmd_build ;;
  up) cmd_up ;;
  down) cmd_down ;;
  env) cmd_env ;;
  logs) cmd_logs ;;
  oom) shift; cmd_oom "$@" ;;
  prometheus) ensure_prometheus ;;
  kubectl) shift; require_up; kubectl "$@" ;;
  *) usage ;;
esac
