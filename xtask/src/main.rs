//! `cargo xtask`: the two README commands (`run`, `test`) and the steps they are made of.

mod bootstrap;
mod build;
mod stack;
mod test;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(about = "Build, run and test Vigil")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Install what the eBPF build needs (nightly rust-src, bpf-linker) if it is missing.
    Bootstrap,
    /// Build the kernel programs and every binary.
    Build,
    /// Build, then run collector + sensor + live alert tail until Ctrl-C (root).
    Run,
    /// Build, then run every test tier this machine supports.
    Test,
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Bootstrap => bootstrap::ensure().map(|_| ()),
        Command::Build => build::all().map(|_| ()),
        Command::Run => stack::run(),
        Command::Test => test::run(),
    }
}
