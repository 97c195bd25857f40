//! The command line: one file per command, and the flags they share (`flatten`ed).

mod backlog_exporter;
mod crd;
mod run;
mod simulate;
mod size;

use appserver_core::api::{
    Bounds, DEFAULT_MAX_THREADS, DEFAULT_MAX_WORKERS, ServerKind, ServerSpec, WorkerClass,
    WorkloadClass,
};
use clap::{Args, Parser, Subcommand, ValueEnum};
use tracing_subscriber::EnvFilter;

pub use backlog_exporter::BacklogArgs;
pub use run::RunArgs;
pub use simulate::SimulateArgs;
pub use size::SizeArgs;

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

/// Runs one command.
pub fn execute(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Run(args) => run::run(args),
        Command::Crd => crd::print(),
        Command::Size(args) => size::print(&args),
        Command::Simulate(args) => simulate::print(&args),
        Command::BacklogExporter(args) => backlog_exporter::serve(&args),
    }
}

/// The pod's CPU and memory limits.
#[derive(Args, Debug)]
pub struct PodArgs {
    /// CPU cores the container gets (its limit), e.g. 2, 0.5 or 500m.
    #[arg(long)]
    pub cpu: String,
    /// Memory limit, e.g. 4Gi or 512Mi. Without it memory caps no workers and nothing is
    /// OOM-killed.
    #[arg(long)]
    pub memory: Option<String>,
}

/// The server and the workload class, as in `spec.server` and `spec.workload`.
#[derive(Args, Debug)]
pub struct ServerArgs {
    /// gunicorn | uvicorn | puma | unicorn | php-fpm | node | generic
    #[arg(long, value_parser = crd_value::<ServerKind>, default_value = "gunicorn")]
    pub server: ServerKind,
    /// gunicorn only: sync | gthread | gevent | uvicorn
    #[arg(long, value_parser = crd_value::<WorkerClass>)]
    pub worker_class: Option<WorkerClass>,
    /// io-bound | cpu-bound | mixed: the class the static formulas size for.
    #[arg(long, value_parser = crd_value::<WorkloadClass>, default_value = "io-bound")]
    pub workload: WorkloadClass,
}

impl ServerArgs {
    /// `spec.server`; a generic server gets the usual variable names.
    pub fn spec(&self) -> ServerSpec {
        let variables =
            (self.server == ServerKind::Generic).then(|| appserver_core::api::GenericVariables {
                workers: "WEB_CONCURRENCY".into(),
                threads: Some("THREADS".into()),
            });
        ServerSpec {
            kind: self.server,
            worker_class: self.worker_class,
            variables,
        }
    }
}

/// `spec.tuning.workers` and `spec.tuning.threads`.
#[derive(Args, Debug)]
pub struct BoundsArgs {
    /// Fewest worker processes (spec.tuning.workers.min).
    #[arg(long, default_value_t = 1)]
    pub min_workers: i32,
    /// Most worker processes (spec.tuning.workers.max).
    #[arg(long, default_value_t = DEFAULT_MAX_WORKERS)]
    pub max_workers: i32,
    /// Fewest threads per worker (spec.tuning.threads.min).
    #[arg(long, default_value_t = 1)]
    pub min_threads: i32,
    /// Most threads per worker (spec.tuning.threads.max).
    #[arg(long, default_value_t = DEFAULT_MAX_THREADS)]
    pub max_threads: i32,
}

impl BoundsArgs {
    pub fn workers(&self) -> Bounds {
        Bounds {
            min: self.min_workers,
            max: self.max_workers,
        }
    }

    pub fn threads(&self) -> Bounds {
        Bounds {
            min: self.min_threads,
            max: self.max_threads,
        }
    }
}

#[derive(Args, Debug)]
pub struct OutputArgs {
    /// Output format.
    #[arg(short = 'o', long, value_enum, default_value = "text")]
    pub output: Output,
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Output {
    Text,
    Json,
}

impl OutputArgs {
    /// Prints `value` as `text` renders it, or as pretty JSON.
    fn print<T: serde::Serialize>(
        &self,
        value: &T,
        text: impl Fn(&T) -> String,
    ) -> anyhow::Result<()> {
        match self.output {
            Output::Text => emit(&text(value)),
            Output::Json => emit(&format!("{}\n", serde_json::to_string_pretty(value)?)),
        }
    }
}

#[derive(Args, Debug)]
pub struct LogArgs {
    /// Log as JSON lines instead of text.
    #[arg(long, env = "APPSERVER_LOG_JSON")]
    pub log_json: bool,
}

impl LogArgs {
    /// Text or JSON logs, filtered by RUST_LOG (default info).
    fn init(&self) {
        let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
        let logs = tracing_subscriber::fmt().with_env_filter(filter);
        if self.log_json {
            logs.json().init();
        } else {
            logs.init();
        }
    }
}

/// Writes to stdout; a closed pipe (`| head`) is not an error.
fn emit(text: &str) -> anyhow::Result<()> {
    use anyhow::Context as _;
    use std::io::Write;
    match std::io::stdout().lock().write_all(text.as_bytes()) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        other => other.context("writing to stdout"),
    }
}

/// A duration such as 30s, 2m or 1h, longer than zero.
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

/// Parses a CLI value with the same spelling as the CRD (`io-bound`, `php-fpm`, `gthread`).
fn crd_value<T: serde::de::DeserializeOwned>(s: &str) -> Result<T, String> {
    serde_json::from_value(serde_json::Value::String(s.to_string())).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shared_flags_parse_the_same_in_size_and_simulate() {
        let size = Cli::parse_from([
            "x",
            "size",
            "--cpu",
            "2",
            "--server",
            "php-fpm",
            "--workload",
            "cpu-bound",
            "--max-workers",
            "8",
            "-o",
            "json",
        ]);
        let Command::Size(size) = size.command else {
            panic!("not size")
        };
        assert_eq!(size.server.server, ServerKind::PhpFpm);
        assert_eq!(size.server.workload, WorkloadClass::CpuBound);
        assert_eq!(size.bounds.workers(), Bounds { min: 1, max: 8 });
        assert_eq!(size.output.output, Output::Json);
        let sim = Cli::parse_from([
            "x",
            "simulate",
            "--cpu",
            "2",
            "--cpu-per-request",
            "20ms",
            "--rps",
            "5",
            "--server",
            "php-fpm",
            "--max-workers",
            "8",
        ]);
        let Command::Simulate(sim) = sim.command else {
            panic!("not simulate")
        };
        assert_eq!(sim.server.server, ServerKind::PhpFpm);
        assert_eq!(sim.bounds.workers(), Bounds { min: 1, max: 8 });
    }

    #[test]
    fn values_are_spelled_as_in_the_crd() {
        assert_eq!(
            crd_value::<WorkloadClass>("io-bound"),
            Ok(WorkloadClass::IoBound)
        );
        assert!(crd_value::<ServerKind>("tomcat").is_err());
    }

    #[test]
    fn durations_must_be_longer_than_zero() {
        assert_eq!(duration("2m"), Ok(std::time::Duration::from_secs(120)));
        assert!(duration("0s").is_err());
        assert!(duration("soon").unwrap_err().contains("\"soon\""));
    }
}
