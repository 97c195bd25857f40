//! The workload model: what a pre-fork app server pod does under a given load (pure).
//!
//! One model, three uses: the ground truth of the tuner's tests, the benchmark, and the
//! end-to-end workload emulator. It is deliberately independent of the tuner's own estimates.
//!
//! A request holds a slot (a worker, or a thread of one) for `d` seconds of waiting on I/O and
//! `s` seconds of CPU. One process runs on at most one core (the GIL, Ruby's GVL, an event loop),
//! so the CPU the pod can use is `min(cpu limit, workers)`. In a slot a request needs `s/(s+d)`
//! of a core on average, so the CPU lets `cpu·(s+d)/s` requests proceed at once; the slots let
//! `workers·threads`. The pod is then an M/M/m queue with `m` the smaller of the two and service
//! time `s + d`: its capacity is exactly the tighter of the two bottlenecks, and waiting requests
//! sit in the listen backlog. Past capacity the backlog fills, the rest is refused, and what is
//! served waits the whole backlog. Memory is `base + workers·perWorker + slots·perThread`;
//! past the limit the container is OOM-killed.

mod erlang;
mod load;

pub use erlang::{Wait, wait};
pub use load::Load;
use serde::Serialize;

/// gunicorn's default listen backlog (`--backlog 2048`).
pub const DEFAULT_BACKLOG: u32 = 2048;

/// The configuration and resources of one pod.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Pod {
    /// CPU limit, cores.
    pub cpu: f64,
    /// Memory limit, MiB; `None` for no limit.
    pub memory_mib: Option<f64>,
    pub workers: u32,
    /// Concurrent requests per worker: threads, or an event loop's connections.
    pub slots_per_worker: u32,
}

impl Pod {
    pub fn slots(&self) -> f64 {
        f64::from(self.workers) * f64::from(self.slots_per_worker)
    }

    /// Cores the pod can keep busy: one per process at most.
    pub fn usable_cpu(&self) -> f64 {
        self.cpu.min(f64::from(self.workers))
    }
}

/// What requests cost.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Workload {
    /// CPU seconds per request (`s`).
    pub cpu_per_request: f64,
    /// Seconds per request spent waiting on something else (`d`): a database, an upstream API.
    pub wait_per_request: f64,
    /// Memory of the master process and shared pages, MiB.
    pub base_mib: f64,
    /// Memory of each worker, MiB.
    pub per_worker_mib: f64,
    /// Memory of each thread or connection slot, MiB.
    pub per_slot_mib: f64,
    /// Per-worker memory growth, MiB per hour (a leak, a cache that fills).
    pub growth_mib_per_hour: f64,
    /// Listen backlog: connections that may wait for a worker before the kernel refuses more.
    pub backlog: u32,
    /// Squared coefficient of variation of the service time: 1 for exponential (the M/M/m
    /// default), 0 for fixed work per request. Scales the queueing wait by `(1 + cv²)/2`.
    pub service_cv2: f64,
}

impl Workload {
    /// A workload of `s` CPU seconds and `d` waiting seconds per request, 200 MiB base,
    /// 200 MiB per worker, no growth, gunicorn's backlog.
    pub fn new(cpu_per_request: f64, wait_per_request: f64) -> Self {
        Self {
            cpu_per_request,
            wait_per_request,
            base_mib: 200.0,
            per_worker_mib: 200.0,
            per_slot_mib: 0.0,
            growth_mib_per_hour: 0.0,
            backlog: DEFAULT_BACKLOG,
            service_cv2: 1.0,
        }
    }

    fn service(&self) -> f64 {
        self.cpu_per_request + self.wait_per_request
    }

    /// Memory of a pod after `hours` of running.
    pub fn memory_mib(&self, pod: &Pod, hours: f64) -> f64 {
        let per_worker = self.per_worker_mib + self.growth_mib_per_hour * hours.max(0.0);
        self.base_mib + f64::from(pod.workers) * per_worker + pod.slots() * self.per_slot_mib
    }
}

/// A pod's steady state at one offered load.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Serving {
    /// Requests offered, per second.
    pub offered: f64,
    /// Requests completed, per second.
    pub throughput: f64,
    /// Connections refused because the backlog was full, per second.
    pub dropped: f64,
    /// Requests in service at once (the `m` of the queue, or fewer).
    pub parallel: f64,
    /// Mean number waiting in the backlog.
    pub queue: f64,
    /// CPU used, cores.
    pub cpu_cores: f64,
    /// Share of CFS periods throttled, 0–1 (rises steeply as use nears the limit).
    pub cpu_throttled: f64,
    pub memory_mib: f64,
    /// Killed for passing the memory limit.
    pub oom: bool,
    #[serde(skip)]
    latency: Latency,
}

/// Latency = fixed service time + a wait (none, an M/M/m wait, or the full backlog).
#[derive(Clone, Copy, Debug, PartialEq)]
enum Latency {
    Queue {
        service: f64,
        wait: Wait,
    },
    Saturated {
        total: f64,
    },
    /// Nothing was served.
    None,
}

impl Serving {
    /// The `q`-quantile of latency, seconds; `None` when nothing is served.
    pub fn latency(&self, q: f64) -> Option<f64> {
        match self.latency {
            Latency::Queue { service, wait } => Some(service + wait.quantile(q)),
            Latency::Saturated { total } => Some(total),
            Latency::None => None,
        }
    }

    /// Share of requests served within `target` seconds.
    pub fn within(&self, target: f64) -> f64 {
        match self.latency {
            Latency::Queue { service, wait } => wait.cdf(target - service),
            Latency::Saturated { total } if total <= target => 1.0,
            Latency::Saturated { .. } | Latency::None => 0.0,
        }
    }

    /// Requests per second served within `target`: what a user gets. An OOM-killed pod serves
    /// nothing useful while it restarts and loses what was in flight.
    pub fn goodput(&self, target: f64) -> f64 {
        if self.oom {
            0.0
        } else {
            self.throughput * self.within(target)
        }
    }
}

/// The steady state of `pod` serving `workload` at `offered` requests per second, after
/// `hours` of running (memory growth).
pub fn serve(pod: &Pod, workload: &Workload, offered: f64, hours: f64) -> Serving {
    let offered = if offered.is_finite() {
        offered.max(0.0)
    } else {
        0.0
    };
    let s = workload.cpu_per_request.max(1e-9);
    let d = workload.wait_per_request.max(0.0);
    let service = workload.service().max(1e-9);
    let cpu = pod.usable_cpu();
    let m = parallel_requests(pod, s, d, cpu);
    let memory = workload.memory_mib(pod, hours);
    let oom = pod.memory_mib.is_some_and(|limit| memory > limit);
    let memory_mib = match pod.memory_mib {
        Some(limit) if oom => limit,
        _ => memory,
    };
    let base = Serving {
        offered,
        throughput: 0.0,
        dropped: offered,
        parallel: 0.0,
        queue: 0.0,
        cpu_cores: 0.0,
        cpu_throttled: 0.0,
        memory_mib,
        oom,
        latency: Latency::None,
    };
    if m <= 0.0 {
        return base;
    }
    let (throughput, queue, latency) = match wait(m, service, offered) {
        Some(w) => {
            // Allen–Cunneen: less variable work waits less than the exponential assumption.
            let variability = (1.0 + workload.service_cv2.max(0.0)) / 2.0;
            let w = Wait {
                p_wait: w.p_wait,
                rate: w.rate / variability.max(1e-9),
            };
            let rho = offered * service / m;
            let queue =
                (variability * w.p_wait * rho / (1.0 - rho)).min(f64::from(workload.backlog));
            (offered, queue, Latency::Queue { service, wait: w })
        }
        None => {
            let capacity = m / service;
            let backlog = f64::from(workload.backlog);
            let total = service + backlog / capacity;
            (capacity, backlog, Latency::Saturated { total })
        }
    };
    let cpu_cores = (throughput * s).min(cpu);
    Serving {
        throughput,
        dropped: (offered - throughput).max(0.0),
        parallel: throughput * service,
        queue,
        cpu_cores,
        cpu_throttled: throttled_share(cpu_cores, pod.cpu),
        latency,
        ..base
    }
}

/// Requests in service at once: the tighter of the slots and the CPU. Worker processes that
/// share a core run their CPU parts side by side (the kernel slices the core far finer than a
/// request's CPU time) and so hold their slots for `d + s·k`, `k` growing from 1 when waiting
/// dominates nothing (d ≪ s: another worker fills the core) to the processes per core when
/// d ≥ s. Fitted to real gunicorn in docs/calibration.md.
fn parallel_requests(pod: &Pod, s: f64, d: f64, cpu: f64) -> f64 {
    if cpu <= 0.0 {
        return 0.0;
    }
    let service = s + d;
    let per_core = f64::from(pod.workers) / cpu;
    let k = 1.0 + (per_core - 1.0).max(0.0) * (d / s).min(1.0);
    (pod.slots() * service / (d + s * k)).min(cpu * service / s)
}

/// CFS throttles in a period when the quota runs out; with Poisson work that grows like a high
/// power of the utilisation. A rough curve: the tuner reads it only as "near the limit or not".
fn throttled_share(used: f64, limit: f64) -> f64 {
    if limit <= 0.0 {
        return 0.0;
    }
    (used / limit).clamp(0.0, 1.0).powi(4)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(cpu: f64, workers: u32, threads: u32) -> Pod {
        Pod {
            cpu,
            memory_mib: Some(4096.0),
            workers,
            slots_per_worker: threads,
        }
    }

    #[test]
    fn io_bound_capacity_is_slots_over_latency() {
        // LLM proxy: 20 ms CPU, 20 s waiting; 20 slots of 5 processes on 2 cores hold a slot
        // 20 s + 2.5 × 20 ms, so they serve 20/20.05 ≈ 1 request/s.
        let w = Workload::new(0.02, 20.0);
        let out = serve(&pod(2.0, 5, 4), &w, 50.0, 0.0);
        assert!((out.throughput - 20.0 / 20.05).abs() < 1e-9);
        assert!((out.dropped - (50.0 - out.throughput)).abs() < 1e-9);
        assert_eq!(out.queue, 2048.0);
        assert_eq!(
            out.goodput(25.0),
            0.0,
            "the backlog wait is far past the target"
        );
    }

    #[test]
    fn cpu_bound_capacity_is_cores_over_cpu_time() {
        // 50 ms of CPU on 2 cores: at most 40 requests/s, however many workers.
        let w = Workload::new(0.05, 0.005);
        for workers in [3, 5, 9] {
            let out = serve(&pod(2.0, workers, 1), &w, 100.0, 0.0);
            assert!((out.throughput - 40.0).abs() < 1e-6, "{workers}: {out:?}");
            assert!((out.cpu_cores - 2.0).abs() < 1e-6);
        }
        // Two sync workers idle on the CPU while they wait their 5 ms: 2/0.055 ≈ 36.4 req/s.
        let two = serve(&pod(2.0, 2, 1), &w, 100.0, 0.0);
        assert!((two.throughput - 2.0 / 0.055).abs() < 1e-6);
    }

    #[test]
    fn one_process_uses_one_core() {
        // The GIL: one worker with many threads never uses more than a core.
        let w = Workload::new(0.05, 0.0);
        let out = serve(&pod(4.0, 1, 32), &w, 100.0, 0.0);
        assert!((out.throughput - 20.0).abs() < 1e-6);
        assert!((out.cpu_cores - 1.0).abs() < 1e-9);
    }

    #[test]
    fn below_capacity_everything_is_served_and_latency_grows_with_load() {
        let w = Workload::new(0.03, 0.3);
        let light = serve(&pod(2.0, 5, 4), &w, 20.0, 0.0);
        let heavy = serve(&pod(2.0, 5, 4), &w, 50.0, 0.0);
        assert_eq!(light.throughput, 20.0);
        assert_eq!(light.dropped, 0.0);
        let (l95, h95) = (light.latency(0.95).unwrap(), heavy.latency(0.95).unwrap());
        assert!(l95 >= 0.33 - 1e-9 && h95 > l95, "{l95} {h95}");
        assert!(heavy.queue > light.queue);
        assert!((light.cpu_cores - 0.6).abs() < 1e-9);
    }

    #[test]
    fn processes_sharing_a_core_hold_their_slots_longer() {
        // Calibration: 3 sync workers on 1 core, 30 ms CPU + 50 ms waiting. Their CPU parts
        // overlap, so a slot is held 50 + 3 × 30 ms: 3 / 0.14 ≈ 21.4 req/s, not 3 / 0.08.
        let w = Workload::new(0.03, 0.05);
        let out = serve(&pod(1.0, 3, 1), &w, 100.0, 0.0);
        assert!((out.throughput - 3.0 / 0.14).abs() < 1e-9, "{out:?}");
        // One worker per core, or no waiting: unchanged.
        let one = serve(&pod(1.0, 1, 1), &w, 100.0, 0.0);
        assert!((one.throughput - 1.0 / 0.08).abs() < 1e-9);
    }

    #[test]
    fn fixed_work_waits_half_as_long() {
        let mut w = Workload::new(0.05, 0.0);
        let exp = serve(&pod(1.0, 1, 1), &w, 14.0, 0.0);
        w.service_cv2 = 0.0;
        let fixed = serve(&pod(1.0, 1, 1), &w, 14.0, 0.0);
        let wait = |s: &Serving| s.latency(0.95).unwrap() - 0.05;
        assert!((wait(&fixed) - wait(&exp) / 2.0).abs() < 1e-9);
        assert!((fixed.queue - exp.queue / 2.0).abs() < 1e-9);
    }

    #[test]
    fn memory_past_the_limit_is_an_oom_kill() {
        // ML server: 1.5 GiB per worker on a 4 GiB limit fits 2 workers, not 3.
        let mut w = Workload::new(0.2, 0.01);
        w.per_worker_mib = 1536.0;
        assert!(!serve(&pod(4.0, 2, 1), &w, 1.0, 0.0).oom);
        let killed = serve(&pod(4.0, 3, 1), &w, 1.0, 0.0);
        assert!(killed.oom);
        assert_eq!(killed.goodput(10.0), 0.0);
        assert_eq!(killed.memory_mib, 4096.0);
    }

    #[test]
    fn memory_grows_over_time() {
        let mut w = Workload::new(0.01, 0.01);
        w.growth_mib_per_hour = 100.0;
        let p = pod(1.0, 3, 1);
        assert_eq!(w.memory_mib(&p, 0.0), 800.0);
        assert_eq!(w.memory_mib(&p, 2.0), 1400.0);
    }

    #[test]
    fn fractional_cpu_is_counted_as_is() {
        let w = Workload::new(0.05, 0.0);
        let out = serve(&pod(0.5, 2, 1), &w, 100.0, 0.0);
        assert!((out.throughput - 10.0).abs() < 1e-6);
    }

    #[test]
    fn nonsense_load_is_no_load() {
        let out = serve(&pod(1.0, 2, 2), &Workload::new(0.01, 0.01), f64::NAN, 0.0);
        assert_eq!(out.throughput, 0.0);
        assert_eq!(out.latency(0.5), Some(0.02));
    }
}
