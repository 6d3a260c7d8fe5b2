//! Real receivers for the alert outputs, on background threads: an HTTP server on loopback,
//! syslog listeners on UDP, TCP (RFC 6587 octet counting) and a unix datagram socket.

use std::io::{BufRead, BufReader, Read};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::DEADLINE;

/// Messages a receiver got, in arrival order.
pub type Inbox = Arc<Mutex<Vec<String>>>;

/// A listener on a background thread; [`Receiver::stop`] closes its socket and connections.
pub struct Receiver {
    got: Inbox,
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
    http: Option<Arc<tiny_http::Server>>,
}

impl Receiver {
    pub fn messages(&self) -> Vec<String> {
        self.got.lock().expect("inbox").clone()
    }

    pub fn stop(mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(server) = self.http.take() {
            server.unblock();
        }
        for t in self.threads.drain(..) {
            t.join().expect("receiver thread");
        }
    }

    fn new(got: Inbox) -> Self {
        Self {
            got,
            stop: Arc::default(),
            threads: Vec::new(),
            http: None,
        }
    }

    /// An HTTP server answering 200 to every POST; records `PATH BODY`.
    pub fn http(addr: SocketAddr, got: Inbox) -> (Self, SocketAddr) {
        let server = retry_bind(|| tiny_http::Server::http(addr).map_err(|e| e.to_string()));
        let server = Arc::new(server);
        let local = server.server_addr().to_ip().expect("an IP listener");
        let mut receiver = Self::new(got.clone());
        let serving = server.clone();
        receiver.threads.push(std::thread::spawn(move || {
            while let Ok(mut request) = serving.recv() {
                let mut body = String::new();
                let _ = request.as_reader().read_to_string(&mut body);
                got.lock()
                    .expect("inbox")
                    .push(format!("{} {body}", request.url()));
                let _ = request.respond(tiny_http::Response::empty(200));
            }
        }));
        receiver.http = Some(server);
        (receiver, local)
    }

    /// A syslog listener on UDP: one message per datagram.
    pub fn udp(addr: SocketAddr, got: Inbox) -> (Self, SocketAddr) {
        let socket = retry_bind(|| UdpSocket::bind(addr).map_err(|e| e.to_string()));
        let local = socket.local_addr().expect("udp addr");
        socket
            .set_read_timeout(Some(Duration::from_millis(50)))
            .expect("timeout");
        let receiver = Self::new(got.clone());
        let stop = receiver.stop.clone();
        let mut receiver = receiver;
        receiver.threads.push(std::thread::spawn(move || {
            let mut buf = vec![0u8; 65_536];
            while !stop.load(Ordering::Relaxed) {
                if let Ok(n) = socket.recv(&mut buf) {
                    got.lock()
                        .expect("inbox")
                        .push(String::from_utf8_lossy(&buf[..n]).into_owned());
                }
            }
        }));
        (receiver, local)
    }

    /// A syslog listener on TCP reading RFC 6587 octet-counted frames.
    pub fn tcp(addr: SocketAddr, got: Inbox) -> (Self, SocketAddr) {
        let listener = retry_bind(|| TcpListener::bind(addr).map_err(|e| e.to_string()));
        let local = listener.local_addr().expect("tcp addr");
        listener.set_nonblocking(true).expect("nonblocking");
        let mut receiver = Self::new(got.clone());
        let stop = receiver.stop.clone();
        receiver.threads.push(std::thread::spawn(move || {
            let mut readers = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((stream, _)) => {
                        let (got, stop) = (got.clone(), stop.clone());
                        readers.push(std::thread::spawn(move || read_frames(stream, &got, &stop)));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(10)),
                }
            }
            drop(listener);
            for r in readers {
                let _ = r.join();
            }
        }));
        (receiver, local)
    }

    /// A syslog listener on a unix datagram socket (like /dev/log).
    pub fn unix(path: &Path, got: Inbox) -> Self {
        let _ = std::fs::remove_file(path);
        let socket = UnixDatagram::bind(path).expect("bind unix socket");
        socket
            .set_read_timeout(Some(Duration::from_millis(50)))
            .expect("timeout");
        let mut receiver = Self::new(got.clone());
        let stop = receiver.stop.clone();
        let path = path.to_owned();
        receiver.threads.push(std::thread::spawn(move || {
            let mut buf = vec![0u8; 65_536];
            while !stop.load(Ordering::Relaxed) {
                if let Ok(n) = socket.recv(&mut buf) {
                    got.lock()
                        .expect("inbox")
                        .push(String::from_utf8_lossy(&buf[..n]).into_owned());
                }
            }
            drop(socket);
            let _ = std::fs::remove_file(&path);
        }));
        receiver
    }
}

fn read_frames(stream: TcpStream, got: &Inbox, stop: &AtomicBool) {
    stream
        .set_read_timeout(Some(Duration::from_millis(50)))
        .expect("timeout");
    let mut reader = BufReader::new(stream);
    let mut pending = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        let mut chunk = [0u8; 4096];
        match reader.read(&mut chunk) {
            Ok(0) => return,
            Ok(n) => pending.extend_from_slice(&chunk[..n]),
            Err(_) => continue,
        }
        // Frames: LEN SP MSG, LEN in decimal.
        while let Some(space) = pending.iter().position(|&b| b == b' ') {
            let len: usize = std::str::from_utf8(&pending[..space])
                .expect("frame length is ASCII")
                .parse()
                .expect("frame length is a number");
            if pending.len() < space + 1 + len {
                break;
            }
            let message =
                String::from_utf8_lossy(&pending[space + 1..space + 1 + len]).into_owned();
            got.lock().expect("inbox").push(message);
            pending.drain(..space + 1 + len);
        }
    }
    // Dropping the stream closes the connection: the receiver is gone.
    let _ = reader.fill_buf();
}

/// Rebinding a port just released can race with the kernel; retry within the deadline.
fn retry_bind<T>(mut bind: impl FnMut() -> Result<T, String>) -> T {
    let deadline = Instant::now() + DEADLINE;
    loop {
        match bind() {
            Ok(v) => return v,
            Err(e) if Instant::now() > deadline => panic!("cannot bind a receiver: {e}"),
            Err(_) => std::thread::sleep(Duration::from_millis(50)),
        }
    }
}
