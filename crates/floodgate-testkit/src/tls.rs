//! Certificates for TLS tests: a private CA and a server certificate for 127.0.0.1, made by
//! `openssl` in a fresh directory that is removed on drop.

use std::path::{Path, PathBuf};
use std::process::Command;

/// A CA (`ca.crt`) and a server certificate it signed (`server.crt`, `server.key`) for
/// `IP:127.0.0.1` and `DNS:localhost`.
#[derive(Debug)]
pub struct Certificates {
    dir: PathBuf,
}

impl Certificates {
    /// Makes a fresh CA and server certificate under a directory named after `name`.
    /// Panics when `openssl` is missing or fails (`scripts/test` installs it).
    pub fn generate(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("floodgate-tls-{}-{name}", std::process::id()));
        std::fs::create_dir_all(&dir)
            .unwrap_or_else(|e| panic!("cannot create {}: {e}", dir.display()));
        let certificates = Certificates { dir };
        let dir = &certificates.dir;
        openssl(
            dir,
            &[
                "req",
                "-x509",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-keyout",
                "ca.key",
                "-out",
                "ca.crt",
                "-days",
                "2",
                "-subj",
                "/CN=floodgate test CA",
            ],
        );
        openssl(
            dir,
            &[
                "req",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-keyout",
                "server.key",
                "-out",
                "server.csr",
                "-subj",
                "/CN=127.0.0.1",
            ],
        );
        std::fs::write(
            dir.join("ext.cnf"),
            "subjectAltName=IP:127.0.0.1,DNS:localhost\n",
        )
        .unwrap_or_else(|e| panic!("cannot write ext.cnf: {e}"));
        openssl(
            dir,
            &[
                "x509",
                "-req",
                "-in",
                "server.csr",
                "-CA",
                "ca.crt",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-out",
                "server.crt",
                "-days",
                "2",
                "-extfile",
                "ext.cnf",
            ],
        );
        certificates
    }

    /// The path of `file` (`ca.crt`, `server.crt`, `server.key`).
    pub fn path(&self, file: &str) -> String {
        self.dir.join(file).to_string_lossy().into_owned()
    }

    /// The CA certificate, PEM.
    pub fn ca_pem(&self) -> Vec<u8> {
        std::fs::read(self.dir.join("ca.crt")).unwrap_or_else(|e| panic!("cannot read ca.crt: {e}"))
    }

    /// `redis-server` arguments serving TLS on `tls_port` with this server certificate,
    /// without asking clients for certificates.
    pub fn redis_server_args(&self, tls_port: u16) -> Vec<String> {
        [
            "--tls-port".to_owned(),
            tls_port.to_string(),
            "--tls-cert-file".to_owned(),
            self.path("server.crt"),
            "--tls-key-file".to_owned(),
            self.path("server.key"),
            "--tls-ca-cert-file".to_owned(),
            self.path("ca.crt"),
            "--tls-auth-clients".to_owned(),
            "no".to_owned(),
        ]
        .into()
    }
}

impl Drop for Certificates {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn openssl(dir: &Path, args: &[&str]) {
    let output = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap_or_else(|e| panic!("cannot run openssl (Debian: apt-get install openssl): {e}"));
    assert!(
        output.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}
