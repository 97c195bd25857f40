#!/usr/bin/env bash
# Calibrates the workload model (operator/src/model) against a real gunicorn on this machine.
#
# A benchmark, not part of CI: it needs 2 cores, `taskset`, Python 3 and PyPI (for gunicorn), and
# takes ~14 minutes. For each point (workers, threads, s, d) it starts gunicorn on
# bench/calibrate/app.py pinned to core 1 (a pod with cpu=1), drives it from core 0 with the
# open-loop generator bench/calibrate/loadgen.py at ~50 % and ~85 % of the model's capacity, and
# compares the measured throughput and p95 with the model's (operator/examples/model_point.rs).
# Writes docs/calibration.json (raw results) and docs/calibration.md (method, table, errors).
#
#   bench/calibrate/run.sh                 # the full run
#   DURATION=5 WARMUP=1 POINTS="1 1 0.01 0" bench/calibrate/run.sh   # a quick look
#   bench/calibrate/run.sh --report-only   # rewrite docs/calibration.md from the saved JSON
#
# Settings (environment): DURATION (measured seconds per load, 20), WARMUP (seconds, 3),
# LOADS (shares of the model's capacity, "0.5 0.85"), POINTS (lines "workers threads s d"),
# PORT (18431), CALIBRATE_VENV, GUNICORN_VERSION, PRIORITY (autogroup nice for gunicorn and the
# generator, -19; empty to leave it), OUT_DIR (docs).
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
VENV="${CALIBRATE_VENV:-$HOME/.cache/appserver-operator/calibrate-venv}"
GUNICORN_VERSION="${GUNICORN_VERSION:-27.0.1}"
DURATION="${DURATION:-20}"
WARMUP="${WARMUP:-3}"
LOADS="${LOADS:-0.5 0.85}"
PORT="${PORT:-18431}"
PRIORITY="${PRIORITY--19}"
OUT_DIR="${OUT_DIR:-$ROOT/docs}"
SERVER_CORE=1
LOADGEN_CORE=0

# workers threads s d: sync workers (threads 1) and gthread (threads > 1), CPU-bound (d = 0) and
# with waiting (d = 50 ms); which of CPU or slots binds varies across them.
DEFAULT_POINTS="
1 1 0.010 0
1 1 0.030 0.050
1 1 0.010 0.050
2 1 0.010 0
2 1 0.030 0.050
2 1 0.010 0.050
3 1 0.030 0
3 1 0.010 0.050
1 2 0.030 0
1 2 0.010 0.050
1 4 0.010 0
1 4 0.010 0.050
1 8 0.030 0.050
2 2 0.010 0.050
2 4 0.030 0.050
2 8 0.010 0
"
POINTS="${POINTS:-$DEFAULT_POINTS}"

REPORT_ONLY=0
if [[ "${1:-}" == "--report-only" ]]; then
    REPORT_ONLY=1
fi

log() { printf '[calibrate %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

# ---------------------------------------------------------------------------------------------
# The model: build the example once, then ask it one JSON line at a time.
# ---------------------------------------------------------------------------------------------
TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}"
MODEL="$TARGET_DIR/debug/examples/model_point"
log "building the model example"
MODEL_BUILD=fresh
if ! (cd "$ROOT" && cargo build -q -p appserver-operator --example model_point); then
    # The work tree may be mid-edit elsewhere; an example built before still has a model.
    if [[ -x "$MODEL" ]]; then
        log "WARNING: the build failed; using the model_point built before ($(date -r "$MODEL" '+%F %T'))"
        MODEL_BUILD="stale: built $(date -r "$MODEL" '+%F %T')"
    else
        exit 1
    fi
fi

model() { # cpu workers threads s d rps -> one JSON line
    printf '{"cpu":%s,"workers":%s,"threads":%s,"s":%s,"d":%s,"rps":%s}\n' "$@" | "$MODEL"
}

# ---------------------------------------------------------------------------------------------
# The report: docs/calibration.json and docs/calibration.md from the raw results.
# ---------------------------------------------------------------------------------------------
report() { # raw-results.jsonl (or the saved calibration.json) -> docs
    python3 - "$1" "$MODEL" "$OUT_DIR" <<'PY'
import json, math, os, statistics, subprocess, sys

src, model_bin, out_dir = sys.argv[1:4]
with open(src) as f:
    text = f.read()
if src.endswith(".json"):
    saved = json.loads(text)
    meta, rows = saved["meta"], saved["points"]
else:
    lines = [json.loads(l) for l in text.splitlines() if l.strip()]
    meta = next(l["meta"] for l in lines if "meta" in l)
    rows = [l for l in lines if "point" in l]

def model(points):
    inp = "".join(json.dumps(p) + "\n" for p in points)
    out = subprocess.run([model_bin], input=inp, capture_output=True, text=True, check=True)
    return [json.loads(l) for l in out.stdout.splitlines()]

def rel(model_v, meas_v):
    if model_v is None or meas_v is None or meas_v <= 0:
        return None
    return (model_v - meas_v) / meas_v

# The model again with the CPU per request the server really used (app + gunicorn + kernel),
# to separate "s is larger than the app's own CPU" from the model's structure.
for r in rows:
    p, m = r["point"], r["measured"]
    nominal = dict(cpu=1, workers=p["workers"], threads=p["threads"], s=p["s"], d=p["d"], rps=p["rate"])
    r["model"] = model([nominal])[0]
    tput = m.get("throughput") or 0
    if m.get("server_cpu_cores") and tput > 0:
        s_eff = m["server_cpu_cores"] / tput
        r["s_eff"] = s_eff
        r["model_s_eff"] = model([dict(nominal, s=s_eff)])[0]
    else:
        r["s_eff"] = None
        r["model_s_eff"] = None
    slots = p["workers"] * p["threads"]
    m_cpu = min(1.0, p["workers"]) * (p["s"] + p["d"]) / p["s"]
    r["binds"] = "cpu" if m_cpu <= slots else "slots"
    r["kind"] = "sync" if p["threads"] == 1 else "gthread"
    r["err"] = {
        "tput": rel(r["model"]["throughput"], m.get("throughput")),
        "p95": rel(r["model"]["p95"], m.get("p95")),
        "p95_s_eff": rel((r["model_s_eff"] or {}).get("p95"), m.get("p95")),
        "tput_s_eff": rel((r["model_s_eff"] or {}).get("throughput"), m.get("throughput")),
    }

os.makedirs(out_dir, exist_ok=True)
with open(os.path.join(out_dir, "calibration.json"), "w") as f:
    json.dump({"meta": meta, "points": rows}, f, indent=1)
    f.write("\n")

def pct(x):
    return "–" if x is None else f"{x*100:+.0f} %"

def ms(x):
    return "–" if x is None else f"{x*1000:.0f}"

def stats(vals):
    vals = [abs(v) for v in vals if v is not None]
    if not vals:
        return "–", "–", 0
    return f"{statistics.mean(vals)*100:.0f} %", f"{max(vals)*100:.0f} %", len(vals)

def name(p):
    kind = "sync" if p["threads"] == 1 else f"gthread×{p['threads']}"
    return f"w{p['workers']} {kind} s={p['s']*1000:.0f} d={p['d']*1000:.0f}"

L = []
L.append("# Calibrating the workload model against gunicorn")
L.append("")
L.append("Generated by `bench/calibrate/run.sh` on "
         f"{meta['date']} ({meta['elapsed_s']/60:.1f} min run); raw results in "
         "[calibration.json](calibration.json). Not part of CI.")
L.append("")
L.append("## Method")
L.append("")
L.append(f"""- **Server**: gunicorn {meta['gunicorn']} (Python {meta['python']}) serving
  `bench/calibrate/app.py`, pinned with `taskset -c {meta['server_core']}`: one core, so it is
  compared with the model's `cpu = 1`. Each request burns `s` of CPU in a Python busy loop
  (measured with `time.thread_time()`, so it is real CPU and holds the GIL), then sleeps `d`
  (`time.sleep` releases the GIL, like I/O). `threads = 1` runs the `sync` worker, more runs
  `gthread`. Default backlog (2048), one new connection per request.
- **Load**: `bench/calibrate/loadgen.py`, open loop on loopback, pinned to core
  {meta['loadgen_core']}: Poisson arrivals (exactly rate·T of them at uniform order-statistic
  times, so the count itself carries no noise) at {' and '.join(f'{float(x)*100:.0f} %' for x in meta['loads'].split())}
  of the **model's** capacity for the point; latency from the *scheduled* send time to the last
  byte, so the generator's own lateness and every queue count. {meta['warmup']:g} s of warm-up,
  then {meta['duration']:g} s measured per load.
- **Model**: `operator/examples/model_point.rs` (`serve` at the same offered rate). The
  "model @ s_eff" columns run it again with the CPU per request the server processes really
  used (`/proc` utime+stime of master and workers over the window ÷ completions): that removes
  the error that is only "gunicorn's own per-request CPU is not in `s`" and leaves the model's
  structure.
- **Noise control**: other sessions build on this machine. gunicorn and the generator run in
  their own scheduler autogroups at nice {meta['priority'] or '0'} so that a neighbour's compiler gets
  a small share of the core while they are busy; `foreign` is what the core did for others
  over the window (it fills the idle time too, so it is only a warning sign, the app's own
  `wall − cpu` in the JSON is the real check). Load average at start: {meta['loadavg_start']}.
- Relative error = (model − measured) / measured.""")
L.append("")
L.append("## Results")
L.append("")
L.append("| point | binds | load | offered | tput meas. | tput model | err | p95 meas. ms | p95 model ms | err | p95 model@s_eff ms | err | s_eff ms | errors |")
L.append("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
for r in rows:
    p, m, mo, me = r["point"], r["measured"], r["model"], r["model_s_eff"] or {}
    L.append("| " + " | ".join([
        name(p), r["binds"], f"{p['load']*100:.0f} %", f"{p['rate']:.1f}",
        f"{m.get('throughput') or 0:.1f}", f"{mo['throughput']:.1f}", pct(r["err"]["tput"]),
        ms(m.get("p95")), ms(mo.get("p95")), pct(r["err"]["p95"]),
        ms(me.get("p95")), pct(r["err"]["p95_s_eff"]),
        "–" if r["s_eff"] is None else f"{r['s_eff']*1000:.1f}",
        str(m.get("error_count", 0)),
    ]) + " |")
L.append("")
L.append("`binds`: which bound sets the model's parallelism `m = min(workers·threads, "
         "cpu·(s+d)/s)` — `cpu` or `slots`.")
L.append("")
L.append("### Error summary (absolute relative error)")
L.append("")
L.append("| class | points | throughput mean | max | p95 mean | max | p95 @ s_eff mean | max |")
L.append("|---|---:|---:|---:|---:|---:|---:|---:|")
classes = [("all", lambda r: True)]
classes += [(f"{k}", (lambda k: lambda r: r["kind"] == k)(k)) for k in ("sync", "gthread")]
classes += [(f"binds {b}", (lambda b: lambda r: r["binds"] == b)(b)) for b in ("cpu", "slots")]
classes += [(f"d = {d}", (lambda d: lambda r: (r["point"]["d"] > 0) == (d != "0"))(d)) for d in ("0", "50 ms")]
for load in sorted({r["point"]["load"] for r in rows}):
    classes.append((f"load {load*100:.0f} %", (lambda l: lambda r: r["point"]["load"] == l)(load)))
classes += [
    ("sync, load 85 %", lambda r: r["kind"] == "sync" and r["point"]["load"] > 0.8),
    ("gthread, binds slots, d = 50 ms", lambda r: r["kind"] == "gthread" and r["binds"] == "slots" and r["point"]["d"] > 0),
    ("gthread, binds cpu", lambda r: r["kind"] == "gthread" and r["binds"] == "cpu"),
]
for label, pred in classes:
    sel = [r for r in rows if pred(r)]
    if not sel:
        continue
    t = stats(r["err"]["tput"] for r in sel)
    q = stats(r["err"]["p95"] for r in sel)
    e = stats(r["err"]["p95_s_eff"] for r in sel)
    L.append(f"| {label} | {len(sel)} | {t[0]} | {t[1]} | {q[0]} | {q[1]} | {e[0]} | {e[1]} |")
L.append("")
# Signed biases, for the analysis.
def mean_signed(key, pred):
    v = [r["err"][key] for r in rows if pred(r) and r["err"][key] is not None]
    return statistics.mean(v) if v else None
overhead = [r["s_eff"] - r["point"]["s"] for r in rows if r["s_eff"] is not None and r["point"]["threads"] == 1]
overhead_g = [r["s_eff"] - r["point"]["s"] for r in rows if r["s_eff"] is not None and r["point"]["threads"] > 1]
gil = [r["measured"]["app_wall_mean"] - r["point"]["s"] - r["point"]["d"]
       for r in rows if r["measured"].get("app_wall_mean") is not None and r["point"]["threads"] == 1 and r["point"]["workers"] == 1]
lag = [r["measured"].get("send_lag_p99") for r in rows if r["measured"].get("send_lag_p99") is not None]
foreign = [r["measured"].get("core_foreign") for r in rows if r["measured"].get("core_foreign") is not None]
L.append("### Measured side facts")
L.append("")
if overhead:
    L.append(f"- gunicorn's own CPU per request, sync (s_eff − s): mean {statistics.mean(overhead)*1000:.2f} ms "
             f"(min {min(overhead)*1000:.2f}, max {max(overhead)*1000:.2f}).")
if overhead_g:
    L.append(f"- the same for gthread: mean {statistics.mean(overhead_g)*1000:.2f} ms "
             f"(min {min(overhead_g)*1000:.2f}, max {max(overhead_g)*1000:.2f}).")
if gil:
    L.append(f"- one sync worker alone on the core, time in the handler beyond s + d: mean "
             f"{statistics.mean(gil)*1000:.2f} ms (the timer and sleep granularity, the neighbours).")
if lag:
    L.append(f"- generator lateness, p99 of the send delay per point: median {statistics.median(lag)*1000:.1f} ms, "
             f"max {max(lag)*1000:.1f} ms (counted in the latency).")
if foreign:
    L.append(f"- core {meta['server_core']} busy for other processes: median {statistics.median(foreign):.2f}, max {max(foreign):.2f} cores.")
for label, pred in [("sync", lambda r: r["kind"] == "sync"),
                    ("gthread, binds slots, d = 50 ms", lambda r: r["kind"] == "gthread" and r["binds"] == "slots" and r["point"]["d"] > 0),
                    ("gthread, binds cpu", lambda r: r["kind"] == "gthread" and r["binds"] == "cpu")]:
    b = mean_signed("p95", pred)
    if b is not None:
        L.append(f"- signed mean p95 error, {label}: {b*100:+.0f} % (negative: the model is optimistic).")
L.append("")
analysis = os.environ.get("CALIBRATION_ANALYSIS")
if analysis and os.path.exists(analysis):
    with open(analysis) as f:
        L.append(f.read().rstrip())
        L.append("")
with open(os.path.join(out_dir, "calibration.md"), "w") as f:
    f.write("\n".join(L))
print(os.path.join(out_dir, "calibration.md"))
PY
}

if [[ $REPORT_ONLY == 1 ]]; then
    CALIBRATION_ANALYSIS="${CALIBRATION_ANALYSIS:-$HERE/analysis.md}" report "$OUT_DIR/calibration.json"
    exit 0
fi

# ---------------------------------------------------------------------------------------------
# The environment.
# ---------------------------------------------------------------------------------------------
command -v taskset >/dev/null || { echo "taskset (util-linux) is needed" >&2; exit 1; }
if (($(nproc) < 2)); then
    echo "needs 2 cores: one for gunicorn, one for the load generator" >&2
    exit 1
fi
if [[ ! -x "$VENV/bin/python" ]]; then
    log "creating the venv $VENV"
    python3 -m venv "$VENV"
fi
if ! "$VENV/bin/python" -c "import gunicorn, sys; sys.exit(gunicorn.__version__ != '$GUNICORN_VERSION')" 2>/dev/null; then
    log "installing gunicorn $GUNICORN_VERSION"
    "$VENV/bin/pip" install -q "gunicorn==$GUNICORN_VERSION"
fi
PY="$VENV/bin/python"

WORK="$(mktemp -d "${TMPDIR:-/tmp}/calibrate.XXXXXX")"
RAW="$WORK/results.jsonl"
GUNICORN_PID=""
cleanup() {
    if [[ -n "$GUNICORN_PID" ]] && kill -0 "$GUNICORN_PID" 2>/dev/null; then
        kill -TERM "$GUNICORN_PID" 2>/dev/null || true
        wait "$GUNICORN_PID" 2>/dev/null || true
    fi
}
trap cleanup EXIT

# Runs a command in a new session (its own scheduler autogroup) at autogroup nice $PRIORITY,
# pinned to one core. With autogroups on, plain `nice` only ranks a process against its own
# session, not against a neighbour's compiler.
pinned() { # core command...
    local core="$1"
    shift
    # exec: called in a subshell (`&` or `$(…)`), so the pid stays the server's own.
    exec setsid bash -c '[[ -n "$1" ]] && { echo "$1" >/proc/$$/autogroup; } 2>/dev/null; shift; exec taskset -c "$@"' \
        _ "$PRIORITY" "$core" "$@"
}

start_gunicorn() { # workers threads s d
    local workers="$1" threads="$2" s="$3" d="$4" kind=sync
    ((threads > 1)) && kind=gthread
    S="$s" D="$d" pinned "$SERVER_CORE" "$VENV/bin/gunicorn" \
        --chdir "$HERE" -k "$kind" -w "$workers" --threads "$threads" \
        -b "127.0.0.1:$PORT" --backlog 2048 --timeout 120 --graceful-timeout 3 \
        --log-level warning --error-logfile "$WORK/gunicorn.log" app:app &
    GUNICORN_PID=$!
    local i
    for i in $(seq 100); do
        if "$PY" -c "import urllib.request,sys; urllib.request.urlopen('http://127.0.0.1:$PORT/?s=0&d=0', timeout=1)" 2>/dev/null; then
            # Every worker up (master + workers), not just the first.
            if (($(pgrep -c -P "$GUNICORN_PID" || true) >= workers)); then
                return 0
            fi
        fi
        sleep 0.1
    done
    echo "gunicorn did not start:" >&2
    cat "$WORK/gunicorn.log" >&2
    return 1
}

stop_gunicorn() {
    kill -TERM "$GUNICORN_PID" 2>/dev/null || true
    wait "$GUNICORN_PID" 2>/dev/null || true
    GUNICORN_PID=""
}

if "$PY" -c "import socket; s=socket.socket(); s.connect(('127.0.0.1', $PORT))" 2>/dev/null; then
    echo "port $PORT is in use; set PORT" >&2
    exit 1
fi

START=$(date +%s)
n_points=$(grep -c . <<<"$POINTS")
n_loads=$(wc -w <<<"$LOADS")
log "$n_points points × $n_loads loads × (${WARMUP}+${DURATION}) s; work dir $WORK"
"$PY" - "$RAW" <<PY
import json, sys, platform, datetime
import gunicorn
meta = dict(date=datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            gunicorn=gunicorn.__version__, python=platform.python_version(),
            server_core=$SERVER_CORE, loadgen_core=$LOADGEN_CORE, duration=$DURATION, warmup=$WARMUP,
            loads="$LOADS", priority="$PRIORITY", model_build="$MODEL_BUILD", loadavg_start=open("/proc/loadavg").read().split()[0],
            kernel=platform.release())
with open(sys.argv[1], "w") as f:
    f.write(json.dumps({"meta": meta}) + "\n")
PY

seed=1
while read -r workers threads s d; do
    [[ -z "${workers:-}" ]] && continue
    capacity=$(model 1 "$workers" "$threads" "$s" "$d" 0 | "$PY" -c 'import json,sys; print(json.load(sys.stdin)["capacity"])')
    start_gunicorn "$workers" "$threads" "$s" "$d"
    for load in $LOADS; do
        rate=$("$PY" -c "print(round($capacity * $load, 2))")
        log "w=$workers t=$threads s=$s d=$d: capacity $capacity/s, load $load → $rate/s"
        loadavg=$(cut -d' ' -f1 /proc/loadavg)
        measured=$(pinned "$LOADGEN_CORE" "$PY" "$HERE/loadgen.py" --port "$PORT" --rate "$rate" \
            --duration "$DURATION" --warmup "$WARMUP" --seed "$seed" \
            --server-pid "$GUNICORN_PID" --server-core "$SERVER_CORE")
        seed=$((seed + 1))
        printf '{"point":{"workers":%s,"threads":%s,"s":%s,"d":%s,"load":%s,"rate":%s,"capacity":%s,"loadavg":%s},"measured":%s}\n' \
            "$workers" "$threads" "$s" "$d" "$load" "$rate" "$capacity" "$loadavg" "$measured" >>"$RAW"
        "$PY" -c 'import json,sys; m=json.loads(sys.argv[1]); print("    tput %.1f/s p95 %s ms errors %d server cpu %.2f foreign %.2f lag99 %.1f ms" % (m["throughput"], "-" if m["p95"] is None else "%.0f" % (m["p95"]*1000), m["error_count"], m.get("server_cpu_cores", 0), m.get("core_foreign", 0), (m.get("send_lag_p99") or 0)*1000))' "$measured" >&2
    done
    stop_gunicorn
done <<<"$POINTS"

ELAPSED=$(($(date +%s) - START))
"$PY" - "$RAW" "$ELAPSED" <<'PY'
import json, sys
path, elapsed = sys.argv[1], int(sys.argv[2])
lines = open(path).read().splitlines()
meta = json.loads(lines[0])
meta["meta"]["elapsed_s"] = elapsed
lines[0] = json.dumps(meta)
open(path, "w").write("\n".join(lines) + "\n")
PY
CALIBRATION_ANALYSIS="${CALIBRATION_ANALYSIS:-$HERE/analysis.md}" report "$RAW"
log "done in $((ELAPSED / 60)) min $((ELAPSED % 60)) s: $OUT_DIR/calibration.md, $OUT_DIR/calibration.json"
