//! The observer against a real Prometheus (Debian's 2.42 from `apt-get install prometheus`, or
//! `PROMETHEUS_BIN`), scraping a fake exporter that speaks cAdvisor, kube-state-metrics, the
//! app's request histogram and the backlog sidecar, with counters that grow at known rates.

use std::collections::BTreeMap;
use std::fs;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use appserver_core::observation::{Observed, Signal, Target};
use appserver_operator::observer::{ObserveError, Observer};
use axum::Router;
use axum::extract::State;
use axum::http::header;
use axum::routing::get;
use k8s_openapi::api::core::v1::{
    ContainerState, ContainerStateTerminated, ContainerStatus, Pod, PodSpec, PodStatus,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use k8s_openapi::jiff::{SignedDuration, Timestamp};

const WINDOW: Duration = Duration::from_secs(8);
/// The OOM and restart counters step up this long after the first scrape, inside the window.
const STEP_AFTER: Duration = Duration::from_secs(4);
/// The window observed ends this long after the first scrape.
const WINDOW_END: Duration = Duration::from_millis(9500);
const MIB: f64 = 1_048_576.0;

// ---- the fake exporter -----------------------------------------------------------------------

/// One pod's series. Counters grow linearly with time at these per-second rates.
struct Fake {
    namespace: &'static str,
    pod: &'static str,
    cpu: f64,
    rps: f64,
    slow: bool,
    memory_mib: f64,
    backlog: &'static [(&'static str, f64)],
    overflows: f64,
    throttled: f64,
    ooms: f64,
    restarts: f64,
    /// false: cAdvisor CPU only (no app, sidecar or kube-state-metrics series).
    full: bool,
}

const API_ABC: &str = "api-7d9f.abc";
const API_DEF: &str = "api-7d9f.def";
const WEIRD_NS: &str = "we\"ird\\ns";
const WEIRD_POD: &str = "we\"ird\\pod.x";

const API: Fake = Fake {
    namespace: "shop",
    pod: API_ABC,
    cpu: 0.5,
    rps: 10.0,
    slow: false,
    memory_mib: 300.0,
    backlog: &[("8000", 1.0), ("8001", 2.0)],
    overflows: 0.5,
    throttled: 0.2,
    ooms: 1.0,
    restarts: 1.0,
    full: true,
};

/// Series that must not be counted: they would move every signal far off.
const DECOY: Fake = Fake {
    namespace: "shop",
    pod: "other-6b8c-xyz",
    cpu: 4.0,
    rps: 1000.0,
    slow: true,
    memory_mib: 4096.0,
    backlog: &[("8000", 100.0)],
    overflows: 50.0,
    throttled: 0.9,
    ooms: 5.0,
    restarts: 7.0,
    full: true,
};

const FAKES: [Fake; 6] = [
    API,
    Fake {
        pod: API_DEF,
        memory_mib: 500.0,
        backlog: &[("8000", 3.0)],
        ooms: 0.0,
        restarts: 0.0,
        ..API
    },
    // AppServer `other`: a different name, and one an unescaped `.` in `api-7d9f.abc` matches.
    DECOY,
    Fake {
        pod: "api-7d9fxabc",
        ..DECOY
    },
    // Same pod name as an api pod, other namespace.
    Fake {
        namespace: "staging",
        ..DECOY
    },
    Fake {
        namespace: WEIRD_NS,
        pod: WEIRD_POD,
        cpu: 0.25,
        full: false,
        ..DECOY
    },
];

const BUCKETS: [&str; 6] = ["0.05", "0.1", "0.25", "0.5", "1", "+Inf"];
/// Cumulative shares: p50 in (0.05, 0.1], p95 in (0.25, 0.5], p99 in (0.5, 1].
const FAST: [f64; 6] = [0.3, 0.8, 0.9, 0.98, 1.0, 1.0];
/// Every request over a second.
const SLOW: [f64; 6] = [0.0, 0.0, 0.0, 0.0, 0.0, 1.0];

struct ExporterState {
    started: Instant,
    first_scrape: Mutex<Option<SystemTime>>,
}

fn escape_label(v: &str) -> String {
    v.replace('\\', r"\\")
        .replace('"', "\\\"")
        .replace('\n', r"\n")
}

fn labels(f: &Fake, extra: &[(&str, &str)]) -> String {
    let mut parts = vec![
        format!("namespace=\"{}\"", escape_label(f.namespace)),
        format!("pod=\"{}\"", escape_label(f.pod)),
    ];
    parts.extend(
        extra
            .iter()
            .map(|(k, v)| format!("{k}=\"{}\"", escape_label(v))),
    );
    format!("{{{}}}", parts.join(","))
}

fn family(out: &mut String, name: &str, kind: &str, series: Vec<(String, f64)>) {
    out.push_str(&format!("# TYPE {name} {kind}\n"));
    for (labels, value) in series {
        out.push_str(&format!("{name}{labels} {value}\n"));
    }
}

fn full() -> impl Iterator<Item = &'static Fake> {
    FAKES.iter().filter(|f| f.full)
}

fn cadvisor(out: &mut String, t: f64, stepped: bool) {
    let app = [("container", "app")];
    // The pod-level cgroup (container="") includes sidecars: it must be filtered out.
    let pod_level = [("container", "")];
    let mut cpu: Vec<_> = FAKES.iter().map(|f| (labels(f, &app), f.cpu * t)).collect();
    cpu.extend(full().map(|f| (labels(f, &pod_level), (f.cpu + 1.0) * t)));
    family(out, "container_cpu_usage_seconds_total", "counter", cpu);
    let periods = full().map(|f| (labels(f, &app), 10.0 * t)).collect();
    family(out, "container_cpu_cfs_periods_total", "counter", periods);
    let throttled = full()
        .map(|f| (labels(f, &app), 10.0 * f.throttled * t))
        .collect();
    family(
        out,
        "container_cpu_cfs_throttled_periods_total",
        "counter",
        throttled,
    );
    let mut memory: Vec<_> = full()
        .map(|f| (labels(f, &app), f.memory_mib * MIB))
        .collect();
    memory.extend(full().map(|f| (labels(f, &pod_level), (f.memory_mib + 1000.0) * MIB)));
    family(out, "container_memory_working_set_bytes", "gauge", memory);
    let ooms = full()
        .map(|f| (labels(f, &app), if stepped { f.ooms } else { 0.0 }))
        .collect();
    family(out, "container_oom_events_total", "counter", ooms);
}

fn kube_state_metrics(out: &mut String, stepped: bool) {
    let restarts = full()
        .map(|f| {
            let l = labels(f, &[("container", "app"), ("uid", "u-1")]);
            (l, if stepped { f.restarts } else { 0.0 })
        })
        .collect();
    family(
        out,
        "kube_pod_container_status_restarts_total",
        "counter",
        restarts,
    );
}

fn app_histogram(out: &mut String, t: f64) {
    out.push_str("# TYPE http_request_duration_seconds histogram\n");
    for f in full() {
        let count = f.rps * t;
        let shares = if f.slow { SLOW } else { FAST };
        for (le, share) in BUCKETS.iter().zip(shares) {
            let l = labels(f, &[("le", le)]);
            out.push_str(&format!(
                "http_request_duration_seconds_bucket{l} {}\n",
                share * count
            ));
        }
        let l = labels(f, &[]);
        out.push_str(&format!(
            "http_request_duration_seconds_sum{l} {}\n",
            0.1 * count
        ));
        out.push_str(&format!("http_request_duration_seconds_count{l} {count}\n"));
    }
}

fn backlog_sidecar(out: &mut String, t: f64) {
    let backlog = full()
        .flat_map(|f| {
            f.backlog
                .iter()
                .map(|(port, v)| (labels(f, &[("port", port)]), *v))
        })
        .collect();
    family(out, "appserver_listen_backlog", "gauge", backlog);
    let overflows = full().map(|f| (labels(f, &[]), f.overflows * t)).collect();
    family(
        out,
        "appserver_listen_overflows_total",
        "counter",
        overflows,
    );
}

async fn metrics(State(state): State<Arc<ExporterState>>) -> impl axum::response::IntoResponse {
    let now = SystemTime::now();
    let first = *state.first_scrape.lock().unwrap().get_or_insert(now);
    let stepped = now.duration_since(first).unwrap_or_default() >= STEP_AFTER;
    let t = state.started.elapsed().as_secs_f64();
    let mut out = String::new();
    cadvisor(&mut out, t, stepped);
    kube_state_metrics(&mut out, stepped);
    app_histogram(&mut out, t);
    backlog_sidecar(&mut out, t);
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], out)
}

async fn start_exporter() -> (String, Arc<ExporterState>) {
    let state = Arc::new(ExporterState {
        started: Instant::now(),
        first_scrape: Mutex::new(None),
    });
    let app = Router::new()
        .route("/metrics", get(metrics))
        .with_state(state.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (addr, state)
}

// ---- the real Prometheus ---------------------------------------------------------------------

/// Prometheus as a child process; killed, and its TSDB removed, on drop.
struct Prometheus {
    child: Child,
    dir: PathBuf,
    url: String,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = fs::remove_dir_all(&self.dir);
    }
}

fn prometheus_bin() -> PathBuf {
    if let Some(bin) = std::env::var_os("PROMETHEUS_BIN") {
        return PathBuf::from(bin);
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|dir| dir.join("prometheus"))
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!(
                "no prometheus binary: this test needs a real Prometheus. \
                 Run `apt-get install prometheus` or set PROMETHEUS_BIN"
            )
        })
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn start_prometheus(exporter: &str) -> Prometheus {
    let bin = prometheus_bin();
    let dir = std::env::temp_dir().join(format!(
        "observer-prometheus-{}-{}",
        std::process::id(),
        SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    ));
    fs::create_dir_all(&dir).unwrap();
    let config = format!(
        "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n\
         scrape_configs:\n  - job_name: fake\n    honor_labels: true\n    \
         static_configs:\n      - targets: ['{exporter}']\n"
    );
    fs::write(dir.join("prometheus.yml"), config).unwrap();
    let listen = format!("127.0.0.1:{}", free_port());
    let log = fs::File::create(dir.join("prometheus.log")).unwrap();
    let child = Command::new(&bin)
        .arg(format!(
            "--config.file={}",
            dir.join("prometheus.yml").display()
        ))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.join("data").display()
        ))
        .arg(format!("--web.listen-address={listen}"))
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap_or_else(|e| {
            panic!(
                "starting {}: {e} (apt-get install prometheus)",
                bin.display()
            )
        });
    Prometheus {
        child,
        dir,
        url: format!("http://{listen}"),
    }
}

fn log_of(prom: &Prometheus) -> String {
    fs::read_to_string(prom.dir.join("prometheus.log")).unwrap_or_default()
}

async fn wait_ready(prom: &mut Prometheus) {
    let client = prometheus_http_query::Client::try_from(prom.url.as_str()).unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if let Some(status) = prom.child.try_wait().unwrap() {
            panic!("prometheus exited with {status}:\n{}", log_of(prom));
        }
        if client.is_server_ready().await.unwrap_or(false) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    panic!("prometheus not ready within 20s:\n{}", log_of(prom));
}

// ---- targets ---------------------------------------------------------------------------------

fn pod(name: &str, last: Option<ContainerState>) -> Pod {
    Pod {
        metadata: ObjectMeta {
            name: Some(name.to_string()),
            ..Default::default()
        },
        spec: Some(PodSpec {
            node_name: Some("node-a".to_string()),
            ..Default::default()
        }),
        status: last.map(|last| PodStatus {
            container_statuses: Some(vec![ContainerStatus {
                name: "app".to_string(),
                last_state: Some(last),
                restart_count: 1,
                ..Default::default()
            }]),
            ..Default::default()
        }),
    }
}

fn oom_killed_at(at: Timestamp) -> ContainerState {
    ContainerState {
        terminated: Some(ContainerStateTerminated {
            reason: Some("OOMKilled".to_string()),
            exit_code: 137,
            finished_at: Some(Time(at)),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn target(url: &str, namespace: &str, pods: Vec<Pod>, queries: &[(&str, &str)]) -> Target {
    Target {
        namespace: namespace.to_string(),
        name: "api".to_string(),
        prometheus_url: url.to_string(),
        queries: queries
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect::<BTreeMap<_, _>>(),
        pods,
    }
}

fn api_target(url: &str, queries: &[(&str, &str)]) -> Target {
    target(
        url,
        "shop",
        vec![pod(API_ABC, None), pod(API_DEF, None)],
        queries,
    )
}

fn issue(observed: &Observed, signal: Signal) -> &str {
    observed
        .issues
        .iter()
        .find(|i| i.signal == signal)
        .map(|i| i.message.as_str())
        .unwrap_or_else(|| panic!("no issue for {signal}: {:?}", observed.issues))
}

fn assert_near(what: &str, got: Option<f64>, want: f64, tolerance: f64) {
    let got = got.unwrap_or_else(|| panic!("{what} is None"));
    assert!(
        (got - want).abs() <= want.abs() * tolerance,
        "{what} = {got}, want {want} ±{}%",
        tolerance * 100.0
    );
}

fn assert_within(what: &str, got: Option<f64>, low: f64, high: f64) {
    let got = got.unwrap_or_else(|| panic!("{what} is None"));
    assert!(
        got > low && got <= high,
        "{what} = {got}, want in ({low}, {high}]"
    );
}

/// Polls until two scrapes made a rate, then waits until the window ending at
/// first scrape + `WINDOW_END` lies wholly in the past, and returns that end.
async fn settled_window_end(observer: &Observer, url: &str, exporter: &ExporterState) -> Timestamp {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let seen = observer
            .observe(&api_target(url, &[]), WINDOW, Timestamp::now())
            .await;
        if seen.is_ok_and(|o| o.observation.request_rate.is_some()) {
            break;
        }
        assert!(Instant::now() < deadline, "no request rate within 30s");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let first = exporter.first_scrape.lock().unwrap().unwrap();
    let end = first + WINDOW_END;
    let settled = end + Duration::from_millis(1500);
    if let Ok(wait) = settled.duration_since(SystemTime::now()) {
        tokio::time::sleep(wait).await;
    }
    Timestamp::try_from(end).unwrap()
}

// ---- tests -----------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn observes_one_appserver_from_a_real_prometheus() {
    let (exporter_addr, exporter) = start_exporter().await;
    let mut prom = start_prometheus(&exporter_addr);
    wait_ready(&mut prom).await;
    let observer = Observer::new();
    let at = settled_window_end(&observer, &prom.url, &exporter).await;

    defaults_read_every_signal_of_the_two_api_pods_only(&observer, &prom.url, at).await;
    pod_status_kills_merge_with_prometheus(&observer, &prom.url, at).await;
    overrides_replace_their_signal_and_fail_alone(&observer, &prom.url, at).await;
    escaped_names_match_exactly_and_missing_data_is_an_issue(&observer, &prom.url, at).await;
}

async fn defaults_read_every_signal_of_the_two_api_pods_only(
    o: &Observer,
    url: &str,
    at: Timestamp,
) {
    let seen = o.observe(&api_target(url, &[]), WINDOW, at).await.unwrap();
    assert!(seen.issues.is_empty(), "{:?}", seen.issues);
    let obs = seen.observation;
    assert_eq!(obs.window_seconds, 8.0);
    assert_eq!(obs.pods, 2);
    assert_near("request_rate", obs.request_rate, 10.0, 0.15);
    assert_within("latency_p50", obs.latency_p50, 0.05, 0.1);
    assert_within("latency_p95", obs.latency_p95, 0.25, 0.5);
    assert_within("latency_p99", obs.latency_p99, 0.5, 1.0);
    assert_near("queue", obs.queue, 3.0, 0.001);
    assert_near("drop_rate", obs.drop_rate, 0.5, 0.15);
    assert_near("cpu_cores", obs.cpu_cores, 0.5, 0.15);
    assert_near("cpu_throttled", obs.cpu_throttled, 0.2, 0.15);
    assert_near("memory_mib", obs.memory_mib, 500.0, 1e-9);
    assert_eq!(obs.oom_kills, 1, "one OOM event on one api pod");
    assert_eq!(obs.restarts, 1, "one restart on one api pod");
}

async fn pod_status_kills_merge_with_prometheus(o: &Observer, url: &str, at: Timestamp) {
    let killed = at.checked_sub(SignedDuration::from_secs(2)).unwrap();
    let long_ago = at.checked_sub(SignedDuration::from_secs(3600)).unwrap();
    let pods = vec![
        pod(API_ABC, Some(oom_killed_at(killed))),
        pod(API_DEF, Some(oom_killed_at(killed))),
    ];
    let seen = o
        .observe(&target(url, "shop", pods, &[]), WINDOW, at)
        .await
        .unwrap();
    assert_eq!(
        seen.observation.oom_kills, 2,
        "pod status saw two, Prometheus one"
    );
    assert_eq!(seen.observation.restarts, 2);

    let old = vec![
        pod(API_ABC, Some(oom_killed_at(long_ago))),
        pod(API_DEF, None),
    ];
    let seen = o
        .observe(&target(url, "shop", old, &[]), WINDOW, at)
        .await
        .unwrap();
    assert_eq!(
        seen.observation.oom_kills, 1,
        "a kill before the window is not counted"
    );
}

async fn overrides_replace_their_signal_and_fail_alone(o: &Observer, url: &str, at: Timestamp) {
    let summed_cpu = r#"sum(rate(container_cpu_usage_seconds_total{namespace="{namespace}", pod=~"{pods}", container="{container}"}[{window}]))"#;
    let queries = [
        ("queue", "vector(7)"),
        ("cpu", summed_cpu),
        ("drops", "sum(("),
        ("latencyP50", "container_memory_working_set_bytes"),
    ];
    let seen = o
        .observe(&api_target(url, &queries), WINDOW, at)
        .await
        .unwrap();
    let obs = &seen.observation;
    assert_eq!(obs.queue, Some(7.0));
    assert_near(
        "cpu_cores (override: sum over pods)",
        obs.cpu_cores,
        1.0,
        0.15,
    );
    assert_eq!(obs.drop_rate, None);
    let drops = issue(&seen, Signal::Drops);
    assert!(drops.contains("bad_data") && drops.contains(url), "{drops}");
    assert!(drops.contains("spec.tuning.metrics.queries"), "{drops}");
    assert_eq!(obs.latency_p50, None);
    assert!(issue(&seen, Signal::LatencyP50).contains("series, not one number"));
    // The other signals are untouched.
    assert_near("request_rate", obs.request_rate, 10.0, 0.15);
    assert_eq!(seen.issues.len(), 2, "{:?}", seen.issues);
}

async fn escaped_names_match_exactly_and_missing_data_is_an_issue(
    o: &Observer,
    url: &str,
    at: Timestamp,
) {
    let weird = target(url, WEIRD_NS, vec![pod(WEIRD_POD, None)], &[]);
    let seen = o.observe(&weird, WINDOW, at).await.unwrap();
    assert_near(
        "cpu_cores of the quoted pod",
        seen.observation.cpu_cores,
        0.25,
        0.15,
    );
    assert_eq!(seen.observation.request_rate, None);
    assert_eq!(
        issue(&seen, Signal::RequestRate),
        format!("no data from {url}: query returned an empty vector")
    );
    let shown = seen
        .issues
        .iter()
        .find(|i| i.signal == Signal::LatencyP95)
        .unwrap();
    assert!(
        shown
            .to_string()
            .starts_with("latencyP95: no data from http://"),
        "{shown}"
    );
}

#[tokio::test]
async fn an_unreachable_prometheus_is_an_error_naming_it() {
    let url = format!("http://127.0.0.1:{}", free_port());
    let observer = Observer::new().with_query_timeout(Duration::from_secs(5));
    let err = observer
        .observe(&api_target(&url, &[]), WINDOW, Timestamp::now())
        .await
        .unwrap_err();
    assert!(matches!(err, ObserveError::Unreachable { .. }), "{err:?}");
    assert!(err.to_string().contains(&url), "{err}");
}

#[tokio::test]
async fn no_pods_means_no_query_and_an_issue_per_signal() {
    // Nothing listens here: with no pod, nothing may be queried (an empty regex would
    // select series without a pod label).
    let url = format!("http://127.0.0.1:{}", free_port());
    let seen = Observer::new()
        .observe(&target(&url, "shop", vec![], &[]), WINDOW, Timestamp::now())
        .await
        .unwrap();
    assert_eq!(seen.observation.pods, 0);
    assert_eq!(seen.observation.request_rate, None);
    assert_eq!(seen.issues.len(), Signal::ALL.len());
}
