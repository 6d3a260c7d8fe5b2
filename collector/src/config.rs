//! The collector's configuration: a YAML file (`/etc/vigil/collector.yaml` by convention) whose
//! every key has a default and a command-line flag. Unknown keys are errors, so a typo cannot
//! silently leave a default in force; every error names the file, line, column and key.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use vigil_ops::metrics_endpoint::MetricsConfig;
use vigil_proto::transport::TlsFiles;

pub use crate::console::ConsoleConfig;
use crate::outputs::RouteConfig;
use crate::store::{PostgresUrl, Retention, StoreTarget};

/// Where the collector listens, stores and finds its certificates.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CollectorConfig {
    /// UDP address for QUIC. Loopback by default: listening on a public interface is a choice.
    pub listen: SocketAddr,
    /// The SQLite database file; created, with its schema, when missing. With `store` set it
    /// still holds the used enrollment tokens.
    pub database: PathBuf,
    /// A PostgreSQL URL (`postgres://user@host/db`) to store events and alerts there instead
    /// of in `database`: several collectors can share one.
    pub store: Option<PostgresUrl>,
    /// How long events and alerts are kept.
    pub retention: Retention,
    pub tls: TlsConfig,
    /// Serial numbers of revoked certificates, one per line (`vigil certs revoke` appends).
    /// Re-read when the file changes or on SIGHUP; applies to new and live connections.
    pub revoked: Option<PathBuf>,
    /// Enrollment of sensors with one-time tokens; absent means the collector signs nothing.
    pub enroll: Option<EnrollConfig>,
    /// The web console over HTTPS; absent (the default) means none is served.
    pub console: Option<ConsoleConfig>,
    /// Alert outputs by name: where committed alerts are forwarded (webhook, Slack, syslog,
    /// file) and which ones. Empty: none.
    pub outputs: BTreeMap<String, RouteConfig>,
    /// Rule sets pushed with `vigil rules push` and served to sensors; absent means pushes
    /// are refused.
    pub rules: Option<CentralRulesConfig>,
}

/// Where the collector keeps its rule signing key and the rule set it serves.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CentralRulesConfig {
    /// Directory (made, mode 0700, if missing) for `signing.key`, `signing.pub` and
    /// `current.ruleset`. Collectors sharing sensors must share the key file.
    pub dir: PathBuf,
}

/// What the collector needs to sign sensor certificates.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnrollConfig {
    /// The deployment CA's private key (`ca-key.pem` from `vigil certs init`).
    pub ca_key: PathBuf,
    /// The tokens file `vigil certs token` appends to (`enroll-tokens` in the certs directory).
    pub tokens: PathBuf,
    /// How long an enrolled or renewed sensor certificate is valid; sensors renew after two
    /// thirds of it. Short, so that a stolen certificate soon stops working even unrevoked.
    #[serde(default = "default_cert_validity_secs")]
    pub cert_validity_secs: u64,
}

fn default_cert_validity_secs() -> u64 {
    24 * 3600
}

/// The file's shape: the server's settings plus the keys only the binary acts on (the scrape
/// endpoint), kept apart so the server's [`CollectorConfig`] stays as its embedders know it.
#[derive(Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct CollectorFile {
    listen: SocketAddr,
    database: PathBuf,
    store: Option<PostgresUrl>,
    retention: Retention,
    tls: TlsConfig,
    revoked: Option<PathBuf>,
    enroll: Option<EnrollConfig>,
    outputs: BTreeMap<String, RouteConfig>,
    rules: Option<CentralRulesConfig>,
    console: Option<ConsoleConfig>,
    /// The Prometheus scrape endpoint; absent means none.
    metrics: Option<MetricsConfig>,
}

impl Default for CollectorFile {
    fn default() -> Self {
        let CollectorConfig {
            listen,
            database,
            store,
            retention,
            tls,
            revoked,
            enroll,
            outputs,
            rules,
            console,
        } = CollectorConfig::default();
        Self {
            listen,
            database,
            store,
            retention,
            tls,
            revoked,
            enroll,
            outputs,
            rules,
            console,
            metrics: None,
        }
    }
}

impl CollectorFile {
    /// The server's part of the file, and the scrape endpoint.
    fn split(self) -> (CollectorConfig, Option<MetricsConfig>) {
        let CollectorFile {
            listen,
            database,
            store,
            retention,
            tls,
            revoked,
            enroll,
            outputs,
            rules,
            console,
            metrics,
        } = self;
        let config = CollectorConfig {
            listen,
            database,
            store,
            retention,
            tls,
            revoked,
            enroll,
            outputs,
            rules,
            console,
        };
        (config, metrics)
    }
}

/// The collector's PEM files, as made by `vigil certs init` and `vigil certs issue --collector`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TlsConfig {
    /// The deployment CA: only clients with a certificate it signed may connect.
    pub ca: PathBuf,
    /// The collector's certificate (with the names clients dial in its SANs).
    pub cert: PathBuf,
    /// The collector's private key.
    pub key: PathBuf,
}

impl Default for CollectorConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 7443)),
            database: PathBuf::from("/var/lib/vigil/collector.db"),
            store: None,
            retention: Retention::default(),
            tls: TlsConfig::default(),
            revoked: None,
            enroll: None,
            outputs: BTreeMap::new(),
            rules: None,
            console: None,
        }
    }
}

impl Default for TlsConfig {
    fn default() -> Self {
        Self {
            ca: PathBuf::from("/etc/vigil/ca.pem"),
            cert: PathBuf::from("/etc/vigil/collector.pem"),
            key: PathBuf::from("/etc/vigil/collector-key.pem"),
        }
    }
}

impl From<&TlsConfig> for TlsFiles {
    fn from(tls: &TlsConfig) -> Self {
        let TlsConfig { ca, cert, key } = tls;
        TlsFiles {
            ca: ca.clone(),
            cert: cert.clone(),
            key: key.clone(),
        }
    }
}

/// Why the config could not be loaded: the same errors, naming file, line and key, as the
/// sensor's (both read layered YAML through [`vigil_ops::layered`]).
pub use vigil_ops::layered::LayeredError as ConfigError;

impl CollectorConfig {
    /// Where events and alerts go: PostgreSQL when `store` is set, else SQLite at `database`.
    pub fn store_target(&self) -> StoreTarget {
        match &self.store {
            Some(url) => StoreTarget::Postgres(url.clone()),
            None => StoreTarget::Sqlite(self.database.clone()),
        }
    }

    /// Reads a YAML config file merged with the drop-ins of its `.conf.d` directory
    /// (`collector.yaml` → `collector.conf.d/*.yaml`, see [`vigil_ops::layered`]); keys left out
    /// keep their defaults.
    pub fn from_yaml_file(path: &Path) -> Result<Self, ConfigError> {
        Self::from_yaml_file_with_metrics(path).map(|(config, _)| config)
    }

    /// Like [`CollectorConfig::from_yaml_file`], also returning the `metrics` key.
    pub fn from_yaml_file_with_metrics(
        path: &Path,
    ) -> Result<(Self, Option<MetricsConfig>), ConfigError> {
        vigil_ops::layered::load::<CollectorFile>(path).map(|l| l.value.split())
    }

    /// One in-memory file (what [`Self::from_yaml_file`] reads, without drop-ins); public for
    /// fuzzing the parser.
    pub fn from_yaml_str(text: &str) -> Result<Self, vigil_ops::layered::LayeredError> {
        let file: CollectorFile =
            vigil_ops::layered::parse_layers(&[(PathBuf::from("config.yaml"), text.to_owned())])?;
        Ok(file.split().0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn problem(yaml: &str) -> String {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("collector.yaml");
        std::fs::write(&path, yaml).expect("write config");
        match CollectorConfig::from_yaml_file(&path) {
            Ok(c) => panic!("{yaml:?} was accepted as {c:?}"),
            Err(e) => e.to_string().replace(&path.display().to_string(), "FILE"),
        }
    }

    #[test]
    fn a_drop_in_overrides_and_its_errors_name_it() {
        let dir = tempfile::tempdir().expect("temp dir");
        let main = dir.path().join("collector.yaml");
        std::fs::write(&main, "listen: 127.0.0.1:1\n").expect("write config");
        let drop_ins = dir.path().join("collector.conf.d");
        std::fs::create_dir(&drop_ins).expect("mkdir");
        std::fs::write(
            drop_ins.join("10-metrics.yaml"),
            "metrics:\n  listen: 127.0.0.1:9465\n",
        )
        .expect("write drop-in");
        let (config, metrics) =
            CollectorConfig::from_yaml_file_with_metrics(&main).expect("layered config");
        assert_eq!(config.listen, "127.0.0.1:1".parse().expect("addr"));
        let metrics = metrics.expect("metrics from the drop-in");
        assert_eq!(metrics.listen, "127.0.0.1:9465".parse().expect("addr"));
        let bad = drop_ins.join("20-bad.yaml");
        std::fs::write(&bad, "tls:\n  cetr: x.pem\n").expect("write drop-in");
        let err = CollectorConfig::from_yaml_file(&main)
            .expect_err("unknown key in a drop-in")
            .to_string();
        assert!(err.starts_with(&format!("{}:2:", bad.display())), "{err}");
        assert!(err.contains("cetr"), "{err}");
    }

    #[test]
    fn the_shipped_config_parses() {
        let shipped = Path::new(env!("CARGO_MANIFEST_DIR")).join("../packaging/etc/collector.yaml");
        let (config, metrics) =
            CollectorConfig::from_yaml_file_with_metrics(&shipped).expect("shipped config");
        assert!(config.listen.ip().is_loopback(), "{config:?}");
        let metrics = metrics.expect("the shipped config serves metrics");
        assert!(metrics.listen.ip().is_loopback(), "{metrics:?}");
        let rules = config
            .rules
            .expect("the shipped config serves central rules");
        // Inside the unit's StateDirectory, the only place it may write.
        assert!(
            rules.dir.starts_with("/var/lib/vigil/collector"),
            "{rules:?}"
        );
    }

    #[test]
    fn keys_left_out_keep_their_defaults() {
        let config =
            CollectorConfig::from_yaml_str("listen: 0.0.0.0:9000\ntls:\n  ca: /x/ca.pem\n")
                .expect("valid config");
        assert_eq!(config.listen, "0.0.0.0:9000".parse().expect("addr"));
        assert_eq!(config.tls.ca, PathBuf::from("/x/ca.pem"));
        assert_eq!(config.tls.key, TlsConfig::default().key);
        assert_eq!(config.database, CollectorConfig::default().database);
    }

    #[test]
    fn enrollment_and_revocation_keys_parse() {
        let config = CollectorConfig::from_yaml_str(
            "revoked: /etc/vigil/revoked\nenroll:\n  ca_key: /k.pem\n  tokens: /t\n",
        )
        .expect("valid config");
        assert_eq!(config.revoked, Some(PathBuf::from("/etc/vigil/revoked")));
        let enroll = config.enroll.expect("enroll section");
        assert_eq!(enroll.cert_validity_secs, 24 * 3600);
        let text = problem("enroll:\n  tokens: /t\n");
        assert!(text.contains("ca_key"), "{text}");
    }

    /// The commented example of every `outputs:` key in the shipped file, uncommented.
    fn shipped_outputs_example() -> String {
        let shipped = Path::new(env!("CARGO_MANIFEST_DIR")).join("../packaging/etc/collector.yaml");
        let text = std::fs::read_to_string(shipped).expect("shipped config");
        let start = text.find("# outputs:").expect("an outputs example");
        text[start..]
            .lines()
            .take_while(|l| l.starts_with('#'))
            .map(|l| l.strip_prefix("# ").unwrap_or(l.trim_start_matches('#')))
            .collect::<Vec<_>>()
            .join("\n")
    }

    #[test]
    fn the_documented_outputs_example_parses() {
        use crate::outputs::config::{Destination, SyslogAddress, WebhookFormat};
        let config = CollectorConfig::from_yaml_str(&shipped_outputs_example())
            .unwrap_or_else(|e| panic!("{e}\n{}", shipped_outputs_example()));
        let names: Vec<&str> = config.outputs.keys().map(String::as_str).collect();
        assert_eq!(
            names,
            [
                "archive",
                "falcosidekick",
                "ops-slack",
                "siem-syslog",
                "soc-webhook"
            ]
        );
        let soc = &config.outputs["soc-webhook"];
        assert_eq!(soc.filter.min_severity, Some(vigil_proto::Level::High));
        assert_eq!(soc.retry.max, std::time::Duration::from_secs(60));
        assert!(
            matches!(&config.outputs["falcosidekick"].to, Destination::Webhook(w) if w.format == WebhookFormat::Falco)
        );
        assert!(
            matches!(&config.outputs["siem-syslog"].to, Destination::Syslog(s) if s.address == SyslogAddress::Tcp("siem.example.org:601".into()))
        );
    }

    #[test]
    fn output_errors_name_file_line_and_key() {
        for (yaml, line, needle) in [
            (
                "outputs:\n  x:\n    to:\n      webhook: {url: 'ftp://h/'}\n",
                4,
                "outputs.x.to.webhook.url",
            ),
            ("outputs:\n  x:\n    to: {pager: {}}\n", 3, "pager"),
            (
                "outputs:\n  x:\n    to: {syslog: {address: 'tcp://host'}}\n",
                3,
                "HOST:PORT",
            ),
            (
                "outputs:\n  x:\n    to: {syslog: {address: 'udp://h:514', facility: locl0}}\n",
                3,
                "unknown facility",
            ),
            (
                "outputs:\n  x:\n    to: {file: {path: /a}}\n    retry: {max: soon}\n",
                4,
                "bad duration",
            ),
            (
                "outputs:\n  x:\n    to: {file: {path: /a}}\n    queue: 0\n",
                4,
                "queue",
            ),
            (
                "outputs:\n  x:\n    to: {file: {path: /a}}\n    filter: {min_severity: urgent}\n",
                4,
                "min_severity",
            ),
        ] {
            let text = problem(yaml);
            assert!(text.starts_with(&format!("FILE:{line}:")), "{yaml}: {text}");
            assert!(text.contains(needle), "{yaml}: {text}");
        }
    }

    #[test]
    fn store_and_retention_parse_and_bad_values_name_their_key() {
        let config = CollectorConfig::from_yaml_str(
            "store: postgres://vigil@db.example.org:5432/vigil\nretention:\n  events: 36h\n",
        )
        .expect("valid config");
        assert!(matches!(config.store_target(), StoreTarget::Postgres(_)));
        assert_eq!(
            config.retention.events,
            std::time::Duration::from_secs(36 * 3600)
        );
        assert_eq!(config.retention.alerts, Retention::default().alerts);
        let text = problem("store: /var/lib/vigil/x.db\n");
        assert!(text.starts_with("FILE:1:"), "{text}");
        assert!(text.contains("postgres://"), "{text}");
        let text = problem("store: postgres://vigil:hunter2@db/vigil?sslmode=verify-full\n");
        assert!(text.starts_with("FILE:1:"), "{text}");
        assert!(
            text.contains("sslmode=verify-full needs sslrootcert"),
            "{text}"
        );
        assert!(!text.contains("hunter2"), "{text}");
        let text = problem("retention:\n  events: soon\n");
        assert!(text.starts_with("FILE:2:"), "{text}");
        assert!(text.contains("bad duration"), "{text}");
        let text = problem("retention:\n  alerts: 0s\n");
        assert!(text.contains("delete everything"), "{text}");
    }

    #[test]
    fn the_console_is_off_by_default_and_its_key_parses() {
        assert_eq!(CollectorConfig::default().console, None);
        let config = CollectorConfig::from_yaml_str(
            "console:\n  listen: 127.0.0.1:7444\n  url: https://c.example.org:7444\n",
        )
        .expect("valid config");
        let console = config.console.expect("console section");
        assert_eq!(console.listen, "127.0.0.1:7444".parse().expect("addr"));
        assert_eq!(console.url.as_deref(), Some("https://c.example.org:7444"));
        assert_eq!(
            (console.link_ttl_secs, console.session_ttl_secs),
            (300, 8 * 3600)
        );
        let text = problem("console:\n  listen: 127.0.0.1:7444\n  password: hunter2\n");
        assert!(text.starts_with("FILE:3:"), "{text}");
        assert!(text.contains("password"), "{text}");
    }

    #[test]
    fn an_empty_file_is_all_defaults() {
        let config = CollectorConfig::from_yaml_str("# nothing\n\n").expect("empty config");
        assert_eq!(config, CollectorConfig::default());
    }

    #[test]
    fn unknown_keys_are_named_with_file_and_line() {
        let text = problem("listen: 127.0.0.1:1\ntls:\n  ca: a.pem\n  cetr: b.pem\n");
        assert!(text.starts_with("FILE:4:"), "{text}");
        assert!(text.contains("cetr"), "{text}");
    }

    #[test]
    fn bad_values_name_their_key() {
        let text = problem("listen: not-an-address\n");
        assert!(text.starts_with("FILE:1:"), "{text}");
        assert!(text.contains("listen"), "{text}");
    }

    #[test]
    fn broken_yaml_names_the_line() {
        let text = problem("listen: 127.0.0.1:1\ntls: [unclosed\n");
        assert!(text.starts_with("FILE:"), "{text}");
        assert!(!text.starts_with("FILE:0:"), "{text}");
    }
}
