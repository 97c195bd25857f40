//! Observe and decide (recommend and auto modes): when the AppServer is due, read its signals
//! (pods from the API, the rest from Prometheus) and let the pure tuner decide. In `auto` the
//! plan carries the tuner's setting. Observation trouble never fails the reconcile: the tuner
//! holds and says why.

use appserver_core::api::{AppServer, TuningMode};
use appserver_core::observation::{self, Observation, Target};
use appserver_core::plan::Plan;
use appserver_core::time;
use appserver_core::tuner::appserver::{self as tuning, Evaluation};
use appserver_core::tuner::{self, Decision, State, gate};
use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;
use tracing::{info, warn};

use super::Context;
use crate::observer;

/// The plan to apply and, when the tuner ran, what it saw and decided.
pub(super) struct Tuned {
    pub plan: Plan,
    pub evaluation: Option<Evaluated>,
}

pub(super) struct Evaluated {
    fingerprint: String,
    from: tuner::Setting,
    decision: Decision,
    observation: Observation,
}

impl Evaluated {
    /// What the status records of this evaluation.
    pub fn for_status(&self, mode: TuningMode, now: Timestamp) -> Evaluation<'_> {
        Evaluation {
            mode,
            fingerprint: self.fingerprint.clone(),
            from: self.from,
            decision: &self.decision,
            observation: &self.observation,
            now,
        }
    }
}

pub(super) async fn tune(
    ctx: &Context,
    aps: &AppServer,
    namespace: &str,
    key: &str,
    plan: &Plan,
    now: Timestamp,
) -> Tuned {
    let mode = aps.spec.tuning.mode;
    let sized = match &plan.sized {
        Some(s) if mode.observes() => s,
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
    let evaluation = if ctx.due(key) {
        observe(ctx, aps, namespace, &state, now)
            .await
            .filter(|(observation, _)| ctx.full_window(key, observation))
            .map(|(observation, issues)| {
                let mut decision = tuner::decide(&cfg, &state, &observation, time::seconds(now));
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
    let pods = match observer::list_pods(&ctx.client, namespace, &name).await {
        Ok(p) => p,
        Err(e) => {
            warn!(error = %e, "cannot list pods to observe");
            return Some((Observation::default(), vec![e.to_string()]));
        }
    };
    let window_start = time::before(now, window);
    let pods_only = |since: Timestamp| {
        let events = observation::pod_events(&pods, since);
        let n = u32::try_from(pods.len()).unwrap_or(u32::MAX);
        observation::assemble(window, n, &Default::default(), events)
    };
    let settling = gate::settling(state.last_change, time::seconds(now), window.as_secs_f64());
    if let Some(changed) = settling {
        let o = pods_only(time::timestamp(changed));
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
