//! Finds, in the running kernel's BTF, the struct field offsets the kernel programs read.
//!
//! Rust eBPF has no CO-RE relocations, so the loader does their job: it resolves each field by
//! name (descending into anonymous structs and unions, as `mm_struct` nests its fields) and
//! hands the offsets to the programs as a read-only global. One object then serves every
//! kernel layout that has the fields.

use std::path::Path;

use btf_rs::{Btf, BtfType, Type};
use vigil_common::{FileOffsets, KernelOffsets, SocketOffsets};

#[derive(Debug, thiserror::Error)]
pub enum OffsetError {
    /// No BTF for the running kernel: it was built without CONFIG_DEBUG_INFO_BTF.
    #[error("cannot read kernel BTF at {path}: {source}")]
    Btf {
        path: String,
        #[source]
        source: btf_rs::Error,
    },
    /// A field the programs need is missing from this kernel's layout.
    #[error("kernel BTF has no field {field} (tried {tried})")]
    MissingField { field: String, tried: String },
}

pub const KERNEL_BTF: &str = "/sys/kernel/btf/vmlinux";

/// Resolves every offset in [`KernelOffsets`] from the BTF file at `path`.
pub fn kernel_offsets(path: &Path) -> Result<KernelOffsets, OffsetError> {
    let btf = Btf::from_file(path).map_err(|source| OffsetError::Btf {
        path: path.display().to_string(),
        source,
    })?;
    let resolver = Resolver { btf: &btf };
    let required = |structure: &str, names: &[&str]| resolver.offset_of_any(structure, names);
    let optional = |structure: &str, name: &str| {
        resolver
            .offset_of_any(structure, &[name])
            .unwrap_or(KernelOffsets::UNAVAILABLE)
    };
    Ok(KernelOffsets {
        task_real_parent: required("task_struct", &["real_parent"])?,
        task_tgid: required("task_struct", &["tgid"])?,
        task_pid: required("task_struct", &["pid"])?,
        task_cred: required("task_struct", &["cred"])?,
        // Only with CONFIG_AUDIT.
        task_loginuid: optional("task_struct", "loginuid"),
        task_mm: required("task_struct", &["mm"])?,
        task_exit_code: required("task_struct", &["exit_code"])?,
        // Renamed in 5.5; both count time across suspend, like /proc/PID/stat's starttime.
        task_start_boottime: required("task_struct", &["start_boottime", "real_start_time"])?,
        cred_uid: required("cred", &["uid"])?,
        cred_gid: required("cred", &["gid"])?,
        cred_euid: required("cred", &["euid"])?,
        cred_egid: required("cred", &["egid"])?,
        mm_arg_start: required("mm_struct", &["arg_start"])?,
        mm_arg_end: required("mm_struct", &["arg_end"])?,
        bprm_filename: required("linux_binprm", &["filename"])?,
        _pad: 0,
    })
}

/// Resolves the fd-to-socket path of [`SocketOffsets`] from the BTF file at `path`.
pub fn socket_offsets(path: &Path) -> Result<SocketOffsets, OffsetError> {
    let btf = Btf::from_file(path).map_err(|source| OffsetError::Btf {
        path: path.display().to_string(),
        source,
    })?;
    let resolver = Resolver { btf: &btf };
    let field = |structure: &str, names: &[&str]| resolver.offset_of_any(structure, names);
    // The sock_common fields sit inside `struct sock` at `__sk_common`.
    let common = field("sock", &["__sk_common"])?;
    Ok(SocketOffsets {
        task_files: field("task_struct", &["files"])?,
        files_fdt: field("files_struct", &["fdt"])?,
        fdt_max_fds: field("fdtable", &["max_fds"])?,
        fdt_fd: field("fdtable", &["fd"])?,
        file_private_data: field("file", &["private_data"])?,
        socket_type: field("socket", &["type"])?,
        socket_file: field("socket", &["file"])?,
        socket_sk: field("socket", &["sk"])?,
        sk_family: common + field("sock_common", &["skc_family"])?,
        sk_dport: common + field("sock_common", &["skc_dport"])?,
        // A u16 since 5.6; before, a bitfield this reader cannot take (left unavailable).
        sk_protocol: field("sock", &["sk_protocol"]).unwrap_or(SocketOffsets::UNAVAILABLE),
        _pad: 0,
    })
}

/// Resolves the `struct file` fields the file-open hooks read.
pub fn file_offsets(path: &Path) -> Result<FileOffsets, OffsetError> {
    let btf = Btf::from_file(path).map_err(|source| OffsetError::Btf {
        path: path.display().to_string(),
        source,
    })?;
    let resolver = Resolver { btf: &btf };
    Ok(FileOffsets {
        file_f_path: resolver.offset_of_any("file", &["f_path"])?,
        file_f_flags: resolver.offset_of_any("file", &["f_flags"])?,
    })
}

struct Resolver<'a> {
    btf: &'a Btf,
}

impl Resolver<'_> {
    fn offset_of_any(&self, structure: &str, names: &[&str]) -> Result<u32, OffsetError> {
        let candidates = self
            .btf
            .resolve_types_by_name(structure)
            .unwrap_or_default();
        for candidate in candidates {
            // The name may also be a forward declaration; only a struct with members counts.
            let Type::Struct(s) = candidate else { continue };
            for name in names {
                if let Some(bits) = self.find_member(&s, name, 0) {
                    return Ok(bits / 8);
                }
            }
        }
        Err(OffsetError::MissingField {
            field: format!("{structure}.{}", names[0]),
            tried: names.join(", "),
        })
    }

    /// Bit offset of `name` inside `s`, looking through anonymous members.
    fn find_member(&self, s: &btf_rs::Struct, name: &str, base_bits: u32) -> Option<u32> {
        for member in &s.members {
            let member_name = self.btf.resolve_name(member).unwrap_or_default();
            let bits = base_bits + member.bit_offset();
            if member_name == name {
                return Some(bits);
            }
            if member_name.is_empty() {
                if let Some(inner) = self.strip_to_aggregate(member) {
                    if let Some(found) = self.find_member(&inner, name, bits) {
                        return Some(found);
                    }
                }
            }
        }
        None
    }

    /// Follows typedefs and qualifiers from a member to the struct or union it names.
    fn strip_to_aggregate(&self, member: &dyn BtfType) -> Option<btf_rs::Struct> {
        let mut current = self.btf.resolve_chained_type(member).ok()?;
        for _ in 0..16 {
            current = match current {
                Type::Struct(s) | Type::Union(s) => return Some(s),
                Type::Typedef(t) => self.btf.resolve_chained_type(&t).ok()?,
                Type::Const(t) | Type::Volatile(t) | Type::Restrict(t) => {
                    self.btf.resolve_chained_type(&t).ok()?
                }
                _ => return None,
            };
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn running_kernel_has_every_required_field() {
        let path = Path::new(KERNEL_BTF);
        if !path.exists() {
            eprintln!("SKIP: {KERNEL_BTF} absent: this kernel has no BTF");
            return;
        }
        let offsets = kernel_offsets(path).expect("offsets");
        // Fields nested in mm_struct's anonymous struct must resolve to distinct, ordered offsets.
        assert!(offsets.mm_arg_end > offsets.mm_arg_start, "{offsets:?}");
        assert!(offsets.cred_euid > offsets.cred_uid, "{offsets:?}");
        assert_ne!(offsets.task_tgid, offsets.task_pid);
    }

    #[test]
    fn running_kernel_has_the_socket_fields() {
        let path = Path::new(KERNEL_BTF);
        if !path.exists() {
            eprintln!("SKIP: {KERNEL_BTF} absent: this kernel has no BTF");
            return;
        }
        let offsets = socket_offsets(path).expect("socket offsets");
        // skc_family and skc_dport live in sock_common at the start of struct sock.
        assert!(offsets.sk_dport < offsets.sk_protocol, "{offsets:?}");
        assert_ne!(offsets.socket_file, offsets.socket_sk);
        assert_ne!(offsets.sk_protocol, SocketOffsets::UNAVAILABLE);
    }

    #[test]
    fn missing_btf_is_a_clear_error() {
        let err = kernel_offsets(Path::new("/nonexistent/vmlinux")).unwrap_err();
        assert!(err.to_string().contains("/nonexistent/vmlinux"), "{err}");
    }
}
