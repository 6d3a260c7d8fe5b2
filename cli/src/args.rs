//! The command line of `vigil`, as clap parses it, and its translation into the library's
//! options.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::time::SystemTime;

use anyhow::anyhow;
use clap::{ArgGroup, Args, Parser, Subcommand, ValueEnum};
use vigil_cli::client::ConnectOptions;
use vigil_cli::output::Format;
use vigil_proto::transport::TlsFiles;

/// Vigil's operator CLI: live and stored alerts from the collector, rule checks, and the
/// deployment's certificates.
#[derive(Debug, Parser)]
#[command(name = "vigil", version)]
pub struct Cli {
    #[command(flatten)]
    pub connection: ConnectionArgs,
    #[command(subcommand)]
    pub command: Command,
}

/// How to reach the collector (used by `tail` and `alerts`). Given before the subcommand; the
/// same flags after `tail` or `alerts` override these.
///
/// NB: not clap `global` flags: `certs issue --collector NAME` means something else there.
#[derive(Debug, Args)]
#[command(next_help_heading = "Connection")]
pub struct ConnectionArgs {
    /// Collector address, host:port
    #[arg(
        long,
        value_name = "ADDR",
        env = "VIGIL_COLLECTOR",
        default_value = "127.0.0.1:7443"
    )]
    pub collector: String,
    /// Name the collector's certificate must carry (one of its SANs)
    #[arg(
        long,
        value_name = "NAME",
        env = "VIGIL_SERVER_NAME",
        default_value = "localhost"
    )]
    pub server_name: String,
    /// The deployment CA certificate (PEM)
    #[arg(long, value_name = "FILE", env = "VIGIL_CA")]
    pub ca: Option<PathBuf>,
    /// Your operator certificate (PEM), from `vigil certs issue --operator NAME`
    #[arg(long, value_name = "FILE", env = "VIGIL_CERT")]
    pub cert: Option<PathBuf>,
    /// The private key of --cert (PEM)
    #[arg(long, value_name = "FILE", env = "VIGIL_KEY")]
    pub key: Option<PathBuf>,
}

/// The connection flags again, after the subcommand, so `vigil alerts --ca F` works too.
#[derive(Debug, Args)]
#[command(next_help_heading = "Connection (override the flags before the subcommand)")]
pub struct ConnectionOverrides {
    /// Collector address, host:port [env: VIGIL_COLLECTOR] [default: 127.0.0.1:7443]
    #[arg(long, value_name = "ADDR")]
    pub collector: Option<String>,
    /// Name the collector's certificate must carry [env: VIGIL_SERVER_NAME] [default: localhost]
    #[arg(long, value_name = "NAME")]
    pub server_name: Option<String>,
    /// The deployment CA certificate (PEM) [env: VIGIL_CA]
    #[arg(long, value_name = "FILE")]
    pub ca: Option<PathBuf>,
    /// Your operator certificate (PEM) [env: VIGIL_CERT]
    #[arg(long, value_name = "FILE")]
    pub cert: Option<PathBuf>,
    /// The private key of --cert (PEM) [env: VIGIL_KEY]
    #[arg(long, value_name = "FILE")]
    pub key: Option<PathBuf>,
}

impl ConnectionArgs {
    /// These flags with the ones given after the subcommand taking precedence.
    pub fn with(self, overrides: ConnectionOverrides) -> Self {
        let ConnectionOverrides {
            collector,
            server_name,
            ca,
            cert,
            key,
        } = overrides;
        Self {
            collector: collector.unwrap_or(self.collector),
            server_name: server_name.unwrap_or(self.server_name),
            ca: ca.or(self.ca),
            cert: cert.or(self.cert),
            key: key.or(self.key),
        }
    }

    /// The options to connect with; the TLS files have no default, so each must be given.
    pub fn into_options(self) -> anyhow::Result<ConnectOptions> {
        let Self {
            collector,
            server_name,
            ca,
            cert,
            key,
        } = self;
        let need = |file: Option<PathBuf>, flag: &str, env: &str| {
            file.ok_or_else(|| anyhow!("no {flag} given (pass {flag} FILE or set {env})"))
        };
        Ok(ConnectOptions {
            collector,
            server_name,
            tls: TlsFiles {
                ca: need(ca, "--ca", "VIGIL_CA")?,
                cert: need(cert, "--cert", "VIGIL_CERT")?,
                key: need(key, "--key", "VIGIL_KEY")?,
            },
        })
    }
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Print alerts live as the collector stores them, until Ctrl-C
    ///
    /// A lost connection is retried with backoff and resumed after the last alert printed.
    Tail {
        #[command(flatten)]
        output: OutputArg,
        /// Also wait for a collector that cannot be reached at the start (like `tail -F`)
        #[arg(short, long)]
        follow: bool,
        #[command(flatten)]
        connection: ConnectionOverrides,
    },
    /// Print stored alerts, oldest first
    Alerts {
        /// Alerts received within this long (`10m`, `2h`, `1d`) or since an RFC 3339 time
        #[arg(long, value_name = "WHEN", default_value = "1h", value_parser = parse_since)]
        since: SystemTime,
        /// At most this many alerts (the oldest ones after --since)
        #[arg(long, value_name = "N", default_value_t = 1000)]
        limit: u32,
        #[command(flatten)]
        output: OutputArg,
        #[command(flatten)]
        connection: ConnectionOverrides,
    },
    /// Every sensor that reports to the collector: host, version, rule set, hooks, last
    /// heartbeat, event rate, drops, spool backlog, and whether it has gone silent
    Sensors {
        #[command(flatten)]
        output: OutputArg,
        #[command(flatten)]
        connection: ConnectionOverrides,
    },
    /// The collector's web console
    Console {
        #[command(subcommand)]
        command: ConsoleCommand,
    },
    /// Work with detection rules
    Rules {
        #[command(subcommand)]
        command: RulesCommand,
    },
    /// Make the deployment's CA and certificates
    Certs {
        #[command(subcommand)]
        command: CertsCommand,
    },
}

#[derive(Debug, Subcommand)]
pub enum ConsoleCommand {
    /// Print a one-time link that signs this operator in to the web console
    ///
    /// Asks the collector over the operator connection (so an operator certificate is needed);
    /// the link works once and expires within minutes.
    Login {
        #[command(flatten)]
        connection: ConnectionOverrides,
    },
}

#[derive(Debug, Args)]
pub struct OutputArg {
    /// Output format [default: table on a terminal, json otherwise]
    #[arg(short = 'o', long = "output", value_enum, value_name = "FORMAT")]
    pub format: Option<OutputFormat>,
}

impl OutputArg {
    /// The chosen format, or table for a person at a terminal and JSON for a pipe.
    pub fn format(&self) -> Format {
        match self.format {
            Some(OutputFormat::Json) => Format::Json,
            Some(OutputFormat::Table) => Format::Table,
            None if std::io::stdout().is_terminal() => Format::Table,
            None => Format::Json,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum OutputFormat {
    /// Aligned columns: time, level, rule, host, pid, executable, command line
    Table,
    /// One JSON object per line: the ECS alert plus alert_id, sensor and received
    Json,
}

#[derive(Debug, Subcommand)]
pub enum RulesCommand {
    /// Parse and validate rule files; errors point at file:line:column
    Check {
        #[arg(required = true, value_name = "FILE")]
        files: Vec<PathBuf>,
    },
    /// Run the test cases embedded in rules (`vigil.tests`); exit status 1 on any failure
    Test {
        #[arg(required = true, value_name = "PATH")]
        files: Vec<PathBuf>,
    },
    /// One line per rule: id, level, category, action, title
    List {
        #[arg(value_name = "PATH", default_value = "/etc/vigil/rules.d")]
        files: Vec<PathBuf>,
    },
    /// Per rule: event kinds attached, paths pushed down to the kernel, where a kill runs
    Explain {
        #[arg(required = true, value_name = "PATH")]
        files: Vec<PathBuf>,
    },
    /// Run rules over the events stored at the collector and print what they would have
    /// matched (as alerts, with the stored event's id); a summary goes to stderr
    Backtest {
        #[arg(required = true, value_name = "PATH")]
        files: Vec<PathBuf>,
        /// Events received within this long (`10m`, `24h`, `7d`) or since an RFC 3339 time
        #[arg(long, value_name = "WHEN", default_value = "24h", value_parser = parse_since)]
        since: SystemTime,
        #[command(flatten)]
        output: OutputArg,
        #[command(flatten)]
        connection: ConnectionOverrides,
    },
    /// Send the *.yml / *.yaml files of DIR to the collector (operator certificate), which
    /// validates them, versions and signs the set, and serves it to every sensor; sensors
    /// run it beside their local rules without a restart
    Push {
        #[arg(value_name = "DIR")]
        dir: PathBuf,
        #[command(flatten)]
        connection: ConnectionOverrides,
    },
}

#[derive(Debug, Subcommand)]
pub enum CertsCommand {
    /// Create a new CA: DIR/ca.pem and DIR/ca-key.pem
    Init {
        /// Directory for the files (created if missing)
        #[arg(long, value_name = "DIR")]
        dir: PathBuf,
        /// Replace an existing CA (certificates it signed stop being trusted)
        #[arg(long)]
        force: bool,
    },
    /// Issue a certificate signed by the CA in DIR: DIR/NAME.pem and DIR/NAME-key.pem
    Issue(IssueArgs),
    /// Make a one-time enrollment token for a sensor; its hash goes to DIR/enroll-tokens
    /// (the collector's `enroll.tokens`), the token is printed once
    Token {
        /// Directory holding the CA
        #[arg(long, value_name = "DIR")]
        dir: PathBuf,
        /// The name the enrolled sensor's certificate will carry
        #[arg(long, value_name = "NAME")]
        sensor: String,
        /// How long the token can be used (e.g. 30m, 1h, 2d)
        #[arg(long, value_name = "DURATION", default_value = "1h", value_parser = humantime::parse_duration)]
        ttl: std::time::Duration,
    },
    /// Revoke DIR/NAME.pem: append its serial to DIR/revoked (the collector's `revoked`)
    Revoke {
        /// Directory holding the certificates
        #[arg(long, value_name = "DIR")]
        dir: PathBuf,
        /// Name of the certificate to revoke
        #[arg(value_name = "NAME")]
        name: String,
    },
}

#[derive(Debug, Args)]
#[command(group(ArgGroup::new("role").required(true).args(["sensor", "operator", "collector"])))]
pub struct IssueArgs {
    /// Directory holding the CA; the new files go there too
    #[arg(long, value_name = "DIR")]
    pub dir: PathBuf,
    /// A sensor certificate: may publish events and alerts
    #[arg(long, value_name = "NAME")]
    pub sensor: Option<String>,
    /// An operator certificate: may read alerts
    #[arg(long, value_name = "NAME")]
    pub operator: Option<String>,
    /// A collector certificate, valid for the --san names
    #[arg(long, value_name = "NAME")]
    pub collector: Option<String>,
    /// DNS name or IP address clients dial the collector by (repeatable)
    /// [default: localhost, 127.0.0.1, ::1]
    #[arg(long = "san", value_name = "NAME|IP")]
    pub sans: Vec<String>,
    /// Replace an existing certificate and key of that name
    #[arg(long)]
    pub force: bool,
}

fn parse_since(text: &str) -> Result<SystemTime, String> {
    if let Ok(ago) = humantime::parse_duration(text) {
        return Ok(SystemTime::now()
            .checked_sub(ago)
            .unwrap_or(SystemTime::UNIX_EPOCH));
    }
    humantime::parse_rfc3339_weak(text).map_err(|_| {
        format!("{text:?} is neither a duration (10m, 2h, 1d) nor a time (2025-11-27T15:00:00Z)")
    })
}
