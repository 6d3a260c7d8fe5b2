//! The collector's configuration: a YAML file (`/etc/vigil/collector.yaml` by convention) whose
//! every key has a default and a command-line flag. Unknown keys are errors, so a typo cannot
//! silently leave a default in force; every error names the file, line, column and key.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use vigil_ops::metrics_endpoint::MetricsConfig;
use vigil_proto::transport::TlsFiles;

pub use crate::console::ConsoleConfig;

/// Where the collector listens, stores and finds its certificates.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CollectorConfig {
    /// UDP address for QUIC. Loopback by default: listening on a public interface is a choice.
    pub listen: SocketAddr,
    /// The SQLite database file; created, with its schema, when missing.
    pub database: PathBuf,
    pub tls: TlsConfig,
    /// Serial numbers of revoked certificates, one per line (`vigil certs revoke` appends).
    /// Re-read when the file changes or on SIGHUP; applies to new and live connections.
    pub revoked: Option<PathBuf>,
    /// Enrollment of sensors with one-time tokens; absent means the collector signs nothing.
    pub enroll: Option<EnrollConfig>,
    /// The web console over HTTPS; absent (the default) means none is served.
    pub console: Option<ConsoleConfig>,
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
    tls: TlsConfig,
    revoked: Option<PathBuf>,
    enroll: Option<EnrollConfig>,
    console: Option<ConsoleConfig>,
    /// The Prometheus scrape endpoint; absent means none.
    metrics: Option<MetricsConfig>,
}

impl Default for CollectorFile {
    fn default() -> Self {
        let CollectorConfig {
            listen,
            database,
            tls,
            revoked,
            enroll,
            console,
        } = CollectorConfig::default();
        Self {
            listen,
            database,
            tls,
            revoked,
            enroll,
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
            tls,
            revoked,
            enroll,
            console,
            metrics,
        } = self;
        let config = CollectorConfig {
            listen,
            database,
            tls,
            revoked,
            enroll,
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
            tls: TlsConfig::default(),
            revoked: None,
            enroll: None,
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

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {}: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The file is not valid YAML, or a key is unknown or has a value of the wrong kind.
    #[error("{}:{line}:{column}: {}{message}", path.display(), key.as_deref().map(|k| format!("{k}: ")).unwrap_or_default())]
    Invalid {
        path: PathBuf,
        /// 1-based; 0 when the parser could not tell.
        line: usize,
        column: usize,
        /// The dotted path of the offending key (`tls.ca`), when known.
        key: Option<String>,
        message: String,
    },
}

impl CollectorConfig {
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
        use vigil_ops::layered::LayeredError;
        vigil_ops::layered::load::<CollectorFile>(path)
            .map(|l| l.value.split())
            .map_err(|e| match e {
                LayeredError::Read { path, source } => ConfigError::Read { path, source },
                LayeredError::Invalid {
                    path,
                    line,
                    column,
                    key,
                    message,
                } => ConfigError::Invalid {
                    path,
                    line,
                    column,
                    key,
                    message,
                },
            })
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
