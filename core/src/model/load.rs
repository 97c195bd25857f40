//! Offered load over time: steps of constant requests per second.

use serde::Serialize;

/// Piecewise-constant offered load, per pod.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Load {
    /// `(from second, requests per second)`, sorted by time; the first starts at 0.
    steps: Vec<(f64, f64)>,
}

impl Load {
    pub fn constant(rps: f64) -> Self {
        Self {
            steps: vec![(0.0, rps)],
        }
    }

    /// `rps`, then `factor × rps` from `at` for `length` seconds (a burst), then `rps` again.
    pub fn burst(rps: f64, factor: f64, at: f64, length: f64) -> Self {
        Self {
            steps: vec![(0.0, rps), (at, rps * factor), (at + length, rps)],
        }
    }

    /// From explicit steps; unsorted input is sorted, and the load before the first step is 0.
    pub fn steps(mut steps: Vec<(f64, f64)>) -> Self {
        steps.sort_by(|a, b| a.0.total_cmp(&b.0));
        Self { steps }
    }

    /// Requests per second offered at second `t`.
    pub fn at(&self, t: f64) -> f64 {
        self.steps
            .iter()
            .take_while(|(from, _)| *from <= t)
            .last()
            .map_or(0.0, |(_, rps)| *rps)
    }

    /// Mean offered load over `[from, to)`, sampled each second (steps fall on whole seconds
    /// in every use we have).
    pub fn mean(&self, from: f64, to: f64) -> f64 {
        let n = (to - from).max(1.0).round() as usize;
        (0..n).map(|i| self.at(from + i as f64)).sum::<f64>() / n as f64
    }

    /// The highest load ever offered.
    pub fn peak(&self) -> f64 {
        self.steps.iter().map(|s| s.1).fold(0.0, f64::max)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_doubles_for_its_length() {
        let l = Load::burst(10.0, 2.0, 60.0, 60.0);
        assert_eq!(l.at(0.0), 10.0);
        assert_eq!(l.at(59.0), 10.0);
        assert_eq!(l.at(60.0), 20.0);
        assert_eq!(l.at(119.0), 20.0);
        assert_eq!(l.at(120.0), 10.0);
        assert_eq!(l.mean(30.0, 90.0), 15.0);
        assert_eq!(l.peak(), 20.0);
    }

    #[test]
    fn before_the_first_step_nothing_is_offered() {
        let l = Load::steps(vec![(30.0, 5.0), (10.0, 1.0)]);
        assert_eq!(l.at(0.0), 0.0);
        assert_eq!(l.at(10.0), 1.0);
        assert_eq!(l.at(40.0), 5.0);
    }
}
