//! The `AppServer` custom resource: `appserver.dev/v1alpha1`.
//!
//! Every rule a user can break is written into the CRD (OpenAPI ranges, enums and CEL
//! `x-kubernetes-validations`), so the API server refuses bad input at `kubectl apply` with a
//! message that names the field. What only the operator can judge (a workload that cannot fit its
//! memory) is reported in status instead.

mod spec;
mod status;

pub use spec::*;
pub use status::*;
