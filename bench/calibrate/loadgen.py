"""Open-loop Poisson load generator for the calibration benchmark (loopback only).

Requests arrive at Poisson times whatever the server does (open loop): a slow server does not
slow the arrivals down, so its queue builds up as it would in production. Each request's latency
is measured from its *scheduled* arrival time to the end of its response, so any delay in
sending (this process being late) and all queueing (listen backlog, gthread's internal queue,
the GIL, the core) are counted.

One asyncio loop, one new TCP connection per request (``Connection: close``: gunicorn's sync
worker closes anyway), no limit on concurrency but ``--max-inflight`` (far above what the
benchmark needs). The arrival count is exactly ``round(rate·warmup)`` in the warm-up and
``round(rate·duration)`` in the measured window, at uniform order-statistic times within each: a
Poisson process conditioned on its counts, which removes the count's own ±1/√n noise from the
throughput comparison (``--arrivals poisson`` for the unconditioned process).

Only requests scheduled after ``--warmup`` seconds count for latency; throughput is the number
of successful responses completed within the measured window, divided by its length. With
``--server-pid`` (the gunicorn master) and ``--server-core`` it also measures, over the window,
the CPU used by the server's processes and by everything on that core (to spot a noisy
neighbour), and it reports its own CPU use and how late it sent, to show it is not the
bottleneck.

Prints one JSON object on stdout. Stops by itself: at most warmup + duration + timeout seconds.
"""

import argparse
import asyncio
import json
import os
import random
import resource
import sys
import time

CLK_TCK = os.sysconf("SC_CLK_TCK")


def percentile(sorted_values, q):
    """Nearest-rank percentile of an already sorted list; None when empty."""
    if not sorted_values:
        return None
    k = max(0, min(len(sorted_values) - 1, int(q * len(sorted_values) + 0.999999) - 1))
    return sorted_values[k]


def proc_cpu_seconds(pid):
    """utime + stime of one process (all its threads), seconds; None if it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    # After the command: state is field 3, utime 14, stime 15 (1-based, man 5 proc).
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def children(pid):
    """PIDs whose parent is ``pid``."""
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            out.append(int(entry))
    return out


def server_cpu_seconds(pid):
    """CPU seconds of a process and its children (gunicorn's master and workers), by pid."""
    pids = [pid] + children(pid)
    return {p: proc_cpu_seconds(p) for p in pids}


def core_busy_seconds(core):
    """Seconds core ``core`` was busy (not idle, not iowait) since boot."""
    with open("/proc/stat") as f:
        for line in f:
            if line.startswith(f"cpu{core} "):
                v = [int(x) for x in line.split()[1:]]
                # user nice system idle iowait irq softirq steal ...
                return (v[0] + v[1] + v[2] + v[5] + v[6] + v[7]) / CLK_TCK
    return None


def own_cpu_seconds():
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


class Result:
    __slots__ = ("scheduled", "sent", "done", "status", "error", "body")

    def __init__(self, scheduled):
        self.scheduled = scheduled
        self.sent = None
        self.done = None
        self.status = None
        self.error = None
        self.body = None


async def one(res, host, port, request, timeout):
    loop = asyncio.get_running_loop()
    res.sent = loop.time()
    writer = None
    try:
        async def exchange():
            nonlocal writer
            reader, writer = await asyncio.open_connection(host, port)
            writer.write(request)
            return await reader.read()  # to EOF: the server closes after the response

        data = await asyncio.wait_for(exchange(), timeout)
        res.done = loop.time()
        head, _, body = data.partition(b"\r\n\r\n")
        status_line = head.split(b"\r\n", 1)[0].split()
        if len(status_line) < 2:
            res.error = "bad_response"
            return
        res.status = int(status_line[1])
        if res.status != 200:
            res.error = f"http_{res.status}"
        res.body = body
    except asyncio.TimeoutError:
        res.error = "timeout"
    except ConnectionRefusedError:
        res.error = "refused"
    except ConnectionResetError:
        res.error = "reset"
    except OSError as e:
        res.error = f"os_{e.errno}"
    finally:
        if writer is not None:
            writer.close()


async def run(args):
    loop = asyncio.get_running_loop()
    total = args.warmup + args.duration
    rng = random.Random(args.seed)
    n = max(0, round(args.rate * args.warmup) + round(args.rate * args.duration))
    if args.arrivals == "poisson":
        times, t = [], 0.0
        while args.rate > 0:
            t += rng.expovariate(args.rate)
            if t >= total:
                break
            times.append(t)
    else:
        # Exact counts in the warm-up and in the measured window, uniform within each.
        n_warm = round(args.rate * args.warmup)
        times = sorted(rng.uniform(0.0, args.warmup) for _ in range(n_warm))
        times += sorted(rng.uniform(args.warmup, total) for _ in range(n - n_warm))
    request = (
        f"GET {args.path} HTTP/1.1\r\nHost: {args.host}:{args.port}\r\n"
        f"User-Agent: calibrate-loadgen\r\nConnection: close\r\n\r\n"
    ).encode()

    t0 = loop.time() + 0.05
    window = (t0 + args.warmup, t0 + total)
    samples = {}

    async def sample(at, key):
        await asyncio.sleep(max(0.0, at - loop.time()))
        samples[key] = {
            "t": loop.time(),
            "own": own_cpu_seconds(),
            "server": server_cpu_seconds(args.server_pid) if args.server_pid else None,
            "core": core_busy_seconds(args.server_core) if args.server_core is not None else None,
        }

    samplers = [
        asyncio.create_task(sample(window[0], "start")),
        asyncio.create_task(sample(window[1], "end")),
    ]
    results, tasks = [], set()
    inflight = max_inflight = 0
    shed = 0

    def finished(task):
        nonlocal inflight
        inflight -= 1
        tasks.discard(task)

    for t in times:
        at = t0 + t
        delay = at - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        res = Result(at)
        results.append(res)
        if inflight >= args.max_inflight:
            res.error = "shed"
            shed += 1
            continue
        inflight += 1
        max_inflight = max(max_inflight, inflight)
        task = asyncio.create_task(one(res, args.host, args.port, request, args.timeout))
        tasks.add(task)
        task.add_done_callback(finished)
    await asyncio.gather(*samplers)
    if tasks:
        await asyncio.wait(set(tasks), timeout=args.timeout + 1.0)
    end_all = loop.time()

    measured = [r for r in results if r.scheduled >= window[0]]
    ok = [r for r in measured if r.error is None and r.done is not None]
    lat = sorted(r.done - r.scheduled for r in ok)
    lag = sorted(r.sent - r.scheduled for r in measured if r.sent is not None)
    completed_in_window = sum(
        1
        for r in results
        if r.error is None and r.done is not None and window[0] <= r.done <= window[1]
    )
    errors = {}
    for r in measured:
        if r.error is not None:
            errors[r.error] = errors.get(r.error, 0) + 1
        elif r.done is None:
            errors["unfinished"] = errors.get("unfinished", 0) + 1

    # What the app said it did: CPU and wall time inside the handler, and which worker.
    app_cpu, app_wall, burn_wall, sleep_wall, per_pid = [], [], [], [], {}
    for r in ok:
        try:
            b = json.loads(r.body)
        except (ValueError, TypeError):
            continue
        app_cpu.append(b.get("cpu", 0.0))
        app_wall.append(b.get("wall", 0.0))
        burn_wall.append(b.get("burn_wall", 0.0))
        sleep_wall.append(b.get("sleep_wall", 0.0))
        pid = str(b.get("pid"))
        per_pid[pid] = per_pid.get(pid, 0) + 1

    span = window[1] - window[0]
    out = {
        "rate": args.rate,
        "warmup": args.warmup,
        "duration": args.duration,
        "arrivals": args.arrivals,
        "scheduled": len(measured),
        "ok": len(ok),
        "errors": errors,
        "error_count": sum(errors.values()),
        "throughput": completed_in_window / span if span > 0 else None,
        "offered": len(measured) / span if span > 0 else None,
        "p50": percentile(lat, 0.50),
        "p95": percentile(lat, 0.95),
        "p99": percentile(lat, 0.99),
        "mean": sum(lat) / len(lat) if lat else None,
        "max": lat[-1] if lat else None,
        "app_cpu_mean": sum(app_cpu) / len(app_cpu) if app_cpu else None,
        "app_wall_mean": sum(app_wall) / len(app_wall) if app_wall else None,
        "app_wall_p95": percentile(sorted(app_wall), 0.95),
        "app_burn_wall_mean": sum(burn_wall) / len(burn_wall) if burn_wall else None,
        "app_sleep_wall_mean": sum(sleep_wall) / len(sleep_wall) if sleep_wall else None,
        "per_worker": per_pid,
        "send_lag_p99": percentile(lag, 0.99),
        "send_lag_max": lag[-1] if lag else None,
        "max_inflight": max_inflight,
        "drain_seconds": end_all - window[1],
    }
    s, e = samples.get("start"), samples.get("end")
    if s and e:
        dt = e["t"] - s["t"]
        out["loadgen_cpu_cores"] = (e["own"] - s["own"]) / dt
        if s["server"] is not None:
            used = sum(
                e["server"][p] - s["server"][p]
                for p in s["server"]
                if s["server"][p] is not None and e["server"].get(p) is not None
            )
            out["server_cpu_cores"] = used / dt
            out["server_processes"] = len(s["server"])
        if s["core"] is not None:
            out["core_busy"] = (e["core"] - s["core"]) / dt
            if "server_cpu_cores" in out:
                out["core_foreign"] = max(0.0, out["core_busy"] - out["server_cpu_cores"])
    return out


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--path", default="/")
    p.add_argument("--rate", type=float, required=True, help="requests per second")
    p.add_argument("--duration", type=float, default=20.0, help="measured seconds")
    p.add_argument("--warmup", type=float, default=3.0, help="unmeasured seconds first")
    p.add_argument("--timeout", type=float, default=30.0, help="per request, seconds")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--arrivals", choices=["fixed-count", "poisson"], default="fixed-count")
    p.add_argument("--max-inflight", type=int, default=4000)
    p.add_argument("--server-pid", type=int, help="the server's master process")
    p.add_argument("--server-core", type=int, help="the core the server is pinned to")
    args = p.parse_args()
    if args.host not in ("127.0.0.1", "localhost", "::1") and not args.host.startswith("127."):
        sys.exit("loadgen: loopback targets only")
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = min(hard, max(soft, args.max_inflight + 256))
    if want > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    out = asyncio.run(run(args))
    json.dump(out, sys.stdout)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
