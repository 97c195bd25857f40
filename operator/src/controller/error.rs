//! Why a reconcile failed. Every error names the AppServer as `namespace/name`.

use kube::core::error_boundary::InvalidObject;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("AppServer {0} does not match the CRD's types: {1}")]
    InvalidObject(String, Box<InvalidObject>),
    #[error("AppServer {0} has no {1}")]
    MissingKey(String, &'static str),
    #[error("applying {kind} {key}: {source}")]
    Apply {
        kind: &'static str,
        /// `namespace/name`.
        key: String,
        source: kube::Error,
    },
    #[error("writing the status of AppServer {key}: {source}")]
    Status { key: String, source: kube::Error },
}

impl Error {
    /// The only label errors get on metrics.
    pub fn category(&self) -> &'static str {
        match self {
            Self::InvalidObject(..) => "invalid-object",
            Self::MissingKey(..) => "missing-key",
            Self::Apply { .. } => "apply",
            Self::Status { .. } => "status",
        }
    }
}
