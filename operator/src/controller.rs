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

use crate::api::{AppServer, AppServerStatus, TuningMode};
use crate::desired::{self, DEFAULT_SIDECAR_IMAGE, MANAGER};
use crate::observe::{self, Observer, Target};
use crate::plan::{Plan, plan};
use crate::report::{self, Notice, Outcome};
use crate::signals::Observation;
use crate::sizing::matching_node_shapes;
use crate::telemetry::Metrics;
use crate::tuner::{self, Decision, State};
use crate::tuning::{self, Evaluation};

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

/// How the tuner observes: where, how often, over what window.
#[derive(Clone, Debug)]
pub struct TuningOptions {
    /// Prometheus for AppServers that name none.
    pub prometheus_url: Option<String>,
    pub interval: Duration,
    pub window: Duration,
    pub sidecar_image: String,
}

impl Default for TuningOptions {
    fn default() -> Self {
        Self {
            prometheus_url: None,
            interval: Duration::from_secs(60),
            window: Duration::from_secs(120),
            sidecar_image: DEFAULT_SIDECAR_IMAGE.into(),
        }
    }
}

/// Shared by every reconcile.
pub struct Context {
    pub client: Client,
    pub recorder: Recorder,
    pub nodes: Store<Node>,
    pub metrics: Arc<Metrics>,
    pub tuning: TuningOptions,
    observer: Observer,
    /// Consecutive failures per object: kube-runtime has no per-object backoff.
    backoff: Mutex<HashMap<String, u32>>,
    /// When each AppServer was last observed: status writes and rollouts wake the reconciler far
    /// more often than Prometheus should be asked.
    observed: Mutex<HashMap<String, Instant>>,
    /// Since when each AppServer's signals have had data (see [`Context::full_window`]).
    has_data: Mutex<HashMap<String, Instant>>,
}

impl Context {
    pub fn new(client: Client, nodes: Store<Node>, metrics: Arc<Metrics>) -> Self {
        let recorder = Recorder::new(client.clone(), Reporter::from(MANAGER));
        Self {
            client,
            recorder,
            nodes,
            metrics,
            tuning: TuningOptions::default(),
            observer: Observer::new(),
            backoff: Mutex::default(),
            observed: Mutex::default(),
            has_data: Mutex::default(),
        }
    }

    pub fn with_tuning(mut self, tuning: TuningOptions) -> Self {
        self.tuning = tuning;
        self
    }

    /// Whether `key` is due for an observation; marks it observed when it is.
    fn due(&self, key: &str) -> bool {
        let Ok(mut map) = self.observed.lock() else {
            return false;
        };
        let now = Instant::now();
        // AppServers deleted since are never observed again: forget them after a while.
        let stale = self.tuning.interval.saturating_mul(10);
        map.retain(|_, last| now.duration_since(*last) < stale);
        if let Ok(mut data) = self.has_data.lock() {
            data.retain(|k, _| map.contains_key(k) || k == key);
        }
        match map.get(key) {
            Some(last) if now.duration_since(*last) < self.tuning.interval => false,
            _ => {
                map.insert(key.to_string(), now);
                true
            }
        }
    }

    /// Whether an observation covers a whole window of data: rates over a window that only
    /// partly has samples (new pods, a Prometheus that just came back) under-read, so the first
    /// window after data appears is waited out. An OOM kill or no data at all is acted on (or
    /// reported) at once.
    fn full_window(&self, key: &str, o: &Observation) -> bool {
        let Ok(mut map) = self.has_data.lock() else {
            return true;
        };
        if o.oom_kills > 0 {
            return true;
        }
        if o.request_rate.is_none() {
            map.remove(key);
            return true;
        }
        let since = *map.entry(key.to_string()).or_insert_with(Instant::now);
        let full = since.elapsed() >= self.tuning.window;
        if !full {
            debug!(appserver = key, "waiting for a full window of signals");
        }
        full
    }

    fn forget_window(&self, key: &str) {
        if let Ok(mut map) = self.has_data.lock() {
            map.remove(key);
        }
    }

    /// Time until `key`'s next observation.
    fn until_due(&self, key: &str) -> Duration {
        let last = self.observed.lock().ok().and_then(|m| m.get(key).copied());
        last.map_or(self.tuning.interval, |l| {
            self.tuning.interval.saturating_sub(l.elapsed())
        })
        .max(Duration::from_secs(1))
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
    // Observe and decide (recommend and auto modes).
    let tuned = match &planned {
        Ok(plan) => Some(tune(ctx, aps, &namespace, key, plan).await),
        Err(_) => None,
    };
    // Apply, only a valid plan: a bad spec leaves the running Deployment as it was.
    let applied;
    let outcome = match (&planned, &tuned) {
        (Err(e), _) => {
            info!(reason = e.reason(), "not applying: {e}");
            Outcome::Refused(e)
        }
        (Ok(_), Some(t)) => {
            applied = apply(ctx, aps, &namespace, &t.plan).await?;
            Outcome::Applied {
                plan: &t.plan,
                deployment: &applied,
            }
        }
        (Ok(_), None) => return Err(Error::MissingKey(key.into(), "plan")),
    };
    // Report.
    let old = aps.status.as_ref();
    let now = Timestamp::now();
    let mut new = report::status(old, aps.metadata.generation, &outcome, &Time(now));
    let tuning_mode = matches!(
        aps.spec.tuning.mode,
        TuningMode::Recommend | TuningMode::Auto
    );
    match tuned.as_ref().and_then(|t| t.evaluation.as_ref()) {
        Some(ev) => report_tuning(&mut new, old, aps, ev, now),
        None if tuning_mode && planned.is_ok() => keep_tuning_conditions(&mut new, old),
        None => new.tuning = None,
    }
    if old != Some(&new) {
        write_status(ctx, aps, &namespace, &new).await?;
    }
    let mut notices = tuning::notices(old, &new);
    // When the tuner moved the numbers its Event already says why: no separate Sized Event.
    let tuner_moved = notices
        .iter()
        .any(|n| matches!(n.reason, "Tuned" | "OOMKilled"));
    notices.extend(
        report::notices(old, &new)
            .into_iter()
            .filter(|n| !(tuner_moved && n.reason == "Sized")),
    );
    publish(ctx, aps, notices).await;
    if tuning_mode && planned.is_ok() {
        return Ok(Action::requeue(ctx.until_due(key)));
    }
    Ok(Action::requeue(RESYNC))
}

/// The plan to apply and, when the tuner ran, what it saw and decided.
struct Tuned {
    plan: Plan,
    evaluation: Option<Evaluated>,
}

struct Evaluated {
    fingerprint: String,
    from: tuner::Setting,
    decision: Decision,
    observation: Observation,
}

/// Observes the AppServer (when due) and decides; in auto mode the plan carries the tuner's
/// setting. Observation trouble never fails the reconcile: the tuner holds and says why.
async fn tune(ctx: &Context, aps: &AppServer, namespace: &str, key: &str, plan: &Plan) -> Tuned {
    let mode = aps.spec.tuning.mode;
    let sized = match &plan.sized {
        Some(s) if matches!(mode, TuningMode::Recommend | TuningMode::Auto) => s,
        _ => {
            return Tuned {
                plan: plan.clone(),
                evaluation: None,
            };
        }
    };
    let cfg = tuning::config(&aps.spec, sized);
    let state = tuning::state(
        mode,
        &cfg,
        sized,
        aps.status.as_ref().and_then(|s| s.tuning.as_ref()),
    );
    let now = Timestamp::now();
    let evaluation = if ctx.due(key) {
        observe(ctx, aps, namespace, &state, now)
            .await
            .filter(|(observation, _)| ctx.full_window(key, observation))
            .map(|(observation, issues)| {
                let secs = now.as_millisecond() as f64 / 1000.0;
                let mut decision = tuner::decide(&cfg, &state, &observation, secs);
                if !issues.is_empty() && decision.flag == Some(tuner::Flag::MetricsUnavailable) {
                    decision.reason = format!("{} ({})", decision.reason, issues.join("; "));
                }
                info!(from = %state.setting, to = %decision.setting, "{}", decision.reason);
                if decision.setting != state.setting {
                    // The next window must show the new setting alone.
                    ctx.forget_window(key);
                }
                Evaluated {
                    fingerprint: tuning::fingerprint(&cfg),
                    from: state.setting,
                    decision,
                    observation,
                }
            })
    } else {
        None
    };
    let setting = match (mode, &evaluation) {
        (TuningMode::Auto, Some(e)) => e.decision.setting,
        (TuningMode::Auto, None) => state.setting,
        _ => tuning::static_setting(sized),
    };
    Tuned {
        plan: tuning::with_setting(plan, &aps.spec, setting),
        evaluation,
    }
}

/// The signals of one window, and why any are missing. `None` while the last change settles
/// (the window would mix two settings) unless a pod was OOM-killed since.
async fn observe(
    ctx: &Context,
    aps: &AppServer,
    namespace: &str,
    state: &State,
    now: Timestamp,
) -> Option<(Observation, Vec<String>)> {
    let window = ctx.tuning.window;
    let name = aps.name_any();
    let pods = match observe::list_pods(&ctx.client, namespace, &name).await {
        Ok(p) => p,
        Err(e) => {
            warn!(error = %e, "cannot list pods to observe");
            return Some((Observation::default(), vec![e.to_string()]));
        }
    };
    let window_start = now.checked_sub(jiff_span(window)).unwrap_or(now);
    let since_change = state
        .last_change
        .and_then(|s| Timestamp::from_millisecond((s * 1000.0) as i64).ok())
        .filter(|t| *t > window_start);
    let pods_only = |since: Timestamp| {
        let events = observe::pod_events(&pods, since);
        let n = u32::try_from(pods.len()).unwrap_or(u32::MAX);
        observe::assemble(window, n, &Default::default(), events)
    };
    if let Some(changed) = since_change {
        let o = pods_only(changed);
        return (o.oom_kills > 0).then(|| (o, vec![]));
    }
    let Some(target) =
        Target::for_app_server(aps, pods.clone(), ctx.tuning.prometheus_url.as_deref())
    else {
        let why = "no Prometheus to read: set spec.tuning.metrics.prometheus.url or the operator's --prometheus-url".to_string();
        return Some((pods_only(window_start), vec![why]));
    };
    match ctx.observer.observe(&target, window, now).await {
        Ok(o) => Some((
            o.observation,
            o.issues.iter().map(ToString::to_string).collect(),
        )),
        Err(e) => {
            warn!(error = %e, "cannot observe");
            Some((pods_only(window_start), vec![e.to_string()]))
        }
    }
}

fn jiff_span(d: Duration) -> k8s_openapi::jiff::SignedDuration {
    k8s_openapi::jiff::SignedDuration::try_from(d)
        .unwrap_or(k8s_openapi::jiff::SignedDuration::ZERO)
}

fn report_tuning(
    new: &mut AppServerStatus,
    old: Option<&AppServerStatus>,
    aps: &AppServer,
    ev: &Evaluated,
    now: Timestamp,
) {
    let record = tuning::record(
        old.and_then(|o| o.tuning.as_ref()),
        &Evaluation {
            mode: aps.spec.tuning.mode,
            fingerprint: ev.fingerprint.clone(),
            from: ev.from,
            decision: &ev.decision,
            observation: &ev.observation,
            now,
        },
    );
    new.tuning = Some(record);
    let old_status = old.cloned().unwrap_or_default();
    let fresh = tuning::conditions(
        &ev.decision,
        aps.spec.tuning.mode,
        aps.metadata.generation,
        &Time(now),
    );
    // A condition the decision says nothing about stays as it was (after Tuning, as always).
    let kept: Vec<_> = old_status
        .conditions
        .iter()
        .filter(|c| c.type_ == tuning::CPU_SATURATED && !fresh.iter().any(|f| f.type_ == c.type_))
        .cloned()
        .collect();
    for c in fresh {
        new.conditions.push(report::merge(&old_status, c));
    }
    new.conditions.extend(kept);
}

/// Between observations the tuner's conditions stay as the last one left them.
fn keep_tuning_conditions(new: &mut AppServerStatus, old: Option<&AppServerStatus>) {
    let Some(old) = old else { return };
    new.conditions.extend(
        old.conditions
            .iter()
            .filter(|c| c.type_ == tuning::TUNING || c.type_ == tuning::CPU_SATURATED)
            .cloned(),
    );
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
    let deployment = desired::deployment(aps, &owner, plan, &ctx.tuning.sidecar_image);
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
pub async fn run(client: Client, metrics: Arc<Metrics>, tuning: TuningOptions) {
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
    let ctx = Arc::new(Context::new(client, nodes, metrics).with_tuning(tuning));
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
