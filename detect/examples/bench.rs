//! `cargo run --release -p vigil-detect --example bench [SIGMA_PROCESS_CREATION_DIR]`:
//! ns per event of the match path (see `vigil_detect::bench`).

use std::path::PathBuf;

fn main() {
    let sigma = std::env::args()
        .nth(1)
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                .join("../../shared/sigma/rules/linux/process_creation")
        });
    for r in vigil_detect::bench::run(Some(&sigma)) {
        println!(
            "{:<42} {:>5} rules {:>3} events {:>10.1} ns/event ({} matches per pass)",
            r.label, r.rules, r.events, r.ns_per_event, r.matches_per_pass
        );
    }
}
