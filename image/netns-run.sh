#!/usr/bin/env bash
# Used by image/check.sh, inside a fresh network namespace (`unshare --net --fork`): starts
# image/stub-apiserver.py on 127.0.0.1:6443 and, given NAME=IP answers, image/fake-dns.py on
# 127.0.0.1:53; runs `appserver-operator run` in a chroot of ROOT as USER (KUBECONFIG=/tmp/kubeconfig
# inside ROOT) until /readyz answers 200, the process dies, or 30 s pass; then stops everything.
# Writes OUT/result ("healthz=<code> readyz=<code> alive=yes|no"), OUT/operator.log and the
# fakes' logs.
# Usage: netns-run.sh ROOT UID:GID OUT CHROOT [NAME=IP...]
set -u
root=$1 user=$2 out=$3 chroot_bin=$4
shift 4
here=$(cd "$(dirname "$0")" && pwd)
ip link set lo up || { echo "ip link set lo up failed" >"$out/result"; exit 1; }

pids=()
python3 "$here/stub-apiserver.py" "$out/api.ready" 6443 >"$out/api.log" 2>&1 &
pids+=($!)
if (($# > 0)); then
  python3 "$here/fake-dns.py" "$out/dns.ready" "$@" >"$out/dns.log" 2>&1 &
  pids+=($!)
else
  : >"$out/dns.ready"
fi
for _ in $(seq 100); do
  [[ -e $out/api.ready && -e $out/dns.ready ]] && break
  sleep 0.1
done
if [[ ! -e $out/api.ready || ! -e $out/dns.ready ]]; then
  echo "the stub API server or the fake DNS did not start: $(cat "$out"/*.log)" >"$out/result"
  kill "${pids[@]}" 2>/dev/null
  exit 1
fi

env -i PATH=/ HOME=/home/nonroot KUBECONFIG=/tmp/kubeconfig POD_NAME=image-check POD_NAMESPACE=appserver-system \
  "$chroot_bin" --userspec="$user" "$root" /appserver-operator run >"$out/operator.log" 2>&1 &
op=$!

running() { # the operator has not exited (a zombie, exited but not yet waited for, has not run on)
  [[ -r /proc/$op/stat ]] && [[ $(sed 's/.*) //' "/proc/$op/stat" | cut -d' ' -f1) != Z ]]
}
code() { # PATH: HTTP status of GET http://127.0.0.1:8080PATH, or "none"
  python3 -c '
import sys, urllib.request, urllib.error
try:
    print(urllib.request.urlopen("http://127.0.0.1:8080" + sys.argv[1], timeout=2).status)
except urllib.error.HTTPError as e:
    print(e.code)
except Exception:
    print("none")' "$1"
}
healthz=none readyz=none
for _ in $(seq 60); do
  running || break
  healthz=$(code /healthz)
  readyz=$(code /readyz)
  [[ $readyz == 200 ]] && break
  sleep 0.5
done
sleep 1 # still alive a moment after it got ready?
alive=no
running && alive=yes
echo "healthz=$healthz readyz=$readyz alive=$alive" >"$out/result"

kill -TERM "$op" 2>/dev/null
for _ in $(seq 50); do
  kill -0 "$op" 2>/dev/null || break
  sleep 0.1
done
kill -KILL "$op" 2>/dev/null
kill "${pids[@]}" 2>/dev/null
wait
exit 0
