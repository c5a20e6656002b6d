//! The from-container program's own cost per packet, by BPF_PROG_TEST_RUN
//! with `repeat`: the real program in the real kernel on a crafted packet,
//! for a packet a rule steers and one no rule matches, then the same
//! steered packet and an excluded one under a policy with rule actions
//! (block rules by port ahead of the steered default, a `direct`
//! exclusion). Repeatable, and free of traffic noise; the bench reports it
//! beside the kernel's BPF stats.

use netwarp::{
    dataplane::ebpf::{EbpfDataplane, FromContainerHook, compile::compile},
    model::{Verb, parse_policy},
    plan::{Action, Entry, prune_direct},
};

/// Loopback: BPF_PROG_TEST_RUN hands a tc program any ifindex, but an XDP
/// one's must exist.
pub const TARGET_IFINDEX: u32 = 1;
pub const WARP_MAC: [u8; 6] = [0x02, 0x42, 0xac, 0x14, 0x00, 0x02];
/// Destinations: one the rule steers, one it does not match, one the
/// rule actions' policy excludes.
pub const STEERED_V4: [u8; 4] = [203, 0, 113, 1];
pub const NO_RULE_V4: [u8; 4] = [198, 51, 100, 5];
pub const EXCLUDED_V4: [u8; 4] = [203, 0, 113, 200];
/// The policy with rule actions: the steered packet (tcp:5201) passes two
/// block rules' selectors before its row's default steers it.
pub const ACTIONS_POLICY: &str = "203.0.113.0/24; block 203.0.113.0/24,tcp:25; \
     block 203.0.113.0/24,udp:53; direct 203.0.113.128/25";
/// tc verdicts, as the program returns them.
pub const TC_ACT_REDIRECT: i32 = 7;
pub const PASS: i32 = -1;

/// A minimal Ethernet + IPv4 + TCP frame (SYN-sized) to `dst:dport`.
pub fn tcp_v4(dst: [u8; 4], dport: u16) -> Vec<u8> {
    let mut frame = vec![0u8; 14 + 20 + 20];
    frame[0..6].copy_from_slice(&[0x02, 0x42, 0, 0, 0, 1]);
    frame[6..12].copy_from_slice(&[0x02, 0x42, 0xac, 0x14, 0, 3]);
    frame[12..14].copy_from_slice(&0x0800u16.to_be_bytes());
    let ip = &mut frame[14..34];
    ip[0] = 0x45;
    ip[2..4].copy_from_slice(&40u16.to_be_bytes());
    ip[8] = 64;
    ip[9] = 6;
    ip[12..16].copy_from_slice(&[172, 20, 0, 3]);
    ip[16..20].copy_from_slice(&dst);
    let tcp = &mut frame[34..54];
    tcp[0..2].copy_from_slice(&40000u16.to_be_bytes());
    tcp[2..4].copy_from_slice(&dport.to_be_bytes());
    tcp[12] = 5 << 4;
    frame
}

/// One timed packet kind.
#[derive(Clone, Debug)]
pub struct Timing {
    pub packet: &'static str,
    pub verdict: i32,
    pub ns_per_run: f64,
}

/// A target's entries for a policy label (`via`, `direct` and `block`
/// clauses), as the planner makes them: `via` rules take `via`.
pub fn policy_entries(label: &str, via: Action) -> anyhow::Result<Vec<Entry>> {
    let mut entries: Vec<Entry> = (parse_policy(label)?.rules.into_iter())
        .map(|rule| Entry {
            rule,
            action: match rule.verb {
                Verb::Via => via,
                Verb::Direct => Action::Direct,
                Verb::Block => Action::Deny,
            },
        })
        .collect();
    entries.sort();
    entries.dedup();
    prune_direct(&mut entries);
    Ok(entries)
}

/// Loads a private copy of the programs (nothing attached), gives
/// `TARGET_IFINDEX` a policy steering 203.0.113.0/24 to a warp, and times
/// the from-container program on a steered and a no-rule packet, then
/// under [`ACTIONS_POLICY`] on the steered and an excluded packet, `repeat`
/// runs each; steered packets take the peer redirect with `peer_redirect`,
/// the classic one without. Errors name what failed.
pub fn time_from_container(repeat: u32, peer_redirect: bool) -> anyhow::Result<Vec<Timing>> {
    time_hook(repeat, FromContainerHook::Tc, peer_redirect)
}

/// [`time_from_container`] for the XDP program (verdicts as XDP's:
/// 4 redirect, 2 pass; XDP has no peer redirect).
pub fn time_xdp_from_container(repeat: u32) -> anyhow::Result<Vec<Timing>> {
    time_hook(repeat, FromContainerHook::Xdp, false)
}

fn time_hook(
    repeat: u32,
    hook: FromContainerHook,
    peer_redirect: bool,
) -> anyhow::Result<Vec<Timing>> {
    let via = Action::Via("172.20.0.2".parse()?);
    let mut dataplane = EbpfDataplane::load()?;
    dataplane.set_peer_redirect(peer_redirect)?;
    let mut out = Vec::new();
    for (label, packets) in [
        (
            "203.0.113.0/24",
            [("steered", STEERED_V4), ("no rule", NO_RULE_V4)],
        ),
        (
            ACTIONS_POLICY,
            [
                ("steered, rule actions", STEERED_V4),
                ("excluded, rule actions", EXCLUDED_V4),
            ],
        ),
    ] {
        let rows = compile(&policy_entries(label, via)?, true)?;
        dataplane.set_policy(TARGET_IFINDEX, 1, WARP_MAC, &rows)?;
        if dataplane.peer_redirects(TARGET_IFINDEX)? != peer_redirect {
            anyhow::bail!(
                "the target's peer flag is not {peer_redirect}: the wrong path would be timed"
            );
        }
        for (packet, dst) in packets {
            let frame = tcp_v4(dst, 5201);
            let (verdict, per_run) = match hook {
                FromContainerHook::Tc => {
                    dataplane.time_from_container(TARGET_IFINDEX, &frame, repeat)?
                }
                FromContainerHook::Xdp => {
                    let (verdict, per_run) =
                        dataplane.time_xdp_from_container(TARGET_IFINDEX, &frame, repeat)?;
                    (verdict as i32, per_run)
                }
            };
            out.push(Timing {
                packet,
                verdict,
                ns_per_run: per_run.as_nanos() as f64,
            });
        }
    }
    Ok(out)
}
