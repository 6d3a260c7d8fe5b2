//! The deployment's certificates (`vigil certs`): one CA, and a certificate per sensor,
//! operator and collector, all as PEM files in one directory.
//!
//! A certificate's subject carries what the collector needs to know about its holder:
//! CN = the holder's name, OU = its role (see [`vigil_proto::transport`]). Collector
//! certificates also carry the DNS names and IP addresses clients dial, as SANs. Private keys
//! are written with mode 0600 and never overwritten unless asked to.
//!
//! The collector's tests make their certificates with this module, so what they test is what
//! `vigil certs` makes.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};
use vigil_proto::transport::{Role, TlsFiles};

/// How long an issued certificate is valid.
pub const CERT_VALIDITY: Duration = Duration::from_secs(365 * 24 * 3600);

/// How long the CA is valid: longer than any certificate it signs.
pub const CA_VALIDITY: Duration = Duration::from_secs(10 * 365 * 24 * 3600);

/// Certificates start being valid this long before they are made, so a peer whose clock is a
/// little behind does not reject a brand-new certificate.
const CLOCK_SKEW: Duration = Duration::from_secs(3600);

/// SANs of a collector certificate when none are given: what a local collector is dialled as.
pub const DEFAULT_COLLECTOR_SANS: &[&str] = &["localhost", "127.0.0.1", "::1"];

#[derive(Debug, thiserror::Error)]
pub enum CertError {
    /// A file would be overwritten and `force` was not given.
    #[error("{} already exists (pass --force to replace it)", path.display())]
    Exists { path: PathBuf },
    /// A file or the directory could not be written.
    #[error("cannot write {}: {source}", path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The CA files could not be read (run `vigil certs init` first).
    #[error("cannot read {}: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The CA files were read but are not a CA certificate and its key.
    #[error("{}: {source}", path.display())]
    BadCa {
        path: PathBuf,
        #[source]
        source: rcgen::Error,
    },
    /// The name cannot be used as a certificate name and file name.
    #[error("invalid name {name:?}: {reason}")]
    BadName { name: String, reason: &'static str },
    /// A subject alternative name is neither an IP address nor a valid DNS name.
    #[error("invalid subject alternative name {san:?}: {source}")]
    BadSan {
        san: String,
        #[source]
        source: rcgen::Error,
    },
    /// Key generation or signing failed.
    #[error("cannot make the certificate: {0}")]
    Generate(#[source] rcgen::Error),
}

/// Where a certificate and its key live in a certificate directory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CertPaths {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// `D/ca.pem` and `D/ca-key.pem`.
pub fn ca_paths(dir: &Path) -> CertPaths {
    CertPaths {
        cert: dir.join("ca.pem"),
        key: dir.join("ca-key.pem"),
    }
}

/// `D/NAME.pem` and `D/NAME-key.pem`.
pub fn cert_paths(dir: &Path, name: &str) -> CertPaths {
    CertPaths {
        cert: dir.join(format!("{name}.pem")),
        key: dir.join(format!("{name}-key.pem")),
    }
}

/// The TLS files of `name` in a certificate directory, with the directory's CA.
pub fn tls_files(dir: &Path, name: &str) -> TlsFiles {
    let CertPaths { cert, key } = cert_paths(dir, name);
    TlsFiles {
        ca: ca_paths(dir).cert,
        cert,
        key,
    }
}

/// Creates a new CA in `dir` (created if missing). Refuses to replace an existing CA unless
/// `force`: every certificate it signed would stop being trusted.
pub fn init_ca(dir: &Path, force: bool) -> Result<CertPaths, CertError> {
    let paths = ca_paths(dir);
    refuse_overwrite(&paths, force)?;
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params
        .distinguished_name
        .push(DnType::OrganizationName, "Vigil");
    let key = KeyPair::generate().map_err(CertError::Generate)?;
    // Each CA gets its own name (from its public key), so a certificate from the wrong CA fails
    // as "unknown issuer" rather than a confusing bad signature, and operators can tell CAs apart.
    params.distinguished_name.push(
        DnType::CommonName,
        format!("Vigil deployment CA {}", key_tag(&key)),
    );
    // Constrained(0): the CA signs end-entity certificates only, never another CA.
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    set_validity(&mut params, CA_VALIDITY);
    let cert = params.self_signed(&key).map_err(CertError::Generate)?;
    write_pair(&paths, &cert.pem(), &key.serialize_pem(), force)?;
    Ok(paths)
}

/// Issues a certificate for `name` with `role`, signed by the CA in `dir`. `sans` go into the
/// certificate as DNS names or IP addresses; a collector certificate with none gets
/// [`DEFAULT_COLLECTOR_SANS`].
pub fn issue(
    dir: &Path,
    role: Role,
    name: &str,
    sans: &[String],
    force: bool,
) -> Result<CertPaths, CertError> {
    let now = SystemTime::now();
    issue_for_period(
        dir,
        role,
        name,
        sans,
        force,
        now - CLOCK_SKEW,
        now + CERT_VALIDITY,
    )
}

/// [`issue`] with an explicit validity period (tests make expired certificates with it).
pub fn issue_for_period(
    dir: &Path,
    role: Role,
    name: &str,
    sans: &[String],
    force: bool,
    not_before: SystemTime,
    not_after: SystemTime,
) -> Result<CertPaths, CertError> {
    check_name(name)?;
    let paths = cert_paths(dir, name);
    refuse_overwrite(&paths, force)?;
    let issuer = load_issuer(dir)?;

    let sans: Vec<String> = if sans.is_empty() && role == Role::Collector {
        DEFAULT_COLLECTOR_SANS
            .iter()
            .map(|s| s.to_string())
            .collect()
    } else {
        sans.to_vec()
    };
    for san in &sans {
        CertificateParams::new(vec![san.clone()]).map_err(|source| CertError::BadSan {
            san: san.clone(),
            source,
        })?;
    }
    let mut params = CertificateParams::new(sans).map_err(CertError::Generate)?;
    params.distinguished_name = DistinguishedName::new();
    params
        .distinguished_name
        .push(DnType::OrganizationName, "Vigil");
    params
        .distinguished_name
        .push(DnType::OrganizationalUnitName, role.as_str());
    params.distinguished_name.push(DnType::CommonName, name);
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    // webpki checks these: a sensor's certificate cannot serve as a collector's.
    params.extended_key_usages = match role {
        Role::Collector => vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ],
        Role::Sensor | Role::Operator => vec![ExtendedKeyUsagePurpose::ClientAuth],
    };
    params.use_authority_key_identifier_extension = true;
    params.not_before = not_before.into();
    params.not_after = not_after.into();
    let key = KeyPair::generate().map_err(CertError::Generate)?;
    let cert = params
        .signed_by(&key, &issuer)
        .map_err(CertError::Generate)?;
    write_pair(&paths, &cert.pem(), &key.serialize_pem(), force)?;
    Ok(paths)
}

/// Twelve hex digits of the public key: random, so two CAs never share a name.
fn key_tag(key: &KeyPair) -> String {
    // NB: skip the first byte of the SEC1 point encoding, which is always 0x04.
    key.public_key_raw()
        .iter()
        .skip(1)
        .take(6)
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn load_issuer(dir: &Path) -> Result<Issuer<'static, KeyPair>, CertError> {
    let CertPaths { cert, key } = ca_paths(dir);
    let read = |path: &Path| {
        std::fs::read_to_string(path).map_err(|source| CertError::Read {
            path: path.to_owned(),
            source,
        })
    };
    let key_pem = read(&key)?;
    let cert_pem = read(&cert)?;
    let key_pair = KeyPair::from_pem(&key_pem).map_err(|source| CertError::BadCa {
        path: key.clone(),
        source,
    })?;
    Issuer::from_ca_cert_pem(&cert_pem, key_pair).map_err(|source| CertError::BadCa {
        path: cert.clone(),
        source,
    })
}

/// Names become file names and certificate CNs: keep them to what is safe as both, and keep
/// them from landing on the CA's files or another certificate's key file.
pub(crate) fn check_name(name: &str) -> Result<(), CertError> {
    let bad = |reason| {
        Err(CertError::BadName {
            name: name.to_owned(),
            reason,
        })
    };
    if name.is_empty() || name.len() > 64 {
        return bad("must be 1 to 64 characters");
    }
    if !name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'))
    {
        return bad("only letters, digits, '.', '-' and '_' are allowed");
    }
    if name.starts_with(['.', '-']) {
        return bad("must not start with '.' or '-'");
    }
    if name == "ca" || name.ends_with("-key") {
        return bad("would collide with the CA's or a key's file name");
    }
    Ok(())
}

fn set_validity(params: &mut CertificateParams, validity: Duration) {
    let now = SystemTime::now();
    params.not_before = (now - CLOCK_SKEW).into();
    params.not_after = (now + validity).into();
}

fn refuse_overwrite(paths: &CertPaths, force: bool) -> Result<(), CertError> {
    if force {
        return Ok(());
    }
    for path in [&paths.cert, &paths.key] {
        if path.exists() {
            return Err(CertError::Exists { path: path.clone() });
        }
    }
    Ok(())
}

/// Writes the key (0600) then the certificate (0644), each through a temporary file renamed
/// into place, so a crash never leaves half a key or a certificate without its key.
fn write_pair(
    paths: &CertPaths,
    cert_pem: &str,
    key_pem: &str,
    force: bool,
) -> Result<(), CertError> {
    if let Some(dir) = paths.cert.parent() {
        std::fs::create_dir_all(dir).map_err(|source| CertError::Write {
            path: dir.to_owned(),
            source,
        })?;
    }
    write_file(&paths.key, key_pem, 0o600, force)?;
    write_file(&paths.cert, cert_pem, 0o644, force)
}

fn write_file(path: &Path, contents: &str, mode: u32, force: bool) -> Result<(), CertError> {
    let err = |source| CertError::Write {
        path: path.to_owned(),
        source,
    };
    let mut tmp_name = path.as_os_str().to_owned();
    tmp_name.push(format!(".tmp{}", std::process::id()));
    let tmp = PathBuf::from(tmp_name);
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&tmp)
        .map_err(err)?;
    let written = file
        .write_all(contents.as_bytes())
        .and_then(|()| file.sync_all());
    drop(file);
    // NB: without force, a file that appeared since the check is still not replaced.
    let placed = written.and_then(|()| {
        if force {
            std::fs::rename(&tmp, path)
        } else {
            std::fs::hard_link(&tmp, path).and_then(|()| std::fs::remove_file(&tmp))
        }
    });
    if let Err(e) = placed {
        let _ = std::fs::remove_file(&tmp);
        return Err(if e.kind() == std::io::ErrorKind::AlreadyExists {
            CertError::Exists {
                path: path.to_owned(),
            }
        } else {
            err(e)
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn init_refuses_to_replace_a_ca_without_force() {
        let dir = tempfile::tempdir().expect("temp dir");
        let first = init_ca(dir.path(), false).expect("first init");
        let before = std::fs::read(&first.cert).expect("read CA");
        let err = init_ca(dir.path(), false).expect_err("second init must refuse");
        assert!(matches!(err, CertError::Exists { .. }), "{err}");
        assert_eq!(std::fs::read(&first.cert).expect("read CA"), before);
        init_ca(dir.path(), true).expect("forced init");
        assert_ne!(std::fs::read(&first.cert).expect("read CA"), before);
    }

    #[test]
    fn keys_are_private_and_names_are_checked() {
        let dir = tempfile::tempdir().expect("temp dir");
        let ca = init_ca(dir.path(), false).expect("init");
        let issued = issue(dir.path(), Role::Sensor, "web-1", &[], false).expect("issue");
        for key in [&ca.key, &issued.key] {
            let mode = std::fs::metadata(key)
                .expect("stat key")
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600, "{}", key.display());
        }
        for name in ["ca", "../x", "", "a-key", ".hidden", "a b"] {
            let err =
                issue(dir.path(), Role::Sensor, name, &[], false).expect_err("bad name accepted");
            assert!(matches!(err, CertError::BadName { .. }), "{name:?}: {err}");
        }
    }

    #[test]
    fn issuing_without_a_ca_says_which_file_is_missing() {
        let dir = tempfile::tempdir().expect("temp dir");
        let err = issue(dir.path(), Role::Operator, "alice", &[], false).expect_err("no CA");
        assert!(err.to_string().contains("ca-key.pem"), "{err}");
    }

    #[test]
    fn bad_sans_are_refused() {
        let dir = tempfile::tempdir().expect("temp dir");
        init_ca(dir.path(), false).expect("init");
        let err = issue(
            dir.path(),
            Role::Collector,
            "c",
            &["bäd.example".into()],
            false,
        )
        .expect_err("bad SAN accepted");
        assert!(matches!(err, CertError::BadSan { .. }), "{err}");
    }
}
