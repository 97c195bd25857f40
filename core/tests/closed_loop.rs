//! The tuner driving the workload model, in process: for each workload and pod shape it must
//! reach a setting within 10 % of the sweep optimum's goodput in at most 3 decisions, stay
//! there without oscillating, and be OOM-killed at most once.

use appserver_core::api::WorkloadClass;
use appserver_core::model::{Load, Workload};
use appserver_core::simulator::{self, Run, Scenario};
use appserver_core::sizing::{Concurrency, MemoryModel};
use appserver_core::tuner::Setting;

const CPUS: [f64; 3] = [1.0, 2.0, 4.0];

fn llm_proxy(cpu: f64) -> Scenario {
    let mut s = Scenario::new(
        Workload::new(0.02, 20.0),
        Load::constant(20.0 * cpu),
        cpu,
        Some(2048.0 * cpu),
    );
    s.latency_target = 25.0;
    s
}

fn cpu_bound(cpu: f64) -> Scenario {
    let mut s = Scenario::new(
        Workload::new(0.05, 0.005),
        Load::constant(14.0 * cpu),
        cpu,
        Some(2048.0 * cpu),
    );
    s.concurrency = Concurrency::Processes;
    s.class = WorkloadClass::CpuBound;
    s.latency_target = 1.0;
    s
}

fn mixed(cpu: f64) -> Scenario {
    let mut s = Scenario::new(
        Workload::new(0.03, 0.3),
        Load::constant(20.0 * cpu),
        cpu,
        Some(2048.0 * cpu),
    );
    s.class = WorkloadClass::Mixed;
    s.latency_target = 1.0;
    s
}

/// An ML model server: 1.5 GiB per worker on a 4 GiB limit, whatever the CPU.
fn ml_server(cpu: f64, estimate_mib: f64) -> Scenario {
    let mut w = Workload::new(0.2, 0.01);
    w.per_worker_mib = 1536.0;
    let mut s = Scenario::new(
        w,
        Load::constant(0.6 * cpu.min(2.0) / 0.2),
        cpu,
        Some(4096.0),
    );
    s.concurrency = Concurrency::Processes;
    s.class = WorkloadClass::CpuBound;
    s.latency_target = 2.0;
    s.estimate = MemoryModel {
        base_mib: 200.0,
        per_worker_mib: estimate_mib,
    };
    s
}

fn describe(name: &str, scn: &Scenario, run: &Run) -> String {
    let mut out = format!("{name} on {} CPU, start {}\n", scn.cpu, run.start);
    for s in &run.steps {
        out.push_str(&format!(
            "  t={:>5.0}s {} → {}: {}\n",
            s.at, s.from, s.to, s.reason
        ));
    }
    if let Some(w) = run.windows.last() {
        out.push_str(&format!("  last window: {}\n", w.reason));
    }
    out
}

/// Converges in ≤ 3 decisions to within 10 % of the sweep optimum and stays; never oscillates;
/// at most one OOM kill.
fn assert_converges(name: &str, scn: &Scenario) {
    let run = simulator::run(scn).unwrap();
    let offered = scn.load.at(0.0);
    let best = scn.sweep(offered);
    let story = describe(name, scn, &run);
    let good = |s: Setting| scn.goodput(s, offered) >= 0.9 * best.goodput;
    // The decisions taken before the setting first became good enough.
    let mut settings = vec![run.start];
    settings.extend(run.steps.iter().map(|s| s.to));
    let first_good = settings.iter().position(|s| good(*s));
    let Some(k) = first_good else {
        panic!("never within 10% of {best:?}\n{story}");
    };
    assert!(
        k <= 3,
        "took {k} decisions to get within 10% of {best:?}\n{story}"
    );
    for s in &settings[k..] {
        assert!(
            good(*s),
            "left the good region with {s} (goodput {:.2} vs best {:.2})\n{story}",
            scn.goodput(*s, offered),
            best.goodput
        );
    }
    assert_no_oscillation(&settings, &story);
    assert!(run.oom_kills <= 1, "{} OOM kills\n{story}", run.oom_kills);
    assert!(
        best.goodput > 0.0,
        "the scenario itself is unservable\n{story}"
    );
}

/// No setting is left and then returned to, and slots change direction at most once.
fn assert_no_oscillation(settings: &[Setting], story: &str) {
    for (i, s) in settings.iter().enumerate() {
        let back = settings[i + 1..].iter().skip(1).any(|later| later == s)
            && settings.get(i + 1) != Some(s);
        assert!(!back, "returned to {s}\n{story}");
    }
    let slots: Vec<i64> = settings.iter().map(|s| i64::from(s.slots())).collect();
    let signs: Vec<i64> = slots
        .windows(2)
        .map(|w| (w[1] - w[0]).signum())
        .filter(|d| *d != 0)
        .collect();
    let reversals = signs.windows(2).filter(|w| w[0] != w[1]).count();
    assert!(
        reversals <= 1,
        "slots changed direction {reversals} times\n{story}"
    );
}

#[test]
fn llm_proxy_converges() {
    for cpu in CPUS {
        assert_converges("llm proxy", &llm_proxy(cpu));
    }
}

#[test]
fn cpu_bound_converges() {
    for cpu in CPUS {
        assert_converges("cpu-bound", &cpu_bound(cpu));
    }
}

#[test]
fn mixed_converges() {
    for cpu in CPUS {
        assert_converges("mixed", &mixed(cpu));
    }
}

#[test]
fn ml_server_converges_with_a_right_estimate_and_never_ooms() {
    for cpu in CPUS {
        let scn = ml_server(cpu, 1536.0);
        assert_converges("ml server", &scn);
        assert_eq!(simulator::run(&scn).unwrap().oom_kills, 0);
    }
}

#[test]
fn ml_server_with_a_wrong_estimate_is_oom_killed_once_then_converges() {
    for cpu in CPUS {
        let scn = ml_server(cpu, 500.0);
        let run = simulator::run(&scn).unwrap();
        let story = describe("ml server, estimate 500 MiB", &scn, &run);
        // One CPU starts at CPU + 1 = 2 workers, which fit; larger pods start above the cap.
        let expected = if cpu > 1.0 { 1 } else { 0 };
        assert_eq!(run.oom_kills, expected, "{story}");
        assert_converges("ml server, estimate 500 MiB", &scn);
        let learned = run.learned.per_worker_mib.unwrap_or_default();
        assert!(
            (learned - 1536.0).abs() < 100.0,
            "learned {learned}\n{story}"
        );
    }
}

/// Many workers at a high load: noise must not make it swing between neighbours.
#[test]
fn large_pods_do_not_churn() {
    let mut scn = llm_proxy(8.0);
    scn.load = Load::constant(143.0);
    scn.duration = 7200.0;
    let run = simulator::run(&scn).unwrap();
    let story = describe("llm proxy, 143 req/s", &scn, &run);
    assert!(
        run.steps.len() <= 3,
        "{} decisions\n{story}",
        run.steps.len()
    );
    assert_converges("llm proxy, 143 req/s", &scn);
}

#[test]
fn converges_under_other_noise_seeds() {
    for seed in 2..6 {
        let mut scn = mixed(2.0);
        scn.seed = seed;
        scn.noise = 0.08;
        assert_converges("mixed, 8% noise", &scn);
        let mut scn = llm_proxy(2.0);
        scn.seed = seed;
        scn.noise = 0.08;
        assert_converges("llm proxy, 8% noise", &scn);
    }
}
