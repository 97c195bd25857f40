//! The controller (I/O shell): watch → observe → decide → apply → report.
//!
//! - [`run`] (here): the watches, and which AppServers a change wakes;
//! - [`reconcile`]: one AppServer's pass through the steps, and the retry policy;
//! - `tune`: observe (pods, Prometheus) and decide (the core's tuner);
//! - `apply`: server-side apply of the owned objects;
//! - `status` and `events`: report;
//! - [`Context`]: what every reconcile shares.

mod apply;
mod context;
mod error;
mod events;
mod reconcile;
mod status;
mod tune;

use std::sync::Arc;
use std::time::Duration;

use appserver_core::desired::MANAGER;
use futures::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Node, Service};
use kube::api::Api;
use kube::runtime::controller::{self, Controller};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, ResourceExt};
use tracing::{debug, info, warn};

pub use context::{Context, TuningOptions, backoff_delay};
pub use error::Error;
pub use reconcile::{error_policy, reconcile};

use crate::health::{Health, Phase};
use crate::telemetry::Metrics;
use reconcile::Guarded;

/// Runs the controller until a shutdown signal. `health` turns ready once the AppServer and
/// Node caches have synced.
pub async fn run(
    client: Client,
    metrics: Arc<Metrics>,
    tuning: TuningOptions,
    health: Arc<Health>,
) {
    health.set(Phase::Syncing);
    let (nodes, node_writer) = reflector::store::<Node>();
    let node_events = watcher(Api::<Node>::all(client.clone()), watcher::Config::default())
        .default_backoff()
        .reflect(node_writer)
        .applied_objects()
        .predicate_filter(node_shape_hash, Default::default());
    let owned =
        watcher::Config::default().labels(&format!("app.kubernetes.io/managed-by={MANAGER}"));
    let controller = Controller::new(
        Api::<Guarded>::all(client.clone()),
        watcher::Config::default(),
    )
    .with_config(controller::Config::default().debounce(Duration::from_millis(500)))
    .owns(Api::<Deployment>::all(client.clone()), owned.clone())
    .owns(Api::<Service>::all(client.clone()), owned);
    let appservers = controller.store();
    let synced = caches_synced(appservers.clone(), nodes.clone(), health);
    let ctx = Arc::new(Context::new(client, nodes, metrics).with_tuning(tuning));
    let controller = controller
        .watches_stream(node_events, move |node| affected_by(&appservers, &node))
        .shutdown_on_signal()
        .run(reconcile, error_policy, ctx)
        .for_each(|res| async move {
            match res {
                // A requeued object deleted meanwhile: nothing to do, nothing wrong.
                Err(e @ controller::Error::ObjectNotFound(_)) => debug!(error = %e, "skipped"),
                // error_policy logged it, with the AppServer, and scheduled the retry.
                Err(controller::Error::ReconcilerFailed(e, object)) => {
                    debug!(appserver = %object, error = %e, "reconcile failed")
                }
                Ok(_) => {}
                Err(e) => warn!(error = %e, "controller event"),
            }
        });
    tokio::select! {
        () = controller => {}
        () = synced => {}
    }
}

/// Marks the replica ready once both caches hold a full list, then waits forever (the
/// controller's end ends it).
async fn caches_synced(appservers: Store<Guarded>, nodes: Store<Node>, health: Arc<Health>) {
    if appservers.wait_until_ready().await.is_ok() && nodes.wait_until_ready().await.is_ok() {
        info!("watches synced");
        health.set(Phase::Serving);
    }
    std::future::pending::<()>().await;
}

/// A node matters to sizing only through its labels, allocatable and schedulability; heartbeats
/// that change nothing else must not wake every AppServer.
fn node_shape_hash(node: &Node) -> Option<u64> {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    node.metadata.labels.hash(&mut h);
    node.spec
        .as_ref()
        .and_then(|s| s.unschedulable)
        .hash(&mut h);
    if let Some(a) = node.status.as_ref().and_then(|s| s.allocatable.as_ref()) {
        for (k, v) in a {
            (k, &v.0).hash(&mut h);
        }
    }
    Some(h.finish())
}

/// AppServers whose node selector the node satisfies.
fn affected_by(store: &Store<Guarded>, node: &Node) -> Vec<ObjectRef<Guarded>> {
    let labels = node.labels();
    store
        .state()
        .iter()
        .filter_map(|g| g.0.as_ref().ok())
        .filter(|a| {
            a.spec
                .node_selector
                .iter()
                .all(|(k, v)| labels.get(k) == Some(v))
        })
        .map(|a| ObjectRef::new(&a.name_any()).within(&a.namespace().unwrap_or_default()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn ready_only_once_both_caches_have_a_full_list() {
        let (appservers, mut aps_writer) = reflector::store::<Guarded>();
        let (nodes, mut node_writer) = reflector::store::<Node>();
        let health = Arc::new(Health::default());
        health.set(Phase::Syncing);
        let task = tokio::spawn(caches_synced(appservers, nodes, health.clone()));
        let settle = || tokio::time::sleep(Duration::from_millis(50));
        aps_writer.apply_watcher_event(&watcher::Event::Init);
        aps_writer.apply_watcher_event(&watcher::Event::InitDone);
        settle().await;
        assert_eq!(
            health.phase(),
            Phase::Syncing,
            "the Node cache is not synced yet"
        );
        node_writer.apply_watcher_event(&watcher::Event::Init);
        node_writer.apply_watcher_event(&watcher::Event::InitDone);
        settle().await;
        assert_eq!(health.phase(), Phase::Serving);
        task.abort();
    }
}
