//! The tuner: observations + the AppServer's state → a decision (pure, deterministic).
//!
//! It computes where to go from a model of the workload (see [`estimate`] and [`target`]) and
//! moves there in one bounded step. Safety rules come first and in this order: an OOM kill cuts
//! workers at once; unusable signals hold the last good setting; a saturated CPU never gets more
//! concurrency; hysteresis ignores small moves; a cooldown spaces changes; scale-down waits for a
//! stabilization window. Every change is bounded by min/max, a maximum step and the memory cap.

pub mod appserver;
pub mod estimate;
pub mod gate;
pub mod target;

use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

use crate::observation::Observation;
use crate::sizing::{Concurrency, MEMORY_SAFETY, WorkerBounds, format_cores};
use estimate::{Unusable, blend, check};
use target::{Shape, target};

/// A step multiplies a count by at most this much…
pub const MAX_STEP_UP: u32 = 4;
/// …and divides it by at most this much.
pub const MAX_STEP_DOWN: u32 = 2;
/// Changes smaller than this share of the slots are not worth a rollout.
pub const HYSTERESIS: f64 = 0.1;
/// Share of a per-worker memory floor added after an OOM kill.
const OOM_MARGIN: f64 = 1.1;

/// What the tuner knows of the pod and the user's wishes; fixed between spec changes.
#[derive(Clone, Debug, PartialEq)]
pub struct Config {
    pub concurrency: Concurrency,
    pub cpu: f64,
    pub memory_mib: Option<f64>,
    pub base_mib: f64,
    /// The spec's per-worker estimate, used until memory is observed.
    pub per_worker_mib: f64,
    pub workers: WorkerBounds,
    pub threads: WorkerBounds,
    /// p95 latency target, seconds.
    pub latency_target: f64,
    /// Share of the CPU limit above which no concurrency is added.
    pub cpu_target: f64,
    /// Seconds between two changes.
    pub cooldown: f64,
    /// Seconds a lower setting must keep looking right before the tuner steps down.
    pub stabilization: f64,
}

/// The scale-down stabilization window for a cooldown: two cooldowns, so a lower setting must
/// look right across more than one change's worth of time before the tuner steps down.
pub fn stabilization(cooldown: f64) -> f64 {
    2.0 * cooldown
}

/// Workers and threads per worker (1 for process and event-loop servers).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Setting {
    pub workers: u32,
    pub threads: u32,
}

impl Setting {
    pub fn slots(self) -> u32 {
        self.workers.saturating_mul(self.threads)
    }
}

impl std::fmt::Display for Setting {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}×{}", self.workers, self.threads)
    }
}

/// What the tuner learned of the workload; kept in the AppServer's status.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Learned {
    /// CPU seconds per request.
    pub cpu_per_request: Option<f64>,
    /// Seconds per request spent waiting (I/O, upstreams).
    pub wait_per_request: Option<f64>,
    /// Memory per worker as observed, MiB.
    pub per_worker_mib: Option<f64>,
    /// After an OOM kill: each worker needs more than this, MiB.
    pub per_worker_floor_mib: Option<f64>,
}

/// The tuner's memory across decisions and operator restarts (lives in status).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct State {
    /// The setting running now (auto) or the one recommendations start from.
    pub setting: Setting,
    /// When the last change was decided, seconds since the epoch.
    pub last_change: Option<f64>,
    /// Since when a lower setting has looked right, seconds since the epoch.
    pub lower_since: Option<f64>,
    pub learned: Learned,
}

/// Something the user should act on or know, beside the decision itself.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum Flag {
    /// The CPU limit is what limits the pod: add CPU or replicas.
    CpuSaturated,
    /// Signals are missing or implausible: holding the last good setting.
    MetricsUnavailable,
    /// No traffic: nothing to learn, holding.
    NoTraffic,
    /// Requests take longer than the target with no queueing at all.
    TargetUnreachable,
    /// OOM-killed at the minimum workers: only more memory helps.
    OomAtMinimum,
}

/// The tuner's answer.
#[derive(Clone, Debug, PartialEq)]
pub struct Decision {
    /// What should run: the old setting when holding.
    pub setting: Setting,
    /// A sentence a person can check: what was seen, what follows from it.
    pub reason: String,
    pub flag: Option<Flag>,
    /// The state to keep for the next decision.
    pub state: State,
}

/// Decides from one window of signals. `now` is seconds since the epoch.
pub fn decide(cfg: &Config, state: &State, obs: &Observation, now: f64) -> Decision {
    if obs.oom_kills > 0 {
        return oom_cut(cfg, state, obs, now);
    }
    let checked = match check(obs, cfg.cpu) {
        Ok(c) => c,
        Err(why) => {
            let flag = match why {
                Unusable::NoTraffic => Flag::NoTraffic,
                Unusable::Missing(_) | Unusable::Absurd(_) => Flag::MetricsUnavailable,
            };
            let reason = format!("holding {}: {why}", state.setting);
            return hold(state, reason, Some(flag));
        }
    };
    let e = estimate::estimate(&checked, state.setting.slots());
    let mut learned = state.learned;
    learned.cpu_per_request = Some(blend(learned.cpu_per_request, e.s));
    learned.wait_per_request = Some(blend(learned.wait_per_request, e.d));
    if let Some(per) = observed_per_worker(cfg, state.setting, checked.memory_mib) {
        learned.per_worker_mib = Some(per);
    }
    let (s, d) = (
        learned.cpu_per_request.unwrap_or(e.s),
        learned.wait_per_request.unwrap_or(e.d),
    );
    let state = State { learned, ..*state };
    let current = state.setting;
    let seen = Seen {
        rate: checked.rate,
        offered: e.offered,
        p95: checked.p95,
        cpu_share: checked.cpu / cfg.cpu,
        s,
        d,
    };
    if s + d > cfg.latency_target {
        let reason = format!(
            "holding {current}: {} per request before any queueing ({} CPU + {} waiting) exceeds the {} p95 target",
            secs(s + d),
            secs(s),
            secs(d),
            secs(cfg.latency_target)
        );
        return hold(&state, reason, Some(Flag::TargetUnreachable));
    }
    let per_worker = per_worker_mib(cfg, &learned);
    let shape = Shape {
        concurrency: cfg.concurrency,
        cpu: cfg.cpu,
        cpu_target: cfg.cpu_target,
        workers: cfg.workers,
        threads: cfg.threads,
        memory_cap: memory_cap(cfg, per_worker),
    };
    let ideal = target(&shape, s, d, e.offered);
    let wanted = step(cfg, current, &ideal);
    guard(cfg, &state, &seen, &ideal, wanted, now)
}

/// The numbers a decision's sentence is built from.
struct Seen {
    rate: f64,
    offered: f64,
    p95: f64,
    cpu_share: f64,
    s: f64,
    d: f64,
}

impl Seen {
    fn sentence(&self, cfg: &Config) -> String {
        let mut out = format!(
            "p95 {} (target {}), {}/s served",
            secs(self.p95),
            secs(cfg.latency_target),
            num(self.rate)
        );
        if self.offered > self.rate * 1.01 {
            let _ = write!(out, " of {}/s offered", num(self.offered));
        }
        let _ = write!(
            out,
            ", CPU {:.0}% of {} cores; each request {} CPU + {} waiting",
            self.cpu_share * 100.0,
            format_cores(cfg.cpu),
            secs(self.s),
            secs(self.d)
        );
        out
    }
}

/// CPU saturation, hysteresis, cooldown and stabilization, in that order.
fn guard(
    cfg: &Config,
    state: &State,
    seen: &Seen,
    ideal: &target::Target,
    wanted: Setting,
    now: f64,
) -> Decision {
    let current = state.setting;
    let why = seen.sentence(cfg);
    let saturated = seen.cpu_share >= cfg.cpu_target;
    let more = wanted.slots() > current.slots() || wanted.workers > current.workers;
    if saturated && more {
        let reason = format!(
            "holding {current}: {why}. The CPU is saturated, so more concurrency would only queue inside the pod: add CPU or replicas"
        );
        return hold(state, reason, Some(Flag::CpuSaturated));
    }
    // Only a CPU that is full, or that the plan would fill without adding concurrency, is
    // reported: a change that adds concurrency towards the CPU's capacity is not saturation.
    let flag = (saturated || ideal.cpu_bound && !more).then_some(Flag::CpuSaturated);
    if wanted == current || small(current, wanted) && seen.p95 <= cfg.latency_target {
        let reason = format!(
            "holding {current}: {why}; the best setting is within {:.0}%",
            HYSTERESIS * 100.0
        );
        return hold(
            &State {
                lower_since: None,
                ..*state
            },
            reason,
            flag,
        );
    }
    if let Some(last) = state.last_change {
        let left = last + cfg.cooldown - now;
        if left > 0.0 {
            let reason = format!(
                "holding {current} (cooldown, {} left): {why}; would move to {wanted}",
                secs(left)
            );
            return hold(state, reason, flag);
        }
    }
    let down = wanted.slots() < current.slots() && wanted.workers <= current.workers;
    if down {
        let since = state.lower_since.unwrap_or(now);
        if now - since < cfg.stabilization {
            let reason = format!(
                "holding {current}: {why}; {wanted} would do, stepping down after {} of stable signals",
                secs(cfg.stabilization - (now - since))
            );
            return hold(
                &State {
                    lower_since: Some(since),
                    ..*state
                },
                reason,
                flag,
            );
        }
    }
    let reason = change_reason(cfg, current, wanted, ideal, &why);
    Decision {
        setting: wanted,
        reason,
        flag,
        state: State {
            setting: wanted,
            last_change: Some(now),
            lower_since: None,
            ..*state
        },
    }
}

fn change_reason(
    cfg: &Config,
    from: Setting,
    to: Setting,
    ideal: &target::Target,
    why: &str,
) -> String {
    let mut out = format!("{from} → {to}: {why}");
    let _ = write!(
        out,
        "; {} slots serve {}/s near the {} target",
        to.slots(),
        num(ideal.serves),
        secs(cfg.latency_target)
    );
    if (ideal.workers, ideal.threads) != (to.workers, to.threads) {
        let _ = write!(
            out,
            " (heading for {}×{}, at most ×{MAX_STEP_UP} per step)",
            ideal.workers, ideal.threads
        );
    }
    if ideal.memory_bound {
        out.push_str("; memory caps workers");
    }
    out
}

/// A move within the hysteresis band, in slots and in workers (at least one worker: on few
/// workers any move is a big one; on many, noise alone moves a few).
fn small(a: Setting, b: Setting) -> bool {
    let (x, y) = (f64::from(a.slots()), f64::from(b.slots()));
    let workers_band = (HYSTERESIS * f64::from(a.workers)).floor().max(1.0) as u32;
    (x - y).abs() <= HYSTERESIS * x.max(1.0) && a.workers.abs_diff(b.workers) <= workers_band
}

/// Bounds a move to ×4 up and ÷2 down per count. Threads are then chosen for the slots the
/// ideal wants at the workers the step allows, so a bounded worker move does not distort the
/// concurrency.
fn step(cfg: &Config, from: Setting, ideal: &target::Target) -> Setting {
    let bound = |f: u32, t: u32| {
        t.clamp(
            f.div_ceil(MAX_STEP_DOWN).max(1),
            f.saturating_mul(MAX_STEP_UP).max(1),
        )
    };
    let workers = bound(from.workers, ideal.workers);
    let threads = match cfg.concurrency {
        Concurrency::Threads => {
            let slots = ideal.workers.saturating_mul(ideal.threads);
            let t = slots
                .div_ceil(workers)
                .clamp(cfg.threads.min, cfg.threads.max);
            bound(from.threads, t)
        }
        Concurrency::Processes | Concurrency::EventLoop => 1,
    };
    Setting { workers, threads }
}

fn hold(state: &State, reason: String, flag: Option<Flag>) -> Decision {
    Decision {
        setting: state.setting,
        reason,
        flag,
        state: *state,
    }
}

/// An OOM kill proves each worker needs more than `(limit − base) / workers`; how much more is
/// unknown, so the workers drop to the minimum at once (threads keep the concurrency) and climb
/// back only as far as the memory seen at that size allows. One kill, never a second.
fn oom_cut(cfg: &Config, state: &State, obs: &Observation, now: f64) -> Decision {
    let current = state.setting;
    let mut learned = state.learned;
    let limit = cfg.memory_mib.or(obs.memory_mib);
    let floor = limit.map(|l| (l - cfg.base_mib).max(1.0) / f64::from(current.workers.max(1)));
    if let Some(f) = floor {
        let f = f * OOM_MARGIN;
        learned.per_worker_floor_mib = Some(learned.per_worker_floor_mib.map_or(f, |o| o.max(f)));
    }
    // What was observed before the kill no longer describes the workers.
    learned.per_worker_mib = None;
    let kills = obs.oom_kills;
    let workers = cfg.workers.min.max(1);
    if current.workers <= workers {
        let reason = format!(
            "{kills} OOM kill(s) at the minimum of {} worker(s): only a higher memory limit (or a lower tuning.workers.min) helps",
            current.workers
        );
        let next = State { learned, ..*state };
        return Decision {
            flag: Some(Flag::OomAtMinimum),
            ..hold(&next, reason, Some(Flag::OomAtMinimum))
        };
    }
    let threads = match cfg.concurrency {
        Concurrency::Threads => current
            .slots()
            .div_ceil(workers)
            .clamp(cfg.threads.min, cfg.threads.max),
        Concurrency::Processes | Concurrency::EventLoop => 1,
    };
    let to = Setting { workers, threads };
    let limit_text = limit.map_or("no".to_string(), |l| format!("the {l:.0} MiB"));
    let floor_text = floor.map_or(String::new(), |f| {
        format!(": each worker needs more than {f:.0} MiB")
    });
    let reason = format!(
        "{current} → {to}: {kills} OOM kill(s) with {} workers under {limit_text} memory limit{floor_text}; cut to {workers} worker(s) at once and grow back as measured memory allows",
        current.workers
    );
    Decision {
        setting: to,
        reason,
        flag: None,
        state: State {
            setting: to,
            last_change: Some(now),
            lower_since: None,
            learned,
        },
    }
}

/// Memory per worker from the working set: `(used − base) / workers`.
fn observed_per_worker(cfg: &Config, setting: Setting, used: Option<f64>) -> Option<f64> {
    let used = used?;
    let per = (used - cfg.base_mib) / f64::from(setting.workers.max(1));
    (per > 0.0).then_some(per)
}

/// The per-worker memory to plan with: observed, else the spec's estimate; never below the
/// floor an OOM kill taught.
fn per_worker_mib(cfg: &Config, learned: &Learned) -> f64 {
    let base = learned.per_worker_mib.unwrap_or(cfg.per_worker_mib);
    learned.per_worker_floor_mib.map_or(base, |f| base.max(f))
}

/// Most workers the memory allows at `per_worker` MiB each, within bounds and ≥ the minimum.
fn memory_cap(cfg: &Config, per_worker: f64) -> u32 {
    let Some(limit) = cfg.memory_mib else {
        return cfg.workers.max;
    };
    let room = limit * MEMORY_SAFETY - cfg.base_mib;
    let fits = (room / per_worker.max(1.0)).floor();
    let fits = if fits.is_finite() && fits > 0.0 {
        fits.min(f64::from(u32::MAX)) as u32
    } else {
        0
    };
    fits.clamp(cfg.workers.min.max(1), cfg.workers.max)
}

fn secs(x: f64) -> String {
    if x >= 10.0 {
        format!("{x:.0}s")
    } else if x >= 1.0 {
        format!("{x:.1}s")
    } else {
        format!("{:.0}ms", x * 1000.0)
    }
}

fn num(x: f64) -> String {
    if x >= 10.0 {
        format!("{x:.0}")
    } else {
        format!("{x:.1}")
    }
}
