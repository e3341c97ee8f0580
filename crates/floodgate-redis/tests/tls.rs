//! `rediss://`: decisions over TLS to a `redis-server` of our own, with a private CA made by
//! `openssl` for this test; a server whose certificate the store does not trust is refused.
#![cfg(feature = "tls")]

use std::net::TcpListener;
use std::path::Path;
use std::process::Command;

use floodgate::{Error, Policy, RateLimiter};
use floodgate_redis::RedisStore;
use floodgate_testkit::redis_server::RedisServer;

fn openssl(dir: &Path, args: &[&str]) {
    let status = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap_or_else(|e| panic!("openssl: {e}"));
    assert!(
        status.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&status.stderr)
    );
}

/// A CA and a server certificate for 127.0.0.1, in a fresh directory.
fn certificates(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("floodgate-tls-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    openssl(
        &dir,
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
        &dir,
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
    .unwrap();
    openssl(
        &dir,
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
    dir
}

#[tokio::test]
async fn decides_over_tls_and_refuses_an_untrusted_server() {
    let dir = certificates("server");
    let tls_port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let path = |f: &str| dir.join(f).to_string_lossy().into_owned();
    let _server = RedisServer::start_with(&[
        "--tls-port",
        &tls_port.to_string(),
        "--tls-cert-file",
        &path("server.crt"),
        "--tls-key-file",
        &path("server.key"),
        "--tls-ca-cert-file",
        &path("ca.crt"),
        "--tls-auth-clients",
        "no",
    ]);
    let url = format!("rediss://127.0.0.1:{tls_port}");
    let ca = std::fs::read(dir.join("ca.crt")).unwrap();
    let store = RedisStore::builder(&url)
        .tls_root_certificate(ca)
        .build()
        .await
        .unwrap();
    let limiter = RateLimiter::new(store);
    let policy = Policy::parse("tls", "2/m").unwrap();
    assert!(limiter.check(&policy, "k").await.unwrap().is_allowed());
    assert!(limiter.check(&policy, "k").await.unwrap().is_allowed());
    assert!(!limiter.check(&policy, "k").await.unwrap().is_allowed());

    // Another CA: the server's certificate is not trusted.
    let other = certificates("other");
    let untrusted = std::fs::read(other.join("ca.crt")).unwrap();
    let error = RedisStore::builder(&url)
        .tls_root_certificate(untrusted)
        .build()
        .await
        .unwrap_err();
    assert!(matches!(error, Error::Store(_)), "{error:?}");
    let _ = std::fs::remove_dir_all(dir);
    let _ = std::fs::remove_dir_all(other);
}
