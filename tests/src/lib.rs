//! Harness for the end-to-end tier: find the built binaries, run them as real processes, collect
//! their output, and always stop them (SIGTERM, then SIGKILL) even when a test fails.

use std::io::{BufRead, BufReader, Read, Write};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// Directory of `vigil`, `vigil-sensor`, `vigil-collector`: `VIGIL_BIN_DIR` (set by
/// `cargo xtask test`), else the cargo target directory this test binary was built in.
pub fn bin(name: &str) -> PathBuf {
    let dir = std::env::var_os("VIGIL_BIN_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            let exe = std::env::current_exe().expect("current_exe");
            // target/debug/deps/kernel-xxxx -> target/debug
            exe.parent()
                .and_then(|p| p.parent())
                .expect("target dir")
                .to_path_buf()
        });
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} is not built: run the tests with `cargo xtask test`",
        path.display()
    );
    path
}

/// The kernel tier needs root; without it the test fails with the reason, it never passes.
pub fn require_root() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "this test loads eBPF programs and needs root: run `sudo cargo xtask test`"
    );
}

/// How much slower than real hardware this machine runs, from `VIGIL_TEST_TIME_SCALE`
/// (default 1). `cargo xtask vm-test` sets it inside QEMU's software emulation, where every
/// instruction costs several times more; on real machines the bounds hold as written.
pub fn time_scale() -> u32 {
    std::env::var("VIGIL_TEST_TIME_SCALE")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|&n| n >= 1)
        .unwrap_or(1)
}

/// `d` stretched by [`time_scale`]: for waits and bounds measured in wall-clock time.
pub fn scaled(d: Duration) -> Duration {
    d * time_scale()
}

/// Polls `check` every 20 ms until it returns `Some` or `timeout` (scaled by [`time_scale`])
/// passes.
pub fn poll_until<T>(timeout: Duration, check: impl FnMut() -> Option<T>) -> Option<T> {
    poll_every(Duration::from_millis(20), timeout, check)
}

/// Like [`poll_until`], every `interval`: for checks that run a command or cost more than a
/// file lookup.
pub fn poll_every<T>(
    interval: Duration,
    timeout: Duration,
    mut check: impl FnMut() -> Option<T>,
) -> Option<T> {
    let deadline = Instant::now() + scaled(timeout);
    loop {
        if let Some(value) = check() {
            return Some(value);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(interval);
    }
}

/// The .deb packages `cargo xtask test` built for this run (`VIGIL_DEB_DIR`).
pub fn deb_dir() -> PathBuf {
    let dir = std::env::var_os("VIGIL_DEB_DIR")
        .map(PathBuf::from)
        .unwrap_or_default();
    assert!(
        dir.is_dir(),
        "VIGIL_DEB_DIR is not set to the built packages: run the tests with `cargo xtask test`"
    );
    dir
}

/// A unique token for argv, so that no other activity on the host can match a test's filter.
pub fn marker(tag: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or_default();
    format!("vigil-{tag}-{}-{nanos}", std::process::id())
}

/// A child process whose stdout and stderr lines are collected as they arrive.
pub struct Proc {
    name: String,
    child: Child,
    stdout: Arc<Mutex<Vec<String>>>,
    stderr: Arc<Mutex<Vec<String>>>,
}

impl Proc {
    pub fn spawn(name: &str, mut cmd: Command) -> Proc {
        cmd.stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .stdin(Stdio::null());
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name} ({cmd:?}): {e}"));
        let stdout = Arc::new(Mutex::new(Vec::new()));
        let stderr = Arc::new(Mutex::new(Vec::new()));
        if let Some(out) = child.stdout.take() {
            collect(out, stdout.clone());
        }
        if let Some(err) = child.stderr.take() {
            collect(err, stderr.clone());
        }
        Proc {
            name: name.to_owned(),
            child,
            stdout,
            stderr,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn stdout_lines(&self) -> Vec<String> {
        self.stdout.lock().expect("stdout lock").clone()
    }

    pub fn stderr_text(&self) -> String {
        self.stderr.lock().expect("stderr lock").join("\n")
    }

    /// Waits until a stderr line contains `needle`; panics with the whole stderr otherwise.
    pub fn wait_stderr(&mut self, needle: &str, timeout: Duration) {
        let found = poll_until(timeout, || {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "{} exited ({status}) before printing {needle:?}; stderr:\n{}",
                    self.name,
                    self.stderr_text()
                );
            }
            self.stderr_text().contains(needle).then_some(())
        });
        if found.is_none() {
            panic!(
                "{} did not print {needle:?} within {timeout:?}; stderr:\n{}",
                self.name,
                self.stderr_text()
            );
        }
    }

    /// SIGKILL, as a crash or an OOM kill would, and reaps the process.
    pub fn kill9(&mut self) -> ExitStatus {
        let _ = kill(Pid::from_raw(self.child.id() as i32), Signal::SIGKILL);
        self.child.wait().expect("wait after SIGKILL")
    }

    /// Waits for the process to exit on its own; panics with its stderr after `timeout`.
    pub fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        match poll_until(timeout, || self.child.try_wait().ok().flatten()) {
            Some(status) => status,
            None => panic!(
                "{} did not exit within {timeout:?}; stderr:\n{}",
                self.name,
                self.stderr_text()
            ),
        }
    }

    /// SIGTERM, then waits up to `grace` before SIGKILL. Returns the exit status and how long
    /// the process took to stop.
    pub fn terminate(&mut self, grace: Duration) -> (ExitStatus, Duration) {
        let started = Instant::now();
        let _ = kill(Pid::from_raw(self.child.id() as i32), Signal::SIGTERM);
        if let Some(status) = poll_until(grace, || self.child.try_wait().ok().flatten()) {
            return (status, started.elapsed());
        }
        let _ = self.child.kill();
        let status = self.child.wait().expect("wait after SIGKILL");
        (status, started.elapsed())
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = kill(Pid::from_raw(self.child.id() as i32), Signal::SIGTERM);
            if poll_until(Duration::from_secs(5), || {
                self.child.try_wait().ok().flatten()
            })
            .is_none()
            {
                let _ = self.child.kill();
                let _ = self.child.wait();
            }
        }
    }
}

fn collect(stream: impl std::io::Read + Send + 'static, lines: Arc<Mutex<Vec<String>>>) {
    std::thread::spawn(move || {
        for line in BufReader::new(stream).lines() {
            let Ok(line) = line else { break };
            if let Ok(mut lines) = lines.lock() {
                lines.push(line);
            }
        }
    });
}

/// Parses JSON lines, skipping any that are not JSON objects (log noise).
pub fn json_lines(lines: &[String]) -> Vec<serde_json::Value> {
    lines
        .iter()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v.is_object())
        .collect()
}

/// Starts `vigil-collector` as `cmd` describes and waits until it listens; returns it with
/// the address it printed (tests let it pick a free port).
pub fn start_collector(mut cmd: Command) -> (Proc, String) {
    cmd.env("NO_COLOR", "1");
    let mut collector = Proc::spawn("vigil-collector", cmd);
    collector.wait_stderr("listening on", Duration::from_secs(20));
    let address = collector
        .stderr_text()
        .lines()
        .find_map(|l| l.split("listening on ").nth(1))
        .and_then(|rest| rest.split_whitespace().next())
        .expect("collector prints its address")
        .to_owned();
    (collector, address)
}

/// Runs `vigil certs ARGS --dir DIR`, which must succeed.
pub fn certs(dir: &std::path::Path, args: &[&str]) {
    let out = Command::new(bin("vigil"))
        .arg("certs")
        .args(args)
        .arg("--dir")
        .arg(dir)
        .output()
        .expect("run vigil certs");
    assert!(
        out.status.success(),
        "vigil certs {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Starts `vigil-sensor` with `args` and waits until its programs are attached.
pub fn start_sensor(args: &[&str]) -> Proc {
    let mut cmd = Command::new(bin("vigil-sensor"));
    cmd.args(args).env("RUST_LOG", "info").env("NO_COLOR", "1");
    let mut sensor = Proc::spawn("vigil-sensor", cmd);
    sensor.wait_stderr("sensor running", Duration::from_secs(30));
    sensor
}

/// A loopback TCP port nobody is listening on right now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

/// GET /metrics, returning the body.
pub fn scrape(address: std::net::SocketAddr) -> String {
    let mut stream = std::net::TcpStream::connect(address)
        .unwrap_or_else(|e| panic!("connect to metrics endpoint {address}: {e}"));
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .expect("read timeout");
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .expect("send scrape");
    let mut answer = String::new();
    stream.read_to_string(&mut answer).expect("read scrape");
    let (head, body) = answer
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("not an HTTP answer: {answer:?}"));
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    body.to_owned()
}
