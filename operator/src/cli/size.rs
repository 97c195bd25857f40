//! `appserver-operator size`: the formulas without a cluster. The command builds the spec
//! the flags describe and plans it as the operator would (`appserver_core::plan`).

use anyhow::Context as _;
use appserver_core::api::{AppServerSpec, MemoryEstimate};
use appserver_core::plan::plan;
use appserver_core::sizing::{Sizing, format_cores};
use clap::Args;
use k8s_openapi::api::core::v1::ResourceRequirements;
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use serde::Serialize;

use super::{BoundsArgs, OutputArgs, PodArgs, ServerArgs};

#[derive(Args, Debug)]
pub struct SizeArgs {
    #[command(flatten)]
    pub pod: PodArgs,
    #[command(flatten)]
    pub server: ServerArgs,
    /// Memory of the master process, MiB.
    #[arg(long, default_value_t = 200)]
    pub base_mib: i64,
    /// Memory of each worker, MiB.
    #[arg(long, default_value_t = 200)]
    pub per_worker_mib: i64,
    #[command(flatten)]
    pub bounds: BoundsArgs,
    #[command(flatten)]
    pub output: OutputArgs,
}

/// What `size` prints.
#[derive(Serialize, Debug)]
#[serde(rename_all = "camelCase")]
pub struct SizeReport {
    pub cpu: String,
    #[serde(rename = "memoryMiB", skip_serializing_if = "Option::is_none")]
    pub memory_mib: Option<u64>,
    #[serde(flatten)]
    pub sizing: Sizing,
    /// The environment the server profile sets.
    pub env: std::collections::BTreeMap<String, String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub command: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub args: Vec<String>,
}

pub(super) fn print(args: &SizeArgs) -> anyhow::Result<()> {
    let report =
        size_report(args).context("sizing with --cpu and --memory as the container's limits")?;
    args.output.print(&report, render_text)
}

/// Sizes as the operator would for a container with these limits.
pub fn size_report(a: &SizeArgs) -> anyhow::Result<SizeReport> {
    let planned = plan(&spec_of(a), &[])?;
    // The spec's mode is static, so a plan is always sized.
    let sized = planned
        .sized
        .ok_or_else(|| anyhow::anyhow!("the plan has no sizing (tuning.mode off)"))?;
    Ok(SizeReport {
        cpu: format_cores(sized.basis.cpu_cores),
        memory_mib: sized.basis.memory_mib.map(|m| m.round() as u64),
        sizing: sized.sizing,
        env: planned
            .settings
            .env
            .into_iter()
            .map(|e| (e.name, e.value.unwrap_or_default()))
            .collect(),
        command: planned.settings.command,
        args: planned.settings.args,
    })
}

/// The spec of a container with the flags' limits, server and estimates, in static mode.
fn spec_of(a: &SizeArgs) -> AppServerSpec {
    let mut limits =
        std::collections::BTreeMap::from([("cpu".to_string(), Quantity(a.pod.cpu.clone()))]);
    if let Some(m) = &a.pod.memory {
        limits.insert("memory".to_string(), Quantity(m.clone()));
    }
    let mut spec = AppServerSpec {
        image: String::new(),
        command: vec![],
        args: vec!["app:app".into()],
        port: 8080,
        replicas: None,
        server: a.server.spec(),
        workload: a.server.workload,
        resources: Some(ResourceRequirements {
            limits: Some(limits),
            ..Default::default()
        }),
        node_selector: Default::default(),
        env: vec![],
        health_path: None,
        memory: MemoryEstimate {
            base_mib: a.base_mib,
            per_worker_mib: a.per_worker_mib,
        },
        timeouts: Default::default(),
        recycle: None,
        tuning: Default::default(),
    };
    spec.tuning.workers = a.bounds.workers();
    spec.tuning.threads = a.bounds.threads();
    spec
}

/// Human-readable form.
fn render_text(r: &SizeReport) -> String {
    let s = &r.sizing;
    let mut out = format!("workers:  {}\nthreads:  {}\n", s.workers, s.threads);
    if let Some(c) = s.connections {
        out.push_str(&format!("connections per worker: {c}\n"));
    }
    let memory = match (r.memory_mib, s.memory_cap) {
        (Some(limit), Some(cap)) => format!(
            "~{} MiB of {limit} MiB (at most {cap} workers fit)",
            s.memory_estimate_mib
        ),
        _ => format!("~{} MiB (no limit)", s.memory_estimate_mib),
    };
    out.push_str(&format!(
        "memory:   {memory}\nwhy:      {}\n",
        s.explanation
    ));
    out.push_str("settings:\n");
    for (k, v) in &r.env {
        out.push_str(&format!("  {k}={v}\n"));
    }
    if !r.command.is_empty() || !r.args.is_empty() {
        out.push_str(&format!(
            "  command: {}\n",
            [r.command.clone(), r.args.clone()].concat().join(" ")
        ));
    }
    out
}
