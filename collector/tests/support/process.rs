//! The real `vigil-collector` binary as a child process, with its log (stderr) read line by
//! line; killed and reaped when dropped, also when the test fails.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// The collector process, killed if the test fails before stopping it.
pub struct Process {
    child: Child,
    stderr: mpsc::Receiver<String>,
    seen: Vec<String>,
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Process {
    pub fn start(args: &[&str]) -> Self {
        // NB: option_env: the examples share this module and cargo names no binary for them.
        let Some(binary) = option_env!("CARGO_BIN_EXE_vigil-collector") else {
            panic!("cargo names the vigil-collector binary for integration tests only");
        };
        let mut child = Command::new(binary)
            .args(args)
            .env_remove("VIGIL_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start vigil-collector");
        let pipe = child.stderr.take().expect("stderr is piped");
        let (lines, stderr) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                if lines.send(line).is_err() {
                    break;
                }
            }
        });
        Self {
            child,
            stderr,
            seen: Vec::new(),
        }
    }

    /// Blocks until a stderr line contains every one of `parts`, and returns it.
    pub fn wait_for_line(&mut self, parts: &[&str]) -> String {
        let deadline = Instant::now() + super::DEADLINE;
        loop {
            if let Some(line) = self
                .seen
                .iter()
                .find(|l| parts.iter().all(|p| l.contains(p)))
            {
                return line.clone();
            }
            let left = deadline.saturating_duration_since(Instant::now());
            match self.stderr.recv_timeout(left) {
                Ok(line) => self.seen.push(line),
                Err(_) => panic!(
                    "no stderr line with {parts:?} within {:?}; stderr so far:\n{}",
                    super::DEADLINE,
                    self.seen.join("\n")
                ),
            }
        }
    }

    pub fn wait_for_exit(&mut self) -> std::process::ExitStatus {
        let deadline = Instant::now() + super::DEADLINE;
        loop {
            if let Some(status) = self.child.try_wait().expect("wait for collector") {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "collector did not exit within {:?}",
                super::DEADLINE
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Starts the binary with `--config FILE`.
    pub fn with_config(config: &Path) -> Self {
        Self::start(&["--config", config.to_str().expect("utf-8 path")])
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGKILL: the process dies at once, without running any of its shutdown.
    pub fn kill(&mut self) {
        self.child.kill().expect("SIGKILL the collector");
        self.child.wait().expect("reap the collector");
    }

    /// The address from the collector's `listening on ADDR` line.
    pub fn listen_addr(&mut self) -> std::net::SocketAddr {
        let line = self.wait_for_line(&["listening on "]);
        line.split("listening on ")
            .nth(1)
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|addr| addr.parse().ok())
            .unwrap_or_else(|| panic!("no address in {line:?}"))
    }
}
