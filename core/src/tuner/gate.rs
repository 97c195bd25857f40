//! When the tuner looks and when what it saw may be judged (pure: every function takes `now`).
//!
//! - **due**: each AppServer is observed at most once per interval, however often status writes
//!   and rollouts wake its reconcile;
//! - **full window**: rates over a window that only partly has samples (new pods, a Prometheus
//!   that just came back) under-read, so the first window after data appears is waited out; an
//!   OOM kill, or no data at all, is acted on (or reported) at once;
//! - **settling**: a window that began before the last change would mix two settings, so until
//!   it has passed only pod status (OOM kills) is read.
//!
//! The controller keeps one [`Gates`] for every AppServer and passes its monotonic clock in
//! seconds; the tests below drive them with plain numbers.

use std::collections::HashMap;

use crate::observation::Observation;

/// How often each AppServer is observed and over what window, seconds.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Cadence {
    pub interval: f64,
    pub window: f64,
}

impl Cadence {
    /// AppServers not observed for this long are forgotten (deleted, or no longer tuned).
    fn stale_after(&self) -> f64 {
        self.interval * 10.0
    }
}

#[derive(Clone, Copy, Debug, PartialEq)]
struct Entry {
    /// When it was last observed.
    observed: f64,
    /// Since when its signals have had data.
    data_since: Option<f64>,
}

/// The gates of every AppServer, by key (`namespace/name`).
#[derive(Clone, Debug, Default)]
pub struct Gates {
    entries: HashMap<String, Entry>,
}

impl Gates {
    /// Whether `key` is due for an observation at `now`; marks it observed when it is.
    pub fn due(&mut self, key: &str, now: f64, cadence: &Cadence) -> bool {
        let stale = cadence.stale_after();
        self.entries.retain(|_, e| now - e.observed < stale);
        match self.entries.get_mut(key) {
            Some(e) if now - e.observed < cadence.interval => false,
            Some(e) => {
                e.observed = now;
                true
            }
            None => {
                let fresh = Entry {
                    observed: now,
                    data_since: None,
                };
                self.entries.insert(key.to_string(), fresh);
                true
            }
        }
    }

    /// Seconds until `key`'s next observation, at least one.
    pub fn until_due(&self, key: &str, now: f64, cadence: &Cadence) -> f64 {
        let wait = self
            .entries
            .get(key)
            .map_or(cadence.interval, |e| cadence.interval - (now - e.observed));
        wait.max(1.0)
    }

    /// Whether observation `o` of `key` covers a whole window of data.
    pub fn full_window(&mut self, key: &str, now: f64, o: &Observation, cadence: &Cadence) -> bool {
        if o.oom_kills > 0 {
            return true;
        }
        let entry = self.entries.entry(key.to_string()).or_insert(Entry {
            observed: now,
            data_since: None,
        });
        if o.request_rate.is_none() {
            entry.data_since = None;
            return true;
        }
        let since = *entry.data_since.get_or_insert(now);
        now - since >= cadence.window
    }

    /// After a change the next window must show the new setting alone: start over.
    pub fn forget_window(&mut self, key: &str) {
        if let Some(e) = self.entries.get_mut(key) {
            e.data_since = None;
        }
    }

    /// AppServers it keeps track of.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// The time of the last change when it falls inside the window that ends at `now`: the window
/// mixes two settings and only pod status since the change may be read.
pub fn settling(last_change: Option<f64>, now: f64, window: f64) -> Option<f64> {
    last_change.filter(|&t| t > now - window)
}

#[cfg(test)]
mod tests {
    use super::*;

    const CADENCE: Cadence = Cadence {
        interval: 60.0,
        window: 120.0,
    };

    fn with_traffic() -> Observation {
        Observation {
            request_rate: Some(5.0),
            ..Default::default()
        }
    }

    #[test]
    fn due_once_per_interval() {
        let mut g = Gates::default();
        assert!(g.due("a/x", 0.0, &CADENCE));
        assert!(!g.due("a/x", 30.0, &CADENCE));
        assert!(!g.due("a/x", 59.9, &CADENCE));
        assert!(g.due("a/x", 60.0, &CADENCE));
        assert!(
            g.due("a/y", 61.0, &CADENCE),
            "each AppServer has its own clock"
        );
    }

    #[test]
    fn until_due_counts_down_and_is_at_least_a_second() {
        let mut g = Gates::default();
        assert_eq!(g.until_due("a/x", 0.0, &CADENCE), 60.0);
        g.due("a/x", 100.0, &CADENCE);
        assert_eq!(g.until_due("a/x", 130.0, &CADENCE), 30.0);
        assert_eq!(g.until_due("a/x", 500.0, &CADENCE), 1.0);
    }

    #[test]
    fn forgets_appservers_not_observed_for_ten_intervals() {
        let mut g = Gates::default();
        g.due("a/gone", 0.0, &CADENCE);
        g.due("a/here", 590.0, &CADENCE);
        assert_eq!(g.len(), 2);
        g.due("a/here", 650.0, &CADENCE);
        assert_eq!(g.len(), 1);
    }

    #[test]
    fn waits_a_full_window_after_data_appears() {
        let mut g = Gates::default();
        g.due("a/x", 0.0, &CADENCE);
        assert!(!g.full_window("a/x", 0.0, &with_traffic(), &CADENCE));
        assert!(!g.full_window("a/x", 119.0, &with_traffic(), &CADENCE));
        assert!(g.full_window("a/x", 120.0, &with_traffic(), &CADENCE));
    }

    #[test]
    fn no_data_is_reported_at_once_and_starts_the_window_over() {
        let mut g = Gates::default();
        g.full_window("a/x", 0.0, &with_traffic(), &CADENCE);
        assert!(g.full_window("a/x", 10.0, &Observation::default(), &CADENCE));
        assert!(!g.full_window("a/x", 200.0, &with_traffic(), &CADENCE));
        assert!(g.full_window("a/x", 320.0, &with_traffic(), &CADENCE));
    }

    #[test]
    fn an_oom_kill_is_acted_on_at_once() {
        let mut g = Gates::default();
        let oom = Observation {
            oom_kills: 1,
            ..with_traffic()
        };
        assert!(g.full_window("a/x", 0.0, &oom, &CADENCE));
    }

    #[test]
    fn a_change_starts_the_window_over() {
        let mut g = Gates::default();
        g.due("a/x", 0.0, &CADENCE);
        g.full_window("a/x", 0.0, &with_traffic(), &CADENCE);
        assert!(g.full_window("a/x", 120.0, &with_traffic(), &CADENCE));
        g.forget_window("a/x");
        assert!(!g.full_window("a/x", 130.0, &with_traffic(), &CADENCE));
        assert!(g.full_window("a/x", 250.0, &with_traffic(), &CADENCE));
    }

    #[test]
    fn settling_while_the_change_is_inside_the_window() {
        assert_eq!(settling(None, 1000.0, 120.0), None);
        assert_eq!(settling(Some(900.0), 1000.0, 120.0), Some(900.0));
        assert_eq!(settling(Some(880.0), 1000.0, 120.0), None);
    }
}
