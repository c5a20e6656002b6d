//! The shipped operations files are valid: the systemd unit passes
//! `systemd-analyze verify` without a single warning, and the example
//! config is accepted by `netwarp check-config` and sets every key.

use std::path::{Path, PathBuf};

use netwarp_tests::{command::output, daemon::netwarp_binary, skip_if};

fn repository() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn missing_systemd_analyze() -> Option<String> {
    match output("systemd-analyze", &["--version"]) {
        Ok(out) if out.status.success() => None,
        _ => {
            Some("needs systemd-analyze (Debian package `systemd`; run `cargo xtask setup`)".into())
        }
    }
}

/// Verifies `unit` as installed, with ExecStart pointing at the built
/// binary (verify checks that the command exists and is executable).
/// Returns everything it printed.
fn verify(unit_text: &str, dir: &Path) -> (bool, String) {
    let unit = dir.join("netwarp.service");
    let text = unit_text.replace(
        "/usr/local/bin/netwarp",
        netwarp_binary().to_str().expect("utf-8"),
    );
    std::fs::write(&unit, text).expect("writing the unit copy");
    let out = output(
        "systemd-analyze",
        &["verify", unit.to_str().expect("utf-8")],
    )
    .expect("systemd-analyze");
    let printed = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), printed)
}

#[test]
fn the_systemd_unit_verifies_cleanly() {
    let test = "the_systemd_unit_verifies_cleanly";
    skip_if!(test, missing_systemd_analyze());
    let dir = std::env::temp_dir().join(netwarp_tests::unique_name("nwu"));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let shipped = std::fs::read_to_string(repository().join("packaging/netwarp.service"))
        .expect("packaging/netwarp.service");

    // The check can fail: a misspelt key and a bad value are reported.
    let broken = shipped
        .replace("NoNewPrivileges=yes", "NoNewPrivilege=yes")
        .replace("ProtectSystem=strict", "ProtectSystem=very");
    let (_, printed) = verify(&broken, &dir);
    assert!(
        printed.contains("NoNewPrivilege") && printed.contains("very"),
        "systemd-analyze did not flag a broken unit:\n{printed}"
    );

    let (ok, printed) = verify(&shipped, &dir);
    let _ = std::fs::remove_dir_all(&dir);
    assert!(ok, "systemd-analyze verify failed:\n{printed}");
    assert!(
        printed.trim().is_empty(),
        "systemd-analyze verify warned:\n{printed}"
    );
    for needed in [
        "CAP_NET_ADMIN",
        "CAP_SYS_ADMIN",
        "CAP_SYS_PTRACE",
        "CAP_BPF",
        "CAP_PERFMON",
        "RuntimeDirectory=netwarp",
        "Restart=on-failure",
        "NoNewPrivileges=yes",
    ] {
        assert!(shipped.contains(needed), "the unit lacks {needed}");
    }
}

#[test]
fn the_example_config_is_valid_and_complete() {
    let example = repository().join("examples/netwarp.toml");
    let out = output(
        netwarp_binary().to_str().expect("utf-8"),
        &["check-config", "--config", example.to_str().expect("utf-8")],
    )
    .expect("check-config");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Every key is set in the file (documented there), none left to a default.
    for key in netwarp::config::KEYS {
        let line = stdout
            .lines()
            .find(|l| l.split_whitespace().next() == Some(key.name))
            .unwrap_or_else(|| panic!("{} is not listed:\n{stdout}", key.name));
        // Keys that are refused outside their mode are documented as
        // commented-out lines instead.
        let example_text = std::fs::read_to_string(&example).expect("example");
        let short = key.name.rsplit('.').next().expect("a name");
        let commented_out = example_text
            .lines()
            .any(|l| l.trim_start().starts_with(&format!("# {short} = ")));
        assert!(
            line.contains("config file") || commented_out,
            "{} is not set in examples/netwarp.toml: {line}",
            key.name
        );
    }
}

#[test]
fn the_compose_example_names_real_keys() {
    let test = "the_compose_example_names_real_keys";
    skip_if!(test, missing_compose());
    let compose = repository().join("examples/compose.yaml");
    let text = std::fs::read_to_string(&compose).expect("examples/compose.yaml");
    for label in [
        "netwarp.target",
        "netwarp.rules",
        "netwarp.network",
        "netwarp.egress-rate",
        "netwarp.ingress-rate",
        "netwarp.burst",
    ] {
        assert!(text.contains(label), "compose.yaml lacks {label}");
    }
    // Valid Compose, checked by docker-compose (Debian's, installed by setup).
    assert_compose_accepts(&compose);
}

/// The README's full-tunnel stack is the example file, word for word;
/// Compose accepts it, and netwarp accepts its rules labels.
#[test]
fn the_full_tunnel_compose_example_is_valid_and_in_the_readme() {
    let test = "the_full_tunnel_compose_example_is_valid_and_in_the_readme";
    skip_if!(test, missing_compose());
    let compose = repository().join("examples/compose.full-tunnel.yaml");
    let text = std::fs::read_to_string(&compose).expect("examples/compose.full-tunnel.yaml");
    let readme = std::fs::read_to_string(repository().join("README.md")).expect("README.md");
    assert!(
        readme.contains(&format!("```yaml\n{text}```")),
        "README.md does not show examples/compose.full-tunnel.yaml as it is"
    );
    let rules: Vec<&str> = (text.lines())
        .filter_map(|line| line.trim().strip_prefix("netwarp.rules:"))
        .map(|value| value.trim().trim_matches('"'))
        .collect();
    assert!(!rules.is_empty(), "the example has no netwarp.rules label");
    for value in rules {
        let policy = netwarp::model::parse_policy(value)
            .unwrap_or_else(|e| panic!("netwarp refuses `{value}`: {e}"));
        assert!(
            policy
                .rules
                .iter()
                .any(|r| r.verb == netwarp::model::Verb::Direct),
            "the full-tunnel example shows no exclusion: `{value}`"
        );
    }
    assert_compose_accepts(&compose);
}

/// `docker-compose config` accepts the file.
fn assert_compose_accepts(compose: &std::path::Path) {
    let check = output(
        "docker-compose",
        &["-f", compose.to_str().expect("utf-8"), "config", "--quiet"],
    )
    .expect("docker-compose");
    assert!(
        check.status.success(),
        "{}",
        String::from_utf8_lossy(&check.stderr)
    );
}

fn missing_compose() -> Option<String> {
    match output("docker-compose", &["version"]) {
        Ok(out) if out.status.success() => None,
        _ => Some("needs docker-compose (Debian package; run `cargo xtask setup`)".into()),
    }
}

/// The Grafana dashboard and the alert rules use only metrics the README
/// documents (and the metrics tests check the endpoint exports).
#[test]
fn dashboards_and_alerts_use_documented_metrics() {
    let readme = std::fs::read_to_string(repository().join("README.md")).expect("README.md");
    let documented = |name: &str| {
        // The README table writes `_packets_total` siblings as suffixes.
        readme.contains(&format!("`{name}`"))
            || ["_bytes_total", "_packets_total"].iter().any(|s| {
                name.strip_suffix(s).is_some_and(|stem| {
                    readme.contains(&format!("`{stem}_bytes_total`, `_packets_total`"))
                })
            })
            || ["_bucket", "_count", "_sum"].iter().any(|s| {
                name.strip_suffix(s)
                    .is_some_and(|b| readme.contains(&format!("`{b}`")))
            })
    };
    let dashboard =
        std::fs::read_to_string(repository().join("examples/grafana/netwarp-dashboard.json"))
            .expect("dashboard");
    let _: serde_json::Value = serde_json::from_str(&dashboard).expect("the dashboard is JSON");
    let alerts =
        std::fs::read_to_string(repository().join("examples/netwarp-alerts.yml")).expect("alerts");
    let mut checked = 0;
    for text in [&dashboard, &alerts] {
        for (start, _) in text.match_indices("netwarp_") {
            let name: String = text[start..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            assert!(documented(&name), "{name} is not a documented metric");
            checked += 1;
        }
    }
    assert!(checked >= 10, "only {checked} metric references found");
}
