//! Random frames through netwarp's real tc programs in the running kernel
//! (BPF_PROG_TEST_RUN): the from-container program under a steering policy
//! (with a `direct` exclusion and `block` rules by port: rows whose
//! selectors differ in action) and a blocking one, the bridge guard with a
//! `direct` carve-out, one allowed source address and one allowed MAC, and
//! the warp program with the steered target's addresses known on its veth,
//! and the XDP from-container program under the steering policy. Any
//! verdict other than pass (TC_ACT_UNSPEC -1, or TC_ACT_OK 0), drop
//! (TC_ACT_SHOT 2) or redirect (TC_ACT_REDIRECT 7) is a crash; of the XDP
//! program, other than drop (1), pass (2) or redirect (4).
//! Needs root (bpf(2)); `cargo xtask fuzz` also compares the kernel log
//! for new WARN/BUG lines before and after.
#![no_main]

use std::sync::{Mutex, OnceLock};

use libfuzzer_sys::fuzz_target;
use netwarp::{
    dataplane::ebpf::{EbpfDataplane, compile::compile, warp_peer_key},
    model::{Verb, parse_policy, parse_rules},
    plan::{Action, Entry, prune_direct},
};
use netwarp_common::{GUARD_ALLOW_IPV4, GUARD_ALLOW_MAC, GuardAllowKey};

const STEERED_IFINDEX: u32 = 1;
const BLOCKED_IFINDEX: u32 = 2;
const GUARDED_IFINDEX: u32 = 4;
const ALLOWED: [i32; 4] = [-1, 0, 2, 7];
const XDP_ALLOWED: [u32; 3] = [1, 2, 4];

fn dataplane() -> &'static Mutex<EbpfDataplane> {
    static DATAPLANE: OnceLock<Mutex<EbpfDataplane>> = OnceLock::new();
    DATAPLANE.get_or_init(|| {
        let mut dataplane = EbpfDataplane::load().expect("loading the programs (needs root)");
        let rules = parse_rules(
            "203.0.113.0/24,tcp:443,udp:5000-5100,icmp,198.51.100.0/24,2001:db8::/32,tcp:80",
        )
        .expect("rules");
        for (ifindex, action) in [
            (
                STEERED_IFINDEX,
                Action::Via("172.20.0.2".parse().expect("an address")),
            ),
            (BLOCKED_IFINDEX, Action::Block),
        ] {
            let mut entries = Entry::all(&rules, action);
            if matches!(action, Action::Via(_)) {
                entries.extend(exceptions());
                prune_direct(&mut entries);
            }
            let rows = compile(&entries, matches!(action, Action::Via(_))).expect("compile");
            dataplane
                .set_policy(ifindex, 1, [2, 0x42, 0xac, 0x14, 0, 2], &rows)
                .expect("writing the policy");
        }
        let mut guarded = Entry::all(&rules, Action::Block);
        guarded.extend(
            exceptions()
                .into_iter()
                .filter(|e| e.action == Action::Direct),
        );
        let rows = compile(&guarded, false).expect("compile");
        let allowed = |kind, bytes: &[u8]| {
            let mut addr = [0; 16];
            addr[..bytes.len()].copy_from_slice(bytes);
            GuardAllowKey {
                bridge_ifindex: GUARDED_IFINDEX,
                kind,
                addr,
            }
        };
        let allowed = [
            allowed(GUARD_ALLOW_IPV4, &[172, 20, 0, 3]),
            allowed(GUARD_ALLOW_MAC, &[2, 0x42, 0xac, 0x14, 0, 3]),
        ];
        dataplane
            .set_guard(GUARDED_IFINDEX, &rows, &allowed.into_iter().collect())
            .expect("writing the guard");
        // The steered target's warp veth is ifindex 1 (its policy's).
        let peers: Vec<_> = ["172.20.0.3", "fd00:20::3"]
            .iter()
            .map(|a| {
                (
                    warp_peer_key(1, a.parse().expect("an address")),
                    STEERED_IFINDEX,
                )
            })
            .collect();
        dataplane.put_warp_peers(&peers).expect("writing the peers");
        Mutex::new(dataplane)
    })
}

/// The steered target's exceptions: an excluded prefix, and block rules
/// by port inside its steered prefixes.
fn exceptions() -> Vec<Entry> {
    let policy = parse_policy(
        "direct 203.0.113.128/25; block 198.51.100.0/24,udp:53; block 2001:db8::/32,tcp:25-30",
    )
    .expect("policy");
    (policy.rules.into_iter())
        .map(|rule| Entry {
            rule,
            action: match rule.verb {
                Verb::Direct => Action::Direct,
                _ => Action::Deny,
            },
        })
        .collect()
}

fuzz_target!(|data: &[u8]| {
    // The first byte picks the policy (and an interface without one); the
    // rest is the frame. The kernel refuses frames below an Ethernet
    // header or above a page, which is not the program's business.
    let Some((&selector, frame)) = data.split_first() else {
        return;
    };
    if frame.len() < 14 || frame.len() > 3000 {
        return;
    }
    // BPF_PROG_TEST_RUN itself refuses (EINVAL) an IPv4 or IPv6 frame too
    // short for its network header, before the program runs.
    let network_header = match u16::from_be_bytes([frame[12], frame[13]]) {
        0x0800 => 20,
        0x86dd => 40,
        _ => 0,
    };
    if frame.len() < 14 + network_header {
        return;
    }
    let ifindex = match selector % 4 {
        0 => STEERED_IFINDEX,
        1 => BLOCKED_IFINDEX,
        2 => GUARDED_IFINDEX,
        _ => 3,
    };
    let mut dataplane = dataplane().lock().expect("not poisoned");
    // The XDP program's test run needs a real interface: the steered
    // policy's is loopback's.
    if selector & 0xe0 == 0x20 {
        match dataplane.test_run_xdp_from_container(STEERED_IFINDEX, frame) {
            Ok((verdict, _)) => assert!(
                XDP_ALLOWED.contains(&verdict),
                "XDP verdict {verdict} for frame {frame:02x?}"
            ),
            Err(e) => panic!(
                "BPF_PROG_TEST_RUN of the XDP program failed on a {}-byte frame: {e}",
                frame.len()
            ),
        }
        return;
    }
    let run = match (selector & 0x80 != 0, selector & 0x40 != 0) {
        (true, _) => dataplane.test_run_bridge_guard(ifindex, frame),
        (false, true) => dataplane.test_run_from_warp(ifindex, frame),
        (false, false) => dataplane.test_run_from_container(ifindex, frame),
    };
    match run {
        Ok((verdict, _)) => assert!(
            ALLOWED.contains(&verdict),
            "verdict {verdict} on ifindex {ifindex} for frame {frame:02x?}"
        ),
        Err(e) => panic!(
            "BPF_PROG_TEST_RUN failed on a {}-byte frame: {e}",
            frame.len()
        ),
    }
});
