//! End-to-end tests specific to the eBPF dataplane: restarts under live
//! traffic, coexistence with foreign tc programs, and the fallback to
//! routes when bpf() is really unavailable.

use std::time::Duration;

use netwarp::dataplane::ebpf::EbpfDataplane;
use netwarp_tests::{
    command::output,
    daemon::{Daemon, TestLabels, eventually, netwarp_binary},
    docker::DockerNetwork,
    skip, skip_if,
    steering::{GLOBAL_RULES, REMOTE, reaches, start_target, start_warp},
    tcx,
};

const CONVERGE: Duration = Duration::from_secs(15);

/// (direction, program id) of everything attached through TCX to `veth`.
fn tcx_programs(veth: &str) -> Vec<(&'static str, u32)> {
    tcx::tcx_programs(veth)
        .iter()
        .map(|(direction, program)| (*direction, program.id()))
        .collect()
}

/// Pings REMOTE `count` times from the named container, 50 ms apart;
/// returns (sent, received).
fn ping(container: &str, count: u32) -> (u32, u32) {
    let count = count.to_string();
    let out = output(
        "docker",
        &[
            "exec", container, "ping", "-c", &count, "-i", "0.05", "-W", "1", REMOTE,
        ],
    )
    .expect("docker exec ping");
    let text = String::from_utf8_lossy(&out.stdout);
    let stats = text
        .lines()
        .find(|l| l.contains("packets transmitted"))
        .unwrap_or_default()
        .to_owned();
    let number = |word: &str| -> u32 {
        stats
            .split(',')
            .find(|part| part.contains(word))
            .and_then(|part| part.split_whitespace().next()?.parse().ok())
            .unwrap_or(0)
    };
    (number("transmitted"), number("received"))
}

#[test]
fn sigkill_under_live_traffic_keeps_steering_and_blocking() {
    let test = "sigkill_under_live_traffic_keeps_steering_and_blocking";
    skip_if!(test, skip::missing_docker());
    let labels = TestLabels::unique();
    let network = DockerNetwork::create_internal_steerable("nwe").expect("network");
    let warp = start_warp(&labels.warp_name("gw"), &network, &[]);
    let steered = start_target(
        "nwt",
        &network,
        &[labels.target_label(&labels.warp_name("gw"))],
    );
    // Its warp never exists, so it is blocked.
    let blocked = start_target(
        "nwb",
        &network,
        &[labels.target_label(&labels.warp_name("none"))],
    );
    let mut daemon = Daemon::start(&labels, "ebpf", GLOBAL_RULES).expect("daemon");
    assert!(
        eventually(CONVERGE, || reaches(&steered, 8080)),
        "never steered"
    );
    daemon
        .wait_for_log("does not exist", CONVERGE)
        .expect("the blocked target was classified");
    let (_, steered_veth) = steered.host_veth().expect("veth");
    let programs_before = tcx_programs(&steered_veth);
    assert_eq!(
        programs_before.len(),
        1,
        "uncapped: the from-container program only: {programs_before:?}"
    );

    // 200 echoes over ~10 s from each target while the daemon is killed
    // and restarted twice.
    let steered_ping = {
        let steered_name = steered.name().to_owned();
        std::thread::spawn(move || ping(&steered_name, 200))
    };
    // Blocked sends fail at once (EACCES), which ends a ping run, so the
    // blocked side is 100 single pings, 100 ms apart, over the same ~10 s.
    let blocked_ping = {
        let blocked_name = blocked.name().to_owned();
        std::thread::spawn(move || {
            let script = format!(
                "i=0; ok=0; while [ $i -lt 100 ]; do \
                 ping -c 1 -W 1 {REMOTE} >/dev/null 2>&1 && ok=$((ok+1)); \
                 i=$((i+1)); usleep 100000; done; echo $ok"
            );
            let out =
                output("docker", &["exec", &blocked_name, "sh", "-c", &script]).expect("exec");
            let answered: u32 = String::from_utf8_lossy(&out.stdout)
                .trim()
                .parse()
                .expect("count");
            (100, answered)
        })
    };
    for _ in 0..2 {
        std::thread::sleep(Duration::from_secs(2));
        daemon.stop(libc::SIGKILL).expect("SIGKILL");
        std::thread::sleep(Duration::from_secs(1));
        daemon.restart(libc::SIGKILL).expect("restart");
    }
    let (sent, received) = steered_ping.join().expect("steered ping");
    println!("steered target: {received}/{sent} echoes answered across two SIGKILLs");
    assert_eq!(sent, 200);
    assert_eq!(received, sent, "steered traffic was interrupted");
    let (sent, received) = blocked_ping.join().expect("blocked ping");
    println!("blocked target: {received}/{sent} echoes answered");
    assert_eq!(received, 0, "a blocked target got through");

    daemon
        .wait_for_log("connected to Docker", CONVERGE)
        .expect("restarted");
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(
        tcx_programs(&steered_veth).len(),
        programs_before.len(),
        "the restarted daemon attached again instead of adopting"
    );
    drop(warp);
}

#[test]
fn foreign_tc_programs_keep_running() {
    let test = "foreign_tc_programs_keep_running";
    skip_if!(test, skip::missing_docker());
    let labels = TestLabels::unique();
    let network = DockerNetwork::create_internal_steerable("nwe").expect("network");
    let warp = start_warp(&labels.warp_name("gw"), &network, &[]);
    let target = start_target(
        "nwt",
        &network,
        &[labels.target_label(&labels.warp_name("gw"))],
    );
    let (_, veth) = target.host_veth().expect("veth");

    // A program netwarp did not create, attached first: a separate load of
    // the counters, with its own private maps.
    let mut foreign = EbpfDataplane::load().expect("loading the foreign program");
    foreign
        .attach_counters(&veth)
        .expect("attaching the foreign program");
    let foreign_ids: Vec<u32> = tcx_programs(&veth).into_iter().map(|(_, id)| id).collect();
    assert_eq!(
        foreign_ids.len(),
        1,
        "an uncapped interface gets one program"
    );

    let daemon = Daemon::start(&labels, "ebpf", GLOBAL_RULES).expect("daemon");
    assert!(
        eventually(CONVERGE, || reaches(&target, 8080)),
        "never steered"
    );
    let after: Vec<u32> = tcx_programs(&veth).into_iter().map(|(_, id)| id).collect();
    assert_eq!(
        after.len(),
        2,
        "netwarp's from-container program beside the foreign one (uncapped: no \
         to-container program)"
    );
    assert!(
        foreign_ids.iter().all(|id| after.contains(id)),
        "a foreign program was detached"
    );

    // Traffic netwarp leaves alone still reaches the foreign program: the
    // kernel's run count of the foreign from-container program grows.
    let _stats = tcx::BpfStats::enable().expect("enabling the kernel's BPF stats");
    let warp_ip = warp.ipv4(&network).expect("warp ip");
    let foreign_runs = || {
        (tcx::program_stats(&veth).into_iter())
            .filter(|p| foreign_ids.contains(&p.id))
            .map(|p| p.run_count)
            .sum::<u64>()
    };
    let still_runs = |_: &EbpfDataplane| {
        let before = foreign_runs();
        let _ = target.exec(&["ping", "-c", "3", "-i", "0.1", "-W", "1", &warp_ip]);
        foreign_runs() >= before + 3
    };
    assert!(
        still_runs(&foreign),
        "the foreign program stopped running after netwarp attached"
    );

    let out = output(
        netwarp_binary().to_str().expect("utf-8"),
        &[
            "cleanup",
            "--config",
            daemon.config_path().to_str().expect("utf-8"),
        ],
    )
    .expect("netwarp cleanup");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The daemon is still running; stop it so it does not attach again.
    drop(daemon);
    let left: Vec<u32> = tcx_programs(&veth).into_iter().map(|(_, id)| id).collect();
    assert_eq!(
        left, foreign_ids,
        "cleanup must leave exactly the foreign programs"
    );
    assert!(
        still_runs(&foreign),
        "the foreign program stopped running after cleanup"
    );
    drop(foreign);
    drop(warp);
}

#[test]
fn auto_falls_back_to_routes_when_bpf_is_denied() {
    let test = "auto_falls_back_to_routes_when_bpf_is_denied";
    skip_if!(test, skip::missing_docker());
    if !cfg!(target_arch = "x86_64") {
        skip::record(test, "the bpf() seccomp filter is written for x86_64 only");
        return;
    }
    let labels = TestLabels::unique();
    let network = DockerNetwork::create_internal_steerable("nwe").expect("network");
    let warp = start_warp(&labels.warp_name("gw"), &network, &[]);
    let target = start_target(
        "nwt",
        &network,
        &[labels.target_label(&labels.warp_name("gw"))],
    );
    let daemon = Daemon::start_with(&labels, "auto", GLOBAL_RULES, true).expect("daemon");
    daemon
        .wait_for_log("dataplane auto: using routes", CONVERGE)
        .expect("auto chose routes");
    assert!(
        daemon.log().contains("did not load"),
        "the reason is logged:\n{}",
        daemon.log()
    );
    assert!(
        eventually(CONVERGE, || reaches(&target, 8080)),
        "routes did not steer"
    );
    let (_, veth) = target.host_veth().expect("veth");
    assert!(
        tcx_programs(&veth).is_empty(),
        "a program was attached without bpf()"
    );
    drop(warp);
}

/// Creates a hash map with the given sizes and pins it at `path`, as an
/// older netwarp with another layout would have left it.
fn pin_hash_map(path: &std::path::Path, key_size: u32, value_size: u32) {
    // union bpf_attr for BPF_MAP_CREATE (0): map_type, key_size,
    // value_size, max_entries, then zeros.
    let mut create = [0u32; 32];
    create[..4].copy_from_slice(&[1 /* BPF_MAP_TYPE_HASH */, key_size, value_size, 16]);
    // SAFETY: a valid bpf_attr buffer of the size passed.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            0,
            create.as_ptr(),
            std::mem::size_of_val(&create),
        )
    };
    assert!(
        fd >= 0,
        "BPF_MAP_CREATE: {}",
        std::io::Error::last_os_error()
    );
    let name = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).expect("path");
    // BPF_OBJ_PIN (6): pathname (u64), bpf_fd (u32).
    let mut pin = [0u64; 4];
    pin[0] = name.as_ptr() as u64;
    pin[1] = fd as u64;
    // SAFETY: as above; `name` outlives the call.
    let pinned =
        unsafe { libc::syscall(libc::SYS_bpf, 6, pin.as_ptr(), std::mem::size_of_val(&pin)) };
    assert!(
        pinned == 0,
        "BPF_OBJ_PIN: {}",
        std::io::Error::last_os_error()
    );
    // SAFETY: our own fd.
    unsafe { libc::close(fd as i32) };
}

/// Removes a pin directory on drop.
struct PinDir(std::path::PathBuf);

impl Drop for PinDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn pinned_maps_of_an_older_layout_are_replaced() {
    let test = "pinned_maps_of_an_older_layout_are_replaced";
    skip_if!(test, skip::missing_root());
    let dir =
        PinDir(std::path::PathBuf::from("/sys/fs/bpf").join(netwarp_tests::unique_name("nwl")));
    std::fs::create_dir_all(&dir.0).expect("pin dir");
    let verdicts = dir.0.join(netwarp_common::VERDICTS_MAP);
    // The verdict counters before the rate fields: 48 bytes.
    pin_hash_map(&verdicts, 4, 48);
    let dataplane =
        EbpfDataplane::load_pinned(&dir.0).expect("loading over a pinned map of an older layout");
    let info = aya::maps::MapInfo::from_pin(&verdicts).expect("the map is pinned again");
    assert_eq!(
        info.value_size() as usize,
        std::mem::size_of::<netwarp_common::VerdictCounters>()
    );
    drop(dataplane);
}

/// A restarted dataplane adopts the rows an earlier run left in the pinned
/// maps (one scan at load), and its targeted writes and deletes reach them.
/// Only maps: the ifindexes are keys, nothing is attached.
#[test]
fn a_restart_adopts_the_rows_an_earlier_run_wrote() {
    use netwarp::{
        dataplane::ebpf::{compile::compile, warp_peer_key},
        model::parse_rules,
        plan::{Action, Entry},
    };
    use netwarp_common::{GUARD_ALLOW_IPV4, GuardAllowKey, RateBuckets};
    let test = "a_restart_adopts_the_rows_an_earlier_run_wrote";
    skip_if!(test, skip::missing_root());
    let dir =
        PinDir(std::path::PathBuf::from("/sys/fs/bpf").join(netwarp_tests::unique_name("nwa")));
    let (bridge, warp, target, slot) = (900_001, 900_002, 900_003, 900_004);
    let mac = [2, 0, 0, 0, 0, 1];
    let entries = Entry::all(&parse_rules("203.0.113.0/24").unwrap(), Action::Block);
    let rows = compile(&entries, false).unwrap();
    let allow = |last: u8| {
        let mut addr = [0; 16];
        addr[..4].copy_from_slice(&[172, 20, 0, last]);
        GuardAllowKey {
            bridge_ifindex: bridge,
            kind: GUARD_ALLOW_IPV4,
            addr,
        }
    };
    let peer = (warp_peer_key(warp, "172.20.0.3".parse().unwrap()), target);
    {
        let mut first = EbpfDataplane::load_pinned(&dir.0).expect("the first load");
        first.set_policy(target, warp, mac, &rows).expect("policy");
        first
            .set_guard(bridge, &rows, &[allow(3), allow(4)].into())
            .expect("guard");
        first.put_warp_peers(&[peer]).expect("peers");
        first
            .set_caps(slot, &[target], RateBuckets::default())
            .expect("caps");
    }
    let mut second = EbpfDataplane::load_pinned(&dir.0).expect("the second load");
    let live = second
        .policy(target)
        .unwrap()
        .expect("the pinned policy")
        .rule_set;
    assert!(
        second.policy_is(target, warp, mac, &rows).unwrap(),
        "the policy an earlier run wrote is not recognised"
    );
    assert_eq!(second.cap_slots().unwrap(), [(target, slot)].into());
    // Writes diff against the adopted rows: the dropped source goes.
    second
        .set_guard(bridge, &rows, &[allow(3)].into())
        .expect("rewriting the guard");
    assert_eq!(second.guard_allowed(bridge).unwrap(), [allow(3)].into());
    assert_eq!(second.retain_warp_peers(&Default::default()).unwrap(), 1);
    assert!(second.warp_peers().unwrap().is_empty());
    second.remove_caps(&[target]).expect("uncapping");
    assert_eq!(second.rate_buckets_of(slot).unwrap(), None);
    second.remove_policy(target).expect("removing the policy");
    assert_eq!(second.installed_rule_set(live).unwrap(), []);
    second.remove_guard(bridge).expect("removing the guard");
    assert!(second.guard_allowed(bridge).unwrap().is_empty());
    assert!(second.guard_ifindexes().unwrap().is_empty());
}

/// Targets with the same rows read one rule set, written once; a target
/// whose rows change moves to a set of its own, and a set goes with its
/// last user, across a restart too. Only maps: nothing is attached.
#[test]
fn targets_with_the_same_rows_share_one_rule_set() {
    let test = "targets_with_the_same_rows_share_one_rule_set";
    skip_if!(test, skip::missing_root());
    let dir =
        PinDir(std::path::PathBuf::from("/sys/fs/bpf").join(netwarp_tests::unique_name("nws")));
    let (a, b, c, warp) = (900_021, 900_022, 900_023, 900_024);
    let mac = [2, 0, 0, 0, 0, 1];
    let global = block_rows(0, 50);
    let other = block_rows(100, 20);
    let v4_rows = |dataplane: &EbpfDataplane| dataplane.map_use(0, 0)[0].1;
    let set_of = |dataplane: &mut EbpfDataplane, target: u32| {
        dataplane
            .policy(target)
            .unwrap()
            .expect("a policy")
            .rule_set
    };
    let shared = {
        let mut first = EbpfDataplane::load_pinned(&dir.0).expect("the first load");
        for target in [a, b, c] {
            first
                .set_policy(target, warp, mac, &global)
                .expect("policy");
        }
        let shared = set_of(&mut first, a);
        assert_eq!(set_of(&mut first, b), shared);
        assert_eq!(set_of(&mut first, c), shared);
        assert_eq!(v4_rows(&first), global.len(), "three targets, one set");
        // c's rules change: its own set; a and b keep theirs untouched.
        first
            .set_policy(c, warp, mac, &other)
            .expect("c's new rules");
        assert_ne!(set_of(&mut first, c), shared);
        assert_eq!(set_of(&mut first, a), shared);
        assert_eq!(v4_rows(&first), global.len() + other.len());
        // Only the warp changes: the same set, still one use.
        first
            .set_policy(b, warp + 1, mac, &global)
            .expect("b's new warp");
        assert_eq!(set_of(&mut first, b), shared);
        shared
    };
    let mut second = EbpfDataplane::load_pinned(&dir.0).expect("the second load");
    assert!(second.policy_is(a, warp, mac, &global).unwrap());
    second.remove_policy(a).expect("removing a");
    assert_eq!(
        second.installed_rule_set(shared).unwrap().len(),
        global.len(),
        "b still reads the shared set"
    );
    // c moves back to the global rules: it joins the adopted set.
    second.set_policy(c, warp, mac, &global).expect("c back");
    assert_eq!(set_of(&mut second, c), shared);
    assert_eq!(v4_rows(&second), global.len(), "c's own set went");
    second.remove_policy(b).expect("removing b");
    second.remove_policy(c).expect("removing c");
    assert_eq!(second.installed_rule_set(shared).unwrap(), []);
    assert_eq!(v4_rows(&second), 0, "no rows left");
}

/// `count` /32 rows in 10.0.0.0/8 from `first` on, all blocking.
fn block_rows(first: u32, count: u32) -> Vec<netwarp::dataplane::ebpf::compile::CompiledPrefix> {
    use netwarp::{
        dataplane::ebpf::compile::{CompiledPrefix, compile},
        model::{Cidr, parse_rules},
        plan::{Action, Entry},
    };
    let block = Entry::all(&parse_rules("203.0.113.0/24").unwrap(), Action::Block);
    let value = compile(&block, false).unwrap()[0].value;
    (0..count)
        .map(|i| CompiledPrefix {
            destination: Cidr::new(std::net::Ipv4Addr::from(0x0a00_0000 + first + i).into(), 32)
                .unwrap(),
            value,
        })
        .collect()
}

/// A policy that does not fit the rules map fails as `map_full`, leaves
/// every live policy as it was (its half-written set is inert), and is
/// finished once there is room; every write and removal can be repeated.
#[test]
fn a_full_rules_map_fails_inert_and_the_write_converges_later() {
    use netwarp::dataplane::sync::{FailureReason, TargetError};
    use netwarp_common::RULES_MAP_CAPACITY;
    let test = "a_full_rules_map_fails_inert_and_the_write_converges_later";
    skip_if!(test, skip::missing_root());
    // Private maps: nothing attached, the ifindexes are only keys.
    let mut dataplane = EbpfDataplane::load().expect("loading the programs");
    let (heavy, ordinary, mac) = (900_011, 900_012, [2, 0, 0, 0, 0, 1]);
    let heavy_rows = block_rows(0, RULES_MAP_CAPACITY - 1_000);
    let rows = block_rows(RULES_MAP_CAPACITY, 4_000);
    dataplane
        .set_policy(heavy, 0, mac, &heavy_rows)
        .expect("the heavy policy fits");
    let full = dataplane
        .set_policy(ordinary, 0, mac, &rows)
        .expect_err("the rules map is full");
    assert_eq!(
        TargetError::from(full).reason(),
        FailureReason::MapFull,
        "a full map is told apart from other map errors"
    );
    assert_eq!(
        dataplane.policy(ordinary).unwrap(),
        None,
        "the half-written set never went live"
    );
    let live = dataplane
        .policy(heavy)
        .unwrap()
        .expect("heavy's policy")
        .rule_set;
    assert_eq!(
        dataplane.installed_rule_set(live).unwrap().len(),
        heavy_rows.len()
    );
    // Room again: the same write now completes, and repeats as a no-op.
    dataplane
        .remove_policy(heavy)
        .expect("removing the heavy policy");
    dataplane
        .remove_policy(heavy)
        .expect("removing it again is done");
    assert_eq!(dataplane.installed_rule_set(live).unwrap(), []);
    for attempt in 0..2 {
        dataplane
            .set_policy(ordinary, 0, mac, &rows)
            .unwrap_or_else(|e| panic!("attempt {attempt}: {e}"));
        let live = dataplane.policy(ordinary).unwrap().expect("live").rule_set;
        let mut want = rows.clone();
        want.sort_by_key(|r| r.destination);
        assert_eq!(dataplane.installed_rule_set(live).unwrap(), want);
        assert_eq!(
            dataplane.map_use(0, 0)[0].1,
            rows.len(),
            "no rows but the live set's are left"
        );
    }
    assert!(dataplane.policy_is(ordinary, 0, mac, &rows).unwrap());
}

/// A link pinned under netwarp's pin directory after its load (by another
/// attempt or run) is adopted when it attaches there, not attached a
/// second time beside it (which would fail to pin, every pass).
#[test]
fn a_pin_made_after_the_load_is_adopted_not_attached_twice() {
    use netwarp_tests::netns::{EnteredNetns, Netns, Veth};
    let test = "a_pin_made_after_the_load_is_adopted_not_attached_twice";
    skip_if!(test, skip::missing_root());
    let host = EnteredNetns::enter("nwpa").expect("entering a test netns");
    let peer = Netns::create("nwpp").expect("peer netns");
    let veth = Veth::create(&peer).expect("veth");
    veth.address(&peer, "10.251.7.1/30", "10.251.7.2/30")
        .expect("addresses");
    let ifindex = veth.host_ifindex().expect("ifindex");
    let dir =
        PinDir(std::path::PathBuf::from("/sys/fs/bpf").join(netwarp_tests::unique_name("nwk")));
    let mut late = EbpfDataplane::load_pinned(&dir.0).expect("the first load");
    {
        // Another instance attaches and pins after `late` loaded.
        let mut early = EbpfDataplane::load_pinned(&dir.0).expect("the second load");
        early.attach_ifindex(ifindex).expect("attaching");
    }
    let attached = tcx_programs(&veth.host);
    assert_eq!(
        attached.len(),
        1,
        "uncapped: the from-container program only: {attached:?}"
    );
    late.attach_ifindex(ifindex)
        .expect("attaching where a pin exists adopts it");
    late.attach_ifindex(ifindex)
        .expect("attaching twice is a no-op");
    let adopted = tcx_programs(&veth.host);
    assert_eq!(
        adopted.len(),
        1,
        "nothing attached beside the pin: {adopted:?}"
    );
    late.detach_ifindex(ifindex).expect("detaching");
    late.detach_ifindex(ifindex)
        .expect("detaching again is done");
    // A link whose last reference was its pin is freed by the kernel
    // after the unlink (RCU, then a work queue).
    assert!(
        eventually(Duration::from_secs(5), || tcx_programs(&veth.host)
            .is_empty()),
        "the adopted link went with it: {:?}",
        tcx_programs(&veth.host)
    );
    drop(late);
    drop(veth);
    drop(peer);
    drop(host);
}

/// A pinned link outlives its interface, detached. Found under the pin
/// name of a live interface (its ifindex reused), it is dropped and the
/// programs attached anew, never adopted as if it still ran (fail open).
#[test]
fn a_pinned_link_of_a_vanished_interface_is_not_adopted() {
    use netwarp_tests::netns::{EnteredNetns, Netns, Veth};
    let test = "a_pinned_link_of_a_vanished_interface_is_not_adopted";
    skip_if!(test, skip::missing_root());
    let host = EnteredNetns::enter("nwva").expect("entering a test netns");
    let peer = Netns::create("nwvp").expect("peer netns");
    let gone = Veth::create(&peer).expect("veth");
    let live = Veth::create(&peer).expect("veth");
    live.address(&peer, "10.251.8.1/30", "10.251.8.2/30")
        .expect("addresses");
    let (gone_ifindex, ifindex) = (gone.host_ifindex().unwrap(), live.host_ifindex().unwrap());
    let dir =
        PinDir(std::path::PathBuf::from("/sys/fs/bpf").join(netwarp_tests::unique_name("nwv")));
    let mut dataplane = EbpfDataplane::load_pinned(&dir.0).expect("the load");
    {
        let mut other = EbpfDataplane::load_pinned(&dir.0).expect("another load");
        other.attach_ifindex(gone_ifindex).expect("attaching");
    }
    drop(gone);
    // Its pins now stand where the live interface's would.
    let links = dir.0.join("links");
    for entry in std::fs::read_dir(&links).expect("the links") {
        let name = entry.expect("an entry").file_name().into_string().unwrap();
        let suffix = name
            .strip_prefix(&format!("{gone_ifindex}-"))
            .expect("only the vanished interface's pins");
        std::fs::rename(links.join(&name), links.join(format!("{ifindex}-{suffix}")))
            .expect("moving the pin");
    }
    assert_eq!(tcx_programs(&live.host), [], "nothing runs there yet");
    dataplane.attach_ifindex(ifindex).expect("attaching");
    let attached = tcx_programs(&live.host);
    assert_eq!(
        attached.len(),
        1,
        "uncapped: the from-container program only: {attached:?}"
    );
    dataplane.detach_ifindex(ifindex).expect("detaching");
    drop(dataplane);
    drop(live);
    drop(peer);
    drop(host);
}

/// A restart with another `dataplane.ebpf_rules_capacity` recreates the
/// pinned rule tries at the new size, and the rows an earlier run wrote
/// are carried into them: the live policy keeps its rows throughout.
#[test]
fn a_restart_resizes_the_rule_tries_and_carries_their_rows() {
    use netwarp::{
        dataplane::ebpf::compile::compile,
        model::parse_rules,
        plan::{Action, Entry},
    };
    let test = "a_restart_resizes_the_rule_tries_and_carries_their_rows";
    skip_if!(test, skip::missing_root());
    let dir =
        PinDir(std::path::PathBuf::from("/sys/fs/bpf").join(netwarp_tests::unique_name("nwr")));
    let (warp, target) = (900_012, 900_013);
    let mac = [2, 0, 0, 0, 0, 2];
    let rules = "203.0.113.0/24,198.51.100.0/24,2001:db8::/32";
    let entries = Entry::all(&parse_rules(rules).unwrap(), Action::Block);
    let rows = compile(&entries, false).unwrap();
    let capacity = |name: &str| {
        aya::maps::MapInfo::from_pin(dir.0.join(name))
            .expect("a pinned trie")
            .max_entries()
    };
    {
        let mut first = EbpfDataplane::load_pinned_logging(&dir.0, false, 1024).expect("load");
        assert_eq!(first.rules_capacity(), (1024, 1024));
        first.set_policy(target, warp, mac, &rows).expect("policy");
    }
    assert_eq!(capacity(netwarp_common::RULES_V4_MAP), 1024);
    let mut second =
        EbpfDataplane::load_pinned_logging(&dir.0, false, 4096).expect("the resizing load");
    assert_eq!(second.rules_capacity(), (4096, 4096));
    assert_eq!(capacity(netwarp_common::RULES_V4_MAP), 4096);
    assert_eq!(capacity(netwarp_common::RULES_V6_MAP), 4096);
    let live = second.policy(target).unwrap().expect("the policy").rule_set;
    let mut sorted = rows.clone();
    sorted.sort_by_key(|r| r.destination);
    assert_eq!(
        second.installed_rule_set(live).unwrap(),
        sorted,
        "the rows did not survive the resize"
    );
    let used: Vec<(&str, usize)> = (second.map_use(1, 0).into_iter())
        .filter(|(map, _, _)| map.starts_with("NETWARP_RULES"))
        .map(|(map, entries, _)| (map, entries))
        .collect();
    assert_eq!(used, [("NETWARP_RULES_V4", 2), ("NETWARP_RULES_V6", 1)]);
    drop(second);
    // Too small for the live rows and a switch of the largest set (2 + 2):
    // refused, naming the fix, before anything is unpinned.
    let error = EbpfDataplane::load_pinned_logging(&dir.0, false, 3)
        .err()
        .expect("a trie too small for the pinned rows is refused");
    let message = error.to_string();
    assert!(
        message.contains("holds 2 rows") && message.contains("at least 4"),
        "{message}"
    );
    assert_eq!(capacity(netwarp_common::RULES_V4_MAP), 4096);
    let mut third = EbpfDataplane::load_pinned_logging(&dir.0, false, 4096).expect("load");
    assert_eq!(
        third.installed_rule_set(live).unwrap(),
        sorted,
        "the refused resize changed the rows"
    );
    third.remove_policy(target).expect("removing the policy");
}

/// Rule rows an earlier release wrote with one action per row (its
/// `any_protocol` flag in what is now padding, selectors without actions)
/// are carried into a new trie in this layout at load, making the same
/// decisions: the live policy never reads them in the wrong layout.
#[test]
fn rule_rows_of_the_single_action_layout_are_carried_in_this_layout() {
    use aya::maps::{LpmTrie, Map, MapData};
    use netwarp::{
        dataplane::ebpf::compile::compile,
        model::parse_rules,
        plan::{Action, Entry},
    };
    use netwarp_common::{RULES_V4_MAP, RuleKeyV4, RuleValue};
    let test = "rule_rows_of_the_single_action_layout_are_carried_in_this_layout";
    skip_if!(test, skip::missing_root());
    let dir =
        PinDir(std::path::PathBuf::from("/sys/fs/bpf").join(netwarp_tests::unique_name("nwl")));
    let (warp, target) = (900_014, 900_015);
    let via = Action::Via("172.20.0.2".parse().unwrap());
    let mut entries = Entry::all(&parse_rules("203.0.113.0/24").unwrap(), via);
    entries.extend(Entry::all(
        &parse_rules("198.51.100.0/24,tcp:443,udp:53").unwrap(),
        Action::Block,
    ));
    let mut rows = compile(&entries, true).unwrap();
    rows.sort_by_key(|r| r.destination);
    let live = {
        let mut first = EbpfDataplane::load_pinned_logging(&dir.0, false, 1024).expect("load");
        first
            .set_policy(target, warp, [2, 0, 0, 0, 0, 2], &rows)
            .expect("policy");
        first.policy(target).unwrap().expect("the policy").rule_set
    };
    // Rewrite the pinned rows as the earlier release wrote them.
    let pin = dir.0.join(RULES_V4_MAP);
    let mut trie: LpmTrie<MapData, RuleKeyV4, RuleValue> = MapData::from_pin(&pin)
        .and_then(Map::from_map_data)
        .and_then(LpmTrie::try_from)
        .expect("the pinned v4 trie");
    let pinned: Vec<_> = trie.iter().map(|row| row.expect("a row")).collect();
    assert_eq!(pinned.len(), 2);
    for (key, value) in pinned {
        let mut old = value;
        if value.selector_count == 0 {
            old._pad = 1;
        } else {
            old.default_action = value.selectors[0].action;
            for selector in &mut old.selectors {
                selector.action = 0;
            }
        }
        trie.insert(&key, old, 0).expect("rewriting a row");
    }
    drop(trie);
    let mut second = EbpfDataplane::load_pinned_logging(&dir.0, false, 1024).expect("reload");
    assert_eq!(
        second.installed_rule_set(live).unwrap(),
        rows,
        "the rows were not carried in this layout"
    );
    second.remove_policy(target).expect("removing the policy");
}

/// An earlier release's pinned policy and rate slot rows are carried into
/// the state rows at load and their pins retired: its targets stay steered
/// and capped from the first packet the new programs see.
#[test]
fn rows_pinned_by_an_earlier_release_are_carried_into_the_state_rows() {
    use aya::maps::{HashMap as BpfHashMap, Map, MapData};
    use netwarp_common::{RETIRED_POLICY_MAP, RETIRED_RATE_SLOTS_MAP, TargetPolicy};
    let test = "rows_pinned_by_an_earlier_release_are_carried_into_the_state_rows";
    skip_if!(test, skip::missing_root());
    let dir =
        PinDir(std::path::PathBuf::from("/sys/fs/bpf").join(netwarp_tests::unique_name("nwc")));
    std::fs::create_dir_all(&dir.0).expect("pin dir");
    let (policies, slots) = (
        dir.0.join(RETIRED_POLICY_MAP),
        dir.0.join(RETIRED_RATE_SLOTS_MAP),
    );
    pin_hash_map(&policies, 4, std::mem::size_of::<TargetPolicy>() as u32);
    pin_hash_map(&slots, 4, 4);
    let open = |path: &std::path::Path| {
        Map::from_map_data(MapData::from_pin(path).expect("the pin")).expect("a map")
    };
    let policy = TargetPolicy {
        rule_set: 7,
        warp_ifindex: 3,
        warp_mac: [2, 0, 0, 0, 0, 1],
        _pad: [0; 2],
    };
    // One ifindex in the state array, one beyond it.
    let (low, high) = (5u32, netwarp_common::IFACE_ARRAY_SIZE + 5);
    let mut old_policies: BpfHashMap<_, u32, TargetPolicy> =
        BpfHashMap::try_from(open(&policies)).expect("the policy map");
    old_policies.insert(low, policy, 0).expect("a policy row");
    old_policies.insert(high, policy, 0).expect("a policy row");
    let mut old_slots: BpfHashMap<_, u32, u32> =
        BpfHashMap::try_from(open(&slots)).expect("the slot map");
    old_slots.insert(low, 9, 0).expect("a slot row");
    drop((old_policies, old_slots));

    let mut dataplane = EbpfDataplane::load_pinned(&dir.0).expect("loading over the old pins");
    assert_eq!(dataplane.policy(low).unwrap(), Some(policy));
    assert_eq!(dataplane.policy(high).unwrap(), Some(policy));
    assert_eq!(
        dataplane.cap_slots().unwrap(),
        std::collections::HashMap::from([(low, 9)])
    );
    assert!(
        !policies.exists() && !slots.exists(),
        "the retired pins are removed"
    );
    drop(dataplane);
}

/// The to-container program hangs on a target's veth only while a cap
/// limits what the container receives (its only work), and goes with
/// that cap; every step is idempotent.
#[test]
fn the_to_container_program_follows_the_ingress_cap() {
    use netwarp_common::{RateBuckets, TokenBucket};
    use netwarp_tests::netns::{EnteredNetns, Netns, Veth};
    let test = "the_to_container_program_follows_the_ingress_cap";
    skip_if!(test, skip::missing_root());
    let host = EnteredNetns::enter("nwia").expect("entering a test netns");
    let peer = Netns::create("nwip").expect("peer netns");
    let veth = Veth::create(&peer).expect("veth");
    let ifindex = veth.host_ifindex().expect("ifindex");
    let mut dataplane = EbpfDataplane::load().expect("loading");
    let directions = || {
        let mut d: Vec<&str> = (tcx_programs(&veth.host).into_iter())
            .map(|(direction, _)| direction)
            .collect();
        d.sort();
        d
    };
    let cap = TokenBucket::new(1_000_000, 10_000);
    let ingress = RateBuckets {
        egress: TokenBucket::default(),
        ingress: cap,
    };
    let egress_only = RateBuckets {
        egress: cap,
        ingress: TokenBucket::default(),
    };
    dataplane.attach_ifindex(ifindex).expect("attaching");
    assert_eq!(directions(), ["Ingress"], "uncapped");
    for _ in 0..2 {
        (dataplane.set_caps(1, &[ifindex], ingress)).expect("an ingress cap");
        dataplane.attach_ifindex(ifindex).expect("attaching again");
        assert_eq!(directions(), ["Egress", "Ingress"], "ingress capped");
    }
    // A detached link goes when its last reference does: another process
    // listing the system's links (bpftool, a parallel test) may hold one
    // for a moment, so removals are awaited, boundedly.
    let only_ingress = || eventually(Duration::from_secs(5), || directions() == ["Ingress"]);
    (dataplane.set_caps(1, &[ifindex], egress_only)).expect("an egress cap");
    assert!(only_ingress(), "only egress capped: {:?}", directions());
    (dataplane.set_caps(1, &[ifindex], ingress)).expect("an ingress cap");
    assert_eq!(directions(), ["Egress", "Ingress"]);
    for _ in 0..2 {
        dataplane.remove_caps(&[ifindex]).expect("uncapping");
        assert!(only_ingress(), "uncapped again: {:?}", directions());
    }
    dataplane.detach_ifindex(ifindex).expect("detaching");
    assert!(
        eventually(Duration::from_secs(5), || directions().is_empty()),
        "{:?}",
        directions()
    );
    drop(dataplane);
    drop(veth);
    drop(peer);
    drop(host);
}
