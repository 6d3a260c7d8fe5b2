//! The sensor and collector config parsers (YAML, layered) on arbitrary text.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|text: &str| {
    let _ = vigil_collector::CollectorConfig::from_yaml_str(text);
    let _ = vigil_sensor::config::SensorConfig::parse(text, Path::new("<fuzz>"));
});
