//! Delivery of one rendered alert to one destination. A sink either delivers or says why not;
//! retrying, backoff and counting belong to the route that owns it.

use std::io::Write;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::net::{TcpStream, UdpSocket, UnixDatagram};
use vigil_proto::StoredAlert;

use super::config::{
    Destination, FileConfig, SlackConfig, SyslogAddress, SyslogConfig, WebhookConfig, WebhookFormat,
};
use super::format;

/// Why one attempt failed; logged, counted, and retried.
#[derive(Debug, thiserror::Error)]
pub enum DeliveryError {
    /// The HTTP request failed or the receiver answered with an error status.
    #[error("POST {url}: {message}")]
    Http { url: String, message: String },
    /// The syslog receiver could not be reached or the write failed.
    #[error("syslog {address}: {source}")]
    Syslog {
        address: String,
        #[source]
        source: std::io::Error,
    },
    /// The file could not be opened, written or rotated.
    #[error("file {}: {source}", path.display())]
    File {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A blocking delivery task panicked: a bug.
    #[error("delivery task failed")]
    TaskFailed,
}

pub enum Sink {
    Http(HttpSink),
    Syslog(SyslogSink),
    File(FileSink),
}

impl Sink {
    pub fn new(destination: &Destination) -> Sink {
        match destination {
            Destination::Webhook(WebhookConfig {
                url,
                format,
                headers,
                timeout,
            }) => Sink::Http(HttpSink::new(
                url.0.clone(),
                headers.clone().into_iter().collect(),
                *timeout,
                match format {
                    WebhookFormat::Vigil => format::vigil_json,
                    WebhookFormat::Falco => format::falco_json,
                },
            )),
            Destination::Slack(SlackConfig { url, timeout }) => Sink::Http(HttpSink::new(
                url.0.clone(),
                Vec::new(),
                *timeout,
                format::slack_json,
            )),
            Destination::Syslog(config) => Sink::Syslog(SyslogSink::new(config.clone())),
            Destination::File(config) => Sink::File(FileSink::new(config.clone())),
        }
    }

    pub async fn deliver(&mut self, alert: &StoredAlert) -> Result<(), DeliveryError> {
        match self {
            Sink::Http(s) => s.deliver(alert).await,
            Sink::Syslog(s) => s.deliver(alert).await,
            Sink::File(s) => s.deliver(alert).await,
        }
    }
}

/// Webhooks and Slack: one POST of JSON per alert; any 2xx is delivered.
pub struct HttpSink {
    agent: ureq::Agent,
    url: String,
    headers: Arc<Vec<(String, String)>>,
    render: fn(&StoredAlert) -> String,
}

impl HttpSink {
    fn new(
        url: String,
        headers: Vec<(String, String)>,
        timeout: Duration,
        render: fn(&StoredAlert) -> String,
    ) -> Self {
        let agent = ureq::Agent::config_builder()
            .timeout_global(Some(timeout))
            // A 4xx/5xx is a failed delivery, read as a status rather than an error value.
            .http_status_as_error(false)
            .user_agent(concat!("vigil-collector/", env!("CARGO_PKG_VERSION")))
            .build()
            .new_agent();
        Self {
            agent,
            url,
            headers: Arc::new(headers),
            render,
        }
    }

    async fn deliver(&mut self, alert: &StoredAlert) -> Result<(), DeliveryError> {
        let body = (self.render)(alert);
        let (agent, url, headers) = (self.agent.clone(), self.url.clone(), self.headers.clone());
        // NB: ureq blocks; a slow receiver ties up one blocking thread per route, never the
        // runtime.
        let outcome = tokio::task::spawn_blocking(move || {
            let mut request = agent.post(&url).header("content-type", "application/json");
            for (name, value) in headers.iter() {
                request = request.header(name, value);
            }
            match request.send(body) {
                Ok(response) if response.status().is_success() => Ok(()),
                Ok(response) => Err(format!("answered {}", response.status())),
                Err(e) => Err(e.to_string()),
            }
        })
        .await
        .map_err(|_| DeliveryError::TaskFailed)?;
        outcome.map_err(|message| DeliveryError::Http {
            url: self.url.clone(),
            message,
        })
    }
}

/// RFC 5424 over UDP (one datagram each), TCP (octet-counted frames on one connection, made
/// again after a failure) or a unix datagram socket.
pub struct SyslogSink {
    config: SyslogConfig,
    tcp: Option<TcpStream>,
    udp: Option<UdpSocket>,
}

impl SyslogSink {
    fn new(config: SyslogConfig) -> Self {
        Self {
            config,
            tcp: None,
            udp: None,
        }
    }

    async fn deliver(&mut self, alert: &StoredAlert) -> Result<(), DeliveryError> {
        let message = format::syslog_message(alert, self.config.facility, &self.config.app_name);
        let fail = |source| DeliveryError::Syslog {
            address: describe(&self.config.address),
            source,
        };
        match &self.config.address {
            SyslogAddress::Udp(address) => {
                if self.udp.is_none() {
                    let socket = udp_socket(address).await.map_err(fail)?;
                    self.udp = Some(socket);
                }
                let Some(socket) = &self.udp else {
                    return Ok(());
                };
                // NB: UDP confirms nothing; a connected socket at least reports an ICMP
                // "port unreachable" from an earlier datagram as an error here.
                if let Err(e) = socket.send(message.as_bytes()).await {
                    self.udp = None;
                    return Err(fail(e));
                }
                Ok(())
            }
            SyslogAddress::Tcp(address) => {
                // A receiver that closed the connection (restart, idle timeout) shows as EOF
                // on read; writing first would put this message into a dead socket.
                if self.tcp.as_ref().is_some_and(peer_closed) {
                    self.tcp = None;
                }
                if self.tcp.is_none() {
                    let stream = TcpStream::connect(address.as_str()).await.map_err(fail)?;
                    self.tcp = Some(stream);
                }
                let Some(stream) = self.tcp.as_mut() else {
                    return Ok(());
                };
                let frame = format!("{} {message}", message.len());
                let written = async {
                    stream.write_all(frame.as_bytes()).await?;
                    stream.flush().await
                }
                .await;
                if let Err(e) = written {
                    self.tcp = None;
                    return Err(fail(e));
                }
                Ok(())
            }
            SyslogAddress::Unix(path) => {
                let socket = UnixDatagram::unbound().map_err(fail)?;
                socket
                    .send_to(message.as_bytes(), path)
                    .await
                    .map(|_| ())
                    .map_err(fail)
            }
        }
    }
}

async fn udp_socket(address: &str) -> std::io::Result<UdpSocket> {
    let target = tokio::net::lookup_host(address)
        .await?
        .next()
        .ok_or_else(|| std::io::Error::other("the name resolves to no address"))?;
    let local: std::net::SocketAddr = if target.is_ipv4() {
        ([0, 0, 0, 0], 0).into()
    } else {
        (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let socket = UdpSocket::bind(local).await?;
    socket.connect(target).await?;
    Ok(socket)
}

/// True when the peer has closed (or reset) the connection; a receiver never sends us data.
fn peer_closed(stream: &TcpStream) -> bool {
    let mut probe = [0u8; 1];
    match stream.try_read(&mut probe) {
        Ok(_) => true,
        Err(e) => e.kind() != std::io::ErrorKind::WouldBlock,
    }
}

fn describe(address: &SyslogAddress) -> String {
    match address {
        SyslogAddress::Udp(a) => format!("udp://{a}"),
        SyslogAddress::Tcp(a) => format!("tcp://{a}"),
        SyslogAddress::Unix(p) => format!("unix://{}", p.display()),
    }
}

/// JSON lines appended to a file, rotated by size.
pub struct FileSink {
    state: Arc<Mutex<FileState>>,
}

struct FileState {
    config: FileConfig,
    file: Option<std::fs::File>,
    size: u64,
}

impl FileSink {
    fn new(config: FileConfig) -> Self {
        Self {
            state: Arc::new(Mutex::new(FileState {
                config,
                file: None,
                size: 0,
            })),
        }
    }

    async fn deliver(&mut self, alert: &StoredAlert) -> Result<(), DeliveryError> {
        let mut line = format::vigil_json(alert);
        line.push('\n');
        let state = self.state.clone();
        tokio::task::spawn_blocking(move || {
            let mut state = state.lock().unwrap_or_else(|p| p.into_inner());
            state.append(line.as_bytes())
        })
        .await
        .map_err(|_| DeliveryError::TaskFailed)?
    }
}

impl FileState {
    fn append(&mut self, line: &[u8]) -> Result<(), DeliveryError> {
        let path = self.config.path.clone();
        let fail = |source| DeliveryError::File {
            path: path.clone(),
            source,
        };
        if self.file.is_none() {
            let file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&self.config.path)
                .map_err(fail)?;
            self.size = file.metadata().map_err(fail)?.len();
            self.file = Some(file);
        }
        let line_len = line.len() as u64;
        if self.size > 0 && self.size + line_len > self.config.max_bytes {
            self.file = None;
            self.rotate().map_err(fail)?;
            return self.append(line);
        }
        let Some(file) = self.file.as_mut() else {
            return Ok(());
        };
        if let Err(e) = file.write_all(line) {
            self.file = None;
            return Err(fail(e));
        }
        self.size += line_len;
        Ok(())
    }

    /// `path.(keep-1)` → `path.keep` ... `path` → `path.1`; what falls off the end is deleted.
    fn rotate(&mut self) -> std::io::Result<()> {
        let path = &self.config.path;
        let numbered = |n: u32| {
            let mut name = path.clone().into_os_string();
            name.push(format!(".{n}"));
            PathBuf::from(name)
        };
        let keep = self.config.keep;
        if keep == 0 {
            return remove_if_present(path);
        }
        remove_if_present(&numbered(keep))?;
        for n in (1..keep).rev() {
            rename_if_present(&numbered(n), &numbered(n + 1))?;
        }
        rename_if_present(path, &numbered(1))
    }
}

fn remove_if_present(path: &std::path::Path) -> std::io::Result<()> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

fn rename_if_present(from: &std::path::Path, to: &std::path::Path) -> std::io::Result<()> {
    match std::fs::rename(from, to) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}
