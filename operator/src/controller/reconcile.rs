//! One reconcile, in the order of its steps: read → plan → observe and decide → apply → report.
//! Each I/O step is a file of this module; planning, the desired objects, the tuner and the
//! status are the core's pure functions of what was read.

use std::sync::Arc;
use std::time::{Duration, Instant};

use appserver_core::api::AppServer;
use appserver_core::plan::plan;
use appserver_core::report::{self, Outcome};
use appserver_core::sizing::matching_node_shapes;
use appserver_core::tuner::appserver as tuning;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;
use kube::core::error_boundary::DeserializeGuard;
use kube::runtime::controller::Action;
use tracing::{Instrument, info, info_span, warn};

use super::context::{Context, backoff_delay};
use super::{Error, apply, events, status, tune};

/// Periodic re-check, in case a watch event was missed.
const RESYNC: Duration = Duration::from_secs(600);

pub(super) type Guarded = DeserializeGuard<AppServer>;

/// `namespace/name`, also for an object that does not deserialize.
pub(super) fn key_of(guard: &Guarded) -> String {
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

/// Reconciles one AppServer, in a span that names it, and counts it on the metrics.
pub async fn reconcile(guard: Arc<Guarded>, ctx: Arc<Context>) -> Result<Action, Error> {
    let key = key_of(&guard);
    let started = Instant::now();
    let result = steps(&guard, &ctx, &key)
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

/// Retries with a backoff per AppServer; an object that does not deserialize waits for a change.
pub fn error_policy(guard: Arc<Guarded>, error: &Error, ctx: Arc<Context>) -> Action {
    let key = key_of(&guard);
    if let Error::InvalidObject(..) = error {
        // Nothing to retry: the object must change first.
        return Action::await_change();
    }
    let delay = backoff_delay(ctx.failures(&key, true));
    warn!(appserver = %key, error = %error, category = error.category(), retry_in = ?delay, "reconcile failed");
    Action::requeue(delay)
}

async fn steps(guard: &Guarded, ctx: &Context, key: &str) -> Result<Action, Error> {
    let aps = match &guard.0 {
        Ok(aps) => aps,
        Err(invalid) => return Err(events::report_invalid(ctx, key, invalid).await),
    };
    let namespace = aps
        .namespace()
        .ok_or_else(|| Error::MissingKey(key.into(), "namespace"))?;
    let now = Timestamp::now();
    // Read: the nodes come from the watch cache, not from the API.
    let nodes = matching_node_shapes(
        ctx.nodes.state().iter().map(|n| n.as_ref()),
        &aps.spec.node_selector,
    );
    // Plan (pure): validate and size.
    let planned = plan(&aps.spec, &nodes);
    // Observe and decide (recommend and auto); trouble observing never fails the reconcile.
    let tuned = match &planned {
        Ok(p) => Some(tune::tune(ctx, aps, &namespace, key, p, now).await),
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
            applied = apply::apply(ctx, aps, &namespace, key, &t.plan).await?;
            Outcome::Applied {
                plan: &t.plan,
                deployment: &applied,
            }
        }
        (Ok(_), None) => return Err(Error::MissingKey(key.into(), "plan")),
    };
    // Report: the status (pure), written when it changed, then the Events.
    let old = aps.status.as_ref();
    let generation = aps.metadata.generation;
    let mut new = report::status(old, generation, &outcome, &Time(now));
    let tuning_on = aps.spec.tuning.mode.observes() && planned.is_ok();
    let evaluation = tuned
        .as_ref()
        .and_then(|t| t.evaluation.as_ref())
        .map(|e| e.for_status(aps.spec.tuning.mode, now));
    tuning::report(&mut new, old, tuning_on, generation, evaluation.as_ref());
    if old != Some(&new) {
        status::write(ctx, aps, &namespace, key, &new).await?;
    }
    events::publish(ctx, aps, tuning::events(old, &new)).await;
    if tuning_on {
        return Ok(Action::requeue(ctx.until_due(key)));
    }
    Ok(Action::requeue(RESYNC))
}
