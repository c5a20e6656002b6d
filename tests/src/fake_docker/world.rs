//! The simulated world behind the fake Docker API: synthetic containers
//! (warps, targets, unrelated ones), their state changes, and their JSON in
//! the shapes Docker's API 1.41 uses for list, inspect and events.

use std::{
    collections::{BTreeMap, HashMap},
    net::{Ipv4Addr, Ipv6Addr},
    time::{SystemTime, UNIX_EPOCH},
};

use netwarp::model::{Container, Endpoint, Health, NetworkMode, World};
use serde::Serialize;

/// The shape of a synthetic world.
#[derive(Clone, Debug)]
pub struct WorldSpec {
    /// All containers, warps and targets included.
    pub containers: usize,
    /// Warp containers, `warp-0` .. (at most 250: one /16 each).
    pub warps: usize,
    /// Targets, spread round-robin over the warps.
    pub targets: usize,
    /// Exited unrelated containers (only `all=true` lists them).
    pub exited: usize,
}

impl WorldSpec {
    /// A realistic mix for `containers`: 1 warp per 100 containers (2 to
    /// 250), half of them targets, 2% exited.
    pub fn mix(containers: usize) -> Self {
        let warps = (containers / 100).clamp(2, 250);
        let targets = containers / 2;
        let exited = containers / 50;
        assert!(containers >= warps + targets + exited, "too few containers");
        Self {
            containers,
            warps,
            targets,
            exited,
        }
    }
}

/// The label keys the synthetic world uses (netwarp's defaults).
pub const TARGET_LABEL: &str = "netwarp.target";
pub const NETWORK_LABEL: &str = "netwarp.network";
pub const RULES_LABEL: &str = "netwarp.rules";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    Warp,
    Target,
    Unrelated,
}

#[derive(Clone, Debug)]
pub struct FakeEndpoint {
    pub network: String,
    pub network_id: String,
    pub endpoint_id: String,
    pub ipv4: Ipv4Addr,
    pub gateway: Ipv4Addr,
    pub ipv6: Option<Ipv6Addr>,
    pub mac: String,
}

#[derive(Clone, Debug)]
pub struct FakeContainer {
    pub id: String,
    pub name: String,
    pub role: Role,
    pub image: String,
    pub created: i64,
    pub labels: BTreeMap<String, String>,
    pub running: bool,
    /// `None`: no healthcheck.
    pub health: Option<Health>,
    pub pid: u32,
    pub started_at: i64,
    pub networks: Vec<FakeEndpoint>,
    /// The target's rules label is malformed on purpose.
    pub bad_rules: bool,
}

/// The whole simulated engine state.
pub struct State {
    pub containers: Vec<FakeContainer>,
    pub by_id: HashMap<String, usize>,
    pub by_name: HashMap<String, usize>,
    /// Bumped by every change; keys the cached list bodies.
    pub generation: u64,
    next_pid: u32,
    next_serial: u64,
}

fn now_secs() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// A 64-hex-digit id from a serial number (splitmix64, four rounds).
fn hex_id(serial: u64, salt: u64) -> String {
    let mut x = serial.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ salt;
    let mut out = String::with_capacity(64);
    for _ in 0..4 {
        x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = x;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        out.push_str(&format!("{z:016x}"));
    }
    out
}

fn mac_of(ip: Ipv4Addr) -> String {
    let o = ip.octets();
    format!("02:42:{:02x}:{:02x}:{:02x}:{:02x}", o[0], o[1], o[2], o[3])
}

/// The network of warp `w`: `nw-w` on 10.w.0.0/16 (simulated addresses in
/// JSON only; nothing is ever sent to them).
fn warp_network(w: usize) -> (String, [u8; 2]) {
    (format!("nw-{w}"), [10, w as u8])
}

const BRIDGE: (&str, [u8; 2]) = ("bridge", [172, 17]);

impl State {
    pub fn generate(spec: &WorldSpec) -> Self {
        assert!((1..=250).contains(&spec.warps), "1 to 250 warps");
        let mut state = Self {
            containers: Vec::with_capacity(spec.containers),
            by_id: HashMap::new(),
            by_name: HashMap::new(),
            generation: 0,
            next_pid: 10_000,
            next_serial: 0,
        };
        // Host numbers per network, so every address is unique.
        let mut hosts: HashMap<String, u32> = HashMap::new();
        let mut endpoint = |state: &mut Self, (name, prefix): (String, [u8; 2]), v6: bool| {
            let host = hosts.entry(name.clone()).or_insert(1);
            *host += 1;
            let h = *host;
            let ipv4 = Ipv4Addr::new(prefix[0], prefix[1], (h >> 8) as u8, h as u8);
            FakeEndpoint {
                network_id: hex_id(prefix[0] as u64 * 256 + prefix[1] as u64, 0xbeef),
                endpoint_id: state.serial_id(0xe9),
                gateway: Ipv4Addr::new(prefix[0], prefix[1], 0, 1),
                ipv6: v6.then(|| Ipv6Addr::new(0xfd00, prefix[1] as u16, 0, 0, 0, 0, 0, h as u16)),
                mac: mac_of(ipv4),
                ipv4,
                network: name,
            }
        };
        let created = now_secs() - 86_400;
        let compose = |project: &str, service: &str, n: usize| {
            BTreeMap::from([
                ("com.docker.compose.project".to_owned(), project.to_owned()),
                ("com.docker.compose.service".to_owned(), service.to_owned()),
                (
                    "com.docker.compose.container-number".to_owned(),
                    n.to_string(),
                ),
                ("com.docker.compose.version".to_owned(), "2.24.6".to_owned()),
                (
                    "org.opencontainers.image.source".to_owned(),
                    "https://example.invalid/app".to_owned(),
                ),
            ])
        };
        for w in 0..spec.warps {
            let mut labels = compose("edge", "warp", w);
            let mut networks = vec![endpoint(&mut state, warp_network(w), w.is_multiple_of(2))];
            // Every 10th warp is also on the default bridge, and says which
            // network to steer over.
            if w.is_multiple_of(10) {
                networks.push(endpoint(&mut state, (BRIDGE.0.into(), BRIDGE.1), false));
                labels.insert(NETWORK_LABEL.into(), warp_network(w).0);
            }
            let health = match w % 13 {
                5 => Some(Health::Unhealthy),
                3 | 4 => Some(Health::Healthy),
                _ => None,
            };
            state.push(FakeContainer {
                id: String::new(),
                name: format!("warp-{w}"),
                role: Role::Warp,
                image: "example/wireguard:1".into(),
                created,
                labels,
                running: true,
                health,
                pid: 0,
                started_at: created,
                networks,
                bad_rules: false,
            });
        }
        for t in 0..spec.targets {
            let w = t % spec.warps;
            let mut labels = compose("apps", &format!("svc{}", t % 40), t);
            let warp = if t % 101 == 50 {
                format!("warp-missing-{t}")
            } else {
                format!("warp-{w}")
            };
            labels.insert(TARGET_LABEL.into(), warp);
            let bad_rules = t % 97 == 13;
            if bad_rules {
                labels.insert(RULES_LABEL.into(), "300.1.2.3/8,tcp:443".into());
            } else if t % 20 == 7 {
                labels.insert(RULES_LABEL.into(), "198.51.100.0/24,tcp:443".into());
            }
            let mut networks = vec![endpoint(&mut state, warp_network(w), w.is_multiple_of(2))];
            if t.is_multiple_of(3) {
                networks.push(endpoint(&mut state, (BRIDGE.0.into(), BRIDGE.1), false));
            }
            state.push(FakeContainer {
                id: String::new(),
                name: format!("app-target-{t}"),
                role: Role::Target,
                image: "example/app:2".into(),
                created,
                labels,
                running: true,
                health: t.is_multiple_of(5).then_some(Health::Healthy),
                pid: 0,
                started_at: created,
                networks,
                bad_rules,
            });
        }
        let unrelated = spec.containers - spec.warps - spec.targets;
        for u in 0..unrelated {
            let running = u >= spec.exited;
            let networks = if running {
                vec![endpoint(&mut state, (BRIDGE.0.into(), BRIDGE.1), false)]
            } else {
                Vec::new()
            };
            state.push(FakeContainer {
                id: String::new(),
                name: format!("other-{u}"),
                role: Role::Unrelated,
                image: "example/worker:3".into(),
                created,
                labels: compose("batch", &format!("job{}", u % 25), u),
                running,
                health: None,
                pid: 0,
                started_at: created,
                networks,
                bad_rules: false,
            });
        }
        state
    }

    fn serial_id(&mut self, salt: u64) -> String {
        self.next_serial += 1;
        hex_id(self.next_serial, salt)
    }

    fn push(&mut self, mut c: FakeContainer) {
        c.id = self.serial_id(0xc0);
        if c.running {
            c.pid = self.next_pid();
        }
        self.by_id.insert(c.id.clone(), self.containers.len());
        self.by_name.insert(c.name.clone(), self.containers.len());
        self.containers.push(c);
    }

    fn next_pid(&mut self) -> u32 {
        self.next_pid += 1;
        self.next_pid
    }

    /// Stops a container: no pid, its endpoints released.
    pub fn stop(&mut self, i: usize) {
        self.generation += 1;
        let c = &mut self.containers[i];
        c.running = false;
        c.pid = 0;
        for e in &mut c.networks {
            e.endpoint_id.clear();
        }
    }

    /// Starts a container: a new pid and new endpoint ids, as Docker does.
    pub fn start(&mut self, i: usize) {
        self.generation += 1;
        let pid = self.next_pid();
        let ids: Vec<String> = (0..self.containers[i].networks.len())
            .map(|_| self.serial_id(0xe9))
            .collect();
        let c = &mut self.containers[i];
        c.running = true;
        c.pid = pid;
        c.started_at = now_secs();
        for (e, id) in c.networks.iter_mut().zip(ids) {
            e.endpoint_id = id;
        }
    }

    pub fn set_health(&mut self, i: usize, health: Health) {
        self.generation += 1;
        self.containers[i].health = Some(health);
    }

    /// What netwarp should see: the running containers, as domain types.
    pub fn truth(&self) -> World {
        World {
            containers: self
                .containers
                .iter()
                .filter(|c| c.running)
                .map(|c| Container {
                    id: c.id.clone(),
                    name: c.name.clone(),
                    running: true,
                    health: c.health.unwrap_or(Health::None),
                    pid: Some(c.pid),
                    labels: c.labels.clone().into_iter().collect(),
                    networks: c
                        .networks
                        .iter()
                        .map(|e| {
                            (
                                e.network.clone(),
                                Endpoint {
                                    ipv4: Some(e.ipv4),
                                    ipv6: e.ipv6,
                                    // As the generated JSON says (see `EndpointJson::of`).
                                    ipv4_prefix_len: Some(16),
                                    ipv6_prefix_len: e.ipv6.map(|_| 64),
                                    mac: Some(e.mac.clone()),
                                    network_id: Some(e.network_id.clone()),
                                },
                            )
                        })
                        .collect(),
                    network_mode: NetworkMode::Own,
                })
                .collect(),
        }
    }

    /// The fake's own, independent idea of each running target's state
    /// (`steered` or `blocked`), from how it built the world.
    pub fn expected_states(&self) -> BTreeMap<String, &'static str> {
        self.containers
            .iter()
            .filter(|c| c.running && c.role == Role::Target)
            .map(|t| {
                let warp = self
                    .by_name
                    .get(&t.labels[TARGET_LABEL])
                    .map(|&i| &self.containers[i]);
                let up = warp.is_some_and(|w| w.running && w.health != Some(Health::Unhealthy));
                let state = if up && !t.bad_rules {
                    "steered"
                } else {
                    "blocked"
                };
                (t.id.clone(), state)
            })
            .collect()
    }

    pub fn list_json(&self, all: bool) -> Vec<u8> {
        let list: Vec<Summary<'_>> = self
            .containers
            .iter()
            .filter(|c| all || c.running)
            .map(Summary::of)
            .collect();
        serde_json::to_vec(&list).expect("serializable")
    }

    /// The list with Docker's `label` (key or key=value), `status`
    /// (`running`, `exited`, ...) and `id` (a prefix) filters applied.
    pub fn list_json_filtered(
        &self,
        all: bool,
        labels: &[String],
        statuses: &[String],
        ids: &[String],
    ) -> Vec<u8> {
        let list: Vec<Summary<'_>> = self
            .containers
            .iter()
            .filter(|c| all || c.running)
            .filter(|c| ids.is_empty() || ids.iter().any(|id| c.id.starts_with(id.as_str())))
            .filter(|c| {
                labels.iter().all(|filter| match filter.split_once('=') {
                    Some((key, value)) => c.labels.get(key).is_some_and(|v| v == value),
                    None => c.labels.contains_key(filter),
                })
            })
            .filter(|c| {
                let status = if c.running { "running" } else { "exited" };
                statuses.is_empty() || statuses.iter().any(|s| s == status)
            })
            .map(Summary::of)
            .collect();
        serde_json::to_vec(&list).expect("serializable")
    }

    /// A network's inspect (id or name): every simulated network is a
    /// bridge network with Docker's default bridge name.
    pub fn network_json(&self, key: &str) -> Option<Vec<u8>> {
        let endpoint = self
            .containers
            .iter()
            .flat_map(|c| &c.networks)
            .find(|e| e.network_id == key || e.network == key)?;
        let body = serde_json::json!({
            "Name": endpoint.network,
            "Id": endpoint.network_id,
            "Driver": "bridge",
            "Internal": true,
            "Options": {},
        });
        Some(serde_json::to_vec(&body).expect("json"))
    }

    pub fn inspect_json(&self, i: usize) -> Vec<u8> {
        serde_json::to_vec(&Inspect::of(&self.containers[i])).expect("serializable")
    }

    /// Finds a container by id, unique id prefix or name, as Docker does.
    pub fn find(&self, key: &str) -> Option<usize> {
        if let Some(&i) = self.by_id.get(key).or_else(|| self.by_name.get(key)) {
            return Some(i);
        }
        if key.len() < 12 {
            return None;
        }
        let mut found = self
            .containers
            .iter()
            .enumerate()
            .filter(|(_, c)| c.id.starts_with(key));
        match (found.next(), found.next()) {
            (Some((i, _)), None) => Some(i),
            _ => None,
        }
    }

    /// One event, as Docker's `/events` stream writes it (one JSON object
    /// per line). Returns `(type, action, line)`.
    pub fn event_json(&self, i: usize, action: &str) -> (&'static str, String, Vec<u8>) {
        let c = &self.containers[i];
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as i64);
        let mut attributes = BTreeMap::from([("image", c.image.clone()), ("name", c.name.clone())]);
        for (k, v) in &c.labels {
            attributes.insert(k.as_str(), v.clone());
        }
        let line = serde_json::json!({
            "status": action,
            "id": c.id,
            "from": c.image,
            "Type": "container",
            "Action": action,
            "Actor": {"ID": c.id, "Attributes": attributes},
            "scope": "local",
            "time": nanos / 1_000_000_000,
            "timeNano": nanos,
        });
        let mut bytes = serde_json::to_vec(&line).expect("serializable");
        bytes.push(b'\n');
        ("container", action.to_owned(), bytes)
    }
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct EndpointJson<'a> {
    #[serde(rename = "IPAMConfig")]
    ipam_config: Option<()>,
    links: Option<()>,
    aliases: Option<()>,
    #[serde(rename = "NetworkID")]
    network_id: &'a str,
    #[serde(rename = "EndpointID")]
    endpoint_id: &'a str,
    gateway: String,
    #[serde(rename = "IPAddress")]
    ip_address: String,
    #[serde(rename = "IPPrefixLen")]
    ip_prefix_len: u8,
    #[serde(rename = "IPv6Gateway")]
    ipv6_gateway: String,
    #[serde(rename = "GlobalIPv6Address")]
    global_ipv6_address: String,
    #[serde(rename = "GlobalIPv6PrefixLen")]
    global_ipv6_prefix_len: u8,
    mac_address: &'a str,
    driver_opts: Option<()>,
}

impl<'a> EndpointJson<'a> {
    fn of(e: &'a FakeEndpoint, running: bool) -> Self {
        // A stopped container keeps its networks but has no addresses.
        let text = |s: String| if running { s } else { String::new() };
        Self {
            ipam_config: None,
            links: None,
            aliases: None,
            network_id: &e.network_id,
            endpoint_id: &e.endpoint_id,
            gateway: text(e.gateway.to_string()),
            ip_address: text(e.ipv4.to_string()),
            ip_prefix_len: if running { 16 } else { 0 },
            ipv6_gateway: String::new(),
            global_ipv6_address: text(e.ipv6.map(|a| a.to_string()).unwrap_or_default()),
            global_ipv6_prefix_len: if running && e.ipv6.is_some() { 64 } else { 0 },
            mac_address: if running { &e.mac } else { "" },
            driver_opts: None,
        }
    }
}

fn networks_json(c: &FakeContainer) -> BTreeMap<&str, EndpointJson<'_>> {
    c.networks
        .iter()
        .map(|e| (e.network.as_str(), EndpointJson::of(e, c.running)))
        .collect()
}

fn health_word(h: Health) -> &'static str {
    match h {
        Health::None => "none",
        Health::Starting => "starting",
        Health::Healthy => "healthy",
        Health::Unhealthy => "unhealthy",
    }
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct Summary<'a> {
    id: &'a str,
    names: [String; 1],
    image: &'a str,
    #[serde(rename = "ImageID")]
    image_id: String,
    command: &'static str,
    created: i64,
    ports: [(); 0],
    labels: &'a BTreeMap<String, String>,
    state: &'static str,
    status: String,
    host_config: serde_json::Value,
    network_settings: SummaryNetworks<'a>,
    mounts: [(); 0],
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct SummaryNetworks<'a> {
    networks: BTreeMap<&'a str, EndpointJson<'a>>,
}

impl<'a> Summary<'a> {
    fn of(c: &'a FakeContainer) -> Self {
        // API 1.41 has no Health in the list; the status text carries it.
        let status = if c.running {
            match c.health {
                Some(Health::Healthy) => "Up 2 hours (healthy)".to_owned(),
                Some(Health::Unhealthy) => "Up 2 hours (unhealthy)".to_owned(),
                Some(Health::Starting) => "Up 2 seconds (health: starting)".to_owned(),
                _ => "Up 2 hours".to_owned(),
            }
        } else {
            "Exited (0) 5 minutes ago".to_owned()
        };
        Self {
            id: &c.id,
            names: [format!("/{}", c.name)],
            image: &c.image,
            image_id: format!("sha256:{}", hex_id(c.image.len() as u64, 0x1a)),
            command: "/entrypoint.sh",
            created: c.created,
            ports: [],
            labels: &c.labels,
            state: if c.running { "running" } else { "exited" },
            status,
            host_config: serde_json::json!({"NetworkMode": network_mode(c)}),
            network_settings: SummaryNetworks {
                networks: networks_json(c),
            },
            mounts: [],
        }
    }
}

/// Docker's `HostConfig.NetworkMode`: the network a container was created
/// on (kept after a disconnect), as list and inspect both report it.
fn network_mode(c: &FakeContainer) -> &str {
    c.networks.first().map_or("bridge", |e| e.network.as_str())
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct Inspect<'a> {
    id: &'a str,
    created: &'static str,
    path: &'static str,
    args: [(); 0],
    state: serde_json::Value,
    image: String,
    name: String,
    restart_count: u32,
    driver: &'static str,
    platform: &'static str,
    host_config: serde_json::Value,
    config: serde_json::Value,
    network_settings: serde_json::Value,
    mounts: [(); 0],
}

impl<'a> Inspect<'a> {
    fn of(c: &'a FakeContainer) -> Self {
        let mut state = serde_json::json!({
            "Status": if c.running { "running" } else { "exited" },
            "Running": c.running,
            "Paused": false,
            "Restarting": false,
            "OOMKilled": false,
            "Dead": false,
            "Pid": c.pid,
            "ExitCode": 0,
            "Error": "",
            "StartedAt": "2024-01-01T00:00:00.000000000Z",
            "FinishedAt": "0001-01-01T00:00:00Z",
        });
        if let Some(h) = c.health {
            state["Health"] =
                serde_json::json!({"Status": health_word(h), "FailingStreak": 0, "Log": []});
        }
        Self {
            id: &c.id,
            created: "2024-01-01T00:00:00.000000000Z",
            path: "/entrypoint.sh",
            args: [],
            state,
            image: format!("sha256:{}", hex_id(c.image.len() as u64, 0x1a)),
            name: format!("/{}", c.name),
            restart_count: 0,
            driver: "overlay2",
            platform: "linux",
            host_config: serde_json::json!({"NetworkMode": network_mode(c)}),
            config: serde_json::json!({
                "Hostname": &c.id[..12],
                "Image": c.image,
                "Labels": c.labels,
                "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
                "Cmd": ["/entrypoint.sh"],
            }),
            network_settings: serde_json::json!({
                "Bridge": "",
                "SandboxID": hex_id(c.pid as u64, 0x5b),
                "SandboxKey": format!("/var/run/docker/netns/{}", &hex_id(c.pid as u64, 0x5b)[..12]),
                "Networks": networks_json(c),
            }),
            mounts: [],
        }
    }
}

#[cfg(test)]
mod tests {
    use bollard::models::{ContainerInspectResponse, ContainerSummary};

    use super::*;

    #[test]
    fn generated_json_parses_as_bollard_types_and_matches_the_truth() {
        let state = State::generate(&WorldSpec::mix(300));
        // bollard's full models still read it: the shapes are Docker's.
        let list: Vec<ContainerSummary> = serde_json::from_slice(&state.list_json(false)).unwrap();
        assert_eq!(list.len(), 300 - 6, "exited ones are not listed");
        let all: Vec<ContainerSummary> = serde_json::from_slice(&state.list_json(true)).unwrap();
        assert_eq!(all.len(), 300);
        for i in 0..300 {
            let _: ContainerInspectResponse =
                serde_json::from_slice(&state.inspect_json(i)).unwrap();
        }
        // And netwarp's own decoding gives the truth.
        let mut from_list = Vec::new();
        netwarp::wire::decode_list(&state.list_json(false), |entry| from_list.push(entry)).unwrap();
        let truth = state.truth();
        let all_labels = |_: &str| true;
        for (entry, t) in from_list.into_iter().zip(&truth.containers) {
            let (from_list, _) = entry.into_container(&all_labels).unwrap();
            assert_eq!(from_list.networks, t.networks);
            assert_eq!(from_list.labels, t.labels);
            assert_eq!(from_list.name, t.name);
            let i = state.find(&t.id).unwrap();
            let inspect: netwarp::wire::Inspect =
                serde_json::from_slice(&state.inspect_json(i)).unwrap();
            assert_eq!(inspect.into_container(&all_labels).as_ref(), Some(t));
        }
        let states = state.expected_states();
        assert_eq!(states.len(), 150);
        assert!(states.values().any(|s| *s == "blocked"));
        assert!(states.values().any(|s| *s == "steered"));
    }
}
