//! The accept backlog of the app's listening socket, parsed from procfs text (pure; the
//! operator crate's `backlog_exporter` reads the files and serves the metrics).
//!
//! Containers of a pod share a network namespace, so a sidecar sees the app's sockets in
//! `/proc/net/tcp{,6}`. For a LISTEN socket the `rx_queue` column is `sk_ack_backlog`: connections
//! the kernel has completed that no worker has accept()ed yet, i.e. requests queued for lack of a
//! free worker. The app needs no instrumentation. See `docs/backlog-exporter.md`.
//!
//! The parsers take the files' text and never touch the file system.

use std::collections::BTreeMap;

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

/// Per port: summed over sockets, since SO_REUSEPORT and dual binds give one row per socket.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PortStats {
    pub backlog: u64,
    pub sockets: u64,
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

#[cfg(test)]
mod tests {
    use super::*;

    // Kernel format (net/ipv4/tcp_ipv4.c, net/ipv6/tcp_ipv6.c), trailing padding included.
    // Port 0x1F90 = 8080 (the app), 0x0CEA = 3306 (something else).
    const TCP: &str = include_str!("../testdata/proc/net/tcp");

    // Row 1 listens on ::ffff:127.0.0.1 (IPv4-mapped), which is listed in tcp6 only.
    // Row 2 is an established connection.
    const TCP6: &str = include_str!("../testdata/proc/net/tcp6");

    const NETSTAT: &str = include_str!("../testdata/proc/net/netstat");

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
}
