//! Leader election through a coordination.k8s.io Lease, so several replicas never reconcile at
//! once: only the holder runs the controller; the others wait and take over when it is gone.

use kube::Client;
use kube_lease_manager::{LeaseManager, LeaseManagerBuilder, LeaseManagerError};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::info;

/// Where the lease lives and who we are.
#[derive(Clone, Debug)]
pub struct LeaseConfig {
    pub name: String,
    pub namespace: String,
    pub identity: String,
    /// Seconds a holder keeps the lease without renewing it.
    pub duration_seconds: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum LeaderError {
    #[error("setting up the lease {namespace}/{name}: {source}")]
    Setup {
        name: String,
        namespace: String,
        source: LeaseManagerError,
    },
    #[error(
        "the lease manager of {namespace}/{name} stopped before this replica became the leader: {cause}"
    )]
    Stopped {
        name: String,
        namespace: String,
        /// What ended the manager's task (its error, or how it ended).
        cause: String,
    },
}

/// Held leadership: `lost()` resolves when it ends; dropping it releases the lease.
pub struct Leadership {
    state: watch::Receiver<bool>,
    task: JoinHandle<Result<LeaseManager, LeaseManagerError>>,
}

impl Leadership {
    /// Resolves when this replica is no longer the leader (or the lease manager stopped).
    pub async fn lost(&mut self) {
        while *self.state.borrow() {
            if self.state.changed().await.is_err() {
                return;
            }
        }
    }

    /// Gives the lease up at once so a standby does not wait for it to expire.
    pub async fn release(self) {
        drop(self.state);
        // Closing the channel makes the manager's task release the lease and end.
        let _ = self.task.await;
    }
}

/// Waits until this replica holds the lease.
pub async fn acquire(client: Client, config: &LeaseConfig) -> Result<Leadership, LeaderError> {
    let duration = config.duration_seconds.max(2);
    let manager = LeaseManagerBuilder::new(client, &config.name)
        .with_namespace(&config.namespace)
        .with_identity(&config.identity)
        .with_duration(duration)
        .with_grace((duration / 3).max(1))
        .with_field_manager(appserver_core::desired::MANAGER)
        .build()
        .await
        .map_err(|source| LeaderError::Setup {
            name: config.name.clone(),
            namespace: config.namespace.clone(),
            source,
        })?;
    let (mut state, task) = manager.watch().await;
    info!(lease = %config.name, identity = %config.identity, "waiting to become the leader");
    while !*state.borrow_and_update() {
        if state.changed().await.is_err() {
            // The manager's task ended: its result says why.
            let cause = match task.await {
                Ok(Err(e)) => crate::error_chain(&e),
                Ok(Ok(_)) => "it ended without an error".to_string(),
                Err(e) => format!("its task failed: {e}"),
            };
            return Err(LeaderError::Stopped {
                name: config.name.clone(),
                namespace: config.namespace.clone(),
                cause,
            });
        }
    }
    info!(lease = %config.name, identity = %config.identity, "became the leader");
    Ok(Leadership { state, task })
}

/// A replica's identity: the pod name in a cluster, else host and process id.
pub fn identity() -> String {
    let host = std::env::var("POD_NAME")
        .or_else(|_| std::env::var("HOSTNAME"))
        .unwrap_or_else(|_| "appserver-operator".into());
    format!("{host}-{}", std::process::id())
}
