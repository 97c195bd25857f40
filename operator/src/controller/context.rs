//! What every reconcile shares: the client, the Event recorder, the node cache, the observer,
//! and per-AppServer memory (failure counts for backoff, the tuner's gates).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use appserver_core::desired::{DEFAULT_SIDECAR_IMAGE, MANAGER};
use appserver_core::observation::Observation;
use appserver_core::tuner::gate::{Cadence, Gates};
use k8s_openapi::api::core::v1::Node;
use kube::Client;
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::reflector::Store;

use crate::observer::Observer;
use crate::telemetry::Metrics;

const BACKOFF_BASE: Duration = Duration::from_secs(1);
const BACKOFF_MAX: Duration = Duration::from_secs(300);

/// How the tuner observes: where, how often, over what window.
#[derive(Clone, Debug)]
pub struct TuningOptions {
    /// Prometheus for AppServers that name none.
    pub prometheus_url: Option<String>,
    pub interval: Duration,
    pub window: Duration,
    pub sidecar_image: String,
}

impl Default for TuningOptions {
    fn default() -> Self {
        Self {
            prometheus_url: None,
            interval: Duration::from_secs(60),
            window: Duration::from_secs(120),
            sidecar_image: DEFAULT_SIDECAR_IMAGE.into(),
        }
    }
}

impl TuningOptions {
    fn cadence(&self) -> Cadence {
        Cadence {
            interval: self.interval.as_secs_f64(),
            window: self.window.as_secs_f64(),
        }
    }
}

/// Shared by every reconcile.
pub struct Context {
    pub client: Client,
    pub recorder: Recorder,
    pub nodes: Store<Node>,
    pub metrics: Arc<Metrics>,
    pub tuning: TuningOptions,
    pub(super) observer: Observer,
    /// Consecutive failures per object: kube-runtime has no per-object backoff.
    backoff: Mutex<HashMap<String, u32>>,
    /// The tuner's gates (core `tuner::gate`), on the monotonic clock below.
    gates: Mutex<Gates>,
    clock: Instant,
}

impl Context {
    pub fn new(client: Client, nodes: Store<Node>, metrics: Arc<Metrics>) -> Self {
        let recorder = Recorder::new(client.clone(), Reporter::from(MANAGER));
        Self {
            client,
            recorder,
            nodes,
            metrics,
            tuning: TuningOptions::default(),
            observer: Observer::new(),
            backoff: Mutex::default(),
            gates: Mutex::default(),
            clock: Instant::now(),
        }
    }

    pub fn with_tuning(mut self, tuning: TuningOptions) -> Self {
        self.tuning = tuning;
        self
    }

    /// Seconds on the monotonic clock the gates run on.
    fn now(&self) -> f64 {
        self.clock.elapsed().as_secs_f64()
    }

    /// Runs `f` on the gates. A panic elsewhere must not stop tuning: a poisoned lock is taken
    /// over, since the gates hold only times.
    fn with_gates<T>(&self, f: impl FnOnce(&mut Gates, f64, &Cadence) -> T) -> T {
        let mut gates = self.gates.lock().unwrap_or_else(PoisonError::into_inner);
        f(&mut gates, self.now(), &self.tuning.cadence())
    }

    /// Whether `key` is due for an observation; marks it observed when it is.
    pub(super) fn due(&self, key: &str) -> bool {
        self.with_gates(|g, now, c| g.due(key, now, c))
    }

    /// Whether `o` covers a whole window of data (see `tuner::gate`).
    pub(super) fn full_window(&self, key: &str, o: &Observation) -> bool {
        self.with_gates(|g, now, c| g.full_window(key, now, o, c))
    }

    pub(super) fn forget_window(&self, key: &str) {
        self.with_gates(|g, _, _| g.forget_window(key));
    }

    /// Time until `key`'s next observation.
    pub(super) fn until_due(&self, key: &str) -> Duration {
        Duration::from_secs_f64(self.with_gates(|g, now, c| g.until_due(key, now, c)))
    }

    /// Counts a failure of `key` (or clears its count) and returns the count.
    pub(super) fn failures(&self, key: &str, failed: bool) -> u32 {
        let mut map = self.backoff.lock().unwrap_or_else(PoisonError::into_inner);
        if failed {
            let n = map.entry(key.to_string()).or_insert(0);
            *n = n.saturating_add(1);
            *n
        } else {
            map.remove(key);
            0
        }
    }
}

/// Delay after the n-th consecutive failure: 1 s, 2 s, 4 s … up to 5 min.
pub fn backoff_delay(failures: u32) -> Duration {
    let factor = 2u32.saturating_pow(failures.saturating_sub(1));
    BACKOFF_BASE.saturating_mul(factor).min(BACKOFF_MAX)
}
