//! Server profiles: how each app server is told its numbers (environment variables, flags).
//!
//! Pure: spec + sizing → command, args and environment. With `tuning.mode: off` there is no
//! sizing and only the port, timeouts and recycling are set.

use k8s_openapi::api::core::v1::EnvVar;

use crate::api::{AppServerSpec, ServerKind, WorkerClass};
use crate::sizing::{Sizing, effective_worker_class};

/// What the container runs with.
#[derive(Clone, Debug, PartialEq, Default)]
pub struct ServerSettings {
    /// Empty: keep the image's entrypoint.
    pub command: Vec<String>,
    pub args: Vec<String>,
    /// Sorted by name, so the pod template is the same on every pass.
    pub env: Vec<EnvVar>,
    /// The server writes nothing outside /tmp and /dev/shm, so the root filesystem can be read-only.
    pub read_only_root: bool,
}

/// Renders the settings of `spec`'s server for `sizing` (`None` when tuning is off).
pub fn render(spec: &AppServerSpec, sizing: Option<&Sizing>) -> ServerSettings {
    let t = Times::of(spec);
    let mut out = ServerSettings {
        command: spec.command.clone(),
        args: spec.args.clone(),
        ..Default::default()
    };
    let mut env = Env::default();
    match spec.server.kind {
        ServerKind::Gunicorn => {
            default_command(&mut out, "gunicorn");
            out.read_only_root = true;
            env.set("GUNICORN_CMD_ARGS", gunicorn_flags(spec, sizing, &t));
            if let Some(s) = sizing {
                env.set("GUNICORN_WORKERS", s.workers);
                env.set("GUNICORN_THREADS", s.threads);
            }
            env.set("GUNICORN_TIMEOUT", t.request);
        }
        ServerKind::Uvicorn => {
            default_command(&mut out, "uvicorn");
            out.read_only_root = true;
            out.args.extend(uvicorn_flags(spec, sizing, &t));
            if let Some(s) = sizing {
                env.set("WEB_CONCURRENCY", s.workers);
            }
        }
        ServerKind::Puma => {
            if let Some(s) = sizing {
                env.set("WEB_CONCURRENCY", s.workers);
                env.set("RAILS_MAX_THREADS", s.threads);
                env.set("RAILS_MIN_THREADS", s.threads);
            }
            env.set("PORT", spec.port);
        }
        ServerKind::Unicorn => {
            if let Some(s) = sizing {
                env.set("WEB_CONCURRENCY", s.workers);
            }
            env.set("UNICORN_TIMEOUT", t.request);
            env.set("PORT", spec.port);
        }
        ServerKind::PhpFpm => {
            env.set("PHP_FPM_PM", "static");
            if let Some(s) = sizing {
                env.set("PHP_FPM_PM_MAX_CHILDREN", s.workers);
            }
            if let Some(r) = &spec.recycle {
                env.set("PHP_FPM_PM_MAX_REQUESTS", r.max_requests);
            }
            env.set(
                "PHP_FPM_REQUEST_TERMINATE_TIMEOUT",
                format!("{}s", t.request),
            );
            env.set(
                "PHP_FPM_PROCESS_CONTROL_TIMEOUT",
                format!("{}s", t.graceful),
            );
        }
        ServerKind::Node => {
            out.read_only_root = true;
            if let Some(s) = sizing {
                env.set("WEB_CONCURRENCY", s.workers);
            }
            env.set("PORT", spec.port);
        }
        ServerKind::Generic => {
            if let (Some(s), Some(vars)) = (sizing, &spec.server.variables) {
                env.set(&vars.workers, s.workers);
                if let Some(threads) = &vars.threads {
                    env.set(threads, s.threads);
                }
            }
            env.set("PORT", spec.port);
        }
    }
    out.env = env.into_sorted();
    out
}

/// Names of the variables the profile sets, which the user's `env` must not set too.
pub fn managed_env_names(spec: &AppServerSpec, sizing: Option<&Sizing>) -> Vec<String> {
    render(spec, sizing)
        .env
        .into_iter()
        .map(|e| e.name)
        .collect()
}

fn default_command(out: &mut ServerSettings, launcher: &str) {
    if out.command.is_empty() {
        out.command = vec![launcher.to_string()];
    }
}

/// gunicorn reads `GUNICORN_CMD_ARGS` over its config file, so this wins over a baked-in
/// gunicorn.conf.py without replacing the image's command.
fn gunicorn_flags(spec: &AppServerSpec, sizing: Option<&Sizing>, t: &Times) -> String {
    let class = effective_worker_class(&spec.server, spec.workload);
    let mut flags = vec![format!("--bind 0.0.0.0:{}", spec.port)];
    if let Some(s) = sizing {
        flags.push(format!("--workers {}", s.workers));
        flags.push(format!("--worker-class {}", gunicorn_class(class)));
        // A sync worker given --threads > 1 silently becomes gthread: only pass threads to gthread.
        if class == WorkerClass::Gthread {
            flags.push(format!("--threads {}", s.threads));
        }
        if let Some(c) = s.connections {
            flags.push(format!("--worker-connections {c}"));
        }
    }
    flags.push(format!("--timeout {}", t.request));
    flags.push(format!("--graceful-timeout {}", t.graceful));
    // The heartbeat file lives in memory: /tmp may be a slow disk or read-only.
    flags.push("--worker-tmp-dir /dev/shm".to_string());
    if let Some(r) = &spec.recycle {
        flags.push(format!(
            "--max-requests {} --max-requests-jitter {}",
            r.max_requests, r.jitter
        ));
    }
    flags.join(" ")
}

fn gunicorn_class(class: WorkerClass) -> &'static str {
    match class {
        WorkerClass::Sync => "sync",
        WorkerClass::Gthread => "gthread",
        WorkerClass::Gevent => "gevent",
        WorkerClass::Uvicorn => "uvicorn.workers.UvicornWorker",
    }
}

fn uvicorn_flags(spec: &AppServerSpec, sizing: Option<&Sizing>, t: &Times) -> Vec<String> {
    let mut flags = vec![
        "--host".into(),
        "0.0.0.0".into(),
        "--port".into(),
        spec.port.to_string(),
    ];
    if let Some(s) = sizing {
        flags.extend(["--workers".into(), s.workers.to_string()]);
        if let Some(c) = s.connections {
            flags.extend(["--limit-concurrency".into(), c.to_string()]);
        }
    }
    flags.extend(["--timeout-graceful-shutdown".into(), t.graceful.to_string()]);
    if let Some(r) = &spec.recycle {
        flags.extend(["--limit-max-requests".into(), r.max_requests.to_string()]);
    }
    flags
}

/// Timeouts in whole seconds, rounded up (a 500ms timeout must not become 0, "never").
struct Times {
    request: u64,
    graceful: u64,
}

impl Times {
    fn of(spec: &AppServerSpec) -> Self {
        Self {
            request: seconds(spec.timeouts.request).max(1),
            graceful: seconds(spec.timeouts.graceful),
        }
    }
}

/// Whole seconds of a duration, rounded up; negative durations count as zero.
pub fn seconds(d: kube::core::Duration) -> u64 {
    if d.is_negative() {
        return 0;
    }
    let d: std::time::Duration = d.into();
    d.as_secs() + u64::from(d.subsec_nanos() > 0)
}

#[derive(Default)]
struct Env(Vec<EnvVar>);

impl Env {
    fn set(&mut self, name: &str, value: impl ToString) {
        self.0.push(EnvVar {
            name: name.to_string(),
            value: Some(value.to_string()),
            value_from: None,
        });
    }

    fn into_sorted(mut self) -> Vec<EnvVar> {
        self.0.sort_by(|a, b| a.name.cmp(&b.name));
        self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{GenericVariables, Recycle, ServerSpec, WorkloadClass};
    use crate::sizing::Concurrency;

    fn spec(kind: ServerKind) -> AppServerSpec {
        serde_json::from_value(serde_json::json!({
            "image": "app:1", "args": ["app:app"], "port": 8000,
            "server": {"kind": kind}, "timeouts": {"request": "300s", "graceful": "30s"},
        }))
        .unwrap()
    }

    fn sizing(workers: u32, threads: u32, connections: Option<u32>) -> Sizing {
        Sizing {
            workers,
            threads,
            connections,
            concurrency: Concurrency::Threads,
            memory_cap: None,
            memory_estimate_mib: 0,
            explanation: String::new(),
        }
    }

    fn env(s: &ServerSettings, name: &str) -> Option<String> {
        s.env
            .iter()
            .find(|e| e.name == name)
            .and_then(|e| e.value.clone())
    }

    #[test]
    fn gunicorn_gthread_gets_flags_and_variables() {
        let mut sp = spec(ServerKind::Gunicorn);
        sp.recycle = Some(Recycle {
            max_requests: 1000,
            jitter: 50,
        });
        let s = render(&sp, Some(&sizing(5, 4, None)));
        assert_eq!(s.command, ["gunicorn"]);
        assert_eq!(s.args, ["app:app"]);
        assert_eq!(
            env(&s, "GUNICORN_CMD_ARGS").unwrap(),
            "--bind 0.0.0.0:8000 --workers 5 --worker-class gthread --threads 4 --timeout 300 \
             --graceful-timeout 30 --worker-tmp-dir /dev/shm --max-requests 1000 --max-requests-jitter 50"
        );
        assert_eq!(env(&s, "GUNICORN_WORKERS").as_deref(), Some("5"));
        assert_eq!(env(&s, "GUNICORN_THREADS").as_deref(), Some("4"));
        assert!(s.read_only_root);
        let names: Vec<_> = s.env.iter().map(|e| e.name.as_str()).collect();
        assert!(names.is_sorted(), "{names:?}");
    }

    #[test]
    fn gunicorn_sync_never_gets_threads() {
        let mut sp = spec(ServerKind::Gunicorn);
        sp.workload = WorkloadClass::CpuBound;
        let flags = env(&render(&sp, Some(&sizing(3, 1, None))), "GUNICORN_CMD_ARGS").unwrap();
        assert!(flags.contains("--worker-class sync"), "{flags}");
        assert!(!flags.contains("--threads"), "{flags}");
    }

    #[test]
    fn gunicorn_uvicorn_worker_class() {
        let mut sp = spec(ServerKind::Gunicorn);
        sp.server.worker_class = Some(WorkerClass::Uvicorn);
        let flags = env(
            &render(&sp, Some(&sizing(2, 1, Some(1000)))),
            "GUNICORN_CMD_ARGS",
        )
        .unwrap();
        assert!(
            flags
                .contains("--worker-class uvicorn.workers.UvicornWorker --worker-connections 1000"),
            "{flags}"
        );
    }

    #[test]
    fn off_mode_sets_no_worker_numbers() {
        let s = render(&spec(ServerKind::Gunicorn), None);
        let flags = env(&s, "GUNICORN_CMD_ARGS").unwrap();
        assert!(!flags.contains("--workers"), "{flags}");
        assert_eq!(env(&s, "GUNICORN_WORKERS"), None);
        assert_eq!(
            managed_env_names(&spec(ServerKind::Gunicorn), None),
            ["GUNICORN_CMD_ARGS", "GUNICORN_TIMEOUT"]
        );
    }

    #[test]
    fn uvicorn_flags_follow_the_app() {
        let s = render(&spec(ServerKind::Uvicorn), Some(&sizing(2, 1, Some(1000))));
        assert_eq!(s.command, ["uvicorn"]);
        assert_eq!(
            s.args.join(" "),
            "app:app --host 0.0.0.0 --port 8000 --workers 2 --limit-concurrency 1000 --timeout-graceful-shutdown 30"
        );
        assert_eq!(env(&s, "WEB_CONCURRENCY").as_deref(), Some("2"));
    }

    #[test]
    fn puma_uses_rails_variables_and_keeps_the_image_command() {
        let s = render(&spec(ServerKind::Puma), Some(&sizing(3, 5, None)));
        assert!(s.command.is_empty());
        assert_eq!(env(&s, "WEB_CONCURRENCY").as_deref(), Some("3"));
        assert_eq!(env(&s, "RAILS_MAX_THREADS").as_deref(), Some("5"));
        assert_eq!(env(&s, "RAILS_MIN_THREADS").as_deref(), Some("5"));
        assert_eq!(env(&s, "PORT").as_deref(), Some("8000"));
        assert!(!s.read_only_root);
    }

    #[test]
    fn php_fpm_static_pool() {
        let mut sp = spec(ServerKind::PhpFpm);
        sp.recycle = Some(Recycle {
            max_requests: 500,
            jitter: 0,
        });
        let s = render(&sp, Some(&sizing(12, 1, None)));
        assert_eq!(env(&s, "PHP_FPM_PM").as_deref(), Some("static"));
        assert_eq!(env(&s, "PHP_FPM_PM_MAX_CHILDREN").as_deref(), Some("12"));
        assert_eq!(env(&s, "PHP_FPM_PM_MAX_REQUESTS").as_deref(), Some("500"));
        assert_eq!(
            env(&s, "PHP_FPM_REQUEST_TERMINATE_TIMEOUT").as_deref(),
            Some("300s")
        );
    }

    #[test]
    fn node_and_unicorn() {
        let s = render(&spec(ServerKind::Node), Some(&sizing(4, 1, Some(1000))));
        assert_eq!(env(&s, "WEB_CONCURRENCY").as_deref(), Some("4"));
        let s = render(&spec(ServerKind::Unicorn), Some(&sizing(6, 1, None)));
        assert_eq!(env(&s, "WEB_CONCURRENCY").as_deref(), Some("6"));
        assert_eq!(env(&s, "UNICORN_TIMEOUT").as_deref(), Some("300"));
    }

    #[test]
    fn generic_uses_the_named_variables() {
        let mut sp = spec(ServerKind::Generic);
        sp.server = ServerSpec {
            kind: ServerKind::Generic,
            worker_class: None,
            variables: Some(GenericVariables {
                workers: "APP_PROCS".into(),
                threads: Some("APP_THREADS".into()),
            }),
        };
        let s = render(&sp, Some(&sizing(3, 8, None)));
        assert_eq!(env(&s, "APP_PROCS").as_deref(), Some("3"));
        assert_eq!(env(&s, "APP_THREADS").as_deref(), Some("8"));
    }

    #[test]
    fn sub_second_timeouts_round_up() {
        assert_eq!(seconds(std::time::Duration::from_millis(500).into()), 1);
        assert_eq!(seconds(std::time::Duration::from_secs(30).into()), 30);
    }
}
