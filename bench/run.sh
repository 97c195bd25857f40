#!/usr/bin/env bash
# The tuning-quality benchmark in one command (`make bench`): the cargo bench writes
# docs/benchmark.md and docs/benchmark.json, then bench/chart.py draws docs/benchmark.png.
# The chart runs in a venv kept under ~/.cache (made on first use, reused after); override its
# place with BENCH_VENV.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

# Pinned so the chart is drawn the same way every time.
matplotlib="matplotlib==3.10.8"
venv="${BENCH_VENV:-$HOME/.cache/appserver-operator/bench-venv}"
python="${PYTHON:-python3}"

"${CARGO:-cargo}" bench -p appserver-operator --bench tuning

if ! "$venv/bin/python" -c 'import matplotlib, sys; sys.exit(matplotlib.__version__ != sys.argv[1])' \
    "${matplotlib#*==}" 2>/dev/null; then
  echo "bench: setting up $venv with $matplotlib"
  mkdir -p "$(dirname "$venv")"
  "$python" -m venv "$venv"
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check "$matplotlib"
fi
"$venv/bin/python" bench/chart.py
