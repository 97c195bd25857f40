//! Helpers for the end-to-end suite. The cluster comes from `e2e/cluster.sh up` and the operator
//! runs as a separate process started by `e2e/run-tests.sh`; tests talk to the API server
//! through the KUBECONFIG that script exports, each in a namespace of its own.

pub mod emulator;

use std::future::Future;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context as _, Result, bail};
use appserver_core::api::AppServer;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Namespace;
use kube::Client;
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use serde_json::{Value, json};

/// How long a test waits for the cluster to converge before it fails.
pub const CONVERGE: Duration = Duration::from_secs(90);

/// The repository root.
pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// A client for the e2e cluster; fails clearly when the suite is run without it.
pub async fn client() -> Client {
    assert!(
        std::env::var_os("E2E_STATE_DIR").is_some(),
        "the end-to-end suite needs the local cluster: run it with `e2e/run-tests.sh` (or `make test`)"
    );
    Client::try_default()
        .await
        .expect("a client for the e2e cluster from KUBECONFIG")
}

/// A fresh namespace for one test.
pub struct TestNamespace {
    pub name: String,
    client: Client,
}

impl TestNamespace {
    pub async fn new(client: &Client, test: &str) -> Self {
        let suffix = std::process::id() % 100_000;
        let name = format!("e2e-{test}-{suffix}");
        let ns: Namespace = serde_json::from_value(json!({"metadata": {"name": name}})).unwrap();
        Api::<Namespace>::all(client.clone())
            .patch(
                &name,
                &PatchParams::apply("e2e").force(),
                &Patch::Apply(&ns),
            )
            .await
            .unwrap_or_else(|e| panic!("creating namespace {name}: {e}"));
        Self {
            name,
            client: client.clone(),
        }
    }

    /// Deletes the namespace; called at the end of a passing test (a failing one leaves its
    /// objects for the logs, and `cluster.sh down` removes everything).
    pub async fn delete(self) {
        let _ = Api::<Namespace>::all(self.client)
            .delete(&self.name, &DeleteParams::default())
            .await;
    }

    pub fn api<K>(&self) -> Api<K>
    where
        K: kube::Resource<Scope = kube::core::NamespaceResourceScope, DynamicType = ()>,
    {
        Api::namespaced(self.client.clone(), &self.name)
    }
}

/// Loads a sample from `config/samples/`.
pub fn sample(file: &str) -> Value {
    let path = repo().join("config/samples").join(file);
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    serde_yaml::from_str(&text).unwrap_or_else(|e| panic!("parsing {}: {e}", path.display()))
}

/// Creates or updates an AppServer the way `kubectl apply --server-side` does.
pub async fn apply(api: &Api<AppServer>, mut obj: Value) -> Result<AppServer> {
    let name = obj["metadata"]["name"]
        .as_str()
        .context("metadata.name")?
        .to_string();
    obj["apiVersion"] = json!("appserver.dev/v1alpha1");
    obj["kind"] = json!("AppServer");
    Ok(api
        .patch(
            &name,
            &PatchParams::apply("e2e-user").force(),
            &Patch::Apply(&obj),
        )
        .await?)
}

/// Polls `check` every half second until it returns `Some`, or fails after [`CONVERGE`] with the
/// last thing it saw.
pub async fn eventually<T, F, Fut>(what: &str, check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<Option<T>>>,
{
    eventually_within(what, CONVERGE, check).await
}

/// [`eventually`] with a limit of its own, for what takes longer (tuning waits out windows and
/// cooldowns).
pub async fn eventually_within<T, F, Fut>(what: &str, limit: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<Option<T>>>,
{
    let deadline = tokio::time::Instant::now() + limit;
    let mut last = String::from("nothing yet");
    loop {
        match check().await {
            Ok(Some(v)) => return v,
            Ok(None) => {}
            Err(e) => last = format!("{e:#}"),
        }
        if tokio::time::Instant::now() > deadline {
            panic!("timed out after {limit:?} waiting for {what}; last error: {last}");
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// The AppServer once its `Ready` condition is True for its current generation.
pub async fn ready(api: &Api<AppServer>, name: &str) -> AppServer {
    eventually(&format!("AppServer {name} Ready"), || async {
        let aps = api.get(name).await?;
        let generation = aps.metadata.generation;
        let status = aps.status.clone().unwrap_or_default();
        let ready = status.conditions.iter().any(|c| {
            c.type_ == "Ready" && c.status == "True" && c.observed_generation == generation
        });
        Ok((ready && status.observed_generation == generation).then_some(aps))
    })
    .await
}

/// A condition of the AppServer, once it has the given status.
pub async fn condition(
    api: &Api<AppServer>,
    name: &str,
    type_: &str,
    status: &str,
) -> k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition {
    eventually(&format!("AppServer {name} {type_}={status}"), || async {
        let aps = api.get(name).await?;
        let conditions = aps.status.map(|s| s.conditions).unwrap_or_default();
        Ok(conditions
            .into_iter()
            .find(|c| c.type_ == type_ && c.status == status))
    })
    .await
}

/// The value of an environment variable of the Deployment's app container.
pub fn env(deployment: &Deployment, name: &str) -> Option<String> {
    let pod = deployment.spec.as_ref()?.template.spec.as_ref()?;
    let container = pod.containers.iter().find(|c| c.name == "app")?;
    container
        .env
        .as_ref()?
        .iter()
        .find(|e| e.name == name)?
        .value
        .clone()
}

/// Waits for the Deployment's env var to have a value.
pub async fn deployment_env(
    api: &Api<Deployment>,
    name: &str,
    var: &str,
    want: &str,
) -> Deployment {
    eventually(&format!("Deployment {name} {var}={want}"), || async {
        let d = match api.get_opt(name).await? {
            Some(d) => d,
            None => bail!("Deployment {name} does not exist"),
        };
        let got = env(&d, var);
        if got.as_deref() == Some(want) {
            Ok(Some(d))
        } else {
            bail!("{var} is {got:?}")
        }
    })
    .await
}

/// Runs kubectl against the e2e cluster (KUBECONFIG is in the environment).
pub async fn kubectl(args: &[&str], stdin: &str) -> std::process::Output {
    use tokio::io::AsyncWriteExt;
    let mut child = tokio::process::Command::new("kubectl")
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("kubectl on PATH");
    if let Some(mut input) = child.stdin.take() {
        input
            .write_all(stdin.as_bytes())
            .await
            .expect("writing to kubectl");
    }
    child.wait_with_output().await.expect("kubectl ran")
}

/// `target/debug/appserver-operator run` as a process of its own, with its metrics on a free
/// loopback port and its log in `$E2E_STATE_DIR/logs/operator-<name>.log`. Killed when dropped,
/// also when the test fails.
pub struct OperatorProcess {
    pub name: String,
    child: std::process::Child,
    port: u16,
    log: PathBuf,
}

impl OperatorProcess {
    /// Starts `run` with `args` after it and `env` added to the environment; `POD_NAME` is the
    /// name, so a Lease holder's identity starts with it.
    pub fn start(name: &str, args: &[&str], env: &[(&str, &std::ffi::OsStr)]) -> Self {
        use std::process::Stdio;
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let logs = std::env::var_os("E2E_STATE_DIR")
            .map(|d| PathBuf::from(d).join("logs"))
            .unwrap_or_else(std::env::temp_dir);
        let _ = std::fs::create_dir_all(&logs);
        let log = logs.join(format!("operator-{name}.log"));
        let file = std::fs::File::create(&log).expect("the operator's log file");
        let child = std::process::Command::new(repo().join("target/debug/appserver-operator"))
            .args(["run", "--metrics-addr", &format!("127.0.0.1:{port}")])
            .args(args)
            .envs(env.iter().copied())
            .env("POD_NAME", name)
            .env("RUST_LOG", "info,kube=warn")
            .stdout(Stdio::from(file.try_clone().expect("log handle")))
            .stderr(Stdio::from(file))
            .spawn()
            .expect("starting target/debug/appserver-operator (cargo build -p appserver-operator)");
        Self {
            name: name.to_string(),
            child,
            port,
            log,
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// GET on the operator's own HTTP endpoint: (status code, body).
    pub fn get(&self, path: &str) -> Result<(u16, String)> {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(("127.0.0.1", self.port))?;
        s.set_read_timeout(Some(Duration::from_secs(5)))?;
        write!(s, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")?;
        let mut response = String::new();
        s.read_to_string(&mut response)?;
        let code = response
            .split_whitespace()
            .nth(1)
            .context("no status line")?
            .parse()?;
        let body = response
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.to_string())
            .unwrap_or_default();
        Ok((code, body))
    }

    /// Waits for `/readyz`; fails with the log if the process exits or never gets there.
    pub async fn wait_ready(&mut self) {
        let what = format!("operator {} /readyz", self.name);
        for _ in 0..120 {
            if let Some(status) = self.child.try_wait().expect("operator status") {
                panic!(
                    "{what}: the operator exited ({status}); log:\n{}",
                    self.log()
                );
            }
            if matches!(self.get("/readyz"), Ok((200, _))) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        panic!("{what}: not ready after 60s; log:\n{}", self.log());
    }

    /// Sum of a metric's samples (0 when it has none yet).
    pub fn metric(&self, name: &str) -> f64 {
        let (code, body) = self.get("/metrics").expect("GET /metrics");
        assert_eq!(code, 200, "/metrics: {body}");
        body.lines()
            .filter(|l| l.starts_with(name) && l[name.len()..].starts_with([' ', '{']))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }

    /// SIGKILL: the process dies without releasing anything, as a crashed pod would.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for OperatorProcess {
    fn drop(&mut self) {
        self.kill();
    }
}
