//! The tuner's view of an AppServer (pure): its config and state from the spec, the plan and
//! the status; and back, the tuning status, conditions and Events from a decision.

use std::fmt::Write as _;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;

use crate::api::{
    AppServerSpec, AppServerStatus, DecisionSignals, LearnedModel, TuningDecision, TuningMode,
    TuningStatus, WorkerSetting,
};
use crate::observation::Observation;
use crate::plan::{Plan, Sized};
use crate::profile;
use crate::report::Notice;
use crate::sizing::format_cores;
use crate::tuner::{self, Config, Decision, Flag, Learned, Setting, State};

/// Decisions kept in status.
pub const HISTORY: usize = 10;
pub const TUNING: &str = "Tuning";
pub const CPU_SATURATED: &str = "CpuSaturated";

/// The tuner's view of an AppServer that was planned.
pub fn config(spec: &AppServerSpec, sized: &Sized) -> Config {
    let t = &spec.tuning;
    let cooldown = profile::seconds(t.cooldown) as f64;
    Config {
        concurrency: sized.sizing.concurrency,
        cpu: sized.basis.cpu_cores,
        memory_mib: sized.basis.memory_mib,
        base_mib: spec.memory.base_mib as f64,
        per_worker_mib: spec.memory.per_worker_mib as f64,
        workers: (&t.workers).into(),
        threads: (&t.threads).into(),
        latency_target: std::time::Duration::from(t.targets.latency_p95).as_secs_f64(),
        cpu_target: t.targets.cpu_utilization,
        cooldown,
        stabilization: tuner::stabilization(cooldown),
    }
}

/// What the setting was tuned for; when it changes the tuner starts over from the formulas.
pub fn fingerprint(cfg: &Config) -> String {
    let mem = cfg
        .memory_mib
        .map_or("unbounded".into(), |m| format!("{m:.0}MiB"));
    format!(
        "cpu={} memory={mem} concurrency={:?} workers={}-{} threads={}-{}",
        format_cores(cfg.cpu),
        cfg.concurrency,
        cfg.workers.min,
        cfg.workers.max,
        cfg.threads.min,
        cfg.threads.max
    )
    .to_lowercase()
}

pub fn static_setting(sized: &Sized) -> Setting {
    Setting {
        workers: sized.sizing.workers,
        threads: sized.sizing.threads,
    }
}

/// The tuner's state from status. In `recommend` mode the pods keep the formulas' setting, so
/// that is where the tuner starts from; in `auto` the tuned setting, unless it was tuned for
/// other resources or bounds.
pub fn state(
    mode: TuningMode,
    cfg: &Config,
    sized: &Sized,
    status: Option<&TuningStatus>,
) -> State {
    let fresh = State {
        setting: static_setting(sized),
        last_change: None,
        lower_since: None,
        learned: Learned::default(),
    };
    let Some(st) = status.filter(|s| s.tuned_for == fingerprint(cfg)) else {
        return fresh;
    };
    let learned = st.model.as_ref().map(learned_of).unwrap_or_default();
    match mode {
        TuningMode::Auto => State {
            setting: st.setting.map_or(fresh.setting, |s| setting_of(s, cfg)),
            last_change: st
                .last_change_time
                .as_ref()
                .map(|t| crate::time::seconds(t.0)),
            lower_since: st
                .scale_down_since
                .as_ref()
                .map(|t| crate::time::seconds(t.0)),
            learned,
        },
        // The pods keep the formulas' setting, but how long a lower one has looked right is
        // remembered, so recommend can recommend stepping down too.
        _ => State {
            learned,
            lower_since: st
                .scale_down_since
                .as_ref()
                .map(|t| crate::time::seconds(t.0)),
            ..fresh
        },
    }
}

/// The plan with the tuner's setting in place of the formulas'.
pub fn with_setting(plan: &Plan, spec: &AppServerSpec, setting: Setting) -> Plan {
    let Some(sized) = &plan.sized else {
        return plan.clone();
    };
    if static_setting(sized) == setting {
        return plan.clone();
    }
    let mut sizing = sized.sizing.clone();
    sizing.workers = setting.workers;
    sizing.threads = setting.threads;
    sizing.explanation = format!(
        "tuned to {} workers × {} threads (the formulas gave {}×{}: {})",
        setting.workers,
        setting.threads,
        sized.sizing.workers,
        sized.sizing.threads,
        sized.sizing.explanation
    );
    Plan {
        settings: profile::render(spec, Some(&sizing)),
        sized: Some(Sized {
            basis: sized.basis.clone(),
            sizing,
        }),
    }
}

/// One evaluation's result, for the status.
pub struct Evaluation<'a> {
    pub mode: TuningMode,
    pub fingerprint: String,
    /// The setting before the decision.
    pub from: Setting,
    pub decision: &'a Decision,
    pub observation: &'a Observation,
    pub now: Timestamp,
}

/// The tuning status after an evaluation: the decision recorded in history when it changes
/// (auto) or would change (recommend) the setting.
pub fn record(old: Option<&TuningStatus>, e: &Evaluation<'_>) -> TuningStatus {
    let mut next = old
        .filter(|o| o.tuned_for == e.fingerprint)
        .cloned()
        .unwrap_or_default();
    let d = e.decision;
    next.tuned_for = e.fingerprint.clone();
    next.last_evaluation = Some(d.reason.clone());
    next.model = Some(model_of(&d.state.learned));
    let to = worker_setting(d.setting);
    let previous = next.setting;
    // Holding blind says nothing new: a recommendation stands until the tuner can see again.
    let blind = matches!(d.flag, Some(Flag::MetricsUnavailable | Flag::NoTraffic));
    if !(blind && e.mode != TuningMode::Auto && previous.is_some()) {
        next.setting = Some(to);
    }
    next.scale_down_since = d.state.lower_since.map(crate::time::time);
    if e.mode == TuningMode::Auto {
        next.last_change_time = d.state.last_change.map(crate::time::time);
    }
    let news = match e.mode {
        TuningMode::Auto => d.setting != e.from,
        _ => d.setting != e.from && previous != Some(to),
    };
    if news {
        let rec = TuningDecision {
            time: Time(e.now),
            from: worker_setting(e.from),
            to,
            applied: e.mode == TuningMode::Auto,
            reason: d.reason.clone(),
            signals: signals_of(e.observation),
        };
        next.history.push(rec.clone());
        let excess = next.history.len().saturating_sub(HISTORY);
        next.history.drain(..excess);
        next.last_decision = Some(rec);
    }
    next
}

/// The tuner's part of the status a reconcile writes (`new` holds the rest already). With an
/// evaluation: its record and conditions. An AppServer being tuned (`tuned`: recommend or auto
/// with a valid plan) keeps between evaluations the tuner's conditions as the last one left
/// them. Otherwise there is no tuning status.
pub fn report(
    new: &mut AppServerStatus,
    old: Option<&AppServerStatus>,
    tuned: bool,
    generation: Option<i64>,
    evaluation: Option<&Evaluation<'_>>,
) {
    match evaluation {
        Some(e) => report_evaluation(new, old, generation, e),
        None if tuned => keep_conditions(new, old),
        None => new.tuning = None,
    }
}

fn report_evaluation(
    new: &mut AppServerStatus,
    old: Option<&AppServerStatus>,
    generation: Option<i64>,
    e: &Evaluation<'_>,
) {
    new.tuning = Some(record(old.and_then(|o| o.tuning.as_ref()), e));
    let fresh = conditions(e.decision, e.mode, generation, &Time(e.now));
    // A condition the decision says nothing about stays as it was (after Tuning, as always).
    let kept: Vec<Condition> = old
        .map(|o| o.conditions.as_slice())
        .unwrap_or_default()
        .iter()
        .filter(|c| c.type_ == CPU_SATURATED && !fresh.iter().any(|f| f.type_ == c.type_))
        .cloned()
        .collect();
    let old_status = old.cloned().unwrap_or_default();
    for c in fresh {
        new.conditions.push(crate::report::merge(&old_status, c));
    }
    new.conditions.extend(kept);
}

/// Between observations the tuner's conditions stay as the last one left them.
fn keep_conditions(new: &mut AppServerStatus, old: Option<&AppServerStatus>) {
    let Some(old) = old else { return };
    new.conditions.extend(
        old.conditions
            .iter()
            .filter(|c| c.type_ == TUNING || c.type_ == CPU_SATURATED)
            .cloned(),
    );
}

/// Every Event of a reconcile: the tuner's, then the sizing's. When the tuner moved the
/// numbers its Event already says why, so there is no separate `Sized`.
pub fn events(old: Option<&AppServerStatus>, new: &AppServerStatus) -> Vec<Notice> {
    let mut out = notices(old, new);
    let tuner_moved = out
        .iter()
        .any(|n| matches!(n.reason, "Tuned" | "OOMKilled"));
    out.extend(
        crate::report::notices(old, new)
            .into_iter()
            .filter(|n| !(tuner_moved && n.reason == "Sized")),
    );
    out
}

/// The Tuning and CpuSaturated conditions for a decision. A hold for missing metrics or no
/// traffic says nothing about the CPU, so it leaves CpuSaturated out (the old one stays).
pub fn conditions(
    d: &Decision,
    mode: TuningMode,
    generation: Option<i64>,
    now: &Time,
) -> Vec<Condition> {
    let (ok, reason) = match d.flag {
        Some(Flag::MetricsUnavailable) => (false, "MetricsUnavailable"),
        Some(Flag::NoTraffic) => (false, "NoTraffic"),
        Some(Flag::TargetUnreachable) => (false, "TargetUnreachable"),
        Some(Flag::OomAtMinimum) => (false, "OomAtMinimum"),
        Some(Flag::CpuSaturated) | None if mode == TuningMode::Auto => (true, "Tuning"),
        Some(Flag::CpuSaturated) | None => (true, "Recommending"),
    };
    let tuning = cond(TUNING, ok, reason, d.reason.clone(), generation, now);
    if matches!(d.flag, Some(Flag::MetricsUnavailable | Flag::NoTraffic)) {
        return vec![tuning];
    }
    let saturated = d.flag == Some(Flag::CpuSaturated);
    let (cpu_reason, cpu_message) = if saturated {
        let m = format!(
            "the CPU limit limits this AppServer, more concurrency would not help: add CPU or replicas. {}",
            d.reason
        );
        ("CpuSaturated", m)
    } else {
        ("AsExpected", String::new())
    };
    let cpu = cond(
        CPU_SATURATED,
        saturated,
        cpu_reason,
        cpu_message,
        generation,
        now,
    );
    vec![tuning, cpu]
}

fn cond(
    type_: &str,
    ok: bool,
    reason: &str,
    message: String,
    generation: Option<i64>,
    now: &Time,
) -> Condition {
    Condition {
        type_: type_.into(),
        status: if ok { "True" } else { "False" }.into(),
        reason: reason.into(),
        message,
        observed_generation: generation,
        last_transition_time: now.clone(),
    }
}

/// Events for a new decision and for conditions that just turned bad.
pub fn notices(old: Option<&AppServerStatus>, new: &AppServerStatus) -> Vec<Notice> {
    let mut out = Vec::new();
    let last = |s: &AppServerStatus| s.tuning.as_ref().and_then(|t| t.last_decision.clone());
    if let Some(d) = last(new).filter(|d| old.and_then(last).as_ref() != Some(d)) {
        let mut note = d.reason.clone();
        if !d.applied {
            let _ = write!(note, " (recommendation only: tuning.mode is recommend)");
        }
        let oom = d.signals.oom_kills > 0;
        out.push(Notice {
            warning: oom,
            reason: match (oom, d.applied) {
                (true, _) => "OOMKilled",
                (false, true) => "Tuned",
                (false, false) => "Recommended",
            },
            note,
        });
    }
    for (type_, bad_when) in [(TUNING, "False"), (CPU_SATURATED, "True")] {
        let get = |s: &AppServerStatus| {
            s.conditions
                .iter()
                .find(|c| c.type_ == type_)
                .map(|c| (c.status.clone(), c.reason.clone(), c.message.clone()))
        };
        let before = old.and_then(get);
        if let Some((status, reason, message)) = get(new) {
            // No traffic is worth a condition, not a Warning every quiet night.
            let turned = status == bad_when
                && reason != "NoTraffic"
                && before.as_ref().map(|b| (&b.0, &b.1)) != Some((&status, &reason));
            if turned {
                out.push(Notice {
                    warning: true,
                    reason: event_reason(&reason),
                    note: message,
                });
            }
        }
    }
    out
}

fn event_reason(reason: &str) -> &'static str {
    match reason {
        "MetricsUnavailable" => "MetricsUnavailable",
        "NoTraffic" => "NoTraffic",
        "TargetUnreachable" => "TargetUnreachable",
        "OomAtMinimum" => "OomAtMinimum",
        "CpuSaturated" => "CpuSaturated",
        _ => "Tuning",
    }
}

fn signals_of(o: &Observation) -> DecisionSignals {
    let round = |x: Option<f64>| x.map(|v| (v * 1000.0).round() / 1000.0);
    DecisionSignals {
        request_rate: round(o.request_rate),
        latency_p95_seconds: round(o.latency_p95),
        queue: round(o.queue),
        cpu_cores: round(o.cpu_cores),
        memory_mib: o.memory_mib.map(f64::round),
        oom_kills: o.oom_kills,
    }
}

fn model_of(l: &Learned) -> LearnedModel {
    let round = |x: Option<f64>| x.map(|v| (v * 10_000.0).round() / 10_000.0);
    LearnedModel {
        cpu_per_request_seconds: round(l.cpu_per_request),
        wait_per_request_seconds: round(l.wait_per_request),
        per_worker_mib: l.per_worker_mib.map(f64::round),
        per_worker_floor_mib: l.per_worker_floor_mib.map(f64::round),
    }
}

fn learned_of(m: &LearnedModel) -> Learned {
    let ok = |x: Option<f64>| x.filter(|v| v.is_finite() && *v >= 0.0);
    Learned {
        cpu_per_request: ok(m.cpu_per_request_seconds),
        wait_per_request: ok(m.wait_per_request_seconds),
        per_worker_mib: ok(m.per_worker_mib),
        per_worker_floor_mib: ok(m.per_worker_floor_mib),
    }
}

fn worker_setting(s: Setting) -> WorkerSetting {
    let i = |n: u32| i32::try_from(n).unwrap_or(i32::MAX);
    WorkerSetting {
        workers: i(s.workers),
        threads: i(s.threads),
    }
}

/// A setting from status, brought within the bounds (they may have changed since).
fn setting_of(s: WorkerSetting, cfg: &Config) -> Setting {
    let u = |n: i32| u32::try_from(n).unwrap_or(1);
    Setting {
        workers: u(s.workers).clamp(cfg.workers.min, cfg.workers.max),
        threads: match cfg.concurrency {
            crate::sizing::Concurrency::Threads => {
                u(s.threads).clamp(cfg.threads.min, cfg.threads.max)
            }
            _ => 1,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::plan;
    use crate::tuner::decide;

    fn spec(mode: &str) -> AppServerSpec {
        serde_json::from_value(serde_json::json!({
            "image": "app:1", "args": ["app:app"], "server": {"kind": "gunicorn", "workerClass": "gthread"},
            "resources": {"limits": {"cpu": "2", "memory": "4Gi"}},
            "tuning": {"mode": mode, "cooldown": "5m", "targets": {"latencyP95": "30s"}},
        }))
        .unwrap()
    }

    fn overloaded() -> Observation {
        Observation {
            window_seconds: 60.0,
            pods: 1,
            request_rate: Some(1.0),
            latency_p50: Some(200.0),
            latency_p95: Some(210.0),
            queue: Some(200.0),
            drop_rate: Some(49.0),
            cpu_cores: Some(0.02),
            memory_mib: Some(1200.0),
            ..Observation::default()
        }
    }

    /// One evaluation as the controller runs it, from a status.
    fn evaluate(
        spec: &AppServerSpec,
        old: Option<&TuningStatus>,
        now: f64,
    ) -> (TuningStatus, Decision) {
        evaluate_with(spec, old, now, &overloaded())
    }

    fn evaluate_with(
        spec: &AppServerSpec,
        old: Option<&TuningStatus>,
        now: f64,
        obs: &Observation,
    ) -> (TuningStatus, Decision) {
        let p = plan(spec, &[]).unwrap();
        let sized = p.sized.as_ref().unwrap();
        let cfg = config(spec, sized);
        let st = state(spec.tuning.mode, &cfg, sized, old);
        let d = decide(&cfg, &st, obs, now);
        let ts = Timestamp::from_second(now as i64).unwrap();
        let e = Evaluation {
            mode: spec.tuning.mode,
            fingerprint: fingerprint(&cfg),
            from: st.setting,
            decision: &d,
            observation: obs,
            now: ts,
        };
        (record(old, &e), d)
    }

    #[test]
    fn auto_records_an_applied_decision_and_a_restart_does_not_repeat_it() {
        let s = spec("auto");
        let (first, d) = evaluate(&s, None, 1e9);
        assert_eq!(first.history.len(), 1);
        let last = first.last_decision.clone().unwrap();
        assert!(last.applied);
        assert_eq!(
            last.from,
            WorkerSetting {
                workers: 5,
                threads: 4
            }
        );
        assert_eq!(first.setting, Some(worker_setting(d.setting)));
        assert_eq!(last.signals.request_rate, Some(1.0));
        // A restarted operator reads the same status a minute later: within the cooldown it
        // holds at the tuned setting instead of deciding again from the formulas.
        let slots = f64::from(d.setting.slots());
        let better = Observation {
            request_rate: Some(slots / 20.0),
            drop_rate: Some(50.0 - slots / 20.0),
            cpu_cores: Some(slots / 20.0 * 0.02),
            ..overloaded()
        };
        let (second, held) = evaluate_with(&s, Some(&first), 1e9 + 60.0, &better);
        assert_eq!(held.setting, d.setting);
        assert!(held.reason.contains("cooldown"), "{}", held.reason);
        assert_eq!(second.history.len(), 1);
        assert_eq!(second.last_decision, first.last_decision);
        let learned = second
            .model
            .as_ref()
            .unwrap()
            .cpu_per_request_seconds
            .unwrap();
        assert!((learned - 0.02).abs() < 1e-9, "{learned}");
    }

    #[test]
    fn recommend_reports_without_applying_and_does_not_repeat_itself() {
        let s = spec("recommend");
        let (first, d) = evaluate(&s, None, 1e9);
        let last = first.last_decision.clone().unwrap();
        assert!(!last.applied);
        assert_ne!(
            d.setting,
            Setting {
                workers: 5,
                threads: 4
            }
        );
        // recommend starts from the formulas' setting every time (the pods run it).
        let (second, _) = evaluate(&s, Some(&first), 1e9 + 60.0);
        assert_eq!(
            second.history.len(),
            1,
            "the same recommendation is not recorded twice"
        );
        assert_eq!(second.last_change_time, None);
        // Blind, the tuner holds; the recommendation stands.
        let blind = Observation {
            request_rate: None,
            ..overloaded()
        };
        let (third, held) = evaluate_with(&s, Some(&second), 1e9 + 120.0, &blind);
        assert_eq!(held.flag, Some(Flag::MetricsUnavailable));
        assert_eq!(third.setting, second.setting);
    }

    #[test]
    fn history_is_bounded_and_oldest_first() {
        let s = spec("auto");
        let mut status: Option<TuningStatus> = None;
        for i in 0..15 {
            let mut old = status.clone().unwrap_or_default();
            // Forget the setting so every evaluation is a change from the formulas.
            old.setting = None;
            old.last_change_time = None;
            old.tuned_for = status
                .as_ref()
                .map(|t| t.tuned_for.clone())
                .unwrap_or_default();
            let (next, _) = evaluate(
                &s,
                status.as_ref().map(|_| &old),
                1e9 + f64::from(i) * 1000.0,
            );
            status = Some(next);
        }
        let h = status.unwrap().history;
        assert_eq!(h.len(), HISTORY);
        assert!(h.windows(2).all(|w| w[0].time.0 < w[1].time.0));
    }

    #[test]
    fn new_resources_start_over_from_the_formulas() {
        let s = spec("auto");
        let (first, _) = evaluate(&s, None, 1e9);
        let mut bigger = s.clone();
        bigger.resources =
            serde_json::from_value(serde_json::json!({"limits": {"cpu": "4", "memory": "8Gi"}}))
                .unwrap();
        let p = plan(&bigger, &[]).unwrap();
        let sized = p.sized.as_ref().unwrap();
        let st = state(
            TuningMode::Auto,
            &config(&bigger, sized),
            sized,
            Some(&first),
        );
        assert_eq!(st.setting, static_setting(sized));
        assert_eq!(st.last_change, None);
        assert_eq!(st.learned, Learned::default());
    }

    #[test]
    fn a_tuned_plan_renders_the_tuned_numbers() {
        let s = spec("auto");
        let p = plan(&s, &[]).unwrap();
        let tuned = with_setting(
            &p,
            &s,
            Setting {
                workers: 7,
                threads: 30,
            },
        );
        let env: std::collections::BTreeMap<_, _> = tuned
            .settings
            .env
            .iter()
            .map(|e| (e.name.as_str(), e.value.clone().unwrap_or_default()))
            .collect();
        assert_eq!(env["GUNICORN_WORKERS"], "7");
        assert_eq!(env["GUNICORN_THREADS"], "30");
        let explanation = &tuned.sized.unwrap().sizing.explanation;
        assert!(
            explanation.starts_with("tuned to 7 workers × 30 threads (the formulas gave 5×4"),
            "{explanation}"
        );
    }

    #[test]
    fn events_for_a_decision_and_for_conditions_that_turn_bad() {
        let s = spec("auto");
        let (tuned, d) = evaluate(&s, None, 1e9);
        let now = Time(Timestamp::from_second(1_000_000_000).unwrap());
        let new = AppServerStatus {
            tuning: Some(tuned),
            conditions: conditions(&d, TuningMode::Auto, Some(1), &now),
            ..Default::default()
        };
        let n = notices(None, &new);
        assert_eq!(n.len(), 1, "{n:?}");
        assert_eq!(n[0].reason, "Tuned");
        assert!(n[0].note.starts_with("5×4 → "), "{}", n[0].note);
        assert!(
            notices(Some(&new), &new).is_empty(),
            "nothing new, no Event"
        );
        let mut held = d.clone();
        held.flag = Some(Flag::MetricsUnavailable);
        held.reason = "holding 5×4: no data for latencyP95".into();
        let bad = AppServerStatus {
            conditions: conditions(&held, TuningMode::Auto, Some(1), &now),
            ..new.clone()
        };
        let n = notices(Some(&new), &bad);
        assert_eq!(n.len(), 1, "{n:?}");
        assert_eq!((n[0].warning, n[0].reason), (true, "MetricsUnavailable"));
    }
}
