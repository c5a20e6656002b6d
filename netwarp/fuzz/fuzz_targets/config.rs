//! The config file: TOML parsing, flattening and resolution (every key's
//! validation). No input may panic; every error names the file.
#![no_main]

use libfuzzer_sys::fuzz_target;
use netwarp::config::{Config, Layer};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let path = std::path::Path::new("/fuzz/netwarp.toml");
    let layer = match Layer::from_toml(text, path) {
        Ok(layer) => layer,
        Err(e) => {
            assert!(e.to_string().contains("/fuzz/netwarp.toml"), "{e}");
            return;
        }
    };
    if let Err(e) = Config::resolve(&[layer]) {
        let message = e.to_string();
        assert!(message.contains("/fuzz/netwarp.toml"), "{message}");
    }
});
