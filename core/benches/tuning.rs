//! Tuning quality (design §8): for each workload × pod shape, the goodput of the seed guides'
//! static formulas, of our static sizing and of our tuner after convergence, against the best
//! setting found by sweeping every (workers, threads) pair in bounds.
//!
//! `cargo bench -p appserver-core --bench tuning` writes `docs/benchmark.md` (the table and
//! how it is computed) and `docs/benchmark.json` (the same numbers, for `bench/chart.py`). Pure
//! and seeded: two runs write identical files. The time it took goes to stdout only.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::Instant;

use appserver_core::api::WorkloadClass;
use appserver_core::model::{self, Load, Pod, Workload};
use appserver_core::simulator::{self, Run, Scenario};
use appserver_core::sizing::{Concurrency, MemoryModel, WorkerBounds};
use appserver_core::tuner::Setting;
use serde::Serialize;

/// Pod shapes, cores.
const CPUS: [f64; 5] = [0.5, 1.0, 2.0, 4.0, 8.0];
/// Memory per core for every workload but the ML model, MiB.
const MIB_PER_CPU: f64 = 2048.0;
/// The ML model's pods: 4 GiB whatever the CPU, so memory (not CPU) caps its workers.
const ML_MEMORY_MIB: f64 = 4096.0;
/// Offered load (bursty: its peak) as a share of the highest throughput any setting reaches.
const LOAD_SHARE: f64 = 0.7;
/// The bursty load doubles for one window in the middle of the run.
const BURST_FACTOR: f64 = 2.0;
const BURST_AT: f64 = 3600.0;
const BURST_LENGTH: f64 = 60.0;
/// The tuner's run: 2 simulated hours of 1-minute windows, 5-minute cooldown.
const DURATION: f64 = 7200.0;
const WINDOW: f64 = 60.0;
const COOLDOWN: f64 = 300.0;
const NOISE: f64 = 0.03;
const SEED: u64 = 1;
/// A row loses when the tuned goodput is below this share of the optimum.
const LOSS: f64 = 0.9;
/// Offered load used to find a setting's capacity: far past anything servable.
const FLOOD: f64 = 1e9;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    LlmProxy,
    CpuBound,
    Mixed,
    MlModel,
    Bursty,
}

const KINDS: [Kind; 5] = [
    Kind::LlmProxy,
    Kind::CpuBound,
    Kind::Mixed,
    Kind::MlModel,
    Kind::Bursty,
];

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::LlmProxy => "LLM proxy",
            Kind::CpuBound => "CPU-bound",
            Kind::Mixed => "mixed",
            Kind::MlModel => "ML model",
            Kind::Bursty => "bursty mixed",
        }
    }

    fn key(self) -> &'static str {
        match self {
            Kind::LlmProxy => "llm-proxy",
            Kind::CpuBound => "cpu-bound",
            Kind::Mixed => "mixed",
            Kind::MlModel => "ml-model",
            Kind::Bursty => "bursty",
        }
    }

    fn server(self) -> &'static str {
        match self {
            Kind::LlmProxy | Kind::Mixed | Kind::Bursty => "gunicorn gthread",
            Kind::CpuBound | Kind::MlModel => "gunicorn sync",
        }
    }

    fn bursty(self) -> bool {
        self == Kind::Bursty
    }
}

/// The scenario of a workload on a pod shape, with no load yet (see [`with_load`]).
fn scenario(kind: Kind, cpu: f64) -> Scenario {
    let (workload, concurrency, class, target) = match kind {
        Kind::LlmProxy => (
            Workload::new(0.02, 20.0),
            Concurrency::Threads,
            WorkloadClass::IoBound,
            25.0,
        ),
        Kind::CpuBound => (
            Workload::new(0.05, 0.005),
            Concurrency::Processes,
            WorkloadClass::CpuBound,
            1.0,
        ),
        Kind::Mixed | Kind::Bursty => (
            Workload::new(0.03, 0.3),
            Concurrency::Threads,
            WorkloadClass::Mixed,
            1.0,
        ),
        Kind::MlModel => {
            let mut w = Workload::new(0.2, 0.01);
            w.per_worker_mib = 1536.0;
            (w, Concurrency::Processes, WorkloadClass::CpuBound, 2.0)
        }
    };
    let memory = match kind {
        Kind::MlModel => ML_MEMORY_MIB,
        _ => MIB_PER_CPU * cpu,
    };
    let mut s = Scenario::new(workload, Load::constant(0.0), cpu, Some(memory));
    s.concurrency = concurrency;
    s.class = class;
    s.latency_target = target;
    // The spec's memory estimate is the truth in every row (the ML model's included).
    s.estimate = MemoryModel {
        base_mib: workload.base_mib,
        per_worker_mib: workload.per_worker_mib,
    };
    s.workers = WorkerBounds::new(1, 64);
    s.threads = WorkerBounds::new(1, 64);
    s.cooldown = COOLDOWN;
    s.window = WINDOW;
    s.duration = DURATION;
    s.noise = NOISE;
    s.seed = SEED;
    s
}

/// Highest throughput any setting in bounds reaches without being OOM-killed: the model's
/// capacity `min(slots, usable CPU × (s + d) / s) / (s + d)`, read from `model::serve` flooded.
fn capacity(scn: &Scenario) -> f64 {
    scn.settings()
        .into_iter()
        .map(|s| model::serve(&scn.pod(s), &scn.workload, FLOOD, 0.0))
        .filter(|out| !out.oom)
        .map(|out| out.throughput)
        .fold(0.0, f64::max)
}

/// The scenario with its load: `LOAD_SHARE` of the capacity (bursty: as its peak).
fn with_load(mut scn: Scenario, kind: Kind) -> (Scenario, f64) {
    let cap = capacity(&scn);
    let offered = LOAD_SHARE * cap;
    scn.load = if kind.bursty() {
        Load::burst(offered / BURST_FACTOR, BURST_FACTOR, BURST_AT, BURST_LENGTH)
    } else {
        Load::constant(offered)
    };
    (scn, cap)
}

/// The load the run's windows see, as `(requests per second, share of the windows)`, in order
/// of first appearance: one entry for a constant load.
fn profile(scn: &Scenario) -> Vec<(f64, f64)> {
    let n = (scn.duration / scn.window).floor() as usize;
    let mut out: Vec<(f64, f64)> = Vec::new();
    for i in 0..n {
        let at = i as f64 * scn.window;
        let rps = scn.load.mean(at, at + scn.window);
        match out.iter_mut().find(|(r, _)| *r == rps) {
            Some(e) => e.1 += 1.0,
            None => out.push((rps, 1.0)),
        }
    }
    for e in &mut out {
        e.1 /= n as f64;
    }
    out
}

/// Time-averaged goodput of a fixed pod over the run's windows (fresh pod, no growth).
fn pod_goodput(scn: &Scenario, pod: &Pod, load: &[(f64, f64)]) -> (f64, bool) {
    let mut oom = false;
    let g = load
        .iter()
        .map(|(rps, share)| {
            let out = model::serve(pod, &scn.workload, *rps, 0.0);
            oom |= out.oom;
            share * out.goodput(scn.latency_target)
        })
        .sum();
    (g, oom)
}

/// The sweep optimum: `Scenario::sweep` at a constant load; for a varying one the same sweep
/// (same order, same tie-break) by time-averaged goodput.
fn optimum(scn: &Scenario, load: &[(f64, f64)]) -> simulator::Best {
    if let [(rps, _)] = load {
        return scn.sweep(*rps);
    }
    let mut best = simulator::Best {
        setting: Setting {
            workers: scn.workers.min,
            threads: 1,
        },
        goodput: f64::NEG_INFINITY,
    };
    for s in scn.settings() {
        let g = pod_goodput(scn, &scn.pod(s), load).0;
        if g > best.goodput + 1e-9 {
            best = simulator::Best {
                setting: s,
                goodput: g,
            };
        }
    }
    best
}

/// A seed guide's static formula: what a user copies into `gunicorn.conf.py`.
struct Formula {
    key: &'static str,
    name: &'static str,
    /// Workers and concurrent requests per worker for a CPU count.
    shape: fn(f64) -> (u32, u32),
    /// Only an asyncio (ASGI) app can run it: not a setting a WSGI app can copy.
    needs_async_app: bool,
}

/// `⌊x⌋`, at least 1 worker.
fn count(x: f64) -> u32 {
    (x.floor() as u32).max(1)
}

const FORMULAS: [Formula; 5] = [
    Formula {
        key: "gthread-2cpu1x4",
        name: "(2·CPU+1) × 4 gthread",
        shape: |cpu| (count(2.0 * cpu + 1.0), 4),
        needs_async_app: false,
    },
    Formula {
        key: "sync-2cpu1",
        name: "CPU × 2 + 1 sync",
        shape: |cpu| (count(cpu * 2.0 + 1.0), 1),
        needs_async_app: false,
    },
    Formula {
        key: "sync-4cpu",
        name: "CPU × 4 sync",
        shape: |cpu| (count(cpu * 4.0), 1),
        needs_async_app: false,
    },
    Formula {
        key: "async-per-core",
        name: "1 async worker per core × 1000",
        shape: |cpu| (count(cpu), 1000),
        needs_async_app: true,
    },
    Formula {
        key: "fixed-4x2",
        name: "4 × 2 fixed (Dogetionary)",
        shape: |_| (4, 2),
        needs_async_app: false,
    },
];

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Cell {
    workers: u32,
    slots_per_worker: u32,
    goodput: f64,
    ratio: f64,
    oom: bool,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Optimum {
    workers: u32,
    threads: u32,
    goodput: f64,
    /// Goodput as a share of the (time-averaged) offered load.
    served_share: f64,
    /// Bursty: goodput during the burst minute.
    #[serde(skip_serializing_if = "Option::is_none")]
    burst_goodput: Option<f64>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct StepOut {
    at: f64,
    from: String,
    to: String,
    reason: String,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Tuned {
    start: String,
    workers: u32,
    threads: u32,
    goodput: f64,
    ratio: f64,
    decisions: usize,
    oom_kills: u32,
    steps: Vec<StepOut>,
    last_reason: String,
    /// A setting the tuner left and later returned to (constant load: an oscillation).
    #[serde(skip_serializing_if = "Option::is_none")]
    returned_to: Option<String>,
    /// Bursty: goodput during the burst minute.
    #[serde(skip_serializing_if = "Option::is_none")]
    burst_goodput: Option<f64>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Row {
    workload: &'static str,
    workload_name: &'static str,
    server: &'static str,
    cpu: f64,
    memory_mib: f64,
    latency_target: f64,
    /// Highest throughput of any setting, requests/s.
    capacity: f64,
    /// Offered load, requests/s: the constant load, or the bursty load's base.
    offered: f64,
    /// Highest offered load of the run (the burst's), requests/s.
    offered_peak: f64,
    optimum: Optimum,
    /// In `FORMULAS` order.
    formulas: Vec<Cell>,
    static_sizing: Cell,
    tuner: Tuned,
    /// Best of the seed formulas' goodput (0 when none serves).
    best_formula_goodput: f64,
    /// Best of those a WSGI app can copy (all but the event loop).
    best_wsgi_formula_goodput: f64,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Headline {
    tuned_vs_optimum_min: f64,
    tuned_vs_optimum_mean: f64,
    static_vs_optimum_mean: f64,
    /// Mean over rows where some formula serves anything.
    tuned_vs_best_formula_mean: f64,
    rows_where_no_formula_serves: usize,
    /// The same without the event-loop formula (it needs an asyncio app).
    tuned_vs_best_wsgi_formula_mean: f64,
    rows_where_no_wsgi_formula_serves: usize,
    /// Mean goodput ratio to the optimum of each formula (`FORMULAS` order), OOM counted as 0.
    formula_means: Vec<f64>,
    rows_below_90_percent: usize,
    rows: usize,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct FormulaOut {
    key: &'static str,
    name: &'static str,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Report {
    generated_by: &'static str,
    load_share: f64,
    duration_seconds: f64,
    window_seconds: f64,
    cooldown_seconds: f64,
    noise: f64,
    seed: u64,
    formulas: Vec<FormulaOut>,
    headline: Headline,
    rows: Vec<Row>,
}

fn round(x: f64, digits: i32) -> f64 {
    let k = 10f64.powi(digits);
    let r = (x * k).round() / k;
    if r == 0.0 { 0.0 } else { r }
}

fn ratio(g: f64, best: f64) -> f64 {
    if best > 0.0 { round(g / best, 4) } else { 0.0 }
}

fn cell(scn: &Scenario, pod: &Pod, load: &[(f64, f64)], best: f64) -> Cell {
    let (g, oom) = pod_goodput(scn, pod, load);
    let g = if oom { 0.0 } else { g };
    Cell {
        workers: pod.workers,
        slots_per_worker: pod.slots_per_worker,
        goodput: round(g, 3),
        ratio: ratio(g, best),
        oom,
    }
}

fn tuned(scn: &Scenario, run: &Run, load: &[(f64, f64)], best: f64) -> Tuned {
    let last = run.last();
    let goodput = if load.len() == 1 {
        scn.goodput(last, load[0].0)
    } else {
        run.windows.iter().map(|w| w.goodput).sum::<f64>() / run.windows.len().max(1) as f64
    };
    Tuned {
        start: run.start.to_string(),
        workers: last.workers,
        threads: last.threads,
        goodput: round(goodput, 3),
        ratio: ratio(goodput, best),
        decisions: run.steps.len(),
        oom_kills: run.oom_kills,
        steps: run
            .steps
            .iter()
            .map(|s| StepOut {
                at: s.at,
                from: s.from.to_string(),
                to: s.to.to_string(),
                reason: s.reason.clone(),
            })
            .collect(),
        last_reason: run
            .windows
            .last()
            .map(|w| w.reason.clone())
            .unwrap_or_default(),
        returned_to: returned_to(run).map(|s| s.to_string()),
        burst_goodput: (load.len() > 1)
            .then(|| {
                run.windows
                    .iter()
                    .find(|w| w.at == BURST_AT)
                    .map(|w| round(w.goodput, 3))
            })
            .flatten(),
    }
}

/// The first setting the run left and later came back to.
fn returned_to(run: &Run) -> Option<Setting> {
    let mut seen = vec![run.start];
    for s in &run.steps {
        if seen.contains(&s.to) {
            return Some(s.to);
        }
        seen.push(s.to);
    }
    None
}

fn row(kind: Kind, cpu: f64) -> Row {
    let (scn, cap) = with_load(scenario(kind, cpu), kind);
    let load = profile(&scn);
    let mean_offered: f64 = load.iter().map(|(r, w)| r * w).sum();
    let best = optimum(&scn, &load);
    assert!(
        best.goodput > 0.0,
        "{} on {cpu} CPU is unservable: {best:?}",
        kind.name()
    );
    let pod_of = |workers: u32, slots_per_worker: u32| Pod {
        cpu,
        memory_mib: scn.memory_mib,
        workers,
        slots_per_worker,
    };
    let formulas: Vec<Cell> = FORMULAS
        .iter()
        .map(|f| {
            let (w, t) = (f.shape)(cpu);
            cell(&scn, &pod_of(w, t), &load, best.goodput)
        })
        .collect();
    let start = scn
        .static_setting()
        .unwrap_or_else(|e| panic!("{} on {cpu} CPU: {e}", kind.name()));
    let static_sizing = cell(&scn, &scn.pod(start), &load, best.goodput);
    let run = simulator::run(&scn).expect("the static sizing fits");
    let tuner = tuned(&scn, &run, &load, best.goodput);
    let best_formula_goodput = formulas.iter().map(|c| c.goodput).fold(0.0, f64::max);
    let best_wsgi_formula_goodput = formulas
        .iter()
        .zip(FORMULAS.iter())
        .filter(|(_, f)| !f.needs_async_app)
        .map(|(c, _)| c.goodput)
        .fold(0.0, f64::max);
    Row {
        workload: kind.key(),
        workload_name: kind.name(),
        server: kind.server(),
        cpu,
        memory_mib: scn.memory_mib.unwrap_or_default(),
        latency_target: scn.latency_target,
        capacity: round(cap, 3),
        offered: round(scn.load.at(0.0), 3),
        offered_peak: round(scn.load.peak(), 3),
        optimum: Optimum {
            workers: best.setting.workers,
            threads: best.setting.threads,
            goodput: round(best.goodput, 3),
            served_share: round(best.goodput / mean_offered, 4),
            burst_goodput: kind
                .bursty()
                .then(|| round(scn.goodput(best.setting, scn.load.peak()), 3)),
        },
        formulas,
        static_sizing,
        tuner,
        best_formula_goodput,
        best_wsgi_formula_goodput,
    }
}

fn mean(xs: impl Iterator<Item = f64>) -> f64 {
    let (sum, n) = xs.fold((0.0, 0usize), |(s, n), x| (s + x, n + 1));
    if n == 0 { 0.0 } else { sum / n as f64 }
}

fn headline(rows: &[Row]) -> Headline {
    let served: Vec<&Row> = rows
        .iter()
        .filter(|r| r.best_formula_goodput > 0.0)
        .collect();
    let wsgi: Vec<&Row> = rows
        .iter()
        .filter(|r| r.best_wsgi_formula_goodput > 0.0)
        .collect();
    Headline {
        tuned_vs_optimum_min: rows
            .iter()
            .map(|r| r.tuner.ratio)
            .fold(f64::INFINITY, f64::min),
        tuned_vs_optimum_mean: round(mean(rows.iter().map(|r| r.tuner.ratio)), 4),
        static_vs_optimum_mean: round(mean(rows.iter().map(|r| r.static_sizing.ratio)), 4),
        tuned_vs_best_formula_mean: round(
            mean(
                served
                    .iter()
                    .map(|r| r.tuner.goodput / r.best_formula_goodput),
            ),
            4,
        ),
        rows_where_no_formula_serves: rows.len() - served.len(),
        tuned_vs_best_wsgi_formula_mean: round(
            mean(
                wsgi.iter()
                    .map(|r| r.tuner.goodput / r.best_wsgi_formula_goodput),
            ),
            4,
        ),
        rows_where_no_wsgi_formula_serves: rows.len() - wsgi.len(),
        formula_means: (0..FORMULAS.len())
            .map(|i| round(mean(rows.iter().map(|r| r.formulas[i].ratio)), 4))
            .collect(),
        rows_below_90_percent: rows.iter().filter(|r| r.tuner.ratio < LOSS).count(),
        rows: rows.len(),
    }
}

fn pct(x: f64) -> String {
    format!("{:.0} %", x * 100.0)
}

fn cores(cpu: f64) -> String {
    appserver_core::sizing::format_cores(cpu)
}

fn gib(mib: f64) -> String {
    appserver_core::sizing::format_cores(mib / 1024.0)
}

fn num(x: f64) -> String {
    if x >= 100.0 {
        format!("{x:.0}")
    } else if x >= 10.0 {
        format!("{x:.1}")
    } else {
        format!("{x:.2}")
    }
}

fn setting(workers: u32, threads: u32, kind: Kind) -> String {
    match kind {
        Kind::CpuBound | Kind::MlModel => format!("{workers}"),
        _ => format!("{workers}×{threads}"),
    }
}

fn formula_cell(c: &Cell) -> String {
    if c.oom {
        "OOM".to_string()
    } else {
        pct(c.ratio)
    }
}

fn markdown(report: &Report) -> String {
    let h = &report.headline;
    let mut out = String::new();
    let _ = writeln!(out, "# Tuning quality benchmark\n");
    let _ = writeln!(
        out,
        "Generated by `make bench` (`cargo bench -p appserver-core --bench tuning`, then \
         `bench/chart.py`); do not edit by hand. The same numbers are in `benchmark.json`, the \
         chart in `benchmark.png`.\n"
    );
    let _ = writeln!(
        out,
        "**Headline.** Tuned goodput / sweep optimum: min **{}**, mean **{}** over {} rows \
         ({} below {}). Tuned / best seed formula of the row: mean **{:.2}×**{}; without \
         the event-loop formula, which only an asyncio app can copy: mean **{:.2}×**{}. Our \
         static sizing alone: mean {} of the optimum.\n",
        pct(h.tuned_vs_optimum_min),
        pct(h.tuned_vs_optimum_mean),
        h.rows,
        h.rows_below_90_percent,
        pct(LOSS),
        h.tuned_vs_best_formula_mean,
        if h.rows_where_no_formula_serves > 0 {
            format!(
                " over the {} rows where some formula serves anything (in {} rows none does)",
                h.rows - h.rows_where_no_formula_serves,
                h.rows_where_no_formula_serves
            )
        } else {
            String::new()
        },
        h.tuned_vs_best_wsgi_formula_mean,
        if h.rows_where_no_wsgi_formula_serves > 0 {
            format!(
                " over {} rows (in {} none serves anything)",
                h.rows - h.rows_where_no_wsgi_formula_serves,
                h.rows_where_no_wsgi_formula_serves
            )
        } else {
            String::new()
        },
        pct(h.static_vs_optimum_mean),
    );
    let _ = write!(out, "| Workload | CPU | Mem GiB | Offered/s | Optimum | ");
    for f in FORMULAS.iter() {
        let _ = write!(out, "{} | ", f.name);
    }
    let _ = writeln!(out, "Our static | Tuned | Decisions | OOM kills |");
    let _ = write!(out, "|---|--:|--:|--:|---|");
    for _ in FORMULAS.iter() {
        let _ = write!(out, "--:|");
    }
    let _ = writeln!(out, "---|---|--:|--:|");
    for (r, kind) in report.rows.iter().zip(row_kinds()) {
        let offered = if kind.bursty() {
            format!("{}→{}", num(r.offered), num(r.offered_peak))
        } else {
            num(r.offered)
        };
        let _ = write!(
            out,
            "| {} | {} | {} | {} | {} → {}/s | ",
            r.workload_name,
            cores(r.cpu),
            gib(r.memory_mib),
            offered,
            setting(r.optimum.workers, r.optimum.threads, kind),
            num(r.optimum.goodput),
        );
        for c in &r.formulas {
            let _ = write!(out, "{} | ", formula_cell(c));
        }
        let s = &r.static_sizing;
        let t = &r.tuner;
        let flag = if t.ratio < LOSS { " ⚠" } else { "" };
        let _ = writeln!(
            out,
            "{}: {} | {}: {}{} | {} | {} |",
            setting(s.workers, s.slots_per_worker, kind),
            formula_cell(s),
            setting(t.workers, t.threads, kind),
            pct(t.ratio),
            flag,
            t.decisions,
            t.oom_kills,
        );
    }
    let _ = write!(out, "| **mean** | | | | | ");
    for m in &h.formula_means {
        let _ = write!(out, "{} | ", pct(*m));
    }
    let _ = writeln!(
        out,
        "{} | {} | {:.1} | {:.1} |",
        pct(h.static_vs_optimum_mean),
        pct(h.tuned_vs_optimum_mean),
        mean(report.rows.iter().map(|r| r.tuner.decisions as f64)),
        mean(report.rows.iter().map(|r| f64::from(r.tuner.oom_kills))),
    );
    let _ = writeln!(out);
    let _ = writeln!(
        out,
        "Settings are workers×threads (sync servers: workers). Optimum: the setting and its \
         goodput in requests/s within the latency target; every other column is a goodput as a \
         share of it. OOM: the setting passes the memory limit and the pod is killed, goodput 0.\n"
    );
    where_we_lose(&mut out, report);
    other_findings(&mut out, report);
    method(&mut out, report);
    out
}

fn where_we_lose(out: &mut String, report: &Report) {
    let _ = writeln!(out, "## Where we lose\n");
    let losing: Vec<(&Row, Kind)> = report
        .rows
        .iter()
        .zip(row_kinds())
        .filter(|(r, _)| r.tuner.ratio < LOSS)
        .collect();
    if losing.is_empty() {
        let _ = writeln!(
            out,
            "No row: the tuner ends within {} of the optimum everywhere.\n",
            pct(1.0 - LOSS)
        );
        return;
    }
    let _ = writeln!(
        out,
        "Rows where the tuned goodput is below {} of the optimum, with the tuner's own reasons \
         (each decision, then its sentence for the last window).\n",
        pct(LOSS)
    );
    for (r, kind) in losing {
        let t = &r.tuner;
        let _ = writeln!(
            out,
            "- **{} on {} CPU**: tuned {} ({}) vs optimum {}, started from our static {}; \
             {} decision(s), {} OOM kill(s).",
            r.workload_name,
            cores(r.cpu),
            setting(t.workers, t.threads, kind),
            pct(t.ratio),
            setting(r.optimum.workers, r.optimum.threads, kind),
            t.start,
            t.decisions,
            t.oom_kills,
        );
        for s in &t.steps {
            let _ = writeln!(out, "  - t={:.0}s: {}", s.at, s.reason);
        }
        let _ = writeln!(out, "  - last window: {}", t.last_reason);
    }
    let _ = writeln!(out);
}

/// What the goodput columns do not show: oscillation at a constant load, and how the tuner
/// meets the burst.
fn other_findings(out: &mut String, report: &Report) {
    let _ = writeln!(out, "## Other findings\n");
    let rows = || report.rows.iter().zip(row_kinds());
    let oscillating: Vec<(&Row, Kind)> = rows()
        .filter(|(r, k)| !k.bursty() && r.tuner.returned_to.is_some())
        .collect();
    if oscillating.is_empty() {
        let _ = writeln!(
            out,
            "- At a constant load the tuner never returns to a setting it has left."
        );
    }
    for (r, kind) in oscillating {
        let t = &r.tuner;
        let _ = writeln!(
            out,
            "- **{} on {} CPU oscillates** at a constant load: it returns to {} after leaving \
             it ({} decisions, ending at {}, {} of the optimum):",
            r.workload_name,
            cores(r.cpu),
            t.returned_to.as_deref().unwrap_or_default(),
            t.decisions,
            setting(t.workers, t.threads, kind),
            pct(t.ratio),
        );
        for s in &t.steps {
            let _ = writeln!(out, "  - t={:.0}s: {}", s.at, s.reason);
        }
    }
    let bursty: Vec<&Row> = rows().filter(|(_, k)| k.bursty()).map(|(r, _)| r).collect();
    if !bursty.is_empty() {
        let _ = writeln!(
            out,
            "- **The burst minute** weighs 1/{:.0} of the bursty row's time average. Goodput in \
             that minute, tuned vs the optimum's fixed setting, and what the tuner did about it (the \
             model is a steady state, so an overloaded minute scores 0 although a real pod would \
             only queue that minute's excess):",
            report.duration_seconds / report.window_seconds
        );
        for r in bursty {
            let (t, o) = (
                r.tuner.burst_goodput.unwrap_or_default(),
                r.optimum.burst_goodput.unwrap_or_default(),
            );
            let around: Vec<String> = r
                .tuner
                .steps
                .iter()
                .filter(|s| s.at > BURST_AT)
                .map(|s| format!("{} → {} at t={:.0}s", s.from, s.to, s.at))
                .collect();
            let _ = writeln!(
                out,
                "  - {} CPU: {}/s vs {}/s of {}/s offered ({}); after it: {}.",
                cores(r.cpu),
                num(t),
                num(o),
                num(r.offered_peak),
                pct(ratio(t, o)),
                if around.is_empty() {
                    "no change".to_string()
                } else {
                    around.join(", ")
                }
            );
        }
    }
    let _ = writeln!(out);
}

fn method(out: &mut String, report: &Report) {
    let _ = writeln!(out, "## How it is computed\n");
    let _ = writeln!(
        out,
        "Everything runs on the workload model (`core/src/model`): a pod is an M/M/m queue \
         whose `m` is the tighter of its slots (workers × threads) and what its CPU allows \
         (one core per process at most); goodput is the requests per second served within the \
         p95 latency target; a pod past its memory limit is OOM-killed and serves nothing.\n"
    );
    let _ = writeln!(
        out,
        "- **Workloads** (CPU `s` and waiting `d` per request): LLM proxy s=20 ms, d=20 s, \
         gunicorn gthread, target 25 s; CPU-bound s=50 ms, d=5 ms, sync, target 1 s; mixed \
         s=30 ms, d=300 ms, gthread, target 1 s; ML model s=200 ms, d=10 ms, 1.5 GiB per \
         worker, sync, target 2 s; bursty: the mixed workload whose load doubles for one \
         minute. All have 200 MiB base memory and 200 MiB per worker unless said; the spec's \
         memory estimate is the truth (the ML model's too)."
    );
    let _ = writeln!(
        out,
        "- **Pod shapes**: 0.5, 1, 2, 4, 8 CPU with 2 GiB per CPU. The ML model always gets \
         {} GiB: a model server's pod is sized by its model, not its cores, and at 1.5 GiB per \
         worker that caps it at 2 workers (3 are OOM-killed), so from 2 CPU up memory, not CPU, \
         limits it. (With memory per CPU, 0.5 CPU could not hold one worker and large pods \
         would never be memory-bound.)",
        gib(ML_MEMORY_MIB)
    );
    let _ = writeln!(
        out,
        "- **Offered load** per pod: {} of the capacity, the highest throughput any setting in \
         bounds reaches without an OOM kill (`model::serve` flooded with requests, maximised \
         over every setting the sweep tries). Bursty: that is the burst's peak; the base load \
         is half of it, and the burst lasts one window from t={:.0}s. Every load is thus \
         servable: the optimum's goodput as a share of the offered load is `servedShare` in \
         `benchmark.json` (below 1 where the latency target, not the capacity, binds).",
        pct(report.load_share),
        BURST_AT
    );
    let _ = writeln!(
        out,
        "- **Optimum**: `Scenario::sweep`, every (workers, threads) pair with workers and \
         threads in 1–64 (threads fixed at 1 for sync servers). Bursty: the same sweep by \
         time-averaged goodput over the run's windows."
    );
    let _ = writeln!(
        out,
        "- **Seed formulas** (the seed guides users copy them from), applied as written whatever the server: \
         `(2·CPU+1) × 4` gthread; `CPU × 2 + 1` sync; `CPU × 4` sync; one async worker per \
         core with 1000 connections each (an event loop); Dogetionary's fixed 4 workers × 2 \
         threads. Fractional CPU is counted as is and the worker count floored, at least 1. A \
         formula may use a concurrency model the row's server does not have (an event loop \
         for a sync server), so it can beat the sweep, which stays within the server's model."
    );
    let _ = writeln!(
        out,
        "- **Our static**: `Scenario::static_setting`, the operator's formulas with the \
         memory cap (the tuner's starting point)."
    );
    let _ = writeln!(
        out,
        "- **Tuned**: `simulator::run`, the tuner in auto mode driving the model from our static \
         setting for {:.0} simulated hours: {:.0}-second windows, {:.0}-minute cooldown, ±{:.0} % \
         seeded noise on every signal (seed {}). The cell is the final setting's goodput at \
         the row's load (bursty: the run's time-averaged goodput, which also pays for the \
         way there); Decisions is the number of changes taken, OOM kills those on the way.",
        report.duration_seconds / 3600.0,
        report.window_seconds,
        report.cooldown_seconds / 60.0,
        report.noise * 100.0,
        report.seed
    );
    let _ = writeln!(
        out,
        "- Every static column of the bursty row is also a time average over the same windows."
    );
}

fn row_kinds() -> impl Iterator<Item = Kind> {
    KINDS.iter().flat_map(|k| CPUS.iter().map(move |_| *k))
}

fn main() {
    let started = Instant::now();
    let rows: Vec<Row> = KINDS
        .iter()
        .flat_map(|k| CPUS.iter().map(move |c| (*k, *c)))
        .map(|(k, c)| row(k, c))
        .collect();
    let report = Report {
        generated_by: "cargo bench -p appserver-core --bench tuning",
        load_share: LOAD_SHARE,
        duration_seconds: DURATION,
        window_seconds: WINDOW,
        cooldown_seconds: COOLDOWN,
        noise: NOISE,
        seed: SEED,
        formulas: FORMULAS
            .iter()
            .map(|f| FormulaOut {
                key: f.key,
                name: f.name,
            })
            .collect(),
        headline: headline(&rows),
        rows,
    };
    let md = markdown(&report);
    let json = serde_json::to_string_pretty(&report).expect("serializable") + "\n";
    // `cargo bench` passes `--bench`; `cargo test --all-targets` runs this too, without it:
    // then it only checks that the benchmark runs, and leaves the docs alone.
    let write = std::env::args().any(|a| a == "--bench");
    if write {
        let docs = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../docs");
        std::fs::write(docs.join("benchmark.md"), &md).expect("write docs/benchmark.md");
        std::fs::write(docs.join("benchmark.json"), &json).expect("write docs/benchmark.json");
    }
    let h = &report.headline;
    println!(
        "tuning benchmark: {} rows; tuned/optimum min {} mean {}; tuned/best formula mean {:.2}×; {} row(s) below {}",
        h.rows,
        pct(h.tuned_vs_optimum_min),
        pct(h.tuned_vs_optimum_mean),
        h.tuned_vs_best_formula_mean,
        h.rows_below_90_percent,
        pct(LOSS)
    );
    if write {
        println!("wrote docs/benchmark.md and docs/benchmark.json");
    } else {
        println!("not run by `cargo bench`: docs/benchmark.* left as they are");
    }
    println!("took {:.2} s", started.elapsed().as_secs_f64());
}
