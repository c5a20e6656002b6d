//! The steering program on crafted packets, through BPF_PROG_TEST_RUN: the
//! real program in the real kernel, with policies written by the real
//! dataplane code, but no interfaces or containers.

use netwarp::{
    dataplane::ebpf::{EbpfDataplane, compile::compile, warp_peer_key},
    model::parse_rules,
    plan::{Action, Entry},
};
use netwarp_common::{GUARD_ALLOW_IPV4, GUARD_ALLOW_IPV6, GUARD_ALLOW_MAC, GuardAllowKey};
use netwarp_tests::{skip, skip_if};

/// netwarp passes what it leaves alone with TC_ACT_UNSPEC (TCX_NEXT).
const PASS: i32 = -1;
const TC_ACT_SHOT: i32 = 2;
const TC_ACT_REDIRECT: i32 = 7;

/// Loopback always exists; the program only uses the ifindex as a key.
const TARGET_IFINDEX: u32 = 1;
const WARP_IFINDEX: u32 = 1;
const WARP_MAC: [u8; 6] = [0x02, 0x42, 0xac, 0x14, 0x00, 0x02];
const SRC_MAC: [u8; 6] = [0x02, 0x42, 0xac, 0x14, 0x00, 0x03];
const GATEWAY_MAC: [u8; 6] = [0x02, 0x42, 0x00, 0x00, 0x00, 0x01];

const TCP: u8 = 6;
const UDP: u8 = 17;
const ICMP: u8 = 1;
const ICMPV6: u8 = 58;

fn ethernet(ethertype: u16) -> Vec<u8> {
    let mut frame = Vec::new();
    frame.extend_from_slice(&GATEWAY_MAC);
    frame.extend_from_slice(&SRC_MAC);
    frame.extend_from_slice(&ethertype.to_be_bytes());
    frame
}

/// An L4 header: ports for tcp and udp, an echo request otherwise.
fn l4(proto: u8, dport: u16) -> Vec<u8> {
    match proto {
        TCP => {
            let mut h = vec![0u8; 20];
            h[0..2].copy_from_slice(&40000u16.to_be_bytes());
            h[2..4].copy_from_slice(&dport.to_be_bytes());
            h[12] = 5 << 4;
            h
        }
        UDP => {
            let mut h = vec![0u8; 8];
            h[0..2].copy_from_slice(&40000u16.to_be_bytes());
            h[2..4].copy_from_slice(&dport.to_be_bytes());
            h[4..6].copy_from_slice(&8u16.to_be_bytes());
            h
        }
        _ => vec![8, 0, 0, 0, 0, 1, 0, 1],
    }
}

/// An IPv4 packet; `options` adds 4-byte option words, `frag_offset` is in
/// 8-byte units (non-zero: a non-first fragment, without L4 header).
fn ipv4(dst: [u8; 4], proto: u8, dport: u16, options: usize, frag_offset: u16) -> Vec<u8> {
    let payload = if frag_offset == 0 {
        l4(proto, dport)
    } else {
        vec![0u8; 16]
    };
    let header_len = 20 + options * 4;
    let mut ip = vec![0u8; header_len];
    ip[0] = 0x40 | (header_len / 4) as u8;
    ip[2..4].copy_from_slice(&((header_len + payload.len()) as u16).to_be_bytes());
    ip[6..8].copy_from_slice(&frag_offset.to_be_bytes());
    ip[8] = 64;
    ip[9] = proto;
    ip[12..16].copy_from_slice(&[172, 20, 0, 3]);
    ip[16..20].copy_from_slice(&dst);
    for word in 0..options {
        ip[20 + word * 4] = 1; // NOP options
        ip[21 + word * 4] = 1;
        ip[22 + word * 4] = 1;
        ip[23 + word * 4] = 1;
    }
    let mut frame = ethernet(0x0800);
    frame.extend(ip);
    frame.extend(payload);
    frame
}

/// An IPv6 packet, optionally behind a hop-by-hop header and a fragment
/// header (`fragment: Some(offset)` in 8-byte units).
fn ipv6(dst: [u8; 16], proto: u8, dport: u16, hop_by_hop: bool, fragment: Option<u16>) -> Vec<u8> {
    let first = fragment.is_none_or(|offset| offset == 0);
    let payload = if first {
        l4(proto, dport)
    } else {
        vec![0u8; 16]
    };
    let mut ext = Vec::new();
    let mut next = proto;
    if let Some(offset) = fragment {
        let mut frag = vec![next, 0, 0, 0, 0, 0, 0, 1];
        frag[2..4].copy_from_slice(&(offset << 3).to_be_bytes());
        ext.splice(0..0, frag);
        next = 44;
    }
    if hop_by_hop {
        // Next header, length 0 (8 bytes), then PadN.
        let hop = vec![next, 0, 1, 4, 0, 0, 0, 0];
        ext.splice(0..0, hop);
        next = 0;
    }
    let mut ip = vec![0u8; 40];
    ip[0] = 0x60;
    ip[4..6].copy_from_slice(&((ext.len() + payload.len()) as u16).to_be_bytes());
    ip[6] = next;
    ip[7] = 64;
    ip[8..24].copy_from_slice(&[0xfd, 0, 0, 0x20, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 3]);
    ip[24..40].copy_from_slice(&dst);
    let mut frame = ethernet(0x86dd);
    frame.extend(ip);
    frame.extend(ext);
    frame.extend(payload);
    frame
}

const REMOTE_V4: [u8; 4] = [203, 0, 113, 5];
const OTHER_V4: [u8; 4] = [198, 51, 100, 5];
const REMOTE_V6: [u8; 16] = [0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];

/// A dataplane with one target policy built from `rules` and `action`.
fn dataplane(rules: &str, action: Action) -> EbpfDataplane {
    with_policy(&Entry::all(&parse_rules(rules).expect("rules"), action))
}

/// A dataplane with one target policy of `entries` (blocks while the warp
/// is down).
fn with_policy(entries: &[Entry]) -> EbpfDataplane {
    let mut dataplane = EbpfDataplane::load().expect("loading the programs");
    dataplane
        .set_policy(
            TARGET_IFINDEX,
            WARP_IFINDEX,
            WARP_MAC,
            &compile(entries, false).expect("compile"),
        )
        .expect("writing the policy");
    dataplane
}

fn steer() -> Action {
    Action::Via("172.20.0.2".parse().unwrap())
}

/// A target's entries for a policy label (`via`, `direct` and `block`
/// clauses), as the planner makes them while its warp is up.
fn policy_entries(label: &str) -> Vec<Entry> {
    netwarp_tests::fastpath::policy_entries(label, steer()).expect("policy")
}

/// A dataplane with one target policy from a policy label.
fn policy_dataplane(label: &str) -> EbpfDataplane {
    with_policy(&policy_entries(label))
}

fn verdict_of(dataplane: &mut EbpfDataplane, packet: Vec<u8>) -> i32 {
    verdict(dataplane, &packet)
}

fn verdict(dataplane: &mut EbpfDataplane, packet: &[u8]) -> i32 {
    dataplane
        .test_run_from_container(TARGET_IFINDEX, packet)
        .expect("BPF_PROG_TEST_RUN")
        .0
}

macro_rules! privileged_test {
    ($name:ident, $body:block) => {
        #[test]
        fn $name() {
            skip_if!(stringify!($name), skip::missing_root());
            $body
        }
    };
}

privileged_test!(steered_packets_get_the_warp_mac_and_a_redirect, {
    let mut dp = dataplane("203.0.113.0/24,tcp:443", steer());
    let (verdict, out, _) = steered_run(&mut dp);
    assert_eq!(verdict, TC_ACT_REDIRECT);
    let counted = dp.verdicts(TARGET_IFINDEX).expect("verdicts");
    assert_eq!(
        (counted.steered_packets, counted.steered_bytes),
        (1, out.len() as u64)
    );
});

/// A steered packet's verdict and frame, and the target's peer flag.
/// Checked: a classic redirect rewrites only the destination MAC, to the
/// warp's (its end of the veth takes only frames for it); a peer redirect
/// changes nothing (the frame skips the MAC check, no write is needed).
fn steered_run(dp: &mut EbpfDataplane) -> (i32, Vec<u8>, bool) {
    let packet = ipv4(REMOTE_V4, TCP, 443, 0, 0);
    let (verdict, out) = dp
        .test_run_from_container(TARGET_IFINDEX, &packet)
        .expect("run");
    let peer = dp.peer_redirects(TARGET_IFINDEX).expect("state row");
    if peer {
        assert_eq!(out, packet, "a peer redirect rewrote the frame");
    } else {
        assert_eq!(out[0..6], WARP_MAC, "destination MAC not rewritten");
    }
    assert_eq!(
        out[6..],
        packet[6..],
        "nothing but the destination MAC may change"
    );
    (verdict, out, peer)
}

privileged_test!(
    peer_and_classic_redirects_give_the_same_verdict_and_frame,
    {
        // The test run reports a redirect without performing it: both helpers
        // answer TC_ACT_REDIRECT (steered_run checks each one's frame; the
        // peer branch also makes the packet the warp's own, which the test
        // run does not report; traffic_counters.rs sees it deliver).
        let mut dp = dataplane("203.0.113.0/24,tcp:443", steer());
        let (verdict, peer_frame, peer) = steered_run(&mut dp);
        assert_eq!((verdict, peer), (TC_ACT_REDIRECT, true), "the default");
        dp.set_peer_redirect(false).expect("peer redirects off");
        let (verdict, classic_frame, peer) = steered_run(&mut dp);
        assert_eq!((verdict, peer), (TC_ACT_REDIRECT, false));
        assert_ne!(peer_frame, classic_frame, "only the classic one rewrites");
        dp.set_peer_redirect(true).expect("peer redirects on");
        assert!(steered_run(&mut dp).2);
        // An ingress tbf on the warp's host veth: the classic redirect, which
        // crosses it.
        dp.set_ingress_shaped(&[WARP_IFINDEX], true)
            .expect("shaped");
        assert_eq!(
            steered_run(&mut dp),
            (TC_ACT_REDIRECT, classic_frame, false)
        );
        dp.set_ingress_shaped(&[WARP_IFINDEX], false)
            .expect("unshaped");
        assert!(steered_run(&mut dp).2);
        // A rewritten policy keeps the flag as it should be.
        dp.set_policy(
            TARGET_IFINDEX,
            WARP_IFINDEX,
            WARP_MAC,
            &compile(
                &Entry::all(&parse_rules("203.0.113.0/24").unwrap(), steer()),
                false,
            )
            .expect("compile"),
        )
        .expect("rewriting the policy");
        assert!(steered_run(&mut dp).2);
    }
);

privileged_test!(unselected_traffic_passes_untouched, {
    let mut dp = dataplane("203.0.113.0/24,tcp:443", steer());
    for packet in [
        ipv4(REMOTE_V4, TCP, 444, 0, 0),
        ipv4(REMOTE_V4, UDP, 443, 0, 0),
        ipv4(REMOTE_V4, ICMP, 0, 0, 0),
        ipv4(OTHER_V4, TCP, 443, 0, 0),
        ipv6(REMOTE_V6, TCP, 443, false, None),
    ] {
        let (verdict, out) = dp
            .test_run_from_container(TARGET_IFINDEX, &packet)
            .expect("run");
        assert_eq!(verdict, PASS);
        assert_eq!(out, packet);
    }
});

privileged_test!(port_range_edges, {
    let mut dp = dataplane("203.0.113.0/24,udp:5000-5100", steer());
    for (port, expected) in [
        (4999, PASS),
        (5000, TC_ACT_REDIRECT),
        (5100, TC_ACT_REDIRECT),
        (5101, PASS),
        (1, PASS),
        (65535, PASS),
    ] {
        assert_eq!(
            verdict(&mut dp, &ipv4(REMOTE_V4, UDP, port, 0, 0)),
            expected,
            "udp port {port}"
        );
    }
});

privileged_test!(blocked_targets_drop_matching_packets_and_count_them, {
    let mut dp = dataplane("203.0.113.0/24,2001:db8::/32", Action::Block);
    assert_eq!(
        verdict(&mut dp, &ipv4(REMOTE_V4, TCP, 80, 0, 0)),
        TC_ACT_SHOT
    );
    assert_eq!(
        verdict(&mut dp, &ipv6(REMOTE_V6, UDP, 53, false, None)),
        TC_ACT_SHOT
    );
    assert_eq!(verdict(&mut dp, &ipv4(OTHER_V4, TCP, 80, 0, 0)), PASS);
    assert_eq!(
        dp.verdicts(TARGET_IFINDEX)
            .expect("verdicts")
            .warp_down_packets,
        2
    );
});

privileged_test!(icmp_rules_match_icmp_and_icmpv6, {
    let mut dp = dataplane("203.0.113.0/24,2001:db8::/32,icmp", steer());
    assert_eq!(
        verdict(&mut dp, &ipv4(REMOTE_V4, ICMP, 0, 0, 0)),
        TC_ACT_REDIRECT
    );
    assert_eq!(
        verdict(&mut dp, &ipv6(REMOTE_V6, ICMPV6, 0, false, None)),
        TC_ACT_REDIRECT
    );
    assert_eq!(verdict(&mut dp, &ipv4(REMOTE_V4, TCP, 80, 0, 0)), PASS);
});

privileged_test!(ipv4_options_shift_the_ports, {
    let mut dp = dataplane("203.0.113.0/24,tcp:443", steer());
    for options in [1, 10] {
        assert_eq!(
            verdict(&mut dp, &ipv4(REMOTE_V4, TCP, 443, options, 0)),
            TC_ACT_REDIRECT,
            "{options} option words"
        );
        assert_eq!(
            verdict(&mut dp, &ipv4(REMOTE_V4, TCP, 80, options, 0)),
            PASS,
            "{options} option words"
        );
    }
});

privileged_test!(ipv6_extension_headers_are_walked, {
    let mut dp = dataplane("2001:db8::/32,tcp:443", steer());
    assert_eq!(
        verdict(&mut dp, &ipv6(REMOTE_V6, TCP, 443, true, None)),
        TC_ACT_REDIRECT
    );
    assert_eq!(
        verdict(&mut dp, &ipv6(REMOTE_V6, TCP, 80, true, None)),
        PASS
    );
    assert_eq!(
        verdict(&mut dp, &ipv6(REMOTE_V6, TCP, 443, true, Some(0))),
        TC_ACT_REDIRECT
    );
});

// The documented choice: a non-first fragment has no ports, so it takes a
// port selector of its protocol where that one steers; a steered flow's
// fragments then take its path.
privileged_test!(non_first_fragments_follow_their_protocol, {
    let mut dp = dataplane("203.0.113.0/24,2001:db8::/32,udp:5000", steer());
    assert_eq!(
        verdict(&mut dp, &ipv4(REMOTE_V4, UDP, 0, 0, 185)),
        TC_ACT_REDIRECT
    );
    assert_eq!(verdict(&mut dp, &ipv4(REMOTE_V4, TCP, 0, 0, 185)), PASS);
    assert_eq!(
        verdict(&mut dp, &ipv6(REMOTE_V6, UDP, 0, false, Some(185))),
        TC_ACT_REDIRECT
    );
    assert_eq!(
        verdict(&mut dp, &ipv6(REMOTE_V6, TCP, 0, false, Some(185))),
        PASS
    );
});

privileged_test!(truncated_packets_pass, {
    let mut dp = dataplane("203.0.113.0/24", Action::Block);
    let full = ipv4(REMOTE_V4, TCP, 443, 0, 0);
    // Cut inside the IPv4 header: the kernel may refuse to run such a frame
    // at all; if it runs, the program must let it pass untouched.
    match dp.test_run_from_container(TARGET_IFINDEX, &full[..14 + 12]) {
        Ok((verdict, _)) => assert_eq!(verdict, PASS),
        Err(e) => assert!(format!("{e:?}").contains("InvalidInput"), "{e:?}"),
    }
    // A complete IPv4 header whose destination is blocked still drops.
    let (verdict, _) = dp
        .test_run_from_container(TARGET_IFINDEX, &full[..14 + 20])
        .expect("run");
    assert_eq!(verdict, TC_ACT_SHOT);
    // A tcp selector with the L4 header cut off: no port, so no port match.
    let mut dp = dataplane("203.0.113.0/24,tcp:443", steer());
    let (verdict, _) = dp
        .test_run_from_container(TARGET_IFINDEX, &full[..14 + 20 + 2])
        .expect("run");
    assert_eq!(verdict, PASS);
    // An IPv6 extension header that claims more bytes than there are.
    let mut dp = dataplane("2001:db8::/32,tcp:443", steer());
    let mut packet = ipv6(REMOTE_V6, TCP, 443, true, None);
    packet[14 + 40 + 1] = 200; // hop-by-hop length: 1608 bytes
    let (verdict, _) = dp
        .test_run_from_container(TARGET_IFINDEX, &packet)
        .expect("run");
    assert_eq!(verdict, PASS);
});

privileged_test!(interfaces_without_a_policy_pass_uncounted, {
    let mut dp = dataplane("203.0.113.0/24", Action::Block);
    dp.remove_policy(TARGET_IFINDEX)
        .expect("removing the policy");
    assert_eq!(verdict(&mut dp, &ipv4(REMOTE_V4, TCP, 443, 0, 0)), PASS);
    // The veth's own statistics count it; the program has nothing to add.
    assert_eq!(
        dp.verdicts(TARGET_IFINDEX).expect("verdicts"),
        Default::default()
    );
});

privileged_test!(a_new_policy_replaces_the_old_rule_set_whole, {
    let mut dp = dataplane("203.0.113.0/24", steer());
    let first = dp
        .policy(TARGET_IFINDEX)
        .expect("policy")
        .expect("installed");
    let entries = Entry::all(&parse_rules("198.51.100.0/24").unwrap(), Action::Block);
    dp.set_policy(
        TARGET_IFINDEX,
        WARP_IFINDEX,
        WARP_MAC,
        &compile(&entries, false).unwrap(),
    )
    .expect("second policy");
    let second = dp
        .policy(TARGET_IFINDEX)
        .expect("policy")
        .expect("installed");
    assert_ne!(
        first.rule_set, second.rule_set,
        "the rule set id must change on every write"
    );
    assert_eq!(
        verdict(&mut dp, &ipv4(REMOTE_V4, TCP, 443, 0, 0)),
        PASS,
        "old rows remain"
    );
    assert_eq!(
        verdict(&mut dp, &ipv4(OTHER_V4, TCP, 443, 0, 0)),
        TC_ACT_SHOT
    );
});

privileged_test!(drops_are_counted_by_reason, {
    // Blocked while the warp is up: the policy refuses this family.
    let entries = Entry::all(&parse_rules("2001:db8::/32").unwrap(), Action::Block);
    let mut dp = EbpfDataplane::load().expect("load");
    dp.set_policy(
        TARGET_IFINDEX,
        WARP_IFINDEX,
        WARP_MAC,
        &compile(&entries, true).unwrap(),
    )
    .expect("policy");
    assert_eq!(
        verdict(&mut dp, &ipv6(REMOTE_V6, TCP, 443, false, None)),
        TC_ACT_SHOT
    );
    let counted = dp.verdicts(TARGET_IFINDEX).expect("verdicts");
    assert_eq!((counted.policy_packets, counted.warp_down_packets), (1, 0));
});

privileged_test!(a_direct_exclusion_inside_a_steered_prefix_passes, {
    let mut dp = policy_dataplane("0.0.0.0/0; direct 203.0.113.0/24");
    let (verdict, out) = dp
        .test_run_from_container(TARGET_IFINDEX, &ipv4(REMOTE_V4, TCP, 443, 0, 0))
        .expect("run");
    assert_eq!(verdict, PASS, "the exclusion is steered");
    assert_eq!(
        out,
        ipv4(REMOTE_V4, TCP, 443, 0, 0),
        "an excluded packet changed"
    );
    assert_eq!(verdict_of(&mut dp, ipv4(REMOTE_V4, ICMP, 0, 0, 0)), PASS);
    // Around the exclusion, the full tunnel still steers.
    assert_eq!(
        verdict_of(&mut dp, ipv4(OTHER_V4, TCP, 443, 0, 0)),
        TC_ACT_REDIRECT
    );
    let counted = dp.verdicts(TARGET_IFINDEX).expect("verdicts");
    assert_eq!(counted.steered_packets, 1);
});

privileged_test!(
    a_block_rule_with_a_port_inside_a_steered_prefix_drops_that_port_only,
    {
        let mut dp = policy_dataplane("203.0.113.0/24; block 203.0.113.0/24,tcp:25");
        assert_eq!(
            verdict_of(&mut dp, ipv4(REMOTE_V4, TCP, 25, 0, 0)),
            TC_ACT_SHOT
        );
        for packet in [
            ipv4(REMOTE_V4, TCP, 80, 0, 0),
            ipv4(REMOTE_V4, UDP, 25, 0, 0),
            ipv4(REMOTE_V4, ICMP, 0, 0, 0),
            // A later fragment has no port: it stays with the steered rest.
            ipv4(REMOTE_V4, TCP, 0, 0, 185),
        ] {
            assert_eq!(verdict_of(&mut dp, packet), TC_ACT_REDIRECT);
        }
        assert_eq!(verdict_of(&mut dp, ipv4(OTHER_V4, TCP, 25, 0, 0)), PASS);
        let counted = dp.verdicts(TARGET_IFINDEX).expect("verdicts");
        assert_eq!(
            (
                counted.rule_packets,
                counted.policy_packets,
                counted.warp_down_packets,
                counted.steered_packets
            ),
            (1, 0, 0, 4),
            "the drop is counted under the block rule's reason"
        );
        assert_eq!(
            counted.rule_bytes,
            ipv4(REMOTE_V4, TCP, 25, 0, 0).len() as u64
        );
    }
);

privileged_test!(the_narrowest_selector_of_one_prefix_decides, {
    // A port inside a steered protocol is excluded, another port blocked.
    let mut dp =
        policy_dataplane("2001:db8::/32,tcp; direct 2001:db8::/32; block 2001:db8::/32,tcp:25");
    assert_eq!(
        verdict_of(&mut dp, ipv6(REMOTE_V6, TCP, 443, false, None)),
        TC_ACT_REDIRECT
    );
    assert_eq!(
        verdict_of(&mut dp, ipv6(REMOTE_V6, TCP, 25, true, None)),
        TC_ACT_SHOT
    );
    assert_eq!(
        verdict_of(&mut dp, ipv6(REMOTE_V6, UDP, 53, false, None)),
        PASS
    );
});

/// A dataplane with one bridge guard (on `TARGET_IFINDEX`, used as the
/// bridge's) for `rules`, letting `allowed` pass.
fn guard(rules: &str, allowed: &[GuardAllowKey]) -> EbpfDataplane {
    let entries = Entry::all(&parse_rules(rules).expect("rules"), Action::Block);
    let mut dataplane = EbpfDataplane::load().expect("loading the programs");
    dataplane
        .set_guard(
            TARGET_IFINDEX,
            &compile(&entries, false).expect("compile"),
            &allowed.iter().copied().collect(),
        )
        .expect("writing the guard");
    dataplane
}

fn allow(kind: u32, bytes: &[u8]) -> GuardAllowKey {
    let mut addr = [0; 16];
    addr[..bytes.len()].copy_from_slice(bytes);
    GuardAllowKey {
        bridge_ifindex: TARGET_IFINDEX,
        kind,
        addr,
    }
}

fn guard_verdict(dataplane: &mut EbpfDataplane, packet: &[u8]) -> i32 {
    dataplane
        .test_run_bridge_guard(TARGET_IFINDEX, packet)
        .expect("BPF_PROG_TEST_RUN")
        .0
}

privileged_test!(the_guard_drops_unknown_sources_to_guarded_prefixes_only, {
    let mut dp = guard("203.0.113.0/24,tcp:443,2001:db8::/32", &[]);
    assert_eq!(
        guard_verdict(&mut dp, &ipv4(REMOTE_V4, TCP, 443, 0, 0)),
        TC_ACT_SHOT
    );
    assert_eq!(
        guard_verdict(&mut dp, &ipv4(REMOTE_V4, TCP, 80, 0, 0)),
        PASS
    );
    assert_eq!(
        guard_verdict(&mut dp, &ipv4(REMOTE_V4, UDP, 443, 0, 0)),
        PASS
    );
    assert_eq!(
        guard_verdict(&mut dp, &ipv4(OTHER_V4, TCP, 443, 0, 0)),
        PASS
    );
    // A later fragment follows its protocol's selectors.
    assert_eq!(
        guard_verdict(&mut dp, &ipv4(REMOTE_V4, TCP, 0, 0, 100)),
        TC_ACT_SHOT
    );
    // The label's selectors apply to each of its prefixes.
    assert_eq!(
        guard_verdict(&mut dp, &ipv6(REMOTE_V6, TCP, 443, true, None)),
        TC_ACT_SHOT
    );
    assert_eq!(
        guard_verdict(&mut dp, &ipv6(REMOTE_V6, ICMPV6, 0, true, None)),
        PASS
    );
    let drops = dp.guard_drops(TARGET_IFINDEX).expect("guard drops");
    assert_eq!(drops.packets, 3);
    // Without its guard, the bridge passes everything.
    dp.remove_guard(TARGET_IFINDEX).expect("removing the guard");
    assert_eq!(
        guard_verdict(&mut dp, &ipv4(REMOTE_V4, TCP, 443, 0, 0)),
        PASS
    );
    assert!(dp.guard_ifindexes().expect("guards").is_empty());
});

privileged_test!(a_guard_row_with_a_direct_carve_out_passes, {
    // The guard's entries: a steered prefix blocked, and a prefix every
    // target on the network leaves alone carved out of it.
    let mut entries = Entry::all(
        &parse_rules("203.0.113.0/24").expect("rules"),
        Action::Block,
    );
    entries.extend(Entry::all(
        &parse_rules("203.0.113.0/25").expect("rules"),
        Action::Direct,
    ));
    let mut dp = EbpfDataplane::load().expect("loading the programs");
    dp.set_guard(
        TARGET_IFINDEX,
        &compile(&entries, false).expect("compile"),
        &Default::default(),
    )
    .expect("writing the guard");
    // 203.0.113.5 is in the carve-out; .200 only in the blocked prefix.
    assert_eq!(
        guard_verdict(&mut dp, &ipv4(REMOTE_V4, TCP, 443, 0, 0)),
        PASS
    );
    assert_eq!(
        guard_verdict(&mut dp, &ipv4([203, 0, 113, 200], TCP, 443, 0, 0)),
        TC_ACT_SHOT
    );
    let drops = dp.guard_drops(TARGET_IFINDEX).expect("guard drops");
    assert_eq!(drops.packets, 1);
});

privileged_test!(the_guard_lets_known_sources_and_warp_macs_pass, {
    let source_v6 = [0xfd, 0, 0, 0x20, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 3];
    for allowed in [
        allow(GUARD_ALLOW_IPV4, &[172, 20, 0, 3]),
        allow(GUARD_ALLOW_MAC, &SRC_MAC),
    ] {
        let mut dp = guard("203.0.113.0/24", &[allowed]);
        assert_eq!(
            guard_verdict(&mut dp, &ipv4(REMOTE_V4, ICMP, 0, 0, 0)),
            PASS,
            "{allowed:?}"
        );
    }
    let mut dp = guard("2001:db8::/32", &[allow(GUARD_ALLOW_IPV6, &source_v6)]);
    assert_eq!(
        guard_verdict(&mut dp, &ipv6(REMOTE_V6, TCP, 443, false, None)),
        PASS
    );
    // Another address of the same family is not the allowed one.
    let mut dp = guard(
        "203.0.113.0/24",
        &[allow(GUARD_ALLOW_IPV4, &[172, 20, 0, 4])],
    );
    assert_eq!(
        guard_verdict(&mut dp, &ipv4(REMOTE_V4, ICMP, 0, 0, 0)),
        TC_ACT_SHOT
    );
});

privileged_test!(a_source_left_out_of_a_rewritten_guard_is_dropped_again, {
    let source = allow(GUARD_ALLOW_IPV4, &[172, 20, 0, 3]);
    let other = allow(GUARD_ALLOW_IPV4, &[172, 20, 0, 9]);
    let mut dp = guard("203.0.113.0/24", &[source, other]);
    let packet = ipv4(REMOTE_V4, ICMP, 0, 0, 0);
    assert_eq!(guard_verdict(&mut dp, &packet), PASS);
    let entries = Entry::all(&parse_rules("203.0.113.0/24").unwrap(), Action::Block);
    let rows = compile(&entries, false).unwrap();
    dp.set_guard(TARGET_IFINDEX, &rows, &[other].into())
        .expect("rewriting the guard");
    assert_eq!(
        guard_verdict(&mut dp, &packet),
        TC_ACT_SHOT,
        "a source removed from the allow set still passes"
    );
    assert_eq!(
        dp.guard_allowed(TARGET_IFINDEX).expect("allowed"),
        [other].into()
    );
    assert!(
        dp.guard_is(TARGET_IFINDEX, &rows, &[other].into())
            .expect("guard_is")
    );
    dp.remove_guard(TARGET_IFINDEX).expect("removing the guard");
    assert!(
        dp.guard_allowed(TARGET_IFINDEX)
            .expect("allowed")
            .is_empty()
    );
});

privileged_test!(rewrites_leave_only_the_live_rule_set_in_the_tries, {
    let mut dp = dataplane("203.0.113.0/24", steer());
    for rules in [
        "198.51.100.0/24",
        "203.0.113.0/25,2001:db8::/32",
        "198.51.100.0/24,2001:db8::/48",
    ] {
        let entries = Entry::all(&parse_rules(rules).unwrap(), Action::Block);
        let mut rows = compile(&entries, false).unwrap();
        dp.set_policy(TARGET_IFINDEX, WARP_IFINDEX, WARP_MAC, &rows)
            .expect("rewriting the policy");
        let live = dp
            .policy(TARGET_IFINDEX)
            .unwrap()
            .expect("a policy")
            .rule_set;
        rows.sort_by_key(|r| r.destination);
        assert_eq!(
            dp.installed_rule_set(live).expect("live rows"),
            rows,
            "{rules}: the live set holds exactly the new rows"
        );
        assert!(
            dp.policy_is(TARGET_IFINDEX, WARP_IFINDEX, WARP_MAC, &rows)
                .expect("policy_is")
        );
        assert_eq!(
            dp.installed_rule_set(live ^ 1).expect("old rows"),
            [],
            "{rules}: the previous set's rows are left in the tries"
        );
    }
    dp.remove_policy(TARGET_IFINDEX)
        .expect("removing the policy");
    assert_eq!(dp.policy(TARGET_IFINDEX).expect("policy"), None);
});

/// The target's host veth in the warp program's tests: only a key there.
const PEER_TARGET_IFINDEX: u32 = 7;

/// A dataplane with a target (on `PEER_TARGET_IFINDEX`) steered through
/// the warp veth `warp_ifindex` for `rules`, and that target's addresses
/// (the test packets' sources) known on the warp veth `TARGET_IFINDEX`.
fn warp_port(rules: &str, warp_ifindex: u32) -> EbpfDataplane {
    let entries = Entry::all(&parse_rules(rules).expect("rules"), steer());
    let mut dataplane = EbpfDataplane::load().expect("loading the programs");
    dataplane
        .set_policy(
            PEER_TARGET_IFINDEX,
            warp_ifindex,
            WARP_MAC,
            &compile(&entries, true).expect("compile"),
        )
        .expect("writing the policy");
    let peers: Vec<_> = ["172.20.0.3", "fd00:20::3"]
        .iter()
        .map(|a| {
            (
                warp_peer_key(TARGET_IFINDEX, a.parse().unwrap()),
                PEER_TARGET_IFINDEX,
            )
        })
        .collect();
    dataplane.put_warp_peers(&peers).expect("writing the peers");
    dataplane
}

fn warp_verdict(dataplane: &mut EbpfDataplane, packet: &[u8]) -> i32 {
    dataplane
        .test_run_from_warp(TARGET_IFINDEX, packet)
        .expect("BPF_PROG_TEST_RUN")
        .0
}

/// `frame` with its IPv4 source and destination swapped: the reply.
fn reply_v4(mut frame: Vec<u8>) -> Vec<u8> {
    let (src, dst) = (14 + 12, 14 + 16);
    for i in 0..4 {
        frame.swap(src + i, dst + i);
    }
    frame
}

privileged_test!(
    the_warp_program_drops_untunnelled_forwards_of_its_targets,
    {
        let mut dp = warp_port("203.0.113.0/24,tcp:443,2001:db8::/32", TARGET_IFINDEX);
        // The target's own packets, forwarded unchanged by the warp.
        assert_eq!(
            warp_verdict(&mut dp, &ipv4(REMOTE_V4, TCP, 443, 0, 0)),
            TC_ACT_SHOT
        );
        assert_eq!(
            warp_verdict(&mut dp, &ipv6(REMOTE_V6, TCP, 443, false, None)),
            TC_ACT_SHOT
        );
        // What the target's rules do not steer is not netwarp's business.
        assert_eq!(warp_verdict(&mut dp, &ipv4(REMOTE_V4, TCP, 80, 0, 0)), PASS);
        assert_eq!(warp_verdict(&mut dp, &ipv4(OTHER_V4, TCP, 443, 0, 0)), PASS);
        // NATed by the warp: the warp's own source passes.
        let mut nated = ipv4(REMOTE_V4, TCP, 443, 0, 0);
        nated[14 + 15] = 2;
        assert_eq!(warp_verdict(&mut dp, &nated), PASS);
        let leaks = dp.warp_leaks(TARGET_IFINDEX).expect("warp leaks");
        assert_eq!(leaks.packets, 2);
        // Without the target's rows the warp veth knows no one.
        let removed = dp
            .retain_warp_peers(&Default::default())
            .expect("removing the peers");
        assert_eq!(removed, 2);
        assert!(dp.warp_peers().expect("peers").is_empty());
        assert_eq!(
            warp_verdict(&mut dp, &ipv4(REMOTE_V4, TCP, 443, 0, 0)),
            PASS
        );
    }
);

privileged_test!(the_warp_program_passes_what_the_target_leaves_alone, {
    // The target steers 203.0.113.0/24 but excludes its lower half and
    // blocks port 25: the warp forwarding the excluded traffic unchanged
    // is the path the target's rules allow; a blocked packet may not
    // leave untunnelled either.
    let entries =
        policy_entries("203.0.113.0/24; direct 203.0.113.0/25; block 203.0.113.128/25,tcp:25");
    let mut dp = EbpfDataplane::load().expect("loading the programs");
    dp.set_policy(
        PEER_TARGET_IFINDEX,
        TARGET_IFINDEX,
        WARP_MAC,
        &compile(&entries, true).expect("compile"),
    )
    .expect("writing the policy");
    let peer = warp_peer_key(TARGET_IFINDEX, "172.20.0.3".parse().unwrap());
    dp.put_warp_peers(&[(peer, PEER_TARGET_IFINDEX)])
        .expect("writing the peers");
    assert_eq!(
        warp_verdict(&mut dp, &ipv4(REMOTE_V4, TCP, 443, 0, 0)),
        PASS
    );
    for dport in [443, 25] {
        assert_eq!(
            warp_verdict(&mut dp, &ipv4([203, 0, 113, 200], TCP, dport, 0, 0)),
            TC_ACT_SHOT,
            "port {dport}"
        );
    }
    assert_eq!(dp.warp_leaks(TARGET_IFINDEX).expect("leaks").packets, 2);
});

privileged_test!(
    the_warp_program_delivers_replies_to_the_target_it_steers_there,
    {
        let mut dp = warp_port("203.0.113.0/24", TARGET_IFINDEX);
        let reply = reply_v4(ipv4(REMOTE_V4, TCP, 443, 0, 0));
        assert_eq!(warp_verdict(&mut dp, &reply), TC_ACT_REDIRECT);
        // On another of the warp's veths (the target is steered through a
        // different one), a reply is not redirected, and forwards still drop.
        let mut dp = warp_port("203.0.113.0/24", 99);
        assert_eq!(warp_verdict(&mut dp, &reply), PASS);
        assert_eq!(
            warp_verdict(&mut dp, &ipv4(REMOTE_V4, TCP, 443, 0, 0)),
            TC_ACT_SHOT
        );
    }
);

privileged_test!(timed_runs_steer_and_pass_as_single_runs_do, {
    // The bench's BPF_PROG_TEST_RUN timing: the verdicts must be the real
    // ones (a redirect and a pass), or the timing measures the wrong path.
    for peer in [true, false] {
        let timings = netwarp_tests::fastpath::time_from_container(10_000, peer).expect("timing");
        for t in &timings {
            eprintln!("peer {peer}, {}: {:.1} ns per run", t.packet, t.ns_per_run);
        }
        let verdicts: Vec<(&str, i32)> = timings.iter().map(|t| (t.packet, t.verdict)).collect();
        assert_eq!(
            verdicts,
            [
                ("steered", netwarp_tests::fastpath::TC_ACT_REDIRECT),
                ("no rule", netwarp_tests::fastpath::PASS),
                (
                    "steered, rule actions",
                    netwarp_tests::fastpath::TC_ACT_REDIRECT
                ),
                ("excluded, rule actions", netwarp_tests::fastpath::PASS)
            ]
        );
    }
});

privileged_test!(a_target_whose_slot_is_taken_is_served_from_the_hash_map, {
    // Two ifindexes with one state slot: the first written (a fake
    // ifindex, never run: BPF_PROG_TEST_RUN needs a real device) holds
    // it, so loopback's row goes to the hash map; each keeps its own
    // policy and counters, and a row never moves.
    let holder = TARGET_IFINDEX + netwarp_common::IFACE_ARRAY_SIZE;
    let mut dp = EbpfDataplane::load().expect("loading the programs");
    let policy = |dp: &mut EbpfDataplane, ifindex, action| {
        let entries = Entry::all(&parse_rules("203.0.113.0/24").expect("rules"), action);
        let rows = compile(&entries, false).expect("compile");
        dp.set_policy(ifindex, WARP_IFINDEX, WARP_MAC, &rows)
            .expect("a policy");
    };
    policy(&mut dp, holder, Action::Block);
    policy(&mut dp, TARGET_IFINDEX, steer());
    let packet = ipv4(REMOTE_V4, TCP, 443, 0, 0);
    assert_eq!(verdict(&mut dp, &packet), TC_ACT_REDIRECT);
    let steered = |dp: &EbpfDataplane| {
        dp.verdicts(TARGET_IFINDEX)
            .expect("verdicts")
            .steered_packets
    };
    assert_eq!(steered(&dp), 1);
    assert_eq!(dp.verdicts(holder).expect("verdicts"), Default::default());
    // The holder goes; loopback stays where it is, still served, its
    // counters kept through a rewrite of its policy.
    dp.remove_policy(holder).expect("removing");
    assert_eq!(dp.policy(holder).expect("policy"), None);
    assert_eq!(verdict(&mut dp, &packet), TC_ACT_REDIRECT);
    policy(&mut dp, TARGET_IFINDEX, Action::Block);
    assert_eq!(verdict(&mut dp, &packet), TC_ACT_SHOT);
    assert_eq!(steered(&dp), 2);
    dp.remove_policy(TARGET_IFINDEX).expect("removing");
    assert_eq!(verdict(&mut dp, &packet), PASS);
});

/// A spread member on the test's one interface, told apart by its MAC.
fn spread_member(last: u8) -> netwarp_common::SpreadSlot {
    netwarp_common::SpreadSlot {
        ifindex: WARP_IFINDEX,
        mac: [0x02, 0x42, 0xac, 0x14, 0x01, last],
        _pad: [0; 2],
    }
}

/// The member MAC a steered flow from source port `sport` got (the
/// rewritten destination MAC), and the slot `flow_hash` gives it.
fn spread_flow(dp: &mut EbpfDataplane, packet: &[u8], sport: u16) -> ([u8; 6], usize) {
    let mut packet = packet.to_vec();
    let ip_len = if packet[12..14] == [0x08, 0x00] {
        20
    } else {
        40
    };
    let l4 = 14 + ip_len;
    packet[l4..l4 + 2].copy_from_slice(&sport.to_be_bytes());
    let (verdict, out) = dp
        .test_run_from_container(TARGET_IFINDEX, &packet)
        .expect("BPF_PROG_TEST_RUN");
    assert_eq!(verdict, TC_ACT_REDIRECT, "sport {sport}");
    let word = |at: usize| u32::from_ne_bytes(packet[at..at + 4].try_into().unwrap());
    let fold = |at: usize| (0..4).fold(0, |h, i| h ^ word(at + 4 * i));
    let (source, destination) = if ip_len == 20 {
        (word(14 + 12), word(14 + 16))
    } else {
        (fold(14 + 8), fold(14 + 24))
    };
    let proto = packet[if ip_len == 20 { 14 + 9 } else { 14 + 6 }];
    let hash = netwarp_common::flow_hash(source, destination, proto, word(l4));
    (
        out[0..6].try_into().unwrap(),
        hash as usize % netwarp_common::SPREAD_SLOTS,
    )
}

privileged_test!(
    a_spread_target_s_flows_take_the_member_of_their_hash_slot,
    {
        use netwarp::dataplane::ebpf::spread::assign;
        let mut dp = dataplane("203.0.113.0/24,2001:db8::/32", steer());
        let four: Vec<_> = (1..=4).map(spread_member).collect();
        let table = assign(None, &four);
        dp.set_spread(TARGET_IFINDEX, Some(&table))
            .expect("writing the spread table");
        let flows: Vec<(Vec<u8>, u16)> = (0..128u16)
            .map(|i| {
                let packet = if i % 2 == 0 {
                    ipv4(REMOTE_V4, TCP, 443, 0, 0)
                } else {
                    ipv6(REMOTE_V6, UDP, 443, false, None)
                };
                (packet, 40_000 + i)
            })
            .collect();
        let mut carried = std::collections::BTreeMap::<[u8; 6], usize>::new();
        let mut before = Vec::new();
        for (packet, sport) in &flows {
            let (mac, slot) = spread_flow(&mut dp, packet, *sport);
            assert_eq!(
                mac, table.slots[slot].mac,
                "sport {sport}: not its slot's member"
            );
            // Stable per flow: every packet of it takes the same member.
            assert_eq!(spread_flow(&mut dp, packet, *sport).0, mac);
            *carried.entry(mac).or_default() += 1;
            before.push(mac);
        }
        // 128 flows on 4 members: each carries some, none nearly all.
        assert_eq!(carried.len(), 4, "{carried:?}");
        assert!(
            carried.values().all(|n| (12..=64).contains(n)),
            "{carried:?}"
        );
        // The third member leaves: only its flows move.
        let three = [four[0], four[1], four[3]];
        dp.set_spread(TARGET_IFINDEX, Some(&assign(Some(&table), &three)))
            .expect("rewriting the spread table");
        for ((packet, sport), was) in flows.iter().zip(&before) {
            let (now, _) = spread_flow(&mut dp, packet, *sport);
            assert_ne!(
                now, four[2].mac,
                "sport {sport} still on the member that left"
            );
            if *was != four[2].mac {
                assert_eq!(now, *was, "sport {sport} moved though its member stayed");
            }
        }
        // A spread target keeps the classic redirect (its member comes
        // from the table)...
        assert!(!dp.peer_redirects(TARGET_IFINDEX).expect("state row"));
        // ...and without the table, the policy's one warp takes everything
        // again, by a peer redirect (which leaves the frame as it came).
        dp.set_spread(TARGET_IFINDEX, None)
            .expect("removing the table");
        assert!(dp.peer_redirects(TARGET_IFINDEX).expect("state row"));
        let (mac, _) = spread_flow(&mut dp, &flows[0].0, flows[0].1);
        assert_eq!(mac, flows[0].0[0..6], "a peer redirect rewrote the MAC");
        dp.set_peer_redirect(false).expect("peer redirects off");
        let (mac, _) = spread_flow(&mut dp, &flows[0].0, flows[0].1);
        assert_eq!(mac, WARP_MAC);
    }
);

// The XDP variant (`dataplane.ebpf_from_container_hook = "xdp"`): the same
// decisions by the same code, as XDP verdicts; what it cannot decide on its
// frame it passes to the tc program behind it.
const XDP_DROP: u32 = 1;
const XDP_PASS: u32 = 2;
const XDP_REDIRECT: u32 = 4;

fn xdp_verdict(dataplane: &mut EbpfDataplane, packet: &[u8]) -> u32 {
    dataplane
        .test_run_xdp_from_container(TARGET_IFINDEX, packet)
        .expect("BPF_PROG_TEST_RUN of the XDP program")
        .0
}

privileged_test!(xdp_steers_with_the_warp_mac_and_a_redirect, {
    let mut dp = dataplane("203.0.113.0/24,tcp:443", steer());
    let packet = ipv4(REMOTE_V4, TCP, 443, 0, 0);
    let (verdict, out) = dp
        .test_run_xdp_from_container(TARGET_IFINDEX, &packet)
        .expect("run");
    assert_eq!(verdict, XDP_REDIRECT);
    assert_eq!(out[0..6], WARP_MAC, "destination MAC not rewritten");
    assert_eq!(
        out[6..],
        packet[6..],
        "nothing but the destination MAC may change"
    );
    let counted = dp.verdicts(TARGET_IFINDEX).expect("verdicts");
    assert_eq!(
        (counted.steered_packets, counted.steered_bytes),
        (1, packet.len() as u64)
    );
});

privileged_test!(xdp_passes_what_no_rule_takes_untouched, {
    let mut dp = dataplane("203.0.113.0/24,tcp:443", steer());
    for packet in [
        ipv4(REMOTE_V4, TCP, 444, 0, 0),
        ipv4(REMOTE_V4, UDP, 443, 0, 0),
        ipv4(OTHER_V4, TCP, 443, 0, 0),
        ipv6(REMOTE_V6, TCP, 443, false, None),
    ] {
        let (verdict, out) = dp
            .test_run_xdp_from_container(TARGET_IFINDEX, &packet)
            .expect("run");
        assert_eq!(verdict, XDP_PASS);
        assert_eq!(out, packet);
    }
    assert_eq!(
        dp.verdicts(TARGET_IFINDEX)
            .expect("verdicts")
            .steered_packets,
        0
    );
});

privileged_test!(xdp_drops_blocked_packets_and_counts_them, {
    let mut dp = dataplane("203.0.113.0/24,2001:db8::/32", Action::Block);
    assert_eq!(
        xdp_verdict(&mut dp, &ipv4(REMOTE_V4, TCP, 80, 0, 0)),
        XDP_DROP
    );
    assert_eq!(
        xdp_verdict(&mut dp, &ipv6(REMOTE_V6, UDP, 53, false, None)),
        XDP_DROP
    );
    assert_eq!(
        xdp_verdict(&mut dp, &ipv4(OTHER_V4, TCP, 80, 0, 0)),
        XDP_PASS
    );
    assert_eq!(
        dp.verdicts(TARGET_IFINDEX)
            .expect("verdicts")
            .warp_down_packets,
        2
    );
});

// Every packet XDP decides, it decides as tc does; the rest it passes
// (to tc). Only what lies beyond its frame's fixed offsets (IPv6
// extension headers) is left to tc, which reads it with load_bytes.
privileged_test!(xdp_decides_as_tc_or_passes_to_it, {
    let policy = "203.0.113.0/24; block 203.0.113.0/24,tcp:25; direct 203.0.113.128/25; \
                  2001:db8::/32";
    let mut dp = policy_dataplane(policy);
    let packets = [
        ("steered", ipv4(REMOTE_V4, TCP, 443, 0, 0), false),
        ("steered udp", ipv4(REMOTE_V4, UDP, 53, 0, 0), false),
        ("steered icmp", ipv4(REMOTE_V4, ICMP, 0, 0, 0), false),
        ("options", ipv4(REMOTE_V4, TCP, 443, 2, 0), false),
        ("later fragment", ipv4(REMOTE_V4, TCP, 0, 0, 100), false),
        ("blocked port", ipv4(REMOTE_V4, TCP, 25, 0, 0), false),
        ("direct", ipv4([203, 0, 113, 200], TCP, 443, 0, 0), false),
        ("no rule", ipv4(OTHER_V4, TCP, 443, 0, 0), false),
        ("v6 steered", ipv6(REMOTE_V6, TCP, 443, false, None), false),
        ("v6 icmp", ipv6(REMOTE_V6, ICMPV6, 0, false, None), false),
        ("v6 hop-by-hop", ipv6(REMOTE_V6, TCP, 443, true, None), true),
        (
            "v6 fragment",
            ipv6(REMOTE_V6, UDP, 53, false, Some(0)),
            true,
        ),
    ];
    for (name, packet, beyond_frame) in packets {
        let tc = verdict(&mut dp, &packet);
        let xdp = xdp_verdict(&mut dp, &packet);
        let as_tc = match tc {
            TC_ACT_REDIRECT => XDP_REDIRECT,
            TC_ACT_SHOT => XDP_DROP,
            _ => XDP_PASS,
        };
        if beyond_frame {
            assert_eq!(xdp, XDP_PASS, "{name}: XDP must leave it to tc");
            assert_ne!(
                tc, PASS,
                "{name}: tc decides it (else the case tests nothing)"
            );
        } else {
            assert_eq!(xdp, as_tc, "{name}: XDP {xdp}, tc {tc}");
        }
    }
});

// A capped target's packets are charged by tc (offload packets by their
// segments): the XDP program passes them all.
privileged_test!(xdp_leaves_capped_targets_to_tc, {
    let mut dp = dataplane("203.0.113.0/24", steer());
    let buckets = netwarp_common::RateBuckets {
        egress: netwarp_common::TokenBucket {
            ns_per_byte: 1,
            burst_ns: u64::MAX / 2,
            next_ns: 0,
        },
        ..Default::default()
    };
    dp.set_caps(1, &[TARGET_IFINDEX], buckets).expect("a cap");
    let packet = ipv4(REMOTE_V4, TCP, 443, 0, 0);
    assert_eq!(xdp_verdict(&mut dp, &packet), XDP_PASS);
    assert_eq!(verdict(&mut dp, &packet), TC_ACT_REDIRECT);
});
