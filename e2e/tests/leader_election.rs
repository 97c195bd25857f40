//! Two operator replicas with leader election: only the Lease holder reconciles, and the other
//! takes over when the holder dies. Runs while no other operator is up (see e2e/run-tests.sh).

use anyhow::bail;
use appserver_core::api::AppServer;
use appserver_e2e::*;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::coordination::v1::Lease;
use serde_json::json;

const LEASE: &str = "appserver-operator-e2e";

/// A replica with a short lease, so the takeover test is quick.
fn replica(name: &str, namespace: &str) -> OperatorProcess {
    let lease = [
        "--lease-name",
        LEASE,
        "--lease-namespace",
        namespace,
        "--lease-duration",
        "4",
    ];
    OperatorProcess::start(name, &[&["--leader-election"][..], &lease].concat(), &[])
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
        replica("replica-a", &ns.name),
        replica("replica-b", &ns.name),
    ];

    let leader_name = eventually("one replica to hold the lease", || async {
        Ok(holder(&leases).await?.and_then(|h| {
            replicas
                .iter()
                .find(|r| h.starts_with(&r.name))
                .map(|r| r.name.clone())
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
    assert_eq!(replicas[leader].metric("appserver_operator_leader"), 1.0);
    assert_eq!(replicas[standby].metric("appserver_operator_leader"), 0.0);
    assert!(replicas[leader].metric("appserver_operator_reconciliations_total") > 0.0);
    assert_eq!(
        replicas[standby].metric("appserver_operator_reconciliations_total"),
        0.0,
        "the standby must not reconcile"
    );

    // The leader dies without releasing the lease; the standby takes over once it expires.
    replicas[leader].kill();
    let survivor = replicas[standby].name.clone();
    eventually("the standby to take the lease", || async {
        match holder(&leases).await? {
            Some(h) if h.starts_with(&survivor) => Ok(Some(())),
            other => bail!("holder is {other:?}"),
        }
    })
    .await;
    let mut changed = obj;
    changed["spec"]["resources"]["limits"]["cpu"] = json!("2");
    apply(&apps, changed).await.unwrap();
    deployment_env(&deployments, "api", "GUNICORN_WORKERS", "5").await;
    assert_eq!(replicas[standby].metric("appserver_operator_leader"), 1.0);
    replicas.clear();
    ns.delete().await;
}
