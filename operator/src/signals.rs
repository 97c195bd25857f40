//! What the observer saw of one AppServer over a window: the tuner's only input from the world.
//!
//! Every signal is optional: a signal that could not be read is `None`, never a made-up zero,
//! so the tuner can tell "no data" from "no traffic" and hold instead of guessing.

use serde::{Deserialize, Serialize};

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
