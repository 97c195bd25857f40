//! Command line: `run`, `crd`, `size`, `simulate`, `backlog-exporter`.

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::api::{ServerKind, WorkerClass, WorkloadClass};

#[derive(Parser, Debug)]
#[command(
    name = "appserver-operator",
    version,
    about = "Deploys app servers and sizes their workers and threads"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the operator against the cluster of the current kubeconfig (or in-cluster).
    Run(RunArgs),
    /// Print the AppServer CustomResourceDefinition as YAML.
    Crd,
    /// Size an app server offline: print workers, threads and why.
    Size(SizeArgs),
    /// Run the tuner against the workload model offline: its decisions, the result, the optimum.
    Simulate(Box<SimulateArgs>),
    /// Serve the accept backlog of the app's listening socket as Prometheus metrics (sidecar).
    BacklogExporter(BacklogArgs),
}

#[derive(Args, Debug)]
pub struct RunArgs {
    /// Address of the health, readiness and metrics endpoints.
    #[arg(long, env = "APPSERVER_METRICS_ADDR", default_value = "0.0.0.0:8080")]
    pub metrics_addr: std::net::SocketAddr,
    /// Log as JSON lines instead of text.
    #[arg(long, env = "APPSERVER_LOG_JSON")]
    pub log_json: bool,
    /// Reconcile only while holding a Lease, so several replicas never act at once.
    #[arg(long, env = "APPSERVER_LEADER_ELECTION")]
    pub leader_election: bool,
    /// Name of the Lease.
    #[arg(
        long,
        env = "APPSERVER_LEASE_NAME",
        default_value = "appserver-operator"
    )]
    pub lease_name: String,
    /// Namespace of the Lease (in a cluster: the operator's own, from the downward API).
    #[arg(long, env = "POD_NAMESPACE", default_value = "default")]
    pub lease_namespace: String,
    /// Seconds a leader keeps the Lease without renewing it; a standby takes over after that.
    #[arg(long, env = "APPSERVER_LEASE_DURATION", default_value_t = 15, value_parser = clap::value_parser!(u64).range(2..=300))]
    pub lease_duration: u64,
    /// Prometheus the tuner reads when an AppServer names none (spec.tuning.metrics.prometheus).
    #[arg(long, env = "APPSERVER_PROMETHEUS_URL")]
    pub prometheus_url: Option<String>,
    /// How often each tuned AppServer is observed and decided on.
    #[arg(long, env = "APPSERVER_TUNE_INTERVAL", default_value = "1m", value_parser = duration)]
    pub tune_interval: std::time::Duration,
    /// The window the signals are taken over (rates, quantiles); a decision waits a full window
    /// after a change before it judges the new setting.
    #[arg(long, env = "APPSERVER_TUNE_WINDOW", default_value = "2m", value_parser = duration)]
    pub tune_window: std::time::Duration,
    /// Image of the backlog-exporter sidecar (spec.tuning.queueSignal: sidecar).
    #[arg(long, env = "APPSERVER_SIDECAR_IMAGE", default_value = crate::desired::DEFAULT_SIDECAR_IMAGE)]
    pub sidecar_image: String,
}

/// A duration such as 30s, 2m or 1h.
fn duration(s: &str) -> Result<std::time::Duration, String> {
    let d: kube::core::Duration = s
        .parse()
        .map_err(|_| format!("{s:?} is not a duration such as 30s, 2m or 1h"))?;
    let d = std::time::Duration::from(d);
    if d.is_zero() {
        return Err("must be longer than 0s".into());
    }
    Ok(d)
}

#[derive(Args, Debug)]
pub struct SizeArgs {
    /// CPU cores the container gets (limit), e.g. 2, 0.5 or 500m.
    #[arg(long)]
    pub cpu: String,
    /// Memory limit, e.g. 4Gi or 512Mi. Without it memory does not cap the workers.
    #[arg(long)]
    pub memory: Option<String>,
    /// gunicorn | uvicorn | puma | unicorn | php-fpm | node | generic
    #[arg(long, value_parser = crd_value::<ServerKind>, default_value = "gunicorn")]
    pub server: ServerKind,
    /// gunicorn only: sync | gthread | gevent | uvicorn
    #[arg(long, value_parser = crd_value::<WorkerClass>)]
    pub worker_class: Option<WorkerClass>,
    /// io-bound | cpu-bound | mixed
    #[arg(long, value_parser = crd_value::<WorkloadClass>, default_value = "io-bound")]
    pub workload: WorkloadClass,
    /// Memory of the master process, MiB.
    #[arg(long, default_value_t = 200)]
    pub base_mib: i64,
    /// Memory of each worker, MiB.
    #[arg(long, default_value_t = 200)]
    pub per_worker_mib: i64,
    #[arg(long, default_value_t = 1)]
    pub min_workers: i32,
    #[arg(long, default_value_t = crate::api::DEFAULT_MAX_WORKERS)]
    pub max_workers: i32,
    #[arg(long, default_value_t = 1)]
    pub min_threads: i32,
    #[arg(long, default_value_t = crate::api::DEFAULT_MAX_THREADS)]
    pub max_threads: i32,
    /// Output format.
    #[arg(short = 'o', long, value_enum, default_value = "text")]
    pub output: Output,
}

#[derive(Args, Debug)]
pub struct SimulateArgs {
    /// CPU limit of the pod, e.g. 2, 0.5 or 500m.
    #[arg(long)]
    pub cpu: String,
    /// Memory limit of the pod, e.g. 4Gi. Without it nothing is OOM-killed.
    #[arg(long)]
    pub memory: Option<String>,
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
    /// gunicorn | uvicorn | puma | unicorn | php-fpm | node
    #[arg(long, value_parser = crd_value::<ServerKind>, default_value = "gunicorn")]
    pub server: ServerKind,
    /// gunicorn only: sync | gthread | gevent | uvicorn
    #[arg(long, value_parser = crd_value::<WorkerClass>)]
    pub worker_class: Option<WorkerClass>,
    /// io-bound | cpu-bound | mixed: where the static formula starts.
    #[arg(long, value_parser = crd_value::<WorkloadClass>, default_value = "io-bound")]
    pub workload: WorkloadClass,
    #[arg(long, default_value_t = 1)]
    pub min_workers: i32,
    #[arg(long, default_value_t = crate::api::DEFAULT_MAX_WORKERS)]
    pub max_workers: i32,
    #[arg(long, default_value_t = 1)]
    pub min_threads: i32,
    #[arg(long, default_value_t = crate::api::DEFAULT_MAX_THREADS)]
    pub max_threads: i32,
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
    /// Output format.
    #[arg(short = 'o', long, value_enum, default_value = "text")]
    pub output: Output,
}

#[derive(Args, Debug)]
pub struct BacklogArgs {
    /// Port the exporter serves /metrics and /healthz on.
    #[arg(long, default_value_t = 9102)]
    pub port: u16,
    /// The app's port to watch; without it every LISTEN socket is reported.
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..))]
    pub listen_port: Option<u16>,
    /// Address the exporter binds.
    #[arg(long, default_value = "0.0.0.0")]
    pub address: std::net::IpAddr,
    /// Root of procfs; /proc/1 reads the network namespace of PID 1.
    #[arg(long, default_value = "/proc", hide = true)]
    pub proc_root: std::path::PathBuf,
    /// Log as JSON lines instead of text.
    #[arg(long, env = "APPSERVER_LOG_JSON")]
    pub log_json: bool,
}

#[derive(ValueEnum, Clone, Copy, Debug)]
pub enum Output {
    Text,
    Json,
}

/// Parses a CLI value with the same spelling as the CRD (`io-bound`, `php-fpm`, `gthread`).
fn crd_value<T: serde::de::DeserializeOwned>(s: &str) -> Result<T, String> {
    serde_json::from_value(serde_json::Value::String(s.to_string())).map_err(|e| e.to_string())
}
