//! What pod status says about the app container: OOM kills and restarts since a time, and which
//! pods count (pure; the operator's observer lists them).
//!
//! Pod status keeps only the current and the previous state of a container, so it sees at most
//! two terminations per container. That is a lower bound: the observer takes the larger of this
//! and Prometheus' count.

use crate::desired::CONTAINER;
use k8s_openapi::api::core::v1::{ContainerStateTerminated, ContainerStatus, Pod};
use k8s_openapi::jiff::Timestamp;

/// The reason the kubelet records for a container the kernel killed for memory.
const OOM_KILLED: &str = "OOMKilled";

/// Terminations of the app container seen in pod status.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PodEvents {
    /// Terminations with reason OOMKilled that finished after `since`.
    pub oom_kills: u32,
    /// Containers restarted after `since`: at most one per container, since `restartCount` is
    /// cumulative and only the last termination has a time.
    pub restarts: u32,
}

/// OOM kills and restarts of the `app` container in `pods` after `since`.
///
/// - OOM kill: `state.terminated` or `lastState.terminated` with reason `OOMKilled` and
///   `finishedAt` after `since` (both can count: they are two different terminations).
/// - Restart: `lastState.terminated.finishedAt` after `since`; a container that terminated and
///   has not been started again (`state.terminated`) has not restarted.
///
/// A termination without `finishedAt` cannot be placed in time and is not counted.
pub fn pod_events(pods: &[Pod], since: Timestamp) -> PodEvents {
    app_statuses(pods).fold(PodEvents::default(), |acc, status| {
        let current = terminated_after(status.state.as_ref(), since);
        let last = terminated_after(status.last_state.as_ref(), since);
        let oom = [current, last]
            .into_iter()
            .flatten()
            .filter(|t| t.reason.as_deref() == Some(OOM_KILLED))
            .count() as u32;
        PodEvents {
            oom_kills: acc.oom_kills + oom,
            restarts: acc.restarts + u32::from(last.is_some()),
        }
    })
}

fn app_statuses(pods: &[Pod]) -> impl Iterator<Item = &ContainerStatus> {
    pods.iter()
        .filter_map(|p| p.status.as_ref()?.container_statuses.as_ref())
        .flatten()
        .filter(|c| c.name == CONTAINER)
}

fn terminated_after(
    state: Option<&k8s_openapi::api::core::v1::ContainerState>,
    since: Timestamp,
) -> Option<&ContainerStateTerminated> {
    let terminated = state?.terminated.as_ref()?;
    let finished = terminated.finished_at.as_ref()?;
    (finished.0 > since).then_some(terminated)
}

/// A pod whose metrics belong to the AppServer now: scheduled on a node and not being deleted.
pub fn is_observable(pod: &Pod) -> bool {
    let scheduled = pod
        .spec
        .as_ref()
        .is_some_and(|s| s.node_name.as_deref().is_some_and(|n| !n.is_empty()));
    scheduled && pod.metadata.deletion_timestamp.is_none()
}

/// The pod names, for the `{pods}` placeholder.
pub fn pod_names(pods: &[Pod]) -> Vec<String> {
    pods.iter()
        .filter_map(|p| p.metadata.name.clone())
        .collect()
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::core::v1::{ContainerState, PodSpec, PodStatus};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};

    use super::*;

    const SINCE: &str = "2025-01-01T12:00:00Z";

    fn at(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    fn terminated(reason: &str, finished: Option<&str>) -> ContainerState {
        ContainerState {
            terminated: Some(ContainerStateTerminated {
                reason: Some(reason.to_string()),
                exit_code: 137,
                finished_at: finished.map(|f| Time(at(f))),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn running() -> ContainerState {
        ContainerState {
            running: Some(Default::default()),
            ..Default::default()
        }
    }

    fn pod(container: &str, state: ContainerState, last: Option<ContainerState>) -> Pod {
        Pod {
            metadata: ObjectMeta {
                name: Some("api-0".to_string()),
                ..Default::default()
            },
            spec: Some(PodSpec {
                node_name: Some("node-a".to_string()),
                ..Default::default()
            }),
            status: Some(PodStatus {
                container_statuses: Some(vec![ContainerStatus {
                    name: container.to_string(),
                    state: Some(state),
                    last_state: last,
                    restart_count: 3,
                    ..Default::default()
                }]),
                ..Default::default()
            }),
        }
    }

    #[test]
    fn oom_killed_and_restarted_after_since_counts_one_kill_and_one_restart() {
        let p = pod(
            "app",
            running(),
            Some(terminated("OOMKilled", Some("2025-01-01T12:01:00Z"))),
        );
        let e = pod_events(&[p], at(SINCE));
        assert_eq!(
            e,
            PodEvents {
                oom_kills: 1,
                restarts: 1
            }
        );
    }

    #[test]
    fn termination_before_since_is_not_counted() {
        let p = pod(
            "app",
            running(),
            Some(terminated("OOMKilled", Some("2025-01-01T11:59:59Z"))),
        );
        assert_eq!(pod_events(&[p], at(SINCE)), PodEvents::default());
    }

    #[test]
    fn current_oom_termination_counts_a_kill_but_no_restart() {
        let p = pod(
            "app",
            terminated("OOMKilled", Some("2025-01-01T12:02:00Z")),
            None,
        );
        assert_eq!(
            pod_events(&[p], at(SINCE)),
            PodEvents {
                oom_kills: 1,
                restarts: 0
            }
        );
    }

    #[test]
    fn current_and_last_oom_are_two_kills() {
        let p = pod(
            "app",
            terminated("OOMKilled", Some("2025-01-01T12:02:00Z")),
            Some(terminated("OOMKilled", Some("2025-01-01T12:01:00Z"))),
        );
        assert_eq!(
            pod_events(&[p], at(SINCE)),
            PodEvents {
                oom_kills: 2,
                restarts: 1
            }
        );
    }

    #[test]
    fn other_reasons_restart_without_kill() {
        let p = pod(
            "app",
            running(),
            Some(terminated("Error", Some("2025-01-01T12:01:00Z"))),
        );
        assert_eq!(
            pod_events(&[p], at(SINCE)),
            PodEvents {
                oom_kills: 0,
                restarts: 1
            }
        );
    }

    #[test]
    fn other_containers_and_undated_terminations_are_ignored() {
        let sidecar = pod(
            "backlog",
            running(),
            Some(terminated("OOMKilled", Some("2025-01-01T12:01:00Z"))),
        );
        let undated = pod("app", running(), Some(terminated("OOMKilled", None)));
        let no_status = Pod::default();
        assert_eq!(
            pod_events(&[sidecar, undated, no_status], at(SINCE)),
            PodEvents::default()
        );
    }

    #[test]
    fn sums_over_pods() {
        let a = pod(
            "app",
            running(),
            Some(terminated("OOMKilled", Some("2025-01-01T12:01:00Z"))),
        );
        let b = a.clone();
        assert_eq!(
            pod_events(&[a, b], at(SINCE)),
            PodEvents {
                oom_kills: 2,
                restarts: 2
            }
        );
    }

    #[test]
    fn observable_pods_are_scheduled_and_not_deleting() {
        let scheduled = pod("app", running(), None);
        assert!(is_observable(&scheduled));
        let mut pending = scheduled.clone();
        pending.spec.as_mut().unwrap().node_name = None;
        assert!(!is_observable(&pending));
        let mut deleting = scheduled.clone();
        deleting.metadata.deletion_timestamp = Some(Time(at(SINCE)));
        assert!(!is_observable(&deleting));
        assert_eq!(pod_names(&[scheduled, Pod::default()]), vec!["api-0"]);
    }
}
