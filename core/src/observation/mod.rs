//! What the observer sees of one AppServer over a window, and how it is read (pure): the
//! [`Observation`] the tuner decides on, the [`Target`] to read it for, the PromQL per
//! [`Signal`] ([`promql`]), what pod status says ([`pods`]) and [`assemble`], which merges the
//! two. The I/O that fetches the numbers is the operator crate's `observer`.
//!
//! Every signal is optional: a signal that could not be read is `None`, never a made-up zero,
//! so the tuner can tell "no data" from "no traffic" and hold instead of guessing. Each signal
//! fails on its own, with a [`SignalIssue`] saying why. See `docs/observer.md`.

pub mod pods;
pub mod promql;

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use serde::{Deserialize, Serialize};

use crate::api::AppServer;

pub use pods::{PodEvents, is_observable, pod_events, pod_names};
pub use promql::Signal;

/// Signals of one AppServer over one window. Rates and averages are **per pod** (the total
/// divided by the pods observed), memory is the **largest** pod's, so the tuner reasons about
/// one pod — the unit whose workers and threads it sets.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Observation {
    /// Length of the window the rates and quantiles cover, seconds.
    pub window_seconds: f64,
    /// Pods the signals were gathered from.
    pub pods: u32,
    /// Requests completed per second, per pod.
    pub request_rate: Option<f64>,
    /// Latency quantiles, seconds (time from accept to response).
    pub latency_p50: Option<f64>,
    pub latency_p95: Option<f64>,
    pub latency_p99: Option<f64>,
    /// Requests waiting for a free worker (the listen backlog), per pod, averaged over the window.
    pub queue: Option<f64>,
    /// Connections refused because the backlog was full, per second, per pod.
    pub drop_rate: Option<f64>,
    /// CPU used, cores, per pod.
    pub cpu_cores: Option<f64>,
    /// Share of CFS periods in which the container was throttled, 0–1.
    pub cpu_throttled: Option<f64>,
    /// Working-set memory of the largest pod, MiB.
    pub memory_mib: Option<f64>,
    /// OOM kills in the window, all pods, from Prometheus and from pod status together
    /// (the larger of the two counts, so one kill seen twice is counted once).
    pub oom_kills: u32,
    /// Container restarts in the window, all pods.
    pub restarts: u32,
}

/// What to observe: one AppServer, its pods, and where and how to query.
#[derive(Clone, Debug, PartialEq)]
pub struct Target {
    pub namespace: String,
    /// The AppServer's name.
    pub name: String,
    /// Base URL of the Prometheus HTTP API.
    pub prometheus_url: String,
    /// PromQL overrides by signal key (`spec.tuning.metrics.queries`).
    pub queries: BTreeMap<String, String>,
    /// The pods to observe (the operator lists them): their names select the series, their status
    /// adds the OOM kills and restarts the kubelet recorded.
    pub pods: Vec<Pod>,
}

impl Target {
    /// The target of an AppServer: its own Prometheus URL, else `default_url`; `None` when
    /// there is neither (nothing to observe) or the object has no name or namespace.
    pub fn for_app_server(
        aps: &AppServer,
        pods: Vec<Pod>,
        default_url: Option<&str>,
    ) -> Option<Self> {
        let metrics = aps.spec.tuning.metrics.as_ref();
        let url = metrics
            .and_then(|m| m.prometheus.as_ref())
            .map(|p| p.url.as_str())
            .or(default_url)?;
        Some(Self {
            namespace: aps.metadata.namespace.clone()?,
            name: aps.metadata.name.clone()?,
            prometheus_url: url.to_string(),
            queries: metrics.map(|m| m.queries.clone()).unwrap_or_default(),
            pods,
        })
    }
}

/// Why one signal is missing from the observation.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct SignalIssue {
    pub signal: Signal,
    pub message: String,
}

impl fmt::Display for SignalIssue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.signal, self.message)
    }
}

/// An observation and the reasons for each signal it lacks.
#[derive(Clone, Debug, PartialEq)]
pub struct Observed {
    pub observation: Observation,
    pub issues: Vec<SignalIssue>,
}

/// The observation from the numbers the queries returned and the pod-status events (pure).
/// Counts take the larger of Prometheus and pod status: each sees kills the other can miss, and
/// one kill seen by both must count once.
pub fn assemble(
    window: Duration,
    pods: u32,
    readings: &BTreeMap<Signal, f64>,
    events: PodEvents,
) -> Observation {
    let get = |s: Signal| readings.get(&s).copied();
    Observation {
        window_seconds: window.as_secs_f64(),
        pods,
        request_rate: get(Signal::RequestRate),
        latency_p50: get(Signal::LatencyP50),
        latency_p95: get(Signal::LatencyP95),
        latency_p99: get(Signal::LatencyP99),
        queue: get(Signal::Queue),
        drop_rate: get(Signal::Drops),
        cpu_cores: get(Signal::Cpu),
        cpu_throttled: get(Signal::CpuThrottling),
        memory_mib: get(Signal::Memory),
        oom_kills: count(get(Signal::OomKills)).max(events.oom_kills),
        restarts: count(get(Signal::Restarts)).max(events.restarts),
    }
}

/// `increase()` extrapolates to the window's edges (one kill reads as ~1.1), so round.
fn count(value: Option<f64>) -> u32 {
    value.map_or(0, |v| v.round().clamp(0.0, f64::from(u32::MAX)) as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn assembles_fields_from_their_signals() {
        let readings = BTreeMap::from([
            (Signal::RequestRate, 10.0),
            (Signal::LatencyP95, 0.4),
            (Signal::Queue, 3.0),
            (Signal::Drops, 0.5),
            (Signal::Memory, 512.0),
            (Signal::OomKills, 1.1),
        ]);
        let o = assemble(Duration::from_secs(120), 2, &readings, PodEvents::default());
        assert_eq!(o.window_seconds, 120.0);
        assert_eq!(o.pods, 2);
        assert_eq!(o.request_rate, Some(10.0));
        assert_eq!(o.latency_p95, Some(0.4));
        assert_eq!(o.latency_p50, None);
        assert_eq!(o.queue, Some(3.0));
        assert_eq!(o.drop_rate, Some(0.5));
        assert_eq!(o.memory_mib, Some(512.0));
        assert_eq!(o.cpu_cores, None);
        assert_eq!(o.oom_kills, 1);
        assert_eq!(o.restarts, 0);
    }

    #[test]
    fn counts_take_the_larger_of_prometheus_and_pod_status() {
        let readings = BTreeMap::from([(Signal::OomKills, 1.0), (Signal::Restarts, 3.0)]);
        let events = PodEvents {
            oom_kills: 2,
            restarts: 1,
        };
        let o = assemble(Duration::from_secs(60), 1, &readings, events);
        assert_eq!((o.oom_kills, o.restarts), (2, 3));
        let o = assemble(Duration::from_secs(60), 1, &BTreeMap::new(), events);
        assert_eq!((o.oom_kills, o.restarts), (2, 1));
    }

    #[test]
    fn issue_names_its_signal() {
        let issue = SignalIssue {
            signal: Signal::LatencyP95,
            message: "no data from http://prom:9090: query returned an empty vector".into(),
        };
        assert_eq!(
            issue.to_string(),
            "latencyP95: no data from http://prom:9090: query returned an empty vector"
        );
    }
}
