//! The demo mesh's certificate authority and its workloads' certificates, as
//! istiod's CA issues them, made by OpenSSL's command line:
//!
//! - the root: RSA 2048, subject `O=cluster.local` (the trust domain), ten
//!   years (`pilot/pkg/bootstrap/istio_ca.go`, `DefaultSelfSignedCACertTTL`);
//! - per workload: RSA 2048 (`WORKLOAD_RSA_KEY_SIZE`), an empty subject, one
//!   critical URI SAN naming its SPIFFE identity
//!   (`spiffe://cluster.local/ns/NS/sa/SA`), digital signature and key
//!   encipherment, client and server use, valid for a day
//!   (`security/pkg/pki/util/generate_cert.go`, `genCertTemplateFromCSR`;
//!   `san.go`, `BuildSubjectAltNameExtension`).
//!
//! Istio 1.30.3; `docs/mesh.md` has the table.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

/// Istio's default trust domain.
pub const TRUST_DOMAIN: &str = "cluster.local";

#[derive(Debug, thiserror::Error)]
pub enum CertError {
    #[error(
        "cannot run `openssl` ({0}): the demo issues its mesh's certificates with it; install Debian's openssl package (`cargo xtask setup` does)"
    )]
    Missing(std::io::Error),
    #[error("`openssl {args}` failed issuing the demo mesh's certificate for {what}: {stderr}")]
    Failed {
        what: String,
        args: String,
        stderr: String,
    },
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// The SPIFFE identity of service account `service_account` in `namespace`.
pub fn spiffe_id(namespace: &str, service_account: &str) -> String {
    format!("spiffe://{TRUST_DOMAIN}/ns/{namespace}/sa/{service_account}")
}

/// The files a sidecar reads its mTLS material from.
#[derive(Debug, Clone)]
pub struct WorkloadFiles {
    pub certificate: PathBuf,
    pub private_key: PathBuf,
    pub root: PathBuf,
}

/// The demo's root of trust, in a directory of its own.
pub struct MeshCa {
    certificate: PathBuf,
    key: PathBuf,
}

impl MeshCa {
    /// A new root, written to `dir/root-cert.pem` (its key next to it).
    pub fn create(dir: &Path) -> Result<Self, CertError> {
        let ca = Self {
            certificate: dir.join("root-cert.pem"),
            key: dir.join("root-key.pem"),
        };
        openssl(
            "the root",
            &[
                "req".as_ref(),
                "-x509".as_ref(),
                "-newkey".as_ref(),
                "rsa:2048".as_ref(),
                "-noenc".as_ref(),
                "-days".as_ref(),
                "3650".as_ref(),
                "-subj".as_ref(),
                format!("/O={TRUST_DOMAIN}").as_ref(),
                "-addext".as_ref(),
                "basicConstraints=critical,CA:TRUE".as_ref(),
                "-addext".as_ref(),
                "keyUsage=critical,keyCertSign,cRLSign,digitalSignature".as_ref(),
                "-keyout".as_ref(),
                ca.key.as_os_str(),
                "-out".as_ref(),
                ca.certificate.as_os_str(),
            ],
        )?;
        Ok(ca)
    }

    /// A workload certificate for `identity` (a SPIFFE id), written under
    /// `dir` with its key, which only `owner` (the sidecar's uid) can read.
    pub fn issue(
        &self,
        identity: &str,
        dir: &Path,
        owner: u32,
    ) -> Result<WorkloadFiles, CertError> {
        let write_error = |path: &Path| {
            let path = path.to_owned();
            move |source| CertError::Write { path, source }
        };
        std::fs::create_dir_all(dir).map_err(write_error(dir))?;
        let files = WorkloadFiles {
            certificate: dir.join("cert-chain.pem"),
            private_key: dir.join("key.pem"),
            root: self.certificate.clone(),
        };
        // 64 random bits: no other certificate of the demo has them.
        let serial = crate::live::random_hex(8)
            .map(|hex| format!("0x{hex}"))
            .map_err(|error| CertError::Write {
                path: dir.to_owned(),
                source: std::io::Error::other(error.to_string()),
            })?;
        let request = dir.join("request.csr");
        let extensions = dir.join("extensions.cnf");
        std::fs::write(
            &extensions,
            format!(
                "basicConstraints=critical,CA:FALSE\n\
                 keyUsage=critical,digitalSignature,keyEncipherment\n\
                 extendedKeyUsage=serverAuth,clientAuth\n\
                 subjectAltName=critical,URI:{identity}\n"
            ),
        )
        .map_err(write_error(&extensions))?;
        openssl(
            identity,
            &[
                "req".as_ref(),
                "-new".as_ref(),
                "-newkey".as_ref(),
                "rsa:2048".as_ref(),
                "-noenc".as_ref(),
                "-subj".as_ref(),
                "/".as_ref(),
                "-keyout".as_ref(),
                files.private_key.as_os_str(),
                "-out".as_ref(),
                request.as_os_str(),
            ],
        )?;
        openssl(
            identity,
            &[
                "x509".as_ref(),
                "-req".as_ref(),
                "-in".as_ref(),
                request.as_os_str(),
                "-CA".as_ref(),
                self.certificate.as_os_str(),
                "-CAkey".as_ref(),
                self.key.as_os_str(),
                "-set_serial".as_ref(),
                serial.as_ref(),
                "-days".as_ref(),
                "1".as_ref(),
                "-extfile".as_ref(),
                extensions.as_os_str(),
                "-out".as_ref(),
                files.certificate.as_os_str(),
            ],
        )?;
        let private = |path: &Path| -> std::io::Result<()> {
            use std::os::unix::fs::PermissionsExt as _;
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
            std::os::unix::fs::chown(path, Some(owner), Some(owner))
        };
        private(&files.private_key).map_err(write_error(&files.private_key))?;
        Ok(files)
    }
}

fn openssl(what: &str, args: &[&std::ffi::OsStr]) -> Result<(), CertError> {
    let output = Command::new("openssl")
        .args(args)
        .output()
        .map_err(CertError::Missing)?;
    if output.status.success() {
        return Ok(());
    }
    Err(CertError::Failed {
        what: what.to_owned(),
        args: args
            .iter()
            .map(|arg| arg.to_string_lossy())
            .collect::<Vec<_>>()
            .join(" "),
        stderr: String::from_utf8_lossy(&output.stderr).trim().to_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What OpenSSL itself reads back from an issued certificate: the
    /// shape istiod's CA gives a workload's.
    #[test]
    fn a_workload_certificate_is_shaped_as_istios_ca_issues_it() {
        let dir = std::env::temp_dir().join(format!("apitrace-certs-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let ca = MeshCa::create(&dir).unwrap();
        let id = spiffe_id("demo", "client");
        let uid = nix::unistd::geteuid().as_raw();
        let files = ca.issue(&id, &dir.join("client"), uid).unwrap();
        let text = Command::new("openssl")
            .args(["x509", "-noout", "-text", "-in"])
            .arg(&files.certificate)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&text.stdout);
        assert!(text.contains("Public-Key: (2048 bit)"), "{text}");
        assert!(text.contains("Issuer: O = cluster.local"), "{text}");
        assert!(
            text.contains("Subject: \n") || text.contains("Subject:\n"),
            "{text}"
        );
        assert!(
            text.contains("X509v3 Subject Alternative Name: critical"),
            "{text}"
        );
        assert!(text.contains(&format!("URI:{id}")), "{text}");
        assert!(
            text.contains("TLS Web Server Authentication, TLS Web Client Authentication"),
            "{text}"
        );
        let verified = Command::new("openssl")
            .args(["verify", "-CAfile"])
            .arg(&files.root)
            .arg(&files.certificate)
            .output()
            .unwrap();
        assert!(verified.status.success(), "{verified:?}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
