#!/usr/bin/env bash
# Runs the pinned Helm, building it from its Go module on first use:
#   charts/helm.sh lint charts/appserver-operator
# The binary is cached in ~/.cache/appserver-operator/helm/<version>/bin (XDG_CACHE_HOME is
# honoured) and counts as cached only if `helm version` runs. Delete that directory to rebuild.
set -euo pipefail

HELM_VERSION=v3.21.4
# Helm's own Makefile stamps these; without them `helm version` says v3.21 and the default
# .Capabilities.KubeVersion is v1.20. 1.36 matches the k8s.io/client-go v0.36 Helm v3.21.4 uses.
KUBE_MAJOR=1
KUBE_MINOR=36

BIN=${XDG_CACHE_HOME:-$HOME/.cache}/appserver-operator/helm/$HELM_VERSION/bin
HELM=$BIN/helm

log() { printf '[helm.sh %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
cached() { [[ -x $HELM ]] && "$HELM" version --short >/dev/null 2>&1; }

build() {
  local go=go start=$SECONDS tmp
  command -v go >/dev/null || go=/usr/local/go/bin/go
  tmp=$(mktemp -d "$BIN/.build.XXXXXX")
  log "building helm $HELM_VERSION into $BIN (first use; a few minutes)"
  local pkg=helm.sh/helm/v3
  local ldflags="-s -w -X $pkg/internal/version.version=$HELM_VERSION -X $pkg/internal/version.gitTreeState=clean"
  ldflags+=" -X $pkg/pkg/chartutil.k8sVersionMajor=$KUBE_MAJOR -X $pkg/pkg/chartutil.k8sVersionMinor=$KUBE_MINOR"
  ldflags+=" -X $pkg/pkg/lint/rules.k8sVersionMajor=$KUBE_MAJOR -X $pkg/pkg/lint/rules.k8sVersionMinor=$KUBE_MINOR"
  if ! CGO_ENABLED=0 GOTOOLCHAIN=local GOFLAGS=-mod=readonly GOBIN=$tmp \
    "$go" install -trimpath -ldflags "$ldflags" "$pkg/cmd/helm@$HELM_VERSION"; then
    rm -rf "$tmp"
    log "ERROR: building helm $HELM_VERSION failed"
    exit 1
  fi
  mv -f "$tmp/helm" "$HELM"
  rm -rf "$tmp"
  cached || { log "ERROR: helm was built but does not run"; exit 1; }
  log "built $("$HELM" version --short) in $((SECONDS - start))s"
}

if ! cached; then
  mkdir -p "$BIN"
  # One build at a time (tests may call this script concurrently); the lock is released
  # before helm runs.
  (
    flock 9
    cached || build
  ) 9>"$BIN/.lock"
fi
exec "$HELM" "$@"
