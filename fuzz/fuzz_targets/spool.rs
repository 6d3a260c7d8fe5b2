//! The spool record scan on an arbitrary (damaged) segment file: it must not panic, and every
//! record it reports must lie inside the file, in order, without overlap.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vigil_sensor::spool::record;

fuzz_target!(|data: &[u8]| {
    let scan = record::scan(data);
    let mut end = 0u64;
    for meta in &scan.records {
        assert!(meta.offset >= end, "records overlap: {scan:?}");
        end = meta.offset + meta.len();
        assert!(end <= data.len() as u64, "record past the end: {scan:?}");
    }
});
