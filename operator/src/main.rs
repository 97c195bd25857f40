use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context as _;
use clap::Parser;
use tracing_subscriber::EnvFilter;

use appserver_operator::cli::{BacklogArgs, Cli, Command, Output, RunArgs};
use appserver_operator::{controller, crd, http, leader, offline, simulate, telemetry};

fn main() -> ExitCode {
    // One crypto provider for every TLS client in the process (kube's and Prometheus's); an
    // error only means one is installed already.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Crd => crd::yaml()
            .context("rendering the CRD")
            .map(|y| print!("{y}")),
        Command::Size(args) => size(&args),
        Command::Simulate(args) => simulate(&args),
        Command::Run(args) => run(args),
        Command::BacklogExporter(args) => backlog_exporter(&args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn size(args: &appserver_operator::cli::SizeArgs) -> anyhow::Result<()> {
    let report = offline::size_report(args)
        .context("sizing with --cpu and --memory as the container's limits")?;
    match args.output {
        Output::Text => emit(&offline::render_text(&report)),
        Output::Json => emit(&format!("{}\n", serde_json::to_string_pretty(&report)?)),
    }
}

fn simulate(args: &appserver_operator::cli::SimulateArgs) -> anyhow::Result<()> {
    let report = simulate::simulate(args).context("simulating the tuner")?;
    match args.output {
        Output::Text => emit(&simulate::render_text(&report)),
        Output::Json => emit(&format!("{}\n", serde_json::to_string_pretty(&report)?)),
    }
}

/// Writes to stdout; a closed pipe (`| head`) is not an error.
fn emit(text: &str) -> anyhow::Result<()> {
    use std::io::Write;
    match std::io::stdout().lock().write_all(text.as_bytes()) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        other => other.context("writing to stdout"),
    }
}

fn tuning_options(args: &RunArgs) -> controller::TuningOptions {
    controller::TuningOptions {
        prometheus_url: args.prometheus_url.clone().filter(|u| !u.is_empty()),
        interval: args.tune_interval,
        window: args.tune_window,
        sidecar_image: args.sidecar_image.clone(),
    }
}

/// Runs the controller; with leader election only while this replica holds the Lease.
async fn lead_and_control(
    client: kube::Client,
    metrics: Arc<telemetry::Metrics>,
    args: &RunArgs,
) -> anyhow::Result<()> {
    if !args.leader_election {
        metrics.leader.set(1);
        controller::run(client, metrics, tuning_options(args)).await;
        return Ok(());
    }
    let lease = leader::LeaseConfig {
        name: args.lease_name.clone(),
        namespace: args.lease_namespace.clone(),
        identity: leader::identity(),
        duration_seconds: args.lease_duration,
    };
    let mut leadership = leader::acquire(client.clone(), &lease).await?;
    metrics.leader.set(1);
    tokio::select! {
        () = controller::run(client, metrics.clone(), tuning_options(args)) => {
            tracing::info!("controller stopped: releasing the lease");
            leadership.release().await;
            Ok(())
        }
        () = leadership.lost() => {
            metrics.leader.set(0);
            // Exit rather than risk two controllers: the pod restarts as a standby.
            anyhow::bail!("lost the lease {}/{}; exiting", lease.namespace, lease.name)
        }
    }
}

fn run(args: RunArgs) -> anyhow::Result<()> {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let logs = tracing_subscriber::fmt().with_env_filter(filter);
    if args.log_json {
        logs.json().init();
    } else {
        logs.init();
    }
    let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    runtime.block_on(async {
        let client = kube::Client::try_default()
            .await
            .context("connecting to Kubernetes (kubeconfig or in-cluster service account)")?;
        let version = client.apiserver_version().await.context("asking the API server for its version")?;
        tracing::info!(apiserver = %version.git_version, "connected");
        let metrics = Arc::new(telemetry::Metrics::default());
        let server = http::serve(args.metrics_addr, metrics.clone());
        let control = lead_and_control(client, metrics, &args);
        tokio::select! {
            served = server => served.with_context(|| format!("serving metrics on {}", args.metrics_addr))?,
            done = control => done?,
        }
        Ok(())
    })
}

/// The sidecar: serves the app's accept backlog until the process ends.
fn backlog_exporter(args: &BacklogArgs) -> anyhow::Result<()> {
    init_logs(args.log_json);
    let addr = std::net::SocketAddr::new(args.address, args.port);
    let cfg = appserver_operator::backlog::BacklogConfig {
        proc_root: args.proc_root.clone(),
        listen_port: args.listen_port,
    };
    tracing::info!(%addr, listen_port = ?cfg.listen_port, "serving the accept backlog");
    let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    runtime
        .block_on(appserver_operator::backlog::serve(addr, cfg))
        .with_context(|| format!("serving metrics on {addr}"))
}

/// Text or JSON logs, filtered by RUST_LOG (default info), as `run` sets them up.
fn init_logs(json: bool) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let logs = tracing_subscriber::fmt().with_env_filter(filter);
    if json {
        logs.json().init();
    } else {
        logs.init();
    }
}
