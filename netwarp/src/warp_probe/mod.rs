//! Probes of the path through a warp: netwarp checks, from inside the
//! warp's own namespace, that an address reached through its tunnel
//! answers, so a warp whose tunnel died silently (its process still runs,
//! Docker still calls it healthy) can be told apart from a working one.
//!
//! A probe is named on the warp container by a label: `tcp:ADDR:PORT` (a
//! TCP connect; `tcp:[V6]:PORT` for IPv6). The socket is created inside
//! the warp's namespace on a short-lived thread and connected from the
//! runtime, so the SYN leaves by the warp's own routes, as the traffic it
//! carries does. No shell, no external command.
//!
//! The verdict is a window: a warp is down when at least `failures` of its
//! last `window` probes failed, and up again once fewer have; before its
//! first result it is unknown, which the planner treats as down (doubt
//! fails closed).

use std::{
    collections::VecDeque,
    fmt,
    net::{IpAddr, SocketAddr},
    str::FromStr,
    time::{Duration, Instant},
};

use crate::dataplane::netns::{NetnsError, inside_namespace};

mod prober;
pub use prober::{ProbeReport, ProbedWarp, Prober, Wakeups};

/// What a warp's probe checks.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ProbeSpec {
    /// A TCP connect to this address from the warp's namespace.
    pub address: SocketAddr,
    /// `@IFACE`: the probe leaves only by this interface (the tunnel's,
    /// e.g. wg0), so a VPN client whose tunnel is down cannot answer it by
    /// its default route; a missing interface fails the probe.
    pub interface: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ProbeSpecError {
    #[error(
        "probe `{0}` is not understood; write tcp:ADDRESS:PORT[@TUNNEL] (e.g. \
         tcp:198.51.100.7:443@wg0, tcp:[2001:db8::7]:443), an address the warp reaches \
         through its tunnel, and that tunnel's interface"
    )]
    Syntax(String),
    #[error("probe `{0}`: port 0 cannot be connected to; name the port the address serves")]
    PortZero(String),
    #[error(
        "probe `{0}`: {1} is not an address reached through a tunnel (loopback, unspecified \
         or multicast); name one behind the tunnel"
    )]
    Address(String, IpAddr),
}

impl FromStr for ProbeSpec {
    type Err = ProbeSpecError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let trimmed = text.trim();
        let syntax = || ProbeSpecError::Syntax(trimmed.to_owned());
        let (kind, rest) = trimmed.split_once(':').ok_or_else(syntax)?;
        let (rest, interface) = match rest.rsplit_once('@') {
            // An interface name as the kernel takes it: 1 to 15 bytes, no
            // slash, colon or whitespace.
            Some((rest, name))
                if !name.is_empty()
                    && name.len() < 16
                    && !name.contains(['/', ':'])
                    && !name.contains(char::is_whitespace) =>
            {
                (rest, Some(name.to_owned()))
            }
            Some(_) => return Err(syntax()),
            None => (rest, None),
        };
        match kind.to_ascii_lowercase().as_str() {
            "tcp" => {
                let address: SocketAddr = rest.parse().map_err(|_| syntax())?;
                if address.port() == 0 {
                    return Err(ProbeSpecError::PortZero(trimmed.to_owned()));
                }
                let ip = address.ip();
                if ip.is_loopback() || ip.is_unspecified() || ip.is_multicast() {
                    return Err(ProbeSpecError::Address(trimmed.to_owned(), ip));
                }
                Ok(Self { address, interface })
            }
            _ => Err(syntax()),
        }
    }
}

impl fmt::Display for ProbeSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "tcp:{}", self.address)?;
        match &self.interface {
            Some(interface) => write!(f, "@{interface}"),
            None => Ok(()),
        }
    }
}

/// How often and how strictly probes run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProbeSettings {
    pub interval: Duration,
    pub timeout: Duration,
    /// A warp is down when at least this many of its last `window` probes
    /// failed.
    pub failures: usize,
    pub window: usize,
}

impl Default for ProbeSettings {
    fn default() -> Self {
        Self {
            interval: Duration::from_secs(5),
            timeout: Duration::from_secs(2),
            failures: 3,
            window: 5,
        }
    }
}

/// What the probes of one warp say.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ProbeVerdict {
    /// No result yet: treated as down.
    Unknown,
    Up,
    /// With the last failure's reason.
    Down {
        failed: usize,
        of: usize,
        last_error: String,
    },
}

impl ProbeVerdict {
    pub fn is_up(&self) -> bool {
        matches!(self, Self::Up)
    }
}

/// The last results of one warp's probe.
#[derive(Clone, Debug, Default)]
pub struct ProbeHistory {
    /// Oldest first; at most `window` long. `Err` holds the reason.
    results: VecDeque<Result<Duration, String>>,
}

impl ProbeHistory {
    pub fn record(&mut self, result: Result<Duration, String>, settings: &ProbeSettings) {
        self.results.push_back(result);
        while self.results.len() > settings.window.max(1) {
            self.results.pop_front();
        }
    }

    pub fn verdict(&self, settings: &ProbeSettings) -> ProbeVerdict {
        if self.results.is_empty() {
            return ProbeVerdict::Unknown;
        }
        let failed = self.results.iter().filter(|r| r.is_err()).count();
        // A window shorter than `failures` (the first probes) is judged by
        // what it holds: a warp whose first probe failed is not up.
        let threshold = settings.failures.max(1).min(self.results.len());
        if failed >= threshold {
            let last_error = (self.results.iter().rev())
                .find_map(|r| r.as_ref().err().cloned())
                .unwrap_or_default();
            ProbeVerdict::Down {
                failed,
                of: self.results.len(),
                last_error,
            }
        } else {
            ProbeVerdict::Up
        }
    }

    /// The round-trip time of the last successful probe.
    pub fn last_rtt(&self) -> Option<Duration> {
        self.results
            .iter()
            .rev()
            .find_map(|r| r.as_ref().ok().copied())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error(transparent)]
    Namespace(#[from] NetnsError),
    #[error("{spec}: no answer within {timeout:?}")]
    Timeout { spec: ProbeSpec, timeout: Duration },
    #[error("{spec}: {source}")]
    Io {
        spec: ProbeSpec,
        #[source]
        source: std::io::Error,
    },
}

/// Runs `spec` once from the namespace of `pid` (the warp's); returns the
/// round-trip time.
pub async fn probe_once(
    pid: u32,
    spec: ProbeSpec,
    timeout: Duration,
) -> Result<Duration, ProbeError> {
    let address = spec.address;
    let socket = inside_namespace(pid, move || match address {
        SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4(),
        SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6(),
    })
    .await?;
    if let Some(interface) = &spec.interface {
        // The kernel looks the name up in the socket's namespace (the
        // warp's), whichever thread asks.
        if let Err(e) = socket.bind_device(Some(interface.as_bytes())) {
            // The tunnel's interface is gone: a failed probe, not a fault.
            let source = match e.raw_os_error() {
                Some(libc::ENODEV) => std::io::Error::other(format!("no interface {interface}")),
                _ => e,
            };
            return Err(ProbeError::Io { spec, source });
        }
    }
    let started = Instant::now();
    match tokio::time::timeout(timeout, socket.connect(address)).await {
        Ok(Ok(_stream)) => Ok(started.elapsed()),
        Ok(Err(source)) => Err(ProbeError::Io { spec, source }),
        Err(_) => Err(ProbeError::Timeout { spec, timeout }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_parse_and_bad_ones_say_what_to_write() {
        let spec = |address: &str, interface: Option<&str>| ProbeSpec {
            address: address.parse().unwrap(),
            interface: interface.map(str::to_owned),
        };
        assert_eq!(
            "tcp:198.51.100.7:443".parse::<ProbeSpec>(),
            Ok(spec("198.51.100.7:443", None))
        );
        assert_eq!(
            " TCP:[2001:db8::7]:443 ".parse::<ProbeSpec>(),
            Ok(spec("[2001:db8::7]:443", None))
        );
        assert_eq!(
            "tcp:198.51.100.7:443@wg0".parse::<ProbeSpec>(),
            Ok(spec("198.51.100.7:443", Some("wg0")))
        );
        for text in ["tcp:[2001:db8::7]:443", "tcp:198.51.100.7:443@tun0"] {
            assert_eq!(text.parse::<ProbeSpec>().unwrap().to_string(), text);
        }
        for bad in [
            "",
            "198.51.100.7:443",
            "udp:198.51.100.7:53",
            "tcp:198.51.100.7",
            "tcp:x:1",
            "tcp:198.51.100.7:443@",
            "tcp:198.51.100.7:443@a-name-far-too-long",
        ] {
            let error = bad.parse::<ProbeSpec>().unwrap_err().to_string();
            assert!(error.contains("tcp:ADDRESS:PORT"), "{bad}: {error}");
        }
        assert!(matches!(
            "tcp:198.51.100.7:0".parse::<ProbeSpec>(),
            Err(ProbeSpecError::PortZero(_))
        ));
        assert!(matches!(
            "tcp:127.0.0.1:443".parse::<ProbeSpec>(),
            Err(ProbeSpecError::Address(..))
        ));
    }

    fn settings() -> ProbeSettings {
        ProbeSettings {
            failures: 2,
            window: 3,
            ..ProbeSettings::default()
        }
    }

    fn history(results: &[bool]) -> ProbeHistory {
        let mut history = ProbeHistory::default();
        for (i, ok) in results.iter().enumerate() {
            let result = if *ok {
                Ok(Duration::from_millis(i as u64 + 1))
            } else {
                Err(format!("failure {i}"))
            };
            history.record(result, &settings());
        }
        history
    }

    #[test]
    fn a_warp_is_down_at_the_threshold_and_up_again_below_it() {
        let s = settings();
        assert_eq!(history(&[]).verdict(&s), ProbeVerdict::Unknown);
        assert!(!ProbeVerdict::Unknown.is_up());
        assert_eq!(history(&[true]).verdict(&s), ProbeVerdict::Up);
        // One failure of one: not up (a first probe that fails).
        assert!(!history(&[false]).verdict(&s).is_up());
        // One failure of three: still up.
        assert_eq!(history(&[true, false, true]).verdict(&s), ProbeVerdict::Up);
        assert_eq!(
            history(&[true, false, false]).verdict(&s),
            ProbeVerdict::Down {
                failed: 2,
                of: 3,
                last_error: "failure 2".into()
            }
        );
        // The window slides: two successes after two failures leave one
        // failure in the last three.
        assert_eq!(
            history(&[false, false, true, true]).verdict(&s),
            ProbeVerdict::Up
        );
        assert!(!history(&[false, false, true]).verdict(&s).is_up());
    }

    #[test]
    fn the_last_rtt_is_the_last_success() {
        assert_eq!(
            history(&[true, true, false]).last_rtt(),
            Some(Duration::from_millis(2))
        );
        assert_eq!(history(&[false]).last_rtt(), None);
    }
}
