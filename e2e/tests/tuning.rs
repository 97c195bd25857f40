//! The tuner on a real control plane, against the shared operator that `run-tests.sh` starts with
//! `--tune-interval 2s --tune-window 10s --prometheus-url $PROMETHEUS_URL`. Nothing scrapes the
//! kwok pods, so Prometheus answers every signal query with no data: what the tuner can act on
//! here is what pod status says (an OOM kill), and what it must do otherwise is hold and say why.

use std::time::Duration;

use anyhow::{Context as _, Result, bail, ensure};
use appserver_core::api::{AppServer, TuningStatus, WorkerSetting};
use appserver_e2e::*;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::events::v1::Event;
use kube::ResourceExt;
use kube::api::{Api, ListParams};
use serde_json::{Value, json};

/// The operator's `--tune-interval` and `--tune-window` in `run-tests.sh`.
const TUNE_INTERVAL: Duration = Duration::from_secs(2);
const TUNE_WINDOW: Duration = Duration::from_secs(10);

/// gunicorn gthread with 2 CPU / 2 GiB: the formulas give (2 × 2) + 1 = 5 workers × 4 threads,
/// and 200 MiB base + 5 × 200 MiB fits the memory. Requests are small so the pod fits the
/// xlarge node next to the other tests' pods.
fn gunicorn(name: &str, tuning: Value) -> Value {
    json!({"metadata": {"name": name}, "spec": {
        "image": "registry.example/api:1", "args": ["app:app"], "replicas": 2,
        "server": {"kind": "gunicorn", "workerClass": "gthread"},
        "nodeSelector": {"appserver.dev/e2e-shape": "xlarge"},
        "resources": {"requests": {"cpu": "100m", "memory": "128Mi"},
                      "limits": {"cpu": "2", "memory": "2Gi"}},
        "tuning": tuning}})
}

fn tuning_status(aps: &AppServer) -> Option<TuningStatus> {
    aps.status.as_ref()?.tuning.clone()
}

/// The Deployment once it has `replicas` ready pods, all of its current template.
async fn rolled_out(deployments: &Api<Deployment>, name: &str, replicas: i32) -> Deployment {
    eventually(
        &format!("Deployment {name} rolled out with {replicas} ready pods"),
        || async {
            let d = deployments.get(name).await?;
            let s = d.status.clone().unwrap_or_default();
            let got = (s.replicas, s.updated_replicas, s.ready_replicas);
            let want = Some(replicas);
            if got == (want, want, want) && s.observed_generation == d.metadata.generation {
                Ok(Some(d))
            } else {
                bail!(
                    "(replicas, updated, ready) = {got:?}, observedGeneration {:?}",
                    s.observed_generation
                )
            }
        },
    )
    .await
}

/// Events about the AppServer `name` with the given reason.
async fn events_for(events: &Api<Event>, name: &str, reason: &str) -> Result<Vec<Event>> {
    Ok(events
        .list(&ListParams::default())
        .await?
        .items
        .into_iter()
        .filter(|e| {
            e.reason.as_deref() == Some(reason)
                && e.regarding.as_ref().is_some_and(|r| {
                    r.kind.as_deref() == Some("AppServer") && r.name.as_deref() == Some(name)
                })
        })
        .collect())
}

/// `cluster.sh oom`: what the kubelet reports after an OOM kill of the `app` container. Retried,
/// because its JSON patch refuses to mix with a concurrent status change.
async fn oom_kill(namespace: &str, pod: &str) {
    let script = repo().join("e2e/cluster.sh");
    eventually(&format!("cluster.sh oom {namespace} {pod} app"), || async {
        let out = tokio::process::Command::new(&script)
            .args(["oom", namespace, pod, "app"])
            .output()
            .await?;
        ensure!(
            out.status.success(),
            "cluster.sh oom failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(Some(()))
    })
    .await;
}

#[tokio::test]
async fn oom_kill_cuts_workers_and_describe_shows_why() {
    let client = client().await;
    let ns = TestNamespace::new(&client, "tuning-oom").await;
    let (apps, deployments, pods, events) = (
        ns.api::<AppServer>(),
        ns.api::<Deployment>(),
        ns.api::<Pod>(),
        ns.api::<Event>(),
    );
    let tuning = json!({"mode": "auto", "cooldown": "30s", "queueSignal": "none"});
    apply(&apps, gunicorn("api", tuning)).await.unwrap();
    deployment_env(&deployments, "api", "GUNICORN_WORKERS", "5").await;
    let d = deployment_env(&deployments, "api", "GUNICORN_THREADS", "4").await;
    let generation = d.metadata.generation;
    rolled_out(&deployments, "api", 2).await;

    // Without signals the tuner holds the formulas' setting: no decision yet.
    let before = apps.get("api").await.unwrap();
    assert!(
        tuning_status(&before)
            .and_then(|t| t.last_decision)
            .is_none(),
        "no decision before the kill: {:?}",
        before.status
    );

    let victim = pods
        .list(&ListParams::default().labels("appserver.dev/name=api"))
        .await
        .unwrap()
        .items
        .into_iter()
        .find(|p| p.metadata.deletion_timestamp.is_none())
        .expect("a pod of the AppServer");
    oom_kill(&ns.name, &victim.name_any()).await;

    // The cut, 5 × 4 → 1 × 20 (tuner::oom_cut: the minimum of 1 worker, threads keep the 20
    // slots, within threads.max 64), reaches the Deployment at the next observation.
    let cut = deployment_env(&deployments, "api", "GUNICORN_WORKERS", "1").await;
    let threads: u32 = env(&cut, "GUNICORN_THREADS")
        .expect("GUNICORN_THREADS")
        .parse()
        .expect("a number");
    assert_eq!(threads, 20, "threads rose to keep 5 × 4 = 20 slots");
    assert!(
        cut.metadata.generation > generation,
        "the pod template changed"
    );
    rolled_out(&deployments, "api", 2).await;

    let aps = eventually("status.tuning.lastDecision", || async {
        let aps = apps.get("api").await?;
        Ok(tuning_status(&aps)
            .and_then(|t| t.last_decision)
            .is_some()
            .then_some(aps))
    })
    .await;
    let status = tuning_status(&aps).unwrap();
    let decision = status.last_decision.clone().unwrap();
    assert!(decision.applied, "auto mode applies: {decision:?}");
    assert_eq!(
        (decision.from, decision.to),
        (
            WorkerSetting {
                workers: 5,
                threads: 4
            },
            WorkerSetting {
                workers: 1,
                threads: 20
            }
        ),
        "{decision:?}"
    );
    assert!(
        decision.reason.contains("OOM kill"),
        "the reason names the kill: {}",
        decision.reason
    );
    // (2048 MiB limit − 200 MiB base) / 5 workers ≈ 370 MiB each, at least.
    assert!(
        decision
            .reason
            .contains("each worker needs more than 370 MiB"),
        "the reason says what the kill taught: {}",
        decision.reason
    );
    assert!(decision.signals.oom_kills >= 1, "{decision:?}");
    assert_eq!(status.history, vec![decision.clone()]);
    assert_eq!(
        status.setting,
        Some(WorkerSetting {
            workers: 1,
            threads: 20
        })
    );
    let explanation = aps.status.as_ref().unwrap().explanation.clone();
    assert!(
        explanation
            .as_deref()
            .is_some_and(|e| e.starts_with("tuned to 1 workers × 20 threads")),
        "{explanation:?}"
    );

    let event = eventually("an OOMKilled Event on the AppServer", || async {
        Ok(events_for(&events, "api", "OOMKilled")
            .await?
            .into_iter()
            .next())
    })
    .await;
    assert_eq!(event.type_.as_deref(), Some("Warning"));
    let note = event.note.unwrap_or_default();
    assert!(note.contains(&decision.reason), "{note}");

    // `kubectl describe` prints the status, decision included, as a person reads it.
    let out = kubectl(&["describe", "appserver", "api", "-n", &ns.name], "").await;
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "kubectl describe: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The generic describer prints status.tuning.lastDecision as a "Last Decision:" block
    // (fields sorted, so "Last Evaluation:" follows it).
    let block = text
        .split_once("Last Decision:")
        .and_then(|(_, rest)| rest.split_once("Last Evaluation:"))
        .map(|(block, _)| block.split_whitespace().collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|| panic!("no Last Decision block in kubectl describe:\n{text}"));
    let kills = format!("Oom Kills: {}", decision.signals.oom_kills);
    for want in ["Applied: true", &kills, &decision.reason] {
        assert!(
            block.contains(want),
            "the Last Decision block lacks {want:?}:\n{text}"
        );
    }
    // So does the Event, under Events.
    assert!(
        text.split_once("Events:")
            .is_some_and(|(_, events)| events.contains("OOMKilled")),
        "{text}"
    );

    // The same kill is not acted on twice. At 1 worker a second count would not change the
    // setting but would hold with OomAtMinimum, so that is watched for as well. The watch lasts
    // past the tune window, so it covers both the observations that read pod status since the
    // change and the first ones over a full window after it.
    let watch = TUNE_WINDOW + 3 * TUNE_INTERVAL;
    let until = tokio::time::Instant::now() + watch;
    while tokio::time::Instant::now() < until {
        let aps = apps.get("api").await.unwrap();
        let t = tuning_status(&aps).unwrap_or_default();
        assert_eq!(
            t.history.len(),
            1,
            "one kill, one decision: {:?}",
            t.history
        );
        assert_eq!(t.last_decision.as_ref(), Some(&decision));
        let evaluation = t.last_evaluation.unwrap_or_default();
        assert!(
            !evaluation.contains("at the minimum"),
            "the kill was counted again: {evaluation}"
        );
        let conditions = &aps.status.as_ref().unwrap().conditions;
        assert!(
            !conditions.iter().any(|c| c.reason == "OomAtMinimum"),
            "{conditions:?}"
        );
        let d = deployments.get("api").await.unwrap();
        assert_eq!(env(&d, "GUNICORN_WORKERS").as_deref(), Some("1"));
        assert_eq!(env(&d, "GUNICORN_THREADS").as_deref(), Some("20"));
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    // Past the window the tuner evaluates again, from 1 × 20, and holds for want of signals.
    let aps = apps.get("api").await.unwrap();
    let t = tuning_status(&aps).unwrap();
    let evaluation = t.last_evaluation.unwrap_or_default();
    assert!(
        evaluation.starts_with("holding 1×20: no data for"),
        "{evaluation}"
    );
    assert!(
        events_for(&events, "api", "OomAtMinimum")
            .await
            .unwrap()
            .is_empty(),
        "no OomAtMinimum Event"
    );
    ns.delete().await;
}

#[tokio::test]
async fn recommend_mode_without_metrics_holds_and_says_why() {
    let client = client().await;
    let ns = TestNamespace::new(&client, "tuning-nometrics").await;
    let (apps, deployments, events) = (
        ns.api::<AppServer>(),
        ns.api::<Deployment>(),
        ns.api::<Event>(),
    );
    apply(&apps, gunicorn("api", json!({"mode": "recommend"})))
        .await
        .unwrap();
    rolled_out(&deployments, "api", 2).await;

    // Once its pods run, each signal query names them and Prometheus has nothing for them.
    let condition = eventually(
        "Tuning=False MetricsUnavailable naming the signals",
        || async {
            let aps = apps.get("api").await?;
            let c = aps
                .status
                .unwrap_or_default()
                .conditions
                .into_iter()
                .find(|c| c.type_ == "Tuning")
                .context("no Tuning condition")?;
            ensure!(
                (c.status.as_str(), c.reason.as_str()) == ("False", "MetricsUnavailable"),
                "Tuning is {} {}: {}",
                c.status,
                c.reason,
                c.message
            );
            ensure!(
                c.message
                    .contains("no data for requestRate, latencyP95, cpu"),
                "{}",
                c.message
            );
            Ok(Some(c))
        },
    )
    .await;
    assert!(
        condition.message.starts_with("holding 5×4: "),
        "{}",
        condition.message
    );
    // Each missing signal with the reason Prometheus gave.
    let prometheus = std::env::var("PROMETHEUS_URL").expect("PROMETHEUS_URL from cluster.sh env");
    for signal in ["requestRate", "latencyP95", "cpu"] {
        let want = format!("{signal}: no data from {prometheus}");
        assert!(
            condition.message.contains(&want),
            "{want:?} in {}",
            condition.message
        );
    }

    let event = eventually("a MetricsUnavailable Event", || async {
        Ok(events_for(&events, "api", "MetricsUnavailable")
            .await?
            .into_iter()
            .next())
    })
    .await;
    assert_eq!(event.type_.as_deref(), Some("Warning"));
    assert!(
        event.note.as_deref().is_some_and(|n| n.contains("no data")),
        "{:?}",
        event.note
    );

    // Holding changes nothing: the formulas' numbers stay, and there is no decision.
    let d = deployments.get("api").await.unwrap();
    assert_eq!(env(&d, "GUNICORN_WORKERS").as_deref(), Some("5"));
    assert_eq!(env(&d, "GUNICORN_THREADS").as_deref(), Some("4"));
    let aps = apps.get("api").await.unwrap();
    let t = tuning_status(&aps).expect("status.tuning in recommend mode");
    assert!(t.last_decision.is_none(), "{t:?}");
    assert!(t.history.is_empty(), "{t:?}");
    assert_eq!(
        t.setting,
        Some(WorkerSetting {
            workers: 5,
            threads: 4
        })
    );
    ns.delete().await;
}

fn container_names(d: &Deployment) -> Vec<String> {
    d.spec
        .as_ref()
        .and_then(|s| s.template.spec.as_ref())
        .map(|p| p.containers.iter().map(|c| c.name.clone()).collect())
        .unwrap_or_default()
}

#[tokio::test]
async fn sidecar_queue_signal_adds_the_backlog_exporter() {
    let client = client().await;
    let ns = TestNamespace::new(&client, "tuning-sidecar").await;
    let (apps, deployments) = (ns.api::<AppServer>(), ns.api::<Deployment>());
    let with = |queue: &str| {
        let mut obj = gunicorn("api", json!({"mode": "recommend", "queueSignal": queue}));
        obj["spec"]["port"] = json!(8000);
        obj["spec"]["replicas"] = json!(1);
        obj
    };
    apply(&apps, with("sidecar")).await.unwrap();
    let d = eventually("a backlog-exporter container", || async {
        let d = deployments
            .get_opt("api")
            .await?
            .context("no Deployment yet")?;
        let names = container_names(&d);
        ensure!(names == ["app", "backlog-exporter"], "containers {names:?}");
        Ok(Some(d))
    })
    .await;
    let pod = d.spec.unwrap().template.spec.unwrap();
    let sidecar = &pod.containers[1];
    assert_eq!(
        sidecar.args.as_deref().unwrap_or_default(),
        [
            "backlog-exporter",
            "--port",
            "9102",
            "--listen-port",
            "8000"
        ]
    );
    let port = &sidecar.ports.as_deref().unwrap_or_default()[0];
    assert_eq!(
        (port.name.as_deref(), port.container_port),
        (Some("backlog"), 9102)
    );
    // kwok runs both containers: the pod becomes ready with the sidecar.
    rolled_out(&deployments, "api", 1).await;

    apply(&apps, with("none")).await.unwrap();
    eventually("the backlog-exporter container removed", || async {
        let d = deployments.get("api").await?;
        let names = container_names(&d);
        ensure!(names == ["app"], "containers {names:?}");
        Ok(Some(()))
    })
    .await;
    rolled_out(&deployments, "api", 1).await;
    ns.delete().await;
}
