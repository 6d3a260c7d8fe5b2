//! The sensor's configuration: a YAML file (`--config`) plus the drop-ins of its `.conf.d`
//! directory (see [`vigil_ops::layered`]), every key also a flag; flags win. Unknown keys and
//! bad values are errors naming the file, line and key.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;
pub use vigil_ops::layered::{Layered, LayeredError as ConfigError};
pub use vigil_ops::metrics_endpoint::MetricsConfig;

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SensorConfig {
    /// Rule files or directories (searched for *.yml / *.yaml).
    #[serde(default)]
    pub rules: Vec<PathBuf>,
    /// Where events and alerts are written locally: `none` (default) or `stdout` (ECS JSON lines).
    #[serde(default)]
    pub output: Output,
    /// The collector to ship to; absent means local output only.
    #[serde(default)]
    pub collector: Option<CollectorConfig>,
    /// Which exec hook to use: `auto` (default: the BTF tracepoint, else the plain one),
    /// `btf` or `tracepoint` (no fallback: fail if it cannot attach).
    #[serde(default)]
    pub exec_hook: ExecHook,
    /// The Prometheus scrape endpoint; absent means none.
    #[serde(default)]
    pub metrics: Option<MetricsConfig>,
}

#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum ExecHook {
    #[default]
    Auto,
    Btf,
    Tracepoint,
}

#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Output {
    #[default]
    None,
    Stdout,
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct CollectorConfig {
    pub address: SocketAddr,
    /// Name the collector's certificate must carry.
    #[serde(default = "default_server_name")]
    pub server_name: String,
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

fn default_server_name() -> String {
    "localhost".into()
}

impl SensorConfig {
    /// The main file merged with its drop-ins.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        Self::load_layered(path).map(|l| l.value)
    }

    /// Like [`SensorConfig::load`], also naming the files read (for `--check-config`).
    pub fn load_layered(path: &Path) -> Result<Layered<Self>, ConfigError> {
        vigil_ops::layered::load(path)
    }

    pub fn parse(text: &str, path: &Path) -> Result<Self, ConfigError> {
        vigil_ops::layered::parse_layers(&[(path.to_owned(), text.to_owned())])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn full_config_parses() {
        let config = SensorConfig::parse(
            "rules: [/etc/vigil/rules.d]\noutput: stdout\ncollector:\n  address: 127.0.0.1:7443\n  ca: ca.pem\n  cert: s.pem\n  key: s-key.pem\n",
            Path::new("sensor.yaml"),
        )
        .unwrap();
        assert_eq!(config.output, Output::Stdout);
        let collector = config.collector.unwrap();
        assert_eq!(collector.server_name, "localhost");
        assert_eq!(collector.address.port(), 7443);
    }

    #[test]
    fn the_shipped_config_parses_and_documents_every_key() {
        let shipped = Path::new(env!("CARGO_MANIFEST_DIR")).join("../packaging/etc/sensor.yaml");
        let config = SensorConfig::load(&shipped).expect("shipped sensor.yaml");
        assert_eq!(
            config.rules,
            [
                PathBuf::from("/usr/share/vigil/rules"),
                PathBuf::from("/etc/vigil/rules.d")
            ]
        );
        let metrics = config.metrics.expect("the shipped config serves metrics");
        assert!(metrics.listen.ip().is_loopback(), "{metrics:?}");
        let text = std::fs::read_to_string(&shipped).expect("read shipped config");
        let SensorConfig {
            rules: _,
            output: _,
            collector: _,
            exec_hook: _,
            metrics: _,
        } = config;
        // Keys of the destructuring above, nested collector keys included (commented out there).
        for key in [
            "rules:",
            "output:",
            "collector:",
            "exec_hook:",
            "metrics:",
            "listen:",
            "address:",
            "server_name:",
            "ca:",
            "cert:",
            "key:",
        ] {
            assert!(
                text.contains(key),
                "shipped sensor.yaml does not document {key}"
            );
        }
    }

    #[test]
    fn unknown_key_names_file_line_and_key() {
        let err = SensorConfig::parse(
            "output: stdout\nrulez: []\n",
            Path::new("/etc/vigil/sensor.yaml"),
        )
        .unwrap_err()
        .to_string();
        assert!(err.starts_with("/etc/vigil/sensor.yaml:2:"), "{err}");
        assert!(err.contains("rulez"), "{err}");
    }

    #[test]
    fn bad_value_is_an_error() {
        let err = SensorConfig::parse("output: syslog\n", Path::new("s.yaml"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("s.yaml:1:") && err.contains("syslog"), "{err}");
    }
}
