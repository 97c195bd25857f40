//! The starting formulas (design §4, sources in docs/sizing.md) and the memory cap.

use std::fmt::Write as _;

use serde::Serialize;

use crate::api::{ServerKind, ServerSpec, WorkerClass, WorkloadClass};

/// Share of the memory limit the workers may plan to use; the rest absorbs growth between
/// recycles and allocator slack, so the estimate is not run right up to the OOM killer.
pub const MEMORY_SAFETY: f64 = 0.9;

/// Connections per worker for event-loop servers (uvicorn's and gevent's usual default).
pub const EVENT_LOOP_CONNECTIONS: u32 = 1000;

/// How a server runs requests concurrently inside one worker process.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Concurrency {
    /// A pool of threads per process (gunicorn gthread, Puma).
    Threads,
    /// One request per process (gunicorn sync, Unicorn, PHP-FPM).
    Processes,
    /// An event loop per process serving many connections (uvicorn, gevent, Node).
    EventLoop,
}

impl Concurrency {
    /// The concurrency model of a server; gunicorn's follows its worker class, which defaults
    /// from the workload (sync for CPU-bound work, gthread otherwise).
    pub fn of(server: &ServerSpec, workload: WorkloadClass) -> Self {
        match server.kind {
            ServerKind::Gunicorn => match effective_worker_class(server, workload) {
                WorkerClass::Sync => Self::Processes,
                WorkerClass::Gthread => Self::Threads,
                WorkerClass::Gevent | WorkerClass::Uvicorn => Self::EventLoop,
            },
            ServerKind::Puma => Self::Threads,
            ServerKind::Unicorn | ServerKind::PhpFpm => Self::Processes,
            ServerKind::Uvicorn | ServerKind::Node => Self::EventLoop,
            ServerKind::Generic => match server.variables.as_ref().and_then(|v| v.threads.as_ref())
            {
                Some(_) => Self::Threads,
                None => Self::Processes,
            },
        }
    }
}

/// gunicorn's worker class: the declared one, else sync for CPU-bound work and gthread otherwise.
pub fn effective_worker_class(server: &ServerSpec, workload: WorkloadClass) -> WorkerClass {
    server.worker_class.unwrap_or(match workload {
        WorkloadClass::CpuBound => WorkerClass::Sync,
        WorkloadClass::IoBound | WorkloadClass::Mixed => WorkerClass::Gthread,
    })
}

/// Memory: total = base + workers × per worker.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct MemoryModel {
    pub base_mib: f64,
    pub per_worker_mib: f64,
}

/// Inclusive bounds, already validated (min ≥ 1, min ≤ max) by the CRD.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WorkerBounds {
    pub min: u32,
    pub max: u32,
}

impl WorkerBounds {
    /// Bounds from the spec's numbers; out-of-range values are repaired (min at least 1, max at
    /// least min) so the core never trusts unchecked input.
    pub fn new(min: i32, max: i32) -> Self {
        let min = u32::try_from(min).unwrap_or(1).max(1);
        let max = u32::try_from(max).unwrap_or(min).max(min);
        Self { min, max }
    }

    fn clamp(self, n: u32) -> u32 {
        n.clamp(self.min, self.max)
    }
}

impl From<&crate::api::Bounds> for WorkerBounds {
    fn from(b: &crate::api::Bounds) -> Self {
        Self::new(b.min, b.max)
    }
}

/// Everything the formulas need.
#[derive(Clone, Debug, PartialEq)]
pub struct SizingInput {
    pub cpu_cores: f64,
    /// The memory the container may use before the OOM killer acts; `None` means unbounded.
    pub memory_mib: Option<f64>,
    pub concurrency: Concurrency,
    pub workload: WorkloadClass,
    pub memory: MemoryModel,
    pub workers: WorkerBounds,
    pub threads: WorkerBounds,
}

/// The numbers and the sentence that explains them.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Sizing {
    pub workers: u32,
    /// Threads per worker; 1 for process-only and event-loop servers.
    pub threads: u32,
    /// Connections per worker for event-loop servers.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub connections: Option<u32>,
    pub concurrency: Concurrency,
    /// Most workers the memory allows, when memory is bounded.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub memory_cap: Option<u32>,
    /// Expected memory use: base + workers × per worker, in MiB.
    #[serde(rename = "memoryEstimateMiB")]
    pub memory_estimate_mib: u64,
    pub explanation: String,
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SizingError {
    #[error(
        "{min} worker(s) need {needed} MiB ({base} MiB base + {min} × {per} MiB) but only {usable} MiB of the {limit} MiB memory limit is planned for ({pct}%): raise the memory limit, lower spec.memory.perWorkerMiB or spec.tuning.workers.min",
        pct = (MEMORY_SAFETY * 100.0) as u32
    )]
    DoesNotFit {
        min: u32,
        needed: u64,
        base: u64,
        per: u64,
        usable: u64,
        limit: u64,
    },
    #[error("the CPU basis must be a positive number of cores, got {0}")]
    BadCpu(f64),
}

/// Sizes an app server. Deterministic; never panics; on success the workers lie within their
/// bounds (and ≥ 1) and so do the threads of threaded servers.
pub fn size(input: &SizingInput) -> Result<Sizing, SizingError> {
    let cpu = input.cpu_cores;
    if !(cpu.is_finite() && cpu > 0.0) {
        return Err(SizingError::BadCpu(cpu));
    }
    let (formula_workers, formula_threads, formula) =
        formula(input.concurrency, input.workload, cpu);
    let mut note = String::new();

    let mut workers = input.workers.clamp(formula_workers);
    bound_note(&mut note, "workers", formula_workers, workers);

    let memory_cap = input
        .memory_mib
        .map(|limit| memory_cap(limit, input.memory));
    if let Some(cap) = memory_cap {
        if cap < input.workers.min {
            return Err(does_not_fit(input, input.memory_mib.unwrap_or_default()));
        }
        if workers > cap {
            let _ = write!(note, "; memory caps workers at {cap}");
            workers = cap;
        }
    }

    let threads = match input.concurrency {
        Concurrency::Threads => {
            let t = input.threads.clamp(formula_threads);
            bound_note(&mut note, "threads", formula_threads, t);
            t
        }
        Concurrency::Processes | Concurrency::EventLoop => 1,
    };
    let connections =
        (input.concurrency == Concurrency::EventLoop).then_some(EVENT_LOOP_CONNECTIONS);
    let estimate = estimate_mib(input.memory, workers);
    let explanation = explain(
        input,
        formula,
        workers,
        threads,
        connections,
        estimate,
        &note,
    );
    Ok(Sizing {
        workers,
        threads,
        connections,
        concurrency: input.concurrency,
        memory_cap,
        memory_estimate_mib: estimate,
        explanation,
    })
}

/// The seeds' formulas, with fractional CPU counted honestly (a 500m limit is half a core).
fn formula(
    concurrency: Concurrency,
    workload: WorkloadClass,
    cpu: f64,
) -> (u32, u32, &'static str) {
    let per_core = |k: f64| to_count((k * cpu).floor());
    match (concurrency, workload) {
        (Concurrency::EventLoop, _) => (per_core(1.0).max(1), 1, "one event loop per core"),
        (Concurrency::Threads, WorkloadClass::IoBound) => (
            per_core(2.0).saturating_add(1),
            4,
            "(2 × CPU) + 1 workers × 4 threads",
        ),
        (Concurrency::Threads, WorkloadClass::Mixed) => (
            per_core(2.0).saturating_add(1),
            2,
            "(2 × CPU) + 1 workers × 2 threads",
        ),
        (_, WorkloadClass::CpuBound) => (per_core(1.0).saturating_add(1), 1, "CPU + 1 workers"),
        (Concurrency::Processes, WorkloadClass::IoBound) => {
            (per_core(4.0).max(1), 1, "CPU × 4 workers")
        }
        (Concurrency::Processes, WorkloadClass::Mixed) => {
            (per_core(2.0).saturating_add(1), 1, "(2 × CPU) + 1 workers")
        }
    }
}

/// Most workers that fit: ⌊(limit × safety − base) / per worker⌋, 0 when not even one does.
pub fn memory_cap(limit_mib: f64, memory: MemoryModel) -> u32 {
    let per = memory.per_worker_mib.max(1.0);
    let room = limit_mib * MEMORY_SAFETY - memory.base_mib.max(0.0);
    if room <= 0.0 {
        0
    } else {
        to_count((room / per).floor())
    }
}

fn estimate_mib(memory: MemoryModel, workers: u32) -> u64 {
    let total = memory.base_mib.max(0.0) + f64::from(workers) * memory.per_worker_mib.max(0.0);
    total.round() as u64
}

fn does_not_fit(input: &SizingInput, limit: f64) -> SizingError {
    let min = input.workers.min;
    SizingError::DoesNotFit {
        min,
        needed: estimate_mib(input.memory, min),
        base: input.memory.base_mib.max(0.0).round() as u64,
        per: input.memory.per_worker_mib.max(0.0).round() as u64,
        usable: (limit * MEMORY_SAFETY).floor().max(0.0) as u64,
        limit: limit.round().max(0.0) as u64,
    }
}

/// A non-negative float to a count, saturating (NaN and negatives become 0).
fn to_count(x: f64) -> u32 {
    if x.is_nan() || x <= 0.0 {
        0
    } else if x >= f64::from(u32::MAX) {
        u32::MAX
    } else {
        x as u32
    }
}

fn bound_note(note: &mut String, what: &str, wanted: u32, got: u32) {
    if got > wanted {
        let _ = write!(note, "; raised to tuning.{what}.min {got}");
    } else if got < wanted {
        let _ = write!(note, "; lowered to tuning.{what}.max {got}");
    }
}

fn explain(
    input: &SizingInput,
    formula: &str,
    workers: u32,
    threads: u32,
    connections: Option<u32>,
    estimate: u64,
    note: &str,
) -> String {
    let per_worker = match (input.concurrency, connections) {
        (Concurrency::EventLoop, Some(c)) => format!(" × {c} connections"),
        (Concurrency::Threads, _) => format!(
            " × {threads} threads = {} concurrent requests",
            workers.saturating_mul(threads)
        ),
        _ => String::new(),
    };
    let memory = match input.memory_mib {
        Some(limit) => format!("; ~{estimate} MiB of {} MiB memory", limit.round() as u64),
        None => format!("; ~{estimate} MiB memory, no limit"),
    };
    format!(
        "{} CPU, {}: {formula}{note} → {workers} workers{per_worker}{memory}",
        format_cores(input.cpu_cores),
        workload_name(input.workload),
    )
}

/// Cores as a short decimal: 2, 0.5, 1.25.
pub fn format_cores(cores: f64) -> String {
    let s = format!("{cores:.3}");
    s.trim_end_matches('0').trim_end_matches('.').to_string()
}

fn workload_name(w: WorkloadClass) -> &'static str {
    match w {
        WorkloadClass::IoBound => "io-bound",
        WorkloadClass::CpuBound => "cpu-bound",
        WorkloadClass::Mixed => "mixed",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sizing::{NodeShape, resolve_basis};
    use proptest::prelude::*;

    const SEED_MEMORY: MemoryModel = MemoryModel {
        base_mib: 200.0,
        per_worker_mib: 200.0,
    };
    const WIDE: WorkerBounds = WorkerBounds { min: 1, max: 64 };

    fn input(
        cpu: f64,
        memory_mib: Option<f64>,
        concurrency: Concurrency,
        workload: WorkloadClass,
    ) -> SizingInput {
        SizingInput {
            cpu_cores: cpu,
            memory_mib,
            concurrency,
            workload,
            memory: SEED_MEMORY,
            workers: WIDE,
            threads: WIDE,
        }
    }

    fn io_gthread(cpu: f64) -> Sizing {
        size(&input(
            cpu,
            None,
            Concurrency::Threads,
            WorkloadClass::IoBound,
        ))
        .unwrap()
    }

    #[test]
    fn seed_io_bound_examples() {
        for (cpu, workers, total) in [(1.0, 3, 12), (2.0, 5, 20), (4.0, 9, 36)] {
            let s = io_gthread(cpu);
            assert_eq!(
                (s.workers, s.threads, s.workers * s.threads),
                (workers, 4, total),
                "{cpu} CPU"
            );
        }
    }

    #[test]
    fn seed_memory_arithmetic() {
        // 3 workers × 200 MiB + 200 MiB base = 800 MiB.
        let s = io_gthread(1.0);
        assert_eq!(s.memory_estimate_mib, 800);
    }

    #[test]
    fn one_cpu_limit_on_a_64_core_node_is_3_workers_not_129() {
        let limits = k8s_openapi::api::core::v1::ResourceRequirements {
            limits: Some(
                [(
                    "cpu".to_string(),
                    k8s_openapi::apimachinery::pkg::api::resource::Quantity("1".into()),
                )]
                .into(),
            ),
            ..Default::default()
        };
        let node = NodeShape {
            name: "huge".into(),
            cpu_cores: 64.0,
            memory_mib: 262144.0,
        };
        let basis = resolve_basis(Some(&limits), &[node]).unwrap();
        let s = io_gthread(basis.cpu_cores);
        assert_eq!(s.workers, 3);
        assert_ne!(s.workers, 129);
    }

    #[test]
    fn half_a_core_is_not_one_core() {
        let s = io_gthread(0.5);
        assert_eq!(s.workers, 2, "(2 × 0.5) + 1");
        assert!(s.explanation.starts_with("0.5 CPU"), "{}", s.explanation);
        let s = size(&input(
            0.5,
            None,
            Concurrency::Processes,
            WorkloadClass::CpuBound,
        ))
        .unwrap();
        assert_eq!(s.workers, 1, "0.5 + 1 floored");
    }

    #[test]
    fn cpu_bound_is_cpu_plus_one_sync_workers() {
        for (cpu, workers) in [(1.0, 2), (2.0, 3), (4.0, 5)] {
            let s = size(&input(
                cpu,
                None,
                Concurrency::Processes,
                WorkloadClass::CpuBound,
            ))
            .unwrap();
            assert_eq!((s.workers, s.threads), (workers, 1));
        }
    }

    #[test]
    fn event_loops_one_per_core_with_connections() {
        let s = size(&input(
            4.0,
            None,
            Concurrency::EventLoop,
            WorkloadClass::IoBound,
        ))
        .unwrap();
        assert_eq!((s.workers, s.threads, s.connections), (4, 1, Some(1000)));
        let s = size(&input(
            0.25,
            None,
            Concurrency::EventLoop,
            WorkloadClass::IoBound,
        ))
        .unwrap();
        assert_eq!(s.workers, 1);
    }

    #[test]
    fn process_only_io_bound_uses_cpu_times_four() {
        let s = size(&input(
            2.0,
            None,
            Concurrency::Processes,
            WorkloadClass::IoBound,
        ))
        .unwrap();
        assert_eq!((s.workers, s.threads), (8, 1));
    }

    #[test]
    fn memory_cap_binds() {
        // 4 CPU wants 9 workers; 1 GiB × 0.9 − 200 = 721.6 → 3 workers of 200 MiB.
        let s = size(&input(
            4.0,
            Some(1024.0),
            Concurrency::Threads,
            WorkloadClass::IoBound,
        ))
        .unwrap();
        assert_eq!((s.workers, s.memory_cap), (3, Some(3)));
        assert!(
            s.explanation.contains("memory caps workers at 3"),
            "{}",
            s.explanation
        );
        assert_eq!(s.memory_estimate_mib, 800);
    }

    #[test]
    fn nothing_fits_is_an_error_with_the_arithmetic() {
        let mut i = input(
            2.0,
            Some(256.0),
            Concurrency::Threads,
            WorkloadClass::IoBound,
        );
        i.memory = MemoryModel {
            base_mib: 200.0,
            per_worker_mib: 1536.0,
        };
        let err = size(&i).unwrap_err();
        assert_eq!(
            err,
            SizingError::DoesNotFit {
                min: 1,
                needed: 1736,
                base: 200,
                per: 1536,
                usable: 230,
                limit: 256
            }
        );
        assert!(err.to_string().contains("raise the memory limit"), "{err}");
    }

    #[test]
    fn min_workers_above_the_memory_cap_does_not_fit() {
        let mut i = input(
            4.0,
            Some(1024.0),
            Concurrency::Threads,
            WorkloadClass::IoBound,
        );
        i.workers = WorkerBounds { min: 4, max: 8 };
        assert!(matches!(
            size(&i),
            Err(SizingError::DoesNotFit { min: 4, .. })
        ));
    }

    #[test]
    fn bounds_bind_both_ways() {
        let mut i = input(4.0, None, Concurrency::Threads, WorkloadClass::IoBound);
        i.workers = WorkerBounds { min: 1, max: 6 };
        i.threads = WorkerBounds { min: 8, max: 16 };
        let s = size(&i).unwrap();
        assert_eq!((s.workers, s.threads), (6, 8));
        assert!(
            s.explanation.contains("lowered to tuning.workers.max 6"),
            "{}",
            s.explanation
        );
        assert!(
            s.explanation.contains("raised to tuning.threads.min 8"),
            "{}",
            s.explanation
        );
    }

    #[test]
    fn explanation_is_one_sentence_with_the_numbers() {
        let s = size(&input(
            2.0,
            Some(4096.0),
            Concurrency::Threads,
            WorkloadClass::IoBound,
        ))
        .unwrap();
        assert_eq!(
            s.explanation,
            "2 CPU, io-bound: (2 × CPU) + 1 workers × 4 threads → 5 workers × 4 threads = 20 concurrent requests; ~1200 MiB of 4096 MiB memory"
        );
    }

    #[test]
    fn bad_cpu_is_refused() {
        for cpu in [0.0, -1.0, f64::NAN, f64::INFINITY] {
            assert!(matches!(
                size(&input(
                    cpu,
                    None,
                    Concurrency::Threads,
                    WorkloadClass::Mixed
                )),
                Err(SizingError::BadCpu(_))
            ));
        }
    }

    fn any_concurrency() -> impl Strategy<Value = Concurrency> {
        prop_oneof![
            Just(Concurrency::Threads),
            Just(Concurrency::Processes),
            Just(Concurrency::EventLoop)
        ]
    }
    fn any_workload() -> impl Strategy<Value = WorkloadClass> {
        prop_oneof![
            Just(WorkloadClass::IoBound),
            Just(WorkloadClass::CpuBound),
            Just(WorkloadClass::Mixed)
        ]
    }

    proptest! {
        #[test]
        fn results_always_within_bounds(
            cpu in prop_oneof![any::<f64>(), 0.001f64..512.0],
            memory in proptest::option::of(prop_oneof![any::<f64>(), 1.0f64..1.0e7]),
            base in prop_oneof![any::<f64>(), 0.0f64..1.0e5],
            per in prop_oneof![any::<f64>(), 1.0f64..1.0e5],
            wmin in any::<i32>(), wmax in any::<i32>(), tmin in any::<i32>(), tmax in any::<i32>(),
            concurrency in any_concurrency(), workload in any_workload(),
        ) {
            let i = SizingInput {
                cpu_cores: cpu,
                memory_mib: memory,
                concurrency,
                workload,
                memory: MemoryModel { base_mib: base, per_worker_mib: per },
                workers: WorkerBounds::new(wmin, wmax),
                threads: WorkerBounds::new(tmin, tmax),
            };
            match size(&i) {
                Ok(s) => {
                    prop_assert!(s.workers >= 1);
                    prop_assert!(s.workers >= i.workers.min && s.workers <= i.workers.max);
                    if concurrency == Concurrency::Threads {
                        prop_assert!(s.threads >= i.threads.min && s.threads <= i.threads.max);
                    } else {
                        prop_assert_eq!(s.threads, 1);
                    }
                    if let Some(cap) = s.memory_cap { prop_assert!(s.workers <= cap); }
                    prop_assert!(!s.explanation.is_empty());
                }
                Err(SizingError::BadCpu(_)) => prop_assert!(!(cpu.is_finite() && cpu > 0.0)),
                Err(SizingError::DoesNotFit { .. }) => {
                    prop_assert!(memory.is_some());
                    prop_assert!(s_cap(&i) < i.workers.min);
                }
            }
        }
    }

    fn s_cap(i: &SizingInput) -> u32 {
        memory_cap(i.memory_mib.unwrap_or(f64::INFINITY), i.memory)
    }
}
