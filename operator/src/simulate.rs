//! `appserver-operator simulate`: what the tuner would do with a workload, before installing.
//!
//! Builds a [`Scenario`] from the command line, runs the closed loop and compares the result
//! with the sweep optimum and the static formulas.

use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use serde::Serialize;

use crate::api::ServerSpec;
use crate::cli::SimulateArgs;
use crate::model::{DEFAULT_BACKLOG, Load, Workload};
use crate::sim::{self, Best, Scenario, Step};
use crate::sizing::{Concurrency, MemoryModel, WorkerBounds, format_cores, quantity_value};
use crate::tuner::Setting;

#[derive(Debug, thiserror::Error)]
pub enum SimulateError {
    #[error("--{flag} {value:?}: {why}")]
    BadArg {
        flag: &'static str,
        value: String,
        why: &'static str,
    },
    #[error("the static sizing refuses this pod: {0}")]
    Sizing(#[from] crate::sizing::SizingError),
}

/// What `simulate` prints.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Report {
    pub cpu: String,
    #[serde(rename = "memoryMiB")]
    pub memory_mib: Option<f64>,
    pub offered_rps: f64,
    pub latency_target_seconds: f64,
    pub start: Setting,
    pub start_goodput: f64,
    pub decisions: Vec<Step>,
    #[serde(rename = "final")]
    pub final_setting: Setting,
    pub final_goodput: f64,
    pub final_p95_seconds: Option<f64>,
    pub optimum: Best,
    /// Final goodput / the optimum's; `None` when nothing can serve within the target.
    pub ratio: Option<f64>,
    /// The tuner's sentence for the last window.
    pub last_reason: String,
    pub oom_kills: u32,
}

pub fn simulate(a: &SimulateArgs) -> Result<Report, SimulateError> {
    let scn = scenario(a)?;
    let run = sim::run(&scn)?;
    let offered = scn.load.at(scn.duration);
    let final_setting = run.last();
    let optimum = scn.sweep(offered);
    let final_goodput = scn.goodput(final_setting, offered);
    let served = crate::model::serve(&scn.pod(final_setting), &scn.workload, offered, 0.0);
    Ok(Report {
        cpu: format_cores(scn.cpu),
        memory_mib: scn.memory_mib,
        offered_rps: offered,
        latency_target_seconds: scn.latency_target,
        start: run.start,
        start_goodput: scn.goodput(run.start, offered),
        decisions: run.steps,
        final_setting,
        final_goodput,
        final_p95_seconds: served.latency(0.95),
        ratio: (optimum.goodput > 0.0).then(|| final_goodput / optimum.goodput),
        last_reason: run
            .windows
            .last()
            .map(|w| w.reason.clone())
            .unwrap_or_default(),
        optimum,
        oom_kills: run.oom_kills,
    })
}

fn scenario(a: &SimulateArgs) -> Result<Scenario, SimulateError> {
    let cpu = quantity("cpu", &a.cpu)?;
    let memory = a
        .memory
        .as_deref()
        .map(|m| quantity("memory", m))
        .transpose()?
        .map(mib);
    let per_worker = mib(quantity("per-worker-memory", &a.per_worker_memory)?);
    let base = mib(quantity("base-memory", &a.base_memory)?);
    let mut workload = Workload::new(
        seconds("cpu-per-request", &a.cpu_per_request)?,
        seconds("wait-per-request", &a.wait_per_request)?,
    );
    workload.base_mib = base;
    workload.per_worker_mib = per_worker;
    workload.backlog = DEFAULT_BACKLOG;
    let estimate = match &a.estimate_per_worker_memory {
        Some(e) => mib(quantity("estimate-per-worker-memory", e)?),
        None => per_worker,
    };
    if !(a.rps.is_finite() && a.rps >= 0.0) {
        return Err(bad(
            "rps",
            a.rps.to_string(),
            "must be a non-negative number",
        ));
    }
    let mut scn = Scenario::new(workload, Load::constant(a.rps), cpu, memory);
    let server = ServerSpec {
        kind: a.server,
        worker_class: a.worker_class,
        variables: None,
    };
    scn.concurrency = Concurrency::of(&server, a.workload);
    scn.class = a.workload;
    scn.estimate = MemoryModel {
        base_mib: base,
        per_worker_mib: estimate,
    };
    scn.workers = WorkerBounds::new(a.min_workers, a.max_workers);
    scn.threads = WorkerBounds::new(a.min_threads, a.max_threads);
    scn.latency_target = seconds("latency-target", &a.latency_target)?;
    scn.cooldown = seconds("cooldown", &a.cooldown)?;
    scn.window = seconds("window", &a.window)?.max(1.0);
    scn.duration = seconds("duration", &a.duration)?;
    scn.noise = a.noise.clamp(0.0, 0.5);
    scn.seed = a.seed;
    Ok(scn)
}

fn bad(flag: &'static str, value: String, why: &'static str) -> SimulateError {
    SimulateError::BadArg { flag, value, why }
}

fn quantity(flag: &'static str, v: &str) -> Result<f64, SimulateError> {
    quantity_value(&Quantity(v.to_string()))
        .filter(|x| *x > 0.0)
        .ok_or_else(|| {
            bad(
                flag,
                v.into(),
                "must be a positive Kubernetes quantity (2, 500m, 4Gi)",
            )
        })
}

fn mib(bytes: f64) -> f64 {
    bytes / (1024.0 * 1024.0)
}

fn seconds(flag: &'static str, v: &str) -> Result<f64, SimulateError> {
    v.parse::<kube::core::Duration>()
        .ok()
        .map(|d| std::time::Duration::from(d).as_secs_f64())
        .ok_or_else(|| {
            bad(
                flag,
                v.into(),
                "must be a duration such as 20ms, 20s, 5m or 1h",
            )
        })
}

/// The report for a person.
pub fn render_text(r: &Report) -> String {
    let mem = r
        .memory_mib
        .map_or("no memory limit".into(), |m| format!("{m:.0} MiB"));
    let target = secs(r.latency_target_seconds);
    let mut out = format!(
        "pod: {} CPU, {mem}; offered {} req/s; p95 target {target}\n",
        r.cpu, r.offered_rps
    );
    out += &format!(
        "start (static formulas): {} → goodput {:.1} req/s\n",
        r.start, r.start_goodput
    );
    if r.decisions.is_empty() {
        out += &format!(
            "decisions: none; the tuner's last word: {}\n",
            r.last_reason
        );
    } else {
        out += "decisions:\n";
        for s in &r.decisions {
            out += &format!("  at {:>6}: {}\n", secs(s.at), s.reason);
        }
    }
    let p95 = r.final_p95_seconds.map_or("-".into(), secs);
    out += &format!(
        "final: {} workers × {} threads → goodput {:.1} req/s within {target} (p95 {p95})\n",
        r.final_setting.workers, r.final_setting.threads, r.final_goodput
    );
    let ratio = r
        .ratio
        .map_or("n/a (no setting serves within the target)".into(), |x| {
            format!("{:.0}%", x * 100.0)
        });
    out += &format!(
        "sweep optimum: {} → goodput {:.1} req/s; tuned/optimum = {ratio}\n",
        r.optimum.setting, r.optimum.goodput
    );
    out += &format!("OOM kills on the way: {}\n", r.oom_kills);
    out
}

fn secs(x: f64) -> String {
    if x >= 60.0 && (x % 60.0).abs() < 1e-9 {
        format!("{}m", x / 60.0)
    } else if x >= 1.0 {
        format!("{x:.1}s")
    } else {
        format!("{:.0}ms", x * 1000.0)
    }
}
