//! Erlang's formulas for a pool of `m` identical servers fed by Poisson arrivals (M/M/m).
//!
//! `m` may be fractional: a pod whose CPU allows 2.4 requests in parallel is between a pool of
//! 2 and a pool of 3, and the wait is interpolated linearly between the two.

/// Probability that an arrival finds all of `m` servers busy (Erlang C), for `a` erlangs of
/// offered work (`a < m`). Integer `m`, by the stable Erlang B recursion.
fn erlang_c_int(m: u64, a: f64) -> f64 {
    let mut b = 1.0;
    for n in 1..=m {
        b = a * b / (n as f64 + a * b);
    }
    let m = m as f64;
    let c = m * b / (m - a * (1.0 - b));
    c.clamp(0.0, 1.0)
}

/// The waiting-time law of an M/M/m queue: `P(W > t) = p_wait · e^(−rate·t)`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Wait {
    /// Probability of waiting at all.
    pub p_wait: f64,
    /// Decay rate of the wait's tail, 1/s.
    pub rate: f64,
}

impl Wait {
    /// Mean wait, seconds.
    pub fn mean(&self) -> f64 {
        self.p_wait / self.rate
    }

    /// The `q`-quantile of the wait, seconds.
    pub fn quantile(&self, q: f64) -> f64 {
        let tail = 1.0 - q;
        if self.p_wait <= tail {
            0.0
        } else {
            (self.p_wait / tail).ln() / self.rate
        }
    }

    /// `P(W ≤ t)`.
    pub fn cdf(&self, t: f64) -> f64 {
        if t < 0.0 {
            0.0
        } else {
            1.0 - self.p_wait * (-self.rate * t).exp()
        }
    }
}

/// The wait in a pool of `m` servers (m > 0, possibly fractional) of mean service time
/// `service` seconds under `lambda` arrivals per second. `None` when the pool is overloaded.
pub fn wait(m: f64, service: f64, lambda: f64) -> Option<Wait> {
    if m <= 0.0 || service <= 0.0 || lambda < 0.0 {
        return None;
    }
    if m < 1.0 {
        // Less than one server: one server that is slower by the same factor.
        return wait(1.0, service / m, lambda);
    }
    let a = lambda * service;
    if a >= m {
        return None;
    }
    let lo = m.floor();
    let frac = m - lo;
    let at = |k: f64| -> Wait {
        if a >= k {
            // The lower integer pool alone would be overloaded: treat it as always waiting,
            // with the tail of the real pool.
            Wait {
                p_wait: 1.0,
                rate: (m - a) / service,
            }
        } else {
            Wait {
                p_wait: erlang_c_int(k as u64, a),
                rate: (k - a) / service,
            }
        }
    };
    let low = at(lo);
    if frac == 0.0 {
        return Some(low);
    }
    let high = at(lo + 1.0);
    Some(Wait {
        p_wait: low.p_wait + frac * (high.p_wait - low.p_wait),
        rate: low.rate + frac * (high.rate - low.rate),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_server_is_mm1() {
        // M/M/1: P(wait) = ρ and mean wait ρ/(μ − λ).
        let w = wait(1.0, 0.1, 7.0).unwrap();
        assert!((w.p_wait - 0.7).abs() < 1e-12);
        assert!((w.mean() - 0.7 / 3.0).abs() < 1e-12);
    }

    #[test]
    fn textbook_erlang_c() {
        // 10 servers, 8 erlangs: C ≈ 0.4092 (standard tables).
        let w = wait(10.0, 1.0, 8.0).unwrap();
        assert!((w.p_wait - 0.4092).abs() < 1e-3, "{}", w.p_wait);
    }

    #[test]
    fn overload_and_nonsense_have_no_wait_law() {
        assert_eq!(wait(2.0, 1.0, 2.0), None);
        assert_eq!(wait(0.0, 1.0, 1.0), None);
        assert_eq!(wait(2.0, 0.0, 1.0), None);
    }

    #[test]
    fn fractional_pool_lies_between_its_neighbours() {
        let low = wait(2.0, 1.0, 1.5).unwrap().mean();
        let mid = wait(2.5, 1.0, 1.5).unwrap().mean();
        let high = wait(3.0, 1.0, 1.5).unwrap().mean();
        assert!(high < mid && mid < low, "{high} {mid} {low}");
    }

    #[test]
    fn large_pools_do_not_overflow() {
        let w = wait(4096.0, 20.0, 150.0).unwrap();
        assert!(w.p_wait.is_finite() && w.p_wait < 1e-6);
    }

    #[test]
    fn quantile_inverts_cdf() {
        let w = wait(4.0, 0.5, 6.0).unwrap();
        let t = w.quantile(0.95);
        assert!((w.cdf(t) - 0.95).abs() < 1e-9);
    }
}
