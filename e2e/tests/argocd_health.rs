//! Argo CD's view of AppServers: `argocd/health.lua`, run by a real Lua interpreter through
//! `argocd/health_test.lua`, on the hand-written objects in `argocd/testdata/` and on AppServers
//! the operator drove into each state on the e2e cluster. Also: `argocd/argocd-cm-patch.yaml`
//! inlines the same script, and the example Applications sync with server-side apply.
//!
//! The Lua tests need `lua5.4` and `lua-dkjson` (Debian packages); without them they fail, they
//! do not skip.

use std::path::{Path, PathBuf};

use appserver_core::api::AppServer;
use appserver_e2e::*;
use kube::api::{Api, ApiResource, DynamicObject, Patch, PatchParams};
use serde_json::{Value, json};

const INSTALL: &str = "apt-get install lua5.4 lua-dkjson";

/// What the health check returned.
#[derive(Debug)]
struct Health {
    status: String,
    message: String,
}

/// Runs `argocd/health.lua` on the object in a JSON file.
fn health_of_file(path: &Path) -> Health {
    let argocd = repo().join("argocd");
    let out = std::process::Command::new("lua5.4")
        .arg(argocd.join("health_test.lua"))
        .arg(argocd.join("health.lua"))
        .arg(path)
        .output()
        .unwrap_or_else(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                panic!("lua5.4 is not installed, so the Argo CD health check cannot be tested: {INSTALL}")
            }
            panic!("running lua5.4: {e}")
        });
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "lua5.4 argocd/health_test.lua argocd/health.lua {} failed ({}): {stderr}",
        path.display(),
        out.status
    );
    let stdout = String::from_utf8(out.stdout).expect("UTF-8 output");
    let (status, message) = stdout.split_once('\n').unwrap_or((&stdout, ""));
    Health {
        status: status.to_string(),
        message: message.trim_end_matches('\n').to_string(),
    }
}

/// Each file in `argocd/testdata/` with the status and message the check must give.
const CASES: &[(&str, &str, &str)] = &[
    (
        "healthy.json",
        "Healthy",
        "2/2 pods ready with 3 workers × 4 threads",
    ),
    (
        "progressing-new.json",
        "Progressing",
        "waiting for the operator to observe generation 1",
    ),
    (
        "progressing-generation.json",
        "Progressing",
        "waiting for the operator to observe generation 3",
    ),
    (
        "progressing-stale-ready.json",
        "Progressing",
        "waiting for the operator to observe generation 3",
    ),
    (
        "progressing-rollout.json",
        "Progressing",
        "1/2 pods updated, 1 ready",
    ),
    (
        "progressing-no-conditions.json",
        "Progressing",
        "waiting for the operator to report a Ready condition",
    ),
    (
        "degraded-does-not-fit.json",
        "Degraded",
        "DoesNotFit: 1 worker(s) need 1736 MiB (200 MiB base + 1 × 1536 MiB) but only 921 MiB of the 1024 MiB memory limit is planned for (90%): raise the memory limit, lower spec.memory.perWorkerMiB or spec.tuning.workers.min",
    ),
    (
        "degraded-recommend.json",
        "Degraded",
        "DoesNotFit: 1 worker(s) need 1736 MiB (200 MiB base + 1 × 1536 MiB) but only 921 MiB of the 1024 MiB memory limit is planned for (90%): raise the memory limit, lower spec.memory.perWorkerMiB or spec.tuning.workers.min",
    ),
    (
        "suspended-recommend.json",
        "Suspended",
        "recommend-only: the tuner recommends and applies nothing (2/2 pods ready with 3 workers × 4 threads)",
    ),
    (
        "unknown-ready.json",
        "Unknown",
        "the operator lost track of the Deployment",
    ),
];

#[test]
fn health_check_gives_each_testdata_case_its_status() {
    let dir = repo().join("argocd/testdata");
    let mut files: Vec<String> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|f| f.ends_with(".json"))
        .collect();
    files.sort();
    let mut listed: Vec<String> = CASES.iter().map(|c| c.0.to_string()).collect();
    listed.sort();
    assert_eq!(
        files, listed,
        "every file in argocd/testdata/ has an expectation in CASES, and every case a file"
    );
    let mut failures = Vec::new();
    for (file, status, message) in CASES {
        let got = health_of_file(&dir.join(file));
        if got.status != *status || got.message != *message {
            failures.push(format!(
                "{file}: expected {status} {message:?}, got {} {:?}",
                got.status, got.message
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn the_argocd_cm_patch_inlines_health_lua() {
    let dir = repo().join("argocd");
    let script = std::fs::read_to_string(dir.join("health.lua")).unwrap();
    let patch: Value =
        serde_yaml::from_str(&std::fs::read_to_string(dir.join("argocd-cm-patch.yaml")).unwrap())
            .expect("argocd/argocd-cm-patch.yaml is YAML");
    assert_eq!(
        (patch["kind"].as_str(), patch["metadata"]["name"].as_str()),
        (Some("ConfigMap"), Some("argocd-cm"))
    );
    let inlined = patch["data"]["resource.customizations.health.appserver.dev_AppServer"]
        .as_str()
        .expect("data.resource.customizations.health.appserver.dev_AppServer");
    if inlined != script {
        let line = inlined
            .lines()
            .zip(script.lines())
            .position(|(a, b)| a != b)
            .unwrap_or_else(|| inlined.lines().count().min(script.lines().count()));
        panic!(
            "argocd/argocd-cm-patch.yaml inlines a different script than argocd/health.lua \
             (first difference at line {} of the script): run argocd/cm-patch.sh",
            line + 1
        );
    }
}

#[test]
fn the_example_applications_sync_with_server_side_apply() {
    let path = repo().join("argocd/application.yaml");
    let text = std::fs::read_to_string(&path).unwrap();
    let mut apps = 0;
    for doc in text.split("\n---\n") {
        let app: Value = serde_yaml::from_str(doc).expect("YAML");
        if app.is_null() {
            continue; // the leading comments
        }
        assert_eq!(app["kind"], "Application", "{app}");
        let options = app["spec"]["syncPolicy"]["syncOptions"].as_array().unwrap();
        assert!(
            options.iter().any(|o| o == "ServerSideApply=true"),
            "{}: ServerSideApply=true",
            app["metadata"]["name"]
        );
        apps += 1;
    }
    assert_eq!(apps, 2, "the operator's Application and the AppServers'");
}

// ---- on the e2e cluster, with the operator running ----

fn gunicorn(name: &str) -> Value {
    json!({"metadata": {"name": name}, "spec": {
        "image": "registry.example/api:1", "args": ["app:app"], "replicas": 1,
        "server": {"kind": "gunicorn"}, "nodeSelector": {"appserver.dev/e2e-shape": "xlarge"},
        "resources": {"requests": {"cpu": "100m", "memory": "128Mi"}, "limits": {"cpu": "1", "memory": "1Gi"}}}})
}

/// Server-side apply, returning the object exactly as the API server answered.
async fn apply_json(api: &Api<DynamicObject>, mut obj: Value) -> Value {
    let name = obj["metadata"]["name"].as_str().unwrap().to_string();
    obj["apiVersion"] = json!("appserver.dev/v1alpha1");
    obj["kind"] = json!("AppServer");
    let applied = api
        .patch(
            &name,
            &PatchParams::apply("e2e-user").force(),
            &Patch::Apply(&obj),
        )
        .await
        .unwrap_or_else(|e| panic!("applying {name}: {e}"));
    serde_json::to_value(applied).unwrap()
}

/// The AppServer as JSON once its status is for the current generation and the condition
/// `type_` has `status` for it too.
async fn settled(api: &Api<DynamicObject>, name: &str, type_: &str, status: &str) -> Value {
    eventually(&format!("AppServer {name} {type_}={status}"), || async {
        let obj = serde_json::to_value(api.get(name).await?)?;
        let generation = &obj["metadata"]["generation"];
        let current = obj["status"]["observedGeneration"] == *generation
            && obj["status"]["conditions"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|c| {
                    c["type"] == type_
                        && c["status"] == status
                        && c["observedGeneration"] == *generation
                });
        Ok(current.then_some(obj))
    })
    .await
}

/// Writes the object to `$E2E_STATE_DIR/argocd-objects/<file>` and runs the check on it.
fn health_of(obj: &Value, file: &str) -> Health {
    let dir = PathBuf::from(std::env::var_os("E2E_STATE_DIR").unwrap()).join("argocd-objects");
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(file);
    std::fs::write(&path, serde_json::to_string_pretty(obj).unwrap()).unwrap();
    health_of_file(&path)
}

fn expect(h: &Health, status: &str, message: &str, file: &str) {
    assert!(
        h.status == status && h.message.starts_with(message),
        "{file}: expected {status} {message:?}…, got {} {:?} (the object is in $E2E_STATE_DIR/argocd-objects/{file})",
        h.status,
        h.message
    );
}

/// What docs/gitops.md promises Argo CD users: the operator writes the AppServer's status and
/// never its spec, and its Deployment and Service are children (controller owner reference) that
/// do not carry Argo CD's tracking label or annotation, so Argo CD neither diffs nor prunes them.
async fn nothing_drifts(client: &kube::Client, namespace: &str, aps: &Value) {
    let name = aps["metadata"]["name"].as_str().unwrap();
    let entries = aps["metadata"]["managedFields"].as_array().unwrap();
    assert!(
        entries.iter().any(|e| e["manager"] == "appserver-operator"),
        "the operator wrote the status: {entries:?}"
    );
    for entry in entries {
        if entry["manager"] == "appserver-operator" {
            let fields: Vec<&String> = entry["fieldsV1"].as_object().unwrap().keys().collect();
            assert!(
                entry["subresource"] == "status" && fields == ["f:status"],
                "the operator writes only the status: {entry}"
            );
        }
    }
    let kinds = [
        ApiResource::erase::<k8s_openapi::api::apps::v1::Deployment>(&()),
        ApiResource::erase::<k8s_openapi::api::core::v1::Service>(&()),
    ];
    for kind in kinds {
        let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), namespace, &kind);
        let child = serde_json::to_value(api.get(name).await.unwrap()).unwrap();
        let owner = &child["metadata"]["ownerReferences"][0];
        assert!(
            owner["kind"] == "AppServer"
                && owner["uid"] == aps["metadata"]["uid"]
                && owner["controller"] == true,
            "{} {name} is the AppServer's child: {owner}",
            kind.kind
        );
        let meta = &child["metadata"];
        assert!(
            meta["labels"].get("app.kubernetes.io/instance").is_none()
                && meta["annotations"]
                    .get("argocd.argoproj.io/tracking-id")
                    .is_none(),
            "{} {name} carries no Argo CD tracking mark: {meta}",
            kind.kind
        );
    }
}

#[tokio::test]
async fn argo_cd_health_of_appservers_the_operator_drove() {
    let client = client().await;
    let ns = TestNamespace::new(&client, "argocd").await;
    let api: Api<DynamicObject> = Api::namespaced_with(
        client.clone(),
        &ns.name,
        &ApiResource::erase::<AppServer>(&()),
    );

    // Ready: the gunicorn sample, 2 replicas of 1 CPU / 1 GiB, on the xlarge node.
    let mut ready = sample("gunicorn.yaml");
    ready["spec"]["nodeSelector"] = json!({"appserver.dev/e2e-shape": "xlarge"});
    ready["spec"]["resources"]["requests"] = json!({"cpu": "100m", "memory": "128Mi"});
    // What Argo CD marks the objects it syncs with (label and annotation tracking).
    ready["metadata"]["labels"] = json!({"app.kubernetes.io/instance": "shop-appservers"});
    ready["metadata"]["annotations"] = json!({"argocd.argoproj.io/tracking-id":
        format!("shop-appservers:appserver.dev/AppServer:{}/gunicorn-api", ns.name)});
    // DoesNotFit: one 1536 MiB worker plus the 200 MiB base in a 1 GiB limit.
    let mut degraded = gunicorn("ml");
    degraded["spec"]["memory"] = json!({"perWorkerMiB": 1536});
    // Pods asking for 100 CPUs stay Pending on a 16-CPU node: the rollout never completes.
    let mut stuck = gunicorn("too-big");
    stuck["spec"]["resources"] = json!({"requests": {"cpu": "100", "memory": "128Mi"},
        "limits": {"cpu": "100", "memory": "1Gi"}});
    let mut recommend = gunicorn("advisor");
    recommend["spec"]["tuning"] = json!({"mode": "recommend"});

    // As the API server answers a create: generation 1, no status yet.
    let created = apply_json(&api, ready.clone()).await;
    let h = health_of(&created, "created.json");
    expect(
        &h,
        "Progressing",
        "waiting for the operator to observe generation 1",
        "created.json",
    );
    for obj in [&degraded, &stuck, &recommend] {
        apply_json(&api, obj.clone()).await;
    }

    let obj = settled(&api, "gunicorn-api", "Ready", "True").await;
    let h = health_of(&obj, "ready.json");
    expect(
        &h,
        "Healthy",
        "2/2 pods ready with 3 workers × 4 threads",
        "ready.json",
    );
    nothing_drifts(&client, &ns.name, &obj).await;

    let obj = settled(&api, "ml", "Degraded", "True").await;
    let h = health_of(&obj, "degraded.json");
    expect(
        &h,
        "Degraded",
        "DoesNotFit: 1 worker(s) need 1736 MiB",
        "degraded.json",
    );

    let obj = settled(&api, "too-big", "Progressing", "True").await;
    let h = health_of(&obj, "progressing.json");
    expect(&h, "Progressing", "", "progressing.json");
    assert!(
        h.message.ends_with("pods updated, 0 ready"),
        "the rollout's progress: {}",
        h.message
    );

    let obj = settled(&api, "advisor", "Ready", "True").await;
    let h = health_of(&obj, "recommend.json");
    expect(
        &h,
        "Suspended",
        "recommend-only: the tuner recommends and applies nothing (1/1 pods ready with 3 workers × 4 threads)",
        "recommend.json",
    );

    // A spec change, as the API server answers it: generation 2, the status still for 1.
    ready["spec"]["replicas"] = json!(3);
    let changed = apply_json(&api, ready).await;
    let h = health_of(&changed, "changed.json");
    expect(
        &h,
        "Progressing",
        "waiting for the operator to observe generation 2",
        "changed.json",
    );
    let obj = settled(&api, "gunicorn-api", "Ready", "True").await;
    let h = health_of(&obj, "ready-again.json");
    expect(
        &h,
        "Healthy",
        "3/3 pods ready with 3 workers × 4 threads",
        "ready-again.json",
    );
    ns.delete().await;
}
