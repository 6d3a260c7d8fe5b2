//! A Prometheus scrape endpoint: `GET /metrics` on a TCP listener, answered from a registry.
//!
//! Hand-rolled on tokio rather than pulling in an HTTP stack: the endpoint answers one fixed
//! request from a scraper on localhost, so a bounded request read and a one-shot response is the
//! whole protocol. Connections are capped and each has a deadline, so a stuck client cannot
//! hold the daemon's resources.
//!
//! The text is Prometheus' exposition format 0.0.4 (what `promtool check metrics` and every
//! Prometheus server parse); the `prometheus` crate emits it, whereas `prometheus-client` only
//! emits OpenMetrics, whose counter naming promtool's parser rejects.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use prometheus::{Encoder, Registry, TextEncoder};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;

/// Scrapes served at once; more wait for a slot.
const MAX_CONNECTIONS: usize = 8;
/// A request line and headers from a scraper fit easily; more is not a scraper.
const MAX_REQUEST_BYTES: usize = 8 * 1024;
/// Time a client gets to send its request and read the answer.
const CONNECTION_DEADLINE: Duration = Duration::from_secs(5);

/// The `metrics:` key of both daemons' config files.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsConfig {
    /// TCP address of the scrape endpoint; the shipped configs use loopback, since the counters
    /// tell an attacker what the sensor sees.
    pub listen: SocketAddr,
}

/// Why the endpoint could not start.
#[derive(Debug, thiserror::Error)]
pub enum EndpointError {
    /// The listen address could not be bound (in use, or not a local address).
    #[error("cannot listen for metrics scrapes on {address}: {source}")]
    Bind {
        address: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

/// A bound endpoint; [`MetricsEndpoint::serve`] answers scrapes until shutdown.
pub struct MetricsEndpoint {
    listener: TcpListener,
    registry: Registry,
}

impl MetricsEndpoint {
    pub async fn bind(address: SocketAddr, registry: Registry) -> Result<Self, EndpointError> {
        let listener = TcpListener::bind(address)
            .await
            .map_err(|source| EndpointError::Bind { address, source })?;
        Ok(Self { listener, registry })
    }

    /// The bound address (tests bind port 0).
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.listener.local_addr().ok()
    }

    /// Serves on a task of its own until [`RunningEndpoint::stop`].
    pub fn spawn(self) -> RunningEndpoint {
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(self.serve(async {
            let _ = stopped.await;
        }));
        RunningEndpoint { task, stop }
    }

    pub async fn serve(self, shutdown: impl std::future::Future<Output = ()>) {
        let Self { listener, registry } = self;
        let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
        tokio::pin!(shutdown);
        loop {
            let accepted = tokio::select! {
                () = &mut shutdown => return,
                accepted = listener.accept() => accepted,
            };
            let stream = match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // Out of fds and the like: back off rather than spin.
                    tracing::warn!(error = %e, "metrics endpoint: accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let Ok(permit) = slots.clone().acquire_owned().await else {
                return;
            };
            let registry = registry.clone();
            tokio::spawn(async move {
                let _permit = permit;
                let _ = tokio::time::timeout(CONNECTION_DEADLINE, answer(stream, &registry)).await;
            });
        }
    }
}

/// An endpoint serving on its own task.
pub struct RunningEndpoint {
    task: tokio::task::JoinHandle<()>,
    stop: tokio::sync::oneshot::Sender<()>,
}

impl RunningEndpoint {
    /// Stops accepting scrapes and waits for the accept loop to end.
    pub async fn stop(self) {
        let Self { task, stop } = self;
        let _ = stop.send(());
        let _ = task.await;
    }
}

/// The registry in Prometheus' text format, as `GET /metrics` serves it.
pub fn exposition(registry: &Registry) -> Result<String, prometheus::Error> {
    let mut text = Vec::new();
    TextEncoder::new().encode(&registry.gather(), &mut text)?;
    String::from_utf8(text).map_err(|e| prometheus::Error::Msg(e.to_string()))
}

async fn answer(mut stream: TcpStream, registry: &Registry) -> std::io::Result<()> {
    let mut request = Vec::with_capacity(512);
    let mut buf = [0u8; 1024];
    while !request.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = stream.read(&mut buf).await?;
        if n == 0 || request.len() + n > MAX_REQUEST_BYTES {
            return Ok(());
        }
        request.extend_from_slice(&buf[..n]);
    }
    let line = request.split(|&b| b == b'\n').next().unwrap_or_default();
    let (status, content_type, body) = if line.starts_with(b"GET /metrics ") {
        match exposition(registry) {
            Ok(body) => (
                "200 OK",
                TextEncoder::new().format_type().to_owned(),
                body.into_bytes(),
            ),
            Err(e) => (
                "500 Internal Server Error",
                "text/plain".to_owned(),
                e.to_string().into_bytes(),
            ),
        }
    } else {
        (
            "404 Not Found",
            "text/plain".to_owned(),
            b"metrics are at /metrics\n".to_vec(),
        )
    };
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(&body).await?;
    stream.shutdown().await
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus::{IntCounter, Opts};

    async fn get(address: SocketAddr, path: &str) -> String {
        let mut stream = TcpStream::connect(address).await.expect("connect");
        stream
            .write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
            .await
            .expect("send request");
        let mut text = String::new();
        stream.read_to_string(&mut text).await.expect("read answer");
        text
    }

    #[tokio::test]
    async fn serves_the_registry_in_prometheus_text_format() {
        let registry = Registry::new();
        let counter = IntCounter::with_opts(Opts::new("vigil_test_total", "A test counter."))
            .expect("valid counter");
        registry
            .register(Box::new(counter.clone()))
            .expect("register");
        counter.inc_by(3);
        let endpoint = MetricsEndpoint::bind(([127, 0, 0, 1], 0).into(), registry)
            .await
            .expect("bind");
        let address = endpoint.local_addr().expect("bound address");
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(endpoint.serve(async {
            let _ = stopped.await;
        }));
        let answer = get(address, "/metrics").await;
        assert!(answer.starts_with("HTTP/1.1 200 OK"), "{answer}");
        assert!(answer.contains("text/plain; version=0.0.4"), "{answer}");
        assert!(answer.contains("\nvigil_test_total 3\n"), "{answer}");
        let missing = get(address, "/other").await;
        assert!(missing.starts_with("HTTP/1.1 404"), "{missing}");
        let _ = stop.send(());
        tokio::time::timeout(Duration::from_secs(5), server)
            .await
            .expect("endpoint stops on shutdown")
            .expect("endpoint task");
    }
}
