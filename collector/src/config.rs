//! The collector's configuration: a YAML file (`/etc/vigil/collector.yaml` by convention) whose
//! every key has a default and a command-line flag. Unknown keys are errors, so a typo cannot
//! silently leave a default in force; every error names the file, line, column and key.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use vigil_proto::transport::TlsFiles;

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
    /// Reads a YAML config file; keys it leaves out keep their defaults.
    pub fn from_yaml_file(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse_yaml(&text).map_err(|e| {
            let YamlProblem {
                line,
                column,
                key,
                message,
            } = e;
            ConfigError::Invalid {
                path: path.to_owned(),
                line,
                column,
                key,
                message,
            }
        })
    }

    /// Parses YAML text (what [`Self::from_yaml_file`] reads); public for the fuzz target.
    pub fn from_yaml_str(text: &str) -> Result<Self, YamlProblem> {
        Self::parse_yaml(text)
    }

    fn parse_yaml(text: &str) -> Result<Self, YamlProblem> {
        // NB: marked-yaml wants a mapping at the top; an empty (or all-comment) file is a valid
        // config that keeps every default.
        if text
            .lines()
            .all(|l| l.trim().is_empty() || l.trim_start().starts_with('#'))
        {
            return Ok(Self::default());
        }
        let options = marked_yaml::LoaderOptions::default().error_on_duplicate_keys(true);
        marked_yaml::from_yaml_with_options(0, text, options).map_err(YamlProblem::from)
    }
}

/// A YAML error with its position pulled out of whichever layer of marked-yaml raised it.
#[derive(Debug)]
pub struct YamlProblem {
    pub line: usize,
    pub column: usize,
    pub key: Option<String>,
    pub message: String,
}

impl From<marked_yaml::FromYamlError> for YamlProblem {
    fn from(e: marked_yaml::FromYamlError) -> Self {
        match e {
            marked_yaml::FromYamlError::ParseYaml(load) => {
                // The loader's message already starts with the position; keep it whole but also
                // lift the position out, so the error reads `file:line:col: message`.
                let text = load.to_string();
                let (line, column, message) = split_position(&text);
                Self {
                    line,
                    column,
                    key: None,
                    message,
                }
            }
            marked_yaml::FromYamlError::FromNode(node) => {
                let mark = node.start_mark();
                let key = node.path().filter(|p| !p.is_empty() && *p != ".");
                Self {
                    line: mark.map_or(0, |m| m.line()),
                    column: mark.map_or(0, |m| m.column()),
                    key: key.map(str::to_owned),
                    message: (*node).to_string(),
                }
            }
        }
    }
}

/// Splits a `line:column: message` prefix off a loader message, when it has one.
fn split_position(text: &str) -> (usize, usize, String) {
    let mut parts = text.splitn(3, ':');
    if let (Some(l), Some(c), Some(rest)) = (parts.next(), parts.next(), parts.next()) {
        if let (Ok(line), Ok(column)) = (l.trim().parse(), c.trim().parse()) {
            return (line, column, rest.trim().to_owned());
        }
    }
    (0, 0, text.to_owned())
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
