//! Validate an AppServer into a plan: the basis, the sizing and the server settings.
//!
//! Pure. The CRD's schema and CEL rules already refused what the API server can judge; this
//! step judges what needs the cluster's nodes or the server profile.

use crate::api::{AppServerSpec, TuningMode};
use crate::profile::{self, ServerSettings};
use crate::sizing::{
    self, Basis, BasisError, Concurrency, MemoryModel, NodeShape, Sizing, SizingError, SizingInput,
};

/// Everything needed to build the owned objects, with no optional parts left to decide.
#[derive(Clone, Debug, PartialEq)]
pub struct Plan {
    /// `None` with `tuning.mode: off`.
    pub sized: Option<Sized>,
    pub settings: ServerSettings,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Sized {
    pub basis: Basis,
    pub sizing: Sizing,
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum PlanError {
    #[error(transparent)]
    Basis(#[from] BasisError),
    #[error(transparent)]
    Sizing(#[from] SizingError),
    #[error(
        "spec.env sets {0} which the {1} profile manages; remove it from spec.env or set spec.tuning.mode: off"
    )]
    EnvConflict(String, &'static str),
}

impl PlanError {
    /// The condition reason: short, PascalCase, stable.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Basis(_) => "NoSizingBasis",
            Self::Sizing(SizingError::DoesNotFit { .. }) => "DoesNotFit",
            Self::Sizing(SizingError::BadCpu(_)) => "NoSizingBasis",
            Self::EnvConflict(..) => "InvalidSpec",
        }
    }
}

/// Plans an AppServer for the nodes it may be scheduled on.
pub fn plan(spec: &AppServerSpec, nodes: &[NodeShape]) -> Result<Plan, PlanError> {
    let sized = match spec.tuning.mode {
        TuningMode::Off => None,
        TuningMode::Static | TuningMode::Recommend | TuningMode::Auto => {
            let basis = sizing::resolve_basis(spec.resources.as_ref(), nodes)?;
            let sizing = sizing::size(&sizing_input(spec, &basis))?;
            Some(Sized { basis, sizing })
        }
    };
    let sizing = sized.as_ref().map(|s| &s.sizing);
    check_env(spec, sizing)?;
    Ok(Plan {
        settings: profile::render(spec, sizing),
        sized,
    })
}

/// The formulas' input for a spec on a basis.
pub fn sizing_input(spec: &AppServerSpec, basis: &Basis) -> SizingInput {
    SizingInput {
        cpu_cores: basis.cpu_cores,
        memory_mib: basis.memory_mib,
        concurrency: Concurrency::of(&spec.server, spec.workload),
        workload: spec.workload,
        memory: MemoryModel {
            base_mib: spec.memory.base_mib as f64,
            per_worker_mib: spec.memory.per_worker_mib as f64,
        },
        workers: (&spec.tuning.workers).into(),
        threads: (&spec.tuning.threads).into(),
    }
}

/// Two sources for one variable would make the pod's behaviour depend on list order.
fn check_env(spec: &AppServerSpec, sizing: Option<&Sizing>) -> Result<(), PlanError> {
    let managed = profile::managed_env_names(spec, sizing);
    let mut clashes: Vec<&str> = spec
        .env
        .iter()
        .map(|e| e.name.as_str())
        .filter(|n| managed.iter().any(|m| m == n))
        .collect();
    clashes.sort_unstable();
    clashes.dedup();
    if clashes.is_empty() {
        Ok(())
    } else {
        Err(PlanError::EnvConflict(
            clashes.join(", "),
            profile_name(spec),
        ))
    }
}

fn profile_name(spec: &AppServerSpec) -> &'static str {
    use crate::api::ServerKind::*;
    match spec.server.kind {
        Gunicorn => "gunicorn",
        Uvicorn => "uvicorn",
        Puma => "puma",
        Unicorn => "unicorn",
        PhpFpm => "php-fpm",
        Node => "node",
        Generic => "generic",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(extra: serde_json::Value) -> AppServerSpec {
        let mut base = serde_json::json!({
            "image": "app:1", "args": ["app:app"], "server": {"kind": "gunicorn"},
            "resources": {"limits": {"cpu": "2", "memory": "2Gi"}},
        });
        if let (Some(b), Some(e)) = (base.as_object_mut(), extra.as_object()) {
            b.extend(e.clone());
        }
        serde_json::from_value(base).unwrap()
    }

    #[test]
    fn static_mode_sizes_from_limits() {
        let p = plan(&spec(serde_json::json!({})), &[]).unwrap();
        let s = p.sized.unwrap();
        assert_eq!((s.sizing.workers, s.sizing.threads), (5, 4));
        assert!(p.settings.env.iter().any(|e| e.name == "GUNICORN_WORKERS"));
    }

    #[test]
    fn off_mode_needs_no_basis() {
        let p = plan(
            &spec(serde_json::json!({"resources": null, "tuning": {"mode": "off"}})),
            &[],
        )
        .unwrap();
        assert_eq!(p.sized, None);
    }

    #[test]
    fn env_that_the_profile_manages_is_refused() {
        let s = spec(
            serde_json::json!({"env": [{"name": "GUNICORN_WORKERS", "value": "9"}, {"name": "DB", "value": "x"}]}),
        );
        let err = plan(&s, &[]).unwrap_err();
        assert_eq!(err.reason(), "InvalidSpec");
        assert!(
            err.to_string()
                .starts_with("spec.env sets GUNICORN_WORKERS which the gunicorn profile manages"),
            "{err}"
        );
        // With tuning off the numbers are the user's to set.
        let mut s = s;
        s.tuning.mode = TuningMode::Off;
        assert!(plan(&s, &[]).is_ok());
    }

    #[test]
    fn impossible_memory_is_does_not_fit() {
        let s = spec(
            serde_json::json!({"memory": {"baseMiB": 300, "perWorkerMiB": 1536}, "resources": {"limits": {"cpu": "1", "memory": "1Gi"}}}),
        );
        assert_eq!(plan(&s, &[]).unwrap_err().reason(), "DoesNotFit");
    }

    #[test]
    fn no_basis_is_reported() {
        let s = spec(serde_json::json!({"resources": null}));
        assert_eq!(plan(&s, &[]).unwrap_err().reason(), "NoSizingBasis");
    }
}
