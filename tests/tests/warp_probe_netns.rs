//! netwarp's warp probe in a real kernel: a TCP connect made from inside a
//! namespace (a warp's, here a test namespace with a process in it) to an
//! address only that namespace has, answered, refused, and dropped.
//!
//! Network safety: the address (198.18.250.1, benchmarking range) exists
//! only on the test namespace's loopback device; nothing is routed
//! on the host; every probe is bounded by its timeout.

use std::{net::TcpListener, time::Duration};

use netwarp::warp_probe::{ProbeError, ProbeSpec, probe_once};
use netwarp_tests::{
    netns::{Netns, Sleeper},
    skip, skip_if,
};

const ADDRESS: &str = "198.18.250.1";
const PORT: u16 = 8443;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime")
}

#[test]
fn a_probe_connects_from_inside_the_warps_namespace() {
    let test = "a_probe_connects_from_inside_the_warps_namespace";
    skip_if!(test, skip::missing_root());
    let netns = Netns::create("nwp").expect("a test namespace");
    // What the tunnel would reach, on the namespace's loopback device (as
    // the VPN test world's remotes are).
    netns
        .exec(&["ip", "addr", "add", &format!("{ADDRESS}/32"), "dev", "lo"])
        .expect("the remote address");
    let warp = Sleeper::start(&netns).expect("a process in the namespace");
    let spec: ProbeSpec = format!("tcp:{ADDRESS}:{PORT}").parse().unwrap();
    let timeout = Duration::from_millis(500);
    let runtime = runtime();
    let probe = || runtime.block_on(probe_once(warp.pid(), spec.clone(), timeout));

    // Served: the address exists only in the namespace, so an answer
    // proves the connect was made from there.
    let listener = netns
        .run_inside(|| TcpListener::bind((ADDRESS, PORT)))
        .expect("inside the namespace")
        .expect("a listener");
    let rtt = probe().expect("the served address answers");
    assert!(rtt < timeout, "{rtt:?}");

    // Not served: refused at once.
    drop(listener);
    match probe() {
        Err(ProbeError::Io { source, .. }) => {
            assert_eq!(
                source.kind(),
                std::io::ErrorKind::ConnectionRefused,
                "{source}"
            )
        }
        other => panic!("a closed port must refuse: {other:?}"),
    }

    // Dropped (a tunnel that swallows everything): the timeout.
    netns
        .exec(&["iptables", "-A", "OUTPUT", "-d", ADDRESS, "-j", "DROP"])
        .expect("a dropping tunnel");
    match probe() {
        Err(ProbeError::Timeout { .. }) => {}
        other => panic!("a dropped probe must time out: {other:?}"),
    }

    // Bound to the tunnel's interface: the probe leaves by it or not at
    // all. Through lo (where the address is) it is dropped like the rest;
    // through an interface that does not exist (a tunnel that is down) it
    // fails at once, without a packet sent anywhere else.
    let through = |interface: &str| -> ProbeSpec {
        format!("tcp:{ADDRESS}:{PORT}@{interface}").parse().unwrap()
    };
    match runtime.block_on(probe_once(warp.pid(), through("lo"), timeout)) {
        Err(ProbeError::Timeout { .. }) => {}
        other => panic!("a probe through lo must meet the same drop: {other:?}"),
    }
    match runtime.block_on(probe_once(warp.pid(), through("wg-missing"), timeout)) {
        Err(ProbeError::Io { source, .. }) => {
            assert!(
                source.to_string().contains("no interface wg-missing"),
                "{source}"
            )
        }
        other => panic!("a probe through a missing interface must fail: {other:?}"),
    }
    // An interface the host has and the warp's namespace has not is
    // missing too: the name means the warp's interface.
    let host_only = std::fs::read_dir("/sys/class/net")
        .expect("the host's interfaces")
        .filter_map(|entry| entry.ok()?.file_name().into_string().ok())
        .find(|name| name != "lo")
        .expect("a host interface besides lo");
    match runtime.block_on(probe_once(warp.pid(), through(&host_only), timeout)) {
        Err(ProbeError::Io { source, .. }) => assert!(
            source
                .to_string()
                .contains(&format!("no interface {host_only}")),
            "{source}"
        ),
        other => panic!("{host_only} is the host's, not the warp's: {other:?}"),
    }

    // A pid that is gone: the namespace cannot be entered, said plainly.
    let gone = warp.pid();
    drop(warp);
    let error = runtime
        .block_on(probe_once(gone, spec.clone(), timeout))
        .expect_err("no namespace");
    assert!(
        error
            .to_string()
            .contains("cannot enter the network namespace"),
        "{error}"
    );
}
