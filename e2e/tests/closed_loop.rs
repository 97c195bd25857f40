//! The closed loop end to end: the operator (a process) tunes AppServers whose kwok pods are
//! played by the workload emulator, through the real API server and a real Prometheus.

use std::time::Duration;

use anyhow::Result;
use appserver_core::api::AppServer;
use appserver_core::model::Workload;
use appserver_e2e::emulator::{Emulator, Script};
use appserver_e2e::*;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams};
use serde_json::{Value, json};

/// Tuning takes windows and cooldowns: longer than the suite's usual wait.
const TUNE: Duration = Duration::from_secs(240);

fn appserver(name: &str, cpu: &str, memory: &str, class: &str, tuning: Value) -> Value {
    let mut tuning = tuning;
    tuning["cooldown"] = json!("30s");
    json!({
        "metadata": {"name": name},
        "spec": {
            "image": "registry.example/app:1", "args": ["app:app"], "port": 8000, "replicas": 1,
            "server": {"kind": "gunicorn", "workerClass": class},
            "workload": if class == "sync" { "cpu-bound" } else { "io-bound" },
            "resources": {"limits": {"cpu": cpu, "memory": memory}},
            "tuning": tuning,
        }
    })
}

/// A test's namespace and APIs, with AppServer `api` applied from `obj`, its Deployment showing
/// `var=want` (the formulas' numbers) and a pod running for the emulator to play.
struct Loop {
    client: kube::Client,
    ns: TestNamespace,
    apps: Api<AppServer>,
    deployments: Api<Deployment>,
}

impl Loop {
    async fn start(test: &str, obj: Value, var: &str, want: &str) -> Self {
        let client = client().await;
        let ns = TestNamespace::new(&client, test).await;
        let (apps, deployments) = (ns.api::<AppServer>(), ns.api::<Deployment>());
        apply(&apps, obj).await.unwrap();
        deployment_env(&deployments, "api", var, want).await;
        running(&ns, "api").await;
        Self {
            client,
            ns,
            apps,
            deployments,
        }
    }

    async fn emulate(&self, rps: f64, workload: Workload) -> Emulator {
        let script = Script { rps, workload };
        Emulator::start(self.client.clone(), &self.ns.name, "api", script).await
    }
}

/// The app container's workers and threads in the Deployment.
async fn setting(deployments: &Api<Deployment>, name: &str) -> Result<(u32, u32)> {
    let d = deployments.get(name).await?;
    let get = |v: &str| env(&d, v).and_then(|x| x.parse().ok()).unwrap_or(0);
    Ok((get("GUNICORN_WORKERS"), get("GUNICORN_THREADS")))
}

/// Waits for the AppServer's pods to run with the Deployment's current template.
async fn running(ns: &TestNamespace, name: &str) {
    let pods = ns.api::<Pod>();
    eventually_within("a running pod", CONVERGE, || async {
        let list = pods
            .list(&ListParams::default().labels(&format!("appserver.dev/name={name}")))
            .await?;
        let n = list
            .items
            .iter()
            .filter(|p| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running"))
            .count();
        Ok((n > 0).then_some(()))
    })
    .await;
}

async fn status(apps: &Api<AppServer>, name: &str) -> Result<appserver_core::api::AppServerStatus> {
    Ok(apps.get(name).await?.status.unwrap_or_default())
}

fn cond<'a>(
    s: &'a appserver_core::api::AppServerStatus,
    type_: &str,
) -> Option<&'a k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition> {
    s.conditions.iter().find(|c| c.type_ == type_)
}

fn io_bound() -> Workload {
    // 2 ms of CPU, 200 ms waiting on a database: threads, not CPU, are the limit.
    Workload::new(0.002, 0.2)
}

/// (a) Load rises on an I/O-bound app: threads go up and p95 comes back under the target.
#[tokio::test]
async fn io_bound_load_rises_threads_go_up_and_p95_recovers() {
    let tuning =
        json!({"mode": "auto", "targets": {"latencyP95": "1s"}, "workers": {"min": 1, "max": 8}});
    let obj = appserver("api", "1", "2Gi", "gthread", tuning);
    // 1 CPU, io-bound: (2 × 1) + 1 = 3 workers × 4 threads = 12 slots, ~57 req/s at 210 ms.
    let lp = Loop::start("loop-io", obj, "GUNICORN_THREADS", "4").await;
    let (apps, deployments) = (&lp.apps, &lp.deployments);
    let emu = lp.emulate(20.0, io_bound()).await;
    tokio::time::sleep(Duration::from_secs(15)).await;
    emu.set_rps(150.0);
    let (w, t) = eventually_within("threads to go up", TUNE, || async {
        let (w, t) = setting(deployments, "api").await?;
        Ok((t > 4 && w * t > 12).then_some((w, t)))
    })
    .await;
    let s = status(apps, "api").await.unwrap();
    let d = s
        .tuning
        .and_then(|t| t.last_decision)
        .expect("a decision in status");
    assert!(d.applied, "{d:?}");
    assert!(
        d.reason.contains("offered") || d.reason.contains("p95"),
        "{}",
        d.reason
    );
    // The model, fed the new setting, serves the load under the 1 s target.
    eventually_within(
        "p95 under the target with the tuned setting",
        TUNE,
        || async {
            let (w2, t2) = setting(deployments, "api").await?;
            let serving = emu.serving();
            let all_good = !serving.is_empty()
                && serving
                    .values()
                    .all(|s| s.latency(0.95).is_some_and(|p| p <= 1.0) && s.dropped == 0.0);
            Ok((all_good && w2 * t2 >= w * t).then_some(()))
        },
    )
    .await;
    assert_eq!(emu.oom_kills(), 0);
    drop(emu);
    lp.ns.delete().await;
}

/// (b) Per-worker memory grows past what the limit holds: one OOM kill, workers cut at once,
/// and no second kill.
#[tokio::test]
async fn memory_growth_oom_kill_cuts_workers_once() {
    let tuning = json!({"mode": "auto", "targets": {"latencyP95": "1s"}});
    let mut obj = appserver("api", "2", "1Gi", "gthread", tuning);
    obj["spec"]["memory"] = json!({"baseMiB": 200, "perWorkerMiB": 100});
    // 2 CPU: 5 workers × 4 threads; memory 200 + 5 × 100 MiB fits in 1 GiB.
    let lp = Loop::start("loop-oom", obj, "GUNICORN_WORKERS", "5").await;
    let (apps, deployments) = (&lp.apps, &lp.deployments);
    let mut w = io_bound();
    w.per_worker_mib = 100.0;
    let emu = lp.emulate(10.0, w).await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(emu.oom_kills(), 0, "no kill before the growth");
    // A cache fills: 250 MiB per worker; 5 workers need 1450 MiB of the 1024.
    emu.update(|s| s.workload.per_worker_mib = 250.0);
    eventually_within("the OOM kill", CONVERGE, || async {
        Ok((emu.oom_kills() >= 1).then_some(()))
    })
    .await;
    let (workers, _) = eventually_within("workers cut", CONVERGE, || async {
        let (w, t) = setting(deployments, "api").await?;
        Ok((w < 5).then_some((w, t)))
    })
    .await;
    assert_eq!(workers, 1, "cut to the minimum at once");
    let s = status(apps, "api").await.unwrap();
    let d = s.tuning.and_then(|t| t.last_decision).expect("a decision");
    assert!(d.reason.contains("OOM kill"), "{}", d.reason);
    // Workers may grow back as far as the measured 250 MiB each allows: (921 − 200) / 250 = 2.
    tokio::time::sleep(Duration::from_secs(90)).await;
    let (w, _) = setting(deployments, "api").await.unwrap();
    assert!(w <= 2, "grew past what memory allows: {w}");
    assert_eq!(emu.oom_kills(), 1, "a second OOM kill");
    drop(emu);
    lp.ns.delete().await;
}

/// (c) A saturated CPU gets no more concurrency, and a condition says to add CPU or replicas.
#[tokio::test]
async fn saturated_cpu_adds_no_concurrency_and_says_add_cpu() {
    let tuning = json!({"mode": "auto", "targets": {"latencyP95": "1s"}});
    let obj = appserver("api", "1", "2Gi", "sync", tuning);
    // 1 CPU, cpu-bound sync: CPU + 1 = 2 workers.
    let lp = Loop::start("loop-cpu", obj, "GUNICORN_WORKERS", "2").await;
    let (apps, deployments) = (&lp.apps, &lp.deployments);
    // 50 ms of CPU per request, 40 req/s: twice what one core serves.
    let emu = lp.emulate(40.0, Workload::new(0.05, 0.005)).await;
    let c = eventually_within("CpuSaturated=True", TUNE, || async {
        let s = status(apps, "api").await?;
        Ok(cond(&s, "CpuSaturated")
            .filter(|c| c.status == "True")
            .cloned())
    })
    .await;
    assert!(c.message.contains("add CPU or replicas"), "{}", c.message);
    for _ in 0..20 {
        let (w, _) = setting(deployments, "api").await.unwrap();
        assert_eq!(w, 2, "concurrency added to a saturated CPU");
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    drop(emu);
    lp.ns.delete().await;
}

/// A Prometheus of the test's own, scraping the emulator directly, that can be stopped and
/// started again on the same port and data.
struct OwnPrometheus {
    child: Option<std::process::Child>,
    dir: std::path::PathBuf,
    port: u16,
}

impl OwnPrometheus {
    fn start(dir: std::path::PathBuf, target: std::net::SocketAddr, port: u16) -> Self {
        std::fs::create_dir_all(dir.join("data")).unwrap();
        let config = format!(
            "global: {{scrape_interval: 1s, scrape_timeout: 1s}}\nscrape_configs:\n- job_name: emulator\n  static_configs: [{{targets: ['{target}']}}]\n"
        );
        std::fs::write(dir.join("prometheus.yml"), config).unwrap();
        let mut p = Self {
            child: None,
            dir,
            port,
        };
        p.resume();
        p
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn resume(&mut self) {
        let log = std::fs::File::create(self.dir.join("prometheus.log")).unwrap();
        let child = std::process::Command::new("prometheus")
            .arg(format!(
                "--config.file={}",
                self.dir.join("prometheus.yml").display()
            ))
            .arg(format!(
                "--storage.tsdb.path={}",
                self.dir.join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{}", self.port))
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("starting prometheus");
        self.child = Some(child);
    }

    fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for OwnPrometheus {
    fn drop(&mut self) {
        self.stop();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// (d) Prometheus goes away mid-run: the tuner holds with a condition saying why, and resumes
/// when it is back.
#[tokio::test]
async fn prometheus_outage_holds_then_resumes() {
    let port = free_port();
    let url = format!("http://127.0.0.1:{port}");
    let tuning = json!({"mode": "auto", "targets": {"latencyP95": "1s"}, "metrics": {"prometheus": {"url": url}}});
    let obj = appserver("api", "1", "2Gi", "gthread", tuning);
    let lp = Loop::start("loop-prom", obj, "GUNICORN_THREADS", "4").await;
    let (apps, deployments) = (&lp.apps, &lp.deployments);
    let state = std::path::PathBuf::from(std::env::var("E2E_STATE_DIR").unwrap())
        .join(format!("prom-{}", lp.ns.name));
    let emu = lp.emulate(20.0, io_bound()).await;
    let mut prom = OwnPrometheus::start(state, emu.address, port);
    assert_eq!(prom.url(), url);
    eventually_within("the tuner reading this Prometheus", TUNE, || async {
        let s = status(apps, "api").await?;
        Ok(cond(&s, "Tuning").filter(|c| c.status == "True").cloned())
    })
    .await;
    let before = setting(deployments, "api").await.unwrap();
    prom.stop();
    let c = eventually_within("Tuning=False MetricsUnavailable", TUNE, || async {
        let s = status(apps, "api").await?;
        Ok(cond(&s, "Tuning")
            .filter(|c| c.status == "False" && c.reason == "MetricsUnavailable")
            .cloned())
    })
    .await;
    assert!(c.message.contains("cannot be reached"), "{}", c.message);
    // Holding: load rises while blind, nothing changes.
    emu.set_rps(150.0);
    tokio::time::sleep(Duration::from_secs(15)).await;
    assert_eq!(
        setting(deployments, "api").await.unwrap(),
        before,
        "changed while blind"
    );
    prom.resume();
    eventually_within("Tuning=True again", TUNE, || async {
        let s = status(apps, "api").await?;
        Ok(cond(&s, "Tuning").filter(|c| c.status == "True").cloned())
    })
    .await;
    eventually_within(
        "tuning resumed: threads go up for the higher load",
        TUNE,
        || async {
            let (w, t) = setting(deployments, "api").await?;
            Ok((w * t > before.0 * before.1).then_some(()))
        },
    )
    .await;
    drop(emu);
    lp.ns.delete().await;
}

/// (e) recommend mode: the recommendation is in status, the Deployment keeps the formulas.
#[tokio::test]
async fn recommend_mode_reports_and_changes_nothing() {
    let tuning = json!({"mode": "recommend", "targets": {"latencyP95": "1s"}});
    let obj = appserver("api", "1", "2Gi", "gthread", tuning);
    let lp = Loop::start("loop-rec", obj, "GUNICORN_THREADS", "4").await;
    let (apps, deployments) = (&lp.apps, &lp.deployments);
    let emu = lp.emulate(150.0, io_bound()).await;
    let d = eventually_within("a recommendation", TUNE, || async {
        let s = status(apps, "api").await?;
        Ok(s.tuning.and_then(|t| t.last_decision))
    })
    .await;
    assert!(!d.applied, "{d:?}");
    assert_eq!((d.from.workers, d.from.threads), (3, 4));
    assert!(d.to.workers * d.to.threads > 12, "{d:?}");
    let s = status(apps, "api").await.unwrap();
    let t = s.tuning.expect("status.tuning");
    let rec = t.setting.expect("the recommended setting");
    assert_eq!(
        Some(rec),
        t.last_decision.map(|d| d.to),
        "the recommendation is the last decision's"
    );
    for _ in 0..10 {
        assert_eq!(
            setting(deployments, "api").await.unwrap(),
            (3, 4),
            "recommend changed the Deployment"
        );
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    let out = kubectl(&["describe", "appserver", "api", "-n", &lp.ns.name], "").await;
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("Recommended"),
        "describe shows no Recommended event:\n{text}"
    );
    drop(emu);
    lp.ns.delete().await;
}
