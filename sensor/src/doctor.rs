//! `vigil-sensor doctor`: can this host run the sensor, and can the sensor reach its collector?
//!
//! Each check prints one line `VERDICT  check: detail`, where VERDICT is OK, WARN (works, but
//! degraded or worth a look) or FAIL (the sensor will not work as configured). Hooks are tried
//! the way the sensor itself loads them, so a pass here means start-up will attach them.

use std::path::Path;
use std::time::{Duration, SystemTime};

use crate::capture::{Capture, CaptureOptions};
use crate::config::{ExecHook, SensorConfig};

/// How close to expiry a certificate must be before the doctor warns.
const EXPIRY_WARNING: Duration = Duration::from_secs(14 * 24 * 3600);

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Verdict {
    Ok,
    Warn,
    Fail,
}

/// One finding.
#[derive(Debug)]
pub struct Check {
    pub name: &'static str,
    pub verdict: Verdict,
    pub detail: String,
}

fn check(name: &'static str, verdict: Verdict, detail: impl Into<String>) -> Check {
    Check {
        name,
        verdict,
        detail: detail.into(),
    }
}

/// Runs every check, prints them, and fails if any check failed.
pub async fn run(config: &SensorConfig) -> anyhow::Result<()> {
    let checks = checks(config).await;
    for Check {
        name,
        verdict,
        detail,
    } in &checks
    {
        let verdict = match verdict {
            Verdict::Ok => "OK  ",
            Verdict::Warn => "WARN",
            Verdict::Fail => "FAIL",
        };
        println!("{verdict}  {name}: {detail}");
    }
    let failed = checks.iter().filter(|c| c.verdict == Verdict::Fail).count();
    anyhow::ensure!(failed == 0, "{failed} check(s) failed");
    Ok(())
}

pub async fn checks(config: &SensorConfig) -> Vec<Check> {
    let mut checks = vec![kernel_version(), btf(), lockdown(), cgroup2(), clock()];
    checks.extend(hooks());
    match crate::load_rules(config) {
        Ok(rules) => checks.push(check(
            "rules",
            Verdict::Ok,
            format!("{} loaded", rules.len()),
        )),
        Err(e) => checks.push(check("rules", Verdict::Fail, format!("{e:#}"))),
    }
    checks.extend(collector(config).await);
    checks
}

fn kernel_version() -> Check {
    let release = nix::sys::utsname::uname()
        .map(|u| u.release().to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut parts = release.split(|c: char| !c.is_ascii_digit());
    let major: u32 = parts.next().and_then(|p| p.parse().ok()).unwrap_or(0);
    let minor: u32 = parts.next().and_then(|p| p.parse().ok()).unwrap_or(0);
    // 5.8 brought the BPF ring buffer and CAP_BPF/CAP_PERFMON, which the sensor relies on.
    if (major, minor) >= (5, 8) {
        check("kernel", Verdict::Ok, format!("Linux {release}"))
    } else {
        check(
            "kernel",
            Verdict::Fail,
            format!("Linux {release}: 5.8 or newer is needed (BPF ring buffer)"),
        )
    }
}

fn btf() -> Check {
    let path = Path::new(crate::offsets::KERNEL_BTF);
    match std::fs::metadata(path) {
        Ok(m) => check(
            "btf",
            Verdict::Ok,
            format!("{} ({} KiB)", path.display(), m.len() / 1024),
        ),
        Err(e) => check(
            "btf",
            Verdict::Warn,
            format!("{}: {e}; BTF-typed hooks unavailable", path.display()),
        ),
    }
}

fn lockdown() -> Check {
    let path = "/sys/kernel/security/lockdown";
    let Ok(text) = std::fs::read_to_string(path) else {
        return check(
            "lockdown",
            Verdict::Ok,
            "no lockdown LSM (or securityfs not mounted)",
        );
    };
    let mode = text
        .split_whitespace()
        .find(|w| w.starts_with('['))
        .map(|w| w.trim_matches(|c| c == '[' || c == ']').to_owned())
        .unwrap_or_else(|| text.trim().to_owned());
    match mode.as_str() {
        "none" | "integrity" => check("lockdown", Verdict::Ok, mode),
        // Confidentiality mode refuses bpf_probe_read_kernel, which every hook uses.
        _ => check(
            "lockdown",
            Verdict::Fail,
            format!("{mode}: kernel memory reads from BPF are refused"),
        ),
    }
}

fn cgroup2() -> Check {
    let mounts = std::fs::read_to_string("/proc/mounts").unwrap_or_default();
    match mounts
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .find(|f| f.get(2) == Some(&"cgroup2"))
    {
        Some(fields) => check(
            "cgroup2",
            Verdict::Ok,
            format!("mounted at {}", fields.get(1).copied().unwrap_or("?")),
        ),
        None => check(
            "cgroup2",
            Verdict::Warn,
            "no cgroup2 mount: container ids and socket hooks unavailable",
        ),
    }
}

fn clock() -> Check {
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default();
    // Certificates and event times are meaningless on a clock stuck near the epoch.
    if now.as_secs() < 1_700_000_000 {
        return check(
            "clock",
            Verdict::Fail,
            format!(
                "wall clock reads {}s after 1970: set the time",
                now.as_secs()
            ),
        );
    }
    // SAFETY: adjtimex with modes 0 only reads the kernel's NTP state into `tx`.
    let mut tx: libc::timex = unsafe { std::mem::zeroed() };
    let state = unsafe { libc::adjtimex(&mut tx) };
    if state == libc::TIME_ERROR {
        check(
            "clock",
            Verdict::Warn,
            "not synchronised (no NTP): event times across hosts may disagree",
        )
    } else {
        check("clock", Verdict::Ok, "synchronised")
    }
}

/// The hook checks, then where the sensor stands relative to the host's PID namespace (which
/// only loaded programs can tell: see [`crate::pidns`]).
fn hooks() -> Vec<Check> {
    let mut found = Vec::new();
    let mut namespace = None;
    for (name, hook) in [
        ("hook exec/btf", ExecHook::Btf),
        ("hook exec/tracepoint", ExecHook::Tracepoint),
    ] {
        let options = CaptureOptions {
            exec_hook: hook,
            syscalls: true,
            ..CaptureOptions::default()
        };
        match Capture::start(&options) {
            Ok(capture) => {
                namespace.get_or_insert(capture.pid_namespace());
                let attached: Vec<String> = capture
                    .hooks()
                    .iter()
                    .map(|h| format!("{}={}", h.event, h.hook))
                    .collect();
                found.push(check(name, Verdict::Ok, attached.join(", ")));
            }
            Err(e) => found.push(check(name, Verdict::Warn, format!("{e:#}"))),
        }
    }
    if found.iter().all(|c| c.verdict != Verdict::Ok) {
        found.push(check(
            "hooks",
            Verdict::Fail,
            "no exec hook loads on this host",
        ));
    }
    found.push(match namespace {
        Some(ns) if ns.host => check("pid namespace", Verdict::Ok, ns.describe()),
        Some(ns) => check("pid namespace", Verdict::Warn, ns.describe()),
        None => check(
            "pid namespace",
            Verdict::Warn,
            "unknown: no program loaded to tell the sensor's host pid",
        ),
    });
    found
}

async fn collector(config: &SensorConfig) -> Vec<Check> {
    let Some(c) = &config.collector else {
        return vec![check(
            "collector",
            Verdict::Warn,
            "none configured: local detection only",
        )];
    };
    let mut found = Vec::new();
    for (name, path) in [("certificate ca", &c.ca), ("certificate sensor", &c.cert)] {
        found.push(certificate(name, path));
    }
    let tls = vigil_proto::transport::TlsFiles {
        ca: c.ca.clone(),
        cert: c.cert.clone(),
        key: c.key.clone(),
    };
    let connected = async {
        let endpoint = vigil_proto::transport::client_endpoint(&tls)?;
        let conn = vigil_proto::transport::connect(&endpoint, c.address, &c.server_name).await?;
        conn.close(0u32.into(), b"doctor");
        endpoint.wait_idle().await;
        Ok::<_, vigil_proto::transport::TransportError>(())
    };
    found.push(match connected.await {
        Ok(()) => check(
            "collector",
            Verdict::Ok,
            format!("{} ({}): mTLS handshake ok", c.address, c.server_name),
        ),
        Err(e) => check("collector", Verdict::Fail, format!("{}: {e:#}", c.address)),
    });
    found
}

fn certificate(name: &'static str, path: &Path) -> Check {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) => return check(name, Verdict::Fail, format!("{}: {e}", path.display())),
    };
    let parsed = x509_parser::pem::parse_x509_pem(&bytes)
        .map_err(|e| e.to_string())
        .and_then(|(_, pem)| {
            pem.parse_x509()
                .map(|cert| cert.validity().not_after.timestamp())
                .map_err(|e| e.to_string())
        });
    let not_after = match parsed {
        Ok(t) => t,
        Err(e) => return check(name, Verdict::Fail, format!("{}: {e}", path.display())),
    };
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    let left = not_after - now;
    let days = left / 86_400;
    if left <= 0 {
        check(name, Verdict::Fail, format!("{} expired", path.display()))
    } else if left < EXPIRY_WARNING.as_secs() as i64 {
        check(
            name,
            Verdict::Warn,
            format!("{} expires in {days} days", path.display()),
        )
    } else {
        check(
            name,
            Verdict::Ok,
            format!("{} valid for {days} more days", path.display()),
        )
    }
}
