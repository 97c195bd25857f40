//! Each safety rule of the tuner on its own: OOM, CPU saturation, bounds, maximum step,
//! cooldown, stabilization, hysteresis, and unusable metrics.

use appserver_core::observation::Observation;
use appserver_core::sizing::{Concurrency, WorkerBounds};
use appserver_core::tuner::{Config, Decision, Flag, Learned, Setting, State, decide};
use proptest::prelude::*;

const NOW: f64 = 1_800_000_000.0;

fn config() -> Config {
    Config {
        concurrency: Concurrency::Threads,
        cpu: 2.0,
        memory_mib: Some(4096.0),
        base_mib: 200.0,
        per_worker_mib: 200.0,
        workers: WorkerBounds::new(1, 16),
        threads: WorkerBounds::new(1, 32),
        latency_target: 2.0,
        cpu_target: 0.8,
        cooldown: 300.0,
        stabilization: 600.0,
    }
}

fn state(workers: u32, threads: u32) -> State {
    State {
        setting: Setting { workers, threads },
        last_change: None,
        lower_since: None,
        learned: Learned::default(),
    }
}

/// A pod serving `rate` req/s at `p50`/`p95` latency with `cpu` cores busy.
fn obs(rate: f64, p50: f64, p95: f64, cpu: f64) -> Observation {
    Observation {
        window_seconds: 60.0,
        pods: 2,
        request_rate: Some(rate),
        latency_p50: Some(p50),
        latency_p95: Some(p95),
        latency_p99: Some(p95 * 1.2),
        queue: Some(0.0),
        drop_rate: Some(0.0),
        cpu_cores: Some(cpu),
        cpu_throttled: Some(0.0),
        memory_mib: Some(1200.0),
        oom_kills: 0,
        restarts: 0,
    }
}

/// I/O-bound and overloaded: 20 slots full at 20 req/s of 1 s each, 30 more refused.
fn overloaded() -> Observation {
    Observation {
        queue: Some(400.0),
        drop_rate: Some(30.0),
        ..obs(20.0, 21.0, 22.0, 0.4)
    }
}

#[test]
fn an_oom_kill_cuts_workers_at_once_even_in_cooldown() {
    let mut s = state(5, 4);
    s.last_change = Some(NOW - 10.0);
    let o = Observation {
        oom_kills: 1,
        ..obs(20.0, 0.5, 1.0, 0.4)
    };
    let d = decide(&config(), &s, &o, NOW);
    assert_eq!(
        d.setting,
        Setting {
            workers: 1,
            threads: 20
        },
        "{}",
        d.reason
    );
    assert!(d.reason.contains("OOM kill"), "{}", d.reason);
    // Each of 5 workers needed more than (4096 − 200) / 5 MiB; 10 % is added.
    let floor = d.state.learned.per_worker_floor_mib.unwrap();
    assert!((floor - 3896.0 / 5.0 * 1.1).abs() < 1e-6, "{floor}");
    assert_eq!(d.state.last_change, Some(NOW));
}

#[test]
fn after_an_oom_kill_workers_grow_back_only_as_far_as_measured_memory_allows() {
    // Cut to 1 worker; the pod then shows 1736 MiB: 1536 MiB per worker.
    let cut = decide(
        &config(),
        &state(5, 4),
        &Observation {
            oom_kills: 1,
            ..obs(20.0, 0.5, 1.0, 0.4)
        },
        NOW,
    );
    let mut o = obs(40.0, 0.4, 3.0, 0.5);
    o.memory_mib = Some(1736.0);
    let later = decide(&config(), &cut.state, &o, NOW + 1000.0);
    // (4096 × 0.9 − 200) / 1536 = 2.27 → at most 2 workers.
    assert!(later.setting.workers <= 2, "{}", later.reason);
}

#[test]
fn an_oom_kill_at_the_minimum_holds_and_says_only_memory_helps() {
    let o = Observation {
        oom_kills: 2,
        ..obs(20.0, 0.5, 1.0, 0.4)
    };
    let d = decide(&config(), &state(1, 8), &o, NOW);
    assert_eq!(
        d.setting,
        Setting {
            workers: 1,
            threads: 8
        }
    );
    assert_eq!(d.flag, Some(Flag::OomAtMinimum));
    assert!(d.reason.contains("higher memory limit"), "{}", d.reason);
}

#[test]
fn a_saturated_cpu_never_gets_more_concurrency() {
    // CPU at 95 % of 2 cores and latency far over target: more slots would only queue.
    let o = Observation {
        queue: Some(50.0),
        ..obs(30.0, 3.0, 6.0, 1.9)
    };
    let d = decide(&config(), &state(3, 4), &o, NOW);
    assert_eq!(
        d.setting,
        Setting {
            workers: 3,
            threads: 4
        },
        "{}",
        d.reason
    );
    assert_eq!(d.flag, Some(Flag::CpuSaturated));
    assert!(d.reason.contains("add CPU or replicas"), "{}", d.reason);
}

#[test]
fn changes_stay_within_bounds_and_the_maximum_step() {
    let mut cfg = config();
    cfg.workers = WorkerBounds::new(1, 4);
    cfg.threads = WorkerBounds::new(1, 8);
    let d = decide(&cfg, &state(1, 1), &overloaded(), NOW);
    assert!(
        d.setting.workers <= 4 && d.setting.threads <= 4,
        "×4 at most: {}",
        d.reason
    );
    assert!(d.setting.slots() > 1, "{}", d.reason);
    let mut s = d.state;
    for i in 1..6 {
        let d = decide(&cfg, &s, &overloaded(), NOW + 400.0 * f64::from(i));
        assert!(
            d.setting.workers <= 4 && d.setting.threads <= 8,
            "{}",
            d.reason
        );
        s = d.state;
    }
    assert_eq!(
        s.setting,
        Setting {
            workers: 4,
            threads: 8
        },
        "pinned at the bounds"
    );
}

#[test]
fn a_cooldown_spaces_changes() {
    let first = decide(&config(), &state(2, 2), &overloaded(), NOW);
    assert_ne!(
        first.setting,
        Setting {
            workers: 2,
            threads: 2
        }
    );
    let soon = decide(&config(), &first.state, &overloaded(), NOW + 60.0);
    assert_eq!(soon.setting, first.setting);
    assert!(
        soon.reason.contains("cooldown, 4.0m left") || soon.reason.contains("cooldown"),
        "{}",
        soon.reason
    );
    let later = decide(&config(), &first.state, &overloaded(), NOW + 301.0);
    assert_ne!(later.setting, first.setting, "{}", later.reason);
}

#[test]
fn scale_down_waits_for_the_stabilization_window_and_halves_at_most() {
    // 16 × 32 slots for 2 req/s of 0.1 s: far too many, but only after 600 s of that.
    let o = obs(2.0, 0.1, 0.12, 0.02);
    let first = decide(&config(), &state(16, 32), &o, NOW);
    assert_eq!(
        first.setting,
        Setting {
            workers: 16,
            threads: 32
        }
    );
    assert!(
        first.reason.contains("stepping down after"),
        "{}",
        first.reason
    );
    let mid = decide(&config(), &first.state, &o, NOW + 300.0);
    assert_eq!(
        mid.setting,
        Setting {
            workers: 16,
            threads: 32
        }
    );
    let down = decide(&config(), &mid.state, &o, NOW + 600.0);
    assert_eq!(
        down.setting,
        Setting {
            workers: 8,
            threads: 16
        },
        "{}",
        down.reason
    );
}

#[test]
fn a_good_enough_setting_is_held() {
    // 20 req/s × 0.5 s = 10 in flight → 10 + 2√10 ≈ 17 slots: 3 × 6 = 18 is close enough.
    let d = decide(&config(), &state(3, 6), &obs(20.0, 0.5, 0.6, 0.4), NOW);
    assert_eq!(
        d.setting,
        Setting {
            workers: 3,
            threads: 6
        },
        "{}",
        d.reason
    );
    assert!(d.reason.contains("within 10%"), "{}", d.reason);
}

fn assert_hold(d: &Decision, flag: Flag, words: &str) {
    assert_eq!(
        d.setting,
        Setting {
            workers: 3,
            threads: 4
        },
        "{}",
        d.reason
    );
    assert_eq!(d.flag, Some(flag), "{}", d.reason);
    assert!(d.reason.contains(words), "{:?} lacks {words:?}", d.reason);
}

#[test]
fn unusable_metrics_hold_the_last_good_setting_and_say_why() {
    let cfg = config();
    let s = state(3, 4);
    let nan = Observation {
        latency_p95: Some(f64::NAN),
        ..overloaded()
    };
    assert_hold(
        &decide(&cfg, &s, &nan, NOW),
        Flag::MetricsUnavailable,
        "latencyP95 = NaN",
    );
    let negative = Observation {
        cpu_cores: Some(-0.5),
        ..overloaded()
    };
    assert_hold(
        &decide(&cfg, &s, &negative, NOW),
        Flag::MetricsUnavailable,
        "cpu = -0.5",
    );
    let missing = Observation {
        request_rate: None,
        latency_p95: None,
        ..overloaded()
    };
    assert_hold(
        &decide(&cfg, &s, &missing, NOW),
        Flag::MetricsUnavailable,
        "no data for requestRate, latencyP95",
    );
    let idle = obs(0.0, 0.0, 0.0, 0.0);
    assert_hold(&decide(&cfg, &s, &idle, NOW), Flag::NoTraffic, "no traffic");
    let absurd_cpu = Observation {
        cpu_cores: Some(40.0),
        ..overloaded()
    };
    assert_hold(
        &decide(&cfg, &s, &absurd_cpu, NOW),
        Flag::MetricsUnavailable,
        "on a 2 core limit",
    );
    // The learned model is kept through a hold.
    let mut learned = state(3, 4);
    learned.learned.cpu_per_request = Some(0.02);
    assert_eq!(
        decide(&cfg, &learned, &nan, NOW)
            .state
            .learned
            .cpu_per_request,
        Some(0.02)
    );
}

#[test]
fn an_unreachable_target_is_held_not_chased() {
    // 3 s per request with no queue at all cannot meet a 2 s p95.
    let d = decide(&config(), &state(3, 4), &obs(2.0, 3.0, 3.2, 0.02), NOW);
    assert_hold(&d, Flag::TargetUnreachable, "exceeds the 2.0s p95 target");
}

fn any_value() -> impl Strategy<Value = Option<f64>> {
    prop_oneof![
        Just(None),
        Just(Some(f64::NAN)),
        Just(Some(f64::INFINITY)),
        Just(Some(-1.0)),
        (0.0f64..1e6).prop_map(Some),
    ]
}

proptest! {
    /// Whatever the signals and state, the decision stays within bounds and never panics.
    #[test]
    fn decisions_always_respect_bounds(
        rate in any_value(), p50 in any_value(), p95 in any_value(), queue in any_value(),
        drops in any_value(), cpu in any_value(), mem in any_value(), ooms in 0u32..3,
        workers in 1u32..40, threads in 1u32..80, since in prop::option::of(0.0f64..2000.0),
    ) {
        let o = Observation {
            window_seconds: 60.0, pods: 1, request_rate: rate, latency_p50: p50,
            latency_p95: p95, latency_p99: None, queue, drop_rate: drops, cpu_cores: cpu,
            cpu_throttled: None, memory_mib: mem, oom_kills: ooms, restarts: 0,
        };
        let mut s = state(workers, threads);
        s.last_change = since.map(|x| NOW - x);
        let cfg = config();
        let d = decide(&cfg, &s, &o, NOW);
        let changed = d.setting != s.setting;
        if changed {
            prop_assert!((1..=16).contains(&d.setting.workers), "{}", d.reason);
            prop_assert!((1..=32).contains(&d.setting.threads), "{}", d.reason);
        }
        prop_assert!(!d.reason.is_empty());
    }
}
