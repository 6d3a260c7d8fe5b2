//! `cargo xtask`: the two README commands (`run`, `test`) and the steps they are made of.

mod audit;
mod bench;
mod bootstrap;
mod build;
mod console_ui;
mod fuzz;
mod package;
mod scratch_root;
mod stack;
mod test;
mod tools;
mod vm;

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
    /// Build the kernel programs, the console's front end and every binary.
    Build,
    /// Build only the web console's front end (npm ci, TypeScript, Vite) into
    /// collector/console-ui/dist, which the collector embeds.
    ConsoleUi,
    /// Build, then run collector + sensor + live alert tail until Ctrl-C (root).
    Run,
    /// Build, then run every test tier this machine supports.
    Test,
    /// Run the kernel test tier inside Debian's 6.1 kernel under QEMU (TCG); skips, saying why,
    /// when QEMU or the kernel cannot be had.
    VmTest,
    /// Build in release, then measure the sensor's cost (attached / detached ratios) and the
    /// rule matcher's ns per event; writes JSON and a table under target/bench/ (root).
    Bench {
        /// Fewer, shorter rounds (for CI): checks the benchmark runs, figures are rough.
        #[arg(long)]
        quick: bool,
        /// Run only these series (repeat or separate by commas); default: all of them.
        #[arg(long, value_enum, value_delimiter = ',')]
        only: Vec<bench::Series>,
    },
    /// Run every fuzz target (or one) for a fixed time; fails on a crash, naming its artifact.
    Fuzz {
        /// How long each target runs.
        #[arg(long, default_value_t = 60)]
        seconds: u64,
        /// Run only this target (frame, spool, rules, config).
        #[arg(long)]
        target: Option<String>,
    },
    /// Check the dependencies against the RustSec advisory snapshot, offline (cargo-deny).
    Audit,
    /// Build .deb packages (vigil-cli, vigil-sensor, vigil-collector) with cargo-deb.
    Package {
        /// Which build to package.
        #[arg(long, value_enum, default_value = "release")]
        profile: package::Profile,
    },
    /// Make (once) the debootstrapped Debian root the README install test boots, and print
    /// its path (for `VIGIL_SCRATCH_ROOT=... cargo test -p vigil-tests --test install`).
    ScratchRoot,
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Bootstrap => bootstrap::ensure().map(|_| ()),
        Command::Build => build::all().map(|_| ()),
        Command::ConsoleUi => console_ui::build(),
        Command::Run => stack::run(),
        Command::Test => test::run(),
        Command::VmTest => vm::run(),
        Command::Bench { quick, only } => bench::run(quick, &only),
        Command::Fuzz { seconds, target } => fuzz::run(seconds, target.as_deref()),
        Command::Audit => audit::run(),
        Command::Package { profile } => package::build(profile).map(|_| ()),
        Command::ScratchRoot => match scratch_root::debian_root() {
            Ok(root) => {
                println!("{}", root.display());
                Ok(())
            }
            Err(scratch_root::Unavailable(why)) => Err(anyhow::anyhow!(why)),
        },
    }
}
