//! appserver-operator: deploys app servers and sizes their workers and threads.
//!
//! Functional core: [`api`], [`sizing`], [`profile`], [`plan`], [`desired`], [`report`] are pure.
//! Imperative shell: [`controller`], [`leader`], [`http`], [`telemetry`] and the binary.

pub mod api;
pub mod backlog;
pub mod cli;
pub mod controller;
pub mod crd;
pub mod desired;
pub mod http;
pub mod leader;
pub mod model;
pub mod observe;
pub mod offline;
pub mod plan;
pub mod profile;
pub mod report;
pub mod signals;
pub mod sim;
pub mod simulate;
pub mod sizing;
pub mod telemetry;
pub mod tuner;
pub mod tuning;
