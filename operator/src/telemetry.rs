//! The operator's own metrics. Labels are fixed categories, never object names, so the series
//! count stays flat however many AppServers there are.

use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabels {
    pub category: &'static str,
}

pub struct Metrics {
    pub reconciliations: Counter,
    pub errors: Family<ErrorLabels, Counter>,
    pub duration: Histogram,
    /// 1 while this replica runs the controller (always, without leader election).
    pub leader: Gauge,
    registry: Registry,
}

impl Default for Metrics {
    fn default() -> Self {
        let reconciliations = Counter::default();
        let errors = Family::<ErrorLabels, Counter>::default();
        let duration = Histogram::new([0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0]);
        let mut registry = Registry::with_prefix("appserver_operator");
        registry.register(
            "reconciliations",
            "Reconciliations started",
            reconciliations.clone(),
        );
        registry.register(
            "reconcile_errors",
            "Reconciliations that failed, by step",
            errors.clone(),
        );
        registry.register(
            "reconcile_duration_seconds",
            "Time one reconciliation took",
            duration.clone(),
        );
        let leader = Gauge::default();
        registry.register(
            "leader",
            "1 while this replica runs the controller",
            leader.clone(),
        );
        Self {
            reconciliations,
            errors,
            duration,
            leader,
            registry,
        }
    }
}

impl Metrics {
    pub fn observe(&self, took: Duration, error: Option<&'static str>) {
        self.reconciliations.inc();
        self.duration.observe(took.as_secs_f64());
        if let Some(category) = error {
            self.errors.get_or_create(&ErrorLabels { category }).inc();
        }
    }

    /// OpenMetrics text.
    pub fn encode(&self) -> Result<String, std::fmt::Error> {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)?;
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_are_counted_by_category() {
        let m = Metrics::default();
        m.observe(Duration::from_millis(3), None);
        m.observe(Duration::from_millis(4), Some("apply"));
        let text = m.encode().unwrap();
        assert!(
            text.contains("appserver_operator_reconciliations_total 2"),
            "{text}"
        );
        assert!(
            text.contains("appserver_operator_reconcile_errors_total{category=\"apply\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("appserver_operator_reconcile_duration_seconds_count 2"),
            "{text}"
        );
    }
}
