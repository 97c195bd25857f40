//! Where a workload is served best, computed from its estimate (pure).
//!
//! Slots: square-root staffing. `a = λ·(s + d)` requests are in service on average (Little's
//! law); `a + β·√a` slots keep the chance of waiting for one small at any scale (Halfin–Whitt),
//! so the latency stays near `s + d`. Workers: enough processes that none of them runs its
//! core (one process, one core) past `PROCESS_BUSY`; threads cover the rest of the slots.

use crate::sizing::{Concurrency, WorkerBounds};

/// Slots above the mean load, in standard deviations of it.
const BETA: f64 = 2.0;
/// Busiest a single process's core may be before another process is added.
const PROCESS_BUSY: f64 = 0.7;

/// The pod's limits and the shape of its server.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Shape {
    pub concurrency: Concurrency,
    pub cpu: f64,
    /// Highest share of the CPU limit the tuner plans to use.
    pub cpu_target: f64,
    pub workers: WorkerBounds,
    pub threads: WorkerBounds,
    /// Most workers the memory allows (already within bounds, ≥ 1).
    pub memory_cap: u32,
}

/// The ideal setting and what limits it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Target {
    pub workers: u32,
    pub threads: u32,
    /// Requests per second that setting is planned to serve.
    pub serves: f64,
    /// The CPU, not the slots, is what limits the load served.
    pub cpu_bound: bool,
    /// Memory kept workers below what the load wanted.
    pub memory_bound: bool,
}

pub fn target(shape: &Shape, s: f64, d: f64, offered: f64) -> Target {
    let s = s.max(1e-6);
    let cpu_rate = shape.cpu * shape.cpu_target / s;
    let serves = offered.min(cpu_rate);
    let a = serves * (s + d);
    let slots = ceil_count(a + BETA * a.sqrt()).max(1);
    let for_cpu = ceil_count(serves * s / PROCESS_BUSY).max(1);
    let (wanted, threads) = match shape.concurrency {
        Concurrency::Processes => (slots, 1),
        Concurrency::EventLoop => (for_cpu, 1),
        Concurrency::Threads => (for_cpu.max(slots.div_ceil(shape.threads.max)), 0),
    };
    let workers = wanted
        .clamp(shape.workers.min, shape.workers.max)
        .min(shape.memory_cap)
        .max(1);
    let threads = match shape.concurrency {
        Concurrency::Threads if threads == 0 => slots
            .div_ceil(workers)
            .clamp(shape.threads.min, shape.threads.max),
        _ => 1,
    };
    Target {
        workers,
        threads,
        serves,
        cpu_bound: offered > cpu_rate,
        memory_bound: wanted > workers && workers == shape.memory_cap,
    }
}

fn ceil_count(x: f64) -> u32 {
    if !x.is_finite() || x <= 0.0 {
        0
    } else if x >= f64::from(u32::MAX) {
        u32::MAX
    } else {
        x.ceil() as u32
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shape(concurrency: Concurrency, cpu: f64, memory_cap: u32) -> Shape {
        Shape {
            concurrency,
            cpu,
            cpu_target: 0.8,
            workers: WorkerBounds::new(1, 64),
            threads: WorkerBounds::new(1, 64),
            memory_cap,
        }
    }

    #[test]
    fn llm_proxy_needs_a_thousand_threads_not_workers() {
        // 50 req/s × 20.02 s = 1001 in flight; +2√1001 ≈ 64 spare.
        let t = target(&shape(Concurrency::Threads, 2.0, 17), 0.02, 20.0, 50.0);
        assert_eq!((t.workers, t.threads), (17, 63));
        assert!(t.workers * t.threads >= 1064);
        assert!(!t.cpu_bound);
    }

    #[test]
    fn cpu_bound_sync_gets_a_few_workers() {
        // 14 req/s × 55 ms = 0.77 in service → 3 workers.
        let t = target(&shape(Concurrency::Processes, 1.0, 64), 0.05, 0.005, 14.0);
        assert_eq!((t.workers, t.threads), (3, 1));
    }

    #[test]
    fn more_than_the_cpu_can_serve_is_planned_at_the_cpu_target() {
        let t = target(&shape(Concurrency::Processes, 1.0, 64), 0.05, 0.005, 100.0);
        assert!(t.cpu_bound);
        assert!((t.serves - 16.0).abs() < 1e-9);
    }

    #[test]
    fn memory_caps_workers_and_threads_take_the_rest() {
        let t = target(&shape(Concurrency::Threads, 4.0, 2), 0.2, 0.01, 10.0);
        assert_eq!(t.workers, 2);
        assert!(t.memory_bound);
        assert!(t.threads >= 2);
    }

    #[test]
    fn busy_cores_get_their_own_processes() {
        // 1.2 cores of Python work need 2 processes even if 2 slots would do.
        let t = target(&shape(Concurrency::Threads, 2.0, 64), 0.03, 0.0, 40.0);
        assert_eq!(t.workers, 2);
    }
}
