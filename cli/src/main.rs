//! `vigil`: parses the command line, sets up logging to stderr, and runs one subcommand.
//! Every failure is one line on stderr and a non-zero exit.

mod args;
mod rules_check;
mod rules_tools;

use std::io::IsTerminal;
use std::process::ExitCode;

use anyhow::{anyhow, Context};
use clap::Parser;
use vigil_cli::certs;
use vigil_cli::client::Client;
use vigil_cli::output::AlertPrinter;
use vigil_cli::tail::{tail, TailOptions};
use vigil_proto::transport::Role;
use vigil_proto::{AlertQuery, Timestamp};

use args::{CertsCommand, Cli, Command, ConsoleCommand, RulesCommand};

fn main() -> ExitCode {
    let cli = Cli::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_env("VIGIL_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn,vigil_cli=info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .without_time()
        .with_target(false)
        .init();
    match run(cli) {
        Ok(code) => code,
        Err(e) if is_closed_pipe(&e) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("vigil: {}", vigil_ops::error_line(e.as_ref()));
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let Cli {
        connection,
        command,
    } = cli;
    match command {
        Command::Rules { command } => match command {
            RulesCommand::Check { files } => rules_check::check(&files),
            RulesCommand::Test { files } => rules_tools::test(&files),
            RulesCommand::List { files } => rules_tools::list(&files),
            RulesCommand::Explain { files } => rules_tools::explain(&files),
            RulesCommand::Backtest {
                files,
                since,
                output,
                connection: overrides,
            } => {
                let options = connection.with(overrides).into_options()?;
                rules_tools::backtest(&files, Timestamp::from(since), output.format(), &options)
            }
            RulesCommand::Push {
                dir,
                connection: overrides,
            } => {
                let options = connection.with(overrides).into_options()?;
                let files = rules_tools::read_rule_dir(&dir)?;
                let count = files.len();
                runtime()?.block_on(async {
                    let client = Client::connect(&options).await?;
                    let pushed = client.push_rules(files).await;
                    client.close().await;
                    let version = pushed?;
                    println!(
                        "pushed {count} rule files from {} as rule set version {version}",
                        dir.display()
                    );
                    Ok(ExitCode::SUCCESS)
                })
            }
        },
        Command::Certs { command } => make_certs(command).map(|()| ExitCode::SUCCESS),
        Command::Console {
            command: ConsoleCommand::Login {
                connection: overrides,
            },
        } => {
            let options = connection.with(overrides).into_options()?;
            runtime()?.block_on(async {
                let client = Client::connect(&options).await?;
                let link = client.console_login().await;
                client.close().await;
                let (url, expires_in_secs) = link?;
                eprintln!("open this link within {expires_in_secs} s; it signs you in once:");
                println!("{url}");
                Ok(ExitCode::SUCCESS)
            })
        }
        Command::Alerts {
            since,
            limit,
            output,
            connection: overrides,
        } => {
            let options = connection.with(overrides).into_options()?;
            let query = AlertQuery {
                since: Timestamp::from(since),
                limit,
            };
            runtime()?.block_on(async {
                let client = Client::connect(&options).await?;
                let alerts = client.query_alerts(query).await;
                client.close().await;
                let mut printer = AlertPrinter::new(std::io::stdout().lock(), output.format());
                for alert in &alerts? {
                    printer.print(alert)?;
                }
                Ok(ExitCode::SUCCESS)
            })
        }
        Command::Sensors {
            output,
            connection: overrides,
        } => {
            let options = connection.with(overrides).into_options()?;
            runtime()?.block_on(async {
                let client = Client::connect(&options).await?;
                let sensors = client.list_sensors().await;
                client.close().await;
                vigil_cli::output::print_sensors(
                    std::io::stdout().lock(),
                    output.format(),
                    &sensors?,
                    Timestamp::now(),
                )?;
                Ok(ExitCode::SUCCESS)
            })
        }
        Command::Tail {
            output,
            follow,
            connection: overrides,
        } => {
            let options = TailOptions {
                connect: connection.with(overrides).into_options()?,
                retry_at_start: follow,
            };
            runtime()?.block_on(async {
                let mut printer = AlertPrinter::new(std::io::stdout().lock(), output.format());
                tokio::select! {
                    result = tail(&options, &mut printer) => result?,
                    _ = tokio::signal::ctrl_c() => {}
                }
                Ok(ExitCode::SUCCESS)
            })
        }
    }
}

fn make_certs(command: CertsCommand) -> anyhow::Result<()> {
    let paths = match command {
        CertsCommand::Token { dir, sensor, ttl } => {
            let token = vigil_cli::enrollment::make_token(&dir, &sensor, ttl)?;
            eprintln!(
                "one-time token for sensor {sensor}, valid for {}:",
                humantime::format_duration(ttl)
            );
            println!("{token}");
            return Ok(());
        }
        CertsCommand::Revoke { dir, name } => {
            let serial = vigil_cli::enrollment::revoke(&dir, &name)?;
            println!(
                "revoked {name} (serial {serial}) in {}",
                vigil_cli::enrollment::revoked_path(&dir).display()
            );
            return Ok(());
        }
        CertsCommand::Init { dir, force } => certs::init_ca(&dir, force)?,
        CertsCommand::Issue(args::IssueArgs {
            dir,
            sensor,
            operator,
            collector,
            sans,
            force,
        }) => {
            let (role, name) = match (sensor, operator, collector) {
                (Some(name), _, _) => (Role::Sensor, name),
                (_, Some(name), _) => (Role::Operator, name),
                (_, _, Some(name)) => (Role::Collector, name),
                // clap's required "role" group makes this unreachable; say so if it is not.
                (None, None, None) => {
                    return Err(anyhow!(
                        "one of --sensor, --operator or --collector is required"
                    ))
                }
            };
            if role != Role::Collector && !sans.is_empty() {
                return Err(anyhow!("--san applies to --collector certificates only"));
            }
            certs::issue(&dir, role, &name, &sans, force)?
        }
    };
    println!(
        "wrote {} and {} (private, mode 0600)",
        paths.cert.display(),
        paths.key.display()
    );
    Ok(())
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

/// `vigil tail | head` closing the pipe is how a reader says it has seen enough.
fn is_closed_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|cause| {
        cause
            .downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}
