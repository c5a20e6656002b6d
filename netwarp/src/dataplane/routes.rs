//! The `routes` dataplane: policy rules and a netwarp-owned routing table
//! inside each target's network namespace, through rtnetlink.
//!
//! Ownership is explicit: every route sits in [`NETWARP_TABLE`] with route
//! protocol [`NETWARP_PROTOCOL`]; every rule has priority
//! [`NETWARP_RULE_PRIORITY`] and the same protocol. netwarp lists and removes
//! exactly those, and nothing else.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    net::IpAddr,
    os::unix::fs::MetadataExt as _,
};

use futures_util::TryStreamExt as _;
use rtnetlink::{
    Handle, RouteMessageBuilder,
    packet_route::{
        AddressFamily,
        link::{LinkAttribute, LinkMessage},
        route::{RouteAddress, RouteAttribute, RouteMessage, RouteProtocol, RouteType},
        rule::{RuleAction, RuleAttribute, RuleMessage},
    },
};

use super::policy_rule::{TaggedRule, dump_rules, match_selector, tagged_rule};
use crate::{
    model::{Cidr, PortRange, Rule},
    plan::{Action, Entry},
};

/// netwarp's routing table in each target's namespace.
pub const NETWARP_TABLE: u32 = 0x4e57;
/// The route (and rule) protocol id that tags netwarp's entries.
pub const NETWARP_PROTOCOL: u8 = 0x57;
/// The priority of netwarp's policy rules: before `main` (32766).
pub const NETWARP_RULE_PRIORITY: u32 = 10_000;

#[derive(Debug, thiserror::Error)]
pub enum RoutesError {
    #[error(
        "cannot enter the network namespace of pid {pid}: {reason}; netwarp needs \
         CAP_SYS_ADMIN and CAP_NET_ADMIN (see `netwarp probe`)"
    )]
    Netns { pid: u32, reason: String },
    #[error(
        "refusing to enter the network namespace of pid {pid}: it is the host's own \
         namespace, which netwarp never programs (only its tagged guard rules live there)"
    )]
    HostNamespace { pid: u32 },
    #[error(
        "refusing to program the network namespace of pid {pid} for container {owner}: \
         container {other} already uses it in this pass, and netwarp programs each \
         namespace for one container only"
    )]
    NamespaceClaimed {
        pid: u32,
        owner: String,
        other: String,
    },
    #[error(
        "the network namespace of pid {pid} was opened for reading only; writes need \
         NamespaceHandle::open_owned"
    )]
    ReadOnly { pid: u32 },
    #[error("netlink {operation} in the namespace of pid {pid} failed: {source}")]
    Netlink {
        pid: u32,
        operation: String,
        #[source]
        source: rtnetlink::Error,
    },
}

/// What a route in netwarp's table does.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum RouteAction {
    Via(IpAddr),
    /// A prohibit route: senders get EACCES at once, nothing leaves.
    Prohibit,
}

/// A policy rule netwarp owns: `to DEST [ipproto P [dport RANGE]] lookup NETWARP_TABLE`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct OwnedRule {
    pub destination: Cidr,
    pub ip_proto: Option<u8>,
    pub ports: Option<PortRange>,
}

impl OwnedRule {
    /// The selector of a plan rule (the host guard uses it too).
    pub fn from_rule(rule: &Rule) -> Self {
        Self {
            destination: rule.destination,
            ip_proto: rule
                .protocol
                .map(|p| p.ip_proto(rule.destination.is_ipv6())),
            ports: rule.ports,
        }
    }
}

/// Everything netwarp owns in one namespace.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct OwnedState {
    pub routes: BTreeMap<Cidr, RouteAction>,
    pub rules: BTreeSet<OwnedRule>,
}

/// The kernel state that enforces a target's plan entries.
pub fn desired_state(entries: &[Entry]) -> OwnedState {
    let mut state = OwnedState::default();
    for entry in entries {
        let rule = entry.rule;
        let action = match entry.action {
            Action::Via(ip) => RouteAction::Via(ip),
            Action::Block => RouteAction::Prohibit,
        };
        // Blocking wins if two rules to one destination ever disagree.
        state
            .routes
            .entry(rule.destination)
            .and_modify(|a| *a = (*a).max(action))
            .or_insert(action);
        state.rules.insert(OwnedRule::from_rule(&rule));
    }
    state
}

/// The changes that turn `installed` into `desired`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Changes {
    /// Routes to add or replace in place (never delete-then-add, which
    /// would open a window for a leak).
    pub put_routes: Vec<(Cidr, RouteAction)>,
    pub add_rules: Vec<OwnedRule>,
    pub delete_rules: Vec<OwnedRule>,
    pub delete_routes: Vec<Cidr>,
}

impl Changes {
    pub fn is_empty(&self) -> bool {
        self.put_routes.is_empty()
            && self.add_rules.is_empty()
            && self.delete_rules.is_empty()
            && self.delete_routes.is_empty()
    }
}

pub fn diff(installed: &OwnedState, desired: &OwnedState) -> Changes {
    Changes {
        put_routes: desired
            .routes
            .iter()
            .filter(|(dst, action)| installed.routes.get(dst) != Some(action))
            .map(|(d, a)| (*d, *a))
            .collect(),
        add_rules: desired
            .rules
            .difference(&installed.rules)
            .copied()
            .collect(),
        delete_rules: installed
            .rules
            .difference(&desired.rules)
            .copied()
            .collect(),
        delete_routes: installed
            .routes
            .keys()
            .filter(|d| !desired.routes.contains_key(d))
            .copied()
            .collect(),
    }
}

/// A network namespace's identity: the device and inode of its nsfs file.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct NamespaceId {
    dev: u64,
    ino: u64,
}

impl NamespaceId {
    fn of(path: &str) -> std::io::Result<Self> {
        let meta = std::fs::metadata(path)?;
        Ok(Self {
            dev: meta.dev(),
            ino: meta.ino(),
        })
    }

    /// Whether this is the host's namespace: init's, or netwarp's own.
    fn is_host(self) -> bool {
        ["/proc/1/ns/net", "/proc/self/ns/net"]
            .into_iter()
            .any(|path| Self::of(path).is_ok_and(|host| host == self))
    }
}

/// The namespaces claimed for writing in one pass, each by one container:
/// a second container that resolves to the same namespace is refused.
#[derive(Debug, Default)]
pub struct NamespaceClaims {
    owners: HashMap<NamespaceId, String>,
}

impl NamespaceClaims {
    pub fn new() -> Self {
        Self::default()
    }
}

/// An rtnetlink connection bound to one container's network namespace.
///
/// Every namespace netwarp enters goes through [`NamespaceHandle::open`],
/// which refuses the host's own namespace, whoever asks. Writes need a
/// handle from [`NamespaceHandle::open_owned`], which also claims the
/// namespace for one container in the pass.
pub struct NamespaceHandle {
    pid: u32,
    handle: Handle,
    writable: bool,
}

impl NamespaceHandle {
    /// Opens the namespace of `pid` for writing on behalf of the container
    /// `owner`, after checking it is not the host's and that no other
    /// container claimed it in this pass.
    pub async fn open_owned(
        pid: u32,
        claims: &mut NamespaceClaims,
        owner: &str,
    ) -> Result<Self, RoutesError> {
        let (mut namespace, id) = Self::enter(pid).await?;
        match claims.owners.get(&id) {
            Some(other) if other != owner => {
                return Err(RoutesError::NamespaceClaimed {
                    pid,
                    owner: owner.to_owned(),
                    other: other.clone(),
                });
            }
            Some(_) => {}
            None => {
                claims.owners.insert(id, owner.to_owned());
            }
        }
        namespace.writable = true;
        Ok(namespace)
    }

    /// Opens the namespace of `pid` for reading (dumps only).
    pub async fn open(pid: u32) -> Result<Self, RoutesError> {
        Ok(Self::enter(pid).await?.0)
    }

    /// Opens a netlink socket inside the namespace of `pid`, unless that
    /// namespace is the host's.
    ///
    /// Only socket creation happens inside the namespace, on a short-lived
    /// dedicated OS thread: setns changes the calling thread, and a tokio
    /// worker must never be moved. The socket then stays bound to the
    /// namespace wherever it is polled. The namespace is identified from
    /// inside, so a pid reused meanwhile cannot point the check elsewhere.
    async fn enter(pid: u32) -> Result<(Self, NamespaceId), RoutesError> {
        let runtime = tokio::runtime::Handle::current();
        let path = format!("/proc/{pid}/ns/net");
        let opened = std::thread::Builder::new()
            .name(format!("netns-{pid}"))
            .spawn(move || -> Result<_, String> {
                let _runtime = runtime.enter();
                let netns = netns_rs::get_from_path(&path).map_err(|e| e.to_string())?;
                netns
                    .run(|_| {
                        let id = NamespaceId::of("/proc/thread-self/ns/net")?;
                        // Refused before the socket exists: nothing can be
                        // sent into the host's namespace through it.
                        if id.is_host() {
                            return Ok(None);
                        }
                        rtnetlink::new_connection().map(|c| Some((c, id)))
                    })
                    .map_err(|e| e.to_string())?
                    .map_err(|e| e.to_string())
            })
            .map_err(|e| RoutesError::Netns {
                pid,
                reason: e.to_string(),
            })?
            .join()
            .map_err(|_| RoutesError::Netns {
                pid,
                reason: "the namespace thread panicked".into(),
            })?;
        let ((connection, handle, _), id) = opened
            .map_err(|reason| RoutesError::Netns { pid, reason })?
            .ok_or(RoutesError::HostNamespace { pid })?;
        tokio::spawn(connection);
        let namespace = Self {
            pid,
            handle,
            writable: false,
        };
        Ok((namespace, id))
    }

    fn writable(&self) -> Result<&Handle, RoutesError> {
        if self.writable {
            Ok(&self.handle)
        } else {
            Err(RoutesError::ReadOnly { pid: self.pid })
        }
    }

    fn netlink(
        &self,
        operation: impl Into<String>,
    ) -> impl FnOnce(rtnetlink::Error) -> RoutesError {
        let pid = self.pid;
        let operation = operation.into();
        move |source| RoutesError::Netlink {
            pid,
            operation,
            source,
        }
    }

    /// Reads netwarp's own routes and rules, and nothing else.
    pub async fn installed(&self) -> Result<OwnedState, RoutesError> {
        let mut state = OwnedState::default();
        for family in [AddressFamily::Inet, AddressFamily::Inet6] {
            let mut query = RouteMessage::default();
            query.header.address_family = family;
            let routes: Vec<RouteMessage> = self
                .handle
                .route()
                .get(query)
                .execute()
                .try_collect()
                .await
                .map_err(self.netlink("route dump"))?;
            for route in routes {
                if let Some((dst, action)) = parse_owned_route(&route) {
                    state.routes.insert(dst, action);
                }
            }
        }
        let rules = dump_rules(&self.handle)
            .await
            .map_err(self.netlink("rule dump"))?;
        state
            .rules
            .extend(rules.iter().filter_map(parse_owned_rule));
        Ok(state)
    }

    /// Applies `changes`: routes before the rules that use them, and rules
    /// removed before their routes, so no packet sees a rule without a route.
    pub async fn apply(&self, changes: &Changes, oif_mac: Option<&str>) -> Result<(), RoutesError> {
        let handle = self.writable()?;
        let oif = match oif_mac {
            Some(mac) => self.ifindex_by_mac(mac).await?,
            None => None,
        };
        for (dst, action) in &changes.put_routes {
            let message = route_message(*dst, *action, oif);
            handle
                .route()
                .add(message)
                .replace()
                .execute()
                .await
                .map_err(self.netlink(format!("route replace {dst} {action:?}")))?;
        }
        for rule in &changes.add_rules {
            let mut request = handle.rule().add();
            *request.message_mut() = rule_message(rule);
            request
                .execute()
                .await
                .map_err(self.netlink(format!("rule add {rule:?}")))?;
        }
        for rule in &changes.delete_rules {
            handle
                .rule()
                .del(rule_message(rule))
                .execute()
                .await
                .map_err(self.netlink(format!("rule del {rule:?}")))?;
        }
        for dst in &changes.delete_routes {
            let message = route_message(*dst, RouteAction::Prohibit, None);
            let mut message = message;
            // Delete by table, destination and protocol, whatever the type.
            message.header.kind = RouteType::Unspec;
            handle
                .route()
                .del(message)
                .execute()
                .await
                .map_err(self.netlink(format!("route del {dst}")))?;
        }
        Ok(())
    }

    /// For the interface with `mac` in this namespace, the ifindex of its
    /// veth peer in the host namespace (IFLA_LINK).
    pub async fn peer_ifindex_by_mac(&self, mac: &str) -> Result<Option<u32>, RoutesError> {
        Ok(self.link_by_mac(mac).await?.and_then(|link| peer_of(&link)))
    }

    /// For each interface here whose MAC is one of `macs`, the ifindex of
    /// its veth peer in the host namespace, from one dump; sorted.
    pub async fn peer_ifindexes_by_macs(&self, macs: &[String]) -> Result<Vec<u32>, RoutesError> {
        let wanted: Vec<Vec<u8>> = macs.iter().map(|m| parse_mac(m)).collect();
        let mut peers: Vec<u32> = self
            .links()
            .await?
            .iter()
            .filter(|link| {
                link.attributes
                    .iter()
                    .any(|a| matches!(a, LinkAttribute::Address(addr) if wanted.contains(addr)))
            })
            .filter_map(peer_of)
            .collect();
        peers.sort_unstable();
        peers.dedup();
        Ok(peers)
    }

    /// Both ends of the veth with `mac` in this namespace, from one dump:
    /// (its ifindex here, its peer's ifindex on the host).
    pub async fn veth_ends_by_mac(&self, mac: &str) -> Result<Option<(u32, u32)>, RoutesError> {
        Ok(self
            .link_by_mac(mac)
            .await?
            .and_then(|link| Some((link.header.index, peer_of(&link)?))))
    }

    /// The netlink handle bound to this namespace, for writes: only a
    /// handle from [`NamespaceHandle::open_owned`] has one.
    pub fn netlink_handle(&self) -> Result<&Handle, RoutesError> {
        self.writable()
    }

    /// The netlink handle bound to this namespace, for dumps only.
    pub fn dump_handle(&self) -> &Handle {
        &self.handle
    }

    async fn ifindex_by_mac(&self, mac: &str) -> Result<Option<u32>, RoutesError> {
        Ok(self.link_by_mac(mac).await?.map(|link| link.header.index))
    }

    /// The interface in this namespace whose hardware address is `mac`.
    async fn link_by_mac(&self, mac: &str) -> Result<Option<LinkMessage>, RoutesError> {
        let wanted = parse_mac(mac);
        Ok(self.links().await?.into_iter().find(|link| {
            link.attributes
                .iter()
                .any(|a| matches!(a, LinkAttribute::Address(addr) if *addr == wanted))
        }))
    }
}

impl NamespaceHandle {
    async fn links(&self) -> Result<Vec<LinkMessage>, RoutesError> {
        self.handle
            .link()
            .get()
            .execute()
            .try_collect()
            .await
            .map_err(self.netlink("link dump"))
    }
}

/// The peer ifindex a veth end names (IFLA_LINK).
fn peer_of(link: &LinkMessage) -> Option<u32> {
    link.attributes.iter().find_map(|a| match a {
        LinkAttribute::Link(peer) => Some(*peer),
        _ => None,
    })
}

/// `02:42:ac:11:00:02` as bytes; malformed octets are skipped.
pub fn parse_mac(mac: &str) -> Vec<u8> {
    mac.split(':')
        .filter_map(|b| u8::from_str_radix(b, 16).ok())
        .collect()
}

fn route_message(dst: Cidr, action: RouteAction, oif: Option<u32>) -> RouteMessage {
    let builder = RouteMessageBuilder::<IpAddr>::new()
        .destination_prefix(dst.addr(), dst.prefix_len())
        .expect("a Cidr is always a valid prefix")
        .table_id(NETWARP_TABLE)
        .protocol(RouteProtocol::Other(NETWARP_PROTOCOL));
    let builder = match action {
        RouteAction::Via(gateway) => {
            let builder = builder
                .gateway(gateway)
                .expect("planner keeps gateway and destination in one family")
                .kind(RouteType::Unicast);
            match oif {
                Some(index) => builder.output_interface(index),
                None => builder,
            }
        }
        RouteAction::Prohibit => builder.kind(RouteType::Prohibit),
    };
    builder.build()
}

fn parse_owned_route(route: &RouteMessage) -> Option<(Cidr, RouteAction)> {
    if route.header.protocol != RouteProtocol::Other(NETWARP_PROTOCOL) {
        return None;
    }
    let table = route
        .attributes
        .iter()
        .find_map(|a| match a {
            RouteAttribute::Table(t) => Some(*t),
            _ => None,
        })
        .unwrap_or(u32::from(route.header.table));
    if table != NETWARP_TABLE {
        return None;
    }
    let addr = |a: &RouteAddress| match a {
        RouteAddress::Inet(v4) => Some(IpAddr::V4(*v4)),
        RouteAddress::Inet6(v6) => Some(IpAddr::V6(*v6)),
        _ => None,
    };
    let dst_addr = route.attributes.iter().find_map(|a| match a {
        RouteAttribute::Destination(d) => addr(d),
        _ => None,
    });
    let dst_addr = dst_addr.unwrap_or(match route.header.address_family {
        AddressFamily::Inet6 => IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED),
        _ => IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED),
    });
    let dst = Cidr::new(dst_addr, route.header.destination_prefix_length).ok()?;
    let action = match route.header.kind {
        RouteType::Prohibit => RouteAction::Prohibit,
        _ => RouteAction::Via(route.attributes.iter().find_map(|a| match a {
            RouteAttribute::Gateway(g) => addr(g),
            _ => None,
        })?),
    };
    Some((dst, action))
}

fn rule_message(rule: &OwnedRule) -> RuleMessage {
    let mut message = tagged_rule(
        rule.destination.is_ipv6(),
        NETWARP_RULE_PRIORITY,
        RuleAction::ToTable,
    );
    message.attributes.push(RuleAttribute::Table(NETWARP_TABLE));
    match_selector(&mut message, rule);
    message
}

fn parse_owned_rule(rule: &RuleMessage) -> Option<OwnedRule> {
    let tagged = TaggedRule::parse(rule)?;
    let owned =
        tagged.priority == Some(NETWARP_RULE_PRIORITY) && tagged.table == Some(NETWARP_TABLE);
    owned.then_some(tagged.selector)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::parse_rules;

    fn entries(rules: &str, action: Action) -> Vec<Entry> {
        Entry::all(&parse_rules(rules).unwrap(), action)
    }

    fn via(ip: &str) -> Action {
        Action::Via(ip.parse().unwrap())
    }

    #[test]
    fn one_route_per_destination_and_one_rule_per_selector() {
        let state = desired_state(&entries(
            "203.0.113.0/24,tcp:443,udp:5000-5100",
            via("172.20.0.2"),
        ));
        assert_eq!(state.routes.len(), 1);
        assert_eq!(state.rules.len(), 2);
        let protos: Vec<Option<u8>> = state.rules.iter().map(|r| r.ip_proto).collect();
        assert_eq!(protos, [Some(6), Some(17)]);
    }

    #[test]
    fn rules_and_routes_survive_a_netlink_round_trip() {
        let state = desired_state(&entries(
            "203.0.113.0/24,2001:db8::/32,tcp:8000-8100",
            Action::Block,
        ));
        for rule in &state.rules {
            assert_eq!(parse_owned_rule(&rule_message(rule)), Some(*rule));
        }
        for (dst, action) in &state.routes {
            let mut message = route_message(*dst, *action, Some(3));
            message
                .attributes
                .push(RouteAttribute::Table(NETWARP_TABLE));
            assert_eq!(parse_owned_route(&message), Some((*dst, *action)));
        }
        let default = desired_state(&entries("0.0.0.0/0", via("172.20.0.2")));
        let rule = default.rules.first().unwrap();
        assert_eq!(parse_owned_rule(&rule_message(rule)), Some(*rule));
    }

    #[test]
    fn foreign_entries_are_never_ours() {
        let mut rule = rule_message(&OwnedRule {
            destination: "192.0.2.0/24".parse().unwrap(),
            ip_proto: None,
            ports: None,
        });
        rule.attributes
            .retain(|a| !matches!(a, RuleAttribute::Protocol(_)));
        rule.attributes
            .push(RuleAttribute::Protocol(RouteProtocol::Boot));
        assert_eq!(parse_owned_rule(&rule), None);
        let mut route = route_message("192.0.2.0/24".parse().unwrap(), RouteAction::Prohibit, None);
        route.header.protocol = RouteProtocol::Static;
        assert_eq!(parse_owned_route(&route), None);
    }

    #[test]
    fn diff_is_empty_when_converged() {
        let state = desired_state(&entries("203.0.113.0/24,tcp:443", via("172.20.0.2")));
        assert!(diff(&state, &state).is_empty());
    }

    #[test]
    fn a_warp_going_down_replaces_routes_in_place() {
        let up = desired_state(&entries("203.0.113.0/24,tcp:443", via("172.20.0.2")));
        let down = desired_state(&entries("203.0.113.0/24,tcp:443", Action::Block));
        let changes = diff(&up, &down);
        assert_eq!(
            changes.put_routes,
            vec![("203.0.113.0/24".parse().unwrap(), RouteAction::Prohibit)]
        );
        assert!(
            changes.add_rules.is_empty()
                && changes.delete_rules.is_empty()
                && changes.delete_routes.is_empty()
        );
    }

    #[test]
    fn stale_entries_are_removed() {
        let old = desired_state(&entries("203.0.113.0/24,tcp:443", via("172.20.0.2")));
        let new = desired_state(&entries("198.51.100.0/24", via("172.20.0.2")));
        let changes = diff(&old, &new);
        assert_eq!(
            changes.delete_routes,
            vec!["203.0.113.0/24".parse().unwrap()]
        );
        assert_eq!(changes.delete_rules.len(), 1);
        assert_eq!(changes.add_rules.len(), 1);
        assert_eq!(changes.put_routes.len(), 1);
        let cleared = diff(&new, &OwnedState::default());
        assert_eq!(cleared.delete_rules.len(), 1);
        assert_eq!(cleared.delete_routes.len(), 1);
    }
}
