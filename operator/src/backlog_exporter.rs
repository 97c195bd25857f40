//! The backlog-exporter sidecar (I/O): reads `/proc/net/{tcp,tcp6,netstat}` at every scrape,
//! hands the text to the core's parsers ([`appserver_core::backlog`]) and serves the result as
//! Prometheus metrics. See `docs/backlog-exporter.md`.

use std::collections::BTreeMap;
use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use appserver_core::backlog::{
    Listener, ParseError, PortStats, parse_listen_overflows, parse_listeners, summarize,
};
use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, NoLabelSet, prometheus_text};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("reading {}: {source}", path.display())]
    Io { path: PathBuf, source: io::Error },
    #[error("parsing {}: {source}", path.display())]
    Parse { path: PathBuf, source: ParseError },
}

/// Where to read and what to report.
#[derive(Clone, Debug)]
pub struct BacklogConfig {
    /// `/proc`; `/proc/1` reads the network namespace of PID 1 instead of the reader's own.
    pub proc_root: PathBuf,
    /// Only listeners on this port; `None` reports every LISTEN socket.
    pub listen_port: Option<u16>,
}

impl Default for BacklogConfig {
    fn default() -> Self {
        Self {
            proc_root: PathBuf::from("/proc"),
            listen_port: None,
        }
    }
}

/// What one scrape reports.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Snapshot {
    pub ports: BTreeMap<u16, PortStats>,
    pub listen_overflows: Option<u64>,
}

/// Reads a procfs file; `Ok(None)` when it does not exist.
fn read_optional(path: &Path) -> Result<Option<String>, ReadError> {
    match std::fs::read_to_string(path) {
        Ok(text) => Ok(Some(text)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(ReadError::Io {
            path: path.to_path_buf(),
            source,
        }),
    }
}

fn read_required(path: &Path) -> Result<String, ReadError> {
    std::fs::read_to_string(path).map_err(|source| ReadError::Io {
        path: path.to_path_buf(),
        source,
    })
}

fn listeners_in(path: &Path, text: &str) -> Result<Vec<Listener>, ReadError> {
    parse_listeners(text).map_err(|source| ReadError::Parse {
        path: path.to_path_buf(),
        source,
    })
}

/// LISTEN sockets of `<proc_root>/net/tcp` and `tcp6`, optionally only those on `port`.
/// A missing `tcp6` means IPv6 is disabled; a missing `tcp` is an error.
pub fn read_listeners(proc_root: &Path, port: Option<u16>) -> Result<Vec<Listener>, ReadError> {
    let tcp = proc_root.join("net/tcp");
    let mut all = listeners_in(&tcp, &read_required(&tcp)?)?;
    let tcp6 = proc_root.join("net/tcp6");
    if let Some(text) = read_optional(&tcp6)? {
        all.extend(listeners_in(&tcp6, &text)?);
    }
    all.retain(|l| port.is_none_or(|p| l.port == p));
    Ok(all)
}

/// `ListenOverflows` of `<proc_root>/net/netstat`.
pub fn read_listen_overflows(proc_root: &Path) -> Result<Option<u64>, ReadError> {
    let path = proc_root.join("net/netstat");
    parse_listen_overflows(&read_required(&path)?)
        .map_err(|source| ReadError::Parse { path, source })
}

/// Reads everything one scrape reports, fresh.
pub fn snapshot(cfg: &BacklogConfig) -> Result<Snapshot, ReadError> {
    let listeners = read_listeners(&cfg.proc_root, cfg.listen_port)?;
    Ok(Snapshot {
        ports: summarize(&listeners, cfg.listen_port),
        listen_overflows: read_listen_overflows(&cfg.proc_root)?,
    })
}

impl Snapshot {
    fn encode_per_port(
        &self,
        encoder: &mut DescriptorEncoder,
        name: &str,
        help: &str,
        value: fn(&PortStats) -> u64,
    ) -> Result<(), std::fmt::Error> {
        let mut metric = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
        for (port, stats) in &self.ports {
            metric
                .encode_family(&[("port", *port)])?
                .encode_gauge(&value(stats))?;
        }
        Ok(())
    }
}

/// Encodes the snapshot as it is; the registry is built per scrape, so nothing is cached.
impl Collector for Snapshot {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        self.encode_per_port(
            &mut encoder,
            "listen_backlog",
            "Connections completed by the kernel and not yet accepted, summed over LISTEN sockets",
            |s| s.backlog,
        )?;
        self.encode_per_port(
            &mut encoder,
            "listen_sockets",
            "LISTEN sockets on the port",
            |s| s.sockets,
        )?;
        if let Some(overflows) = self.listen_overflows {
            // The kernel's own counter, passed through: a counter type, so rate() applies.
            encoder
                .encode_descriptor(
                    "listen_overflows",
                    "Connections dropped because an accept backlog was full (TcpExt ListenOverflows, whole network namespace)",
                    None,
                    MetricType::Counter,
                )?
                .encode_counter::<NoLabelSet, _, u64>(&overflows, None)?;
        }
        Ok(())
    }
}

/// Prometheus text format (0.0.4) of a snapshot.
pub fn render(snapshot: &Snapshot) -> Result<String, std::fmt::Error> {
    let mut registry = Registry::with_prefix("appserver");
    registry.register_collector(Box::new(snapshot.clone()));
    let mut out = String::new();
    prometheus_text::encode(&mut out, &registry)?;
    Ok(out)
}

pub fn router(cfg: BacklogConfig) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/metrics", get(metrics))
        .with_state(Arc::new(cfg))
}

/// Reads on a blocking thread: procfs reads are synchronous and scale with the socket count.
async fn scrape(cfg: Arc<BacklogConfig>) -> Result<String, String> {
    let read = tokio::task::spawn_blocking(move || snapshot(&cfg)).await;
    let snapshot = read
        .map_err(|e| format!("reading sockets: {e}"))?
        .map_err(|e| e.to_string())?;
    render(&snapshot).map_err(|e| format!("encoding metrics: {e}"))
}

async fn metrics(State(cfg): State<Arc<BacklogConfig>>) -> Response {
    match scrape(cfg).await {
        Ok(body) => (
            StatusCode::OK,
            [(header::CONTENT_TYPE, prometheus_text::CONTENT_TYPE)],
            body,
        )
            .into_response(),
        Err(message) => {
            tracing::error!(error = %message, "scrape failed");
            (StatusCode::INTERNAL_SERVER_ERROR, format!("{message}\n")).into_response()
        }
    }
}

/// Serves `/metrics` and `/healthz` on an already bound listener until the process ends.
pub async fn serve_on(listener: tokio::net::TcpListener, cfg: BacklogConfig) -> io::Result<()> {
    axum::serve(listener, router(cfg)).await
}

/// Serves `/metrics` and `/healthz` on `addr` until the process ends.
pub async fn serve(addr: SocketAddr, cfg: BacklogConfig) -> io::Result<()> {
    serve_on(tokio::net::TcpListener::bind(addr).await?, cfg).await
}
#[cfg(test)]
mod tests {
    use super::*;

    // Kernel format (net/ipv4/tcp_ipv4.c, net/ipv6/tcp_ipv6.c), shared with the core's parser tests.
    const TCP: &str = include_str!("../../core/testdata/proc/net/tcp");
    const TCP6: &str = include_str!("../../core/testdata/proc/net/tcp6");
    const NETSTAT: &str = include_str!("../../core/testdata/proc/net/netstat");

    /// A fake proc root under the system temp dir, removed on drop.
    struct FakeProc(PathBuf);

    impl FakeProc {
        fn new(name: &str, files: &[(&str, &str)]) -> Self {
            let root = std::env::temp_dir().join(format!("backlog-{}-{name}", std::process::id()));
            let _ = std::fs::remove_dir_all(&root);
            std::fs::create_dir_all(root.join("net")).unwrap();
            for (file, text) in files {
                std::fs::write(root.join("net").join(file), text).unwrap();
            }
            Self(root)
        }

        fn config(&self, listen_port: Option<u16>) -> BacklogConfig {
            BacklogConfig {
                proc_root: self.0.clone(),
                listen_port,
            }
        }
    }

    impl Drop for FakeProc {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    #[test]
    fn snapshot_filters_by_port_and_sums_ipv4_and_ipv6() {
        let proc = FakeProc::new(
            "both",
            &[("tcp", TCP), ("tcp6", TCP6), ("netstat", NETSTAT)],
        );
        let snap = snapshot(&proc.config(Some(8080))).unwrap();
        assert_eq!(
            snap.ports.into_iter().collect::<Vec<_>>(),
            vec![(
                8080,
                PortStats {
                    backlog: 18,
                    sockets: 4
                }
            )]
        );
        assert_eq!(snap.listen_overflows, Some(42));
    }

    #[test]
    fn missing_tcp6_is_ipv6_disabled_not_an_error() {
        let proc = FakeProc::new("v4only", &[("tcp", TCP), ("netstat", NETSTAT)]);
        let snap = snapshot(&proc.config(None)).unwrap();
        assert_eq!(
            snap.ports[&8080],
            PortStats {
                backlog: 5,
                sockets: 2
            }
        );
        assert_eq!(
            snap.ports[&3306],
            PortStats {
                backlog: 7,
                sockets: 1
            }
        );
    }

    #[test]
    fn missing_tcp_is_an_error_naming_the_file() {
        let proc = FakeProc::new("notcp", &[("tcp6", TCP6), ("netstat", NETSTAT)]);
        let e = snapshot(&proc.config(None)).unwrap_err();
        assert!(matches!(e, ReadError::Io { .. }), "{e:?}");
        assert!(e.to_string().contains("net/tcp:"), "{e}");
    }

    #[test]
    fn malformed_file_error_names_file_and_line() {
        let bad_tcp6 = format!("{TCP6}   3: garbage\n");
        let proc = FakeProc::new(
            "bad6",
            &[("tcp", TCP), ("tcp6", &bad_tcp6), ("netstat", NETSTAT)],
        );
        let e = snapshot(&proc.config(None)).unwrap_err().to_string();
        assert!(
            e.starts_with("parsing ") && e.contains("net/tcp6: line 5: "),
            "{e}"
        );
    }

    fn two_ports() -> Snapshot {
        Snapshot {
            ports: [
                (
                    3306,
                    PortStats {
                        backlog: 7,
                        sockets: 1,
                    },
                ),
                (
                    8080,
                    PortStats {
                        backlog: 15,
                        sockets: 2,
                    },
                ),
            ]
            .into(),
            listen_overflows: Some(42),
        }
    }

    #[test]
    fn render_is_prometheus_text_with_port_labels_and_a_counter() {
        let expected = "\
# HELP appserver_listen_backlog Connections completed by the kernel and not yet accepted, summed over LISTEN sockets
# TYPE appserver_listen_backlog gauge
appserver_listen_backlog{port=\"3306\"} 7
appserver_listen_backlog{port=\"8080\"} 15
# HELP appserver_listen_sockets LISTEN sockets on the port
# TYPE appserver_listen_sockets gauge
appserver_listen_sockets{port=\"3306\"} 1
appserver_listen_sockets{port=\"8080\"} 2
# HELP appserver_listen_overflows_total Connections dropped because an accept backlog was full (TcpExt ListenOverflows, whole network namespace)
# TYPE appserver_listen_overflows_total counter
appserver_listen_overflows_total 42
";
        assert_eq!(render(&two_ports()).unwrap(), expected);
    }

    #[test]
    fn render_without_overflows_omits_the_counter() {
        let snap = Snapshot {
            listen_overflows: None,
            ..two_ports()
        };
        assert!(!render(&snap).unwrap().contains("overflows"));
    }

    async fn get(cfg: BacklogConfig) -> (StatusCode, String) {
        use http_body_util::BodyExt;
        let response = metrics(State(Arc::new(cfg))).await;
        let status = response.status();
        let body = response.into_body().collect().await.unwrap().to_bytes();
        (status, String::from_utf8(body.to_vec()).unwrap())
    }

    #[tokio::test]
    async fn metrics_endpoint_reads_fresh_at_every_scrape() {
        let proc = FakeProc::new("fresh", &[("tcp", TCP), ("netstat", NETSTAT)]);
        let (status, body) = get(proc.config(Some(8080))).await;
        assert_eq!(status, StatusCode::OK);
        assert!(
            body.contains("appserver_listen_backlog{port=\"8080\"} 5\n"),
            "{body}"
        );
        let drained = TCP.replace("00000000:00000003", "00000000:00000000");
        std::fs::write(proc.0.join("net/tcp"), drained).unwrap();
        let (_, body) = get(proc.config(Some(8080))).await;
        assert!(
            body.contains("appserver_listen_backlog{port=\"8080\"} 2\n"),
            "{body}"
        );
    }

    #[tokio::test]
    async fn metrics_endpoint_read_error_is_500_with_one_line() {
        let proc = FakeProc::new("empty", &[]);
        let (status, body) = get(proc.config(None)).await;
        assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
        assert!(
            body.starts_with("reading ") && body.contains("net/tcp:"),
            "{body}"
        );
        assert_eq!(body.lines().count(), 1, "{body}");
    }
}
