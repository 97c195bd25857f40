//! The workload emulator: plays the app inside the kwok pods of one AppServer.
//!
//! kwok runs nothing, so this process does what the app and the exporters would: every second
//! it reads each running pod's workers, threads and limits, feeds them and a scripted offered
//! load into the workload model (the same one the tuner's tests use), and serves the metrics a
//! real pod would produce — cAdvisor's CPU, throttling, memory and OOM counters, the app's
//! latency histogram, the backlog exporter's gauges, kube-state-metrics' restarts — for the real
//! Prometheus to scrape through its file_sd directory. When the model's memory passes the limit
//! it marks the container OOMKilled through a status patch, as the kubelet would.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use appserver_core::model::{self, Pod as ModelPod, Serving, Workload};
use appserver_core::sizing::quantity_value;
use k8s_openapi::api::core::v1::{Container, Pod};
use kube::Client;
use kube::api::{Api, ListParams};
use serde_json::json;

const TICK: Duration = Duration::from_secs(1);
/// A container killed for memory comes back after this (CrashLoopBackOff's first delay).
const RESTART_DELAY: Duration = Duration::from_secs(10);

/// What the app does and how much is asked of it; tests change it while the emulator runs.
#[derive(Clone, Debug)]
pub struct Script {
    /// Requests per second offered to the whole AppServer, spread over its running pods.
    pub rps: f64,
    pub workload: Workload,
}

/// Per pod: the counters a scrape reads, and when its container (re)started.
#[derive(Default)]
struct PodMetrics {
    cpu_seconds: f64,
    periods: f64,
    throttled_periods: f64,
    requests: f64,
    latency_sum: f64,
    /// Cumulative count per bucket bound.
    buckets: Vec<f64>,
    overflows: f64,
    oom_events: f64,
    restarts: f64,
    memory_bytes: f64,
    backlog: f64,
    started: Option<Instant>,
    last_oom: Option<Instant>,
    last: Option<Serving>,
}

#[derive(Default)]
struct Shared {
    pods: BTreeMap<String, PodMetrics>,
    ooms: u32,
}

/// A running emulator; stops and unregisters itself on drop.
pub struct Emulator {
    script: Arc<Mutex<Script>>,
    shared: Arc<Mutex<Shared>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    sd_file: PathBuf,
    pub address: std::net::SocketAddr,
}

/// Histogram bounds: ×1.25 from 1 ms to ~100 s, fine enough that a quantile read back by
/// `histogram_quantile` is within a few percent.
fn bounds() -> Vec<f64> {
    let mut out = Vec::new();
    let mut le = 0.001;
    while le < 120.0 {
        out.push((le * 1e6_f64).round() / 1e6);
        le *= 1.25;
    }
    out
}

impl Emulator {
    /// Starts emulating the pods of AppServer `name` in `namespace` and registers the metrics
    /// endpoint with the cluster's Prometheus (`PROMETHEUS_SD_DIR`).
    pub async fn start(client: Client, namespace: &str, name: &str, script: Script) -> Self {
        let script = Arc::new(Mutex::new(script));
        let shared = Arc::new(Mutex::new(Shared::default()));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("a port for the emulator");
        let address = listener.local_addr().expect("the emulator's address");
        let metrics = {
            let (shared, ns) = (shared.clone(), namespace.to_string());
            axum::Router::new().route(
                "/metrics",
                axum::routing::get(move || {
                    let text = exposition(&shared, &ns);
                    async move { text }
                }),
            )
        };
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, metrics).await;
        });
        let looper = {
            let (script, shared) = (script.clone(), shared.clone());
            let (ns, name) = (namespace.to_string(), name.to_string());
            tokio::spawn(async move { run(client, &ns, &name, script, shared).await })
        };
        let dir =
            std::env::var("PROMETHEUS_SD_DIR").expect("PROMETHEUS_SD_DIR from cluster.sh env");
        let sd_file = PathBuf::from(dir).join(format!("emulator-{namespace}-{name}.json"));
        let target = json!([{"targets": [address.to_string()], "labels": {"job": "emulator"}}]);
        // Written whole then renamed, so Prometheus never reads half a file.
        let tmp = sd_file.with_extension("tmp");
        std::fs::write(&tmp, target.to_string()).expect("writing the file_sd target");
        std::fs::rename(&tmp, &sd_file).expect("publishing the file_sd target");
        Self {
            script,
            shared,
            tasks: vec![server, looper],
            sd_file,
            address,
        }
    }

    pub fn set_rps(&self, rps: f64) {
        if let Ok(mut s) = self.script.lock() {
            s.rps = rps;
        }
    }

    pub fn update(&self, f: impl FnOnce(&mut Script)) {
        if let Ok(mut s) = self.script.lock() {
            f(&mut s);
        }
    }

    /// OOM kills the emulator has caused.
    pub fn oom_kills(&self) -> u32 {
        self.shared.lock().map(|s| s.ooms).unwrap_or(0)
    }

    /// The model's latest steady state of each pod, by pod name.
    pub fn serving(&self) -> BTreeMap<String, Serving> {
        self.shared
            .lock()
            .map(|s| {
                s.pods
                    .iter()
                    .filter_map(|(k, v)| v.last.map(|l| (k.clone(), l)))
                    .collect()
            })
            .unwrap_or_default()
    }
}

impl Drop for Emulator {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.sd_file);
        for t in &self.tasks {
            t.abort();
        }
    }
}

async fn run(
    client: Client,
    namespace: &str,
    name: &str,
    script: Arc<Mutex<Script>>,
    shared: Arc<Mutex<Shared>>,
) {
    let pods: Api<Pod> = Api::namespaced(client, namespace);
    let selector = ListParams::default().labels(&format!("appserver.dev/name={name}"));
    let mut ticker = tokio::time::interval(TICK);
    let mut last = Instant::now();
    loop {
        ticker.tick().await;
        let now = Instant::now();
        let dt = now.duration_since(last).as_secs_f64();
        last = now;
        let Ok(list) = pods.list(&selector).await else {
            continue;
        };
        let running: Vec<&Pod> = list.items.iter().filter(|p| is_running(p)).collect();
        let Ok(script) = script.lock().map(|s| s.clone()) else {
            return;
        };
        let per_pod = script.rps / running.len().max(1) as f64;
        let mut kills = Vec::new();
        if let Ok(mut sh) = shared.lock() {
            // Pods that are gone stop reporting, as a deleted container's series do.
            let names: Vec<_> = running
                .iter()
                .filter_map(|p| p.metadata.name.clone())
                .collect();
            sh.pods.retain(|k, _| names.contains(k));
            for pod in &running {
                let Some((pod_name, model_pod)) = model_pod(pod) else {
                    continue;
                };
                let m = sh.pods.entry(pod_name.clone()).or_default();
                let started = *m.started.get_or_insert(now);
                let hours = now.duration_since(started).as_secs_f64() / 3600.0;
                let served = model::serve(&model_pod, &script.workload, per_pod, hours);
                integrate(m, &served, model_pod.cpu, dt);
                let may_kill = m
                    .last_oom
                    .is_none_or(|t| now.duration_since(t) >= RESTART_DELAY);
                if served.oom && may_kill {
                    m.last_oom = Some(now);
                    m.started = Some(now);
                    m.oom_events += 1.0;
                    m.restarts += 1.0;
                    kills.push(pod_name);
                }
            }
            sh.ooms += u32::try_from(kills.len()).unwrap_or(0);
        }
        for pod_name in kills {
            oom_kill(&pods, &pod_name).await;
        }
    }
}

fn is_running(p: &Pod) -> bool {
    p.metadata.deletion_timestamp.is_none()
        && p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running")
}

/// The pod's name and what the model needs of it: limits, workers and threads from its env.
fn model_pod(p: &Pod) -> Option<(String, ModelPod)> {
    let name = p.metadata.name.clone()?;
    let app = p
        .spec
        .as_ref()?
        .containers
        .iter()
        .find(|c| c.name == "app")?;
    let limit = |k: &str| {
        app.resources
            .as_ref()
            .and_then(|r| r.limits.as_ref())
            .and_then(|l| l.get(k))
            .and_then(quantity_value)
    };
    let pod = ModelPod {
        cpu: limit("cpu")?,
        memory_mib: limit("memory").map(|b| b / 1048576.0),
        workers: env_u32(app, &["GUNICORN_WORKERS", "WEB_CONCURRENCY"]).unwrap_or(1),
        slots_per_worker: env_u32(app, &["GUNICORN_THREADS", "RAILS_MAX_THREADS"]).unwrap_or(1),
    };
    Some((name, pod))
}

fn env_u32(c: &Container, names: &[&str]) -> Option<u32> {
    c.env
        .iter()
        .flatten()
        .find(|e| names.contains(&e.name.as_str()))
        .and_then(|e| e.value.as_deref())
        .and_then(|v| v.parse().ok())
}

/// Advances a pod's counters by `dt` seconds of `served`.
fn integrate(m: &mut PodMetrics, served: &Serving, cpu_limit: f64, dt: f64) {
    let bounds = bounds();
    if m.buckets.len() != bounds.len() {
        m.buckets = vec![0.0; bounds.len()];
    }
    let n = served.throughput * dt;
    m.requests += n;
    m.latency_sum += n * served.latency(0.5).unwrap_or(0.0);
    for (count, le) in m.buckets.iter_mut().zip(&bounds) {
        *count += n * served.within(*le);
    }
    m.cpu_seconds += served.cpu_cores * dt;
    // CFS periods are 100 ms.
    m.periods += dt * 10.0;
    m.throttled_periods += dt * 10.0 * served.cpu_throttled;
    m.overflows += served.dropped * dt;
    m.memory_bytes = served.memory_mib.min(f64::MAX) * 1048576.0;
    m.backlog = served.queue;
    m.last = Some(*served);
    let _ = cpu_limit;
}

/// The kubelet's view of an OOM kill: restart count up, last state OOMKilled.
async fn oom_kill(pods: &Api<Pod>, name: &str) {
    let Ok(pod) = pods.get_status(name).await else {
        return;
    };
    let statuses = pod
        .status
        .and_then(|s| s.container_statuses)
        .unwrap_or_default();
    let Some((i, st)) = statuses.iter().enumerate().find(|(_, c)| c.name == "app") else {
        return;
    };
    let now = k8s_openapi::jiff::Timestamp::now().to_string();
    let at = format!("/status/containerStatuses/{i}");
    // The test op makes a concurrent status change fail the patch instead of mixing with it.
    let patch = json!([
        {"op": "test", "path": format!("{at}/restartCount"), "value": st.restart_count},
        {"op": "replace", "path": format!("{at}/restartCount"), "value": st.restart_count + 1},
        {"op": "add", "path": format!("{at}/lastState"), "value":
            {"terminated": {"exitCode": 137, "reason": "OOMKilled", "finishedAt": now}}},
        {"op": "replace", "path": format!("{at}/state"), "value": {"running": {"startedAt": now}}},
    ]);
    let ns = pods_namespace(pods);
    let out = crate::kubectl(
        &[
            "patch",
            "pod",
            "-n",
            &ns,
            name,
            "--subresource=status",
            "--type=json",
            "-p",
            &patch.to_string(),
        ],
        "",
    )
    .await;
    if !out.status.success() {
        eprintln!(
            "emulator: OOM patch of {ns}/{name} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

fn pods_namespace(pods: &Api<Pod>) -> String {
    pods.namespace().unwrap_or_default().to_string()
}

/// The Prometheus text exposition of every pod's counters.
fn exposition(shared: &Mutex<Shared>, namespace: &str) -> String {
    let Ok(sh) = shared.lock() else {
        return String::new();
    };
    let bounds = bounds();
    let mut out = String::new();
    for (pod, m) in &sh.pods {
        let c = format!("namespace=\"{namespace}\",pod=\"{pod}\",container=\"app\"");
        let p = format!("namespace=\"{namespace}\",pod=\"{pod}\"");
        let _ = writeln!(
            out,
            "container_cpu_usage_seconds_total{{{c}}} {}",
            m.cpu_seconds
        );
        let _ = writeln!(out, "container_cpu_cfs_periods_total{{{c}}} {}", m.periods);
        let _ = writeln!(
            out,
            "container_cpu_cfs_throttled_periods_total{{{c}}} {}",
            m.throttled_periods
        );
        let _ = writeln!(
            out,
            "container_memory_working_set_bytes{{{c}}} {}",
            m.memory_bytes
        );
        let _ = writeln!(out, "container_oom_events_total{{{c}}} {}", m.oom_events);
        let _ = writeln!(
            out,
            "kube_pod_container_status_restarts_total{{{c}}} {}",
            m.restarts
        );
        for (le, count) in bounds.iter().zip(&m.buckets) {
            let _ = writeln!(
                out,
                "http_request_duration_seconds_bucket{{{p},le=\"{le}\"}} {count}"
            );
        }
        let _ = writeln!(
            out,
            "http_request_duration_seconds_bucket{{{p},le=\"+Inf\"}} {}",
            m.requests
        );
        let _ = writeln!(
            out,
            "http_request_duration_seconds_count{{{p}}} {}",
            m.requests
        );
        let _ = writeln!(
            out,
            "http_request_duration_seconds_sum{{{p}}} {}",
            m.latency_sum
        );
        let _ = writeln!(
            out,
            "appserver_listen_backlog{{{p},port=\"8000\"}} {}",
            m.backlog
        );
        let _ = writeln!(
            out,
            "appserver_listen_overflows_total{{{p}}} {}",
            m.overflows
        );
    }
    out
}
