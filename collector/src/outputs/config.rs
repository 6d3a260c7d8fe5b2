//! The `outputs:` section of collector.yaml: named routes, each a filter and a destination.
//!
//! ```yaml
//! outputs:
//!   soc:
//!     to: {webhook: {url: "https://soc.example.org/vigil", format: falco}}
//!     filter: {min_severity: high, tags: [attack.execution], hosts: ["web-*"]}
//! ```
//!
//! Routes are a mapping keyed by name, so names are unique by construction and errors (from
//! the layered loader) point at `outputs.soc.to.webhook.url` with file and line.

use std::collections::BTreeMap;
use std::num::NonZeroUsize;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use vigil_proto::{Level, StoredAlert};

/// One route: which alerts, where to, how much to hold while the destination is down.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    pub to: Destination,
    #[serde(default)]
    pub filter: AlertFilter,
    /// Alerts held for this route while its destination is slow or down; when full, the
    /// oldest is dropped and counted (it stays in the store and in `vigil alerts`).
    #[serde(default = "default_queue")]
    pub queue: NonZeroUsize,
    #[serde(default)]
    pub retry: RetryConfig,
}

fn default_queue() -> NonZeroUsize {
    NonZeroUsize::new(10_000).unwrap_or(NonZeroUsize::MIN)
}

/// Backoff between failed attempts: doubles from `initial` up to `max`, and returns to
/// `initial` after a success. `max` bounds how long a recovered endpoint waits for its backlog.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetryConfig {
    #[serde(with = "human_duration", default = "default_retry_initial")]
    pub initial: Duration,
    #[serde(with = "human_duration", default = "default_retry_max")]
    pub max: Duration,
}

fn default_retry_initial() -> Duration {
    Duration::from_secs(1)
}

fn default_retry_max() -> Duration {
    Duration::from_secs(60)
}

impl Default for RetryConfig {
    fn default() -> Self {
        Self {
            initial: default_retry_initial(),
            max: default_retry_max(),
        }
    }
}

/// Where a route delivers. Exactly one key: `webhook`, `slack`, `syslog` or `file`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase", deny_unknown_fields)]
pub enum Destination {
    Webhook(WebhookConfig),
    Slack(SlackConfig),
    Syslog(SyslogConfig),
    File(FileConfig),
}

impl Destination {
    /// The kind, as metrics and logs name it.
    pub fn kind(&self) -> &'static str {
        match self {
            Destination::Webhook(_) => "webhook",
            Destination::Slack(_) => "slack",
            Destination::Syslog(_) => "syslog",
            Destination::File(_) => "file",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookConfig {
    /// http:// or https:// (Mozilla's root certificates); each alert is one POST.
    pub url: HttpUrl,
    #[serde(default)]
    pub format: WebhookFormat,
    /// Extra request headers (e.g. `Authorization: Bearer ...`).
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    #[serde(with = "human_duration", default = "default_http_timeout")]
    pub timeout: Duration,
}

fn default_http_timeout() -> Duration {
    Duration::from_secs(10)
}

/// The JSON a webhook receives.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WebhookFormat {
    /// The ECS alert with `alert_id`, `sensor` and `received`: `vigil tail -o json`'s line.
    #[default]
    Vigil,
    /// Falco's JSON output (`output`, `priority`, `rule`, `time`, `output_fields`, `tags`,
    /// `hostname`, `source`), which Falcosidekick accepts on its `/` endpoint.
    Falco,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SlackConfig {
    /// A Slack (or Mattermost, Rocket.Chat...) incoming-webhook URL.
    pub url: HttpUrl,
    #[serde(with = "human_duration", default = "default_http_timeout")]
    pub timeout: Duration,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SyslogConfig {
    /// `udp://HOST:PORT`, `tcp://HOST:PORT` (RFC 6587 octet counting) or `unix:///dev/log`
    /// (a datagram socket, as rsyslog and journald provide).
    pub address: SyslogAddress,
    /// RFC 5424 facility name (`auth`, `authpriv`, `daemon`, `local0`...`local7`...).
    #[serde(default = "default_facility")]
    pub facility: Facility,
    /// APP-NAME of each message.
    #[serde(default = "default_app_name")]
    pub app_name: String,
}

fn default_facility() -> Facility {
    Facility(10) // authpriv: security messages
}

fn default_app_name() -> String {
    "vigil".into()
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    /// JSON lines, one alert each (the `vigil` webhook format); the directory must exist.
    pub path: PathBuf,
    /// Size at which the file is rotated (`path` → `path.1` → `path.2`...).
    #[serde(default = "default_rotate_bytes")]
    pub max_bytes: u64,
    /// Rotated files kept; older ones are deleted.
    #[serde(default = "default_keep")]
    pub keep: u32,
}

fn default_rotate_bytes() -> u64 {
    100 * 1024 * 1024
}

fn default_keep() -> u32 {
    5
}

/// Which alerts a route takes. Every condition given must hold; none given takes all.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AlertFilter {
    /// Lowest rule level taken (informational, low, medium, high, critical).
    pub min_severity: Option<Level>,
    /// Rule tags (e.g. `attack.t1059`); an alert whose rule has any of them is taken.
    pub tags: Vec<String>,
    /// Sensor names or host names; `*` matches any run of characters (`web-*`).
    pub hosts: Vec<String>,
}

impl AlertFilter {
    pub fn admits(&self, stored: &StoredAlert) -> bool {
        let Self {
            min_severity,
            tags,
            hosts,
        } = self;
        let rule = &stored.alert.rule;
        if min_severity.is_some_and(|min| rule.level < min) {
            return false;
        }
        if !tags.is_empty() && !rule.tags.iter().any(|t| tags.iter().any(|w| w == t)) {
            return false;
        }
        if !hosts.is_empty()
            && !hosts.iter().any(|pattern| {
                wildcard_match(pattern, &stored.sensor)
                    || wildcard_match(pattern, &stored.alert.event.host.name)
            })
        {
            return false;
        }
        true
    }
}

/// `*` matches any run of characters; everything else matches itself.
fn wildcard_match(pattern: &str, text: &str) -> bool {
    let mut parts = pattern.split('*');
    let Some(first) = parts.next() else {
        return text.is_empty();
    };
    let Some(mut rest) = text.strip_prefix(first) else {
        return false;
    };
    let parts: Vec<&str> = parts.collect();
    let Some((last, middle)) = parts.split_last() else {
        // No `*` at all: the whole text must have been the prefix.
        return rest.is_empty();
    };
    for part in middle {
        match rest.find(part) {
            Some(at) => rest = &rest[at + part.len()..],
            None => return false,
        }
    }
    rest.len() >= last.len() && rest.ends_with(last)
}

/// An http:// or https:// URL, checked when the config is read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HttpUrl(pub String);

impl<'de> Deserialize<'de> for HttpUrl {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        let rest = text
            .strip_prefix("http://")
            .or_else(|| text.strip_prefix("https://"));
        match rest {
            Some(rest) if !rest.is_empty() && !rest.starts_with('/') => Ok(HttpUrl(text)),
            _ => Err(serde::de::Error::custom(format!(
                "{text:?} is not an http:// or https:// URL with a host"
            ))),
        }
    }
}

impl Serialize for HttpUrl {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

/// Where syslog messages go.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SyslogAddress {
    /// Host and port, resolved when the output connects.
    Udp(String),
    Tcp(String),
    Unix(PathBuf),
}

impl<'de> Deserialize<'de> for SyslogAddress {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        let bad = |why: &str| {
            serde::de::Error::custom(format!(
                "{text:?}: {why} (expected udp://HOST:PORT, tcp://HOST:PORT or unix:///PATH)"
            ))
        };
        if let Some(path) = text.strip_prefix("unix://") {
            if !path.starts_with('/') {
                return Err(bad("a unix socket path must be absolute"));
            }
            return Ok(SyslogAddress::Unix(PathBuf::from(path)));
        }
        let (make, rest): (fn(String) -> SyslogAddress, _) =
            if let Some(rest) = text.strip_prefix("udp://") {
                (SyslogAddress::Udp, rest)
            } else if let Some(rest) = text.strip_prefix("tcp://") {
                (SyslogAddress::Tcp, rest)
            } else {
                return Err(bad("unknown scheme"));
            };
        match rest.rsplit_once(':') {
            Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok() => {
                Ok(make(rest.to_owned()))
            }
            _ => Err(bad("HOST:PORT needed")),
        }
    }
}

impl Serialize for SyslogAddress {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            SyslogAddress::Udp(a) => s.collect_str(&format_args!("udp://{a}")),
            SyslogAddress::Tcp(a) => s.collect_str(&format_args!("tcp://{a}")),
            SyslogAddress::Unix(p) => s.collect_str(&format_args!("unix://{}", p.display())),
        }
    }
}

/// An RFC 5424 facility, by name in the config, by number on the wire.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Facility(pub u8);

const FACILITIES: [&str; 24] = [
    "kern", "user", "mail", "daemon", "auth", "syslog", "lpr", "news", "uucp", "cron", "authpriv",
    "ftp", "ntp", "audit", "alert", "clock", "local0", "local1", "local2", "local3", "local4",
    "local5", "local6", "local7",
];

impl<'de> Deserialize<'de> for Facility {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        FACILITIES
            .iter()
            .position(|f| *f == text)
            .and_then(|i| u8::try_from(i).ok())
            .map(Facility)
            .ok_or_else(|| {
                serde::de::Error::custom(format!(
                    "unknown facility {text:?} (one of {})",
                    FACILITIES.join(", ")
                ))
            })
    }
}

impl Serialize for Facility {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let name = FACILITIES
            .get(usize::from(self.0))
            .copied()
            .unwrap_or("user");
        s.serialize_str(name)
    }
}

/// Durations as people write them: `500ms`, `30s`, `5m`.
pub(crate) mod human_duration {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let text = String::deserialize(d)?;
        let duration = humantime::parse_duration(&text).map_err(|e| {
            serde::de::Error::custom(format!("bad duration {text:?} ({e}; e.g. 500ms, 30s, 5m)"))
        })?;
        if duration.is_zero() {
            return Err(serde::de::Error::custom(
                "a duration of zero is not allowed",
            ));
        }
        Ok(duration)
    }

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&humantime::format_duration(*d))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcards_match_like_shell_globs_without_classes() {
        for (pattern, text, expected) in [
            ("web-01", "web-01", true),
            ("web-01", "web-011", false),
            ("web-*", "web-01", true),
            ("web-*", "db-01", false),
            ("*-01", "web-01", true),
            ("*", "", true),
            ("w*b*1", "web-01", true),
            ("w*b*1", "web-02", false),
            ("a*a", "a", false),
        ] {
            assert_eq!(
                wildcard_match(pattern, text),
                expected,
                "{pattern} vs {text}"
            );
        }
    }
}
