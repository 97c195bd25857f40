//! Lists the pods of an AppServer to observe (thin I/O; which pods count is the core's
//! [`is_observable`]).

use appserver_core::desired::NAME_LABEL;
use appserver_core::observation::is_observable;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams};
use tracing::{debug, instrument};

use super::ObserveError;

/// The observable pods of AppServer `name`, by its name label.
#[instrument(skip(client), err)]
pub async fn list_pods(
    client: &kube::Client,
    namespace: &str,
    name: &str,
) -> Result<Vec<Pod>, ObserveError> {
    let params = ListParams::default().labels(&format!("{NAME_LABEL}={name}"));
    let list = Api::<Pod>::namespaced(client.clone(), namespace)
        .list(&params)
        .await
        .map_err(|source| ObserveError::ListPods {
            namespace: namespace.to_string(),
            name: name.to_string(),
            source,
        })?;
    let pods: Vec<Pod> = list.items.into_iter().filter(is_observable).collect();
    debug!(pods = pods.len(), "listed pods");
    Ok(pods)
}
