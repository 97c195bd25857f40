//! The reconciler: watch → plan → apply → report.
//!
//! Each reconcile is a short pipeline. Only `apply`, `write_status` and `publish` touch the API;
//! planning, the desired objects and the status are pure functions of what was read.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Node, Service};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, Patch, PatchParams};
use kube::core::error_boundary::{DeserializeGuard, InvalidObject};
use kube::runtime::controller::{self, Action, Controller};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, Resource, ResourceExt};
use serde::Serialize;
use tracing::{Instrument, debug, info, info_span, warn};

use crate::api::{AppServer, AppServerStatus};
use crate::desired::{self, MANAGER};
use crate::plan::{Plan, plan};
use crate::report::{self, Notice, Outcome};
use crate::sizing::matching_node_shapes;
use crate::telemetry::Metrics;

/// Periodic re-check, in case a watch event was missed.
const RESYNC: Duration = Duration::from_secs(600);
const BACKOFF_BASE: Duration = Duration::from_secs(1);
const BACKOFF_MAX: Duration = Duration::from_secs(300);

type Guarded = DeserializeGuard<AppServer>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("AppServer {0} does not match the CRD's types: {1}")]
    InvalidObject(String, Box<InvalidObject>),
    #[error("AppServer {0} has no {1}")]
    MissingKey(String, &'static str),
    #[error("applying {kind} {name}: {source}")]
    Apply {
        kind: &'static str,
        name: String,
        source: kube::Error,
    },
    #[error("writing the status of AppServer {name}: {source}")]
    Status { name: String, source: kube::Error },
}

impl Error {
    /// The only label errors get on metrics.
    pub fn category(&self) -> &'static str {
        match self {
            Self::InvalidObject(..) => "invalid-object",
            Self::MissingKey(..) => "missing-key",
            Self::Apply { .. } => "apply",
            Self::Status { .. } => "status",
        }
    }
}

/// Shared by every reconcile.
pub struct Context {
    pub client: Client,
    pub recorder: Recorder,
    pub nodes: Store<Node>,
    pub metrics: Arc<Metrics>,
    /// Consecutive failures per object: kube-runtime has no per-object backoff.
    backoff: Mutex<HashMap<String, u32>>,
}

impl Context {
    pub fn new(client: Client, nodes: Store<Node>, metrics: Arc<Metrics>) -> Self {
        let recorder = Recorder::new(client.clone(), Reporter::from(MANAGER));
        Self {
            client,
            recorder,
            nodes,
            metrics,
            backoff: Mutex::default(),
        }
    }

    fn failures(&self, key: &str, failed: bool) -> u32 {
        let Ok(mut map) = self.backoff.lock() else {
            return 0;
        };
        if failed {
            let n = map.entry(key.to_string()).or_insert(0);
            *n = n.saturating_add(1);
            *n
        } else {
            map.remove(key);
            0
        }
    }
}

/// Delay after the n-th consecutive failure: 1 s, 2 s, 4 s … up to 5 min.
pub fn backoff_delay(failures: u32) -> Duration {
    let factor = 2u32.saturating_pow(failures.saturating_sub(1));
    BACKOFF_BASE.saturating_mul(factor).min(BACKOFF_MAX)
}

fn key_of(guard: &Guarded) -> String {
    let meta = match &guard.0 {
        Ok(a) => &a.metadata,
        Err(e) => &e.metadata,
    };
    format!(
        "{}/{}",
        meta.namespace.as_deref().unwrap_or_default(),
        meta.name.as_deref().unwrap_or_default()
    )
}

pub async fn reconcile(guard: Arc<Guarded>, ctx: Arc<Context>) -> Result<Action, Error> {
    let key = key_of(&guard);
    let started = Instant::now();
    let result = reconcile_inner(&guard, &ctx, &key)
        .instrument(info_span!("reconcile", appserver = %key))
        .await;
    ctx.metrics.observe(
        started.elapsed(),
        result.as_ref().err().map(Error::category),
    );
    if result.is_ok() {
        ctx.failures(&key, false);
    }
    result
}

pub fn error_policy(guard: Arc<Guarded>, error: &Error, ctx: Arc<Context>) -> Action {
    if let Error::InvalidObject(..) = error {
        // Nothing to retry: the object must change first.
        return Action::await_change();
    }
    let n = ctx.failures(&key_of(&guard), true);
    let delay = backoff_delay(n);
    warn!(error = %error, category = error.category(), retry_in = ?delay, "reconcile failed");
    Action::requeue(delay)
}

async fn reconcile_inner(guard: &Guarded, ctx: &Context, key: &str) -> Result<Action, Error> {
    let aps = match &guard.0 {
        Ok(aps) => aps,
        Err(invalid) => return Err(report_invalid(ctx, key, invalid).await),
    };
    let namespace = aps
        .namespace()
        .ok_or_else(|| Error::MissingKey(key.into(), "namespace"))?;
    // Read: the nodes come from the watch cache, not from the API.
    let nodes = matching_node_shapes(
        ctx.nodes.state().iter().map(|n| n.as_ref()),
        &aps.spec.node_selector,
    );
    // Validate and size (pure).
    let planned = plan(&aps.spec, &nodes);
    // Apply, only a valid plan: a bad spec leaves the running Deployment as it was.
    let applied;
    let outcome = match &planned {
        Ok(plan) => {
            applied = apply(ctx, aps, &namespace, plan).await?;
            Outcome::Applied {
                plan,
                deployment: &applied,
            }
        }
        Err(e) => {
            info!(reason = e.reason(), "not applying: {e}");
            Outcome::Refused(e)
        }
    };
    // Report.
    let old = aps.status.as_ref();
    let new = report::status(
        old,
        aps.metadata.generation,
        &outcome,
        &Time(Timestamp::now()),
    );
    if old != Some(&new) {
        write_status(ctx, aps, &namespace, &new).await?;
    }
    publish(ctx, aps, report::notices(old, &new)).await;
    Ok(Action::requeue(RESYNC))
}

/// Server-side apply of the Deployment and Service, with one field manager and `force`.
async fn apply(
    ctx: &Context,
    aps: &AppServer,
    namespace: &str,
    plan: &Plan,
) -> Result<Deployment, Error> {
    let key = aps.name_any();
    let owner = aps
        .controller_owner_ref(&())
        .ok_or_else(|| Error::MissingKey(key.clone(), "uid"))?;
    let params = PatchParams::apply(MANAGER).force();
    let deployment = desired::deployment(aps, &owner, plan);
    let applied = Api::<Deployment>::namespaced(ctx.client.clone(), namespace)
        .patch(&key, &params, &Patch::Apply(&deployment))
        .await
        .map_err(|source| Error::Apply {
            kind: "Deployment",
            name: key.clone(),
            source,
        })?;
    let service = desired::service(aps, &owner);
    Api::<Service>::namespaced(ctx.client.clone(), namespace)
        .patch(&key, &params, &Patch::Apply(&service))
        .await
        .map_err(|source| Error::Apply {
            kind: "Service",
            name: key.clone(),
            source,
        })?;
    Ok(applied)
}

#[derive(Serialize, Debug)]
#[serde(rename_all = "camelCase")]
struct StatusApply<'a> {
    api_version: &'a str,
    kind: &'a str,
    status: &'a AppServerStatus,
}

/// Status is applied whole with the same field manager, so fields we stop reporting disappear.
async fn write_status(
    ctx: &Context,
    aps: &AppServer,
    namespace: &str,
    status: &AppServerStatus,
) -> Result<(), Error> {
    let name = aps.name_any();
    let body = StatusApply {
        api_version: &AppServer::api_version(&()),
        kind: &AppServer::kind(&()),
        status,
    };
    Api::<AppServer>::namespaced(ctx.client.clone(), namespace)
        .patch_status(
            &name,
            &PatchParams::apply(MANAGER).force(),
            &Patch::Apply(&body),
        )
        .await
        .map_err(|source| Error::Status { name, source })?;
    Ok(())
}

/// Events are best effort: a failure to record one is logged, not retried.
async fn publish(ctx: &Context, aps: &AppServer, notices: Vec<Notice>) {
    let reference = aps.object_ref(&());
    for n in notices {
        let event = Event {
            type_: if n.warning {
                EventType::Warning
            } else {
                EventType::Normal
            },
            reason: n.reason.into(),
            note: Some(truncate(&n.note, 1000)),
            action: "Reconcile".into(),
            secondary: None,
        };
        if let Err(e) = ctx.recorder.publish(&event, &reference).await {
            warn!(error = %e, reason = n.reason, "could not record an Event");
        }
    }
}

async fn report_invalid(ctx: &Context, key: &str, invalid: &InvalidObject) -> Error {
    warn!(error = %invalid, "AppServer does not deserialize");
    let reference = k8s_openapi::api::core::v1::ObjectReference {
        api_version: Some(AppServer::api_version(&()).into()),
        kind: Some(AppServer::kind(&()).into()),
        name: invalid.metadata.name.clone(),
        namespace: invalid.metadata.namespace.clone(),
        uid: invalid.metadata.uid.clone(),
        ..Default::default()
    };
    let event = Event {
        type_: EventType::Warning,
        reason: "InvalidObject".into(),
        note: Some(truncate(&invalid.error, 1000)),
        action: "Reconcile".into(),
        secondary: None,
    };
    if let Err(e) = ctx.recorder.publish(&event, &reference).await {
        warn!(error = %e, "could not record an Event");
    }
    Error::InvalidObject(key.to_string(), Box::new(invalid.clone()))
}

fn truncate(s: &str, max: usize) -> String {
    match s.char_indices().nth(max) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s.to_string(),
    }
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

/// Runs the controller until a shutdown signal.
pub async fn run(client: Client, metrics: Arc<Metrics>) {
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
    let ctx = Arc::new(Context::new(client, nodes, metrics));
    controller
        .watches_stream(node_events, move |node| affected_by(&appservers, &node))
        .shutdown_on_signal()
        .run(reconcile, error_policy, ctx)
        .for_each(|res| async move {
            match res {
                // A requeued object deleted meanwhile: nothing to do, nothing wrong.
                Err(e @ controller::Error::ObjectNotFound(_)) => debug!(error = %e, "skipped"),
                // Reconcile errors are logged by error_policy; the rest are watch troubles.
                Err(controller::Error::ReconcilerFailed(..)) | Ok(_) => {}
                Err(e) => warn!(error = %e, "controller event"),
            }
        })
        .await;
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
