//! The rate and size parsers (cap labels and `[rate_limits]`): no input
//! may panic, and accepted values stay inside their documented bounds.
#![no_main]

use libfuzzer_sys::fuzz_target;
use netwarp::model::{parse_rate, parse_size};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(rate) = parse_rate(text) {
        assert!(rate.bits_per_second() > 0, "`{text}` parsed to a zero rate");
        let _ = netwarp::model::default_burst(rate);
    }
    if let Ok(size) = parse_size(text) {
        assert!(size > 0, "`{text}` parsed to a zero size");
    }
});
