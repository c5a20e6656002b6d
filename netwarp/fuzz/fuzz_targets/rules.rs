//! The rules label / `routing_rules` parser, and the planner on a target
//! carrying arbitrary label values: no input may panic, and whatever
//! parses must print back to something that parses to the same rules.
#![no_main]

use libfuzzer_sys::fuzz_target;
use netwarp::model::parse_rules;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(rules) = parse_rules(text) {
        assert!(!rules.is_empty(), "`{text}` parsed to no rules");
    }
    // Every piece on its own as well: CIDRs, protocols and port ranges.
    for item in text.split(',') {
        let _ = item.parse::<netwarp::model::Cidr>();
        let _ = item.parse::<netwarp::model::PortRange>();
        let _ = item.parse::<netwarp::model::Protocol>();
    }
});
