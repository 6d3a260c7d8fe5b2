//! The QUIC front: accepts mutually authenticated connections, reads one request per stream,
//! decides by the peer's certificate role whether it may make it, and answers.
//!
//! Everything a peer controls is bounded: connections (a semaphore), streams per connection
//! (the transport config), request size (by role), query size, and how far a subscriber may
//! fall behind (a bounded broadcast; a subscriber that lags catches up from the store instead
//! of holding ingest back).

use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use quinn::{ConnectionError, VarInt};
use tokio::sync::{broadcast, watch, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use tracing::{debug, error, info, warn};
use vigil_proto::transport::{self, PeerIdentity, Role, TlsFiles, TransportError};
use vigil_proto::trust::{self, RevocationFileError, RevocationList};
use vigil_proto::{
    read_frame, write_frame, AlertQuery, Batch, EventQuery, FrameError, Renew, Reply, Request,
    RuleFetch, RulePush, StoredAlert, Subscribe, MAX_FRAME_BYTES,
};

use crate::central_rules::{CentralRules, CentralRulesError};
use crate::config::CollectorConfig;
use crate::enroll::Enroller;
use crate::limits::{PeerSlots, RejectLog, Stats, MAX_BATCH_ITEMS};
use crate::outputs::{Outputs, RouteConfig};
use crate::reload::{ReloadHandle, Reloader, WATCH_INTERVAL};
use crate::store::{self, Closer, Published, Retention, Store, StoreError};

/// Connections served at once; more are refused at once rather than queued.
const MAX_CONNECTIONS: usize = 1024;

/// Operators send small requests, but for a rule set push; a larger one is refused before
/// it is buffered.
const OPERATOR_REQUEST_BYTES: usize = vigil_proto::MAX_RULE_SET_BYTES + 64 * 1024;

/// Live alerts buffered per subscriber before it counts as lagging.
const FANOUT_CAPACITY: usize = 1024;

/// Alerts read from the store per query while replaying a subscription.
const REPLAY_PAGE: u32 = 256;

/// Most alerts one query returns; `vigil alerts` pages by time beyond that.
const MAX_QUERY_LIMIT: u32 = 10_000;

/// Most events one page holds: events are bounded (argv, paths), so this many fit a frame.
const MAX_EVENT_PAGE: u32 = 1_000;

/// JSON bytes of alerts per query answer: half a frame, since MessagePack is smaller than JSON.
const QUERY_BYTE_BUDGET: usize = MAX_FRAME_BYTES / 2;

/// Application close code sent to every peer at shutdown.
const CLOSE_SHUTDOWN: VarInt = VarInt::from_u32(0);
/// Application close code for a peer whose certificate names no usable identity.
const CLOSE_BAD_IDENTITY: VarInt = VarInt::from_u32(1);
/// Application close code for a connection on the main ALPN without a client certificate.
const CLOSE_NO_CERTIFICATE: VarInt = VarInt::from_u32(2);
/// Application close code for a peer whose certificate was revoked while it was connected.
const CLOSE_REVOKED: VarInt = VarInt::from_u32(3);
/// Application close code for a peer over [`crate::limits::MAX_CONNECTIONS_PER_PEER`].
const CLOSE_TOO_MANY: VarInt = VarInt::from_u32(4);
/// Stream error code: the request could not be decoded; stop sending.
const STREAM_MALFORMED: VarInt = VarInt::from_u32(1);

/// How often retention and partition upkeep run (also once at start).
const MAINTENANCE_INTERVAL: Duration = Duration::from_secs(600);

/// How long shutdown waits for close frames to reach peers.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(1);

#[derive(Debug, thiserror::Error)]
pub enum CollectorError {
    /// The TLS files are missing or unusable.
    #[error(transparent)]
    Tls(#[from] TransportError),
    /// The UDP socket could not be bound (address in use, not local, no permission).
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    /// The database could not be opened or migrated.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The revocation list could not be read at start-up.
    #[error(transparent)]
    Revocation(#[from] RevocationFileError),
    /// The rules state directory or signing key is unusable.
    #[error(transparent)]
    CentralRules(#[from] CentralRulesError),
    /// The web console could not start.
    #[error(transparent)]
    Console(#[from] crate::console::ConsoleError),
}

/// A bound collector: learn its address with [`Collector::local_addr`], then [`Collector::run`].
pub struct Collector {
    endpoint: quinn::Endpoint,
    local_addr: SocketAddr,
    shared: Shared,
    closer: Closer,
    retention: Retention,
    reloader: Reloader,
    reload: ReloadHandle,
    /// Routes, their feed of committed alerts, and the last alert id stored before it was
    /// joined; started by [`Collector::run`].
    outputs: (
        BTreeMap<String, RouteConfig>,
        broadcast::Receiver<StoredAlert>,
        i64,
    ),
    /// The web console, when configured.
    console: Option<crate::console::Console>,
}

/// What every connection task needs.
#[derive(Clone)]
pub(crate) struct Shared {
    store: Store,
    alerts: broadcast::Sender<StoredAlert>,
    pub(crate) stats: Arc<Stats>,
    peer_slots: Arc<PeerSlots>,
    revoked: Arc<RevocationList>,
    revocations: watch::Receiver<u64>,
    /// `None` when the config has no `enroll` section: enrollment and renewal are refused.
    pub(crate) enroller: Option<Arc<Enroller>>,
    /// `None` when the config has no `rules` section: pushes are refused, fetches wait.
    rules: Option<Arc<CentralRules>>,
    /// `None` without a `console` config: sign-in links are refused.
    console: Option<crate::console::LoginIssuer>,
}

impl Collector {
    /// Opens the database, loads the certificates and binds the UDP socket. Port 0 picks a free
    /// port (tests do this).
    pub async fn bind(config: &CollectorConfig) -> Result<Self, CollectorError> {
        let CollectorConfig {
            listen,
            database,
            store: _,
            retention,
            tls,
            revoked,
            enroll,
            outputs,
            rules,
            console,
        } = config;
        let reloader = Reloader::new(TlsFiles::from(tls), revoked.clone())?;
        let server = transport::server_config(&TlsFiles::from(tls), reloader.revoked.clone())?;
        let enroller = enroll
            .as_ref()
            .map(|e| Arc::new(Enroller::new(e.clone(), tls.ca.clone(), database.clone())));
        let (alerts, to_outputs) = broadcast::channel(FANOUT_CAPACITY);
        let rules = match rules.clone() {
            Some(rules) => Some(Arc::new(
                tokio::task::spawn_blocking(move || CentralRules::open(&rules))
                    .await
                    .map_err(|_| StoreError::TaskFailed)??,
            )),
            None => None,
        };
        let target = config.store_target();
        let (store, closer) = store::open(&target, alerts.clone()).await?;
        // NB: read before any sensor can connect (the endpoint is bound below), with the
        // outputs' feed already joined: every alert after this id reaches the feed.
        let outputs_after = store.last_alert_id().await?;
        let endpoint =
            quinn::Endpoint::server(server, *listen).map_err(|source| CollectorError::Bind {
                addr: *listen,
                source,
            })?;
        let local_addr = endpoint
            .local_addr()
            .map_err(|source| CollectorError::Bind {
                addr: *listen,
                source,
            })?;
        let (console, login_issuer) = match console {
            Some(console) => {
                let (console, issuer) =
                    crate::console::Console::bind(console, tls, store.clone(), rules.clone())
                        .await?;
                (Some(console), Some(issuer))
            }
            None => (None, None),
        };
        info!(%local_addr, store = %target, "listening on {local_addr}");
        Ok(Self {
            endpoint,
            local_addr,
            shared: Shared {
                store,
                alerts,
                stats: Arc::default(),
                peer_slots: Arc::default(),
                revoked: reloader.revoked.clone(),
                revocations: reloader.generation.subscribe(),
                enroller,
                rules,
                console: login_issuer,
            },
            closer,
            retention: *retention,
            reloader,
            reload: ReloadHandle::default(),
            outputs: (outputs.clone(), to_outputs, outputs_after),
            console,
        })
    }

    /// A handle that makes the running collector reload its certificates and revocation list.
    pub fn reload_handle(&self) -> ReloadHandle {
        self.reload.clone()
    }

    /// The collector's counters, as operators read them with a stats request.
    pub fn stats(&self) -> Arc<Stats> {
        self.shared.stats.clone()
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Serves until `shutdown` completes, then closes every connection, lets the writer commit
    /// what it has queued, and returns.
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> Result<(), CollectorError> {
        let Self {
            endpoint,
            local_addr: _,
            shared,
            closer,
            retention,
            mut reloader,
            reload,
            outputs: (routes, to_outputs, outputs_after),
            console,
        } = self;
        let maintenance = tokio::spawn(maintain(shared.store.clone(), retention));
        let silence = tokio::spawn(crate::health::watch_silence(shared.store.clone()));
        let outputs = Outputs::start(&routes, to_outputs, outputs_after, shared.store.clone());
        let (stop_console, console_stopped) = tokio::sync::oneshot::channel::<()>();
        let console = console.map(|console| {
            tokio::spawn(console.run(async move {
                let _ = console_stopped.await;
            }))
        });
        let mut watch = tokio::time::interval(WATCH_INTERVAL);
        watch.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
        let mut connections = JoinSet::new();
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                incoming = endpoint.accept() => {
                    let Some(incoming) = incoming else { break };
                    match slots.clone().try_acquire_owned() {
                        Ok(slot) => {
                            connections.spawn(serve_connection(incoming, shared.clone(), slot));
                        }
                        Err(_) => {
                            shared.stats.refused_connection();
                            let remote = incoming.remote_address();
                            warn!(%remote, "refused connection from {remote}: {MAX_CONNECTIONS} connections already open");
                            incoming.refuse();
                        }
                    }
                }
                Some(done) = connections.join_next() => log_task_end(done),
                () = reload.0.notified() => reloader.reload(&endpoint),
                _ = watch.tick() => {
                    if reloader.files_changed() {
                        reloader.reload(&endpoint);
                    }
                }
                () = &mut shutdown => break,
            }
        }
        info!("shutting down");
        let _ = stop_console.send(());
        if let Some(console) = console {
            log_task_end(console.await);
        }
        endpoint.close(CLOSE_SHUTDOWN, b"collector shutting down");
        while let Some(done) = connections.join_next().await {
            log_task_end(done);
        }
        for task in [maintenance, silence] {
            task.abort();
            let _ = task.await;
        }
        // NB: the SQLite writer thread stops once every store handle is gone; the connection
        // tasks and the outputs held the others.
        outputs.stop().await;
        drop(shared);
        drop(reloader);
        closer.close().await;
        let _ = tokio::time::timeout(DRAIN_TIMEOUT, endpoint.wait_idle()).await;
        info!("stopped");
        Ok(())
    }
}

/// Binds and serves `config` until `shutdown` completes.
pub async fn run(
    config: CollectorConfig,
    shutdown: impl Future<Output = ()>,
) -> Result<(), CollectorError> {
    Collector::bind(&config).await?.run(shutdown).await
}

/// Retention and partition upkeep, now and every [`MAINTENANCE_INTERVAL`]; a failure is
/// logged and retried next time (ingest does not depend on it).
async fn maintain(store: Store, retention: Retention) {
    let mut tick = tokio::time::interval(MAINTENANCE_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if let Err(e) = store
            .maintain(vigil_proto::Timestamp::now(), retention)
            .await
        {
            warn!("storage maintenance failed (retried in {MAINTENANCE_INTERVAL:?}): {e}");
        }
    }
}

fn log_task_end(done: Result<(), tokio::task::JoinError>) {
    if let Err(e) = done {
        if e.is_panic() {
            error!("a connection task panicked: {e}");
        }
    }
}

async fn serve_connection(incoming: quinn::Incoming, shared: Shared, _slot: OwnedSemaphorePermit) {
    let remote = incoming.remote_address();
    let handshake = match incoming.accept() {
        Ok(connecting) => connecting.await,
        Err(e) => Err(e),
    };
    let conn = match handshake {
        Ok(conn) => conn,
        // Our own TLS stack refused the peer (e.g. a certificate from another CA).
        Err(ConnectionError::TransportError(e)) => {
            let reason = if e.reason.is_empty() {
                e.to_string()
            } else {
                e.reason
            };
            shared.stats.refused_connection();
            warn!(%remote, "refused connection from {remote}: {reason}");
            return;
        }
        Err(e) => {
            warn!(%remote, "handshake with {remote} failed: {e}");
            return;
        }
    };
    if transport::negotiated_alpn(&conn).as_deref() == Some(vigil_proto::ENROLL_ALPN) {
        crate::enroll::serve_enrollment(conn, shared, remote).await;
        return;
    }
    // NB: TLS lets a client without a certificate through (enrollment shares the port); on
    // this ALPN that is the end of it, before a single stream is read.
    let Some(serial) = trust::peer_serial(&conn) else {
        shared.stats.refused_connection();
        warn!(%remote, "refused connection from {remote}: no client certificate");
        conn.close(CLOSE_NO_CERTIFICATE, b"a client certificate is required");
        return;
    };
    let peer = match transport::peer_identity(&conn) {
        Ok(peer) => Arc::new(peer),
        Err(e) => {
            shared.stats.refused_connection();
            warn!(%remote, "refused connection from {remote}: {e}");
            conn.close(CLOSE_BAD_IDENTITY, b"certificate names no vigil identity");
            return;
        }
    };
    let Some(_peer_slot) = shared.peer_slots.try_take(&peer.name) else {
        shared.stats.refused_connection();
        warn!(%remote, peer = %peer.name, "refused connection from {peer} at {remote}: it already holds {} connections", crate::limits::MAX_CONNECTIONS_PER_PEER);
        conn.close(
            CLOSE_TOO_MANY,
            b"too many connections with this certificate",
        );
        return;
    };
    let rejects = Arc::new(RejectLog::default());
    let mut revocations = shared.revocations.clone();
    info!(%remote, peer = %peer.name, role = %peer.role, "connection from {peer} at {remote}");
    let mut streams = JoinSet::new();
    let closed = loop {
        tokio::select! {
            stream = conn.accept_bi() => match stream {
                Ok((send, recv)) => {
                    let context = StreamContext { peer: peer.clone(), remote, rejects: rejects.clone() };
                    streams.spawn(serve_stream(shared.clone(), context, send, recv));
                }
                Err(e) => break e,
            },
            Ok(()) = revocations.changed() => {
                if shared.revoked.is_revoked(&serial) {
                    shared.stats.refused_connection();
                    warn!(%remote, peer = %peer.name, serial, "closing connection from {peer}: its certificate was revoked");
                    conn.close(CLOSE_REVOKED, b"certificate revoked");
                }
            }
            Some(done) = streams.join_next() => log_task_end(done),
        }
    };
    match closed {
        ConnectionError::ApplicationClosed(_) | ConnectionError::LocallyClosed => {
            debug!(%remote, peer = %peer.name, "connection from {peer} closed: {closed}")
        }
        other => info!(%remote, peer = %peer.name, "connection from {peer} lost: {other}"),
    }
    // In-flight streams end at their next read or write now that the connection is gone.
    while let Some(done) = streams.join_next().await {
        log_task_end(done);
    }
}

/// Why a request stream ended early; only logged.
#[derive(Debug, thiserror::Error)]
enum StreamError {
    #[error(transparent)]
    Frame(#[from] FrameError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Who a stream belongs to.
struct StreamContext {
    peer: Arc<PeerIdentity>,
    remote: SocketAddr,
    /// Shared by the connection's streams: decides which rejections are logged.
    rejects: Arc<RejectLog>,
}

async fn serve_stream(
    shared: Shared,
    context: StreamContext,
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
) {
    let StreamContext {
        peer,
        remote,
        rejects,
    } = context;
    // Batches can be large; nothing an operator sends needs more than a few bytes.
    let limit = match peer.role {
        Role::Sensor => MAX_FRAME_BYTES,
        Role::Operator | Role::Collector => OPERATOR_REQUEST_BYTES,
    };
    let request = match read_frame::<_, Request>(&mut recv, limit).await {
        Ok(Some(request)) => request,
        Ok(None) => return,
        Err(FrameError::Io(e)) if e.kind() != std::io::ErrorKind::UnexpectedEof => {
            debug!(%remote, peer = %peer.name, "request stream from {peer} failed: {e}");
            return;
        }
        Err(e) => {
            shared.stats.rejected_frame();
            if let Some(n) = rejects.should_log() {
                warn!(%remote, peer = %peer.name, role = %peer.role, rejected = n, "malformed request from {peer} at {remote} ({n} so far on this connection): {e}");
            }
            let _ = recv.stop(STREAM_MALFORMED);
            let reason = format!("malformed request: {e}");
            let _ = write_frame(&mut send, &Reply::Refused { reason }).await;
            let _ = send.finish();
            return;
        }
    };
    let outcome = match (request, peer.role) {
        (Request::Publish(batch), Role::Sensor)
            if batch.events.len() + batch.alerts.len() > MAX_BATCH_ITEMS =>
        {
            shared.stats.rejected_frame();
            let items = batch.events.len() + batch.alerts.len();
            if let Some(n) = rejects.should_log() {
                warn!(%remote, peer = %peer.name, rejected = n, "refused batch {} from {peer}: {items} items, over the limit of {MAX_BATCH_ITEMS}", batch.seq);
            }
            let reason =
                format!("malformed request: batch of {items} items exceeds {MAX_BATCH_ITEMS}");
            write_frame(&mut send, &Reply::Refused { reason })
                .await
                .map_err(StreamError::from)
        }
        (Request::Publish(batch), Role::Sensor) => publish(&shared, &peer, batch, &mut send).await,
        (Request::Renew(renew), Role::Sensor) => {
            renew_certificate(&shared, &peer, renew, &mut send).await
        }
        (Request::Stats, Role::Operator) => {
            let reply = Reply::Stats(shared.stats.snapshot());
            write_frame(&mut send, &reply)
                .await
                .map_err(StreamError::from)
        }
        (Request::Subscribe(subscribe), Role::Operator) => {
            subscription(&shared, &peer, subscribe, &mut send).await
        }
        (Request::QueryAlerts(query), Role::Operator) => {
            query_alerts(&shared, &peer, query, &mut send).await
        }
        (Request::Heartbeat(status), Role::Sensor) => {
            let reply = match crate::health::heartbeat(&shared.store, &peer.name, status).await {
                Ok(()) => Reply::StatusRecorded,
                Err(e) => {
                    error!(peer = %peer.name, "cannot record the heartbeat of {peer}: {e}");
                    Reply::Refused {
                        reason: "the collector could not store the heartbeat".into(),
                    }
                }
            };
            write_frame(&mut send, &reply)
                .await
                .map_err(StreamError::from)
        }
        (Request::ConsoleLogin, Role::Operator) => {
            let reply = console_login(&shared, &peer);
            write_frame(&mut send, &reply)
                .await
                .map_err(StreamError::from)
        }
        (Request::ListSensors, Role::Operator) => {
            let reply = match shared.store.sensors().await {
                Ok(sensors) => Reply::Sensors(sensors),
                Err(e) => {
                    error!(peer = %peer.name, "sensor list for {peer} failed: {e}");
                    Reply::Refused {
                        reason: "the collector could not read its store".into(),
                    }
                }
            };
            write_frame(&mut send, &reply)
                .await
                .map_err(StreamError::from)
        }
        (Request::QueryEvents(query), Role::Operator) => {
            query_events(&shared, &peer, query, &mut send).await
        }
        (Request::PushRules(push), Role::Operator) => {
            push_rules(&shared, &peer, push, &mut send).await
        }
        (Request::FetchRules(fetch), Role::Sensor) => {
            fetch_rules(&shared, &peer, fetch, &mut send).await
        }
        (request, role) => {
            let what = match request {
                Request::Publish(_) => "publish",
                Request::Subscribe(_) => "subscribe",
                Request::QueryAlerts(_) => "query alerts",
                Request::QueryEvents(_) => "query events",
                Request::Heartbeat(_) => "send a heartbeat",
                Request::ListSensors => "list sensors",
                Request::Renew(_) => "renew a certificate",
                Request::Stats => "read the collector's stats",
                Request::ConsoleLogin => "sign in to the web console",
                Request::Enroll(_) => "enroll on an authenticated connection",
                Request::PushRules(_) => "push rules",
                Request::FetchRules(_) => "fetch rules",
                _ => "make this request",
            };
            shared.stats.refused_request();
            warn!(%remote, peer = %peer.name, %role, "refused request from {peer}: a {role} may not {what}");
            let reason = format!("a {role} certificate may not {what}");
            write_frame(&mut send, &Reply::Refused { reason })
                .await
                .map_err(StreamError::from)
        }
    };
    if let Err(e) = outcome {
        debug!(%remote, peer = %peer.name, "stream to {peer} ended: {e}");
    }
    let _ = send.finish();
}

/// A one-time sign-in link for the operator who asked (their certificate is the credential).
fn console_login(shared: &Shared, peer: &PeerIdentity) -> Reply {
    let Some(issuer) = &shared.console else {
        return Reply::Refused {
            reason: "this collector serves no web console (no `console` config)".into(),
        };
    };
    match issuer.issue(&peer.name) {
        Some((url, expires_in_secs)) => {
            info!(peer = %peer.name, "issued a console sign-in link to {peer}");
            Reply::ConsoleLogin {
                url,
                expires_in_secs,
            }
        }
        None => Reply::Refused {
            reason: "the collector could not make a sign-in link".into(),
        },
    }
}

async fn renew_certificate(
    shared: &Shared,
    peer: &PeerIdentity,
    renew: Renew,
    send: &mut quinn::SendStream,
) -> Result<(), StreamError> {
    let Renew { csr_pem } = renew;
    let reply = match shared.enroller.clone() {
        None => Reply::Refused {
            reason: "this collector does not issue certificates (no `enroll` config)".into(),
        },
        Some(enroller) => {
            let name = peer.name.clone();
            let signed = tokio::task::spawn_blocking(move || {
                enroller.renew(&name, &csr_pem, std::time::SystemTime::now())
            })
            .await;
            match signed {
                Ok(Ok((cert_pem, ca_pem))) => {
                    shared.stats.certificate_issued();
                    info!(peer = %peer.name, "renewed the certificate of {peer}");
                    Reply::Certificate { cert_pem, ca_pem }
                }
                Ok(Err(e)) => {
                    warn!(peer = %peer.name, "refused renewal for {peer}: {e:?}");
                    Reply::Refused {
                        reason: e.to_string(),
                    }
                }
                Err(_) => Reply::Refused {
                    reason: "the collector failed while signing".into(),
                },
            }
        }
    };
    Ok(write_frame(send, &reply).await?)
}

async fn publish(
    shared: &Shared,
    peer: &PeerIdentity,
    batch: Batch,
    send: &mut quinn::SendStream,
) -> Result<(), StreamError> {
    let seq = batch.seq;
    let (events, alerts) = (batch.events.len(), batch.alerts.len());
    let reply = match shared
        .store
        .publish_measured(peer.name.clone(), batch)
        .await
    {
        // The alert-committed point: these alerts, received by this collector, are durably
        // stored (subscribers get them from the store's feed, which also carries other
        // collectors' alerts).
        Ok(Published::Stored { alerts: _ }) => {
            debug!(peer = %peer.name, seq, events, alerts, "stored batch");
            Reply::Ack { seq }
        }
        Ok(Published::Duplicate) => {
            debug!(peer = %peer.name, seq, "batch was already stored; acking again");
            Reply::Ack { seq }
        }
        Err(e) => {
            error!(peer = %peer.name, seq, "cannot store batch {seq} from {peer}: {e}");
            Reply::Refused {
                reason: "the collector could not store the batch; retry later".into(),
            }
        }
    };
    Ok(write_frame(send, &reply).await?)
}

async fn push_rules(
    shared: &Shared,
    peer: &PeerIdentity,
    push: RulePush,
    send: &mut quinn::SendStream,
) -> Result<(), StreamError> {
    let RulePush { files } = push;
    let reply = match &shared.rules {
        None => Reply::Refused {
            reason: "this collector serves no rules (no `rules` config)".into(),
        },
        Some(rules) => match rules.push(files).await {
            Ok(version) => {
                info!(peer = %peer.name, version, "{peer} pushed central rule set version {version}");
                Reply::RulesPushed { version }
            }
            Err(e) => {
                warn!(peer = %peer.name, "refused a rule set from {peer}: {e}");
                Reply::Refused {
                    reason: e.to_string(),
                }
            }
        },
    };
    Ok(write_frame(send, &reply).await?)
}

/// Answers once a newer central rule set than the sensor has seen is served; until then the
/// stream stays open (a long poll), ending early if the sensor goes away.
async fn fetch_rules(
    shared: &Shared,
    peer: &PeerIdentity,
    fetch: RuleFetch,
    send: &mut quinn::SendStream,
) -> Result<(), StreamError> {
    let Some(rules) = shared.rules.clone() else {
        let reason = "this collector serves no rules (no `rules` config)".to_owned();
        return Ok(write_frame(send, &Reply::Refused { reason }).await?);
    };
    let set = tokio::select! {
        set = rules.next_for(&peer.name, &fetch) => set,
        _ = send.stopped() => return Ok(()),
    };
    debug!(peer = %peer.name, version = set.version, "sending central rule set version {} to {peer}", set.version);
    Ok(write_frame(send, &Reply::Rules((*set).clone())).await?)
}

async fn query_alerts(
    shared: &Shared,
    peer: &PeerIdentity,
    query: AlertQuery,
    send: &mut quinn::SendStream,
) -> Result<(), StreamError> {
    let AlertQuery { since, limit } = query;
    let reply = match shared
        .store
        .alerts_since(since, limit.min(MAX_QUERY_LIMIT), QUERY_BYTE_BUDGET)
        .await
    {
        Ok(alerts) => Reply::Alerts(alerts),
        Err(e) => {
            error!(peer = %peer.name, "alert query from {peer} failed: {e}");
            Reply::Refused {
                reason: "the collector could not read its store".into(),
            }
        }
    };
    Ok(write_frame(send, &reply).await?)
}

/// One page of stored events (a backtest reads them all, page by page).
async fn query_events(
    shared: &Shared,
    peer: &PeerIdentity,
    query: EventQuery,
    send: &mut quinn::SendStream,
) -> Result<(), StreamError> {
    let EventQuery {
        since,
        after_id,
        limit,
    } = query;
    let reply = match shared
        .store
        .events_since(since, after_id, limit.min(MAX_EVENT_PAGE))
        .await
    {
        Ok(events) => Reply::Events(events),
        Err(e) => {
            error!(peer = %peer.name, "event query from {peer} failed: {e}");
            Reply::Refused {
                reason: "the collector could not read its store".into(),
            }
        }
    };
    Ok(write_frame(send, &reply).await?)
}

/// Streams stored alerts after `after_id`, then live ones, until the operator goes away.
async fn subscription(
    shared: &Shared,
    peer: &PeerIdentity,
    subscribe: Subscribe,
    send: &mut quinn::SendStream,
) -> Result<(), StreamError> {
    let Subscribe { after_id } = subscribe;
    // NB: join the live feed *before* reading the store. An alert committed in between is
    // then seen twice and the id check drops the copy; the other order would lose it.
    let mut live = shared.alerts.subscribe();
    let start = match after_id {
        Some(id) => Ok(id),
        None => shared.store.last_alert_id().await,
    };
    let outcome = match start {
        Ok(start) => {
            info!(peer = %peer.name, after_id = start, "{peer} subscribed to alerts after id {start}");
            match write_frame(send, &Reply::Subscribed { after_id: start }).await {
                Ok(()) => follow(shared, &mut live, start, send).await,
                Err(e) => Err(e.into()),
            }
        }
        Err(e) => Err(e.into()),
    };
    if let Err(StreamError::Store(e)) = &outcome {
        error!(peer = %peer.name, "subscription of {peer} failed: {e}");
        let reason = "the collector could not read its store".to_owned();
        let _ = write_frame(send, &Reply::Refused { reason }).await;
    }
    outcome
}

async fn follow(
    shared: &Shared,
    live: &mut broadcast::Receiver<StoredAlert>,
    after_id: i64,
    send: &mut quinn::SendStream,
) -> Result<(), StreamError> {
    // Resolves when the operator stops reading or the connection goes: without it a quiet
    // subscription would hold its stream (and its slot) until the next alert.
    let stopped = send.stopped();
    tokio::pin!(stopped);
    let mut last_sent = replay(&shared.store, after_id, send).await?;
    loop {
        tokio::select! {
            received = live.recv() => match received {
                Ok(alert) => {
                    if alert.id > last_sent {
                        last_sent = alert.id;
                        write_frame(send, &Reply::Alert(alert)).await?;
                    }
                }
                // Everything it missed is committed (the writer broadcasts after commit), so
                // the store has it: catch up from there rather than drop or block.
                Err(broadcast::error::RecvError::Lagged(missed)) => {
                    debug!(missed, "subscriber lagged; catching up from the store");
                    last_sent = replay(&shared.store, last_sent, send).await?;
                }
                Err(broadcast::error::RecvError::Closed) => return Ok(()),
            },
            _ = &mut stopped => return Ok(()),
        }
    }
}

/// Sends every stored alert after `after_id`; returns the last id sent (or `after_id`).
async fn replay(
    store: &Store,
    after_id: i64,
    send: &mut quinn::SendStream,
) -> Result<i64, StreamError> {
    let mut last = after_id;
    loop {
        let page = store.alerts_after(last, REPLAY_PAGE).await?;
        let full = page.len() == REPLAY_PAGE as usize;
        for alert in page {
            last = alert.id;
            write_frame(send, &Reply::Alert(alert)).await?;
        }
        if !full {
            return Ok(last);
        }
    }
}
