//! Kernel tier, beyond process lifecycle: for each kind of event, a child process of the test
//! (`vigil-actor`) does the real thing, and the sensor must report it with the exact fields and
//! result. Events are matched by the actor's pid, so other activity on the host cannot interfere.

use std::net::TcpListener;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;
use vigil_tests::{json_lines, poll_until, require_root, start_sensor, Proc};

const ACTOR: &str = env!("CARGO_BIN_EXE_vigil-actor");

/// Runs the actor to completion; returns its pid and stdout.
fn act(args: &[&str]) -> (u32, String) {
    let child = Command::new(ACTOR)
        .args(args)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("start vigil-actor");
    let pid = child.id();
    let out = child.wait_with_output().expect("wait for vigil-actor");
    (pid, String::from_utf8_lossy(&out.stdout).into_owned())
}

fn event_of(sensor: &Proc, pid: u32, action: &str) -> Value {
    event_where(sensor, pid, action, |_| true)
}

/// The first event of `pid` with `action` for which `also` holds.
fn event_where(sensor: &Proc, pid: u32, action: &str, also: impl Fn(&Value) -> bool) -> Value {
    poll_until(Duration::from_secs(5), || {
        json_lines(&sensor.stdout_lines())
            .into_iter()
            .find(|e| e["process"]["pid"] == pid && e["event"]["action"] == action && also(e))
    })
    .unwrap_or_else(|| {
        panic!(
            "no {action} event for pid {pid}; sensor stderr:\n{}",
            sensor.stderr_text()
        )
    })
}

fn sensor() -> Proc {
    start_sensor(&["--output", "stdout"])
}

#[test]
fn file_open_for_writing_rename_chmod_and_unlink() {
    require_root();
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("written.txt");
    let moved = dir.path().join("moved.txt");
    let (p, m) = (
        path.to_str().expect("utf-8"),
        moved.to_str().expect("utf-8"),
    );
    let sensor = sensor();

    let (pid, _) = act(&["open-write", p]);
    // The actor's own start-up opens (its libraries) come first; find the one of the file.
    let open = event_where(&sensor, pid, "open", |e| e["file"]["path"] == p);
    assert_eq!(open["file"]["path"], p);
    assert_eq!(
        open["file"]["flags"],
        serde_json::json!(["write", "create", "truncate"])
    );
    assert!(open.get("error").is_none(), "{open}");

    let (pid, _) = act(&["rename", p, m]);
    let rename = event_of(&sensor, pid, "rename");
    assert_eq!(rename["file"]["path"], p);
    assert_eq!(rename["file"]["target_path"], m);

    let (pid, _) = act(&["chmod", m, "4755"]);
    let chmod = event_of(&sensor, pid, "chmod");
    assert_eq!(chmod["file"]["path"], m);
    assert_eq!(chmod["file"]["mode"], "4755");

    let (pid, _) = act(&["unlink", m]);
    let unlink = event_of(&sensor, pid, "unlink");
    assert_eq!(unlink["file"]["path"], m);
    assert!(!moved.exists());
}

#[test]
fn a_failed_open_carries_its_errno() {
    require_root();
    let dir = tempfile::tempdir().expect("tempdir");
    let missing = dir.path().join("does-not-exist");
    let sensor = sensor();
    let missing = missing.to_str().expect("utf-8");
    let (pid, _) = act(&["open-missing", missing]);
    let open = event_where(&sensor, pid, "open", |e| e["file"]["path"] == missing);
    assert_eq!(open["error"]["code"], 2);
    assert_eq!(open["error"]["message"], "ENOENT");
    assert_eq!(open["file"]["flags"], serde_json::json!(["read"]));
}

#[test]
fn connects_over_ipv4_and_ipv6_carry_the_remote_address() {
    require_root();
    let sensor = sensor();
    for bind in ["127.0.0.1:0", "[::1]:0"] {
        let listener = TcpListener::bind(bind).expect("listen on loopback");
        let addr = listener.local_addr().expect("addr");
        let (pid, _) = act(&["connect", &addr.to_string()]);
        let connect = event_of(&sensor, pid, "connect");
        assert_eq!(connect["destination"]["ip"], addr.ip().to_string());
        assert_eq!(connect["destination"]["port"], addr.port());
        assert_eq!(
            connect["network"]["type"],
            if addr.is_ipv4() { "ipv4" } else { "ipv6" }
        );
        assert_eq!(connect["network"]["direction"], "egress");
        assert_eq!(connect["network"]["transport"], "tcp");
        assert!(connect.get("error").is_none(), "{connect}");
    }
}

#[test]
fn setuid_in_a_child_is_a_credential_change() {
    require_root();
    let sensor = sensor();
    let (pid, _) = act(&["setuid", "65534"]);
    let change = event_of(&sensor, pid, "set_uid");
    assert_eq!(change["details"]["uid.new"], "65534");
    assert_eq!(change["details"]["syscall"], "setuid");
    assert_eq!(change["details"]["new_uid"], "65534");
    // Credentials are read at syscall entry: the record says who changed, the details into whom.
    assert_eq!(change["process"]["user"]["id"], 0);
    assert!(change.get("error").is_none(), "{change}");
}

#[test]
fn an_exec_of_a_setuid_binary_says_the_effective_uid_changed() {
    require_root();
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().expect("tempdir");
    // nobody must reach the binary; root owns it, with the set-user-ID bit.
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let binary = dir.path().join("vigil-suid-true");
    std::fs::copy("/bin/true", &binary).expect("copy /bin/true");
    std::fs::set_permissions(&binary, std::fs::Permissions::from_mode(0o4755)).expect("chmod");
    let marker = vigil_tests::marker("suid");
    let sensor = sensor();
    let (pid, _) = act(&["exec-as-nobody", binary.to_str().expect("utf-8"), &marker]);
    let exec = event_where(&sensor, pid, "exec", |e| {
        e["process"]["args"][1] == marker.as_str()
    });
    assert_eq!(exec["process"]["user"]["id"], 0, "effective uid after exec");
    assert_eq!(exec["user"]["id"], 65534, "real uid");
    assert_eq!(exec["details"]["exec.euid_changed"], "true", "{exec}");
    assert_eq!(exec["details"]["exec.previous_euid"], "65534");
    // The hash is still computed for such an exec.
    assert!(exec["process"]["hash"]["sha256"].is_string(), "{exec}");
}

#[test]
fn ptrace_attach_and_kill_name_their_target() {
    require_root();
    let sensor = sensor();
    let (pid, out) = act(&["ptrace-attach"]);
    let target: u32 = out
        .split_whitespace()
        .nth(1)
        .and_then(|t| t.parse().ok())
        .expect("actor prints its target");
    let ptrace = event_of(&sensor, pid, "ptrace");
    assert_eq!(ptrace["target"]["pid"], target);
    assert_eq!(ptrace["details"]["ptrace.request"], "PTRACE_ATTACH");

    let (pid, out) = act(&["kill-child"]);
    let target: u32 = out
        .split_whitespace()
        .nth(1)
        .and_then(|t| t.parse().ok())
        .expect("actor prints its target");
    let kill = poll_until(Duration::from_secs(5), || {
        json_lines(&sensor.stdout_lines()).into_iter().find(|e| {
            e["process"]["pid"] == pid
                && e["event"]["action"] == "kill"
                && e["target"]["pid"] == target
        })
    })
    .expect("kill event naming the child");
    assert_eq!(kill["target"]["signal"], 10, "SIGUSR1");
}

#[test]
fn a_refused_module_load_is_captured_with_its_errno() {
    require_root();
    if !Path::new("/sys/kernel/tracing/events/syscalls/sys_enter_init_module").exists()
        && !Path::new("/sys/kernel/debug/tracing/events/syscalls/sys_enter_init_module").exists()
    {
        // A kernel built without module support has no module syscalls to trace (they are
        // ENOSYS stubs). The sensor must say so at start rather than pretend.
        let sensor = sensor();
        assert!(
            sensor.stderr_text().contains("sys_enter_init_module"),
            "the sensor does not report the missing module hooks:\n{}",
            sensor.stderr_text()
        );
        eprintln!("SKIP module load capture: this kernel has no module support (no init_module tracepoint); reported by the sensor at start");
        return;
    }
    let sensor = sensor();
    let (pid, _) = act(&["init-module"]);
    let load = event_of(&sensor, pid, "module_load");
    assert_eq!(load["details"]["syscall"], "init_module");
    assert_eq!(load["details"]["module.params"], "vigil_param=1");
    assert!(
        load["error"]["code"].as_i64().is_some_and(|c| c > 0),
        "a bogus module must be refused: {load}"
    );
}

#[test]
fn tmpfs_mount_in_a_private_namespace() {
    require_root();
    let dir = tempfile::tempdir().expect("tempdir");
    let target = dir.path().to_str().expect("utf-8");
    let sensor = sensor();
    let (pid, _) = act(&["mount-tmpfs", target]);
    let unshare = event_of(&sensor, pid, "unshare");
    assert_eq!(unshare["details"]["namespaces"], "mnt");
    let mount = poll_until(Duration::from_secs(5), || {
        json_lines(&sensor.stdout_lines()).into_iter().find(|e| {
            e["process"]["pid"] == pid
                && e["event"]["action"] == "mount"
                && e["file"]["path"] == target
        })
    })
    .expect("mount event for the tmpfs");
    assert_eq!(mount["details"]["mount.fstype"], "tmpfs");
    assert_eq!(mount["details"]["mount.source"], "vigil-tmpfs");
    assert!(mount.get("error").is_none(), "{mount}");
}

#[test]
fn memfd_then_execveat_is_fileless_execution() {
    require_root();
    let sensor = sensor();
    let (pid, _) = act(&["memfd-exec"]);
    let memfd = event_of(&sensor, pid, "memfd_create");
    assert_eq!(memfd["file"]["path"], "memfd:vigil-memfd");
    let fileless = poll_until(Duration::from_secs(5), || {
        json_lines(&sensor.stdout_lines())
            .into_iter()
            .find(|e| e["process"]["pid"] == pid && e["details"]["exec.fileless"] == "true")
    })
    .expect("execveat(AT_EMPTY_PATH) event");
    assert_eq!(fileless["details"]["syscall"], "execveat");
    // And the kernel's exec record of the new image (after the actor's own exec).
    let exec = event_where(&sensor, pid, "exec", |e| {
        e["details"]["exec.fileless"].is_null() && e["process"]["args"][0] == "vigil-fileless"
    });
    assert_eq!(
        exec["process"]["name"], "memfd:vigil-mem",
        "comm of a memfd exec"
    );
}

#[test]
fn mprotect_to_executable_anonymous_memory() {
    require_root();
    let sensor = sensor();
    let (pid, _) = act(&["mprotect-exec"]);
    let change = event_of(&sensor, pid, "exec_memory");
    assert_eq!(change["details"]["prot"], "r-x");
    assert_eq!(change["details"]["memory.length"], "4096");
}

/// Writes a sensor config with a custom prefix list (and ring size) into `dir`.
fn config(dir: &Path, prefixes: &[&Path], bulk_ring: Option<u32>) -> String {
    let path = dir.join("sensor.yaml");
    let list: Vec<String> = prefixes
        .iter()
        .map(|p| format!("\"{}/\"", p.display()))
        .collect();
    let mut text = format!("output: stdout\nfile_prefixes: [{}]\n", list.join(", "));
    if let Some(bytes) = bulk_ring {
        text.push_str(&format!("bulk_ring_bytes: {bytes}\n"));
    }
    std::fs::write(&path, text).expect("write config");
    path.display().to_string()
}

#[test]
fn opens_outside_every_watched_prefix_never_leave_the_kernel() {
    require_root();
    let watched = tempfile::tempdir().expect("tempdir");
    let unwatched = tempfile::Builder::new()
        .prefix("vigil-unwatched")
        .tempdir_in("/var/tmp")
        .expect("tempdir in /var/tmp");
    let quiet = unwatched.path().join("quiet");
    std::fs::write(&quiet, b"x").expect("write");
    let config = config(watched.path(), &[watched.path()], None);
    let sensor = start_sensor(&["--config", &config]);

    let (pid, _) = act(&["open-many", quiet.to_str().expect("utf-8"), "100000"]);
    // Positive control, after the flood: an open in the watched directory is reported.
    let control = watched.path().join("control");
    let control = control.to_str().expect("utf-8");
    let (control_pid, _) = act(&["open-write", control]);
    event_where(&sensor, control_pid, "open", |e| {
        e["file"]["path"] == control
    });
    // Userspace reports every absolute-path record it receives; none may exist for the
    // 100 000 opens of the unwatched file.
    let leaked = json_lines(&sensor.stdout_lines())
        .into_iter()
        .filter(|e| e["process"]["pid"] == pid && e["event"]["action"] == "open")
        .filter(|e| e["file"]["path"] == quiet.to_str().expect("utf-8"))
        .count();
    assert_eq!(leaked, 0, "opens of an unwatched path reached userspace");
}

#[test]
fn a_flooded_bulk_lane_counts_every_loss_reports_it_in_band_and_never_costs_an_exec() {
    require_root();
    let watched = tempfile::tempdir().expect("tempdir");
    let file = watched.path().join("flood");
    std::fs::write(&file, b"x").expect("write");
    // One page: the smallest ring the kernel allows, so the flood overflows it.
    let config = config(watched.path(), &[watched.path()], Some(4096));
    let sensor = start_sensor(&["--config", &config]);
    let opens = 50_000;
    let flood = std::thread::spawn({
        let file = file.clone();
        move || {
            act(&[
                "open-many",
                file.to_str().expect("utf-8"),
                &opens.to_string(),
            ])
        }
    });
    // Execs while the bulk lane overflows: every one must still be captured.
    let mut exec_pids = Vec::new();
    for i in 0..5 {
        let marker = format!("vigil-lane-{i}-{}", std::process::id());
        let child = Command::new("/bin/true")
            .arg(&marker)
            .spawn()
            .expect("spawn true");
        exec_pids.push(child.id());
        let _ = child.wait_with_output();
    }
    let (flood_pid, _) = flood.join().expect("flood thread");
    let flood_done = Instant::now();

    let loss = poll_until(Duration::from_secs(2), || {
        json_lines(&sensor.stdout_lines())
            .into_iter()
            .find(|e| e["event"]["action"] == "lost" && e["details"]["lost.kind"] == "open")
    });
    let loss = loss.unwrap_or_else(|| {
        panic!(
            "no loss record within 2 s of the flood; stderr:\n{}",
            sensor.stderr_text()
        )
    });
    eprintln!(
        "loss record {:?} after the flood ended",
        flood_done.elapsed()
    );
    for pid in exec_pids {
        event_of(&sensor, pid, "exec");
    }
    // Wait for the reporting tick after the flood, then account for every open.
    std::thread::sleep(Duration::from_millis(1500));
    let events = json_lines(&sensor.stdout_lines());
    let delivered = events
        .iter()
        .filter(|e| e["process"]["pid"] == flood_pid && e["event"]["action"] == "open")
        .count() as u64;
    let reported_lost: u64 = events
        .iter()
        .filter(|e| e["event"]["action"] == "lost" && e["details"]["lost.kind"] == "open")
        .filter_map(|e| e["details"]["lost.records"].as_str()?.parse::<u64>().ok())
        .sum();
    let produced = opens as u64;
    eprintln!("produced {produced}, delivered {delivered}, lost (reported in band) {reported_lost}; first loss record {}", loss["details"]);
    assert!(
        delivered < produced,
        "a one-page ring cannot have held the flood"
    );
    // Every open of the flood is either delivered or counted as lost. Other processes' opens
    // of relative paths also pass the kernel filter and may add to the loss, never subtract.
    assert!(
        reported_lost >= produced - delivered,
        "lost {reported_lost} < produced {produced} - delivered {delivered}"
    );
    assert!(
        reported_lost <= produced - delivered + 1000,
        "lost {reported_lost} far above what the flood could lose ({})",
        produced - delivered
    );
}

/// Every event of `pid`, in the order the sensor printed them, with their positions.
fn events_of(events: &[Value], pid: u32) -> Vec<(usize, &Value)> {
    events
        .iter()
        .enumerate()
        .filter(|(_, e)| e["process"]["pid"] == pid)
        .collect()
}

/// A sensor whose only watched prefix is a fresh directory holding one file, `name`.
fn sensor_watching_one_file(name: &str) -> (tempfile::TempDir, String, Proc) {
    let watched = tempfile::tempdir().expect("tempdir");
    let file = watched.path().join(name);
    std::fs::write(&file, b"x").expect("write");
    let file = file.to_str().expect("utf-8").to_owned();
    let config = config(watched.path(), &[watched.path()], None);
    let sensor = start_sensor(&["--config", &config]);
    (watched, file, sensor)
}

/// Runs the actor `runs` times with the arguments `args(marker)`, each with its own marker;
/// returns each run's pid and marker.
fn actors(runs: usize, label: &str, args: impl Fn(&str) -> Vec<String>) -> Vec<(u32, String)> {
    let me = std::process::id();
    (0..runs)
        .map(|i| {
            let marker = format!("{label}-{i}-{me}");
            let args = args(&marker);
            let (pid, _) = act(&args.iter().map(String::as_str).collect::<Vec<_>>());
            (pid, marker)
        })
        .collect()
}

#[test]
fn an_open_just_before_exit_comes_before_the_exit_with_its_process() {
    require_root();
    // The open goes to the bulk lane, the exit a moment later to the critical lane: the sensor
    // must enrich them in that order, or the open finds its process already gone.
    let (_watched, file, sensor) = sensor_watching_one_file("read-then-exit");
    let me = std::process::id();
    let my_exe = std::env::current_exe().expect("own executable");
    let children = actors(200, "vigil-order", |marker| {
        ["open-many", &file, "1", marker].map(String::from).to_vec()
    });
    let events = poll_until(Duration::from_secs(20), || {
        let events = json_lines(&sensor.stdout_lines());
        children
            .iter()
            .all(|(pid, _)| {
                events
                    .iter()
                    .any(|e| e["process"]["pid"] == *pid && e["event"]["action"] == "exit")
            })
            .then_some(events)
    })
    .unwrap_or_else(|| {
        panic!(
            "not every child's exit was reported; sensor stderr:\n{}",
            sensor.stderr_text()
        )
    });
    for (pid, marker) in &children {
        let mine = events_of(&events, *pid);
        let position = |action: &str| {
            mine.iter()
                .find(|(_, e)| {
                    e["event"]["action"] == action
                        && (action != "open" || e["file"]["path"] == file.as_str())
                })
                .unwrap_or_else(|| panic!("no {action} of pid {pid} in {mine:?}"))
        };
        let (open_at, open) = position("open");
        let (exit_at, _) = position("exit");
        assert!(
            open_at < exit_at,
            "pid {pid}: open at line {open_at} after its exit at line {exit_at}"
        );
        assert_eq!(open["process"]["executable"], ACTOR, "{open}");
        assert_eq!(
            open["process"]["command_line"],
            format!("{ACTOR} open-many {file} 1 {marker}"),
            "{open}"
        );
        assert_eq!(open["process"]["parent"]["pid"], me, "{open}");
        assert_eq!(
            open["process"]["parent"]["executable"],
            my_exe.to_str().expect("utf-8"),
            "{open}"
        );
    }
}

#[test]
fn an_open_just_before_an_exec_belongs_to_the_image_before_the_exec() {
    require_root();
    let (_watched, file, sensor) = sensor_watching_one_file("read-then-exec");
    let me = std::process::id();
    let children = actors(100, "vigil-exec-order", |marker| {
        ["open-then-exec", &file, "/bin/true", marker]
            .map(String::from)
            .to_vec()
    });
    // NB: an exec event waits (up to 500 ms) for its executable's hash, so it can be printed
    // after its process's exit: wait for both.
    let events = poll_until(Duration::from_secs(20), || {
        let events = json_lines(&sensor.stdout_lines());
        children
            .iter()
            .all(|(pid, marker)| {
                let mine = |action: &str| {
                    events.iter().any(|e| {
                        e["process"]["pid"] == *pid
                            && e["event"]["action"] == action
                            && (action != "exec" || e["process"]["args"][1] == marker.as_str())
                    })
                };
                mine("exec") && mine("exit")
            })
            .then_some(events)
    })
    .unwrap_or_else(|| {
        panic!(
            "not every child's exec and exit were reported; sensor stderr:\n{}",
            sensor.stderr_text()
        )
    });
    for (pid, marker) in &children {
        let mine = events_of(&events, *pid);
        let (open_at, open) = mine
            .iter()
            .find(|(_, e)| e["event"]["action"] == "open" && e["file"]["path"] == file.as_str())
            .unwrap_or_else(|| panic!("no open of pid {pid} in {mine:?}"));
        let (exec_at, exec) = mine
            .iter()
            .find(|(_, e)| {
                e["event"]["action"] == "exec" && e["process"]["args"][1] == marker.as_str()
            })
            .unwrap_or_else(|| panic!("no exec of /bin/true by pid {pid} in {mine:?}"));
        assert!(
            open_at < exec_at,
            "pid {pid}: open at line {open_at} after the exec at line {exec_at}"
        );
        assert_eq!(exec["process"]["executable"], "/bin/true", "{exec}");
        assert_eq!(open["process"]["executable"], ACTOR, "{open}");
        assert_eq!(
            open["process"]["command_line"],
            format!("{ACTOR} open-then-exec {file} /bin/true {marker}"),
            "{open}"
        );
        assert_eq!(open["process"]["parent"]["pid"], me, "{open}");
    }
}

/// The answer the test's resolver gives for [`DNS_NAME`]: on loopback, but not the resolver's
/// own address, so a connect can only carry the name through the answer.
const DNS_ANSWER: [u8; 4] = [127, 0, 0, 2];
const DNS_NAME: &str = "c2.vigil-test.example";

/// Brings `lo` up in the calling thread's network namespace.
fn loopback_up() {
    // SAFETY: a socket for the ioctl, a zeroed ifreq with the name and flags set, closed after.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_DGRAM, 0);
        assert!(fd >= 0, "socket for SIOCSIFFLAGS");
        let mut request: libc::ifreq = std::mem::zeroed();
        for (dst, src) in request.ifr_name.iter_mut().zip(b"lo\0") {
            *dst = *src as libc::c_char;
        }
        request.ifr_ifru.ifru_flags = (libc::IFF_UP | libc::IFF_RUNNING) as libc::c_short;
        let rc = libc::ioctl(fd, libc::SIOCSIFFLAGS, &request);
        libc::close(fd);
        assert_eq!(rc, 0, "bringing lo up: {}", std::io::Error::last_os_error());
    }
}

/// Answers every query on `socket`: A queries for [`DNS_NAME`] with [`DNS_ANSWER`], anything
/// else with an empty NOERROR, until `done` returns true. Returns the queries' names.
fn respond(socket: &std::net::UdpSocket, mut done: impl FnMut() -> bool) -> Vec<String> {
    use simple_dns::{rdata, Packet, ResourceRecord, CLASS, QTYPE, TYPE};
    socket
        .set_read_timeout(Some(Duration::from_millis(50)))
        .expect("read timeout");
    let mut asked = Vec::new();
    let mut buf = [0u8; 512];
    while !done() {
        let Ok((len, peer)) = socket.recv_from(&mut buf) else {
            continue;
        };
        let Ok(query) = Packet::parse(&buf[..len]) else {
            continue;
        };
        let mut reply = Packet::new_reply(query.id());
        for question in &query.questions {
            asked.push(question.qname.to_string());
            reply.questions.push(question.clone());
            if question.qtype == QTYPE::TYPE(TYPE::A) && question.qname.to_string() == DNS_NAME {
                reply.answers.push(ResourceRecord::new(
                    question.qname.clone(),
                    CLASS::IN,
                    60,
                    rdata::RData::A(rdata::A {
                        address: u32::from(std::net::Ipv4Addr::from(DNS_ANSWER)),
                    }),
                ));
            }
        }
        let bytes = reply.build_bytes_vec().expect("build the answer");
        socket.send_to(&bytes, peer).expect("send the answer");
    }
    asked
}

/// In a network and mount namespace of its own (a thread of the test: namespaces are per
/// thread, and a child inherits its spawning thread's), with /etc/resolv.conf pointing at a
/// resolver the test runs on 127.0.0.1:53: the actor resolves a name through the C library and
/// connects to the answer. `{port}` in the actor's arguments becomes the port of a listener on
/// the answered address. Returns the actor's pid, its stdout and the names it asked.
fn resolve_in_a_private_network(actor_args: Vec<String>) -> (u32, String, Vec<String>) {
    let scratch = tempfile::tempdir().expect("tempdir");
    let resolv = scratch.path().join("resolv.conf");
    std::fs::write(
        &resolv,
        "nameserver 127.0.0.1\noptions timeout:2 attempts:2\n",
    )
    .expect("write resolv.conf");
    std::thread::spawn(move || {
        use nix::mount::{mount, MsFlags};
        use nix::sched::{unshare, CloneFlags};
        unshare(CloneFlags::CLONE_NEWNET | CloneFlags::CLONE_NEWNS).expect("unshare net+mnt");
        mount(
            None::<&str>,
            "/",
            None::<&str>,
            MsFlags::MS_REC | MsFlags::MS_PRIVATE,
            None::<&str>,
        )
        .expect("make mounts private");
        mount(
            Some(&resolv),
            "/etc/resolv.conf",
            None::<&str>,
            MsFlags::MS_BIND,
            None::<&str>,
        )
        .expect("bind-mount resolv.conf");
        loopback_up();
        let resolver = std::net::UdpSocket::bind("127.0.0.1:53").expect("bind 127.0.0.1:53");
        let listener =
            TcpListener::bind((std::net::Ipv4Addr::from(DNS_ANSWER), 0)).expect("listen");
        let port = listener.local_addr().expect("addr").port();
        let actor_args: Vec<String> = actor_args
            .into_iter()
            .map(|a| a.replace("{port}", &port.to_string()))
            .collect();
        let mut child = Command::new(ACTOR)
            .args(&actor_args)
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("start vigil-actor");
        let pid = child.id();
        let deadline = Instant::now() + Duration::from_secs(20);
        let asked = respond(&resolver, || {
            matches!(child.try_wait(), Ok(Some(_))) || Instant::now() > deadline
        });
        let _ = child.kill();
        let out = child.wait_with_output().expect("wait for vigil-actor");
        assert!(
            out.status.success(),
            "vigil-actor {actor_args:?} failed: {out:?}"
        );
        drop(scratch);
        (
            pid,
            String::from_utf8_lossy(&out.stdout).into_owned(),
            asked,
        )
    })
    .join()
    .expect("namespace thread")
}

#[test]
fn a_dns_lookup_is_captured_and_names_the_connect_to_its_answer() {
    require_root();
    let sensor = sensor();
    let (pid, out, asked) = resolve_in_a_private_network(vec![
        "resolve-connect".into(),
        DNS_NAME.into(),
        "{port}".into(),
    ]);
    assert!(
        asked.iter().any(|n| n == DNS_NAME),
        "the resolver was not asked: {asked:?}"
    );
    assert!(out.contains("resolved 127.0.0.2:"), "{out}");

    let query = event_where(&sensor, pid, "dns_query", |e| {
        e["dns"]["type"] == "query" && e["dns"]["question"]["type"] == "A"
    });
    assert_eq!(query["dns"]["question"]["name"], DNS_NAME);
    assert_eq!(query["network"]["transport"], "udp");
    assert_eq!(query["network"]["direction"], "egress");
    assert!(query.get("error").is_none(), "{query}");

    let answer = event_where(&sensor, pid, "dns_query", |e| {
        e["dns"]["type"] == "answer" && e["dns"]["question"]["type"] == "A"
    });
    assert_eq!(answer["dns"]["question"]["name"], DNS_NAME);
    assert_eq!(
        answer["dns"]["resolved_ip"],
        serde_json::json!(["127.0.0.2"])
    );
    assert_eq!(answer["dns"]["response_code"], "NOERROR");
    assert_eq!(
        answer["dns"]["id"], query["dns"]["id"],
        "the answer pairs with the query"
    );
    assert_eq!(answer["destination"]["ip"], "127.0.0.1");
    assert_eq!(answer["destination"]["port"], 53);
    assert_eq!(answer["network"]["direction"], "ingress");

    // The C library connects its UDP socket to the resolver first: a udp connect.
    let to_resolver = event_where(&sensor, pid, "connect", |e| {
        e["destination"]["ip"] == "127.0.0.1" && e["destination"]["port"] == 53
    });
    assert_eq!(to_resolver["network"]["transport"], "udp");
    let connect = event_where(&sensor, pid, "connect", |e| {
        e["destination"]["ip"] == "127.0.0.2"
    });
    assert_eq!(connect["destination"]["domain"], DNS_NAME);
    assert_eq!(connect["network"]["transport"], "tcp");
}

#[test]
fn file_io_through_io_uring_is_seen_with_its_file() {
    require_root();
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("uring.txt");
    let p = path.to_str().expect("utf-8");
    let sensor = sensor();
    let (pid, out) = act(&["uring-write-read", p]);
    assert!(
        out.contains("uring ok"),
        "the actor's io_uring I/O failed: {out}"
    );
    for (op, user_data) in [("WRITE", "0x1"), ("READ", "0x2")] {
        let event = event_where(&sensor, pid, "io_uring", |e| {
            e["details"]["io_uring.opcode"] == op
        });
        assert_eq!(event["file"]["path"], p, "{op}: {event}");
        assert_eq!(event["details"]["io_uring.result"], "11", "{op}: 11 bytes");
        assert_eq!(event["details"]["io_uring.user_data"], user_data);
        assert!(event.get("error").is_none(), "{event}");
    }
}

#[test]
fn with_capture_kinds_rules_the_kernel_captures_only_what_the_rules_read() {
    require_root();
    // NB: Sigma compares paths case-insensitively and the rule compiler folds them to lower
    // case; the kernel's prefix trie compares bytes, so the watched name is lower case.
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or_default();
    let watched = tempfile::Builder::new()
        .prefix(&format!("vigil-pushdown-{}-{nanos}", std::process::id()))
        .rand_bytes(0)
        .tempdir()
        .expect("tempdir");
    let unwatched = tempfile::Builder::new()
        .prefix(&format!("vigil-pushdown-{}-{nanos}-b", std::process::id()))
        .rand_bytes(0)
        .tempdir()
        .expect("tempdir");
    let rules = tempfile::tempdir().expect("tempdir");
    let prefix = format!("{}/", watched.path().display());
    std::fs::write(
        rules.path().join("file.yml"),
        format!(
            "title: watched dir\nid: pushdown-file\nlogsource: {{product: linux, category: file_access}}\ndetection: {{s: {{TargetFilename|startswith: '{prefix}'}}, condition: s}}\nlevel: low\n"
        ),
    )
    .expect("write rule");
    std::fs::write(
        rules.path().join("net.yml"),
        "title: port 4444\nid: pushdown-net\nlogsource: {product: linux, category: network_connection}\ndetection: {s: {DestinationPort: 4444}, condition: s}\nlevel: low\n",
    )
    .expect("write rule");
    // No configured prefix covers either directory: only the rule's prefix can let opens in.
    let config = watched.path().join("sensor.yaml");
    std::fs::write(
        &config,
        format!(
            "output: stdout\ncapture_kinds: [rules]\nfile_prefixes: [\"/vigil-nothing-here/\"]\nrules: [\"{}\"]\n",
            rules.path().display()
        ),
    )
    .expect("write config");
    let sensor = start_sensor(&["--config", config.to_str().expect("utf-8")]);
    let log = sensor.stderr_text();
    let skipped = log
        .lines()
        .find(|l| l.contains("not attached: no rule or setting selects their events"))
        .unwrap_or_else(|| panic!("no kinds left unattached:\n{log}"));
    for syscall in ["chmod", "ptrace", "mount", "setuid", "unlink"] {
        assert!(skipped.contains(syscall), "{syscall} attached: {skipped}");
    }
    for syscall in ["openat", "connect"] {
        assert!(
            !skipped.contains(&format!("{syscall},")) && !skipped.ends_with(syscall),
            "{syscall} left out: {skipped}"
        );
    }

    let existing = watched.path().join("existing");
    std::fs::write(&existing, b"x").expect("write");
    let (chmod_pid, _) = act(&["chmod", existing.to_str().expect("utf-8"), "600"]);
    let elsewhere = unwatched.path().join("elsewhere");
    let elsewhere = elsewhere.to_str().expect("utf-8");
    let (elsewhere_pid, _) = act(&["open-write", elsewhere]);
    let inside = watched.path().join("inside");
    let inside = inside.to_str().expect("utf-8");
    let (inside_pid, _) = act(&["open-write", inside]);
    event_where(&sensor, inside_pid, "open", |e| e["file"]["path"] == inside);
    let listener = TcpListener::bind("127.0.0.1:0").expect("listen");
    let (connect_pid, _) = act(&["connect", &listener.local_addr().expect("addr").to_string()]);
    event_of(&sensor, connect_pid, "connect");

    // NB: by path, not "any open of that pid": an open whose path the kernel cannot read at
    // entry (a page not yet faulted in, as for the loader's first opens) is sent unfiltered.
    let events = json_lines(&sensor.stdout_lines());
    assert!(
        !events
            .iter()
            .any(|e| e["process"]["pid"] == chmod_pid && e["event"]["action"] == "chmod"),
        "chmod is read by no rule, yet was captured"
    );
    assert!(
        !events
            .iter()
            .any(|e| e["process"]["pid"] == elsewhere_pid && e["file"]["path"] == elsewhere),
        "an open outside the rule's prefix was captured"
    );

    // The rule moves to the other directory: SIGHUP updates the kernel's prefix map in place.
    std::fs::write(
        rules.path().join("file.yml"),
        format!(
            "title: watched dir\nid: pushdown-file\nlogsource: {{product: linux, category: file_access}}\ndetection: {{s: {{TargetFilename|startswith: '{}/'}}, condition: s}}\nlevel: low\n",
            unwatched.path().display()
        ),
    )
    .expect("rewrite rule");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(sensor.pid() as i32),
        nix::sys::signal::Signal::SIGHUP,
    )
    .expect("SIGHUP");
    poll_until(Duration::from_secs(10), || {
        sensor
            .stderr_text()
            .contains("kernel prefix filter updated")
            .then_some(())
    })
    .unwrap_or_else(|| panic!("no prefix update after SIGHUP:\n{}", sensor.stderr_text()));
    let old_place = watched.path().join("after-reload");
    let old_place = old_place.to_str().expect("utf-8");
    let (old_pid, _) = act(&["open-write", old_place]);
    let new_place = unwatched.path().join("after-reload");
    let new_place = new_place.to_str().expect("utf-8");
    let (new_pid, _) = act(&["open-write", new_place]);
    event_where(&sensor, new_pid, "open", |e| e["file"]["path"] == new_place);
    assert!(
        !json_lines(&sensor.stdout_lines())
            .iter()
            .any(|e| e["process"]["pid"] == old_pid && e["file"]["path"] == old_place),
        "the old prefix is still watched after the reload"
    );
}

#[test]
fn a_dns_query_from_an_unconnected_socket_is_captured_both_ways() {
    require_root();
    let sensor = sensor();
    let (pid, out, asked) = resolve_in_a_private_network(vec![
        "dns-sendto".into(),
        "127.0.0.1:53".into(),
        DNS_NAME.into(),
    ]);
    assert!(asked.iter().any(|n| n == DNS_NAME), "{asked:?}");
    assert!(out.contains("from 127.0.0.1:53"), "{out}");
    let query = event_where(&sensor, pid, "dns_query", |e| e["dns"]["type"] == "query");
    assert_eq!(query["dns"]["id"], 0x5647);
    assert_eq!(query["dns"]["question"]["name"], DNS_NAME);
    assert_eq!(query["details"]["syscall"], "sendto");
    assert_eq!(query["destination"]["ip"], "127.0.0.1");
    assert_eq!(query["destination"]["port"], 53);
    let answer = event_where(&sensor, pid, "dns_query", |e| e["dns"]["type"] == "answer");
    assert_eq!(answer["dns"]["id"], 0x5647);
    assert_eq!(answer["details"]["syscall"], "recvfrom");
    assert_eq!(
        answer["dns"]["resolved_ip"],
        serde_json::json!(["127.0.0.2"])
    );
}
