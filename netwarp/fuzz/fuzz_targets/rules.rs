//! The rules label / `routing_rules` parser (clauses with actions), the
//! allow and deny list parsers and the DNS policy: no input may panic, and
//! whatever parses must print back to a label that parses to the same
//! rules.
#![no_main]

use libfuzzer_sys::fuzz_target;
use netwarp::{
    model::{Rule, parse_policy, parse_rules},
    plan::{DnsPolicy, allow_only, parse_allow, parse_deny},
};

/// A rule as a clause of the label syntax.
fn clause(rule: &Rule) -> String {
    let mut text = format!("{} {}", rule.verb, rule.destination);
    if let Some(protocol) = rule.protocol {
        text.push_str(&format!(",{protocol}"));
        if let Some(ports) = rule.ports {
            text.push_str(&format!(":{ports}"));
        }
    }
    text
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(rules) = parse_rules(text) {
        assert!(!rules.is_empty(), "`{text}` parsed to no rules");
    }
    if let Ok(policy) = parse_policy(text) {
        let printed: Vec<String> = policy.rules.iter().map(clause).collect();
        let mut again = printed.join("; ");
        if policy.with_global {
            again.push_str("; global");
        }
        let reparsed = parse_policy(&again)
            .unwrap_or_else(|e| panic!("`{text}` printed as `{again}`, which fails: {e}"));
        assert_eq!(reparsed, policy, "`{text}` printed as `{again}`");
    }
    if let Ok(allowed) = parse_allow(text) {
        let rules = allow_only(&[], &allowed);
        assert!(rules.len() >= 2, "an allow list refuses both families");
    }
    let _ = parse_deny(text);
    let _ = text.parse::<DnsPolicy>();
    // Every piece on its own as well: CIDRs, protocols and port ranges.
    for item in text.split([',', ';']) {
        let _ = item.parse::<netwarp::model::Cidr>();
        let _ = item.parse::<netwarp::model::PortRange>();
        let _ = item.parse::<netwarp::model::Protocol>();
    }
});
