//! The sensor's configuration: a YAML file (`--config`) plus the drop-ins of its `.conf.d`
//! directory (see [`vigil_ops::layered`]), every key also a flag; flags win. Unknown keys and
//! bad values are errors naming the file, line and key.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;
pub use vigil_ops::layered::{Layered, LayeredError as ConfigError};
pub use vigil_ops::metrics_endpoint::MetricsConfig;

#[derive(Clone, Debug, Deserialize, PartialEq)]
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
    /// Capture file, network, privilege and kernel syscalls (default true); false leaves
    /// process lifecycle only.
    #[serde(default = "default_true")]
    pub syscalls: bool,
    /// Path prefixes whose file events are captured; `["/"]` captures every path. Default: the
    /// places persistence, credentials, binaries and staging live (see `syscalls.rs`).
    #[serde(default)]
    pub file_prefixes: Option<Vec<String>>,
    /// Which event kinds the kernel captures: `all` (default), `rules` (what the loaded rules
    /// read), and event actions by name (`open`, `connect`, `dns_query`...), in any union. A
    /// kind nobody selects is not attached at all.
    #[serde(default = "default_capture_kinds")]
    pub capture_kinds: Vec<CaptureSelector>,
    /// Size in bytes of the critical ring buffer (exec, exit, privilege, network, kernel
    /// events): a power of two and a multiple of the page size. Default 8 MiB.
    #[serde(default)]
    pub critical_ring_bytes: Option<u32>,
    /// Size in bytes of the bulk ring buffer (file events). Default 8 MiB.
    #[serde(default)]
    pub bulk_ring_bytes: Option<u32>,
    /// Extra regular expressions whose matches in command lines are replaced by `<redacted>`
    /// before events leave the host (a second capture group, when present, is what is hidden).
    #[serde(default)]
    pub redact: Vec<String>,
    /// Where batches wait for the collector's ack (only used with a collector).
    #[serde(default)]
    pub spool: SpoolConfig,
    /// The Prometheus scrape endpoint; absent means none.
    #[serde(default)]
    pub metrics: Option<MetricsConfig>,
}

fn default_true() -> bool {
    true
}

fn default_capture_kinds() -> Vec<CaptureSelector> {
    vec![CaptureSelector::Keyword(CaptureKeyword::All)]
}

/// One entry of `capture_kinds`.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(untagged)]
pub enum CaptureSelector {
    Keyword(CaptureKeyword),
    Action(vigil_proto::EventAction),
}

#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum CaptureKeyword {
    /// Every kind the sensor knows.
    All,
    /// The kinds the loaded rules read (`RuleSet::kernel_filter`).
    Rules,
}

impl SensorConfig {
    /// The prefix filter to apply: `None` when every path is wanted.
    pub fn file_prefixes(&self) -> Option<Vec<String>> {
        let prefixes = self.file_prefixes.clone().unwrap_or_else(|| {
            crate::syscalls::DEFAULT_FILE_PREFIXES
                .iter()
                .map(|p| (*p).to_owned())
                .collect()
        });
        (!prefixes.iter().any(|p| p == "/")).then_some(prefixes)
    }
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SpoolConfig {
    /// Directory of segment files; created if missing. One sensor per directory.
    #[serde(default = "default_spool_dir")]
    pub dir: PathBuf,
    /// Bytes on disk before the oldest telemetry (then, with none left, alerts) is dropped.
    #[serde(default = "default_spool_max_bytes")]
    pub max_bytes: u64,
    /// When appended batches are forced to disk.
    #[serde(default)]
    pub fsync: Fsync,
}

impl Default for SpoolConfig {
    fn default() -> Self {
        Self {
            dir: default_spool_dir(),
            max_bytes: default_spool_max_bytes(),
            fsync: Fsync::default(),
        }
    }
}

fn default_spool_dir() -> PathBuf {
    "/var/lib/vigil/spool".into()
}

fn default_spool_max_bytes() -> u64 {
    256 * 1024 * 1024
}

/// A process crash (even SIGKILL) loses nothing under any policy: written data is in the page
/// cache. The policy decides what a power loss or kernel crash may take.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Fsync {
    /// After every batch: nothing acknowledged by the spool is lost, at a disk flush per batch.
    Always,
    /// At most every 200 ms and at segment rotation: up to that much may be lost.
    #[default]
    Batch,
    /// Never forced: the kernel writes back in its own time (~30 s).
    Never,
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
    /// Other collectors sharing the same PostgreSQL store, tried in order when the current one
    /// is unreachable.
    #[serde(default)]
    pub failover: Vec<SocketAddr>,
    /// Seconds between heartbeats (status reports); the collector raises "sensor silent"
    /// after three missed ones.
    #[serde(default = "default_heartbeat_secs")]
    pub heartbeat_secs: u32,
    /// Name the collector's certificate must carry.
    #[serde(default = "default_server_name")]
    pub server_name: String,
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
    /// The collector's rule-signing public key (64 hex digits: `signing.pub` in its rules
    /// directory). Set, the sensor runs the rule set pushed to the collector (`vigil rules
    /// push`) beside its local rules, after checking this signature; absent, local rules only.
    #[serde(default)]
    pub rules_public_key: Option<crate::central_rules::RulesPublicKey>,
}

fn default_heartbeat_secs() -> u32 {
    crate::status::DEFAULT_HEARTBEAT_SECS
}

fn default_server_name() -> String {
    "localhost".into()
}

impl Default for SensorConfig {
    fn default() -> Self {
        Self {
            rules: Vec::new(),
            output: Output::None,
            collector: None,
            exec_hook: ExecHook::Auto,
            syscalls: true,
            file_prefixes: None,
            capture_kinds: default_capture_kinds(),
            critical_ring_bytes: None,
            bulk_ring_bytes: None,
            redact: Vec::new(),
            spool: SpoolConfig::default(),
            metrics: None,
        }
    }
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
        assert_eq!(config.spool, SpoolConfig::default());
    }

    #[test]
    fn spool_keys_parse_and_default() {
        let config = SensorConfig::parse(
            "spool:\n  dir: /tmp/s\n  fsync: always\n",
            Path::new("sensor.yaml"),
        )
        .unwrap();
        assert_eq!(config.spool.dir, Path::new("/tmp/s"));
        assert_eq!(config.spool.fsync, Fsync::Always);
        assert_eq!(config.spool.max_bytes, 256 * 1024 * 1024);
        let err = SensorConfig::parse("spool:\n  fsync: sometimes\n", Path::new("s.yaml"))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("s.yaml:2:") && err.contains("sometimes"),
            "{err}"
        );
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
            syscalls: _,
            file_prefixes: _,
            capture_kinds: _,
            critical_ring_bytes: _,
            bulk_ring_bytes: _,
            redact: _,
            spool: _,
        } = config;
        // Keys of the destructuring above, nested collector keys included (commented out there).
        for key in [
            "rules:",
            "output:",
            "collector:",
            "exec_hook:",
            "metrics:",
            "syscalls:",
            "file_prefixes:",
            "capture_kinds:",
            "critical_ring_bytes:",
            "bulk_ring_bytes:",
            "redact:",
            "spool:",
            "max_bytes:",
            "fsync:",
            "listen:",
            "address:",
            "server_name:",
            "ca:",
            "cert:",
            "key:",
            "rules_public_key:",
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
    fn capture_kinds_take_keywords_and_action_names() {
        let config = SensorConfig::parse(
            "capture_kinds: [rules, connect, dns_query]\n",
            Path::new("s.yaml"),
        )
        .unwrap();
        assert_eq!(
            config.capture_kinds,
            [
                CaptureSelector::Keyword(CaptureKeyword::Rules),
                CaptureSelector::Action(vigil_proto::EventAction::Connect),
                CaptureSelector::Action(vigil_proto::EventAction::DnsQuery),
            ]
        );
        assert_eq!(
            SensorConfig::default().capture_kinds,
            [CaptureSelector::Keyword(CaptureKeyword::All)]
        );
        let err = SensorConfig::parse("capture_kinds: [opne]\n", Path::new("s.yaml"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("s.yaml:1:"), "{err}");
    }

    #[test]
    fn bad_value_is_an_error() {
        let err = SensorConfig::parse("output: syslog\n", Path::new("s.yaml"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("s.yaml:1:") && err.contains("syslog"), "{err}");
    }
}
