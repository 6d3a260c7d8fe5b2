//! An operator's connection to the collector: one QUIC stream per request, as the protocol
//! wants, over a mutually authenticated connection.

use std::net::SocketAddr;

use quinn::ConnectionError;
use vigil_proto::transport::{self, TlsFiles, TransportError};
use vigil_proto::{
    read_frame, write_frame, AlertQuery, EventQuery, FrameError, Reply, Request, SensorInfo,
    StoredAlert, StoredEvent, Subscribe, MAX_FRAME_BYTES,
};

/// Where the collector is and how to prove who we are.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConnectOptions {
    /// `host:port`; a name is resolved at each connection attempt.
    pub collector: String,
    /// The name the collector's certificate must carry (one of its SANs).
    pub server_name: String,
    pub tls: TlsFiles,
}

/// The collector closes a connection with this application code when the certificate names
/// no identity it accepts (see the collector's server module); retrying cannot help.
const CLOSE_BAD_IDENTITY: u32 = 1;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The collector's host name did not resolve.
    #[error("cannot resolve collector address {addr:?}: {source}")]
    Resolve {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    /// The collector's host name resolved to no address.
    #[error("collector address {addr:?} resolves to no address")]
    NoAddress { addr: String },
    /// Our TLS files are unusable, or the connection could not be made.
    #[error(transparent)]
    Transport(#[from] TransportError),
    /// The connection failed after the handshake.
    #[error("connection to the collector lost: {0}")]
    Connection(#[from] ConnectionError),
    /// A frame could not be sent or read.
    #[error("talking to the collector: {0}")]
    Frame(#[from] FrameError),
    /// The collector refused the request (e.g. the certificate's role may not make it).
    #[error("the collector refused: {reason}")]
    Refused { reason: String },
    /// The collector answered with a reply that does not fit the request.
    #[error("the collector sent an unexpected reply to {request}")]
    Unexpected { request: &'static str },
    /// The stream ended before any reply.
    #[error("the collector closed the stream without answering")]
    NoAnswer,
}

impl ClientError {
    /// True when trying again later may work: the collector was unreachable, restarted or
    /// dropped us. False when it will fail the same way: refusals, a certificate the other
    /// side rejected, our own unusable files.
    pub fn is_transient(&self) -> bool {
        match self {
            ClientError::Resolve { .. } | ClientError::NoAddress { .. } => true,
            ClientError::Transport(TransportError::Timeout { .. }) => true,
            ClientError::Transport(TransportError::Handshake { source, .. }) => {
                !is_certificate_rejection(source)
            }
            ClientError::Transport(_) => false,
            ClientError::Connection(e) => !is_certificate_rejection(e),
            ClientError::Frame(FrameError::Io(_)) => true,
            ClientError::Frame(_) => false,
            ClientError::Refused { .. } | ClientError::Unexpected { .. } => false,
            ClientError::NoAnswer => true,
        }
    }
}

/// A TLS alert in either direction (a certificate one side did not accept), or the collector
/// saying our certificate names no identity.
fn is_certificate_rejection(e: &ConnectionError) -> bool {
    let tls_alert = |code: quinn::TransportErrorCode| (0x100..0x200).contains(&u64::from(code));
    match e {
        ConnectionError::TransportError(t) => tls_alert(t.code),
        ConnectionError::ConnectionClosed(close) => tls_alert(close.error_code),
        ConnectionError::ApplicationClosed(close) => {
            close.error_code == quinn::VarInt::from_u32(CLOSE_BAD_IDENTITY)
        }
        _ => false,
    }
}

/// A connected operator client.
pub struct Client {
    endpoint: quinn::Endpoint,
    conn: quinn::Connection,
}

impl Client {
    pub async fn connect(options: &ConnectOptions) -> Result<Self, ClientError> {
        let ConnectOptions {
            collector,
            server_name,
            tls,
        } = options;
        let addr = resolve(collector).await?;
        let endpoint = transport::client_endpoint(tls)?;
        let conn = transport::connect(&endpoint, addr, server_name).await?;
        Ok(Self { endpoint, conn })
    }

    /// Stored alerts received at or after `query.since`, oldest first, at most `query.limit`.
    pub async fn query_alerts(&self, query: AlertQuery) -> Result<Vec<StoredAlert>, ClientError> {
        let (_send, mut recv) = self.request(Request::QueryAlerts(query)).await?;
        match self.reply(&mut recv).await? {
            Reply::Alerts(alerts) => Ok(alerts),
            Reply::Refused { reason } => Err(ClientError::Refused { reason }),
            _ => Err(ClientError::Unexpected {
                request: "an alert query",
            }),
        }
    }

    /// One page of stored events received at or after `query.since` with an id above
    /// `query.after_id`, in id order; an empty page is the end.
    pub async fn query_events(&self, query: EventQuery) -> Result<Vec<StoredEvent>, ClientError> {
        let (_send, mut recv) = self.request(Request::QueryEvents(query)).await?;
        match self.reply(&mut recv).await? {
            Reply::Events(events) => Ok(events),
            Reply::Refused { reason } => Err(ClientError::Refused { reason }),
            _ => Err(ClientError::Unexpected {
                request: "an event query",
            }),
        }
    }

    /// Every sensor that has sent a heartbeat, by name.
    pub async fn list_sensors(&self) -> Result<Vec<SensorInfo>, ClientError> {
        let (_send, mut recv) = self.request(Request::ListSensors).await?;
        match self.reply(&mut recv).await? {
            Reply::Sensors(sensors) => Ok(sensors),
            Reply::Refused { reason } => Err(ClientError::Refused { reason }),
            _ => Err(ClientError::Unexpected {
                request: "a sensor list",
            }),
        }
    }

    /// Pushes a rule set (file name → YAML); the version the collector serves it as.
    pub async fn push_rules(
        &self,
        files: std::collections::BTreeMap<String, String>,
    ) -> Result<u64, ClientError> {
        let request = Request::PushRules(vigil_proto::RulePush { files });
        let (_send, mut recv) = self.request(request).await?;
        match self.reply(&mut recv).await? {
            Reply::RulesPushed { version } => Ok(version),
            Reply::Refused { reason } => Err(ClientError::Refused { reason }),
            _ => Err(ClientError::Unexpected {
                request: "a rule push",
            }),
        }
    }

    /// A one-time sign-in link to the collector's web console and how many seconds it is valid.
    pub async fn console_login(&self) -> Result<(String, u64), ClientError> {
        let (_send, mut recv) = self.request(Request::ConsoleLogin).await?;
        match self.reply(&mut recv).await? {
            Reply::ConsoleLogin {
                url,
                expires_in_secs,
            } => Ok((url, expires_in_secs)),
            Reply::Refused { reason } => Err(ClientError::Refused { reason }),
            _ => Err(ClientError::Unexpected {
                request: "a console sign-in link",
            }),
        }
    }

    /// Stored alerts after `after_id` (none when `None`), then live ones as they arrive.
    pub async fn subscribe(&self, after_id: Option<i64>) -> Result<Subscription, ClientError> {
        let (send, recv) = self
            .request(Request::Subscribe(Subscribe { after_id }))
            .await?;
        Ok(Subscription {
            conn: self.conn.clone(),
            _send: send,
            recv,
            started_after: None,
        })
    }

    /// Closes the connection and waits (briefly) until the collector has been told.
    pub async fn close(self) {
        let Self { endpoint, conn } = self;
        conn.close(0u32.into(), b"done");
        let _ = tokio::time::timeout(std::time::Duration::from_secs(1), endpoint.wait_idle()).await;
    }

    async fn request(
        &self,
        request: Request,
    ) -> Result<(quinn::SendStream, quinn::RecvStream), ClientError> {
        let (mut send, recv) = self.conn.open_bi().await?;
        write_frame(&mut send, &request).await?;
        // Finishing only closes our direction: the reply still comes back on `recv`.
        let _ = send.finish();
        Ok((send, recv))
    }

    async fn reply(&self, recv: &mut quinn::RecvStream) -> Result<Reply, ClientError> {
        read_reply(&self.conn, recv)
            .await?
            .ok_or(ClientError::NoAnswer)
    }
}

/// An open subscription; dropping it ends it.
pub struct Subscription {
    conn: quinn::Connection,
    // Kept so the stream stays open in both directions for as long as we listen.
    _send: quinn::SendStream,
    recv: quinn::RecvStream,
    started_after: Option<i64>,
}

impl Subscription {
    /// The next alert; `Ok(None)` when the collector ended the subscription.
    pub async fn next(&mut self) -> Result<Option<StoredAlert>, ClientError> {
        loop {
            return match read_reply(&self.conn, &mut self.recv).await? {
                None => Ok(None),
                Some(Reply::Subscribed { after_id }) => {
                    tracing::info!(after_id, "following alerts stored after id {after_id}");
                    self.started_after = Some(after_id);
                    continue;
                }
                Some(Reply::Alert(alert)) => Ok(Some(alert)),
                Some(Reply::Refused { reason }) => Err(ClientError::Refused { reason }),
                Some(_) => Err(ClientError::Unexpected {
                    request: "a subscription",
                }),
            };
        }
    }

    /// The id the collector said this subscription streams after (its newest alert when a
    /// live-only subscription began); `None` until that first frame has been read.
    pub fn started_after(&self) -> Option<i64> {
        self.started_after
    }
}

async fn read_reply(
    conn: &quinn::Connection,
    recv: &mut quinn::RecvStream,
) -> Result<Option<Reply>, ClientError> {
    read_frame(recv, MAX_FRAME_BYTES).await.map_err(|e| {
        // A read that failed because the connection went carries the connection's reason,
        // which says whether retrying can help; the stream error alone does not.
        match (&e, conn.close_reason()) {
            (FrameError::Io(_), Some(reason)) => ClientError::Connection(reason),
            _ => ClientError::Frame(e),
        }
    })
}

async fn resolve(addr: &str) -> Result<SocketAddr, ClientError> {
    if let Ok(addr) = addr.parse() {
        return Ok(addr);
    }
    let mut found = tokio::net::lookup_host(addr)
        .await
        .map_err(|source| ClientError::Resolve {
            addr: addr.to_owned(),
            source,
        })?;
    found.next().ok_or_else(|| ClientError::NoAddress {
        addr: addr.to_owned(),
    })
}
