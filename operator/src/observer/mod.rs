//! The observer (I/O): reads one AppServer's signals from Prometheus and lists its pods, and
//! hands the numbers to the pure core (`appserver_core::observation`), which builds the queries
//! and assembles the [`Observation`](appserver_core::observation::Observation).
//!
//! Only a Prometheus that gives no API answer at all is an [`ObserveError`]; a signal whose
//! query fails or returns no number is `None` with its reason. See `docs/observer.md`.

mod pods;
mod prometheus;

pub use pods::list_pods;
pub use prometheus::{DEFAULT_QUERY_TIMEOUT, Observer};

#[derive(Debug, thiserror::Error)]
pub enum ObserveError {
    #[error("Prometheus URL {url:?} is not valid: {detail}")]
    InvalidUrl { url: String, detail: String },
    /// No query got an answer from the Prometheus API (connection refused, timeout, or a
    /// server that is not the Prometheus API).
    #[error("Prometheus at {url} cannot be reached: {detail}")]
    Unreachable { url: String, detail: String },
    #[error("listing the pods of AppServer {namespace}/{name}: {source}")]
    ListPods {
        namespace: String,
        name: String,
        source: kube::Error,
    },
}
