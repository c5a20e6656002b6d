use netwarp::{model::*, plan::*};
use std::{collections::BTreeMap, time::Instant};
fn main() {
    let ep = |ip: String| Endpoint {
        ipv4: Some(ip.parse().unwrap()),
        ipv6: None,
        mac: Some("02:42:0a:00:00:01".into()),
        network_id: None,
    };
    let mk = |name: String, labels: Vec<(String, String)>, ip: String| Container {
        id: format!("id-{name}"),
        name,
        running: true,
        health: Health::None,
        pid: Some(100),
        labels: labels.into_iter().collect(),
        networks: [("net".to_string(), ep(ip))]
            .into_iter()
            .collect::<BTreeMap<_, _>>(),
        network_mode: NetworkMode::Own,
    };
    let mut cs = vec![mk("warp-vpn".into(), vec![], "172.20.0.2".into())];
    for h in 0..10 {
        let rules: Vec<String> = (0..7000)
            .map(|i| {
                format!(
                    "10.{}.{}.{}/32",
                    202 + (h * 7000 + i) / 65536,
                    ((h * 7000 + i) / 256) % 256,
                    i % 256
                )
            })
            .collect();
        cs.push(mk(
            format!("heavy{h}"),
            vec![
                ("netwarp.target".into(), "warp-vpn".into()),
                ("netwarp.rules".into(), rules.join(",")),
            ],
            format!("172.20.1.{h}"),
        ));
    }
    for o in 0..10 {
        cs.push(mk(
            format!("ord{o}"),
            vec![("netwarp.target".into(), "warp-vpn".into())],
            format!("172.20.2.{o}"),
        ));
    }
    let world = World { containers: cs };
    for cap in [
        None,
        Some(RuleCapacity {
            v4: 262144,
            v6: 262144,
        }),
    ] {
        let settings = PlanSettings {
            warp_name_pattern: "warp-*".into(),
            target_label: "netwarp.target".into(),
            network_label: "netwarp.network".into(),
            rules_label: "netwarp.rules".into(),
            global_rules: parse_rules("10.250.0.0/16").unwrap(),
            on_warp_down: OnWarpDown::Block,
            caps: Default::default(),
            max_prefixes_per_target: 8192,
            rule_capacity: cap,
        };
        for _ in 0..3 {
            let t = Instant::now();
            let p = plan(&world, &settings);
            println!(
                "cap={cap:?} plan {:?} targets={}",
                t.elapsed(),
                p.targets.len()
            );
        }
        let t = Instant::now();
        for c in &world.containers {
            if let Some(v) = c.labels.get("netwarp.rules") {
                parse_rules(v).unwrap();
            }
        }
        println!("parse only {:?}", t.elapsed());
    }
}
