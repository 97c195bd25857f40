//! Command line: `run`, `crd`, `size`.

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

#[derive(ValueEnum, Clone, Copy, Debug)]
pub enum Output {
    Text,
    Json,
}

/// Parses a CLI value with the same spelling as the CRD (`io-bound`, `php-fpm`, `gthread`).
fn crd_value<T: serde::de::DeserializeOwned>(s: &str) -> Result<T, String> {
    serde_json::from_value(serde_json::Value::String(s.to_string())).map_err(|e| e.to_string())
}
