//! The collector embeds the console's built front end (console-ui/dist, made by
//! `cargo xtask console-ui`) with rust-embed; rebuild when that directory changes, including
//! when it first appears.

fn main() {
    println!("cargo:rerun-if-changed=console-ui/dist");
}
