//! The PromQL of each signal (pure): default templates, placeholder substitution and escaping.
//!
//! Every query, default or override, must evaluate to **one number** (a one-element vector or
//! a scalar) that already has the meaning the [`Observation`](crate::observation::Observation) field
//! has: per-pod rates and averages, the largest pod's memory, counts over all pods. The defaults
//! therefore aggregate in PromQL (`avg(sum by (pod) (...))`), so an override follows the same
//! contract as the query it replaces.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// One signal the observer reads. The serialized name is the key of its override in
/// `spec.tuning.metrics.queries`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Signal {
    RequestRate,
    LatencyP50,
    LatencyP95,
    LatencyP99,
    Queue,
    Drops,
    Cpu,
    CpuThrottling,
    Memory,
    OomKills,
    Restarts,
}

impl Signal {
    pub const ALL: [Signal; 11] = [
        Signal::RequestRate,
        Signal::LatencyP50,
        Signal::LatencyP95,
        Signal::LatencyP99,
        Signal::Queue,
        Signal::Drops,
        Signal::Cpu,
        Signal::CpuThrottling,
        Signal::Memory,
        Signal::OomKills,
        Signal::Restarts,
    ];

    /// The override key, also the name used in issues and logs.
    pub fn key(self) -> &'static str {
        match self {
            Signal::RequestRate => "requestRate",
            Signal::LatencyP50 => "latencyP50",
            Signal::LatencyP95 => "latencyP95",
            Signal::LatencyP99 => "latencyP99",
            Signal::Queue => "queue",
            Signal::Drops => "drops",
            Signal::Cpu => "cpu",
            Signal::CpuThrottling => "cpuThrottling",
            Signal::Memory => "memory",
            Signal::OomKills => "oomKills",
            Signal::Restarts => "restarts",
        }
    }

    pub fn from_key(key: &str) -> Option<Signal> {
        Signal::ALL.into_iter().find(|s| s.key() == key)
    }

    /// The default query template (see the module docs for the contract).
    pub fn default_template(self) -> &'static str {
        match self {
            Signal::RequestRate => REQUEST_RATE,
            Signal::LatencyP50 => LATENCY_P50,
            Signal::LatencyP95 => LATENCY_P95,
            Signal::LatencyP99 => LATENCY_P99,
            Signal::Queue => QUEUE,
            Signal::Drops => DROPS,
            Signal::Cpu => CPU,
            Signal::CpuThrottling => CPU_THROTTLING,
            Signal::Memory => MEMORY,
            Signal::OomKills => OOM_KILLS,
            Signal::Restarts => RESTARTS,
        }
    }
}

impl fmt::Display for Signal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.key())
    }
}

// The app's own histogram and the backlog sidecar carry no `container="app"` label we can rely
// on (the sidecar is another container), so they are selected by namespace and pod only.

/// App histogram `_count`: requests per second, summed per pod, averaged over pods.
pub const REQUEST_RATE: &str = r#"avg(sum by (pod) (rate(http_request_duration_seconds_count{namespace="{namespace}", pod=~"{pods}"}[{window}])))"#;
/// Quantiles of all requests of all pods together (a request's latency, not a pod's average).
pub const LATENCY_P50: &str = r#"histogram_quantile(0.5, sum by (le) (rate(http_request_duration_seconds_bucket{namespace="{namespace}", pod=~"{pods}"}[{window}])))"#;
pub const LATENCY_P95: &str = r#"histogram_quantile(0.95, sum by (le) (rate(http_request_duration_seconds_bucket{namespace="{namespace}", pod=~"{pods}"}[{window}])))"#;
pub const LATENCY_P99: &str = r#"histogram_quantile(0.99, sum by (le) (rate(http_request_duration_seconds_bucket{namespace="{namespace}", pod=~"{pods}"}[{window}])))"#;
/// Backlog sidecar gauge, one series per listening port: averaged over the window, summed over
/// the ports of a pod, averaged over pods.
pub const QUEUE: &str = r#"avg(sum by (pod) (avg_over_time(appserver_listen_backlog{namespace="{namespace}", pod=~"{pods}"}[{window}])))"#;
/// Backlog sidecar counter of refused connections, per second, per pod.
pub const DROPS: &str = r#"avg(sum by (pod) (rate(appserver_listen_overflows_total{namespace="{namespace}", pod=~"{pods}"}[{window}])))"#;
/// cAdvisor: cores used, per pod.
pub const CPU: &str = r#"avg(sum by (pod) (rate(container_cpu_usage_seconds_total{namespace="{namespace}", pod=~"{pods}", container="{container}"}[{window}])))"#;
/// cAdvisor: throttled share of CFS periods, per pod. Pods with no periods (idle, or no CPU
/// limit) are left out rather than dividing by zero into NaN.
pub const CPU_THROTTLING: &str = r#"avg(sum by (pod) (rate(container_cpu_cfs_throttled_periods_total{namespace="{namespace}", pod=~"{pods}", container="{container}"}[{window}])) / (sum by (pod) (rate(container_cpu_cfs_periods_total{namespace="{namespace}", pod=~"{pods}", container="{container}"}[{window}])) > 0))"#;
/// cAdvisor: peak working set in the window of the largest pod, MiB. The peak, because it is
/// the peak that meets the memory limit.
pub const MEMORY: &str = r#"max(max_over_time(container_memory_working_set_bytes{namespace="{namespace}", pod=~"{pods}", container="{container}"}[{window}])) / 1048576"#;
/// cAdvisor: kernel OOM kills in the container's cgroup, all pods. This also sees a worker
/// process killed while the container keeps running, which pod status never shows.
pub const OOM_KILLS: &str = r#"sum(increase(container_oom_events_total{namespace="{namespace}", pod=~"{pods}", container="{container}"}[{window}]))"#;
/// kube-state-metrics: container restarts, all pods. (`kube_pod_container_status_last_terminated_reason`
/// is a 0/1 gauge of the *last* termination: it cannot count kills and has no time, so OOM kills
/// come from cAdvisor and pod status instead.)
pub const RESTARTS: &str = r#"sum(increase(kube_pod_container_status_restarts_total{namespace="{namespace}", pod=~"{pods}", container="{container}"}[{window}]))"#;

/// What the placeholders stand for, raw (unescaped).
#[derive(Clone, Debug, PartialEq)]
pub struct Values<'a> {
    pub namespace: &'a str,
    /// The AppServer's name.
    pub name: &'a str,
    pub pods: &'a [String],
    pub container: &'a str,
    pub window: Duration,
}

/// The query for `signal`: its override from `queries` if there is one, else the default;
/// `true` when it is an override.
pub fn query_for(
    signal: Signal,
    queries: &BTreeMap<String, String>,
    values: &Values<'_>,
) -> (String, bool) {
    match queries.get(signal.key()) {
        Some(template) => (render(template, values), true),
        None => (render(signal.default_template(), values), false),
    }
}

/// Substitutes the placeholders in one pass, so a substituted value is never re-read as a
/// placeholder. Any other `{` (a label matcher) is kept as it is.
///
/// `{namespace}`, `{name}`, `{container}` and `{pods}` are escaped for a double-quoted PromQL
/// string; `{window}` is a bare duration for a range selector.
pub fn render(template: &str, values: &Values<'_>) -> String {
    let substitutions = [
        ("{namespace}", escape_string(values.namespace)),
        ("{name}", escape_string(values.name)),
        ("{pods}", escape_string(&pods_regex(values.pods))),
        ("{container}", escape_string(values.container)),
        ("{window}", duration(values.window)),
    ];
    let mut out = String::with_capacity(template.len() + 64);
    let mut rest = template;
    while let Some(at) = rest.find('{') {
        out.push_str(&rest[..at]);
        rest = &rest[at..];
        match substitutions.iter().find(|(p, _)| rest.starts_with(p)) {
            Some((placeholder, value)) => {
                out.push_str(value);
                rest = &rest[placeholder.len()..];
            }
            None => {
                out.push('{');
                rest = &rest[1..];
            }
        }
    }
    out.push_str(rest);
    out
}

/// Escapes a value for the inside of a double-quoted PromQL string.
pub fn escape_string(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '\\' => out.push_str(r"\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str(r"\n"),
            '\r' => out.push_str(r"\r"),
            '\t' => out.push_str(r"\t"),
            _ => out.push(c),
        }
    }
    out
}

/// Escapes RE2 metacharacters so the value matches only itself.
pub fn escape_regex(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        if r"\.+*?()|[]{}^$".contains(c) {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// The alternation matching exactly these pods (sorted, deduplicated), regex-escaped but not
/// yet string-escaped. Prometheus anchors the whole regex, so no `^…$` is needed.
pub fn pods_regex(pods: &[String]) -> String {
    let mut names: Vec<&str> = pods.iter().map(String::as_str).collect();
    names.sort_unstable();
    names.dedup();
    names
        .into_iter()
        .map(escape_regex)
        .collect::<Vec<_>>()
        .join("|")
}

/// A Prometheus duration (`2m`, `90s`, `1500ms`); at least `1ms`, as `[0s]` is invalid.
pub fn duration(d: Duration) -> String {
    let ms = d.as_millis().max(1);
    match ms {
        ms if ms % 3_600_000 == 0 => format!("{}h", ms / 3_600_000),
        ms if ms % 60_000 == 0 => format!("{}m", ms / 60_000),
        ms if ms % 1000 == 0 => format!("{}s", ms / 1000),
        ms => format!("{ms}ms"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values(pods: &[String]) -> Values<'_> {
        Values {
            namespace: "shop",
            name: "api",
            pods,
            container: "app",
            window: Duration::from_secs(120),
        }
    }

    #[test]
    fn keys_round_trip_and_match_serde() {
        for s in Signal::ALL {
            assert_eq!(Signal::from_key(s.key()), Some(s));
            assert_eq!(serde_json::to_value(s).unwrap(), s.key());
        }
        assert_eq!(Signal::from_key("latencyP90"), None);
    }

    #[test]
    fn renders_every_placeholder() {
        let pods = vec!["api-1".to_string(), "api-0".to_string()];
        let q = render(
            r#"x{namespace="{namespace}", n="{name}", pod=~"{pods}", container="{container}"}[{window}]"#,
            &values(&pods),
        );
        assert_eq!(
            q,
            r#"x{namespace="shop", n="api", pod=~"api-0|api-1", container="app"}[2m]"#
        );
    }

    #[test]
    fn keeps_label_braces_and_unknown_placeholders() {
        let pods = vec!["p".to_string()];
        let q = render(r#"sum(x{job="a"}) + {nope} + {"#, &values(&pods));
        assert_eq!(q, r#"sum(x{job="a"}) + {nope} + {"#);
    }

    #[test]
    fn substituted_values_are_not_rendered_again() {
        let pods = vec!["{namespace}".to_string()];
        let q = render(r#""{pods}""#, &values(&pods));
        assert_eq!(q, r#""\\{namespace\\}""#);
    }

    #[test]
    fn escapes_string_context() {
        assert_eq!(escape_string(r#"a"b\c"#), r#"a\"b\\c"#);
        assert_eq!(escape_string("a\nb"), r"a\nb");
    }

    #[test]
    fn escapes_regex_then_string() {
        // `.` → `\.` for the regex, then the backslash doubled for the string.
        let pods = vec!["api-7d9f.abc".to_string(), "we\"ird\\pod".to_string()];
        assert_eq!(pods_regex(&pods), r#"api-7d9f\.abc|we"ird\\pod"#);
        let q = render(r#"pod=~"{pods}""#, &values(&pods));
        assert_eq!(q, r#"pod=~"api-7d9f\\.abc|we\"ird\\\\pod""#);
    }

    #[test]
    fn regex_escapes_every_metacharacter() {
        assert_eq!(
            escape_regex(r"a.b+c*d?e(f)g|h[i]j{k}l^m$n\o"),
            r"a\.b\+c\*d\?e\(f\)g\|h\[i\]j\{k\}l\^m\$n\\o"
        );
    }

    #[test]
    fn pods_are_sorted_and_deduplicated() {
        let pods = vec!["b".to_string(), "a".to_string(), "b".to_string()];
        assert_eq!(pods_regex(&pods), "a|b");
    }

    #[test]
    fn durations() {
        assert_eq!(duration(Duration::from_secs(7200)), "2h");
        assert_eq!(duration(Duration::from_secs(120)), "2m");
        assert_eq!(duration(Duration::from_secs(90)), "90s");
        assert_eq!(duration(Duration::from_millis(1500)), "1500ms");
        assert_eq!(duration(Duration::ZERO), "1ms");
    }

    #[test]
    fn override_replaces_one_signal_whole() {
        let pods = vec!["api-0".to_string()];
        let queries = BTreeMap::from([("queue".to_string(), "vector(7)".to_string())]);
        assert_eq!(
            query_for(Signal::Queue, &queries, &values(&pods)),
            ("vector(7)".to_string(), true)
        );
        let (cpu, overridden) = query_for(Signal::Cpu, &queries, &values(&pods));
        assert!(!overridden);
        assert!(cpu.contains(r#"container_cpu_usage_seconds_total{namespace="shop", pod=~"api-0", container="app"}[2m]"#));
    }

    #[test]
    fn every_default_is_fully_rendered() {
        let pods = vec!["api-0".to_string()];
        for s in Signal::ALL {
            let q = render(s.default_template(), &values(&pods));
            for p in ["{namespace}", "{name}", "{pods}", "{container}", "{window}"] {
                assert!(!q.contains(p), "{s}: {q}");
            }
            assert!(q.contains("[2m]"), "{s}: {q}");
        }
    }
}
