//! `appserver-operator simulate`: what the tuner would do with a workload, before installing.
//! The command builds a [`Scenario`] from the flags; the core's simulator runs the closed loop
//! and compares the result with the sweep optimum.

use anyhow::Context as _;
use appserver_core::model::{DEFAULT_BACKLOG, Load, Workload};
use appserver_core::simulator::{Scenario, Summary, summarize};
use appserver_core::sizing::{Concurrency, MemoryModel, quantity_value};
use clap::Args;
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

use super::{BoundsArgs, OutputArgs, PodArgs, ServerArgs};

#[derive(Args, Debug)]
pub struct SimulateArgs {
    #[command(flatten)]
    pub pod: PodArgs,
    /// CPU time per request, e.g. 20ms.
    #[arg(long)]
    pub cpu_per_request: String,
    /// Time per request spent waiting on I/O or upstreams, e.g. 20s.
    #[arg(long, default_value = "0s")]
    pub wait_per_request: String,
    /// Requests per second offered to the pod.
    #[arg(long)]
    pub rps: f64,
    /// p95 latency target.
    #[arg(long, default_value = "2s")]
    pub latency_target: String,
    /// Real memory per worker.
    #[arg(long, default_value = "200Mi")]
    pub per_worker_memory: String,
    /// The spec's per-worker estimate (spec.memory.perWorkerMiB), if it differs from the real one.
    #[arg(long)]
    pub estimate_per_worker_memory: Option<String>,
    /// Memory of the master process.
    #[arg(long, default_value = "200Mi")]
    pub base_memory: String,
    #[command(flatten)]
    pub server: ServerArgs,
    #[command(flatten)]
    pub bounds: BoundsArgs,
    /// Minimum time between two changes (spec.tuning.cooldown).
    #[arg(long, default_value = "5m")]
    pub cooldown: String,
    /// Observation window.
    #[arg(long, default_value = "1m")]
    pub window: String,
    /// Simulated time.
    #[arg(long, default_value = "1h")]
    pub duration: String,
    /// Relative noise on every signal (0.03 = ±3 %).
    #[arg(long, default_value_t = 0.03)]
    pub noise: f64,
    /// Seed of the noise.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    #[command(flatten)]
    pub output: OutputArgs,
}

#[derive(Debug, thiserror::Error)]
pub enum SimulateError {
    #[error("--{flag} {value:?}: {why}")]
    BadArg {
        flag: &'static str,
        value: String,
        why: &'static str,
    },
    #[error("the static sizing refuses this pod: {0}")]
    Sizing(#[from] appserver_core::sizing::SizingError),
}

pub(super) fn print(args: &SimulateArgs) -> anyhow::Result<()> {
    let summary = simulate(args).context("simulating the tuner")?;
    args.output.print(&summary, render_text)
}

pub fn simulate(a: &SimulateArgs) -> Result<Summary, SimulateError> {
    Ok(summarize(&scenario(a)?)?)
}

fn scenario(a: &SimulateArgs) -> Result<Scenario, SimulateError> {
    let cpu = quantity("cpu", &a.pod.cpu)?;
    let memory = a
        .pod
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
    scn.concurrency = Concurrency::of(&a.server.spec(), a.server.workload);
    scn.class = a.server.workload;
    scn.estimate = MemoryModel {
        base_mib: base,
        per_worker_mib: estimate,
    };
    scn.workers = (&a.bounds.workers()).into();
    scn.threads = (&a.bounds.threads()).into();
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

/// The summary for a person.
fn render_text(r: &Summary) -> String {
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
