//! `backlog-exporter`: the accept backlog of the app's listening socket, read from procfs.
//!
//! Containers of a pod share a network namespace, so a sidecar sees the app's sockets in
//! `/proc/net/tcp{,6}`. For a LISTEN socket the `rx_queue` column is `sk_ack_backlog`: connections
//! the kernel has completed that no worker has accept()ed yet, i.e. requests queued for lack of a
//! free worker. The app needs no instrumentation. See `docs/backlog-exporter.md`.
//!
//! Parsers are pure; [`snapshot`] does the file I/O; [`serve`] is the HTTP shell.

use std::collections::BTreeMap;
use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, NoLabelSet, prometheus_text};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

/// `st` of a socket in TCP_LISTEN (include/net/tcp_states.h).
const TCP_LISTEN: u8 = 0x0A;

/// One LISTEN row of `/proc/net/tcp` or `/proc/net/tcp6`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Listener {
    pub port: u16,
    /// `rx_queue`: completed connections waiting for accept().
    pub backlog: u64,
    /// `tx_queue` as printed. For LISTEN sockets Linux prints `write_seq - snd_una` here, which is
    /// 0, not the backlog limit: `sk_max_ack_backlog` is only exposed through sock_diag (`ss -lnt`).
    pub tx_queue: u64,
    /// From `tcp6` (this includes IPv4-mapped listeners of dual-stack sockets).
    pub ipv6: bool,
}

/// A line of a procfs file that is not in the kernel's format. The reader adds the file name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {reason}: {text:?}")]
pub struct ParseError {
    /// 1-based, counting the header.
    pub line: usize,
    pub reason: &'static str,
    pub text: String,
}

#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("reading {}: {source}", path.display())]
    Io { path: PathBuf, source: io::Error },
    #[error("parsing {}: {source}", path.display())]
    Parse { path: PathBuf, source: ParseError },
}

fn malformed(line: usize, reason: &'static str, text: &str) -> ParseError {
    ParseError {
        line,
        reason,
        text: text.to_string(),
    }
}

/// Parses hex as the kernel prints it; rejects the sign `from_str_radix` would accept.
fn hex(s: &str) -> Option<u64> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    u64::from_str_radix(s, 16).ok()
}

/// The fields of one socket row that matter here.
struct Row {
    port: u16,
    ipv6: bool,
    state: u8,
    tx_queue: u64,
    rx_queue: u64,
}

/// `   0: 0100007F:1F90 00000000:0000 0A 00000000:00000003 ...`
fn parse_row(text: &str) -> Result<Row, &'static str> {
    let fields: Vec<&str> = text.split_whitespace().collect();
    let [slot, local, _remote, state, queues, ..] = fields.as_slice() else {
        return Err("fewer than 5 fields");
    };
    if slot
        .strip_suffix(':')
        .and_then(|n| n.parse::<u64>().ok())
        .is_none()
    {
        return Err("slot is not `N:`");
    }
    let (addr, port) = local.rsplit_once(':').ok_or("local_address has no `:`")?;
    let ipv6 = match addr.len() {
        8 => false,
        32 => true,
        _ => return Err("local_address is neither 8 nor 32 hex digits"),
    };
    if !addr.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err("local_address is not hex");
    }
    let port = hex(port)
        .and_then(|p| u16::try_from(p).ok())
        .ok_or("port is not a hex u16")?;
    let state = hex(state)
        .and_then(|s| u8::try_from(s).ok())
        .ok_or("st is not a hex byte")?;
    let (tx, rx) = queues.split_once(':').ok_or("queues are not tx:rx")?;
    let tx_queue = hex(tx).ok_or("tx_queue is not hex")?;
    let rx_queue = hex(rx).ok_or("rx_queue is not hex")?;
    Ok(Row {
        port,
        ipv6,
        state,
        tx_queue,
        rx_queue,
    })
}

/// LISTEN sockets of a `/proc/net/tcp` or `/proc/net/tcp6` text. Every row is validated, not
/// only LISTEN ones, so a format change fails loudly instead of reading as an empty backlog.
pub fn parse_listeners(text: &str) -> Result<Vec<Listener>, ParseError> {
    let mut listeners = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let trimmed = line.trim();
        if trimmed.is_empty() || trimmed.starts_with("sl ") {
            continue;
        }
        let row = parse_row(trimmed).map_err(|reason| malformed(i + 1, reason, trimmed))?;
        if row.state == TCP_LISTEN {
            listeners.push(Listener {
                port: row.port,
                backlog: row.rx_queue,
                tx_queue: row.tx_queue,
                ipv6: row.ipv6,
            });
        }
    }
    Ok(listeners)
}

/// `ListenOverflows` from `/proc/net/netstat`: a `TcpExt:` line of names followed by a `TcpExt:`
/// line of values. `None` when the kernel does not report it.
pub fn parse_listen_overflows(netstat: &str) -> Result<Option<u64>, ParseError> {
    let mut lines = netstat.lines().enumerate();
    let Some((names_at, names)) = lines.find(|(_, l)| l.starts_with("TcpExt:")) else {
        return Ok(None);
    };
    let (values_at, values) = lines
        .next()
        .filter(|(_, l)| l.starts_with("TcpExt:"))
        .ok_or_else(|| malformed(names_at + 1, "TcpExt names without a values line", names))?;
    let names: Vec<&str> = names.split_whitespace().skip(1).collect();
    let values: Vec<&str> = values.split_whitespace().skip(1).collect();
    if names.len() != values.len() {
        return Err(malformed(
            values_at + 1,
            "TcpExt has a different number of names and values",
            values.join(" ").as_str(),
        ));
    }
    let Some(at) = names.iter().position(|n| *n == "ListenOverflows") else {
        return Ok(None);
    };
    values[at]
        .parse()
        .map(Some)
        .map_err(|_| malformed(values_at + 1, "ListenOverflows is not a number", values[at]))
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

/// Per port: summed over sockets, since SO_REUSEPORT and dual binds give one row per socket.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PortStats {
    pub backlog: u64,
    pub sockets: u64,
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

/// Groups listeners by port. The watched port is always present, so a scrape before the app
/// listens shows 0 sockets rather than no series.
pub fn summarize(listeners: &[Listener], watched: Option<u16>) -> BTreeMap<u16, PortStats> {
    let mut ports: BTreeMap<u16, PortStats> = watched
        .map(|p| (p, PortStats::default()))
        .into_iter()
        .collect();
    for l in listeners {
        let stats = ports.entry(l.port).or_default();
        stats.backlog += l.backlog;
        stats.sockets += 1;
    }
    ports
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

    // Kernel format (net/ipv4/tcp_ipv4.c, net/ipv6/tcp_ipv6.c), trailing padding included.
    // Port 0x1F90 = 8080 (the app), 0x0CEA = 3306 (something else).
    const TCP: &str = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode                                                     
   0: 00000000:1F90 00000000:0000 0A 00000000:00000003 00:00000000 00000000  1000        0 41321 1 0000000000000000 100 0 0 10 0                     
   1: 00000000:1F90 00000000:0000 0A 00000000:00000002 00:00000000 00000000  1000        0 41322 1 0000000000000000 100 0 0 10 0                     
   2: 0100007F:0CEA 00000000:0000 0A 00000000:00000007 00:00000000 00000000   999        0 1234 1 0000000000000000 100 0 0 10 0                      
   3: 0100007F:1F90 0100007F:D2F0 01 00000000:00000000 00:00000000 00000000  1000        0 41400 1 0000000000000000 20 4 30 10 -1                    
   4: 0100007F:1F90 0100007F:D2F2 01 00000010:00000020 01:00000014 00000000  1000        0 41401 1 0000000000000000 20 4 30 10 -1                    
";

    // Row 1 listens on ::ffff:127.0.0.1 (IPv4-mapped), which is listed in tcp6 only.
    // Row 2 is an established connection.
    const TCP6: &str = "  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000000000000000000000000000:1F90 00000000000000000000000000000000:0000 0A 00000000:0000000C 00:00000000 00000000  1000        0 51000 1 0000000000000000 100 0 0 10 0
   1: 0000000000000000FFFF00000100007F:1F90 00000000000000000000000000000000:0000 0A 00000000:00000001 00:00000000 00000000  1000        0 51001 1 0000000000000000 100 0 0 10 0
   2: 00000000000000000000000001000000:1F90 00000000000000000000000001000000:C350 01 00000000:00000000 00:00000000 00000000  1000        0 51002 1 0000000000000000 20 4 30 10 -1
";

    const NETSTAT: &str = "TcpExt: SyncookiesSent SyncookiesRecv ListenOverflows ListenDrops
TcpExt: 0 0 42 45
IpExt: InNoRoutes InTruncatedPkts
IpExt: 0 0
";

    fn listener(port: u16, backlog: u64, ipv6: bool) -> Listener {
        Listener {
            port,
            backlog,
            tx_queue: 0,
            ipv6,
        }
    }

    #[test]
    fn ipv4_listeners_only_listen_rows_with_rx_queue_as_backlog() {
        assert_eq!(
            parse_listeners(TCP).unwrap(),
            vec![
                listener(8080, 3, false),
                listener(8080, 2, false),
                listener(3306, 7, false),
            ]
        );
    }

    #[test]
    fn ipv6_listeners_include_ipv4_mapped_addresses() {
        assert_eq!(
            parse_listeners(TCP6).unwrap(),
            vec![listener(8080, 12, true), listener(8080, 1, true)]
        );
    }

    #[test]
    fn header_only_has_no_listeners() {
        let header = TCP.lines().next().unwrap();
        assert_eq!(parse_listeners(header).unwrap(), vec![]);
    }

    #[test]
    fn tx_queue_is_parsed_as_printed() {
        let row = "   0: 00000000:1F90 00000000:0000 0A 000000FF:00000001 00:00000000 00000000 0 0 1 1 0 100 0 0 10 0";
        assert_eq!(parse_listeners(row).unwrap()[0].tx_queue, 255);
    }

    fn error_of(row: &str) -> ParseError {
        let text = format!("{}\n{row}\n", TCP.lines().next().unwrap());
        parse_listeners(&text).unwrap_err()
    }

    #[test]
    fn malformed_rows_are_errors_with_line_and_reason() {
        let cases = [
            (
                "   0: 00000000:1F90 00000000:0000 0A",
                "fewer than 5 fields",
            ),
            (
                "   x 00000000:1F90 00000000:0000 0A 00000000:00000000",
                "slot is not `N:`",
            ),
            (
                "   0: 000000:1F90 00000000:0000 0A 00000000:00000000",
                "local_address is neither 8 nor 32 hex digits",
            ),
            (
                "   0: 0000000G:1F90 00000000:0000 0A 00000000:00000000",
                "local_address is not hex",
            ),
            (
                "   0: 00000000 00000000:0000 0A 00000000:00000000",
                "local_address has no `:`",
            ),
            (
                "   0: 00000000:+F90 00000000:0000 0A 00000000:00000000",
                "port is not a hex u16",
            ),
            (
                "   0: 00000000:1F90 00000000:0000 0A 00000000-00000000",
                "queues are not tx:rx",
            ),
            (
                "   0: 00000000:1F90 00000000:0000 0A 00000000:zz",
                "rx_queue is not hex",
            ),
        ];
        for (row, reason) in cases {
            let e = error_of(row);
            assert_eq!((e.line, e.reason), (2, reason), "{row}");
            assert_eq!(e.text, row.trim());
        }
    }

    #[test]
    fn listen_overflows_from_the_tcpext_pair() {
        assert_eq!(parse_listen_overflows(NETSTAT).unwrap(), Some(42));
    }

    #[test]
    fn listen_overflows_absent_is_none() {
        assert_eq!(
            parse_listen_overflows("IpExt: A\nIpExt: 1\n").unwrap(),
            None
        );
        assert_eq!(
            parse_listen_overflows("TcpExt: A B\nTcpExt: 1 2\n").unwrap(),
            None
        );
    }

    #[test]
    fn listen_overflows_malformed_names_the_line() {
        let e =
            parse_listen_overflows("IpExt: A\nIpExt: 1\nTcpExt: ListenOverflows\n").unwrap_err();
        assert_eq!(
            (e.line, e.reason),
            (3, "TcpExt names without a values line")
        );
        let e = parse_listen_overflows("TcpExt: A ListenOverflows\nTcpExt: 1\n").unwrap_err();
        assert_eq!(
            (e.line, e.reason),
            (2, "TcpExt has a different number of names and values")
        );
        let e = parse_listen_overflows("TcpExt: ListenOverflows\nTcpExt: -1\n").unwrap_err();
        assert_eq!((e.line, e.reason), (2, "ListenOverflows is not a number"));
    }

    #[test]
    fn summarize_sums_sockets_per_port_and_keeps_the_watched_port() {
        let all = [
            listener(8080, 3, false),
            listener(8080, 12, true),
            listener(3306, 7, false),
        ];
        let ports = summarize(&all, None);
        assert_eq!(
            ports[&8080],
            PortStats {
                backlog: 15,
                sockets: 2
            }
        );
        assert_eq!(
            ports[&3306],
            PortStats {
                backlog: 7,
                sockets: 1
            }
        );
        let watched = summarize(&[], Some(9000));
        assert_eq!(watched[&9000], PortStats::default());
    }

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
