//! Log-source categories: which [`EventAction`]s each category's rules see. Sigma's own
//! Linux categories (`process_creation`, `file_event`, `network_connection`, `dns_query`...)
//! plus Vigil categories for what only a kernel sensor observes (ptrace, module load,
//! credential change...). A rule is only ever evaluated on events of its category, which is
//! both the first index of the matcher and what tells the kernel which hooks to attach.

use vigil_proto::{Event, EventAction};

/// One supported `logsource.category`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Category {
    /// The `logsource.category` value.
    pub name: &'static str,
    /// The actions whose events this category's rules read; the first is the default for
    /// embedded test cases.
    pub actions: &'static [EventAction],
    /// `true` for categories Vigil adds (Sigma tools without Vigil do not know them).
    pub vigil_only: bool,
    /// What the category means, for `vigil rules explain` and the docs.
    pub meaning: &'static str,
}

use EventAction as A;

/// Every category the engine compiles, in documentation order.
pub const CATEGORIES: &[Category] = &[
    cat("process_creation", &[A::Exec], false, "a program was executed (execve)"),
    cat(
        "file_event",
        &[A::Open, A::Rename, A::Link, A::Symlink, A::Mkdir],
        false,
        "a file was created or written: an open for writing or creating, or a new name from rename, link, symlink or mkdir",
    ),
    cat("file_access", &[A::Open], false, "a file was opened, for reading or writing"),
    cat(
        "file_change",
        &[A::Chmod, A::Chown, A::Truncate, A::Utimes],
        false,
        "a file's metadata or size changed: chmod, chown, truncate, timestamps",
    ),
    cat("file_delete", &[A::Unlink, A::Rmdir], false, "a file or directory was removed"),
    cat("file_rename", &[A::Rename], false, "a file was renamed or moved"),
    cat(
        "network_connection",
        &[A::Connect, A::Accept],
        false,
        "a connection was made (connect, Initiated=true) or accepted (Initiated=false)",
    ),
    cat("dns_query", &[A::DnsQuery], false, "a process resolved a name"),
    cat("network_listen", &[A::Bind, A::Listen], true, "a socket was bound or put in listening state"),
    cat(
        "ptrace",
        &[A::Ptrace, A::ProcessVmWrite],
        true,
        "a process attached to, or wrote the memory of, another process",
    ),
    cat("module_load", &[A::ModuleLoad, A::ModuleUnload], true, "a kernel module was loaded or unloaded"),
    cat(
        "credential_change",
        &[A::SetUid, A::SetGid, A::Capset],
        true,
        "a process changed its user, group or capabilities",
    ),
    cat("mount", &[A::Mount, A::Umount], true, "a file system was mounted or unmounted"),
    cat(
        "namespace_change",
        &[A::Unshare, A::Setns],
        true,
        "a process entered or created namespaces (unshare, setns)",
    ),
    cat("memfd_create", &[A::MemfdCreate], true, "an anonymous memory file was created"),
    cat(
        "fileless_exec",
        &[A::Exec],
        true,
        "a program was executed from memory: a memfd, or a file deleted since it was opened",
    ),
    cat(
        "exec_memory",
        &[A::ExecMemory],
        true,
        "memory was made writable and executable, or executable after being written (mmap/mprotect)",
    ),
    cat("bpf_load", &[A::BpfLoad], true, "an eBPF program was loaded into the kernel"),
    cat("signal", &[A::Kill], true, "a process sent a signal to another process"),
];

const fn cat(
    name: &'static str,
    actions: &'static [EventAction],
    vigil_only: bool,
    meaning: &'static str,
) -> Category {
    Category {
        name,
        actions,
        vigil_only,
        meaning,
    }
}

/// Every action, for lookups by name (the enum is `non_exhaustive`, so it cannot be iterated).
pub(crate) const ALL_ACTIONS: &[EventAction] = &[
    A::Exec,
    A::Fork,
    A::Exit,
    A::Open,
    A::Unlink,
    A::Rename,
    A::Chmod,
    A::Chown,
    A::Truncate,
    A::Link,
    A::Symlink,
    A::Mkdir,
    A::Rmdir,
    A::Utimes,
    A::Connect,
    A::Bind,
    A::Listen,
    A::Accept,
    A::DnsQuery,
    A::SetUid,
    A::SetGid,
    A::Capset,
    A::Ptrace,
    A::ProcessVmWrite,
    A::Kill,
    A::ModuleLoad,
    A::ModuleUnload,
    A::BpfLoad,
    A::Mount,
    A::Umount,
    A::Unshare,
    A::Setns,
    A::MemfdCreate,
    A::ExecMemory,
    A::IoUring,
    A::Lost,
];

/// Open flags that make an open a write (for `file_event`).
const WRITE_FLAGS: [&str; 5] = ["write", "create", "truncate", "append", "rdwr"];

impl Category {
    /// The category named `name` (case-insensitive), if the engine compiles it.
    pub fn named(name: &str) -> Option<&'static Category> {
        CATEGORIES
            .iter()
            .find(|c| c.name.eq_ignore_ascii_case(name))
    }

    /// Whether an event belongs to this category: its action is one of the category's, and
    /// for the categories narrower than their actions, the extra condition holds.
    pub fn admits(&self, event: &Event) -> bool {
        let action = event.event.action;
        if !self.actions.contains(&action) {
            return false;
        }
        match self.name {
            // NB: an open whose flags were not captured (empty) is admitted: better a rule
            // evaluated once too often than a created file missed.
            "file_event" if action == A::Open => event.file.as_ref().is_none_or(|f| {
                f.flags.is_empty() || f.flags.iter().any(|fl| WRITE_FLAGS.contains(&fl.as_str()))
            }),
            "fileless_exec" => is_fileless(&event.process.executable),
            _ => true,
        }
    }
}

/// An executable that has no file on disk: a memfd (`/memfd:name`), or a file deleted after
/// it was opened (the kernel appends ` (deleted)` to such paths).
pub(crate) fn is_fileless(executable: &str) -> bool {
    executable.starts_with("/memfd:") || executable.ends_with(" (deleted)")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_category_action_has_a_name_lookup() {
        for category in CATEGORIES {
            for action in category.actions {
                assert!(
                    ALL_ACTIONS.contains(action),
                    "{}: {action:?} missing from ALL_ACTIONS",
                    category.name
                );
            }
        }
        let mut names: Vec<_> = ALL_ACTIONS.iter().map(|a| a.as_str()).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), ALL_ACTIONS.len(), "ALL_ACTIONS has duplicates");
    }

    #[test]
    fn file_event_admits_writes_and_new_names_only() {
        let open = |flags: &[&str]| {
            let mut e = Event::default();
            e.event.action = A::Open;
            e.file = Some(vigil_proto::File {
                path: "/etc/x".into(),
                flags: flags.iter().map(|f| (*f).to_owned()).collect(),
                ..Default::default()
            });
            e
        };
        let fe = Category::named("file_event").expect("file_event exists");
        assert!(
            fe.admits(&open(&["write", "create"])),
            "create is a file event"
        );
        assert!(fe.admits(&open(&[])), "unknown flags are admitted");
        assert!(!fe.admits(&open(&["read"])), "a read is not a file event");
        let fa = Category::named("file_access").expect("file_access exists");
        assert!(fa.admits(&open(&["read"])), "a read is a file access");
    }

    #[test]
    fn fileless_exec_needs_a_memfd_or_deleted_image() {
        let exec = |path: &str| {
            let mut e = Event::default();
            e.process.executable = path.into();
            e
        };
        let fx = Category::named("fileless_exec").expect("fileless_exec exists");
        assert!(fx.admits(&exec("/memfd:payload")), "memfd");
        assert!(fx.admits(&exec("/tmp/x (deleted)")), "deleted");
        assert!(!fx.admits(&exec("/usr/bin/ls")), "ordinary");
    }
}
