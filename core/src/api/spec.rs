// kube's printcolumn(...) attributes repeat `type_ = ...` by design; clippy reads them as duplicates.
#![allow(clippy::duplicated_attributes)]

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{EnvVar, ResourceRequirements};
use kube::{CustomResource, KubeSchema, core::Duration};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::AppServerStatus;

/// An app server (gunicorn, uvicorn, Puma, Unicorn, PHP-FPM, Node or any pre-fork server driven
/// by environment variables) whose worker processes and threads the operator sizes for the pod
/// it really gets.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "appserver.dev",
    version = "v1alpha1",
    kind = "AppServer",
    namespaced,
    status = "AppServerStatus",
    shortname = "aps",
    category = "all",
    doc = "An app server whose workers and threads are sized for the pod it gets.",
    printcolumn(name = "Server", type_ = "string", json_path = ".spec.server.kind"),
    printcolumn(name = "Workers", type_ = "integer", json_path = ".status.workers"),
    printcolumn(name = "Threads", type_ = "integer", json_path = ".status.threads"),
    printcolumn(name = "Mode", type_ = "string", json_path = ".spec.tuning.mode"),
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[x_kube(
    validation = Rule::new("self.server.kind != 'gunicorn' && self.server.kind != 'uvicorn' || has(self.args) && size(self.args) > 0 || has(self.command) && size(self.command) > 0")
        .message("args must name the application (for example [\"app:app\"]) when server.kind is gunicorn or uvicorn, unless command is set")
        .field_path(".args"),
    validation = Rule::new("!has(self.recycle) || self.recycle.jitter <= self.recycle.maxRequests")
        .message("recycle.jitter must not exceed recycle.maxRequests")
        .field_path(".recycle.jitter"),
)]
#[serde(rename_all = "camelCase")]
pub struct AppServerSpec {
    /// Container image of the application.
    #[schemars(length(min = 1, max = 512))]
    pub image: String,

    /// Overrides the container command. By default the server profile's launcher is used
    /// (`gunicorn`, `uvicorn`); other profiles keep the image's entrypoint.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64))]
    pub command: Vec<String>,

    /// Arguments: for gunicorn and uvicorn the application, e.g. `["app:app"]`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64))]
    pub args: Vec<String>,

    /// TCP port the server listens on.
    #[serde(default = "default_port")]
    #[schemars(range(min = 1, max = 65535))]
    pub port: i32,

    /// Pod replicas. Leave it out when an autoscaler owns the replica count.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 1000))]
    pub replicas: Option<i32>,

    /// Which app server runs in the container.
    pub server: ServerSpec,

    /// What a request spends its time on; picks the starting formula.
    #[serde(default)]
    pub workload: WorkloadClass,

    /// Container resources. The CPU and memory limits (else requests) are the sizing basis.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,

    /// Node selector for the pods; with no resources set, the smallest matching Node is the basis.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub node_selector: BTreeMap<String, String>,

    /// Extra environment for the application container. Variables the server profile sets
    /// (such as `GUNICORN_WORKERS`) are refused here unless tuning.mode is `off`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub env: Vec<EnvVar>,

    /// HTTP path for readiness and liveness probes; without it the probes open a TCP connection.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self.startsWith('/')").message("healthPath must start with '/'"))]
    #[schemars(length(max = 256))]
    pub health_path: Option<String>,

    /// Memory estimates used to cap workers; later learned from observation.
    #[serde(default)]
    pub memory: MemoryEstimate,

    /// Request and graceful-shutdown timeouts.
    #[serde(default)]
    pub timeouts: Timeouts,

    /// Restart each worker after this many requests (guards against slow leaks).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recycle: Option<Recycle>,

    /// How workers and threads are chosen and, later, tuned.
    #[serde(default)]
    pub tuning: TuningSpec,
}

fn default_port() -> i32 {
    8080
}

/// The app server and, for gunicorn, its worker class.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[x_kube(
    validation = Rule::new("!has(self.workerClass) || self.kind == 'gunicorn'")
        .message("server.workerClass is only valid when server.kind is gunicorn")
        .field_path(".workerClass"),
    validation = Rule::new("self.kind == 'generic' ? has(self.variables) : !has(self.variables)")
        .message("server.variables is required when server.kind is generic, and only allowed then")
        .field_path(".variables"),
)]
#[serde(rename_all = "camelCase")]
pub struct ServerSpec {
    /// gunicorn | uvicorn | puma | unicorn | php-fpm | node | generic
    pub kind: ServerKind,
    /// gunicorn only: sync | gthread | gevent | uvicorn. Defaults from the workload class.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub worker_class: Option<WorkerClass>,
    /// generic only: the environment variables the server reads.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variables: Option<GenericVariables>,
}

#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[serde(rename_all = "kebab-case")]
pub enum ServerKind {
    Gunicorn,
    Uvicorn,
    Puma,
    Unicorn,
    PhpFpm,
    Node,
    Generic,
}

#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[serde(rename_all = "lowercase")]
pub enum WorkerClass {
    /// One request at a time per process.
    Sync,
    /// A thread pool per process.
    Gthread,
    /// Green threads (async I/O through monkey-patching).
    Gevent,
    /// ASGI event loop per process (`uvicorn.workers.UvicornWorker`).
    Uvicorn,
}

#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
#[serde(rename_all = "kebab-case")]
pub enum WorkloadClass {
    /// Requests mostly wait (databases, HTTP APIs, LLM calls).
    #[default]
    IoBound,
    /// Requests mostly compute.
    CpuBound,
    /// Between the two.
    Mixed,
}

/// Names of the environment variables a generic server reads.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct GenericVariables {
    /// Variable that receives the worker-process count, e.g. `WEB_CONCURRENCY`.
    #[x_kube(validation = Rule::new("self.matches('^[A-Za-z_][A-Za-z0-9_]*$')").message("server.variables.workers must be an environment variable name"))]
    #[schemars(length(min = 1, max = 128))]
    pub workers: String,
    /// Variable that receives the threads per worker; without it the server is sized as
    /// processes only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self.matches('^[A-Za-z_][A-Za-z0-9_]*$')").message("server.variables.threads must be an environment variable name"))]
    #[schemars(length(min = 1, max = 128))]
    pub threads: Option<String>,
}

/// Memory estimates: total = base + workers × perWorker.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct MemoryEstimate {
    /// Memory of the master process and shared pages, in MiB.
    #[serde(rename = "baseMiB", default = "default_base_mib")]
    #[schemars(range(min = 0, max = 1048576))]
    pub base_mib: i64,
    /// Memory of each worker process, in MiB.
    #[serde(rename = "perWorkerMiB", default = "default_per_worker_mib")]
    #[schemars(range(min = 1, max = 1048576))]
    pub per_worker_mib: i64,
}

fn default_base_mib() -> i64 {
    200
}
fn default_per_worker_mib() -> i64 {
    200
}

impl Default for MemoryEstimate {
    fn default() -> Self {
        Self {
            base_mib: default_base_mib(),
            per_worker_mib: default_per_worker_mib(),
        }
    }
}

/// Timeouts, as durations such as `30s` or `5m`.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[x_kube(
    validation = Rule::new("duration(self.request) >= duration('1s') && duration(self.request) <= duration('24h')")
        .message("timeouts.request must be between 1s and 24h")
        .field_path(".request"),
    validation = Rule::new("duration(self.graceful) >= duration('0s') && duration(self.graceful) <= duration('1h')")
        .message("timeouts.graceful must be between 0s and 1h")
        .field_path(".graceful"),
)]
#[serde(rename_all = "camelCase")]
pub struct Timeouts {
    /// A worker silent for longer than this is killed and restarted.
    #[serde(default = "default_request_timeout")]
    #[schemars(length(max = 32), regex(pattern = r"^([0-9]+(\.[0-9]+)?(ms|s|m|h))+$"))]
    pub request: Duration,
    /// Time given to in-flight requests on shutdown; the pod's termination grace period follows it.
    #[serde(default = "default_graceful_timeout")]
    #[schemars(length(max = 32), regex(pattern = r"^([0-9]+(\.[0-9]+)?(ms|s|m|h))+$"))]
    pub graceful: Duration,
}

fn default_request_timeout() -> Duration {
    std::time::Duration::from_secs(30).into()
}
fn default_graceful_timeout() -> Duration {
    std::time::Duration::from_secs(30).into()
}

impl Default for Timeouts {
    fn default() -> Self {
        Self {
            request: default_request_timeout(),
            graceful: default_graceful_timeout(),
        }
    }
}

/// Worker recycling after a number of requests.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Recycle {
    #[schemars(range(min = 1, max = 100000000))]
    pub max_requests: i64,
    /// Random extra requests per worker so that workers do not all restart together.
    #[serde(default)]
    #[schemars(range(min = 0, max = 100000000))]
    pub jitter: i64,
}

/// How workers and threads are chosen.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct TuningSpec {
    /// off: the operator sets no worker settings; static: formulas only; recommend: decide and
    /// report, change nothing; auto: apply decisions by a rolling update.
    #[serde(default)]
    pub mode: TuningMode,
    /// Bounds on worker processes.
    #[serde(default = "default_worker_bounds")]
    pub workers: Bounds,
    /// Bounds on threads per worker (threaded servers).
    #[serde(default = "default_thread_bounds")]
    pub threads: Bounds,
    /// Targets the tuner aims for.
    #[serde(default)]
    pub targets: Targets,
    /// Minimum time between two applied changes.
    #[serde(default = "default_cooldown")]
    #[x_kube(validation = Rule::new("duration(self) >= duration('30s') && duration(self) <= duration('24h')").message("tuning.cooldown must be between 30s and 24h"))]
    #[schemars(length(max = 32), regex(pattern = r"^([0-9]+(\.[0-9]+)?(ms|s|m|h))+$"))]
    pub cooldown: Duration,
    /// Where the tuner reads its signals.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metrics: Option<MetricsSource>,
    /// sidecar: run the backlog exporter next to the app, so the queue (the listen backlog) and
    /// refused connections are measured without instrumenting the app.
    #[serde(default)]
    pub queue_signal: QueueSignal,
}

/// Where the queue signal comes from.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum QueueSignal {
    /// From the app's own metrics or a query override, if any.
    #[default]
    None,
    /// From the backlog-exporter sidecar the operator adds to the pod.
    Sidecar,
}

fn default_cooldown() -> Duration {
    std::time::Duration::from_secs(300).into()
}

impl Default for TuningSpec {
    fn default() -> Self {
        Self {
            mode: TuningMode::default(),
            workers: default_worker_bounds(),
            threads: default_thread_bounds(),
            targets: Targets::default(),
            cooldown: default_cooldown(),
            metrics: None,
            queue_signal: QueueSignal::default(),
        }
    }
}

#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum TuningMode {
    Off,
    #[default]
    Static,
    Recommend,
    Auto,
}

impl TuningMode {
    /// Whether the tuner observes the AppServer (`recommend` and `auto`).
    pub fn observes(self) -> bool {
        matches!(self, Self::Recommend | Self::Auto)
    }
}

/// An inclusive range.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[x_kube(validation = Rule::new("self.min <= self.max").message("min must be less than or equal to max"))]
#[serde(rename_all = "camelCase")]
pub struct Bounds {
    #[schemars(range(min = 1, max = 1024))]
    pub min: i32,
    #[schemars(range(min = 1, max = 1024))]
    pub max: i32,
}

pub const DEFAULT_MAX_WORKERS: i32 = 64;
pub const DEFAULT_MAX_THREADS: i32 = 64;

fn default_worker_bounds() -> Bounds {
    Bounds {
        min: 1,
        max: DEFAULT_MAX_WORKERS,
    }
}
fn default_thread_bounds() -> Bounds {
    Bounds {
        min: 1,
        max: DEFAULT_MAX_THREADS,
    }
}

impl Default for Bounds {
    fn default() -> Self {
        default_worker_bounds()
    }
}

/// What the tuner aims for.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Targets {
    /// 95th-percentile latency target.
    #[serde(default = "default_latency_p95")]
    #[x_kube(validation = Rule::new("duration(self) > duration('0s')").message("tuning.targets.latencyP95 must be positive"))]
    #[schemars(length(max = 32), regex(pattern = r"^([0-9]+(\.[0-9]+)?(ms|s|m|h))+$"))]
    pub latency_p95: Duration,
    /// Requests allowed to wait for a free worker.
    #[serde(default)]
    #[schemars(range(min = 0, max = 100000))]
    pub queue: i32,
    /// CPU use, as a fraction of the limit, above which more concurrency is not added.
    #[serde(default = "default_cpu_utilization")]
    #[schemars(range(min = 0.05, max = 1.0))]
    pub cpu_utilization: f64,
}

fn default_latency_p95() -> Duration {
    std::time::Duration::from_secs(2).into()
}
fn default_cpu_utilization() -> f64 {
    0.8
}

impl Default for Targets {
    fn default() -> Self {
        Self {
            latency_p95: default_latency_p95(),
            queue: 0,
            cpu_utilization: default_cpu_utilization(),
        }
    }
}

/// Where the tuner's signals come from.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct MetricsSource {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prometheus: Option<PrometheusSource>,
    /// PromQL overrides per signal (requestRate, latencyP50, latencyP95, latencyP99, queue, drops,
    /// cpu, cpuThrottling, memory, oomKills, restarts); see docs/observer.md for the placeholders.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[x_kube(validation = Rule::new("self.all(k, k in ['requestRate', 'latencyP50', 'latencyP95', 'latencyP99', 'queue', 'drops', 'cpu', 'cpuThrottling', 'memory', 'oomKills', 'restarts'])").message("tuning.metrics.queries keys must be one of requestRate, latencyP50, latencyP95, latencyP99, queue, drops, cpu, cpuThrottling, memory, oomKills, restarts"))]
    pub queries: BTreeMap<String, String>,
}

#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct PrometheusSource {
    /// Base URL of the Prometheus HTTP API.
    #[x_kube(validation = Rule::new("self.matches('^https?://.+')").message("tuning.metrics.prometheus.url must be an http or https URL"))]
    #[schemars(length(min = 1, max = 1024))]
    pub url: String,
}
