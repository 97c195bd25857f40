//! The closed loop in process: the tuner driving the workload model (pure, seeded).
//!
//! Used by the tuner's tests, the `simulate` command and the benchmark. Time moves in windows;
//! each window the model serves the offered load with the current setting, the signals it
//! produces (with seeded noise) go to the tuner, and the tuner's decision is applied (a
//! rollout restarts the pod, so memory growth starts over).

use serde::Serialize;

use crate::api::WorkloadClass;
use crate::model::{self, Load, Pod, Serving, Workload};
use crate::observation::Observation;
use crate::sizing::{
    self, Concurrency, EVENT_LOOP_CONNECTIONS, MemoryModel, SizingInput, WorkerBounds, format_cores,
};
use crate::tuner::{self, Config, Learned, Setting, State};

/// A workload, a pod and the tuner's settings: everything a run needs.
#[derive(Clone, Debug)]
pub struct Scenario {
    /// The truth the tuner does not see.
    pub workload: Workload,
    pub load: Load,
    pub cpu: f64,
    pub memory_mib: Option<f64>,
    pub concurrency: Concurrency,
    /// The workload class the static formula starts from.
    pub class: WorkloadClass,
    /// The user's memory estimate (spec.memory), which may be wrong.
    pub estimate: MemoryModel,
    pub workers: WorkerBounds,
    pub threads: WorkerBounds,
    pub latency_target: f64,
    pub cpu_target: f64,
    pub cooldown: f64,
    /// Length of one observation window, seconds.
    pub window: f64,
    /// Length of the run, seconds.
    pub duration: f64,
    /// Relative noise on every signal (0.05 = ±5 %).
    pub noise: f64,
    pub seed: u64,
}

impl Scenario {
    /// A scenario with the operator's defaults: bounds 1–64, 5-minute cooldown, 1-minute
    /// windows, an hour long, ±3 % noise.
    pub fn new(workload: Workload, load: Load, cpu: f64, memory_mib: Option<f64>) -> Self {
        Self {
            estimate: MemoryModel {
                base_mib: workload.base_mib,
                per_worker_mib: workload.per_worker_mib,
            },
            workload,
            load,
            cpu,
            memory_mib,
            concurrency: Concurrency::Threads,
            class: WorkloadClass::IoBound,
            workers: WorkerBounds::new(1, 64),
            threads: WorkerBounds::new(1, 64),
            latency_target: 2.0,
            cpu_target: 0.8,
            cooldown: 300.0,
            window: 60.0,
            duration: 3600.0,
            noise: 0.03,
            seed: 1,
        }
    }

    pub fn tuner_config(&self) -> Config {
        Config {
            concurrency: self.concurrency,
            cpu: self.cpu,
            memory_mib: self.memory_mib,
            base_mib: self.estimate.base_mib,
            per_worker_mib: self.estimate.per_worker_mib,
            workers: self.workers,
            threads: self.threads,
            latency_target: self.latency_target,
            cpu_target: self.cpu_target,
            cooldown: self.cooldown,
            stabilization: tuner::stabilization(self.cooldown),
        }
    }

    /// Where the static formulas put the pod (the operator's starting point).
    pub fn static_setting(&self) -> Result<Setting, sizing::SizingError> {
        let s = sizing::size(&SizingInput {
            cpu_cores: self.cpu,
            memory_mib: self.memory_mib,
            concurrency: self.concurrency,
            workload: self.class,
            memory: self.estimate,
            workers: self.workers,
            threads: self.threads,
        })?;
        Ok(Setting {
            workers: s.workers,
            threads: s.threads,
        })
    }

    /// The model's pod for a setting.
    pub fn pod(&self, s: Setting) -> Pod {
        Pod {
            cpu: self.cpu,
            memory_mib: self.memory_mib,
            workers: s.workers,
            slots_per_worker: match self.concurrency {
                Concurrency::Threads => s.threads,
                Concurrency::Processes => 1,
                Concurrency::EventLoop => EVENT_LOOP_CONNECTIONS,
            },
        }
    }

    /// Goodput of a setting at an offered load, on a fresh pod.
    pub fn goodput(&self, s: Setting, offered: f64) -> f64 {
        model::serve(&self.pod(s), &self.workload, offered, 0.0).goodput(self.latency_target)
    }

    /// Every setting within bounds (threads only for threaded servers).
    pub fn settings(&self) -> Vec<Setting> {
        let threads = match self.concurrency {
            Concurrency::Threads => self.threads.min..=self.threads.max,
            Concurrency::Processes | Concurrency::EventLoop => 1..=1,
        };
        (self.workers.min..=self.workers.max)
            .flat_map(|w| {
                threads.clone().map(move |t| Setting {
                    workers: w,
                    threads: t,
                })
            })
            .collect()
    }

    /// The best setting by sweeping every one in bounds; ties go to the fewest slots.
    pub fn sweep(&self, offered: f64) -> Best {
        let mut best = Best {
            setting: Setting {
                workers: self.workers.min,
                threads: 1,
            },
            goodput: f64::NEG_INFINITY,
        };
        for s in self.settings() {
            let g = self.goodput(s, offered);
            if g > best.goodput + 1e-9 {
                best = Best {
                    setting: s,
                    goodput: g,
                };
            }
        }
        best
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct Best {
    pub setting: Setting,
    pub goodput: f64,
}

/// One decision that changed the setting.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Step {
    /// Seconds since the start.
    pub at: f64,
    pub from: Setting,
    pub to: Setting,
    pub reason: String,
}

/// One window of the run.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Window {
    pub at: f64,
    pub setting: Setting,
    pub offered: f64,
    pub goodput: f64,
    pub oom: bool,
    /// The tuner's sentence for this window.
    pub reason: String,
}

/// What a run did.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Run {
    pub start: Setting,
    pub steps: Vec<Step>,
    pub windows: Vec<Window>,
    pub oom_kills: u32,
    pub learned: Learned,
}

impl Run {
    pub fn last(&self) -> Setting {
        self.windows.last().map_or(self.start, |w| w.setting)
    }
}

/// Runs the tuner (auto mode) against the model from the static setting.
pub fn run(scn: &Scenario) -> Result<Run, sizing::SizingError> {
    let start = scn.static_setting()?;
    let cfg = scn.tuner_config();
    let mut rng = fastrand::Rng::with_seed(scn.seed);
    let mut state = State {
        setting: start,
        last_change: None,
        lower_since: None,
        learned: Learned::default(),
    };
    let mut started = 0.0;
    let mut out = Run {
        start,
        steps: Vec::new(),
        windows: Vec::new(),
        oom_kills: 0,
        learned: Learned::default(),
    };
    let windows = (scn.duration / scn.window).floor() as usize;
    for i in 0..windows {
        let at = i as f64 * scn.window;
        let offered = scn.load.mean(at, at + scn.window);
        let hours = (at - started) / 3600.0;
        let served = model::serve(&scn.pod(state.setting), &scn.workload, offered, hours);
        let obs = observe(&served, scn, &mut rng);
        let now = at + scn.window;
        let decision = tuner::decide(&cfg, &state, &obs, now);
        out.oom_kills += u32::from(served.oom);
        out.windows.push(Window {
            at,
            setting: state.setting,
            offered,
            goodput: served.goodput(scn.latency_target),
            oom: served.oom,
            reason: decision.reason.clone(),
        });
        if served.oom {
            started = now;
        }
        if decision.setting != state.setting {
            out.steps.push(Step {
                at: now,
                from: state.setting,
                to: decision.setting,
                reason: decision.reason.clone(),
            });
            started = now;
        }
        state = decision.state;
    }
    out.learned = state.learned;
    if let Some(w) = out.windows.last_mut() {
        w.setting = state.setting;
    }
    Ok(out)
}

/// The signals an exporter would report for a window, with seeded relative noise.
pub fn observe(s: &Serving, scn: &Scenario, rng: &mut fastrand::Rng) -> Observation {
    let mut jitter = |x: f64| x * (1.0 + scn.noise * (2.0 * rng.f64() - 1.0));
    let served = s.throughput > 0.0;
    Observation {
        window_seconds: scn.window,
        pods: 1,
        request_rate: Some(jitter(s.throughput)),
        latency_p50: s.latency(0.5).filter(|_| served).map(&mut jitter),
        latency_p95: s.latency(0.95).filter(|_| served).map(&mut jitter),
        latency_p99: s.latency(0.99).filter(|_| served).map(&mut jitter),
        queue: Some(jitter(s.queue)),
        drop_rate: Some(jitter(s.dropped)),
        cpu_cores: Some(jitter(s.cpu_cores)),
        cpu_throttled: Some(s.cpu_throttled),
        memory_mib: Some(s.memory_mib.min(scn.memory_mib.unwrap_or(f64::INFINITY))),
        oom_kills: u32::from(s.oom),
        restarts: u32::from(s.oom),
    }
}

/// A run summed up against the sweep optimum: what the `simulate` command prints.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Summary {
    pub cpu: String,
    #[serde(rename = "memoryMiB")]
    pub memory_mib: Option<f64>,
    pub offered_rps: f64,
    pub latency_target_seconds: f64,
    pub start: Setting,
    pub start_goodput: f64,
    pub decisions: Vec<Step>,
    #[serde(rename = "final")]
    pub final_setting: Setting,
    pub final_goodput: f64,
    pub final_p95_seconds: Option<f64>,
    pub optimum: Best,
    /// Final goodput / the optimum's; `None` when nothing can serve within the target.
    pub ratio: Option<f64>,
    /// The tuner's sentence for the last window.
    pub last_reason: String,
    pub oom_kills: u32,
}

/// Runs `scn` and compares where the tuner ended with the sweep optimum at the final load.
pub fn summarize(scn: &Scenario) -> Result<Summary, sizing::SizingError> {
    let run = run(scn)?;
    let offered = scn.load.at(scn.duration);
    let final_setting = run.last();
    let optimum = scn.sweep(offered);
    let final_goodput = scn.goodput(final_setting, offered);
    let served = model::serve(&scn.pod(final_setting), &scn.workload, offered, 0.0);
    Ok(Summary {
        cpu: format_cores(scn.cpu),
        memory_mib: scn.memory_mib,
        offered_rps: offered,
        latency_target_seconds: scn.latency_target,
        start: run.start,
        start_goodput: scn.goodput(run.start, offered),
        decisions: run.steps,
        final_setting,
        final_goodput,
        final_p95_seconds: served.latency(0.95),
        ratio: (optimum.goodput > 0.0).then(|| final_goodput / optimum.goodput),
        last_reason: run
            .windows
            .last()
            .map(|w| w.reason.clone())
            .unwrap_or_default(),
        optimum,
        oom_kills: run.oom_kills,
    })
}
