//! `rediss://` and `rediss+cluster://`: decisions over TLS to `redis-server`s of our own,
//! with a private CA made by `openssl` for this test; a server whose certificate the store
//! does not trust is refused.

#![cfg(feature = "tls")]

use std::net::TcpListener;

use floodgate::{Error, Policy, RateLimiter};
use floodgate_redis::RedisStore;
use floodgate_testkit::redis_server::{RedisCluster, RedisServer};
use floodgate_testkit::tls::Certificates;

#[tokio::test]
async fn decides_over_tls_and_refuses_an_untrusted_server() {
    let certificates = Certificates::generate("server");
    let tls_port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let args = certificates.redis_server_args(tls_port);
    let _server = RedisServer::start_with(&args.iter().map(String::as_str).collect::<Vec<_>>());
    let url = format!("rediss://127.0.0.1:{tls_port}");
    let store = RedisStore::builder(&url)
        .tls_root_certificate(certificates.ca_pem())
        .build()
        .await
        .unwrap();
    let limiter = RateLimiter::new(store);
    let policy = Policy::parse("tls", "2/m").unwrap();
    assert!(limiter.check(&policy, "k").await.unwrap().is_allowed());
    assert!(limiter.check(&policy, "k").await.unwrap().is_allowed());
    assert!(!limiter.check(&policy, "k").await.unwrap().is_allowed());

    refuses_a_server_signed_by_another_ca(&url, "other").await;
}

#[tokio::test]
async fn decides_over_tls_on_a_cluster_and_refuses_an_untrusted_one() {
    let certificates = Certificates::generate("cluster");
    let cluster = RedisCluster::start_tls(3, &certificates);
    let url = cluster.tls_url();
    assert!(url.starts_with("rediss+cluster://"), "{url}");
    let store = RedisStore::builder(&url)
        .tls_root_certificate(certificates.ca_pem())
        .build()
        .await
        .unwrap();
    let limiter = RateLimiter::new(store);
    let policy = Policy::parse("tls", "2/m; 100/d").unwrap();
    // Keys on every master: the client follows the slot map to each node over TLS.
    for key in 0..30 {
        let key = format!("user:{key}");
        assert!(limiter.check(&policy, &key).await.unwrap().is_allowed());
        assert!(limiter.check(&policy, &key).await.unwrap().is_allowed());
        let third = limiter.check(&policy, &key).await.unwrap();
        assert!(!third.is_allowed(), "{key}: {third:?}");
    }
    let mut counts = [0; 3];
    for (i, node) in cluster.nodes().iter().enumerate() {
        counts[i] = node.cli(&["DBSIZE"]).trim().parse::<u32>().unwrap();
    }
    assert_eq!(counts.iter().sum::<u32>(), 60, "{counts:?}");
    assert!(
        counts.iter().all(|&c| c > 0),
        "every master holds keys: {counts:?}"
    );
    refuses_a_server_signed_by_another_ca(&url, "cluster-other").await;
}

/// Trusting only a fresh CA named `name`, connecting to `url` fails: its certificate is
/// not trusted.
async fn refuses_a_server_signed_by_another_ca(url: &str, name: &str) {
    let other = Certificates::generate(name);
    let error = RedisStore::builder(url)
        .tls_root_certificate(other.ca_pem())
        .build()
        .await
        .unwrap_err();
    assert!(matches!(error, Error::Store(_)), "{error:?}");
}
