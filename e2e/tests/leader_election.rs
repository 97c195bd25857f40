//! Two operator replicas with leader election: only the Lease holder reconciles, and the other
//! takes over when the holder dies. Runs while no other operator is up (see e2e/run-tests.sh).

use std::process::Stdio;

use anyhow::bail;
use appserver_e2e::*;
use appserver_operator::api::AppServer;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::coordination::v1::Lease;
use serde_json::json;
use tokio::process::{Child, Command};

const LEASE: &str = "appserver-operator-e2e";

/// An operator process, killed when dropped (also when the test fails).
struct Replica {
    name: &'static str,
    port: u16,
    child: Child,
}

impl Replica {
    fn start(name: &'static str, namespace: &str) -> Self {
        let port = free_port();
        let log = std::fs::File::create(log_path(name)).expect("operator log file");
        let child = Command::new(repo().join("target/debug/appserver-operator"))
            .args([
                "run",
                "--leader-election",
                "--lease-name",
                LEASE,
                "--lease-namespace",
                namespace,
            ])
            .args([
                "--lease-duration",
                "4",
                "--metrics-addr",
                &format!("127.0.0.1:{port}"),
            ])
            .env("POD_NAME", name)
            .env("RUST_LOG", "info,kube=warn")
            .stdout(Stdio::from(log.try_clone().expect("log handle")))
            .stderr(Stdio::from(log))
            .kill_on_drop(true)
            .spawn()
            .expect("starting the operator (cargo build -p appserver-operator first)");
        Self { name, port, child }
    }

    /// This replica's `appserver_operator_<metric>` value.
    async fn metric(&self, metric: &str) -> anyhow::Result<f64> {
        let out = Command::new("curl")
            .args(["-fs", &format!("http://127.0.0.1:{}/metrics", self.port)])
            .output()
            .await?;
        let text = String::from_utf8(out.stdout)?;
        let line = text
            .lines()
            .find(|l| l.starts_with(&format!("appserver_operator_{metric} ")))
            .ok_or_else(|| anyhow::anyhow!("{} has no {metric} yet", self.name))?;
        Ok(line.rsplit(' ').next().unwrap_or_default().parse()?)
    }
}

fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("a free port");
    listener.local_addr().expect("its address").port()
}

fn log_path(name: &str) -> std::path::PathBuf {
    let dir =
        std::path::PathBuf::from(std::env::var("E2E_STATE_DIR").unwrap_or_else(|_| "/tmp".into()))
            .join("logs");
    let _ = std::fs::create_dir_all(&dir);
    dir.join(format!("operator-{name}.log"))
}

async fn holder(leases: &kube::Api<Lease>) -> anyhow::Result<Option<String>> {
    Ok(leases
        .get_opt(LEASE)
        .await?
        .and_then(|l| l.spec)
        .and_then(|s| s.holder_identity))
}

#[tokio::test]
async fn only_the_lease_holder_acts_and_a_standby_takes_over() {
    let client = client().await;
    let ns = TestNamespace::new(&client, "leader").await;
    let (apps, deployments, leases) = (
        ns.api::<AppServer>(),
        ns.api::<Deployment>(),
        ns.api::<Lease>(),
    );
    let mut replicas = vec![
        Replica::start("replica-a", &ns.name),
        Replica::start("replica-b", &ns.name),
    ];

    let leader_name = eventually("one replica to hold the lease", || async {
        Ok(holder(&leases).await?.and_then(|h| {
            replicas
                .iter()
                .find(|r| h.starts_with(r.name))
                .map(|r| r.name)
        }))
    })
    .await;
    let (leader, standby) = if replicas[0].name == leader_name {
        (0, 1)
    } else {
        (1, 0)
    };

    let obj = json!({"metadata": {"name": "api"}, "spec": {
        "image": "registry.example/api:1", "args": ["app:app"], "replicas": 1, "server": {"kind": "gunicorn"},
        "nodeSelector": {"appserver.dev/e2e-shape": "xlarge"},
        "resources": {"requests": {"cpu": "100m"}, "limits": {"cpu": "1", "memory": "2Gi"}}}});
    apply(&apps, obj.clone()).await.unwrap();
    ready(&apps, "api").await;
    assert_eq!(replicas[leader].metric("leader").await.unwrap(), 1.0);
    assert_eq!(replicas[standby].metric("leader").await.unwrap(), 0.0);
    assert!(
        replicas[leader]
            .metric("reconciliations_total")
            .await
            .unwrap()
            > 0.0
    );
    assert_eq!(
        replicas[standby]
            .metric("reconciliations_total")
            .await
            .unwrap(),
        0.0,
        "the standby must not reconcile"
    );

    // The leader dies without releasing the lease; the standby takes over once it expires.
    replicas[leader].child.kill().await.unwrap();
    let survivor = replicas[standby].name;
    eventually("the standby to take the lease", || async {
        match holder(&leases).await? {
            Some(h) if h.starts_with(survivor) => Ok(Some(())),
            other => bail!("holder is {other:?}"),
        }
    })
    .await;
    let mut changed = obj;
    changed["spec"]["resources"]["limits"]["cpu"] = json!("2");
    apply(&apps, changed).await.unwrap();
    deployment_env(&deployments, "api", "GUNICORN_WORKERS", "5").await;
    assert_eq!(replicas[standby].metric("leader").await.unwrap(), 1.0);
    replicas.clear();
    ns.delete().await;
}
