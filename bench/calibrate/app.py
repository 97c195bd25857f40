"""A tiny WSGI app for calibrating the workload model against a real gunicorn.

Each request burns ``S`` seconds of CPU, then sleeps ``D`` seconds:

* the CPU is a busy loop in Python, so it holds the GIL the way a real app's Python code does,
  and it is measured with ``time.thread_time()``, the CPU time of this very thread: time spent
  waiting for the GIL or for the core (another worker running) is not counted, so every request
  really costs ``S`` CPU seconds whatever the contention;
* the sleep is ``time.sleep``, which releases the GIL, like waiting on a database or an API.

Values come from the environment (``S``, ``D`` in seconds, ``MEM_MB``) or, per request, from the
query string (``?s=0.01&d=0.05``), which wins. ``MEM_MB`` makes each worker hold that much memory
(touched, so it is resident), for memory checks.

Run: ``S=0.01 D=0.05 gunicorn -w 2 --threads 4 app:app`` (from this folder, or ``--chdir``).
"""

import os
import time
from urllib.parse import parse_qs

DEFAULT_S = float(os.environ.get("S", "0.01"))
DEFAULT_D = float(os.environ.get("D", "0"))

# Memory the worker holds, MiB: allocated when gunicorn imports the app (in each worker unless
# --preload), every page written so that it is resident rather than merely reserved.
_HELD = bytearray(int(float(os.environ.get("MEM_MB", "0")) * 1024 * 1024))
for _i in range(0, len(_HELD), 4096):
    _HELD[_i] = 1

# How many loop iterations between two reads of the CPU clock: each read is a system call
# (CLOCK_THREAD_CPUTIME_ID has no vDSO fast path), a few hundred ns, so read it every ~20 µs.
_CHECK_EVERY = 200


def burn(seconds):
    """Use ``seconds`` of this thread's CPU time; returns the CPU seconds actually used."""
    start = time.thread_time()
    end = start + seconds
    x = 0
    now = start
    while now < end:
        for i in range(_CHECK_EVERY):
            x += i * i
        now = time.thread_time()
    return now - start


def _param(query, name, default):
    values = query.get(name)
    if not values:
        return default
    try:
        value = float(values[0])
    except ValueError:
        return default
    return value if value >= 0 else default


def app(environ, start_response):
    query = parse_qs(environ.get("QUERY_STRING", ""))
    s = _param(query, "s", DEFAULT_S)
    d = _param(query, "d", DEFAULT_D)
    t0 = time.monotonic()
    cpu = burn(s) if s > 0 else 0.0
    t1 = time.monotonic()
    if d > 0:
        time.sleep(d)
    t2 = time.monotonic()
    # What the request did in the handler: CPU used, wall time of the CPU part (longer than
    # `cpu` when the GIL or the core was busy elsewhere) and of the sleep, and which worker.
    body = b'{"cpu":%.6f,"wall":%.6f,"burn_wall":%.6f,"sleep_wall":%.6f,"pid":%d}\n' % (
        cpu, t2 - t0, t1 - t0, t2 - t1, os.getpid())
    start_response(
        "200 OK",
        [("Content-Type", "application/json"), ("Content-Length", str(len(body)))],
    )
    return [body]
