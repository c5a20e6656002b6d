//! The decoder against responses written from Docker's API reference for
//! API 1.41 (Docker 20.10) and 1.52, with the fields netwarp ignores left
//! in, and against values it must refuse.

use super::*;

const LIST_1_41: &str = include_str!("fixtures/list-1.41.json");
const LIST_1_52: &str = include_str!("fixtures/list-1.52.json");
const INSPECT_1_41: &str = include_str!("fixtures/inspect-1.41.json");
const INSPECT_1_52: &str = include_str!("fixtures/inspect-1.52.json");

/// The planner's labels with the default configuration.
fn planner_label(key: &str) -> bool {
    [
        "netwarp.target",
        "netwarp.network",
        "netwarp.rules",
        "netwarp.egress",
        "netwarp.ingress",
        "netwarp.burst",
        "com.docker.swarm.service.name",
    ]
    .contains(&key)
}

fn list(body: &str) -> Result<Vec<(Container, Marker)>, serde_json::Error> {
    let mut out = Vec::new();
    decode_list(body.as_bytes(), |entry| {
        out.extend(entry.into_container(&planner_label))
    })?;
    Ok(out)
}

fn inspect(body: &str) -> Result<Option<Container>, serde_json::Error> {
    let inspect: Inspect = serde_json::from_str(body)?;
    Ok(inspect.into_container(&planner_label))
}

#[test]
fn a_docker_20_10_list_gives_names_states_labels_endpoints_and_markers() {
    let listed = list(LIST_1_41).unwrap();
    assert_eq!(listed.len(), 3);

    let (warp, marker) = &listed[0];
    assert_eq!(warp.name, "warp-vpn");
    assert!(warp.running);
    assert_eq!(warp.pid, None, "only an inspect gives the pid");
    assert_eq!(warp.health, Health::Healthy, "from the Status text");
    assert_eq!(
        warp.labels,
        [("netwarp.network".to_owned(), "inner".to_owned())].into(),
        "only the labels the planner reads are kept"
    );
    let outer = &warp.networks["outer"];
    assert_eq!(outer.ipv4, Some("172.29.0.2".parse().unwrap()));
    assert_eq!(outer.ipv6, Some("fd00:29::2".parse().unwrap()));
    assert_eq!(outer.mac.as_deref(), Some("02:42:ac:1d:00:02"));
    assert_eq!(
        outer.network_id.as_deref(),
        Some("9f8e7d6c5b4a39281706f5e4d3c2b1a0998877665544332211aabbccddeeff00")
    );
    assert_eq!(warp.networks["inner"].ipv6, None, "an empty address");
    assert_eq!(warp.network_mode, NetworkMode::Own);
    assert_eq!(marker.state.as_deref(), Some("running"));
    assert_eq!(
        marker.endpoints,
        [
            "0b1c2d3e4f5a6b7c8d9e0f1a2b3c4d5e6f708192a3b4c5d6e7f8091a2b3c4d5e",
            "e1a1b2c3d4e5f60718293a4b5c6d7e8f9a0b1c2d3e4f5a6b7c8d9e0f1a2b3c4d"
        ],
        "sorted"
    );

    let (app, _) = &listed[1];
    assert_eq!(app.name, "app", "a link's alias is not the name");
    assert_eq!(app.health, Health::Starting);
    assert_eq!(app.labels["netwarp.target"], "warp-vpn");
    assert_eq!(app.labels["netwarp.rules"], "203.0.113.0/24,tcp:443");
    assert!(!app.labels.contains_key("maintainer"));

    let (sidecar, marker) = &listed[2];
    assert!(!sidecar.running, "paused");
    assert_eq!(sidecar.health, Health::None);
    assert_eq!(
        sidecar.network_mode,
        NetworkMode::Container(
            "3c4d5e6f708192a3b4c5d6e7f8091a2b3c4d5e6f708192a3b4c5d6e7f8091a2b".into()
        )
    );
    assert!(sidecar.networks.is_empty() && marker.endpoints.is_empty());
}

#[test]
fn a_current_list_gives_the_health_object_precedence_and_takes_null_labels() {
    let listed = list(LIST_1_52).unwrap();
    assert_eq!(listed.len(), 2);
    let (warp, marker) = &listed[0];
    assert_eq!(warp.health, Health::Unhealthy);
    assert_eq!(marker.health, Health::Unhealthy);
    assert_eq!(
        warp.networks["inner"].ipv4,
        Some("172.28.0.2".parse().unwrap())
    );
    let (host, _) = &listed[1];
    assert!(host.labels.is_empty(), "Labels: null");
    assert_eq!(host.health, Health::None, "Health: none");
    assert_eq!(host.network_mode, NetworkMode::Host);
    let endpoint = &host.networks["host"];
    assert_eq!(
        (endpoint.ipv4, endpoint.ipv6, &endpoint.mac),
        (None, None, &None)
    );
}

#[test]
fn a_docker_20_10_inspect_gives_the_pid_health_and_planner_labels() {
    let app = inspect(INSPECT_1_41).unwrap().unwrap();
    assert_eq!(app.name, "app");
    assert_eq!(app.short_id(), "3c4d5e6f7081");
    assert!(app.running);
    assert_eq!(app.pid, Some(41234));
    assert_eq!(app.health, Health::Healthy);
    assert_eq!(
        app.labels.keys().collect::<Vec<_>>(),
        ["netwarp.egress", "netwarp.rules", "netwarp.target"]
    );
    let inner = &app.networks["inner"];
    assert_eq!(inner.ipv4, Some("172.28.0.3".parse().unwrap()));
    assert_eq!(inner.ipv6, Some("fd00:28::3".parse().unwrap()));
    assert_eq!(inner.mac.as_deref(), Some("02:42:ac:1c:00:03"));
    assert_eq!(app.network_mode, NetworkMode::Own);
}

#[test]
fn a_current_inspect_of_a_paused_swarm_task_with_a_bad_address() {
    let warp = inspect(INSPECT_1_52).unwrap().unwrap();
    assert!(!warp.running, "paused counts as not running");
    assert_eq!(warp.pid, Some(40001));
    assert_eq!(warp.health, Health::Starting);
    assert_eq!(warp.labels["com.docker.swarm.service.name"], "warp-svc");
    let outer = &warp.networks["outer"];
    assert_eq!(outer.ipv4, None, "an address that does not parse is absent");
    assert_eq!(outer.ipv6, Some("fd00:29::2".parse().unwrap()));
    assert_eq!(outer.mac, None);
}

#[test]
fn values_netwarp_must_refuse() {
    // No id: the entry is left out, the others are kept.
    let listed = list(r#"[{"Names": ["/x"]}, {"Id": "ab", "Names": ["/y"]}]"#).unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].0.name, "y");
    assert_eq!(inspect(r#"{"Name": "/x"}"#).unwrap(), None);
    // A pid that is not a process: none.
    for pid in ["0", "-1", "4294967296"] {
        let body = format!(r#"{{"Id": "ab", "State": {{"Running": true, "Pid": {pid}}}}}"#);
        assert_eq!(inspect(&body).unwrap().unwrap().pid, None, "{pid}");
    }
    // The wrong type anywhere fails the whole response: netwarp retries
    // the pass rather than guess.
    for body in [
        r#"{"Id": 5}"#,
        r#"{"Id": "ab", "State": {"Pid": "42"}}"#,
        r#"{"Id": "ab", "Config": {"Labels": {"netwarp.target": 1}}}"#,
        r#"{"Id": "ab", "NetworkSettings": {"Networks": ["inner"]}}"#,
    ] {
        assert!(inspect(body).is_err(), "{body}");
    }
    for body in [
        r#"{"Id": "ab"}"#,
        r#"[{"Id": "ab", "Names": "/x"}]"#,
        r#"[{"Id": "ab", "State": true}]"#,
        r#"[{"Id": "ab"}] trailing"#,
        r#"[{"Id": "ab"}"#,
    ] {
        let error = list(body).unwrap_err();
        assert!(!error.to_string().is_empty(), "{body}");
    }
}

#[test]
fn health_hints_in_the_status_text() {
    assert_eq!(health_from_status("Up 2 hours (healthy)"), Health::Healthy);
    assert_eq!(
        health_from_status("Up 2 hours (unhealthy)"),
        Health::Unhealthy
    );
    assert_eq!(
        health_from_status("Up 1 second (health: starting)"),
        Health::Starting
    );
    assert_eq!(health_from_status("Up 2 hours"), Health::None);
}

#[test]
fn the_network_mode_is_read_from_the_host_config() {
    for (mode, expected) in [
        ("host", NetworkMode::Host),
        ("none", NetworkMode::NoNetwork),
        (
            "container:0123abcd",
            NetworkMode::Container("0123abcd".into()),
        ),
        ("bridge", NetworkMode::Own),
        ("default", NetworkMode::Own),
        ("my-net", NetworkMode::Own),
    ] {
        let body =
            format!(r#"{{"Id": "ab", "Name": "/x", "HostConfig": {{"NetworkMode": "{mode}"}}}}"#);
        assert_eq!(
            inspect(&body).unwrap().unwrap().network_mode,
            expected,
            "{mode}"
        );
    }
    assert_eq!(
        inspect(r#"{"Id": "ab"}"#).unwrap().unwrap().network_mode,
        NetworkMode::Own,
        "no HostConfig"
    );
}

/// Hands out a body a few bytes at a time, as a socket may.
struct Trickle<'a> {
    body: &'a [u8],
    step: usize,
}

impl std::io::Read for Trickle<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.step.min(buf.len()).min(self.body.len());
        buf[..n].copy_from_slice(&self.body[..n]);
        self.body = &self.body[n..];
        Ok(n)
    }
}

fn list_read(body: &str, step: usize) -> Result<Vec<(Container, Marker)>, serde_json::Error> {
    let mut out = Vec::new();
    let reader = Trickle {
        body: body.as_bytes(),
        step,
    };
    decode_list_from(reader, |entry| {
        out.extend(entry.into_container(&planner_label))
    })?;
    Ok(out)
}

#[test]
fn a_list_read_as_it_arrives_decodes_as_the_whole_body_does() {
    for body in [LIST_1_41, LIST_1_52] {
        for step in [1, 7, 4096] {
            assert_eq!(
                list_read(body, step).unwrap(),
                list(body).unwrap(),
                "{step}"
            );
        }
    }
}

#[test]
fn a_list_read_as_it_arrives_refuses_what_the_whole_body_refuses() {
    let wrong_type = LIST_1_52.replacen("\"State\": \"running\"", "\"State\": 7", 1);
    assert_ne!(wrong_type, LIST_1_52, "the fixture has a running entry");
    let truncated = &LIST_1_41[..LIST_1_41.len() / 2];
    for body in [wrong_type.as_str(), truncated, "[1]", "{}"] {
        let error = list_read(body, 5).expect_err(body);
        let whole = list(body).unwrap_err();
        // A reader's column may be one further (serde_json reads ahead).
        let what =
            |e: &serde_json::Error| e.to_string().split(" at line").next().map(str::to_owned);
        assert_eq!(what(&error), what(&whole), "the same error");
        assert_eq!(error.line(), whole.line(), "on the same line");
    }
    let trailing = format!("{LIST_1_41} x");
    assert!(
        list_read(&trailing, 3).is_err(),
        "nothing may follow the list"
    );
}
