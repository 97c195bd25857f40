//! Installing the operator: the Helm chart (`charts/appserver-operator`, run through
//! `charts/helm.sh`) and the kustomize bases (`config/`). See docs/install.md.
//!
//! The tests that touch the cluster start operators of their own, as processes holding the
//! installed ServiceAccount's token, so they run while no other operator is up (the last phase of
//! e2e/run-tests.sh). They take the `CLUSTER` lock, so they run one at a time whatever
//! `--test-threads` says: some of them delete and recreate the CRD, and with it every AppServer.
//! Each one leaves the CRD installed (from crds/), as the suite's earlier phases had it.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};

use anyhow::bail;
use appserver_core::api::AppServer;
use appserver_e2e::*;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Namespace, Service, ServiceAccount};
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::api::rbac::v1::ClusterRole;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use k8s_openapi::serde::Deserialize as _;
use kube::Client;
use kube::api::{Api, Patch, PatchParams};
use serde_json::{Value, json};

const CHART: &str = "charts/appserver-operator";
const CRD_FILE: &str = "appserver.dev_appservers.yaml";
const CRD_NAME: &str = "appservers.appserver.dev";
/// What `kubectl kustomize config/default` installs, and where.
const KUSTOMIZE_NAMESPACE: &str = "appserver-system";
const KUSTOMIZE_NAME: &str = "appserver-operator";

/// One cluster test at a time (see the module comment).
static CLUSTER: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

// --- commands -------------------------------------------------------------------------------

/// Runs a command from the repository root, optionally feeding it stdin.
async fn run(program: &Path, args: &[&str], stdin: Option<&str>) -> Output {
    use tokio::io::AsyncWriteExt;
    let mut child = tokio::process::Command::new(program)
        .args(args)
        .current_dir(repo())
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("starting {}: {e}", program.display()));
    if let (Some(text), Some(mut input)) = (stdin, child.stdin.take()) {
        input
            .write_all(text.as_bytes())
            .await
            .expect("writing stdin");
    }
    child
        .wait_with_output()
        .await
        .expect("waiting for a command")
}

/// `charts/helm.sh` (the pinned Helm, built on first use).
async fn helm(args: &[&str]) -> Output {
    run(&repo().join("charts/helm.sh"), args, None).await
}

/// kubectl from PATH (the pinned one under `e2e/cluster.sh env`), from the repository root.
async fn kubectl_in_repo(args: &[&str], stdin: Option<&str>) -> Output {
    run(Path::new("kubectl"), args, stdin).await
}

/// stdout of a command that must succeed.
fn ok(out: Output, what: &str) -> String {
    assert!(
        out.status.success(),
        "{what} failed ({}):\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8(out.stdout).expect("utf-8 output")
}

/// stderr of a command that must fail.
fn refused(out: Output, what: &str) -> String {
    assert!(
        !out.status.success(),
        "{what} should have failed but succeeded:\n{}",
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// The documents of a multi-document YAML stream (empty ones dropped).
fn docs(yaml: &str) -> Vec<Value> {
    serde_yaml::Deserializer::from_str(yaml)
        .map(|d| Value::deserialize(d).expect("valid YAML"))
        .filter(|v| !v.is_null())
        .collect()
}

fn of_kind<'a>(docs: &'a [Value], kind: &str) -> Vec<&'a Value> {
    docs.iter().filter(|d| d["kind"] == kind).collect()
}

fn one<'a>(docs: &'a [Value], kind: &str) -> &'a Value {
    let found = of_kind(docs, kind);
    assert_eq!(found.len(), 1, "expected one {kind}, got {}", found.len());
    found[0]
}

fn kinds(docs: &[Value]) -> BTreeSet<String> {
    docs.iter()
        .map(|d| d["kind"].as_str().unwrap_or_default().to_string())
        .collect()
}

/// `helm template` of the chart with `--set` values, as documents.
async fn render(release: &str, namespace: &str, sets: &[&str]) -> Vec<Value> {
    let mut args = vec!["template", release, CHART, "--namespace", namespace];
    for s in sets {
        args.extend(["--set", s]);
    }
    docs(&ok(helm(&args).await, &format!("helm template {sets:?}")))
}

/// A scratch directory for one test (under the cluster's state dir when there is one).
fn scratch(name: &str) -> PathBuf {
    let base = std::env::var_os("E2E_STATE_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    let dir = base
        .join("install")
        .join(format!("{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("a scratch directory");
    dir
}

/// The repository root as a path relative to `dir` (kustomize takes no absolute paths).
fn relative_to_root(dir: &Path) -> String {
    let dir = dir.canonicalize().expect("canonical scratch dir");
    let root = repo().canonicalize().expect("canonical repo");
    let ups = dir.components().count() - 1;
    let down = root.strip_prefix("/").expect("an absolute path");
    format!("{}{}", "../".repeat(ups), down.display())
}

// --- RBAC -----------------------------------------------------------------------------------

/// Fails on a `*` anywhere in the rules of a ClusterRole or Role.
fn assert_no_wildcards(role: &Value) {
    let name = &role["metadata"]["name"];
    let rules = role["rules"].as_array().expect("rules");
    assert!(!rules.is_empty(), "{name} has no rules");
    for rule in rules {
        for field in [
            "verbs",
            "resources",
            "apiGroups",
            "resourceNames",
            "nonResourceURLs",
        ] {
            for v in rule[field].as_array().into_iter().flatten() {
                assert!(
                    !v.as_str().unwrap_or_default().contains('*'),
                    "{name} has a wildcard in {field}: {rule}"
                );
            }
        }
    }
}

/// Rules as a set of (apiGroup, resource, verb), so that two spellings of the same grant compare.
fn grants(role: &Value) -> BTreeSet<(String, String, String)> {
    let mut out = BTreeSet::new();
    let strs = |v: &Value| -> Vec<String> {
        v.as_array()
            .into_iter()
            .flatten()
            .map(|s| s.as_str().unwrap().to_string())
            .collect()
    };
    for rule in role["rules"].as_array().expect("rules") {
        for g in strs(&rule["apiGroups"]) {
            for r in strs(&rule["resources"]) {
                for v in strs(&rule["verbs"]) {
                    out.insert((g.clone(), r.clone(), v));
                }
            }
        }
    }
    out
}

/// What the operator does, from operator/src (controller/, leader.rs). Both installers must
/// grant exactly this; docs/install.md says why each one is needed.
fn expected_cluster_grants() -> BTreeSet<(String, String, String)> {
    let mut out = BTreeSet::new();
    let mut add = |g: &str, r: &str, verbs: &[&str]| {
        for v in verbs {
            out.insert((g.to_string(), r.to_string(), v.to_string()));
        }
    };
    add("appserver.dev", "appservers", &["list", "watch"]);
    add("appserver.dev", "appservers/status", &["patch"]);
    add("appserver.dev", "appservers/finalizers", &["update"]);
    add("apps", "deployments", &["list", "watch", "create", "patch"]);
    add("", "services", &["list", "watch", "create", "patch"]);
    add("", "nodes", &["list", "watch"]);
    add("", "pods", &["list"]);
    add("events.k8s.io", "events", &["create", "patch"]);
    out
}

fn expected_lease_grants() -> BTreeSet<(String, String, String)> {
    ["get", "list", "watch", "create", "update", "patch"]
        .iter()
        .map(|v| ("coordination.k8s.io".into(), "leases".into(), v.to_string()))
        .collect()
}

/// The live ClusterRole and Role, read back from the API server.
async fn assert_live_rbac(cluster_role: &str, namespace: &str, role: &str) {
    for (kind, args) in [
        (
            "ClusterRole",
            vec!["get", "clusterrole", cluster_role, "-o", "json"],
        ),
        (
            "Role",
            vec!["get", "role", role, "-n", namespace, "-o", "json"],
        ),
    ] {
        let obj: Value =
            serde_json::from_str(&ok(kubectl_in_repo(&args, None).await, kind)).unwrap();
        assert_no_wildcards(&obj);
        let want = if kind == "Role" {
            expected_lease_grants()
        } else {
            expected_cluster_grants()
        };
        assert_eq!(
            grants(&obj),
            want,
            "live {kind} {}",
            obj["metadata"]["name"]
        );
    }
}

// --- cluster helpers ------------------------------------------------------------------------

fn crd_established(crd: &CustomResourceDefinition) -> bool {
    crd.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| {
            cs.iter()
                .any(|c| c.type_ == "Established" && c.status == "True")
        })
}

async fn established(client: &Client) -> CustomResourceDefinition {
    let crds = Api::<CustomResourceDefinition>::all(client.clone());
    eventually("the AppServer CRD Established", || async {
        let crd = crds.get(CRD_NAME).await?;
        Ok(crd_established(&crd).then_some(crd))
    })
    .await
}

/// Waits until no CRD is being deleted (another test's cleanup).
async fn crd_not_terminating(client: &Client) {
    let crds = Api::<CustomResourceDefinition>::all(client.clone());
    eventually("the AppServer CRD not being deleted", || async {
        match crds.get_opt(CRD_NAME).await? {
            Some(c) if c.metadata.deletion_timestamp.is_some() => bail!("still being deleted"),
            _ => Ok(Some(())),
        }
    })
    .await;
}

/// The CRD from `crds/`, installed as e2e/run-tests.sh does, and Established.
async fn ensure_crd(client: &Client) {
    crd_not_terminating(client).await;
    ok(
        kubectl_in_repo(
            &["apply", "--server-side", "--force-conflicts", "-f", "crds/"],
            None,
        )
        .await,
        "installing crds/",
    );
    established(client).await;
}

/// No AppServer CRD at all (and so no AppServers), as on a cluster that never had the operator.
async fn delete_crd(client: &Client) {
    ok(
        kubectl_in_repo(
            &[
                "delete",
                "crd",
                CRD_NAME,
                "--ignore-not-found",
                "--wait",
                "--timeout=120s",
            ],
            None,
        )
        .await,
        "deleting the CRD",
    );
    crd_not_terminating(client).await;
}

fn which(cmd: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|p| {
        std::env::split_paths(&p)
            .map(|d| d.join(cmd))
            .find(|f| f.is_file())
    })
}

/// Waits until no namespace is being deleted: an AppServer left in one (by an earlier test) makes
/// any operator fail to apply there ("namespace ... is being terminated"), which would count as a
/// reconcile error of the operator under test.
async fn no_namespace_terminating(client: &Client) {
    let namespaces = Api::<Namespace>::all(client.clone());
    eventually("no namespace being deleted", || async {
        let terminating: Vec<_> = namespaces
            .list(&Default::default())
            .await?
            .items
            .into_iter()
            .filter(|n| n.metadata.deletion_timestamp.is_some())
            .filter_map(|n| n.metadata.name)
            .collect();
        if terminating.is_empty() {
            Ok(Some(()))
        } else {
            bail!("still being deleted: {terminating:?}")
        }
    })
    .await;
}

/// Deletes test namespaces and waits until they are gone, so that the next test starts clean.
async fn delete_namespaces(client: &Client, namespaces: Vec<TestNamespace>) {
    for ns in namespaces {
        ns.delete().await;
    }
    no_namespace_terminating(client).await;
}

/// Uninstalls a release of this name left in any namespace by an earlier, failed run on a kept
/// cluster: its cluster-scoped objects would make a new install of the same name fail.
async fn no_release(release: &str) {
    let filter = format!("^{release}$");
    let list = ok(
        helm(&[
            "list",
            "--all-namespaces",
            "--all",
            "--filter",
            &filter,
            "--output",
            "json",
        ])
        .await,
        "helm list",
    );
    let releases: Vec<Value> = serde_json::from_str(&list).expect("helm list JSON");
    for r in releases {
        let namespace = r["namespace"].as_str().unwrap();
        ok(
            helm(&["uninstall", release, "--namespace", namespace, "--wait"]).await,
            &format!("uninstalling the stale release {release} in {namespace}"),
        );
    }
}

/// The namespace enforces the `restricted` Pod Security Standard: a pod that is not hardened is
/// refused, so the operator's Deployment only becomes Available if its pod spec is.
async fn restricted(client: &Client, namespace: &str) {
    let patch = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace,
        "labels": {"pod-security.kubernetes.io/enforce": "restricted"}}});
    Api::<Namespace>::all(client.clone())
        .patch(
            namespace,
            &PatchParams::apply("e2e-install").force(),
            &Patch::Apply(&patch),
        )
        .await
        .expect("labelling the namespace");
}

/// The Deployment once every replica is updated, available, and its Available condition True.
async fn available(api: &Api<Deployment>, name: &str) -> Deployment {
    eventually(&format!("Deployment {name} Available"), || async {
        let d = api.get(name).await?;
        let want = d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
        let status = d.status.clone().unwrap_or_default();
        let condition = status
            .conditions
            .iter()
            .flatten()
            .any(|c| c.type_ == "Available" && c.status == "True");
        let all = status.available_replicas == Some(want) && status.updated_replicas == Some(want);
        if condition && all {
            Ok(Some(d))
        } else {
            bail!("status {status:?}")
        }
    })
    .await
}

/// A kubeconfig for the cluster of $KUBECONFIG that authenticates as a ServiceAccount (a
/// short-lived token from `kubectl create token`), so a process using it has exactly the
/// permissions the installer granted.
async fn service_account_kubeconfig(namespace: &str, account: &str, dir: &Path) -> PathBuf {
    let token = ok(
        kubectl_in_repo(
            &["create", "token", account, "-n", namespace, "--duration=1h"],
            None,
        )
        .await,
        "kubectl create token",
    );
    let admin_path = std::env::var("KUBECONFIG").expect("KUBECONFIG");
    let admin: Value = serde_yaml::from_str(
        &std::fs::read_to_string(&admin_path).expect("reading the admin kubeconfig"),
    )
    .expect("parsing the admin kubeconfig");
    let cluster = &admin["clusters"][0]["cluster"];
    let config = json!({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "e2e", "cluster": {
            "server": cluster["server"],
            "certificate-authority-data": cluster["certificate-authority-data"],
        }}],
        "users": [{"name": account, "user": {"token": token.trim()}}],
        "contexts": [{"name": account, "context": {"cluster": "e2e", "user": account}}],
        "current-context": account,
    });
    let path = dir.join(format!("{account}.kubeconfig"));
    std::fs::write(&path, serde_yaml::to_string(&config).unwrap()).expect("writing a kubeconfig");
    path
}

// --- the operator as a process --------------------------------------------------------------

/// The operator with a given kubeconfig and leader election on (so the lease Role is exercised
/// too); `POD_NAMESPACE` is what the downward API gives it in a pod.
fn operator(name: &str, kubeconfig: &Path, lease_namespace: &str) -> OperatorProcess {
    OperatorProcess::start(
        &format!("install-{name}"),
        &["--leader-election"],
        &[
            ("KUBECONFIG", kubeconfig.as_os_str()),
            ("POD_NAMESPACE", lease_namespace.as_ref()),
        ],
    )
}

/// The RBAC proof: an operator running as the installed ServiceAccount sizes a sample from its
/// node (Nodes), applies a Deployment and a Service (create + patch), writes status, records an
/// Event, holds the Lease, and never meets a 403.
async fn reconciles_with_its_rbac(
    client: &Client,
    op: &OperatorProcess,
    lease_namespace: &str,
    apps: &str,
) {
    let aps_api = Api::<AppServer>::namespaced(client.clone(), apps);
    // No resources in the sample: sizing needs the node, read through the Node watch.
    let mut uvicorn = sample("uvicorn.yaml");
    uvicorn["spec"]["nodeSelector"] = json!({"appserver.dev/e2e-shape": "xlarge"});
    let name = uvicorn["metadata"]["name"].as_str().unwrap().to_string();
    apply(&aps_api, uvicorn)
        .await
        .expect("applying the uvicorn sample");
    let aps = ready(&aps_api, &name).await;
    let status = aps.status.expect("status");
    let basis = serde_json::to_value(status.basis).unwrap();
    assert_eq!(
        (basis["cpu"].as_str(), basis["cpuSource"].as_str()),
        (Some("16"), Some("node-allocatable")),
        "the xlarge node (16 CPU) is the sizing basis: {basis}"
    );
    assert_eq!(status.workers, Some(16), "one uvicorn worker per core");
    let deployment = Api::<Deployment>::namespaced(client.clone(), apps)
        .get(&name)
        .await
        .expect("the operator created the Deployment");
    assert_eq!(
        env(&deployment, "WEB_CONCURRENCY").as_deref(),
        Some("16"),
        "the Deployment carries the sizing"
    );
    Api::<Service>::namespaced(client.clone(), apps)
        .get(&name)
        .await
        .expect("the operator created the Service");
    let events = Api::<Event>::namespaced(client.clone(), apps);
    eventually("a Sized Event from the operator", || async {
        let list = events.list(&Default::default()).await?;
        Ok(list
            .items
            .into_iter()
            .find(|e| {
                e.reason.as_deref() == Some("Sized")
                    && e.reporting_controller.as_deref() == Some("appserver-operator")
                    && e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(&name)
            })
            .map(|_| ()))
    })
    .await;
    let leases = Api::<Lease>::namespaced(client.clone(), lease_namespace);
    let holder = leases
        .get("appserver-operator")
        .await
        .expect("the Lease in the operator's namespace")
        .spec
        .and_then(|s| s.holder_identity)
        .unwrap_or_default();
    assert!(
        holder.starts_with(&op.name),
        "the operator holds the Lease, holder is {holder:?}"
    );
    assert!(
        op.metric("appserver_operator_reconciliations_total") > 0.0,
        "this process reconciled"
    );
    let log = op.log();
    assert_eq!(
        op.metric("appserver_operator_reconcile_errors_total"),
        0.0,
        "no reconcile failed; log:\n{log}"
    );
    for denial in [
        "is forbidden: User \"system:serviceaccount:",
        "could not record an Event",
    ] {
        assert!(
            !log.contains(denial),
            "the operator was refused something:\n{log}"
        );
    }
}

// --- tests without a cluster ----------------------------------------------------------------

/// Helm installs the CRD from the chart's crds/, kustomize from config/crd/bases/ (it refuses
/// files outside its directory): both must be the generated one.
#[test]
fn the_chart_and_kustomize_crds_are_copies_of_crds() {
    let generated = std::fs::read(repo().join("crds").join(CRD_FILE)).expect("crds/");
    for dir in ["charts/appserver-operator/crds", "config/crd/bases"] {
        let files: Vec<_> = std::fs::read_dir(repo().join(dir))
            .unwrap_or_else(|e| panic!("{dir}: {e}"))
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(files, [CRD_FILE], "{dir} holds only the CRD");
        let copy = std::fs::read(repo().join(dir).join(CRD_FILE)).unwrap();
        assert!(
            copy == generated,
            "{dir}/{CRD_FILE} differs from crds/{CRD_FILE}: run `make crd` \
             (or cp crds/{CRD_FILE} {dir}/)"
        );
    }
}

#[tokio::test]
async fn helm_lint_is_clean() {
    for sets in [
        &[][..],
        &[
            "replicaCount=3",
            "serviceMonitor.enabled=true",
            "prometheusRule.enabled=true",
            "prometheus.url=http://prometheus.monitoring:9090",
            "logJson=true",
        ][..],
    ] {
        let mut args = vec!["lint", "--strict", CHART];
        for s in sets {
            args.extend(["--set", s]);
        }
        let out = ok(helm(&args).await, &format!("helm lint {sets:?}"));
        assert!(
            out.contains("1 chart(s) linted, 0 chart(s) failed"),
            "{out}"
        );
        assert!(
            !out.contains("[WARNING]") && !out.contains("[ERROR]"),
            "helm lint {sets:?}:\n{out}"
        );
    }
}

/// values.schema.json: a wrong type, a range, an enum, a pattern or a typo fails `helm template`
/// and `helm install` before anything is rendered, with the offending value in the message.
#[tokio::test]
async fn bad_values_are_refused_with_a_message_naming_the_value() {
    let cases: &[(&[&str], &str)] = &[
        (
            &["--set", "replicaCount=-1"],
            "at '/replicaCount': minimum: got -1, want 0",
        ),
        (
            &["--set", "image=5"],
            "at '/image': got number, want object",
        ),
        (
            &["--set", "replicaz=2"],
            "additional properties 'replicaz' not allowed",
        ),
        (
            &["--set", "image.tagg=1.0"],
            "at '/image': additional properties 'tagg' not allowed",
        ),
        (
            &["--set", "image.pullPolicy=Sometimes"],
            "at '/image/pullPolicy': value must be one of 'Always', 'IfNotPresent', 'Never'",
        ),
        (
            &["--set", "metrics.port=70000"],
            "at '/metrics/port': maximum: got 70,000, want 65,535",
        ),
        (
            &["--set", "prometheus.url=prometheus:9090"],
            "at '/prometheus/url': 'prometheus:9090' does not match pattern",
        ),
        (
            &["--set", "logJson=maybe"],
            "at '/logJson': got string, want boolean",
        ),
        (
            &["--set", "serviceMonitor.interval=often"],
            "at '/serviceMonitor/interval': 'often' does not match pattern",
        ),
        (
            // An env value must be a string: --set would make 1 a number.
            &[
                "--set",
                "extraEnv[0].name=A",
                "--set",
                "extraEnv[0].value=1",
            ],
            "at '/extraEnv/0/value': got number, want string",
        ),
        (
            &["-f", "e2e/testdata/install-typo-values.yaml"],
            "additional properties 'replicas' not allowed",
        ),
    ];
    for (args, message) in cases {
        for command in ["template", "install"] {
            let mut full = vec![command, "bad", CHART];
            if command == "install" {
                // Refused before Helm talks to a cluster.
                full.push("--dry-run=client");
            }
            full.extend(*args);
            let err = refused(helm(&full).await, &format!("helm {command} {args:?}"));
            assert!(
                err.contains("values don't meet the specifications of the schema")
                    && err.contains(message),
                "helm {command} {args:?}: expected {message:?} in:\n{err}"
            );
        }
    }
}

/// The Deployment as rendered: hardened, probes, POD_NAMESPACE, values reaching the container,
/// and leader election, the rolling strategy and the PodDisruptionBudget with more than one
/// replica.
#[tokio::test]
async fn the_rendered_chart_is_hardened_and_follows_its_values() {
    let chart: Value = serde_yaml::from_str(
        &std::fs::read_to_string(repo().join(CHART).join("Chart.yaml")).unwrap(),
    )
    .unwrap();
    let app_version = chart["appVersion"].as_str().unwrap();
    let ns = "ops";

    let default = render("aps", ns, &[]).await;
    assert_eq!(
        kinds(&default),
        [
            "ClusterRole",
            "ClusterRoleBinding",
            "Deployment",
            "Role",
            "RoleBinding",
            "Service",
            "ServiceAccount"
        ]
        .map(String::from)
        .into(),
        "by default no PodDisruptionBudget, ServiceMonitor or PrometheusRule"
    );
    for d in &default {
        if !["ClusterRole", "ClusterRoleBinding"].contains(&d["kind"].as_str().unwrap()) {
            assert_eq!(
                d["metadata"]["namespace"], ns,
                "{} in the release namespace",
                d["kind"]
            );
        }
    }
    let deployment = one(&default, "Deployment");
    let pod = &deployment["spec"]["template"]["spec"];
    let c = &pod["containers"][0];
    assert_eq!(deployment["spec"]["replicas"], 1);
    assert_eq!(
        deployment["spec"]["strategy"],
        json!({"type": "Recreate"}),
        "without leader election two operators never overlap"
    );
    assert_eq!(c["image"], format!("appserver-operator:{app_version}"));
    assert_eq!(c["imagePullPolicy"], "IfNotPresent");
    assert_eq!(c["args"], json!(["run", "--metrics-addr=0.0.0.0:8080"]));
    let env: BTreeMap<String, Value> = c["env"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["name"].as_str().unwrap().to_string(), e.clone()))
        .collect();
    assert_eq!(
        env["POD_NAMESPACE"]["valueFrom"],
        json!({"fieldRef": {"fieldPath": "metadata.namespace"}})
    );
    assert_eq!(env["RUST_LOG"]["value"], "info");
    assert!(!env.contains_key("APPSERVER_PROMETHEUS_URL"));
    assert_eq!(
        c["ports"],
        json!([{"name": "metrics", "containerPort": 8080, "protocol": "TCP"}])
    );
    assert_eq!(
        c["livenessProbe"]["httpGet"],
        json!({"path": "/healthz", "port": "metrics"})
    );
    assert_eq!(
        c["readinessProbe"]["httpGet"],
        json!({"path": "/readyz", "port": "metrics"})
    );
    assert_eq!(
        c["resources"],
        json!({"requests": {"cpu": "50m", "memory": "64Mi"}, "limits": {"cpu": "500m", "memory": "256Mi"}})
    );
    assert_eq!(
        c["securityContext"],
        json!({
            "runAsNonRoot": true, "runAsUser": 65532, "runAsGroup": 65532,
            "readOnlyRootFilesystem": true, "allowPrivilegeEscalation": false, "privileged": false,
            "capabilities": {"drop": ["ALL"]}, "seccompProfile": {"type": "RuntimeDefault"}
        })
    );
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    assert_eq!(pod["securityContext"]["runAsUser"], 65532);
    assert_eq!(
        pod["securityContext"]["seccompProfile"]["type"],
        "RuntimeDefault"
    );
    assert_eq!(pod["automountServiceAccountToken"], true);
    let sa = one(&default, "ServiceAccount");
    assert_eq!(pod["serviceAccountName"], sa["metadata"]["name"]);
    for kind in ["ClusterRoleBinding", "RoleBinding"] {
        let b = one(&default, kind);
        assert_eq!(
            b["subjects"],
            json!([{"kind": "ServiceAccount", "name": sa["metadata"]["name"], "namespace": ns}])
        );
    }
    // The Service reaches the pods on the metrics port.
    let service = one(&default, "Service");
    let pod_labels = &deployment["spec"]["template"]["metadata"]["labels"];
    for (k, v) in service["spec"]["selector"].as_object().unwrap() {
        assert_eq!(&pod_labels[k], v, "Service selector {k}");
    }
    assert_eq!(service["spec"]["ports"][0]["targetPort"], "metrics");

    // More than one replica: leader election, a rolling update that keeps one up, a PDB.
    let ha = render("aps", ns, &["replicaCount=3"]).await;
    let deployment = one(&ha, "Deployment");
    let args = &deployment["spec"]["template"]["spec"]["containers"][0]["args"];
    assert_eq!(
        args,
        &json!([
            "run",
            "--metrics-addr=0.0.0.0:8080",
            "--leader-election",
            "--lease-name=appserver-operator"
        ])
    );
    assert_eq!(deployment["spec"]["strategy"]["type"], "RollingUpdate");
    assert_eq!(
        deployment["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"],
        0
    );
    let pdb = one(&ha, "PodDisruptionBudget");
    assert_eq!(pdb["spec"]["minAvailable"], 1);
    assert_eq!(
        pdb["spec"]["selector"]["matchLabels"],
        deployment["spec"]["selector"]["matchLabels"]
    );

    // Leader election with one replica, and a PDB by toggle.
    let one_leader = render(
        "aps",
        ns,
        &[
            "leaderElection.enabled=true",
            "leaderElection.leaseName=ops-lease",
        ],
    )
    .await;
    let args = &one(&one_leader, "Deployment")["spec"]["template"]["spec"]["containers"][0]["args"];
    assert!(
        args.as_array()
            .unwrap()
            .contains(&json!("--lease-name=ops-lease")),
        "{args}"
    );
    assert!(of_kind(&one_leader, "PodDisruptionBudget").is_empty());
    let pdb = render(
        "aps",
        ns,
        &[
            "podDisruptionBudget.enabled=true",
            "podDisruptionBudget.minAvailable=50%",
        ],
    )
    .await;
    assert_eq!(
        one(&pdb, "PodDisruptionBudget")["spec"]["minAvailable"],
        "50%"
    );

    // Operator settings and scheduling values reach the pod.
    let custom = render(
        "aps",
        ns,
        &[
            "image.repository=registry.example/appserver-operator",
            "image.tag=0.2.0-rc.1",
            "image.pullPolicy=Always",
            "prometheus.url=http://prometheus.monitoring:9090",
            "logLevel=debug\\,kube=info",
            "logJson=true",
            "metrics.port=9100",
            "nodeSelector.pool=system",
            "tolerations[0].key=dedicated",
            "tolerations[0].operator=Exists",
            "podAnnotations.team=platform",
            "extraEnv[0].name=EXTRA",
            "extraEnv[0].value=on",
            "imagePullSecrets[0].name=regcred",
        ],
    )
    .await;
    let deployment = one(&custom, "Deployment");
    let pod = &deployment["spec"]["template"]["spec"];
    let c = &pod["containers"][0];
    assert_eq!(c["image"], "registry.example/appserver-operator:0.2.0-rc.1");
    assert_eq!(c["imagePullPolicy"], "Always");
    assert_eq!(
        c["args"],
        json!(["run", "--metrics-addr=0.0.0.0:9100", "--log-json"])
    );
    let env: BTreeMap<&str, &Value> = c["env"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["name"].as_str().unwrap(), &e["value"]))
        .collect();
    assert_eq!(
        env["APPSERVER_PROMETHEUS_URL"],
        "http://prometheus.monitoring:9090"
    );
    assert_eq!(env["RUST_LOG"], "debug,kube=info");
    assert_eq!(env["EXTRA"], "on");
    assert_eq!(c["ports"][0]["containerPort"], 9100);
    assert_eq!(one(&custom, "Service")["spec"]["ports"][0]["port"], 9100);
    assert_eq!(pod["nodeSelector"], json!({"pool": "system"}));
    assert_eq!(
        pod["tolerations"],
        json!([{"key": "dedicated", "operator": "Exists"}])
    );
    assert_eq!(pod["imagePullSecrets"], json!([{"name": "regcred"}]));
    assert_eq!(
        deployment["spec"]["template"]["metadata"]["annotations"],
        json!({"team": "platform"})
    );

    // Monitoring: the ServiceMonitor selects the metrics Service by its labels and port name.
    let monitored = render(
        "aps",
        ns,
        &[
            "serviceMonitor.enabled=true",
            "serviceMonitor.labels.release=kube-prometheus",
            "prometheusRule.enabled=true",
        ],
    )
    .await;
    let sm = one(&monitored, "ServiceMonitor");
    let service = one(&monitored, "Service");
    for (k, v) in sm["spec"]["selector"]["matchLabels"].as_object().unwrap() {
        assert_eq!(
            &service["metadata"]["labels"][k], v,
            "ServiceMonitor selector {k}"
        );
    }
    assert_eq!(
        sm["spec"]["endpoints"][0]["port"],
        service["spec"]["ports"][0]["name"]
    );
    assert_eq!(sm["spec"]["namespaceSelector"]["matchNames"], json!([ns]));
    assert_eq!(sm["metadata"]["labels"]["release"], "kube-prometheus");
    let rule = one(&monitored, "PrometheusRule");
    let expr = rule["spec"]["groups"][0]["rules"][0]["expr"]
        .as_str()
        .unwrap();
    for needle in [
        "appserver_operator_reconcile_errors_total{",
        "appserver_operator_reconciliations_total{",
        &format!("namespace=\"{ns}\""),
        &format!(
            "service=\"{}\"",
            service["metadata"]["name"].as_str().unwrap()
        ),
    ] {
        assert!(expr.contains(needle), "{needle} in {expr}");
    }
}

/// Both installers grant the same rules: what the operator calls, with no wildcard.
#[tokio::test]
async fn chart_and_kustomize_grant_what_the_operator_uses_without_wildcards() {
    let chart = render("aps", "ops", &[]).await;
    let kustomize = docs(&ok(
        kubectl_in_repo(&["kustomize", "config/rbac"], None).await,
        "kubectl kustomize config/rbac",
    ));
    for (installer, objs) in [("chart", &chart), ("config/rbac", &kustomize)] {
        let cluster_role = one(objs, "ClusterRole");
        let role = one(objs, "Role");
        assert_no_wildcards(cluster_role);
        assert_no_wildcards(role);
        assert_eq!(
            grants(cluster_role),
            expected_cluster_grants(),
            "{installer} ClusterRole"
        );
        assert_eq!(grants(role), expected_lease_grants(), "{installer} Role");
    }
}

/// config/default is CRD + RBAC + the operator in appserver-system; samples and Prometheus
/// objects stay out of it; config/prometheus carries the chart's alert.
#[tokio::test]
async fn the_kustomize_bases_render_what_they_should() {
    let kustomize = |dir: &'static str| async move {
        docs(&ok(
            kubectl_in_repo(&["kustomize", dir], None).await,
            &format!("kubectl kustomize {dir}"),
        ))
    };
    let default = kustomize("config/default").await;
    assert_eq!(
        kinds(&default),
        [
            "ClusterRole",
            "ClusterRoleBinding",
            "CustomResourceDefinition",
            "Deployment",
            "Namespace",
            "Role",
            "RoleBinding",
            "Service",
            "ServiceAccount"
        ]
        .map(String::from)
        .into()
    );
    for d in &default {
        let kind = d["kind"].as_str().unwrap();
        if ![
            "ClusterRole",
            "ClusterRoleBinding",
            "CustomResourceDefinition",
            "Namespace",
        ]
        .contains(&kind)
        {
            assert_eq!(d["metadata"]["namespace"], KUSTOMIZE_NAMESPACE, "{kind}");
        }
    }
    // config/crd/bases/ is byte for byte crds/ (the_chart_and_kustomize_crds_are_copies_of_crds).
    let crd = one(&default, "CustomResourceDefinition");
    assert_eq!(
        crd["metadata"],
        json!({"name": CRD_NAME}),
        "the CRD as generated"
    );
    let deployment = one(&default, "Deployment");
    assert_eq!(deployment["spec"]["replicas"], 1);
    assert_eq!(deployment["spec"]["strategy"], json!({"type": "Recreate"}));
    let c = &deployment["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(c["image"], "appserver-operator:0.1.0");
    assert_eq!(c["securityContext"]["readOnlyRootFilesystem"], true);
    assert_eq!(c["securityContext"]["capabilities"]["drop"], json!(["ALL"]));
    assert_eq!(
        one(&default, "Namespace")["metadata"]["labels"]["pod-security.kubernetes.io/enforce"],
        "restricted"
    );
    // The chart and kustomize run the same container.
    let chart = render(KUSTOMIZE_NAME, KUSTOMIZE_NAMESPACE, &[]).await;
    let chart_c = &one(&chart, "Deployment")["spec"]["template"]["spec"]["containers"][0];
    for field in [
        "args",
        "env",
        "ports",
        "livenessProbe",
        "readinessProbe",
        "resources",
        "securityContext",
    ] {
        assert_eq!(
            c[field], chart_c[field],
            "container {field}: config/manager vs the chart"
        );
    }

    // An overlay as docs/install.md shows it: another image, and the leader-election component.
    let overlay = scratch("overlay");
    let up = relative_to_root(&overlay);
    std::fs::write(
        overlay.join("kustomization.yaml"),
        format!(
            "resources: [{up}/config/default]\ncomponents: [{up}/config/leader-election]\n\
             images:\n  - {{name: appserver-operator, newName: registry.example/ops/appserver-operator, newTag: 0.2.0}}\n"
        ),
    )
    .unwrap();
    let overlaid = docs(&ok(
        kubectl_in_repo(&["kustomize", &overlay.display().to_string()], None).await,
        "kubectl kustomize of an overlay",
    ));
    let deployment = one(&overlaid, "Deployment");
    assert_eq!(deployment["spec"]["replicas"], 2);
    assert_eq!(
        deployment["spec"]["strategy"],
        json!({"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}})
    );
    let c = &deployment["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(
        c["args"],
        json!(["run", "--metrics-addr=0.0.0.0:8080", "--leader-election"])
    );
    assert_eq!(c["image"], "registry.example/ops/appserver-operator:0.2.0");

    let samples = kustomize("config/samples").await;
    assert_eq!(kinds(&samples), ["AppServer".to_string()].into());
    assert_eq!(samples.len(), 7, "every sample");
    assert!(
        samples.iter().all(|s| s["metadata"]["namespace"].is_null()),
        "samples take -n"
    );

    let prometheus = kustomize("config/prometheus").await;
    assert_eq!(
        kinds(&prometheus),
        ["PrometheusRule".to_string(), "ServiceMonitor".to_string()].into()
    );
    let monitor = one(&prometheus, "ServiceMonitor");
    let service = one(&default, "Service");
    for (k, v) in monitor["spec"]["selector"]["matchLabels"]
        .as_object()
        .unwrap()
    {
        assert_eq!(
            &service["metadata"]["labels"][k], v,
            "ServiceMonitor selector {k}"
        );
    }
    let chart_rule = render(
        KUSTOMIZE_NAME,
        KUSTOMIZE_NAMESPACE,
        &["prometheusRule.enabled=true"],
    )
    .await;
    assert_eq!(
        one(&prometheus, "PrometheusRule")["spec"],
        one(&chart_rule, "PrometheusRule")["spec"],
        "config/prometheus/rule.yaml is the chart's rule for appserver-system: copy it over"
    );
}

/// promtool unit tests (e2e/testdata/install-prometheus-rule-test.yaml) of the chart's alert:
/// it fires when half the reconciliations fail, not at 5%, not for another namespace.
#[tokio::test]
async fn the_prometheus_rule_fires_on_reconcile_errors() {
    let promtool = which("promtool").expect(
        "promtool (Debian's prometheus package, which `e2e/cluster.sh up` installs) on PATH",
    );
    let rendered = render(
        KUSTOMIZE_NAME,
        KUSTOMIZE_NAMESPACE,
        &["prometheusRule.enabled=true"],
    )
    .await;
    let dir = scratch("promtool");
    let rules = serde_yaml::to_string(&one(&rendered, "PrometheusRule")["spec"]).unwrap();
    std::fs::write(dir.join("rules.yaml"), rules).unwrap();
    std::fs::copy(
        repo().join("e2e/testdata/install-prometheus-rule-test.yaml"),
        dir.join("test.yaml"),
    )
    .unwrap();
    let check = ok(
        run(
            &promtool,
            &[
                "check",
                "rules",
                &dir.join("rules.yaml").display().to_string(),
            ],
            None,
        )
        .await,
        "promtool check rules",
    );
    assert!(check.contains("SUCCESS: 1 rules found"), "{check}");
    let out = run(
        &promtool,
        &[
            "test",
            "rules",
            &dir.join("test.yaml").display().to_string(),
        ],
        None,
    )
    .await;
    let text = ok(out, "promtool test rules");
    assert!(text.contains("SUCCESS"), "{text}");
}

// --- tests on the cluster -------------------------------------------------------------------

/// `helm template` with every option on is what the API server accepts (server-side dry run).
/// The ServiceMonitor and PrometheusRule are left out: their CRDs belong to the Prometheus
/// Operator, which this cluster does not have; the rendering tests check their structure and
/// promtool checks the rule.
#[tokio::test]
async fn the_rendered_chart_is_accepted_by_the_api_server() {
    let _cluster = CLUSTER.lock().await;
    let client = client().await;
    ensure_crd(&client).await;
    let ns = TestNamespace::new(&client, "helm-dry-run").await;
    for sets in [
        &[][..],
        &[
            "replicaCount=2",
            "prometheus.url=http://prometheus.monitoring:9090",
            "podDisruptionBudget.minAvailable=50%",
            "tolerations[0].key=dedicated",
            "tolerations[0].operator=Exists",
            "affinity.nodeAffinity.requiredDuringSchedulingIgnoredDuringExecution.nodeSelectorTerms[0].matchExpressions[0].key=kubernetes.io/os",
            "affinity.nodeAffinity.requiredDuringSchedulingIgnoredDuringExecution.nodeSelectorTerms[0].matchExpressions[0].operator=In",
            "affinity.nodeAffinity.requiredDuringSchedulingIgnoredDuringExecution.nodeSelectorTerms[0].matchExpressions[0].values[0]=linux",
        ][..],
    ] {
        let mut args = vec!["template", "aps-dry", CHART, "--namespace", &ns.name];
        for s in sets {
            args.extend(["--set", s]);
        }
        let rendered = ok(helm(&args).await, "helm template");
        let count = docs(&rendered).len();
        let out = ok(
            kubectl_in_repo(&["apply", "--dry-run=server", "-f", "-"], Some(&rendered)).await,
            &format!("kubectl apply --dry-run=server of helm template {sets:?}"),
        );
        assert_eq!(
            out.lines()
                .filter(|l| l.ends_with("(server dry run)"))
                .count(),
            count,
            "every object accepted:\n{out}"
        );
    }
    delete_namespaces(&client, vec![ns]).await;
}

/// `helm install` into a namespace enforcing the restricted Pod Security Standard: the
/// Deployment becomes Available (kwok plays the pod). An operator process holding the chart's
/// ServiceAccount token then reconciles a sample in another namespace: the chart's RBAC suffices.
#[tokio::test]
async fn helm_install_gives_an_operator_whose_rbac_suffices() {
    let _cluster = CLUSTER.lock().await;
    let client = client().await;
    ensure_crd(&client).await;
    let ns = TestNamespace::new(&client, "helm").await;
    restricted(&client, &ns.name).await;
    let apps = TestNamespace::new(&client, "helm-apps").await;
    let release = "aps-e2e";
    let fullname = "aps-e2e-appserver-operator";
    no_release(release).await;
    ok(
        helm(&[
            "install",
            release,
            CHART,
            "--namespace",
            &ns.name,
            "--wait",
            "--timeout=120s",
        ])
        .await,
        "helm install",
    );
    available(&ns.api::<Deployment>(), fullname).await;
    assert_live_rbac(fullname, &ns.name, &format!("{fullname}-leader-election")).await;
    ok(
        kubectl_in_repo(
            &[
                "get",
                "service",
                &format!("{fullname}-metrics"),
                "-n",
                &ns.name,
            ],
            None,
        )
        .await,
        "the chart's metrics Service",
    );

    let dir = scratch("helm");
    let kubeconfig = service_account_kubeconfig(&ns.name, fullname, &dir).await;
    no_namespace_terminating(&client).await;
    let mut op = operator("helm", &kubeconfig, &ns.name);
    op.wait_ready().await;
    reconciles_with_its_rbac(&client, &op, &ns.name, &apps.name).await;
    drop(op);

    ok(
        helm(&["uninstall", release, "--namespace", &ns.name, "--wait"]).await,
        "helm uninstall",
    );
    delete_namespaces(&client, vec![apps, ns]).await;
}

/// Helm never deletes what it installed from crds/: after `helm uninstall` the CRD (which this
/// install created) and the AppServers are still there; the chart's own objects are gone.
#[tokio::test]
async fn helm_uninstall_keeps_the_crd_and_the_appservers() {
    let _cluster = CLUSTER.lock().await;
    let client = client().await;
    delete_crd(&client).await;
    let ns = TestNamespace::new(&client, "helm-uninstall").await;
    let apps = TestNamespace::new(&client, "helm-uninstall-apps").await;
    let (release, fullname) = ("aps-gone", "aps-gone-appserver-operator");
    no_release(release).await;
    ok(
        helm(&["install", release, CHART, "--namespace", &ns.name]).await,
        "helm install",
    );
    let crd = established(&client).await;
    let managers: Vec<_> = crd
        .metadata
        .managed_fields
        .iter()
        .flatten()
        .filter_map(|m| m.manager.clone())
        .collect();
    assert!(
        managers.contains(&"helm".to_string()),
        "helm created the CRD: {managers:?}"
    );
    let aps = apply(&apps.api::<AppServer>(), sample("gunicorn.yaml"))
        .await
        .expect("an AppServer under the chart's CRD");
    ok(
        helm(&["uninstall", release, "--namespace", &ns.name, "--wait"]).await,
        "helm uninstall",
    );

    assert!(
        ns.api::<Deployment>()
            .get_opt(fullname)
            .await
            .unwrap()
            .is_none()
    );
    assert!(
        ns.api::<ServiceAccount>()
            .get_opt(fullname)
            .await
            .unwrap()
            .is_none()
    );
    assert!(
        Api::<ClusterRole>::all(client.clone())
            .get_opt(fullname)
            .await
            .unwrap()
            .is_none(),
        "the ClusterRole went with the release"
    );
    let crd = established(&client).await;
    assert!(crd.metadata.deletion_timestamp.is_none(), "the CRD stays");
    let kept = apps
        .api::<AppServer>()
        .get(&aps.metadata.name.clone().unwrap())
        .await
        .expect("the AppServer stays");
    assert_eq!(kept.metadata.uid, aps.metadata.uid, "the same AppServer");

    delete_namespaces(&client, vec![apps, ns]).await;
    ensure_crd(&client).await;
}

/// The upgrade path of docs/install.md: Helm leaves crds/ alone on upgrade, so the new CRD is
/// applied first with `kubectl apply --server-side --force-conflicts`. Without
/// --force-conflicts the apply is refused, since Helm (field manager "helm") created the CRD.
/// Applied twice, it is accepted both times, the CRD stays Established and AppServers stay.
#[tokio::test]
async fn a_newer_crd_is_applied_server_side_before_helm_upgrade() {
    let _cluster = CLUSTER.lock().await;
    let client = client().await;
    delete_crd(&client).await;
    let ns = TestNamespace::new(&client, "crd-upgrade").await;
    let release = "aps-upgrade";
    no_release(release).await;
    ok(
        helm(&["install", release, CHART, "--namespace", &ns.name]).await,
        "helm install",
    );
    established(&client).await;
    let aps = apply(&ns.api::<AppServer>(), sample("puma.yaml"))
        .await
        .expect("an AppServer under the old CRD");

    // "The next release's CRD": the same with another description.
    let original = std::fs::read_to_string(repo().join("crds").join(CRD_FILE)).unwrap();
    let old_description =
        "description: An app server whose workers and threads are sized for the pod it gets.";
    assert!(
        original.contains(old_description),
        "the CRD's top description changed: update this test"
    );
    let newer = original.replace(
        old_description,
        "description: An app server (upgraded CRD).",
    );
    let dir = scratch("crd-upgrade");
    std::fs::write(dir.join(CRD_FILE), newer).unwrap();
    let dir = dir.display().to_string();

    let err = refused(
        kubectl_in_repo(&["apply", "--server-side", "-f", &dir], None).await,
        "kubectl apply --server-side of a changed CRD that helm created",
    );
    assert!(err.contains("conflict with \"helm\""), "{err}");
    for round in 1..=2 {
        let out = ok(
            kubectl_in_repo(
                &["apply", "--server-side", "--force-conflicts", "-f", &dir],
                None,
            )
            .await,
            &format!("the documented CRD upgrade, round {round}"),
        );
        assert!(out.contains("serverside-applied"), "{out}");
        let crd = established(&client).await;
        let description = crd.spec.versions[0]
            .schema
            .as_ref()
            .and_then(|s| s.open_api_v3_schema.as_ref())
            .and_then(|s| s.description.clone());
        assert_eq!(
            description.as_deref(),
            Some("An app server (upgraded CRD).")
        );
    }
    ok(
        helm(&[
            "upgrade",
            release,
            CHART,
            "--namespace",
            &ns.name,
            "--set",
            "logLevel=debug",
        ])
        .await,
        "helm upgrade",
    );
    let crd = established(&client).await;
    assert_eq!(
        crd.spec.versions[0]
            .schema
            .as_ref()
            .and_then(|s| s.open_api_v3_schema.as_ref())
            .and_then(|s| s.description.as_deref()),
        Some("An app server (upgraded CRD)."),
        "helm upgrade did not touch the CRD"
    );
    let kept = ns
        .api::<AppServer>()
        .get("puma-web")
        .await
        .expect("the AppServer stays");
    assert_eq!(kept.metadata.uid, aps.metadata.uid);

    ok(
        helm(&["uninstall", release, "--namespace", &ns.name, "--wait"]).await,
        "helm uninstall",
    );
    delete_namespaces(&client, vec![ns]).await;
    ensure_crd(&client).await;
}

/// `kubectl apply -k config/default` installs the operator in appserver-system (restricted Pod
/// Security): the Deployment becomes Available, config/samples applies on its own, and an
/// operator process holding the ServiceAccount's token reconciles. `kubectl delete -k
/// config/default` then removes all of it, the CRD (and so every AppServer) included; the test
/// reinstalls the CRD from crds/ afterwards.
#[tokio::test]
async fn kustomize_default_installs_an_operator_whose_rbac_suffices() {
    let _cluster = CLUSTER.lock().await;
    let client = client().await;
    ensure_crd(&client).await;
    ok(
        kubectl_in_repo(&["apply", "-k", "config/default"], None).await,
        "kubectl apply -k config/default",
    );
    let deployments = Api::<Deployment>::namespaced(client.clone(), KUSTOMIZE_NAMESPACE);
    available(&deployments, KUSTOMIZE_NAME).await;
    assert_live_rbac(
        KUSTOMIZE_NAME,
        KUSTOMIZE_NAMESPACE,
        &format!("{KUSTOMIZE_NAME}-leader-election"),
    )
    .await;

    let samples = TestNamespace::new(&client, "kustomize-samples").await;
    let out = ok(
        kubectl_in_repo(
            &["apply", "-k", "config/samples", "-n", &samples.name],
            None,
        )
        .await,
        "kubectl apply -k config/samples",
    );
    assert_eq!(out.matches(" created").count(), 7, "{out}");
    let apps = TestNamespace::new(&client, "kustomize-apps").await;
    let dir = scratch("kustomize");
    let kubeconfig = service_account_kubeconfig(KUSTOMIZE_NAMESPACE, KUSTOMIZE_NAME, &dir).await;
    no_namespace_terminating(&client).await;
    let mut op = operator("kustomize", &kubeconfig, KUSTOMIZE_NAMESPACE);
    op.wait_ready().await;
    reconciles_with_its_rbac(&client, &op, KUSTOMIZE_NAMESPACE, &apps.name).await;
    // Every sample of config/samples, unpinned, reconciles too.
    let sample_api = samples.api::<AppServer>();
    for s in docs(&ok(
        kubectl_in_repo(&["kustomize", "config/samples"], None).await,
        "kubectl kustomize config/samples",
    )) {
        ready(&sample_api, s["metadata"]["name"].as_str().unwrap()).await;
    }
    drop(op);

    ok(
        kubectl_in_repo(
            &["delete", "-k", "config/default", "--wait", "--timeout=180s"],
            None,
        )
        .await,
        "kubectl delete -k config/default",
    );
    let crds = Api::<CustomResourceDefinition>::all(client.clone());
    assert!(
        crds.get_opt(CRD_NAME).await.unwrap().is_none(),
        "the CRD is deleted"
    );
    assert!(
        Api::<Namespace>::all(client.clone())
            .get_opt(KUSTOMIZE_NAMESPACE)
            .await
            .unwrap()
            .is_none(),
        "{KUSTOMIZE_NAMESPACE} is deleted"
    );
    delete_namespaces(&client, vec![samples, apps]).await;
    ensure_crd(&client).await;
}
