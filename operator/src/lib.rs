//! appserver-operator: the imperative shell around `appserver_core`, which decides everything.
//! This crate reads the world, hands what it read to the core, and writes back what the core
//! returns (see docs/architecture.md):
//!
//! - [`controller`]: watch → observe → decide → apply → report, one file per step;
//! - [`observer`]: Prometheus queries and the pod list, for the tuner;
//! - [`backlog_exporter`]: the sidecar that serves the listen backlog from procfs;
//! - [`leader`]: leader election through a Lease;
//! - [`http`] and [`health`]: `/healthz`, `/readyz` and `/metrics`; [`telemetry`]: the metrics;
//! - [`cli`]: the commands, one file each (`run`, `crd`, `size`, `simulate`, `backlog-exporter`).

pub mod backlog_exporter;
pub mod cli;
pub mod controller;
mod error_chain;
pub mod health;
pub mod http;
pub mod leader;
pub mod observer;
pub mod telemetry;

pub use error_chain::error_chain;
