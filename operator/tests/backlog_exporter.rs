//! backlog-exporter against real sockets: listeners that never accept(), real client connections,
//! and the real /proc of this network namespace. Ports are ephemeral, so tests run in parallel.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::time::{Duration, Instant};

use appserver_core::backlog::PortStats;
use appserver_operator::backlog_exporter::{self as backlog, BacklogConfig};

/// Connections opened and left unaccepted.
const K: u64 = 5;

fn real_proc(port: u16) -> BacklogConfig {
    BacklogConfig {
        proc_root: "/proc".into(),
        listen_port: Some(port),
    }
}

fn port_stats(port: u16) -> PortStats {
    backlog::snapshot(&real_proc(port)).unwrap().ports[&port]
}

/// connect() returns on the SYN-ACK; the listener counts the connection when it processes the
/// final ACK, which on loopback can lag by a softirq. Waits for `want`, returns what it saw last.
fn wait_for_backlog(port: u16, want: u64) -> PortStats {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let stats = port_stats(port);
        if stats.backlog == want || Instant::now() > deadline {
            return stats;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn connect_k(addr: SocketAddr) -> Vec<TcpStream> {
    (0..K).map(|_| TcpStream::connect(addr).unwrap()).collect()
}

#[test]
fn ipv4_backlog_is_the_unaccepted_connections_and_drains_on_accept() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let port = addr.port();
    assert_eq!(
        port_stats(port),
        PortStats {
            backlog: 0,
            sockets: 1
        }
    );

    let _clients = connect_k(addr);
    assert_eq!(
        wait_for_backlog(port, K),
        PortStats {
            backlog: K,
            sockets: 1
        }
    );
    let rows = backlog::read_listeners(Path::new("/proc"), Some(port)).unwrap();
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(
        (rows[0].port, rows[0].backlog, rows[0].ipv6),
        (port, K, false)
    );
    // Not the limit: Linux prints write_seq - snd_una as a listener's tx_queue (see the docs).
    assert_eq!(rows[0].tx_queue, 0);

    let _accepted: Vec<_> = (0..K).map(|_| listener.accept().unwrap()).collect();
    // accept() dequeues synchronously, so no wait here.
    assert_eq!(
        port_stats(port),
        PortStats {
            backlog: 0,
            sockets: 1
        }
    );
}

#[test]
fn ipv6_backlog_is_read_from_tcp6() {
    // Skipped only where ::1 cannot be bound (IPv6 disabled in this network namespace).
    let Ok(listener) = TcpListener::bind("[::1]:0") else {
        eprintln!("skipping: cannot bind [::1]:0, IPv6 is disabled here");
        return;
    };
    let addr = listener.local_addr().unwrap();
    let _clients = connect_k(addr);
    assert_eq!(
        wait_for_backlog(addr.port(), K),
        PortStats {
            backlog: K,
            sockets: 1
        }
    );
    let rows = backlog::read_listeners(Path::new("/proc"), Some(addr.port())).unwrap();
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert!(rows[0].ipv6);
}

/// A GET over a fresh connection; the status code and the body. Blocking std I/O (this crate's
/// tokio has no io-util), so it runs off the runtime's threads.
async fn get(addr: SocketAddr, path: &'static str) -> (u16, String) {
    tokio::task::spawn_blocking(move || {
        let mut stream = TcpStream::connect(addr).unwrap();
        let request = format!("GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).unwrap();
        let (head, body) = response.split_once("\r\n\r\n").unwrap();
        let status = head.split_whitespace().nth(1).unwrap().parse().unwrap();
        (status, body.to_string())
    })
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exporter_serves_the_live_backlog_at_every_scrape() {
    let app = TcpListener::bind("127.0.0.1:0").unwrap();
    let app_addr = app.local_addr().unwrap();
    let port = app_addr.port();
    let _clients = connect_k(app_addr);
    assert_eq!(wait_for_backlog(port, K).backlog, K);

    let http = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let exporter = http.local_addr().unwrap();
    tokio::spawn(backlog::serve_on(http, real_proc(port)));

    assert_eq!(get(exporter, "/healthz").await, (200, "ok".to_string()));
    let (status, body) = get(exporter, "/metrics").await;
    assert_eq!(status, 200, "{body}");
    assert!(
        body.contains(&format!(
            "\nappserver_listen_backlog{{port=\"{port}\"}} {K}\n"
        )),
        "{body}"
    );
    assert!(
        body.contains(&format!(
            "\nappserver_listen_sockets{{port=\"{port}\"}} 1\n"
        )),
        "{body}"
    );
    assert!(
        body.contains("\n# TYPE appserver_listen_overflows_total counter\n"),
        "{body}"
    );
    // The filter holds: the exporter's own listening socket is not reported.
    assert!(
        !body.contains(&format!("port=\"{}\"", exporter.port())),
        "{body}"
    );

    let _accepted: Vec<_> = (0..K).map(|_| app.accept().unwrap()).collect();
    let (_, body) = get(exporter, "/metrics").await;
    assert!(
        body.contains(&format!(
            "\nappserver_listen_backlog{{port=\"{port}\"}} 0\n"
        )),
        "{body}"
    );
}

fn listen_overflows() -> u64 {
    backlog::read_listen_overflows(Path::new("/proc"))
        .unwrap()
        .expect("this kernel reports TcpExt ListenOverflows")
}

#[tokio::test]
async fn full_backlog_drops_connections_and_counts_listen_overflows() {
    // std cannot set the backlog; tokio's TcpSocket can, with no extra dependency.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let listener = socket.listen(1).unwrap();
    let addr = listener.local_addr().unwrap();
    let before = listen_overflows();

    // The SYN that finds the queue full is dropped and counted; the client would retry after the
    // 1 s initial RTO, so a 200 ms timeout sends exactly one SYN per failed attempt.
    let attempts: Vec<_> = (0..6)
        .map(|_| TcpStream::connect_timeout(&addr, Duration::from_millis(200)))
        .collect();
    let failed = attempts.iter().filter(|a| a.is_err()).count() as u64;
    assert!(failed >= 1, "a backlog of 1 took 6 connections");

    // The counter is netns-wide and other processes may add to it, so only a lower bound holds.
    let after = listen_overflows();
    assert!(
        after >= before + failed,
        "ListenOverflows {before} -> {after}, {failed} dropped"
    );
    // Linux queues one more than the backlog (full means ack_backlog > max_ack_backlog).
    assert_eq!(port_stats(addr.port()).backlog, 2);
}
