//! `appserver-operator size`: the formulas without a cluster.

use k8s_openapi::api::core::v1::ResourceRequirements;
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use serde::Serialize;

use crate::api::{AppServerSpec, Bounds, GenericVariables, MemoryEstimate, ServerKind, ServerSpec};
use crate::cli::SizeArgs;
use crate::plan::{PlanError, sizing_input};
use crate::profile;
use crate::sizing::{Sizing, format_cores, resolve_basis, size};

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

/// Sizes as the operator would for a container with these limits.
pub fn size_report(a: &SizeArgs) -> Result<SizeReport, PlanError> {
    let spec = spec_of(a);
    let basis = resolve_basis(spec.resources.as_ref(), &[])?;
    let sizing = size(&sizing_input(&spec, &basis))?;
    let settings = profile::render(&spec, Some(&sizing));
    Ok(SizeReport {
        cpu: format_cores(basis.cpu_cores),
        memory_mib: basis.memory_mib.map(|m| m.round() as u64),
        sizing,
        env: settings
            .env
            .into_iter()
            .map(|e| (e.name, e.value.unwrap_or_default()))
            .collect(),
        command: settings.command,
        args: settings.args,
    })
}

fn spec_of(a: &SizeArgs) -> AppServerSpec {
    let mut limits =
        std::collections::BTreeMap::from([("cpu".to_string(), Quantity(a.cpu.clone()))]);
    if let Some(m) = &a.memory {
        limits.insert("memory".to_string(), Quantity(m.clone()));
    }
    let generic = (a.server == ServerKind::Generic).then(|| GenericVariables {
        workers: "WEB_CONCURRENCY".into(),
        threads: Some("THREADS".into()),
    });
    let mut spec: AppServerSpec = AppServerSpec {
        image: String::new(),
        command: vec![],
        args: vec!["app:app".into()],
        port: 8080,
        replicas: None,
        server: ServerSpec {
            kind: a.server,
            worker_class: a.worker_class,
            variables: generic,
        },
        workload: a.workload,
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
    spec.tuning.workers = Bounds {
        min: a.min_workers,
        max: a.max_workers,
    };
    spec.tuning.threads = Bounds {
        min: a.min_threads,
        max: a.max_threads,
    };
    spec
}

/// Human-readable form.
pub fn render_text(r: &SizeReport) -> String {
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
