#!/usr/bin/env bash
# Checks the image that image/build.sh made, with no container engine and without trusting umoci:
#   - the OCI layout, index, manifest and config are well-formed JSON of the right media types, and
#     every blob's sha256 and size match its descriptor (and the layers' diff_ids their contents);
#   - the config runs as a numeric non-root user and group (what Kubernetes' runAsNonRoot can
#     verify), the entrypoint is /appserver-operator with `run` as the default command, port 8080
#     is exposed and the OCI labels are set;
#   - the layers, unpacked into an empty directory, hold a static binary owned by root and not
#     writable by the user, passwd/group entries for 65532, the CA bundle, /tmp with mode 1777;
#   - in that root (chroot, as 65532:65532, no /dev, /proc or /sys, in a new network namespace with
#     only loopback) the binary runs `--version` and `size --cpu 1`; and `run`, against a stub API
#     server named by a host name (from /etc/hosts, then by DNS through a pod's search domains),
#     resolves it, connects, starts its controller and answers /healthz and /readyz with 200.
# Usage: image/check.sh [LAYOUT_DIR [TAG]]   (default target/image/oci and its only tag)
# Needs root (chroot, unshare), jq, file, readelf, sha256sum, gzip, tar, ip (iproute2), python3.
set -euo pipefail
cd "$(dirname "$0")/.."
start=$SECONDS

layout=${1:-target/image/oci}
tag=${2:-}
failures=0 passes=0
fail() { echo "FAIL: $*" >&2; failures=$((failures + 1)); }
die() { # a failure that leaves nothing further to check
  echo "FAIL: $*" >&2
  echo "image: $passes passed, $((failures + 1)) failed"
  exit 1
}
ok() { echo "ok   $*"; passes=$((passes + 1)); }

for tool in jq file readelf sha256sum gzip tar chroot unshare ip timeout python3; do
  command -v "$tool" >/dev/null || die "missing tool: $tool"
done
[[ $EUID == 0 ]] || die "run as root (chroot and unshare need it)"
[[ -d $layout ]] || die "no OCI layout at $layout (run image/build.sh first)"

json() { # FILE WHAT: FILE must parse as one JSON object
  jq -e 'type == "object"' "$1" >/dev/null 2>&1 || die "$2 ($1) is not a JSON object"
}
blob_path() { echo "$layout/blobs/${1%%:*}/${1#*:}"; }
check_blob() { # DIGEST SIZE WHAT
  local digest=$1 size=$2 what=$3 path
  [[ $digest =~ ^sha256:[0-9a-f]{64}$ ]] || die "$what: digest '$digest' is not sha256:<64 hex>"
  path=$(blob_path "$digest")
  [[ -f $path ]] || die "$what: blob $digest is missing"
  local actual
  actual=$(sha256sum "$path" | cut -d' ' -f1)
  [[ sha256:$actual == "$digest" ]] || die "$what: blob $digest hashes to sha256:$actual"
  [[ $(stat -c %s "$path") == "$size" ]] || die "$what: blob $digest is $(stat -c %s "$path") bytes, descriptor says $size"
}

# --- layout, index, manifest, config ---------------------------------------------------------
json "$layout/oci-layout" "oci-layout"
[[ $(jq -r .imageLayoutVersion "$layout/oci-layout") == 1.0.0 ]] || die "oci-layout: imageLayoutVersion is not 1.0.0"
json "$layout/index.json" "index.json"
[[ $(jq .schemaVersion "$layout/index.json") == 2 ]] || die "index.json: schemaVersion is not 2"
if [[ -z $tag ]]; then
  mapfile -t tags < <(jq -r '.manifests[].annotations["org.opencontainers.image.ref.name"] // empty' "$layout/index.json")
  ((${#tags[@]} == 1)) || die "index.json names ${#tags[@]} tags (${tags[*]:-}); pass the tag to check"
  tag=${tags[0]}
fi
desc=$(jq -c --arg t "$tag" '[.manifests[] | select(.annotations["org.opencontainers.image.ref.name"] == $t)]' "$layout/index.json")
[[ $(jq length <<<"$desc") == 1 ]] || die "index.json: no single manifest tagged $tag"
desc=$(jq -c '.[0]' <<<"$desc")
[[ $(jq -r .mediaType <<<"$desc") == application/vnd.oci.image.manifest.v1+json ]] \
  || die "index.json: $tag is not an OCI image manifest ($(jq -r .mediaType <<<"$desc"))"
manifest_digest=$(jq -r .digest <<<"$desc")
check_blob "$manifest_digest" "$(jq -r .size <<<"$desc")" "manifest"
manifest=$(blob_path "$manifest_digest")
json "$manifest" "manifest"
[[ $(jq .schemaVersion "$manifest") == 2 ]] || die "manifest: schemaVersion is not 2"
[[ $(jq -r .config.mediaType "$manifest") == application/vnd.oci.image.config.v1+json ]] || die "manifest: config media type is $(jq -r .config.mediaType "$manifest")"
config_digest=$(jq -r .config.digest "$manifest")
check_blob "$config_digest" "$(jq -r .config.size "$manifest")" "config"
config=$(blob_path "$config_digest")
json "$config" "config"
nlayers=$(jq '.layers | length' "$manifest")
((nlayers >= 1)) || die "manifest: no layers"
[[ $(jq '.rootfs.diff_ids | length' "$config") == "$nlayers" ]] || die "config: $(jq '.rootfs.diff_ids | length' "$config") diff_ids for $nlayers layers"
[[ $(jq -r .rootfs.type "$config") == layers ]] || die "config: rootfs.type is not layers"
for ((i = 0; i < nlayers; i++)); do
  ldigest=$(jq -r ".layers[$i].digest" "$manifest")
  lmedia=$(jq -r ".layers[$i].mediaType" "$manifest")
  check_blob "$ldigest" "$(jq -r ".layers[$i].size" "$manifest")" "layer $i"
  case $lmedia in
    application/vnd.oci.image.layer.v1.tar+gzip) diff=$(gzip -dc "$(blob_path "$ldigest")" | sha256sum | cut -d' ' -f1) ;;
    application/vnd.oci.image.layer.v1.tar) diff=$(sha256sum <"$(blob_path "$ldigest")" | cut -d' ' -f1) ;;
    *) die "layer $i: unexpected media type $lmedia" ;;
  esac
  [[ sha256:$diff == "$(jq -r ".rootfs.diff_ids[$i]" "$config")" ]] || die "layer $i: uncompressed sha256:$diff is not diff_ids[$i]"
done
# Every file under blobs/ is named after its own hash (catches a corrupted or stray blob).
while IFS= read -r -d '' f; do
  [[ $(sha256sum "$f" | cut -d' ' -f1) == "$(basename "$f")" ]] || fail "blob $f does not hash to its name"
done < <(find "$layout/blobs/sha256" -type f -print0)
ok "layout, index, manifest $manifest_digest, config and $nlayers layer(s): well-formed, digests and sizes match"

# The docker-archive build.sh writes beside the layout: the same config and layers, uncompressed.
archive=$(dirname "$layout")/appserver-operator-$tag.docker.tar
if [[ -f $archive ]]; then
  archive_ok=1
  archive_manifest=$(tar -xOf "$archive" manifest.json 2>/dev/null) || archive_manifest=""
  if ! jq -e 'type == "array" and length == 1' <<<"$archive_manifest" >/dev/null 2>&1; then
    fail "$archive: manifest.json is missing or not one image"
    archive_ok=0
  else
    [[ $(jq -r '.[0].Config' <<<"$archive_manifest") == "${config_digest#sha256:}.json" ]] \
      || { fail "$archive: its config is not the OCI config $config_digest"; archive_ok=0; }
    [[ $(jq -c '[.[0].Layers[] | sub("\\.tar$"; "")]' <<<"$archive_manifest") == "$(jq -c '[.rootfs.diff_ids[] | sub("^sha256:"; "")]' "$config")" ]] \
      || { fail "$archive: its layers are not the config's diff_ids"; archive_ok=0; }
    for member in $(jq -r '.[0].Config, .[0].Layers[]' <<<"$archive_manifest"); do
      [[ $(tar -xOf "$archive" "$member" | sha256sum | cut -d' ' -f1) == "${member%.*}" ]] \
        || { fail "$archive: $member does not hash to its name"; archive_ok=0; }
    done
  fi
  ((archive_ok)) && ok "docker-archive $(basename "$archive"): same config and layers, digests match"
fi

# --- config -------------------------------------------------------------------------------------
[[ $(jq -r .os "$config") == linux ]] || fail "config: os is $(jq -r .os "$config")"
[[ $(jq -r .architecture "$config") == amd64 ]] || fail "config: architecture is $(jq -r .architecture "$config")"
user=$(jq -r '.config.User // ""' "$config")
uid=${user%%:*}
gid=${user#*:}
[[ $user == *:* ]] || gid=""
if [[ -z $user ]]; then
  fail "config: User is empty (the image would run as root)"
elif [[ ! $uid =~ ^[0-9]+$ ]] || [[ -n $gid && ! $gid =~ ^[0-9]+$ ]]; then
  fail "config: User '$user' is not numeric (Kubernetes runAsNonRoot cannot verify a user name)"
elif ((uid == 0)) || { [[ -n $gid ]] && ((gid == 0)); }; then
  fail "config: User '$user' is root"
else
  ok "config: User $user (non-root, numeric)"
fi
if [[ $(jq -c '.config.Entrypoint' "$config") == '["/appserver-operator"]' ]]; then
  ok "config: Entrypoint [\"/appserver-operator\"]"
else
  fail "config: Entrypoint is $(jq -c '.config.Entrypoint' "$config")"
fi
if [[ $(jq -c '.config.Cmd' "$config") == '["run"]' ]]; then
  ok "config: Cmd [\"run\"]"
else
  fail "config: Cmd is $(jq -c '.config.Cmd' "$config")"
fi
if jq -e '.config.ExposedPorts | has("8080/tcp")' "$config" >/dev/null; then
  ok "config: exposes 8080/tcp"
else
  fail "config: 8080/tcp is not exposed"
fi
labels_ok=1
for l in title description source revision licenses version; do
  v=$(jq -r --arg k "org.opencontainers.image.$l" '.config.Labels[$k] // ""' "$config")
  [[ -n $v ]] || { fail "config: label org.opencontainers.image.$l is missing"; labels_ok=0; }
done
if [[ $(jq -r '.config.Labels["org.opencontainers.image.licenses"] // ""' "$config") != Apache-2.0 ]]; then
  fail "config: licenses label is not Apache-2.0"
  labels_ok=0
fi
version=$(jq -r '.config.Labels["org.opencontainers.image.version"] // ""' "$config")
((labels_ok)) && ok "config: OCI labels (version $version)"

# --- the unpacked root filesystem ------------------------------------------------------------
work=$(mktemp -d "${TMPDIR:-/tmp}/appserver-image-check.XXXXXX")
trap 'rm -rf "$work"' EXIT
rootfs=$work/rootfs
mkdir -m 0755 "$rootfs"
for ((i = 0; i < nlayers; i++)); do
  lpath=$(blob_path "$(jq -r ".layers[$i].digest" "$manifest")")
  tar -tf "$lpath" >"$work/layer-$i.list" 2>"$work/tar.err" || die "layer $i is not a readable tar: $(head -c 300 "$work/tar.err")"
  if grep -Eq '(^|/)\.wh\.|(^|/)\.\.(/|$)|^/' "$work/layer-$i.list"; then
    die "layer $i has whiteouts, absolute or .. paths (a scratch image should have none)"
  fi
  tar -xf "$lpath" -C "$rootfs" --numeric-owner --same-permissions || die "layer $i does not unpack"
done
entry=$rootfs/appserver-operator
[[ -f $entry && ! -L $entry ]] || die "rootfs: /appserver-operator is not a regular file"
[[ $(stat -c '%u:%g %a' "$entry") == "0:0 755" ]] || fail "rootfs: /appserver-operator is $(stat -c '%u:%g %a' "$entry"), want 0:0 755"
file_says=$(file -b "$entry")
if [[ $file_says == *"statically linked"* || $file_says == *"static-pie linked"* ]] \
  && ! readelf -lW "$entry" | grep -q INTERP && ! readelf -dW "$entry" | grep -q '(NEEDED)'; then
  ok "rootfs: /appserver-operator is static ($file_says)"
else
  fail "rootfs: /appserver-operator is not static: $file_says"
fi
grep -q "^[^:]*:[^:]*:$uid:${gid:-$uid}:" "$rootfs/etc/passwd" 2>/dev/null || fail "rootfs: /etc/passwd has no entry for $uid:${gid:-$uid}"
grep -q "^[^:]*:[^:]*:${gid:-$uid}:" "$rootfs/etc/group" 2>/dev/null || fail "rootfs: /etc/group has no entry for ${gid:-$uid}"
grep -q '^hosts:[[:space:]]*files dns' "$rootfs/etc/nsswitch.conf" 2>/dev/null || fail "rootfs: /etc/nsswitch.conf does not say 'hosts: files dns'"
grep -q 'BEGIN CERTIFICATE' "$rootfs/etc/ssl/certs/ca-certificates.crt" 2>/dev/null || fail "rootfs: no CA certificates in /etc/ssl/certs/ca-certificates.crt"
[[ $(stat -c %a "$rootfs/tmp" 2>/dev/null) == 1777 ]] || fail "rootfs: /tmp is not a directory with mode 1777"
writable=$(find "$rootfs" -path "$rootfs/tmp" -prune -o \( ! -uid 0 -o -perm /022 \) ! -type l -print | sed "s|^$rootfs||")
[[ -z $writable ]] || fail "rootfs: not root-owned or group/other-writable: $writable"
ok "rootfs: passwd/group for $user, nsswitch.conf, CA bundle, /tmp 1777, files root-owned"

# --- run it in the empty root: as the image's user, in a network namespace of its own --------
# The root has no /dev, /proc or /sys (a container runtime would mount them): the binary must not
# need them. Nothing leaves the machine: a new network namespace has only loopback.
chroot_bin=$(command -v chroot)
in_root() { # DIR ARGS...: the binary in a chroot of DIR as the image's uid:gid, empty environment
  local dir=$1; shift
  timeout 60 unshare --net --fork sh -c 'ip link set lo up && exec "$@"' sh \
    env -i PATH=/ HOME=/home/nonroot "$chroot_bin" --userspec="$uid:${gid:-$uid}" "$dir" /appserver-operator "$@"
}
if out=$(in_root "$rootfs" --version 2>&1) && [[ $out == "appserver-operator $version" ]]; then
  ok "runs in an empty root as $uid:${gid:-$uid}: --version → $out"
else
  fail "--version in the image root: $out"
fi
if out=$(in_root "$rootfs" size --cpu 1 2>&1) && grep -q '^workers: *3$' <<<"$out"; then
  ok "runs in an empty root: size --cpu 1 → $(grep '^workers' <<<"$out" | tr -s ' '), $(grep '^threads' <<<"$out" | tr -s ' ')"
else
  fail "size --cpu 1 in the image root: $out"
fi

# `run` the way a pod runs it, against image/stub-apiserver.py (an API server that answers
# /version, empty lists and silent watches) reached by a host name: the statically linked glibc
# must resolve the name, the operator must connect, start its controller and serve /healthz and
# /readyz on 8080. As in a pod, /etc/hosts and /etc/resolv.conf are the runtime's (kubelet writes
# both), so the check writes them into a copy of the root; image/fake-dns.py answers DNS on
# 127.0.0.1:53 when a test gives it names.
run_root=$work/run-root
cp -a "$rootfs" "$run_root"
printf '127.0.0.1\tlocalhost\n127.0.0.1\tmyapiserver\n' >"$run_root/etc/hosts"
printf '%s\n' 'nameserver 127.0.0.1' 'search appserver-system.svc.cluster.local svc.cluster.local cluster.local' \
  'options ndots:5' >"$run_root/etc/resolv.conf"
chmod 0644 "$run_root/etc/hosts" "$run_root/etc/resolv.conf"
runs_against_stub() { # SERVER_URL WHAT [NAME=IP...]: `run` must resolve SERVER_URL, connect and get ready
  local server=$1 what=$2; shift 2
  local out
  out=$(mktemp -d "$work/run.XXXXXX")
  printf '%s\n' 'apiVersion: v1' 'kind: Config' \
    "clusters: [{name: check, cluster: {server: \"$server\"}}]" \
    'users: [{name: check, user: {token: not-a-real-token}}]' \
    'contexts: [{name: check, context: {cluster: check, user: check, namespace: appserver-system}}]' \
    'current-context: check' >"$run_root/tmp/kubeconfig"
  chmod 0644 "$run_root/tmp/kubeconfig"
  timeout 90 unshare --net --fork bash image/netns-run.sh \
    "$run_root" "$uid:${gid:-$uid}" "$out" "$chroot_bin" "$@" || true
  local result log
  result=$(cat "$out/result" 2>/dev/null)
  log=$(sed 's/\x1b\[[0-9;]*m//g' "$out/operator.log" 2>/dev/null)
  if [[ $result == "healthz=200 readyz=200 alive=yes" ]] && grep -q 'connected' <<<"$log"; then
    ok "run: resolves $what, connects to $server, serves /healthz and /readyz (200)"
  else
    fail "run with server $server ($what): ${result:-no result}
$(tail -n 6 <<<"$log")"
  fi
}
runs_against_stub http://myapiserver:6443 "a name from /etc/hosts"
runs_against_stub http://prometheus.monitoring:6443 "a service name by DNS with a pod's search domains" \
  prometheus.monitoring.svc.cluster.local=127.0.0.1

echo "image/check.sh took $((SECONDS - start))s (appserver-operator:$tag)"
echo "image: $passes passed, $failures failed"
((failures == 0))
