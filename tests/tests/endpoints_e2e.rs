//! The metrics endpoint and the control socket of a real daemon keep
//! answering while hundreds of idle clients hold connections open, and the
//! daemon's memory stays bounded under a flood of them.
//!
//! Only loopback and the daemon's private unix socket are used.

use std::{
    io::{ErrorKind, Read as _, Write as _},
    net::{SocketAddr, TcpStream},
    os::unix::net::UnixStream,
    path::Path,
    time::Duration,
};

use netwarp::telemetry::admission::raise_fd_limit;
use netwarp_tests::{
    daemon::{Daemon, TestLabels},
    observe::{scrape, status_json},
    skip,
};

/// Idle connections held to each endpoint while scraping and reading status.
const IDLE: usize = 200;
/// Idle connections opened on top, to see memory stay bounded.
const FLOOD: usize = 1000;
/// What the daemon's resident memory may grow by under the flood: it holds
/// at most 1024 connections of about 12 KiB each, so this is generous. (An
/// unbounded daemon is caught by the shedding check, not by this.)
const RSS_GROWTH_LIMIT_KIB: u64 = 96 * 1024;
/// How long an idle connection may live: the daemon's header timeout (5 s)
/// with plenty of slack.
const IDLE_LIFETIME: Duration = Duration::from_secs(30);

/// The resident memory of `pid`, in KiB.
fn rss_kib(pid: u32) -> u64 {
    let status =
        std::fs::read_to_string(format!("/proc/{pid}/status")).expect("the daemon's status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS in /proc/PID/status")
}

/// A client that connects and sends half a request line, then nothing.
fn idle_http(address: SocketAddr) -> TcpStream {
    let mut stream = TcpStream::connect_timeout(&address, Duration::from_secs(5)).expect("connect");
    stream.write_all(b"GET /metr").expect("half a request line");
    stream
}

/// A client of the control socket that sends a few bytes and never reads.
fn idle_control(socket: &Path) -> UnixStream {
    let mut stream = UnixStream::connect(socket).expect("connect to the control socket");
    stream
        .set_write_timeout(Some(Duration::from_secs(5)))
        .expect("a write timeout");
    // The daemon may already have answered and closed: ignore the result.
    let _ = stream.write_all(b"{\"hal");
    stream
}

/// A scrape succeeds: HTTP 200 with the build info in the body (the
/// scrape itself times out, so a stuck endpoint fails rather than hangs).
fn assert_scrapes(address: SocketAddr, when: &str) {
    match scrape(address) {
        Ok((_, body)) => assert!(
            body.contains("netwarp_build_info"),
            "{when}: a scrape without netwarp_build_info:\n{body}"
        ),
        Err(e) => panic!("{when}: the scrape failed: {e:#}"),
    }
}

/// `netwarp status --json` succeeds (it has a read timeout of its own).
fn assert_status(daemon: &Daemon, when: &str) {
    match status_json(daemon) {
        Ok(status) => assert!(
            status.get("format_version").is_some(),
            "{when}: status without format_version: {status}"
        ),
        Err(e) => panic!("{when}: reading status failed: {e:#}"),
    }
}

/// Whether the daemon closed `stream` (end of file or reset) before
/// `within`, rather than leaving it open.
fn closed_by_daemon(stream: &mut TcpStream, within: Duration) -> bool {
    stream
        .set_read_timeout(Some(within))
        .expect("a read timeout");
    let mut buf = [0u8; 512];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return true,
            // An error response to the half request, then the close.
            Ok(_) => continue,
            Err(e) if e.kind() == ErrorKind::ConnectionReset => return true,
            Err(_) => return false,
        }
    }
}

#[test]
fn endpoints_answer_beside_idle_connections() {
    let test = "endpoints_answer_beside_idle_connections";
    if let Some(reason) = skip::missing_docker() {
        skip::record(test, &reason);
        return;
    }
    // The held connections, plus the daemon's and this process's own.
    let needed = (2 * IDLE + FLOOD + 200) as u64;
    let fd_limit = raise_fd_limit(u64::MAX);
    if fd_limit < needed {
        skip::record(
            test,
            &format!("needs a hard limit of {needed} open files (ulimit -Hn); it is {fd_limit}"),
        );
        return;
    }

    let labels = TestLabels::unique();
    let daemon = Daemon::start(&labels, "routes", "").expect("daemon");
    let address = daemon
        .metrics_address(Duration::from_secs(10))
        .expect("metrics address");
    daemon
        .wait_for_log("control socket listening", Duration::from_secs(10))
        .expect("the control socket");
    let pid = daemon.pid().expect("a running daemon");
    assert_scrapes(address, "before any idle client");
    assert_status(&daemon, "before any idle client");
    let rss_before = rss_kib(pid);

    let mut idle: Vec<TcpStream> = (0..IDLE).map(|_| idle_http(address)).collect();
    let held_control: Vec<UnixStream> = (0..IDLE)
        .map(|_| idle_control(daemon.control_socket()))
        .collect();
    assert_scrapes(address, &format!("beside {IDLE} idle metrics connections"));
    assert_status(&daemon, &format!("beside {IDLE} idle control connections"));

    idle.extend((0..FLOOD).map(|_| idle_http(address)));
    assert_scrapes(
        address,
        &format!("beside {} idle metrics connections", IDLE + FLOOD),
    );
    assert_status(&daemon, "after the flood");
    let rss_flooded = rss_kib(pid);
    let growth = rss_flooded.saturating_sub(rss_before);
    eprintln!(
        "daemon VmRSS: {rss_before} KiB before, {rss_flooded} KiB with {} idle connections \
         opened (+{growth} KiB)",
        IDLE + FLOOD
    );
    assert!(
        growth < RSS_GROWTH_LIMIT_KIB,
        "the daemon's memory grew by {growth} KiB under {} idle connections",
        IDLE + FLOOD
    );

    // The bound holds: the daemon shed the oldest idle connections to
    // make room, and closes the rest itself after the header timeout.
    let oldest = idle.first_mut().expect("held connections");
    assert!(
        closed_by_daemon(oldest, Duration::from_secs(1)),
        "the oldest idle connection is still open beside {} newer ones",
        IDLE + FLOOD - 1
    );
    let newest = idle.last_mut().expect("held connections");
    assert!(
        closed_by_daemon(newest, IDLE_LIFETIME),
        "an idle connection outlived the header timeout"
    );
    drop(idle);
    drop(held_control);
    assert_scrapes(address, "after the idle clients left");
}
