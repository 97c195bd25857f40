//! `appserver-operator run`: the operator itself, against the current kubeconfig's cluster (or
//! in-cluster), with its HTTP endpoints and, optionally, leader election.

use std::sync::Arc;

use anyhow::Context as _;
use appserver_core::desired::DEFAULT_SIDECAR_IMAGE;
use clap::Args;

use super::{LogArgs, duration};
use crate::controller::{self, TuningOptions};
use crate::health::{Health, Phase};
use crate::telemetry::Metrics;
use crate::{http, leader};

#[derive(Args, Debug)]
pub struct RunArgs {
    /// Address of the health, readiness and metrics endpoints.
    #[arg(long, env = "APPSERVER_METRICS_ADDR", default_value = "0.0.0.0:8080")]
    pub metrics_addr: std::net::SocketAddr,
    #[command(flatten)]
    pub logs: LogArgs,
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
    #[arg(long, env = "APPSERVER_SIDECAR_IMAGE", default_value = DEFAULT_SIDECAR_IMAGE)]
    pub sidecar_image: String,
}

impl RunArgs {
    fn tuning(&self) -> TuningOptions {
        TuningOptions {
            prometheus_url: self.prometheus_url.clone().filter(|u| !u.is_empty()),
            interval: self.tune_interval,
            window: self.tune_window,
            sidecar_image: self.sidecar_image.clone(),
        }
    }
}

pub(super) fn run(args: RunArgs) -> anyhow::Result<()> {
    args.logs.init();
    let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    runtime.block_on(async {
        let client = kube::Client::try_default()
            .await
            .context("connecting to Kubernetes (kubeconfig or in-cluster service account)")?;
        let version = client
            .apiserver_version()
            .await
            .context("asking the API server for its version")?;
        tracing::info!(apiserver = %version.git_version, "connected");
        let metrics = Arc::new(Metrics::default());
        let health = Arc::new(Health::default());
        let server = http::serve(args.metrics_addr, metrics.clone(), health.clone());
        let control = lead_and_control(client, metrics, health, &args);
        tokio::select! {
            served = server => served.with_context(|| format!("serving metrics on {}", args.metrics_addr))?,
            done = control => done?,
        }
        Ok(())
    })
}

/// Runs the controller; with leader election only while this replica holds the Lease.
async fn lead_and_control(
    client: kube::Client,
    metrics: Arc<Metrics>,
    health: Arc<Health>,
    args: &RunArgs,
) -> anyhow::Result<()> {
    if !args.leader_election {
        metrics.leader.set(1);
        controller::run(client, metrics, args.tuning(), health).await;
        return Ok(());
    }
    let lease = leader::LeaseConfig {
        name: args.lease_name.clone(),
        namespace: args.lease_namespace.clone(),
        identity: leader::identity(),
        duration_seconds: args.lease_duration,
    };
    health.set(Phase::Standby);
    let mut leadership = leader::acquire(client.clone(), &lease).await?;
    metrics.leader.set(1);
    tokio::select! {
        () = controller::run(client, metrics.clone(), args.tuning(), health) => {
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
