//! What the signals say about the workload: the laws of queueing turned around (pure).

use crate::observation::Observation;

/// Below this many requests per second per pod there is too little traffic to learn from.
pub const MIN_RATE: f64 = 0.01;

/// The signals the tuner reasons with, checked: finite, non-negative and consistent.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Checked {
    pub rate: f64,
    pub p50: f64,
    pub p95: f64,
    pub queue: Option<f64>,
    pub drops: Option<f64>,
    pub cpu: f64,
    pub memory_mib: Option<f64>,
    pub window: f64,
}

/// Why a set of signals cannot be used; the text completes "holding: …".
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Unusable {
    /// A signal is missing (no data, Prometheus unreachable).
    Missing(String),
    /// A signal has a value no real system produces.
    Absurd(String),
    /// The pod serves (almost) nothing: nothing to learn.
    NoTraffic,
}

impl std::fmt::Display for Unusable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Missing(m) => write!(f, "no data for {m}"),
            Self::Absurd(m) => write!(f, "implausible metrics: {m}"),
            Self::NoTraffic => write!(f, "no traffic to learn from"),
        }
    }
}

/// Checks the signals against each other and against the pod's CPU limit.
pub fn check(obs: &Observation, cpu_limit: f64) -> Result<Checked, Unusable> {
    let fields = [
        ("requestRate", obs.request_rate),
        ("latencyP50", obs.latency_p50),
        ("latencyP95", obs.latency_p95),
        ("latencyP99", obs.latency_p99),
        ("queue", obs.queue),
        ("drops", obs.drop_rate),
        ("cpu", obs.cpu_cores),
        ("cpuThrottling", obs.cpu_throttled),
        ("memory", obs.memory_mib),
    ];
    let bad: Vec<String> = fields
        .iter()
        .filter_map(|(name, v)| {
            v.filter(|x| !x.is_finite() || *x < 0.0)
                .map(|x| format!("{name} = {x}"))
        })
        .collect();
    if !bad.is_empty() {
        return Err(Unusable::Absurd(bad.join(", ")));
    }
    if obs.pods == 0 {
        return Err(Unusable::Missing("pods (none observed)".into()));
    }
    let missing: Vec<&str> = [
        ("requestRate", obs.request_rate),
        ("latencyP95", obs.latency_p95),
        ("cpu", obs.cpu_cores),
    ]
    .iter()
    .filter(|(_, v)| v.is_none())
    .map(|(n, _)| *n)
    .collect();
    let (Some(rate), Some(p95), Some(cpu)) = (obs.request_rate, obs.latency_p95, obs.cpu_cores)
    else {
        return Err(Unusable::Missing(missing.join(", ")));
    };
    if rate < MIN_RATE {
        return Err(Unusable::NoTraffic);
    }
    // A cgroup cannot use more than its quota; a little over is scrape jitter.
    if cpu > cpu_limit * 1.5 + 0.05 {
        return Err(Unusable::Absurd(format!(
            "cpu = {cpu:.2} cores on a {cpu_limit} core limit"
        )));
    }
    let p50 = obs.latency_p50.unwrap_or(p95);
    if p50 > p95 * 1.1 + 1e-3 {
        return Err(Unusable::Absurd(format!(
            "latencyP50 {p50:.3}s above latencyP95 {p95:.3}s"
        )));
    }
    Ok(Checked {
        rate,
        p50,
        p95,
        queue: obs.queue,
        drops: obs.drop_rate,
        cpu,
        memory_mib: obs.memory_mib,
        window: obs.window_seconds.max(1.0),
    })
}

/// The workload as the signals show it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Estimate {
    /// CPU seconds per request (utilisation law: CPU used / throughput).
    pub s: f64,
    /// Waiting seconds per request: the median latency less CPU and backlog time.
    pub d: f64,
    /// Requests per second the pod is offered: served + refused + backlog growth.
    pub offered: f64,
}

/// `slots` is how many requests the pod serves at once now (workers × threads).
pub fn estimate(c: &Checked, slots: u32) -> Estimate {
    let s = c.cpu / c.rate;
    let slots = f64::from(slots.max(1));
    let d = if saturated(c, slots) {
        // Every slot is busy, so Little's law on the slots gives the time in one exactly,
        // where the latency is mostly backlog and its noise would swamp `d`.
        slots / c.rate - s
    } else {
        // Little's law on the backlog: time in it = its length / the rate it drains at.
        let backlog_wait = c.queue.map_or(0.0, |q| q / c.rate);
        c.p50 - s - backlog_wait
    }
    .max(0.0);
    let refused = c.drops.unwrap_or(0.0);
    // Without a drop counter a full backlog still shows how much more came than was served.
    let growth = match c.drops {
        Some(_) => 0.0,
        None => c.queue.unwrap_or(0.0) / c.window,
    };
    Estimate {
        s,
        d,
        offered: c.rate + refused + growth,
    }
}

/// Requests are refused, or more wait in the backlog than there are slots.
fn saturated(c: &Checked, slots: f64) -> bool {
    c.drops.is_some_and(|d| d > 0.01 * c.rate) || c.queue.is_some_and(|q| q >= slots.max(2.0))
}

/// Blends a new estimate into what was learned: half and half, so one noisy window moves it
/// only halfway.
pub fn blend(old: Option<f64>, new: f64) -> f64 {
    match old {
        Some(o) if o.is_finite() => 0.5 * o + 0.5 * new,
        _ => new,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obs() -> Observation {
        Observation {
            window_seconds: 60.0,
            pods: 2,
            request_rate: Some(10.0),
            latency_p50: Some(0.35),
            latency_p95: Some(0.5),
            queue: Some(1.0),
            cpu_cores: Some(0.5),
            ..Observation::default()
        }
    }

    #[test]
    fn laws_recover_s_and_d() {
        let e = estimate(&check(&obs(), 2.0).unwrap(), 20);
        assert!((e.s - 0.05).abs() < 1e-12);
        // 0.35 − 0.05 − 1/10 of backlog wait.
        assert!((e.d - 0.2).abs() < 1e-12);
        assert!((e.offered - (10.0 + 1.0 / 60.0)).abs() < 1e-12);
    }

    #[test]
    fn refused_connections_count_as_offered() {
        let mut o = obs();
        o.drop_rate = Some(40.0);
        let e = estimate(&check(&o, 2.0).unwrap(), 20);
        assert_eq!(e.offered, 50.0);
        // Saturated: all 20 slots busy at 10/s → 2 s per request, 1.95 s of it waiting.
        assert!((e.d - 1.95).abs() < 1e-12, "{e:?}");
    }

    #[test]
    fn bad_signals_are_named() {
        let mut o = obs();
        o.latency_p95 = Some(f64::NAN);
        o.cpu_cores = Some(-1.0);
        assert_eq!(
            check(&o, 2.0),
            Err(Unusable::Absurd("latencyP95 = NaN, cpu = -1".into()))
        );
        let mut o = obs();
        o.latency_p95 = None;
        o.cpu_cores = None;
        assert_eq!(
            check(&o, 2.0),
            Err(Unusable::Missing("latencyP95, cpu".into()))
        );
        let mut o = obs();
        o.cpu_cores = Some(9.0);
        assert!(matches!(check(&o, 2.0), Err(Unusable::Absurd(_))));
        let mut o = obs();
        o.latency_p50 = Some(3.0);
        assert!(matches!(check(&o, 2.0), Err(Unusable::Absurd(_))));
        let mut o = obs();
        o.request_rate = Some(0.0);
        assert_eq!(check(&o, 2.0), Err(Unusable::NoTraffic));
        let mut o = obs();
        o.pods = 0;
        assert!(matches!(check(&o, 2.0), Err(Unusable::Missing(_))));
    }
}
