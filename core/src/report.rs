//! Status and Events from what a reconcile found (pure).
//!
//! A condition's `lastTransitionTime` moves only when its status does, and the whole status is
//! compared with the old one before it is written, so a reconcile never triggers itself.

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

use crate::api::{AppServerStatus, SizingBasis};
use crate::plan::{Plan, PlanError};
use crate::sizing::format_cores;

pub const READY: &str = "Ready";
pub const PROGRESSING: &str = "Progressing";
pub const DEGRADED: &str = "Degraded";

/// Something a person should know, as a Kubernetes Event.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Notice {
    pub warning: bool,
    pub reason: &'static str,
    pub note: String,
}

/// What one reconcile produced.
pub enum Outcome<'a> {
    /// The plan was applied; the Deployment is as the API server returned it.
    Applied {
        plan: &'a Plan,
        deployment: &'a Deployment,
    },
    /// The spec could not be planned, so nothing was applied.
    Refused(&'a PlanError),
}

/// The new status: conditions merged with the old ones, numbers from the plan (kept from the
/// old status when the plan failed, since the running pods still have them).
pub fn status(
    old: Option<&AppServerStatus>,
    generation: Option<i64>,
    outcome: &Outcome<'_>,
    now: &Time,
) -> AppServerStatus {
    let old_default = AppServerStatus::default();
    let old = old.unwrap_or(&old_default);
    let mut next = AppServerStatus {
        observed_generation: generation,
        ..old.clone()
    };
    let (ready, progressing, degraded) = match outcome {
        Outcome::Refused(e) => {
            let (r, m) = (e.reason(), e.to_string());
            ((false, r, m.clone()), (false, r, m.clone()), (true, r, m))
        }
        Outcome::Applied { plan, deployment } => {
            let rollout = Rollout::of(deployment);
            next.ready_replicas = Some(rollout.ready);
            apply_plan(&mut next, plan);
            conditions_of_rollout(&rollout, &next)
        }
    };
    next.conditions = vec![
        merge(old, condition(READY, ready, generation, now)),
        merge(old, condition(PROGRESSING, progressing, generation, now)),
        merge(old, condition(DEGRADED, degraded, generation, now)),
    ];
    next
}

fn apply_plan(next: &mut AppServerStatus, plan: &Plan) {
    match &plan.sized {
        Some(s) => {
            next.workers = Some(to_i32(s.sizing.workers));
            next.threads = Some(to_i32(s.sizing.threads));
            next.connections = s.sizing.connections.map(to_i32);
            next.explanation = Some(s.sizing.explanation.clone());
            next.basis = Some(SizingBasis {
                cpu: format_cores(s.basis.cpu_cores),
                cpu_source: s.basis.cpu_source.clone(),
                memory_mib: s.basis.memory_mib.map(|m| m.round() as i64),
                memory_source: s.basis.memory_source.clone(),
            });
        }
        None => {
            next.workers = None;
            next.threads = None;
            next.connections = None;
            next.basis = None;
            next.explanation =
                Some("tuning.mode is off: the server's own worker settings are used".to_string());
        }
    }
}

type Cond = (bool, &'static str, String);

fn conditions_of_rollout(r: &Rollout, next: &AppServerStatus) -> (Cond, Cond, Cond) {
    let numbers = match (next.workers, next.threads) {
        (Some(w), Some(t)) => format!(" with {w} workers × {t} threads"),
        _ => String::new(),
    };
    let progress = format!(
        "{}/{} pods updated, {} ready",
        r.updated, r.desired, r.ready
    );
    if r.stuck {
        let m = format!("the rollout exceeded its progress deadline: {progress}");
        return (
            (false, "RolloutStuck", m.clone()),
            (false, "RolloutStuck", m.clone()),
            (true, "RolloutStuck", m),
        );
    }
    let ok = (false, "AsExpected", String::new());
    if r.complete {
        let m = format!("{}/{} pods ready{numbers}", r.ready, r.desired);
        (
            (true, "Available", m.clone()),
            (false, "RolloutComplete", m),
            ok,
        )
    } else {
        (
            (false, "RollingOut", progress.clone()),
            (true, "RollingOut", progress),
            ok,
        )
    }
}

/// The rollout as the Deployment's status tells it.
struct Rollout {
    desired: i32,
    updated: i32,
    ready: i32,
    complete: bool,
    stuck: bool,
}

impl Rollout {
    fn of(d: &Deployment) -> Self {
        let desired = d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
        let st = d.status.clone().unwrap_or_default();
        let observed = st.observed_generation.unwrap_or(0) >= d.metadata.generation.unwrap_or(0);
        let updated = st.updated_replicas.unwrap_or(0);
        let ready = st.ready_replicas.unwrap_or(0);
        let available = st.available_replicas.unwrap_or(0);
        let total = st.replicas.unwrap_or(0);
        let stuck = st.conditions.unwrap_or_default().iter().any(|c| {
            c.type_ == "Progressing"
                && c.status == "False"
                && c.reason.as_deref() == Some("ProgressDeadlineExceeded")
        });
        Self {
            desired,
            updated,
            ready,
            complete: observed && updated >= desired && total == updated && available >= desired,
            stuck,
        }
    }
}

fn condition(
    type_: &str,
    (status, reason, message): Cond,
    generation: Option<i64>,
    now: &Time,
) -> Condition {
    Condition {
        type_: type_.to_string(),
        status: if status { "True" } else { "False" }.to_string(),
        reason: reason.to_string(),
        message,
        observed_generation: generation,
        last_transition_time: now.clone(),
    }
}

/// Keeps the old transition time when the condition's status did not change.
pub fn merge(old: &AppServerStatus, mut c: Condition) -> Condition {
    if let Some(prev) = old
        .conditions
        .iter()
        .find(|p| p.type_ == c.type_ && p.status == c.status)
    {
        c.last_transition_time = prev.last_transition_time.clone();
    }
    c
}

/// Events worth a person's attention: a new sizing, a new degradation, a recovery.
pub fn notices(old: Option<&AppServerStatus>, new: &AppServerStatus) -> Vec<Notice> {
    let mut out = Vec::new();
    let numbers = |s: &AppServerStatus| (s.workers, s.threads, s.connections);
    if old.map(numbers) != Some(numbers(new)) && new.workers.is_some() {
        out.push(Notice {
            warning: false,
            reason: "Sized",
            note: new.explanation.clone().unwrap_or_default(),
        });
    }
    let degraded = |s: &AppServerStatus| {
        s.conditions
            .iter()
            .find(|c| c.type_ == DEGRADED && c.status == "True")
            .map(|c| (c.reason.clone(), c.message.clone()))
    };
    match (old.and_then(degraded), degraded(new)) {
        (before, Some((reason, message))) if before.as_ref().map(|b| &b.0) != Some(&reason) => {
            out.push(Notice {
                warning: true,
                reason: static_reason(&reason),
                note: message,
            });
        }
        (Some(_), None) => {
            out.push(Notice {
                warning: false,
                reason: "Recovered",
                note: "the AppServer is no longer degraded".into(),
            });
        }
        _ => {}
    }
    out
}

/// Event reasons are a closed set, so they can be `'static`.
fn static_reason(reason: &str) -> &'static str {
    match reason {
        "DoesNotFit" => "DoesNotFit",
        "NoSizingBasis" => "NoSizingBasis",
        "InvalidSpec" => "InvalidSpec",
        "RolloutStuck" => "RolloutStuck",
        _ => "Degraded",
    }
}

fn to_i32(n: u32) -> i32 {
    i32::try_from(n).unwrap_or(i32::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::plan;
    use k8s_openapi::api::apps::v1::{DeploymentSpec, DeploymentStatus};
    use k8s_openapi::jiff::Timestamp;

    fn t(secs: i64) -> Time {
        Time(Timestamp::from_second(secs).unwrap())
    }

    fn spec() -> crate::api::AppServerSpec {
        serde_json::from_value(
            serde_json::json!({"image": "x", "args": ["a:b"], "server": {"kind": "gunicorn"},
            "resources": {"limits": {"cpu": "1", "memory": "1Gi"}}}),
        )
        .unwrap()
    }

    fn deployment(replicas: i32, updated: i32, ready: i32) -> Deployment {
        Deployment {
            metadata: k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
                generation: Some(2),
                ..Default::default()
            },
            spec: Some(DeploymentSpec {
                replicas: Some(replicas),
                ..Default::default()
            }),
            status: Some(DeploymentStatus {
                observed_generation: Some(2),
                replicas: Some(updated),
                updated_replicas: Some(updated),
                ready_replicas: Some(ready),
                available_replicas: Some(ready),
                ..Default::default()
            }),
        }
    }

    fn cond<'a>(s: &'a AppServerStatus, ty: &str) -> &'a Condition {
        s.conditions.iter().find(|c| c.type_ == ty).unwrap()
    }

    #[test]
    fn rolled_out_is_ready_with_the_numbers() {
        let p = plan(&spec(), &[]).unwrap();
        let d = deployment(2, 2, 2);
        let s = status(
            None,
            Some(4),
            &Outcome::Applied {
                plan: &p,
                deployment: &d,
            },
            &t(10),
        );
        assert_eq!(cond(&s, READY).status, "True");
        assert_eq!(
            cond(&s, READY).message,
            "2/2 pods ready with 3 workers × 4 threads"
        );
        assert_eq!(cond(&s, READY).observed_generation, Some(4));
        assert_eq!(cond(&s, DEGRADED).status, "False");
        assert_eq!(
            (s.workers, s.threads, s.observed_generation),
            (Some(3), Some(4), Some(4))
        );
        assert_eq!(s.basis.as_ref().unwrap().memory_mib, Some(1024));
    }

    #[test]
    fn rolling_out_is_progressing() {
        let p = plan(&spec(), &[]).unwrap();
        let d = deployment(3, 1, 1);
        let s = status(
            None,
            Some(1),
            &Outcome::Applied {
                plan: &p,
                deployment: &d,
            },
            &t(10),
        );
        assert_eq!(
            (
                cond(&s, READY).status.as_str(),
                cond(&s, PROGRESSING).status.as_str()
            ),
            ("False", "True")
        );
        assert_eq!(cond(&s, PROGRESSING).message, "1/3 pods updated, 1 ready");
    }

    #[test]
    fn plan_error_is_degraded_and_keeps_the_running_numbers() {
        let p = plan(&spec(), &[]).unwrap();
        let d = deployment(1, 1, 1);
        let before = status(
            None,
            Some(1),
            &Outcome::Applied {
                plan: &p,
                deployment: &d,
            },
            &t(10),
        );
        let mut bad = spec();
        bad.memory.per_worker_mib = 4096;
        let err = plan(&bad, &[]).unwrap_err();
        let s = status(Some(&before), Some(2), &Outcome::Refused(&err), &t(20));
        assert_eq!(
            (
                cond(&s, DEGRADED).status.as_str(),
                cond(&s, DEGRADED).reason.as_str()
            ),
            ("True", "DoesNotFit")
        );
        assert_eq!(s.workers, Some(3));
        let n = notices(Some(&before), &s);
        assert_eq!(n.len(), 1);
        assert!(n[0].warning && n[0].reason == "DoesNotFit", "{n:?}");
    }

    #[test]
    fn transition_time_moves_only_with_status() {
        let p = plan(&spec(), &[]).unwrap();
        let d = deployment(1, 1, 1);
        let o = Outcome::Applied {
            plan: &p,
            deployment: &d,
        };
        let first = status(None, Some(1), &o, &t(10));
        let second = status(Some(&first), Some(1), &o, &t(99));
        assert_eq!(
            first, second,
            "an unchanged world gives an unchanged status"
        );
        assert!(notices(Some(&first), &second).is_empty());
        let d2 = deployment(2, 1, 1);
        let o2 = Outcome::Applied {
            plan: &p,
            deployment: &d2,
        };
        let third = status(Some(&second), Some(1), &o2, &t(120));
        assert_eq!(cond(&third, READY).last_transition_time, t(120));
        assert_eq!(cond(&third, DEGRADED).last_transition_time, t(10));
    }

    #[test]
    fn first_sizing_is_announced() {
        let p = plan(&spec(), &[]).unwrap();
        let d = deployment(1, 0, 0);
        let s = status(
            None,
            Some(1),
            &Outcome::Applied {
                plan: &p,
                deployment: &d,
            },
            &t(1),
        );
        let n = notices(None, &s);
        assert_eq!(n[0].reason, "Sized");
        assert!(n[0].note.contains("3 workers × 4 threads"), "{}", n[0].note);
    }
}
