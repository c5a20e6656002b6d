//! Reading a daemon's observability surfaces the way an operator's tools
//! would: the metrics endpoint over plain HTTP, parsed by the reference
//! Python `prometheus_client` OpenMetrics parser (Debian's
//! `python3-prometheus-client`), and `netwarp status --json`.

use std::{
    collections::BTreeMap,
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpStream},
    process::{Command, Stdio},
    time::Duration,
};

use anyhow::{Context as _, bail};

use crate::daemon::{Daemon, netwarp_binary};

/// The interpreter with Debian's packages (not a pyenv shim).
const PYTHON: &str = "/usr/bin/python3";

/// Parses OpenMetrics text from stdin strictly and prints every sample.
const PARSER: &str = r#"
import json, sys
from prometheus_client.openmetrics.parser import text_string_to_metric_families
out = []
for family in text_string_to_metric_families(sys.stdin.read()):
    for s in family.samples:
        out.append({"family": family.name, "type": family.type, "name": s.name,
                    "labels": s.labels, "value": s.value})
print(json.dumps(out))
"#;

/// Why the parser cannot run, if it cannot.
pub fn missing_parser() -> Option<String> {
    let ok = Command::new(PYTHON)
        .args(["-c", "import prometheus_client.openmetrics.parser"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    (!ok).then(|| {
        format!("needs {PYTHON} with Debian's python3-prometheus-client (run `cargo xtask setup`)")
    })
}

/// `GET /metrics`: the content type and the body.
pub fn scrape(address: SocketAddr) -> anyhow::Result<(String, String)> {
    let mut stream = TcpStream::connect_timeout(&address, Duration::from_secs(5))
        .with_context(|| format!("connecting to the metrics endpoint {address}"))?;
    stream.set_read_timeout(Some(Duration::from_secs(20)))?;
    write!(
        stream,
        "GET /metrics HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n"
    )?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let (head, body) = response
        .split_once("\r\n\r\n")
        .with_context(|| format!("no HTTP header end in {response:?}"))?;
    if !head.starts_with("HTTP/1.1 200") {
        bail!("the metrics endpoint answered {head}");
    }
    let content_type = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-type")
                .then(|| v.trim().to_owned())
        })
        .unwrap_or_default();
    Ok((content_type, body.to_owned()))
}

#[derive(Clone, Debug)]
pub struct Sample {
    pub family: String,
    pub kind: String,
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

/// Every sample of one scrape, as the reference parser read them.
#[derive(Clone, Debug)]
pub struct Exposition {
    pub samples: Vec<Sample>,
    pub text: String,
}

impl Exposition {
    /// Scrapes and parses; a parse error fails.
    pub fn scrape(address: SocketAddr) -> anyhow::Result<Self> {
        let (content_type, text) = scrape(address)?;
        if !content_type.starts_with("application/openmetrics-text") {
            bail!("content type {content_type:?} is not OpenMetrics");
        }
        Self::parse(&text)
    }

    pub fn parse(text: &str) -> anyhow::Result<Self> {
        let mut child = Command::new(PYTHON)
            .args(["-c", PARSER])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("starting the Python parser")?;
        child
            .stdin
            .take()
            .expect("piped")
            .write_all(text.as_bytes())?;
        let out = child.wait_with_output()?;
        if !out.status.success() {
            bail!(
                "the reference parser rejected the exposition: {}\n{text}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        let parsed: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout)?;
        let samples = parsed
            .into_iter()
            .map(|v| Sample {
                family: v["family"].as_str().unwrap_or_default().to_owned(),
                kind: v["type"].as_str().unwrap_or_default().to_owned(),
                name: v["name"].as_str().unwrap_or_default().to_owned(),
                labels: v["labels"]
                    .as_object()
                    .map(|o| {
                        o.iter()
                            .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_owned()))
                            .collect()
                    })
                    .unwrap_or_default(),
                value: v["value"].as_f64().unwrap_or(f64::NAN),
            })
            .collect();
        Ok(Self {
            samples,
            text: text.to_owned(),
        })
    }

    /// Samples named `name` whose labels include all of `labels`.
    pub fn find(&self, name: &str, labels: &[(&str, &str)]) -> Vec<&Sample> {
        self.samples
            .iter()
            .filter(|s| s.name == name)
            .filter(|s| {
                labels
                    .iter()
                    .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
            })
            .collect()
    }

    /// The value of the one sample named `name` with `labels`.
    pub fn value(&self, name: &str, labels: &[(&str, &str)]) -> anyhow::Result<f64> {
        match self.find(name, labels).as_slice() {
            [one] => Ok(one.value),
            [] => bail!("no sample {name} {labels:?} in:\n{}", self.text),
            many => bail!("{} samples {name} {labels:?}: {many:?}", many.len()),
        }
    }

    /// Every sample carrying label `key` = `value`.
    pub fn with_label(&self, key: &str, value: &str) -> Vec<&Sample> {
        self.samples
            .iter()
            .filter(|s| s.labels.get(key).map(String::as_str) == Some(value))
            .collect()
    }
}

/// `netwarp status --json` against the daemon's own socket.
pub fn status_json(daemon: &Daemon) -> anyhow::Result<serde_json::Value> {
    let socket = daemon.control_socket().to_str().context("utf-8 path")?;
    let out = crate::command::run(
        netwarp_binary().to_str().context("utf-8 path")?,
        &["status", "--json", "--control-socket", socket],
    )?;
    serde_json::from_str(&out).with_context(|| format!("status is not JSON: {out}"))
}

/// `netwarp status` (the table) against the daemon's own socket.
pub fn status_table(daemon: &Daemon) -> anyhow::Result<String> {
    let socket = daemon.control_socket().to_str().context("utf-8 path")?;
    crate::command::run(
        netwarp_binary().to_str().context("utf-8 path")?,
        &["status", "--control-socket", socket],
    )
}

/// The target named `name` in a status document.
pub fn status_target<'a>(
    status: &'a serde_json::Value,
    name: &str,
) -> Option<&'a serde_json::Value> {
    status["targets"]
        .as_array()?
        .iter()
        .find(|t| t["name"] == name)
}

/// A counter of the container's own `eth0`, read inside it: what the
/// kernel's veth driver counted on the container side.
pub fn interface_counter(
    container: &crate::docker::Container,
    counter: &str,
) -> anyhow::Result<u64> {
    let path = format!("/sys/class/net/eth0/statistics/{counter}");
    let text = container.exec(&["cat", &path])?;
    text.trim()
        .parse()
        .with_context(|| format!("{path}: `{}`", text.trim()))
}
