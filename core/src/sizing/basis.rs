//! Where the sizing numbers come from: container limits, else requests, else the allocatable of
//! the smallest Node the pod may land on. Never the host's core count.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Node, ResourceRequirements};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use kube_quantity::ParsedQuantity;

use crate::api::BasisSource;

const MIB: f64 = 1024.0 * 1024.0;

/// CPU and memory the sizing is computed for.
#[derive(Clone, Debug, PartialEq)]
pub struct Basis {
    /// Cores, fractions kept (500m is 0.5).
    pub cpu_cores: f64,
    pub cpu_source: BasisSource,
    /// MiB; `None` when neither the container nor any node bounds it.
    pub memory_mib: Option<f64>,
    pub memory_source: Option<BasisSource>,
}

/// A schedulable Node's allocatable resources.
#[derive(Clone, Debug, PartialEq)]
pub struct NodeShape {
    pub name: String,
    pub cpu_cores: f64,
    pub memory_mib: f64,
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum BasisError {
    #[error("{field} is {value:?}, which is not a Kubernetes quantity")]
    InvalidQuantity { field: String, value: String },
    #[error("{field} is {value:?}; it must be greater than zero")]
    NotPositive { field: String, value: String },
    #[error(
        "no CPU to size for: set spec.resources.limits.cpu (or requests.cpu), or make sure a schedulable Node matches spec.nodeSelector"
    )]
    NoCpu,
}

/// Resolves the basis: limits, else requests, else the smallest matching node.
pub fn resolve_basis(
    resources: Option<&ResourceRequirements>,
    nodes: &[NodeShape],
) -> Result<Basis, BasisError> {
    let (cpu_cores, cpu_source) = match container_value(resources, "cpu", 1.0)? {
        Some(found) => found,
        None => smallest(nodes, |n| n.cpu_cores).ok_or(BasisError::NoCpu)?,
    };
    let memory = match container_value(resources, "memory", MIB)? {
        Some(found) => Some(found),
        None => smallest(nodes, |n| n.memory_mib),
    };
    Ok(Basis {
        cpu_cores,
        cpu_source,
        memory_mib: memory.as_ref().map(|(v, _)| *v),
        memory_source: memory.map(|(_, s)| s),
    })
}

/// Limits first, then requests; the value divided by `unit`.
fn container_value(
    resources: Option<&ResourceRequirements>,
    resource: &str,
    unit: f64,
) -> Result<Option<(f64, BasisSource)>, BasisError> {
    let Some(resources) = resources else {
        return Ok(None);
    };
    let candidates = [
        (
            "limits",
            resources.limits.as_ref(),
            BasisSource::ContainerLimits,
        ),
        (
            "requests",
            resources.requests.as_ref(),
            BasisSource::ContainerRequests,
        ),
    ];
    for (list, map, source) in candidates {
        if let Some(q) = map.and_then(|m| m.get(resource)) {
            let field = format!("spec.resources.{list}.{resource}");
            return Ok(Some((positive(q, &field)? / unit, source)));
        }
    }
    Ok(None)
}

fn positive(q: &Quantity, field: &str) -> Result<f64, BasisError> {
    let value = quantity_value(q).ok_or_else(|| BasisError::InvalidQuantity {
        field: field.to_string(),
        value: q.0.clone(),
    })?;
    if value > 0.0 {
        Ok(value)
    } else {
        Err(BasisError::NotPositive {
            field: field.to_string(),
            value: q.0.clone(),
        })
    }
}

/// A quantity in base units (cores, bytes), `None` when it does not parse or is not finite.
pub fn quantity_value(q: &Quantity) -> Option<f64> {
    let parsed = ParsedQuantity::try_from(q).ok()?;
    parsed.to_bytes_f64().filter(|v| v.is_finite())
}

/// The smallest value over the nodes: the pod may land on any of them.
fn smallest(nodes: &[NodeShape], value: impl Fn(&NodeShape) -> f64) -> Option<(f64, BasisSource)> {
    nodes
        .iter()
        .map(value)
        .filter(|v| v.is_finite() && *v > 0.0)
        .min_by(f64::total_cmp)
        .map(|v| (v, BasisSource::NodeAllocatable))
}

/// Schedulable Nodes whose labels satisfy the node selector, as shapes, sorted by name.
/// Taints and affinity are not considered: the selector is what the AppServer declares.
pub fn matching_node_shapes<'a>(
    nodes: impl IntoIterator<Item = &'a Node>,
    selector: &BTreeMap<String, String>,
) -> Vec<NodeShape> {
    let mut shapes: Vec<NodeShape> = nodes
        .into_iter()
        .filter(|n| {
            !n.spec
                .as_ref()
                .and_then(|s| s.unschedulable)
                .unwrap_or(false)
        })
        .filter(|n| {
            let labels = n.metadata.labels.as_ref();
            selector
                .iter()
                .all(|(k, v)| labels.and_then(|l| l.get(k)) == Some(v))
        })
        .filter_map(node_shape)
        .collect();
    shapes.sort_by(|a, b| a.name.cmp(&b.name));
    shapes
}

fn node_shape(node: &Node) -> Option<NodeShape> {
    let allocatable = node.status.as_ref()?.allocatable.as_ref()?;
    Some(NodeShape {
        name: node.metadata.name.clone().unwrap_or_default(),
        cpu_cores: quantity_value(allocatable.get("cpu")?)?,
        memory_mib: quantity_value(allocatable.get("memory")?)? / MIB,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{NodeSpec, NodeStatus};

    fn resources(limits: &[(&str, &str)], requests: &[(&str, &str)]) -> ResourceRequirements {
        let map = |kv: &[(&str, &str)]| {
            (!kv.is_empty()).then(|| {
                kv.iter()
                    .map(|(k, v)| (k.to_string(), Quantity(v.to_string())))
                    .collect()
            })
        };
        ResourceRequirements {
            limits: map(limits),
            requests: map(requests),
            ..Default::default()
        }
    }

    pub(crate) fn node(name: &str, cpu: &str, memory: &str, labels: &[(&str, &str)]) -> Node {
        Node {
            metadata: k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
                name: Some(name.into()),
                labels: Some(
                    labels
                        .iter()
                        .map(|(k, v)| (k.to_string(), v.to_string()))
                        .collect(),
                ),
                ..Default::default()
            },
            spec: Some(NodeSpec::default()),
            status: Some(NodeStatus {
                allocatable: Some(
                    [("cpu", cpu), ("memory", memory)]
                        .iter()
                        .map(|(k, v)| (k.to_string(), Quantity(v.to_string())))
                        .collect(),
                ),
                ..Default::default()
            }),
        }
    }

    #[test]
    fn limits_win_over_requests() {
        let r = resources(
            &[("cpu", "2"), ("memory", "2Gi")],
            &[("cpu", "1"), ("memory", "1Gi")],
        );
        let b = resolve_basis(Some(&r), &[]).unwrap();
        assert_eq!(
            (b.cpu_cores, b.cpu_source),
            (2.0, BasisSource::ContainerLimits)
        );
        assert_eq!(b.memory_mib, Some(2048.0));
    }

    #[test]
    fn requests_when_no_limits_and_fractions_are_kept() {
        let r = resources(&[], &[("cpu", "500m"), ("memory", "512Mi")]);
        let b = resolve_basis(Some(&r), &[]).unwrap();
        assert_eq!(
            (b.cpu_cores, b.cpu_source),
            (0.5, BasisSource::ContainerRequests)
        );
        assert_eq!(b.memory_mib, Some(512.0));
    }

    #[test]
    fn cpu_and_memory_may_come_from_different_places() {
        let r = resources(&[("cpu", "1")], &[]);
        let nodes = [NodeShape {
            name: "a".into(),
            cpu_cores: 64.0,
            memory_mib: 4096.0,
        }];
        let b = resolve_basis(Some(&r), &nodes).unwrap();
        assert_eq!(
            (b.cpu_cores, b.cpu_source),
            (1.0, BasisSource::ContainerLimits)
        );
        assert_eq!(
            (b.memory_mib, b.memory_source),
            (Some(4096.0), Some(BasisSource::NodeAllocatable))
        );
    }

    #[test]
    fn smallest_matching_node_when_nothing_is_declared() {
        let nodes = [
            node("big", "16", "64Gi", &[("pool", "web")]),
            node("small", "2", "4Gi", &[("pool", "web")]),
            node("other", "1", "1Gi", &[("pool", "batch")]),
        ];
        let selector = [("pool".to_string(), "web".to_string())].into();
        let shapes = matching_node_shapes(&nodes, &selector);
        assert_eq!(
            shapes.iter().map(|s| s.name.as_str()).collect::<Vec<_>>(),
            ["big", "small"]
        );
        let b = resolve_basis(None, &shapes).unwrap();
        assert_eq!((b.cpu_cores, b.memory_mib), (2.0, Some(4096.0)));
        assert_eq!(b.cpu_source, BasisSource::NodeAllocatable);
    }

    #[test]
    fn unschedulable_nodes_are_not_a_basis() {
        let mut cordoned = node("cordoned", "1", "1Gi", &[]);
        cordoned.spec = Some(NodeSpec {
            unschedulable: Some(true),
            ..Default::default()
        });
        let nodes = [cordoned, node("ok", "4", "8Gi", &[])];
        let shapes = matching_node_shapes(&nodes, &BTreeMap::new());
        assert_eq!(shapes.len(), 1);
        assert_eq!(shapes[0].name, "ok");
    }

    #[test]
    fn no_cpu_anywhere_is_an_error_naming_the_fields() {
        let err = resolve_basis(None, &[]).unwrap_err();
        assert_eq!(err, BasisError::NoCpu);
        assert!(err.to_string().contains("spec.resources.limits.cpu"));
    }

    #[test]
    fn bad_quantities_name_the_field() {
        let r = resources(&[("cpu", "lots")], &[]);
        let err = resolve_basis(Some(&r), &[]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "spec.resources.limits.cpu is \"lots\", which is not a Kubernetes quantity"
        );
        let r = resources(&[], &[("memory", "0")]);
        let err = resolve_basis(
            Some(&r),
            &[NodeShape {
                name: "n".into(),
                cpu_cores: 1.0,
                memory_mib: 1.0,
            }],
        );
        assert!(
            matches!(err, Err(BasisError::NotPositive { field, .. }) if field == "spec.resources.requests.memory")
        );
    }
}
