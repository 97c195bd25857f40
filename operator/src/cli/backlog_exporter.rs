//! `appserver-operator backlog-exporter`: the sidecar that serves the app's accept backlog.

use anyhow::Context as _;
use clap::Args;

use super::LogArgs;
use crate::backlog_exporter::{self, BacklogConfig};

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
    #[command(flatten)]
    pub logs: LogArgs,
}

/// Serves until the process ends.
pub(super) fn serve(args: &BacklogArgs) -> anyhow::Result<()> {
    args.logs.init();
    let addr = std::net::SocketAddr::new(args.address, args.port);
    let cfg = BacklogConfig {
        proc_root: args.proc_root.clone(),
        listen_port: args.listen_port,
    };
    tracing::info!(%addr, listen_port = ?cfg.listen_port, "serving the accept backlog");
    let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    runtime
        .block_on(backlog_exporter::serve(addr, cfg))
        .with_context(|| format!("serving metrics on {addr}"))
}
