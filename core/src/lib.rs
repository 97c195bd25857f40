//! appserver-core: everything appserver-operator decides, as pure functions.
//!
//! No Kubernetes client, no async runtime, no HTTP and no clock: the operator crate reads the
//! world, calls these functions with what it read (and the time), and writes back what they
//! return. `make core-deps` fails if a kube-client, kube-runtime, tokio, hyper or reqwest
//! dependency comes back. The layers, in the order a reconcile uses them (docs/architecture.md):
//!
//! - [`api`]: the `AppServer` custom resource (spec, status); [`crd`] renders its CRD.
//! - [`plan`]: validate a spec into a plan, using [`sizing`] (the formulas) and [`profile`]
//!   (how each server takes its workers and threads).
//! - [`desired`]: the Deployment and Service a plan becomes.
//! - [`observation`]: what the observer saw of an AppServer, the PromQL to see it, and what
//!   pod status says; [`backlog`] parses the listen backlog for the sidecar.
//! - [`tuner`]: estimates, the setting to move to, the safety rules, the gates that say when to
//!   look ([`tuner::gate`]) and the bridge to spec and status ([`tuner::appserver`]).
//! - [`report`]: status, conditions and Events from the outcome.
//! - [`model`]: the workload model (a pod as a queue); [`simulator`] runs the tuner against it.
//! - [`time`]: the one conversion between the API's timestamps and the tuner's seconds.

pub mod api;
pub mod backlog;
pub mod crd;
pub mod desired;
pub mod model;
pub mod observation;
pub mod plan;
pub mod profile;
pub mod report;
pub mod simulator;
pub mod sizing;
pub mod time;
pub mod tuner;
