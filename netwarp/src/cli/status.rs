//! `netwarp status`: what the running daemon has programmed now.
//!
//! It reads one JSON document from the daemon's control socket
//! (`control.socket`; see `telemetry::control` for why a socket) and
//! prints it as tables, or as JSON with `--json`.

use std::{
    fmt::Write as _,
    io::Read as _,
    os::unix::net::UnixStream,
    path::Path,
    process::ExitCode,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use anyhow::Context as _;

use crate::telemetry::{
    counters::{Counters, PacketsBytes},
    status::{Caps, StatusDoc, TargetStatus},
};

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    config: super::ConfigArgs,
    /// Print the daemon's JSON document instead of tables.
    #[arg(long)]
    json: bool,
}

/// How long to wait for the daemon's answer.
const TIMEOUT: Duration = Duration::from_secs(15);

pub fn execute(args: Args) -> anyhow::Result<ExitCode> {
    let config = args.config.load()?;
    let raw = fetch(&config.control_socket)?;
    let doc: StatusDoc = serde_json::from_str(&raw).with_context(|| {
        format!(
            "the daemon on {} answered something that is not a status document \
             (is it the same netwarp version?)",
            config.control_socket.display()
        )
    })?;
    if args.json {
        // The daemon's document as sent (fields this CLI does not know included).
        let value: serde_json::Value = serde_json::from_str(&raw)?;
        println!("{}", serde_json::to_string_pretty(&value)?);
    } else {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs_f64();
        print!("{}", render(&doc, now));
    }
    Ok(ExitCode::SUCCESS)
}

/// Reads the daemon's status document from `socket`.
pub fn fetch(socket: &Path) -> anyhow::Result<String> {
    let mut stream = UnixStream::connect(socket).map_err(|e| {
        anyhow::anyhow!(
            "is netwarp running? socket {}: {e} (set control.socket or --control-socket \
             if the daemon uses another)",
            socket.display()
        )
    })?;
    stream.set_read_timeout(Some(TIMEOUT))?;
    let mut raw = String::new();
    stream
        .read_to_string(&mut raw)
        .with_context(|| format!("reading the status from {}", socket.display()))?;
    Ok(raw)
}

/// The status as tables for people. `now` is the Unix time, for "ago".
pub fn render(doc: &StatusDoc, now: f64) -> String {
    let mut out = String::new();
    let last = match (
        doc.reconcile.last_finished_unix_seconds,
        doc.reconcile.last_duration_seconds,
    ) {
        (Some(at), Some(took)) => format!(
            "pass {} {} ago, took {}",
            doc.reconcile.passes,
            duration((now - at).max(0.0)),
            duration(took)
        ),
        _ => "none yet".to_owned(),
    };
    let _ = writeln!(
        out,
        "netwarp {}  dataplane: {}  pid: {}  up: {}",
        doc.netwarp_version,
        doc.mode,
        doc.pid,
        duration(doc.uptime_seconds)
    );
    let _ = writeln!(
        out,
        "docker: {} ({}, {} reconnects)  last reconcile: {last}",
        doc.docker.endpoint,
        if doc.docker.connected {
            "connected"
        } else {
            "DISCONNECTED"
        },
        doc.docker.reconnects
    );
    if let Some(reload) = &doc.config.last_reload {
        if let Some(error) = &reload.error {
            let _ = writeln!(
                out,
                "config: the last reload was REJECTED (running configuration kept): {error}"
            );
        } else if !reload.needs_restart.is_empty() {
            let _ = writeln!(
                out,
                "config: changed but only applied at restart: {}",
                reload.needs_restart.join(", ")
            );
        }
    }
    let _ = writeln!(
        out,
        "metrics: {}",
        doc.metrics_listen
            .as_deref()
            .map_or("off".to_owned(), |a| format!("http://{a}/metrics"))
    );

    if let Some(guard) = &doc.host_guard {
        let _ = writeln!(
            out,
            "host guard: {} rules, {} tables, {} routes",
            guard.rules, guard.tables, guard.routes
        );
    }

    let _ = writeln!(out, "\nWARPS ({})", doc.warps.len());
    let rows: Vec<Vec<String>> = doc
        .warps
        .iter()
        .map(|w| {
            vec![
                w.name.clone(),
                w.id.clone().unwrap_or_else(|| "-".into()),
                w.state.clone(),
                w.targets.to_string(),
                w.untunnelled_drops
                    .map_or_else(|| "-".into(), |d| format!("{} pkts", d.packets)),
            ]
        })
        .collect();
    // A warp that forwarded its targets' traffic untunnelled has no kill
    // switch of its own: netwarp dropped those packets on its veths.
    table(
        &mut out,
        &["NAME", "ID", "STATE", "TARGETS", "UNTUNNELLED DROPS"],
        &rows,
    );

    let _ = writeln!(out, "\nTARGETS ({})", doc.targets.len());
    let rows: Vec<Vec<String>> = doc
        .targets
        .iter()
        .map(|t| {
            vec![
                t.name.clone(),
                t.id.clone(),
                // A spread target: every member carrying its flows.
                if t.spread.is_empty() {
                    t.warp.clone()
                } else {
                    t.spread.join("+")
                },
                t.state.clone(),
                next_hop(t),
                t.counters.map_or("-".into(), |c| traffic(c.tx)),
                t.counters.map_or("-".into(), |c| traffic(c.rx)),
            ]
        })
        .collect();
    table(
        &mut out,
        &["NAME", "ID", "WARP", "STATE", "NEXT HOP", "TX", "RX"],
        &rows,
    );
    for target in &doc.targets {
        details(&mut out, target);
    }
    if !doc.maps.is_empty() {
        let _ = writeln!(out, "\nMAPS ({})", doc.maps.len());
        let rows: Vec<Vec<String>> = (doc.maps.iter())
            .map(|m| {
                let percent = 100.0 * m.entries as f64 / m.capacity.max(1) as f64;
                let used = format!("{percent:.1}%");
                vec![
                    m.map.clone(),
                    m.entries.to_string(),
                    m.capacity.to_string(),
                    used,
                ]
            })
            .collect();
        table(&mut out, &["MAP", "ENTRIES", "CAPACITY", "USED"], &rows);
    }
    out
}

fn details(out: &mut String, t: &TargetStatus) {
    let _ = writeln!(out, "\n{} ({}):", t.name, t.id);
    let planned = t.planned_state.as_deref().unwrap_or(&t.state);
    if let Some(reason) = &t.reason {
        let _ = writeln!(out, "  {planned}: {reason}");
    }
    if let Some(error) = &t.error {
        let reason = t.failure_reason.as_deref().unwrap_or("error");
        let _ = writeln!(out, "  failed ({reason}), planned {planned}: {error}");
        let held = match t.held_closed {
            Some(true) => "yes, by the bridge guards in place",
            _ => "unknown",
        };
        let _ = writeln!(out, "  traffic held closed meanwhile: {held}");
    }
    if t.rules.is_empty() {
        let _ = writeln!(out, "  rules: none");
    }
    for rule in &t.rules {
        let _ = writeln!(out, "  rule {} -> {}", rule.rule, rule.action);
    }
    if !t.excluded.is_empty() {
        let _ = writeln!(out, "  own networks excluded: {}", t.excluded.join(", "));
    }
    let _ = writeln!(out, "  caps: {}", caps(&t.caps));
    if let Some(routed) = &t.routed {
        let _ = writeln!(out, "  routes instead of eBPF: {routed}");
    }
    if let Some(ifindex) = t.host_ifindex {
        let _ = writeln!(
            out,
            "  host veth: {} (ifindex {ifindex}){}",
            t.host_interface.as_deref().unwrap_or("?"),
            t.warp_ifindex
                .map_or(String::new(), |w| format!(", warp veth ifindex {w}"))
        );
    }
    if let Some(Counters {
        steered, dropped, ..
    }) = t.counters
    {
        if let Some(steered) = steered {
            let _ = writeln!(out, "  steered: {}", traffic(steered));
        }
        if let Some(d) = dropped {
            let _ = writeln!(
                out,
                "  dropped: warp_down {}, policy {}, rate {}, rule {}",
                traffic(d.warp_down),
                traffic(d.policy),
                traffic(d.rate),
                traffic(d.rule)
            );
        }
    }
}

fn next_hop(t: &TargetStatus) -> String {
    let hops: Vec<&str> = [t.next_hop_v4.as_deref(), t.next_hop_v6.as_deref()]
        .into_iter()
        .flatten()
        .collect();
    if hops.is_empty() {
        "-".into()
    } else {
        hops.join(", ")
    }
}

fn caps(caps: &Caps) -> String {
    let mut parts = Vec::new();
    if let Some(bps) = caps.egress_bits_per_second {
        parts.push(format!("egress {}", rate(bps)));
    }
    if let Some(bps) = caps.ingress_bits_per_second {
        parts.push(format!("ingress {}", rate(bps)));
    }
    if let Some(burst) = caps.burst_bytes {
        parts.push(format!("burst {}", bytes(burst)));
    }
    if parts.is_empty() {
        "none".into()
    } else {
        parts.join(", ")
    }
}

fn rate(bits_per_second: u64) -> String {
    let b = bits_per_second as f64;
    if b >= 1e9 {
        format!("{:.1} Gbit/s", b / 1e9)
    } else if b >= 1e6 {
        format!("{:.1} Mbit/s", b / 1e6)
    } else if b >= 1e3 {
        format!("{:.1} kbit/s", b / 1e3)
    } else {
        format!("{bits_per_second} bit/s")
    }
}

fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

fn traffic(pb: PacketsBytes) -> String {
    format!("{} / {} pkts", bytes(pb.bytes), pb.packets)
}

fn duration(seconds: f64) -> String {
    if seconds < 1.0 {
        format!("{:.0}ms", seconds * 1e3)
    } else if seconds < 120.0 {
        format!("{seconds:.1}s")
    } else if seconds < 7200.0 {
        format!("{:.0}m", seconds / 60.0)
    } else {
        format!("{:.1}h", seconds / 3600.0)
    }
}

/// Left-aligned columns, two spaces apart; "(none)" for no rows.
fn table(out: &mut String, header: &[&str], rows: &[Vec<String>]) {
    if rows.is_empty() {
        let _ = writeln!(out, "(none)");
        return;
    }
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut line = |cells: Vec<&str>| {
        let mut text = String::new();
        for (i, (cell, w)) in cells.iter().zip(&widths).enumerate() {
            if i + 1 == cells.len() {
                text.push_str(cell);
            } else {
                let _ = write!(text, "{cell:<w$}  ");
            }
        }
        let _ = writeln!(out, "{}", text.trim_end());
    };
    line(header.to_vec());
    for row in rows {
        line(row.iter().map(String::as_str).collect());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::telemetry::{
        counters::Drops,
        status::{
            DockerStatus, HostGuardStatus, MapStatus, ReconcileStatus, RuleStatus, WarpStatus,
        },
    };

    fn doc() -> StatusDoc {
        let pb = |packets, bytes| PacketsBytes { packets, bytes };
        StatusDoc {
            format_version: 1,
            netwarp_version: "0.1.0".into(),
            mode: "ebpf".into(),
            pid: 42,
            uptime_seconds: 75.0,
            docker: DockerStatus {
                endpoint: "unix:///var/run/docker.sock".into(),
                connected: true,
                reconnects: 1,
            },
            metrics_listen: Some("127.0.0.1:9477".into()),
            control_socket: "/run/netwarp/netwarp.sock".into(),
            reconcile: ReconcileStatus {
                passes: 7,
                last_finished_unix_seconds: Some(1000.0),
                last_duration_seconds: Some(0.012),
            },
            config: Default::default(),
            warps: vec![WarpStatus {
                name: "warp-vpn".into(),
                id: Some("0123456789ab".into()),
                up: true,
                state: "up".into(),
                targets: 2,
                untunnelled_drops: Some(PacketsBytes {
                    packets: 3,
                    bytes: 294,
                }),
                probe: None,
            }],
            targets: vec![
                TargetStatus {
                    warp_group: Vec::new(),
                    group_mode: None,
                    spread: Vec::new(),
                    name: "app".into(),
                    id: "aaaaaaaaaaaa".into(),
                    warp: "warp-vpn".into(),
                    state: "steered".into(),
                    planned_state: Some("steered".into()),
                    reason: None,
                    reason_kind: None,
                    excluded: Vec::new(),
                    shares_namespace_of: None,
                    network: Some("front".into()),
                    next_hop_v4: Some("172.18.0.2".into()),
                    next_hop_v6: None,
                    rules: vec![RuleStatus {
                        rule: "203.0.113.0/24".into(),
                        action: "via 172.18.0.2".into(),
                    }],
                    caps: Caps {
                        egress_bits_per_second: Some(10_000_000),
                        ingress_bits_per_second: None,
                        burst_bytes: Some(65536),
                        egress_burst_bytes: Some(65536),
                        ingress_burst_bytes: None,
                    },
                    error: None,
                    routed: None,
                    failure_reason: None,
                    held_closed: None,
                    host_ifindex: Some(17),
                    host_interface: Some("veth1234".into()),
                    warp_ifindex: Some(15),
                    counters: Some(Counters {
                        tx: pb(10, 2048),
                        rx: pb(3, 300),
                        steered: Some(pb(4, 400)),
                        dropped: Some(Drops::default()),
                        shaper_drops: None,
                    }),
                },
                TargetStatus {
                    warp_group: Vec::new(),
                    group_mode: None,
                    spread: Vec::new(),
                    name: "db".into(),
                    id: "bbbbbbbbbbbb".into(),
                    warp: "warp-gone".into(),
                    state: "failed".into(),
                    planned_state: Some("blocked".into()),
                    reason: Some("warp container warp-gone does not exist".into()),
                    reason_kind: Some("warp".into()),
                    excluded: Vec::new(),
                    shares_namespace_of: None,
                    network: None,
                    next_hop_v4: None,
                    next_hop_v6: None,
                    rules: Vec::new(),
                    caps: Caps::default(),
                    error: Some("map `policy`: no room".into()),
                    routed: None,
                    failure_reason: Some("map_full".into()),
                    held_closed: Some(true),
                    host_ifindex: None,
                    host_interface: None,
                    warp_ifindex: None,
                    counters: None,
                },
            ],
            host_guard: None,
            maps: Vec::new(),
        }
    }

    #[test]
    fn routes_mode_shows_what_the_host_guard_holds() {
        let mut doc = doc();
        doc.mode = "routes".into();
        doc.host_guard = Some(HostGuardStatus {
            rules: 4,
            tables: 2,
            routes: 6002,
        });
        let text = render(&doc, 1002.5);
        assert!(
            text.contains("\nhost guard: 4 rules, 2 tables, 6002 routes\n"),
            "{text}"
        );
        let json = serde_json::to_value(&doc).unwrap();
        assert_eq!(json["host_guard"]["rules"], 4);
        // Older daemons send no host_guard.
        let mut old = json.clone();
        old.as_object_mut().unwrap().remove("host_guard");
        let parsed: StatusDoc = serde_json::from_value(old).unwrap();
        assert_eq!(parsed.host_guard, None);
    }

    #[test]
    fn names_the_last_reloads_pending_keys_or_its_error() {
        use crate::telemetry::status::ReloadStatus;
        let mut doc = doc();
        let reload = |needs_restart: &[&str], error: Option<&str>| ReloadStatus {
            unix_seconds: Some(1000.0),
            applied: vec!["docker.target_container_label".into()],
            needs_restart: needs_restart.iter().map(|k| (*k).to_owned()).collect(),
            error: error.map(str::to_owned),
        };
        doc.config.last_reload = Some(reload(&[], None));
        assert!(!render(&doc, 1002.5).contains("config:"));
        doc.config.last_reload = Some(reload(&["dataplane.mode", "metrics.listen"], None));
        let text = render(&doc, 1002.5);
        assert!(
            text.contains(
                "config: changed but only applied at restart: dataplane.mode, metrics.listen\n"
            ),
            "{text}"
        );
        doc.config.last_reload = Some(reload(&[], Some("line 3: expected `=`")));
        let text = render(&doc, 1002.5);
        assert!(
            text.contains("REJECTED") && text.contains("line 3: expected `=`"),
            "{text}"
        );
    }

    #[test]
    fn renders_tables_for_people() {
        let text = render(&doc(), 1002.5);
        let expected = "\
netwarp 0.1.0  dataplane: ebpf  pid: 42  up: 75.0s
docker: unix:///var/run/docker.sock (connected, 1 reconnects)  last reconcile: pass 7 2.5s ago, took 12ms
metrics: http://127.0.0.1:9477/metrics

WARPS (1)
NAME      ID            STATE  TARGETS  UNTUNNELLED DROPS
warp-vpn  0123456789ab  up     2        3 pkts

TARGETS (2)
NAME  ID            WARP       STATE    NEXT HOP    TX                 RX
app   aaaaaaaaaaaa  warp-vpn   steered  172.18.0.2  2.0 KiB / 10 pkts  300 B / 3 pkts
db    bbbbbbbbbbbb  warp-gone  failed   -           -                  -

app (aaaaaaaaaaaa):
  rule 203.0.113.0/24 -> via 172.18.0.2
  caps: egress 10.0 Mbit/s, burst 64.0 KiB
  host veth: veth1234 (ifindex 17), warp veth ifindex 15
  steered: 400 B / 4 pkts
  dropped: warp_down 0 B / 0 pkts, policy 0 B / 0 pkts, rate 0 B / 0 pkts, rule 0 B / 0 pkts

db (bbbbbbbbbbbb):
  blocked: warp container warp-gone does not exist
  failed (map_full), planned blocked: map `policy`: no room
  traffic held closed meanwhile: yes, by the bridge guards in place
  rules: none
  caps: none
";
        assert_eq!(text, expected, "got:\n{text}");
    }

    #[test]
    fn map_use_is_listed_in_ebpf_mode() {
        let mut doc = doc();
        doc.maps = vec![MapStatus {
            map: "NETWARP_RULES_V4".into(),
            entries: 3,
            capacity: 300,
        }];
        let text = render(&doc, 1002.5);
        let expected = "\nMAPS (1)\nMAP               ENTRIES  CAPACITY  USED\n\
                        NETWARP_RULES_V4  3        300       1.0%\n";
        assert!(text.ends_with(expected), "got:\n{text}");
    }

    #[test]
    fn the_document_round_trips_through_json() {
        let json = serde_json::to_string(&doc()).unwrap();
        let back: StatusDoc = serde_json::from_str(&json).unwrap();
        assert_eq!(back, doc());
    }

    #[test]
    fn a_missing_daemon_is_named() {
        let error = fetch(Path::new("/nonexistent/netwarp.sock")).unwrap_err();
        let message = error.to_string();
        assert!(
            message.starts_with("is netwarp running? socket /nonexistent/netwarp.sock: "),
            "{message}"
        );
    }
}
