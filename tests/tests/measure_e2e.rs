//! One-run measurements for the closing notes: single-stream TCP
//! throughput from a target to its warp (unsteered, routes, ebpf) and the
//! per-packet cost of each eBPF program from the kernel's bpf stats. It
//! prints the figures and asserts only that they were measured: these
//! machines are noisy, so no test asserts a speed.

use std::time::Duration;

use netwarp_tests::{
    daemon::{Daemon, TestLabels, eventually},
    docker::{Container, DockerNetwork, HOST_TOOLS},
    iperf::IperfRun,
    skip, skip_if,
    steering::{GLOBAL_RULES, REMOTE, reaches, start_warp},
    tcx,
};

const CONVERGE: Duration = Duration::from_secs(15);
const SECONDS: u32 = 3;

/// A bounded single-stream iperf3 run from `client` to `server`; Gbit/s received.
fn throughput(client: &Container, server: &str) -> f64 {
    IperfRun::new(server, 5201, SECONDS)
        .run(client)
        .expect("iperf3")
        .received_bps
        / 1e9
}

#[test]
fn throughput_and_program_cost() {
    let test = "throughput_and_program_cost";
    skip_if!(test, skip::missing_docker());
    let Some(_stats) = tcx::BpfStats::enable() else {
        skip::record(
            test,
            "needs /proc/sys/kernel/bpf_stats_enabled (root, BPF stats)",
        );
        return;
    };
    let labels = TestLabels::unique();
    let network = DockerNetwork::create_internal_steerable("nwe").expect("network");
    let warp = start_warp(&labels.warp_name("gw"), &network, HOST_TOOLS);
    warp.exec_detached(&["timeout", "300", "/usr/bin/iperf3", "--server"])
        .expect("iperf3 server");
    let warp_ip = warp.ipv4(&network).expect("warp ip");
    let mut target_args: Vec<String> = HOST_TOOLS.iter().map(|s| s.to_string()).collect();
    target_args.push("--label".into());
    target_args.push(labels.target_label(&labels.warp_name("gw")));
    let args: Vec<&str> = target_args.iter().map(String::as_str).collect();
    let target = Container::run("nwt", &network, &args, &["sleep", "600"]).expect("target");

    std::thread::sleep(Duration::from_millis(500));
    let unsteered = throughput(&target, &warp_ip);

    let mut results = vec![("unsteered (to the warp's bridge IP)", unsteered)];
    let mut program_costs = Vec::new();
    for mode in ["routes", "ebpf"] {
        let mut daemon = Daemon::start(&labels, mode, GLOBAL_RULES).expect("daemon");
        assert!(
            eventually(CONVERGE, || reaches(&target, 8080)),
            "{mode}: never steered"
        );
        results.push((mode, throughput(&target, REMOTE)));
        if mode == "ebpf" {
            let (_, veth) = target.host_veth().expect("veth");
            for (direction, program) in tcx::tcx_programs(&veth) {
                let runs = program.run_count();
                assert!(runs > 0, "{direction}: the program never ran");
                let ns = program.run_time().as_nanos() as f64 / runs as f64;
                program_costs.push((tcx::program_name(&program), runs, ns));
            }
        }
        daemon.stop_and_clean_up().expect("stop and cleanup");
    }

    println!("single-stream TCP, target -> warp, {SECONDS} s each:");
    for (path, gbps) in &results {
        assert!(*gbps > 0.0, "{path}: no throughput");
        println!(
            "  {path:<38} {gbps:>7.2} Gbit/s  ratio to unsteered {:.3}",
            gbps / unsteered
        );
    }
    assert!(!program_costs.is_empty(), "no eBPF program stats");
    for (name, runs, ns) in &program_costs {
        println!("  program {name:<16} {runs:>9} runs  {ns:>7.1} ns/packet");
    }
    drop(warp);
}
