//! The objects an AppServer owns, built whole on every pass (pure), for server-side apply.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{Deployment, DeploymentSpec};
use k8s_openapi::api::core::v1::{
    Capabilities, Container, ContainerPort, EmptyDirVolumeSource, HTTPGetAction,
    PodSecurityContext, PodSpec, PodTemplateSpec, Probe, ResourceRequirements, SeccompProfile,
    SecurityContext, Service, ServicePort, ServiceSpec, TCPSocketAction, Volume, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta, OwnerReference};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use crate::api::{AppServer, QueueSignal};
use crate::plan::Plan;
use crate::profile::seconds;

pub const MANAGER: &str = "appserver-operator";
pub const NAME_LABEL: &str = "appserver.dev/name";
pub const CONTAINER: &str = "app";
/// The backlog-exporter sidecar: its container name, port and default image (the operator's own).
pub const SIDECAR: &str = "backlog-exporter";
pub const SIDECAR_PORT: i32 = 9102;
pub const DEFAULT_SIDECAR_IMAGE: &str = concat!("appserver-operator:", env!("CARGO_PKG_VERSION"));

/// Time the server's own master process gets, after the graceful timeout, to exit by itself
/// before the kubelet's SIGKILL.
const GRACE_MARGIN_SECONDS: i64 = 5;

/// Labels on everything we own; the selector uses only the name label, which never changes.
pub fn labels(name: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("app.kubernetes.io/name".to_string(), name.to_string()),
        (
            "app.kubernetes.io/managed-by".to_string(),
            MANAGER.to_string(),
        ),
        (NAME_LABEL.to_string(), name.to_string()),
    ])
}

fn selector(name: &str) -> BTreeMap<String, String> {
    BTreeMap::from([(NAME_LABEL.to_string(), name.to_string())])
}

fn metadata(aps: &AppServer, owner: &OwnerReference, name: &str) -> ObjectMeta {
    ObjectMeta {
        name: Some(name.to_string()),
        namespace: aps.metadata.namespace.clone(),
        labels: Some(labels(name)),
        owner_references: Some(vec![owner.clone()]),
        ..Default::default()
    }
}

/// The Deployment. `replicas` is left out when the spec leaves it to an autoscaler, so this
/// manager never owns that field.
/// `sidecar_image` runs the backlog exporter when `spec.tuning.queueSignal` is `sidecar`.
pub fn deployment(
    aps: &AppServer,
    owner: &OwnerReference,
    plan: &Plan,
    sidecar_image: &str,
) -> Deployment {
    let name = aps.metadata.name.clone().unwrap_or_default();
    Deployment {
        metadata: metadata(aps, owner, &name),
        spec: Some(DeploymentSpec {
            replicas: aps.spec.replicas,
            selector: LabelSelector {
                match_labels: Some(selector(&name)),
                ..Default::default()
            },
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(labels(&name)),
                    ..Default::default()
                }),
                spec: Some(pod_spec(aps, plan, sidecar_image)),
            },
            ..Default::default()
        }),
        status: None,
    }
}

fn pod_spec(aps: &AppServer, plan: &Plan, sidecar_image: &str) -> PodSpec {
    let spec = &aps.spec;
    let mut containers = vec![container(aps, plan)];
    if spec.tuning.queue_signal == QueueSignal::Sidecar {
        containers.push(sidecar(spec.port, sidecar_image));
    }
    let grace = i64::try_from(seconds(spec.timeouts.graceful)).unwrap_or(i64::MAX);
    let read_only = plan.settings.read_only_root;
    PodSpec {
        containers,
        node_selector: (!spec.node_selector.is_empty()).then(|| spec.node_selector.clone()),
        termination_grace_period_seconds: Some(grace.saturating_add(GRACE_MARGIN_SECONDS)),
        automount_service_account_token: Some(false),
        security_context: Some(PodSecurityContext {
            run_as_non_root: Some(true),
            seccomp_profile: Some(SeccompProfile {
                type_: "RuntimeDefault".into(),
                ..Default::default()
            }),
            ..Default::default()
        }),
        volumes: read_only.then(|| {
            vec![Volume {
                name: "tmp".into(),
                empty_dir: Some(EmptyDirVolumeSource::default()),
                ..Default::default()
            }]
        }),
        ..Default::default()
    }
}

/// Reads the app's accept backlog from the pod's shared network namespace (docs/backlog-exporter.md).
fn sidecar(app_port: i32, image: &str) -> Container {
    let quantity = |q: &str| k8s_openapi::apimachinery::pkg::api::resource::Quantity(q.into());
    let resources = std::collections::BTreeMap::from([
        ("cpu".to_string(), quantity("10m")),
        ("memory".to_string(), quantity("16Mi")),
    ]);
    Container {
        name: SIDECAR.into(),
        image: Some(image.into()),
        args: Some(vec![
            "backlog-exporter".into(),
            "--port".into(),
            SIDECAR_PORT.to_string(),
            "--listen-port".into(),
            app_port.to_string(),
        ]),
        ports: Some(vec![ContainerPort {
            name: Some("backlog".into()),
            container_port: SIDECAR_PORT,
            protocol: Some("TCP".into()),
            ..Default::default()
        }]),
        resources: Some(ResourceRequirements {
            requests: Some(resources.clone()),
            limits: Some(resources),
            ..Default::default()
        }),
        security_context: Some(SecurityContext {
            allow_privilege_escalation: Some(false),
            read_only_root_filesystem: Some(true),
            capabilities: Some(Capabilities {
                drop: Some(vec!["ALL".into()]),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn container(aps: &AppServer, plan: &Plan) -> Container {
    let spec = &aps.spec;
    let settings = &plan.settings;
    let mut env = spec.env.clone();
    env.extend(settings.env.iter().cloned());
    Container {
        name: CONTAINER.into(),
        image: Some(spec.image.clone()),
        command: (!settings.command.is_empty()).then(|| settings.command.clone()),
        args: (!settings.args.is_empty()).then(|| settings.args.clone()),
        env: (!env.is_empty()).then_some(env),
        ports: Some(vec![ContainerPort {
            name: Some("http".into()),
            container_port: spec.port,
            protocol: Some("TCP".into()),
            ..Default::default()
        }]),
        resources: spec.resources.clone(),
        readiness_probe: Some(probe(spec.port, spec.health_path.as_deref(), 5, 3)),
        liveness_probe: Some(Probe {
            initial_delay_seconds: Some(10),
            ..probe(spec.port, spec.health_path.as_deref(), 10, 6)
        }),
        security_context: Some(SecurityContext {
            allow_privilege_escalation: Some(false),
            read_only_root_filesystem: Some(settings.read_only_root),
            run_as_non_root: Some(true),
            capabilities: Some(Capabilities {
                drop: Some(vec!["ALL".into()]),
                ..Default::default()
            }),
            ..Default::default()
        }),
        volume_mounts: settings.read_only_root.then(|| {
            vec![VolumeMount {
                name: "tmp".into(),
                mount_path: "/tmp".into(),
                ..Default::default()
            }]
        }),
        ..Default::default()
    }
}

/// HTTP GET on the health path when there is one, else a TCP connect to the port.
fn probe(port: i32, path: Option<&str>, period: i32, failures: i32) -> Probe {
    let target = IntOrString::String("http".into());
    let (http_get, tcp_socket) = match path {
        Some(p) => (
            Some(HTTPGetAction {
                path: Some(p.into()),
                port: target,
                ..Default::default()
            }),
            None,
        ),
        None => (
            None,
            Some(TCPSocketAction {
                port: IntOrString::Int(port),
                ..Default::default()
            }),
        ),
    };
    Probe {
        http_get,
        tcp_socket,
        period_seconds: Some(period),
        failure_threshold: Some(failures),
        timeout_seconds: Some(2),
        ..Default::default()
    }
}

/// A ClusterIP Service on the server's port.
pub fn service(aps: &AppServer, owner: &OwnerReference) -> Service {
    let name = aps.metadata.name.clone().unwrap_or_default();
    Service {
        metadata: metadata(aps, owner, &name),
        spec: Some(ServiceSpec {
            selector: Some(selector(&name)),
            ports: Some(vec![ServicePort {
                name: Some("http".into()),
                port: aps.spec.port,
                target_port: Some(IntOrString::String("http".into())),
                protocol: Some("TCP".into()),
                ..Default::default()
            }]),
            ..Default::default()
        }),
        status: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::plan;
    use kube::Resource;

    fn aps(spec: serde_json::Value) -> AppServer {
        let mut a = AppServer::new("api", serde_json::from_value(spec).unwrap());
        a.metadata.namespace = Some("shop".into());
        a.metadata.uid = Some("uid-1".into());
        a
    }

    fn build(a: &AppServer) -> Deployment {
        let owner = a.controller_owner_ref(&()).unwrap();
        deployment(
            a,
            &owner,
            &plan(&a.spec, &[]).unwrap(),
            DEFAULT_SIDECAR_IMAGE,
        )
    }

    #[test]
    fn deployment_carries_sizing_probes_and_secure_defaults() {
        let a = aps(serde_json::json!({
            "image": "registry.example/shop/api:1.4.2", "args": ["app:app"], "port": 8080, "replicas": 3,
            "server": {"kind": "gunicorn", "workerClass": "gthread"}, "healthPath": "/healthz",
            "resources": {"limits": {"cpu": "2", "memory": "2Gi"}},
            "timeouts": {"request": "300s", "graceful": "30s"},
            "env": [{"name": "DATABASE_URL", "value": "postgres://db"}],
        }));
        let d = build(&a);
        let spec = d.spec.unwrap();
        assert_eq!(spec.replicas, Some(3));
        let pod = spec.template.spec.unwrap();
        assert_eq!(pod.termination_grace_period_seconds, Some(35));
        let c = &pod.containers[0];
        let env: BTreeMap<_, _> = c
            .env
            .as_ref()
            .unwrap()
            .iter()
            .map(|e| (e.name.as_str(), e.value.clone().unwrap()))
            .collect();
        assert_eq!(env["GUNICORN_WORKERS"], "5");
        assert_eq!(env["GUNICORN_THREADS"], "4");
        assert_eq!(env["DATABASE_URL"], "postgres://db");
        assert_eq!(
            c.readiness_probe
                .as_ref()
                .unwrap()
                .http_get
                .as_ref()
                .unwrap()
                .path
                .as_deref(),
            Some("/healthz")
        );
        let sc = c.security_context.as_ref().unwrap();
        assert_eq!(sc.allow_privilege_escalation, Some(false));
        assert_eq!(sc.read_only_root_filesystem, Some(true));
        assert_eq!(pod.security_context.unwrap().run_as_non_root, Some(true));
        assert_eq!(c.volume_mounts.as_ref().unwrap()[0].mount_path, "/tmp");
        let owners = d.metadata.owner_references.unwrap();
        assert_eq!(
            (owners[0].kind.as_str(), owners[0].controller),
            ("AppServer", Some(true))
        );
    }

    #[test]
    fn replicas_left_to_an_autoscaler_are_not_set() {
        let a = aps(
            serde_json::json!({"image": "x", "args": ["a:b"], "server": {"kind": "gunicorn"},
            "resources": {"limits": {"cpu": "1"}}}),
        );
        assert_eq!(build(&a).spec.unwrap().replicas, None);
    }

    #[test]
    fn tcp_probe_without_health_path_and_writable_root_for_puma() {
        let a = aps(
            serde_json::json!({"image": "x", "server": {"kind": "puma"}, "port": 3000,
            "resources": {"limits": {"cpu": "1"}}}),
        );
        let pod = build(&a).spec.unwrap().template.spec.unwrap();
        let c = &pod.containers[0];
        assert_eq!(
            c.readiness_probe
                .as_ref()
                .unwrap()
                .tcp_socket
                .as_ref()
                .unwrap()
                .port,
            IntOrString::Int(3000)
        );
        assert_eq!(
            c.security_context
                .as_ref()
                .unwrap()
                .read_only_root_filesystem,
            Some(false)
        );
        assert!(pod.volumes.is_none());
    }

    #[test]
    fn service_targets_the_named_port() {
        let a = aps(serde_json::json!({"image": "x", "server": {"kind": "node"}, "port": 3000}));
        let svc = service(&a, &a.controller_owner_ref(&()).unwrap());
        let port = &svc.spec.as_ref().unwrap().ports.as_ref().unwrap()[0];
        assert_eq!(
            (port.port, port.target_port.clone()),
            (3000, Some(IntOrString::String("http".into())))
        );
        assert_eq!(svc.spec.unwrap().selector.unwrap()[NAME_LABEL], "api");
    }

    #[test]
    fn queue_signal_sidecar_adds_the_backlog_exporter() {
        let a = aps(serde_json::json!({
            "image": "app:1", "args": ["app:app"], "port": 8000, "server": {"kind": "gunicorn"},
            "resources": {"limits": {"cpu": "1", "memory": "1Gi"}},
            "tuning": {"queueSignal": "sidecar"},
        }));
        let pod = build(&a).spec.unwrap().template.spec.unwrap();
        let names: Vec<_> = pod.containers.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names, ["app", "backlog-exporter"]);
        let side = &pod.containers[1];
        assert_eq!(side.image.as_deref(), Some(DEFAULT_SIDECAR_IMAGE));
        assert_eq!(
            side.args.as_deref().unwrap(),
            [
                "backlog-exporter",
                "--port",
                "9102",
                "--listen-port",
                "8000"
            ]
        );
        let mut none = a.clone();
        none.spec.tuning.queue_signal = QueueSignal::None;
        assert_eq!(
            build(&none)
                .spec
                .unwrap()
                .template
                .spec
                .unwrap()
                .containers
                .len(),
            1
        );
    }
}
