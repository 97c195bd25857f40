use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// What the operator observed and decided. State that must survive an operator restart lives
/// here, never only in memory.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct AppServerStatus {
    /// The spec generation this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Ready, Progressing and Degraded.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// Worker processes configured.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workers: Option<i32>,
    /// Threads per worker configured (1 for process-only servers).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub threads: Option<i32>,
    /// Concurrent connections per worker, for event-loop servers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connections: Option<i32>,
    /// The CPU and memory the numbers were computed for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub basis: Option<SizingBasis>,
    /// The sizing, in one sentence.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub explanation: Option<String>,
    /// Pods of the Deployment that are ready.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ready_replicas: Option<i32>,
    /// The tuner's state and decisions (tuning.mode recommend and auto).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tuning: Option<TuningStatus>,
}

/// What the tuner decided and learned. Kept here so an operator restart neither repeats nor
/// forgets a decision.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct TuningStatus {
    /// auto: the setting the tuner runs; recommend: the setting it recommends.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub setting: Option<WorkerSetting>,
    /// The CPU, memory and server the setting was tuned for; a change restarts from the formulas.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub tuned_for: String,
    /// The tuner's last sentence, whether it changed anything or held.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_evaluation: Option<String>,
    /// The last decision that changed (auto) or would change (recommend) the setting.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_decision: Option<TuningDecision>,
    /// Recent decisions, oldest first, at most 10.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub history: Vec<TuningDecision>,
    /// The workload as the tuner learned it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<LearnedModel>,
    /// When the last change was decided; the cooldown runs from here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_change_time: Option<Time>,
    /// Since when a lower setting has looked right (scale-down stabilization).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scale_down_since: Option<Time>,
}

#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub struct WorkerSetting {
    pub workers: i32,
    pub threads: i32,
}

/// One decision, with the signals behind it.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct TuningDecision {
    pub time: Time,
    pub from: WorkerSetting,
    pub to: WorkerSetting,
    /// False in recommend mode: reported, not applied.
    pub applied: bool,
    pub reason: String,
    pub signals: DecisionSignals,
}

/// The key signals of a decision's window, per pod.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct DecisionSignals {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_rate: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latency_p95_seconds: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_cores: Option<f64>,
    #[serde(rename = "memoryMiB", default, skip_serializing_if = "Option::is_none")]
    pub memory_mib: Option<f64>,
    #[serde(default)]
    pub oom_kills: u32,
}

/// What the tuner learned of the workload.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct LearnedModel {
    /// CPU seconds per request (`s`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_per_request_seconds: Option<f64>,
    /// Waiting seconds per request (`d`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wait_per_request_seconds: Option<f64>,
    /// Observed memory per worker.
    #[serde(
        rename = "perWorkerMiB",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub per_worker_mib: Option<f64>,
    /// After an OOM kill: each worker needs more than this.
    #[serde(
        rename = "perWorkerFloorMiB",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub per_worker_floor_mib: Option<f64>,
}

/// The resources the sizing is based on, and where each came from.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct SizingBasis {
    /// CPU cores, e.g. "2" or "0.5".
    pub cpu: String,
    pub cpu_source: BasisSource,
    /// Memory in MiB; absent when nothing bounds it.
    #[serde(rename = "memoryMiB", default, skip_serializing_if = "Option::is_none")]
    pub memory_mib: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_source: Option<BasisSource>,
}

/// Where a basis value came from.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum BasisSource {
    ContainerLimits,
    ContainerRequests,
    /// The allocatable of the smallest Node matching the node selector.
    NodeAllocatable,
}
