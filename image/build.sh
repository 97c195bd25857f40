#!/usr/bin/env bash
# Builds the appserver-operator container image without a container engine (what CI runs here;
# image/Dockerfile is the same image for machines with Docker):
#
#   1. a static binary: glibc linked statically, `cargo build --release` for x86_64-unknown-linux-gnu
#      with -C target-feature=+crt-static, in its own target dir (target/image) so that it neither
#      waits on nor invalidates the dev builds in target/;
#   2. a root filesystem: /appserver-operator, /etc/passwd, /etc/group and /etc/nsswitch.conf from
#      image/rootfs/, this machine's CA bundle, an empty /tmp (1777), all owned by root;
#   3. an OCI image layout, FROM nothing, one layer (a tar with sorted names, numeric owners and
#      every mtime = SOURCE_DATE_EPOCH), assembled with umoci (Debian package), and the same image
#      as a docker-archive tar (skopeo, Debian package) for `docker load`. The same commit gives
#      the same manifest digest.
#
# Output (IMAGE_OUT, default target/image):
#   oci/                                    OCI image layout, tag = the crate version (IMAGE_TAG)
#   appserver-operator-<tag>.docker.tar     docker-archive, named appserver-operator:<tag>
#   rootfs/                                 the layer's contents, as staged
# Then run image/check.sh. Needs: cargo, umoci, skopeo, jq, file, readelf (binutils), and root (the
# layer's files are owned by root). On Debian: apt-get install umoci skopeo jq file binutils.
#
# Environment: IMAGE_OUT, IMAGE_TAG, IMAGE_SOURCE (org.opencontainers.image.source),
# SOURCE_DATE_EPOCH (mtimes and created dates; default: the last commit's time),
# IMAGE_CARGO_TARGET_DIR (cargo's target dir, default target/image; a persistent one, e.g. under
# ~/.cache, makes CI rebuilds incremental), IMAGE_SKIP_CARGO=1 (reuse the built binary).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
start_all=$SECONDS

die() { echo "image/build.sh: $*" >&2; exit 1; }
step() { echo "== $*"; }

missing=()
for tool in cargo umoci skopeo jq file readelf sha256sum; do
  command -v "$tool" >/dev/null || missing+=("$tool")
done
((${#missing[@]} == 0)) || die "missing ${missing[*]} (Debian: apt-get install umoci skopeo jq file binutils)"
[[ $EUID == 0 ]] || die "run as root: the image's files must be owned by root (uid 0)"

out=${IMAGE_OUT:-$root/target/image}
# Its own target dir even when CARGO_TARGET_DIR is set for the dev builds (their lock, their flags).
export CARGO_TARGET_DIR=${IMAGE_CARGO_TARGET_DIR:-$root/target/image}
triple=x86_64-unknown-linux-gnu
[[ $(uname -m) == x86_64 ]] || die "this script builds linux/amd64 only (use image/Dockerfile with buildx for other platforms)"

version=$(cargo metadata --no-deps --format-version 1 --offline 2>/dev/null \
  | jq -r '.packages[] | select(.name == "appserver-operator") | .version')
[[ -n $version ]] || die "cannot read the appserver-operator version from cargo metadata"
tag=${IMAGE_TAG:-$version}
source_url=${IMAGE_SOURCE:-https://example.com/your-org/appserver-operator}
revision=$(git rev-parse HEAD 2>/dev/null || echo unknown)
if [[ -z ${SOURCE_DATE_EPOCH:-} ]]; then
  SOURCE_DATE_EPOCH=$(git log -1 --format=%ct 2>/dev/null || echo 0)
fi
created=$(date -u -d "@$SOURCE_DATE_EPOCH" +%Y-%m-%dT%H:%M:%SZ)

# 1. The static binary.
bin=$CARGO_TARGET_DIR/$triple/release/appserver-operator
if [[ ${IMAGE_SKIP_CARGO:-} != 1 ]]; then
  step "cargo build --release (static glibc) into $CARGO_TARGET_DIR"
  t=$SECONDS
  cargo_home=${CARGO_HOME:-$HOME/.cargo}
  # getrandom 0.3/0.4 (ahash in kube-runtime, rand in kube-lease-manager) find glibc's getrandom()
  # with dlsym(), which a static binary cannot answer: they would fall back to /dev/urandom. The
  # linux_getrandom backend calls getrandom() directly (statically linked, glibc >= 2.25).
  RUSTFLAGS="-C target-feature=+crt-static --cfg getrandom_backend=\"linux_getrandom\" --remap-path-prefix=$root=. --remap-path-prefix=$cargo_home=/cargo" \
    cargo build --release --locked --target "$triple" -p appserver-operator
  echo "   cargo build took $((SECONDS - t))s"
fi
[[ -x $bin ]] || die "no binary at $bin"

step "checking that the binary is static"
file_says=$(file -b "$bin")
echo "   file: $file_says"
[[ $file_says == *"statically linked"* || $file_says == *"static-pie linked"* ]] \
  || die "file does not call $bin statically linked"
! readelf -lW "$bin" | grep -q 'INTERP' || die "$bin asks for a program interpreter (dynamic loader)"
! readelf -dW "$bin" | grep -q '(NEEDED)' || die "$bin needs shared libraries: $(readelf -dW "$bin" | grep NEEDED)"
echo "   ldd: $(ldd "$bin" 2>&1 | tr -s ' \t\n' ' ')"
got=$("$bin" --version)
[[ $got == "appserver-operator $version" ]] || die "--version says '$got', Cargo says $version"

# 2. The root filesystem of the one layer.
step "staging the root filesystem in $out/rootfs"
rootfs=$out/rootfs
rm -rf "$rootfs"
install -d -m 0755 "$rootfs" "$rootfs/etc" "$rootfs/etc/ssl" "$rootfs/etc/ssl/certs"
install -d -m 1777 "$rootfs/tmp"
install -m 0755 "$bin" "$rootfs/appserver-operator"
install -m 0644 image/rootfs/etc/passwd image/rootfs/etc/group image/rootfs/etc/nsswitch.conf "$rootfs/etc/"
ca=/etc/ssl/certs/ca-certificates.crt
[[ -s $ca ]] || die "no CA bundle at $ca (Debian: apt-get install ca-certificates)"
install -m 0644 "$ca" "$rootfs/etc/ssl/certs/ca-certificates.crt"
chown -R 0:0 "$rootfs"
chmod 1777 "$rootfs/tmp"

# 3. The OCI image layout.
step "assembling the OCI image layout $out/oci (umoci $(umoci --version | awk '{print $3}'))"
layout=$out/oci
rm -rf "$layout"
umoci init --layout "$layout"
umoci new --image "$layout:$tag"
# The layer tar: sorted names, owner 0:0 by number, the same mtime everywhere, ustar headers (no
# pax records, so no atime/ctime), no entry for / itself. umoci gzips it and writes the digests.
layer_tar=$out/layer.tar
(cd "$rootfs" && LC_ALL=C find . -mindepth 1 -printf '%P\n' | LC_ALL=C sort) >"$out/layer.list"
tar -C "$rootfs" --create --file "$layer_tar" --format=ustar --no-recursion --verbatim-files-from \
  --numeric-owner --owner=0 --group=0 --mtime="@$SOURCE_DATE_EPOCH" --files-from="$out/layer.list"
umoci raw add-layer --image "$layout:$tag" \
  --history.created "$created" --history.created_by "image/build.sh: static binary, CA bundle, passwd/group, /tmp" \
  "$layer_tar"
rm -f "$layer_tar" "$out/layer.list"
labels=(
  "org.opencontainers.image.title=appserver-operator"
  "org.opencontainers.image.description=Kubernetes operator that deploys app servers and sizes their workers and threads"
  "org.opencontainers.image.source=$source_url"
  "org.opencontainers.image.revision=$revision"
  "org.opencontainers.image.licenses=Apache-2.0"
  "org.opencontainers.image.version=$version"
)
config_args=(
  --created "$created"
  --history.created "$created" --history.created_by "image/build.sh: user, entrypoint, labels"
  --config.user 65532:65532
  --config.entrypoint /appserver-operator
  --config.cmd run
  --config.exposedports 8080/tcp
)
for l in "${labels[@]}"; do config_args+=(--config.label "$l" --manifest.annotation "$l"); done
umoci config --image "$layout:$tag" "${config_args[@]}"
umoci gc --layout "$layout"

step "writing the docker-archive $out/appserver-operator-$tag.docker.tar (skopeo $(skopeo --version | awk '{print $3}'))"
archive=$out/appserver-operator-$tag.docker.tar
rm -f "$archive"
skopeo --insecure-policy copy --quiet "oci:$layout:$tag" "docker-archive:$archive:appserver-operator:$tag"
touch -d "@$SOURCE_DATE_EPOCH" "$archive"

manifest_digest=$(jq -r --arg t "$tag" \
  '.manifests[] | select(.annotations["org.opencontainers.image.ref.name"] == $t) | .digest' "$layout/index.json")
manifest=$layout/blobs/sha256/${manifest_digest#sha256:}
layer_bytes=$(jq '[.layers[].size] | add' "$manifest")
echo "== built appserver-operator:$tag"
echo "   manifest $manifest_digest"
echo "   layer (gzip) $((layer_bytes / 1024)) KiB; binary $(($(stat -c %s "$bin") / 1024)) KiB; rootfs $(du -sk "$rootfs" | cut -f1) KiB"
echo "   docker-archive $((($(stat -c %s "$archive")) / 1024)) KiB"
echo "   image/build.sh took $((SECONDS - start_all))s"
