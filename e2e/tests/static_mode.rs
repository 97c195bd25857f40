//! Static mode on a real control plane: CRD validation, server-side apply, status, rollouts,
//! drift repair, garbage collection, Degraded reporting and node-driven sizing.

use anyhow::bail;
use appserver_core::api::AppServer;
use appserver_e2e::*;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Node, Service};
use k8s_openapi::api::events::v1::Event;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams};
use serde_json::{Value, json};

/// A sample, the node shape it is pinned to, and the env vars it must get there.
type Expectation = (
    &'static str,
    &'static str,
    &'static [(&'static str, &'static str)],
);

const SAMPLES: &[Expectation] = &[
    // limits 1 CPU / 1 GiB: (2×1)+1 = 3 workers, memory allows 3.
    (
        "gunicorn.yaml",
        "small",
        &[("GUNICORN_WORKERS", "3"), ("GUNICORN_THREADS", "4")],
    ),
    // no resources: the medium node's 2 CPU, one event loop per core.
    ("uvicorn.yaml", "medium", &[("WEB_CONCURRENCY", "2")]),
    // 2 CPU mixed: 5 workers × 2 threads.
    (
        "puma.yaml",
        "large",
        &[("WEB_CONCURRENCY", "5"), ("RAILS_MAX_THREADS", "2")],
    ),
    // requests 2 CPU, cpu-bound processes: 2 + 1.
    ("unicorn.yaml", "medium", &[("WEB_CONCURRENCY", "3")]),
    // 1 CPU io-bound processes: 1 × 4.
    ("php-fpm.yaml", "large", &[("PHP_FPM_PM_MAX_CHILDREN", "4")]),
    // 4 CPU: four event loops.
    ("node.yaml", "xlarge", &[("WEB_CONCURRENCY", "4")]),
    // 1 CPU mixed, threads named: 3 × 2.
    (
        "generic.yaml",
        "large",
        &[("APP_PROCESSES", "3"), ("APP_THREADS", "2")],
    ),
];

fn pinned(mut obj: Value, shape: &str) -> Value {
    obj["spec"]["nodeSelector"] = json!({"appserver.dev/e2e-shape": shape});
    obj
}

#[tokio::test]
async fn every_sample_reconciles_for_its_node_shape() {
    let client = client().await;
    let ns = TestNamespace::new(&client, "samples").await;
    let (apps, deployments, services) = (
        ns.api::<AppServer>(),
        ns.api::<Deployment>(),
        ns.api::<Service>(),
    );
    for (file, shape, _) in SAMPLES {
        apply(&apps, pinned(sample(file), shape))
            .await
            .unwrap_or_else(|e| panic!("applying {file}: {e}"));
    }
    for (file, _, expected) in SAMPLES {
        let name = sample(file)["metadata"]["name"]
            .as_str()
            .unwrap()
            .to_string();
        for (var, value) in *expected {
            deployment_env(&deployments, &name, var, value).await;
        }
        let aps = ready(&apps, &name).await;
        let status = aps.status.unwrap();
        assert!(
            status.workers.is_some() && status.explanation.is_some(),
            "{file}: {status:?}"
        );
        let port = sample(file)["spec"]["port"].as_i64().unwrap();
        let svc = services
            .get(&name)
            .await
            .unwrap_or_else(|e| panic!("{file}: Service: {e}"));
        assert_eq!(
            i64::from(svc.spec.unwrap().ports.unwrap()[0].port),
            port,
            "{file}"
        );
        let d = deployments.get(&name).await.unwrap();
        assert_eq!(
            d.status.unwrap().ready_replicas,
            Some(sample(file)["spec"]["replicas"].as_i64().unwrap() as i32),
            "{file}"
        );
    }
    ns.delete().await;
}

fn gunicorn(name: &str, cpu: &str) -> Value {
    json!({"metadata": {"name": name}, "spec": {
        "image": "registry.example/api:1", "args": ["app:app"], "replicas": 1,
        "server": {"kind": "gunicorn"}, "nodeSelector": {"appserver.dev/e2e-shape": "xlarge"},
        "resources": {"requests": {"cpu": "100m", "memory": "128Mi"}, "limits": {"cpu": cpu, "memory": "4Gi"}}}})
}

#[tokio::test]
async fn a_spec_change_rolls_the_deployment() {
    let client = client().await;
    let ns = TestNamespace::new(&client, "rollout").await;
    let (apps, deployments) = (ns.api::<AppServer>(), ns.api::<Deployment>());
    apply(&apps, gunicorn("api", "1")).await.unwrap();
    let first = ready(&apps, "api").await;
    let before = deployment_env(&deployments, "api", "GUNICORN_WORKERS", "3").await;

    apply(&apps, gunicorn("api", "2")).await.unwrap();
    let after = deployment_env(&deployments, "api", "GUNICORN_WORKERS", "5").await;
    assert!(
        after.metadata.generation > before.metadata.generation,
        "the pod template changed"
    );
    let second = ready(&apps, "api").await;
    assert!(second.metadata.generation > first.metadata.generation);
    assert_eq!(second.status.as_ref().unwrap().workers, Some(5));
    // The rollout replaced the pods: every ready pod runs the new template.
    let d = eventually("the rollout to finish", || async {
        let d = deployments.get("api").await?;
        let s = d.status.clone().unwrap_or_default();
        Ok(
            (s.updated_replicas == Some(1) && s.replicas == Some(1) && s.ready_replicas == Some(1))
                .then_some(d),
        )
    })
    .await;
    assert_eq!(env(&d, "GUNICORN_WORKERS").as_deref(), Some("5"));
    ns.delete().await;
}

#[tokio::test]
async fn a_deleted_deployment_is_recreated() {
    let client = client().await;
    let ns = TestNamespace::new(&client, "recreate").await;
    let (apps, deployments) = (ns.api::<AppServer>(), ns.api::<Deployment>());
    apply(&apps, gunicorn("api", "1")).await.unwrap();
    let old = deployment_env(&deployments, "api", "GUNICORN_WORKERS", "3").await;
    deployments
        .delete("api", &DeleteParams::foreground())
        .await
        .unwrap();
    let new = eventually("a new Deployment", || async {
        Ok(deployments
            .get_opt("api")
            .await?
            .filter(|d| d.metadata.uid != old.metadata.uid))
    })
    .await;
    assert_eq!(env(&new, "GUNICORN_WORKERS").as_deref(), Some("3"));
    ready(&apps, "api").await;
    ns.delete().await;
}

#[tokio::test]
async fn a_hand_edit_of_a_managed_field_is_put_back_and_other_fields_are_kept() {
    let client = client().await;
    let ns = TestNamespace::new(&client, "drift").await;
    let (apps, deployments) = (ns.api::<AppServer>(), ns.api::<Deployment>());
    apply(&apps, gunicorn("api", "1")).await.unwrap();
    deployment_env(&deployments, "api", "GUNICORN_WORKERS", "3").await;
    // What a person with `kubectl edit` does: change a managed value, add an annotation.
    let edit = json!({"metadata": {"annotations": {"team.example/owner": "payments"}},
        "spec": {"template": {"spec": {"containers": [{"name": "app", "env": [{"name": "GUNICORN_WORKERS", "value": "99"}]}]}}}});
    deployments
        .patch(
            "api",
            &PatchParams {
                field_manager: Some("kubectl-edit".into()),
                ..Default::default()
            },
            &Patch::Strategic(&edit),
        )
        .await
        .unwrap();
    let restored = deployment_env(&deployments, "api", "GUNICORN_WORKERS", "3").await;
    let annotations = restored.metadata.annotations.unwrap_or_default();
    assert_eq!(
        annotations.get("team.example/owner").map(String::as_str),
        Some("payments"),
        "unmanaged fields are kept"
    );
    ns.delete().await;
}

#[tokio::test]
async fn deleting_the_appserver_collects_its_objects() {
    let client = client().await;
    let ns = TestNamespace::new(&client, "gc").await;
    let (apps, deployments, services) = (
        ns.api::<AppServer>(),
        ns.api::<Deployment>(),
        ns.api::<Service>(),
    );
    apply(&apps, gunicorn("api", "1")).await.unwrap();
    ready(&apps, "api").await;
    assert!(services.get_opt("api").await.unwrap().is_some());
    apps.delete("api", &DeleteParams::default()).await.unwrap();
    eventually(
        "the Deployment and Service to be garbage-collected",
        || async {
            let left = (
                deployments.get_opt("api").await?.is_some(),
                services.get_opt("api").await?.is_some(),
            );
            if left == (false, false) {
                Ok(Some(()))
            } else {
                bail!("still there (deployment, service): {left:?}")
            }
        },
    )
    .await;
    ns.delete().await;
}

#[tokio::test]
async fn invalid_appservers_are_refused_with_their_messages() {
    let client = client().await;
    let ns = TestNamespace::new(&client, "invalid").await;
    let path = repo().join("e2e/testdata/invalid-appservers.yaml");
    let data: Value = serde_yaml::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let cases = data["cases"].as_array().unwrap();
    assert!(cases.len() >= 20, "the list covers the API");
    let mut failures = Vec::new();
    for case in cases {
        let name = case["name"].as_str().unwrap();
        let obj = json!({"apiVersion": "appserver.dev/v1alpha1", "kind": "AppServer",
            "metadata": {"name": name, "namespace": ns.name}, "spec": merged(&data["base"], &case["spec"])});
        let out = kubectl(&["apply", "-f", "-"], &obj.to_string()).await;
        let stderr = String::from_utf8_lossy(&out.stderr);
        let expect = case["expect"].as_str().unwrap();
        if out.status.success() || !stderr.contains(expect) {
            failures.push(format!(
                "{name}: expected {expect:?}, got exit {:?}: {stderr}",
                out.status.code()
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    assert!(
        ns.api::<AppServer>()
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
            .is_empty(),
        "nothing was created"
    );
    ns.delete().await;
}

/// `patch` over `base`; a null removes the key.
fn merged(base: &Value, patch: &Value) -> Value {
    let mut out = base.clone();
    for (k, v) in patch.as_object().into_iter().flatten() {
        match (v, out.get(k)) {
            (Value::Null, _) => {
                out.as_object_mut().unwrap().remove(k);
            }
            (Value::Object(_), Some(Value::Object(_))) => out[k] = merged(&out[k], v),
            _ => out[k] = v.clone(),
        }
    }
    out
}

#[tokio::test]
async fn an_appserver_that_cannot_fit_is_degraded_with_an_event() {
    let client = client().await;
    let ns = TestNamespace::new(&client, "degraded").await;
    let apps = ns.api::<AppServer>();
    let mut obj = gunicorn("ml", "2");
    obj["spec"]["resources"]["limits"]["memory"] = json!("1Gi");
    obj["spec"]["memory"] = json!({"baseMiB": 300, "perWorkerMiB": 1536});
    apply(&apps, obj).await.unwrap();
    let degraded = condition(&apps, "ml", "Degraded", "True").await;
    assert_eq!(degraded.reason, "DoesNotFit");
    assert!(
        degraded.message.contains("1 worker(s) need 1836 MiB"),
        "{}",
        degraded.message
    );
    let ready = condition(&apps, "ml", "Ready", "False").await;
    assert_eq!(ready.reason, "DoesNotFit");
    let events = ns.api::<Event>();
    let event = eventually("a DoesNotFit Event", || async {
        let list = events.list(&ListParams::default()).await?;
        Ok(list
            .items
            .into_iter()
            .find(|e| e.reason.as_deref() == Some("DoesNotFit")))
    })
    .await;
    assert_eq!(event.type_.as_deref(), Some("Warning"));
    assert_eq!(event.regarding.and_then(|r| r.name).as_deref(), Some("ml"));
    assert!(
        ns.api::<Deployment>()
            .get_opt("ml")
            .await
            .unwrap()
            .is_none(),
        "nothing half-applied"
    );
    ns.delete().await;
}

#[tokio::test]
async fn a_new_smaller_node_in_the_pool_resizes() {
    let client = client().await;
    let ns = TestNamespace::new(&client, "nodepool").await;
    let (apps, deployments) = (ns.api::<AppServer>(), ns.api::<Deployment>());
    let nodes = Api::<Node>::all(client.clone());
    let pool = format!("resize-{}", std::process::id());
    let node = |name: &str, cpu: &str| -> Node {
        serde_json::from_value(json!({"metadata": {"name": name, "labels": {"e2e.appserver.dev/pool": pool}},
            "spec": {"unschedulable": true},
            "status": {"allocatable": {"cpu": cpu, "memory": "8Gi", "pods": "10"}, "capacity": {"cpu": cpu, "memory": "8Gi", "pods": "10"}}}))
        .unwrap()
    };
    let names = [format!("{pool}-big"), format!("{pool}-small")];
    nodes
        .create(&Default::default(), &node(&names[0], "4"))
        .await
        .unwrap();
    // No resources: sized for the smallest schedulable node matching the selector.
    let obj = json!({"metadata": {"name": "api"}, "spec": {"image": "x", "args": ["app:app"], "replicas": 0,
        "server": {"kind": "gunicorn"}, "nodeSelector": {"e2e.appserver.dev/pool": pool}}});
    apply(&apps, obj).await.unwrap();
    // Cordoned nodes do not count, so nothing to size for yet.
    condition(&apps, "api", "Degraded", "True").await;
    uncordon(&nodes, &names[0]).await;
    deployment_env(&deployments, "api", "GUNICORN_WORKERS", "9").await;
    nodes
        .create(&Default::default(), &node(&names[1], "1"))
        .await
        .unwrap();
    uncordon(&nodes, &names[1]).await;
    deployment_env(&deployments, "api", "GUNICORN_WORKERS", "3").await;
    for n in &names {
        let _ = nodes.delete(n, &DeleteParams::default()).await;
    }
    ns.delete().await;
}

async fn uncordon(nodes: &Api<Node>, name: &str) {
    let patch = json!({"spec": {"unschedulable": false}});
    nodes
        .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap();
}

#[test]
fn merged_removes_nulls_and_merges_objects() {
    let base = json!({"a": 1, "b": {"c": 2, "d": 3}});
    assert_eq!(
        merged(&base, &json!({"a": null, "b": {"c": 9}})),
        json!({"b": {"c": 9, "d": 3}})
    );
}

#[tokio::test]
async fn the_oom_helper_marks_a_pod_oom_killed() {
    let client = client().await;
    let ns = TestNamespace::new(&client, "oom").await;
    let apps = ns.api::<AppServer>();
    apply(&apps, gunicorn("api", "1")).await.unwrap();
    ready(&apps, "api").await;
    let pods = ns.api::<k8s_openapi::api::core::v1::Pod>();
    let pod = pods
        .list(&ListParams::default().labels("appserver.dev/name=api"))
        .await
        .unwrap()
        .items
        .remove(0);
    let name = kube::ResourceExt::name_any(&pod);
    let script = repo().join("e2e/cluster.sh");
    let out = tokio::process::Command::new(&script)
        .args(["oom", &ns.name, &name])
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "cluster.sh oom: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let status = pods
        .get(&name)
        .await
        .unwrap()
        .status
        .unwrap()
        .container_statuses
        .unwrap()
        .remove(0);
    assert_eq!(status.restart_count, 1);
    let terminated = status
        .last_state
        .and_then(|s| s.terminated)
        .expect("lastState.terminated");
    assert_eq!(
        (terminated.reason.as_deref(), terminated.exit_code),
        (Some("OOMKilled"), 137)
    );
    ns.delete().await;
}
