//! The Redis store on the server's own clock, under script-cache loss, and with bad input.

use std::time::{Duration, Instant};

use floodgate::{Error, Limit, Policy, RateLimiter};
use floodgate_redis::RedisStore;
use floodgate_testkit::redis_server::RedisServer;

#[tokio::test]
async fn decides_on_the_servers_clock_and_sets_a_ttl_on_every_key() {
    let server = RedisServer::start();
    let limiter = RateLimiter::new(RedisStore::connect(&server.url()).await.unwrap());
    let policy = Policy::parse("api", "10/m burst 5; 1000/d").unwrap();
    let mut admitted = 0;
    while limiter.check(&policy, "user:1").await.unwrap().is_allowed() {
        admitted += 1;
    }
    // Five at once; the next token is 6 s away on the server's clock.
    assert_eq!(admitted, 5);
    let denied = limiter.check(&policy, "user:1").await.unwrap();
    assert!(!denied.is_allowed());
    assert!(
        denied.retry_after() > Duration::from_secs(5)
            && denied.retry_after() <= Duration::from_secs(6)
    );
    let keys = server.cli(&["--scan", "--pattern", "fg1{*"]);
    assert_eq!(keys.lines().count(), 2, "{keys}");
    for key in keys.lines() {
        let ttl: i64 = server.cli(&["PTTL", key]).parse().unwrap();
        assert!(ttl > 0, "{key}: PTTL {ttl}");
    }
    // The daily limit's key lives until that bucket is full again: about 6 × 86.4 s.
    let daily = keys.lines().find(|k| k.ends_with("}1")).unwrap();
    let ttl: i64 = server.cli(&["PTTL", daily]).parse().unwrap();
    assert!((400_000..=520_000).contains(&ttl), "daily PTTL {ttl}");
    limiter.reset(&policy, "user:1").await.unwrap();
    assert_eq!(server.cli(&["--scan", "--pattern", "fg1{*"]), "");
    assert!(limiter.check(&policy, "user:1").await.unwrap().is_allowed());
}

#[tokio::test]
async fn calls_take_turns_on_several_connections_over_one_set_of_buckets() {
    let server = RedisServer::start();
    let store = RedisStore::builder(&server.url())
        .connections(3)
        .deny_cache(0)
        .build()
        .await
        .unwrap();
    let clients = server.cli(&["CLIENT", "LIST"]);
    // Ours, and the redis-cli asking.
    assert_eq!(clients.lines().count(), 3 + 1, "{clients}");
    let limiter = RateLimiter::new(store);
    let policy = Policy::parse("turns", "10/h").unwrap();
    let mut admitted = 0;
    for i in 0..30 {
        if i == 15 {
            // Every connection finds the script gone; each reloads it on its own.
            assert_eq!(server.cli(&["SCRIPT", "FLUSH"]), "OK");
        }
        if limiter.check(&policy, "k").await.unwrap().is_allowed() {
            admitted += 1;
        }
    }
    assert_eq!(
        admitted, 10,
        "one bucket, whichever connection carried the call"
    );
    let served: u64 = server
        .cli(&["CLIENT", "LIST"])
        .lines()
        .filter(|l| !l.contains("cmd=client"))
        .filter_map(|l| l.split(' ').find_map(|f| f.strip_prefix("cmd=")))
        .filter(|cmd| cmd.starts_with("evalsha"))
        .count() as u64;
    assert_eq!(served, 3, "every connection carried calls");
}

#[tokio::test]
async fn losing_the_script_cache_is_invisible_to_callers() {
    let server = RedisServer::start();
    let limiter = RateLimiter::new(RedisStore::connect(&server.url()).await.unwrap());
    let policy = Policy::parse("api", "1000000/s").unwrap();
    for round in 0..20 {
        for i in 0..50 {
            let result = limiter.check(&policy, &format!("k{i}")).await;
            assert!(result.is_ok(), "round {round}: {result:?}");
        }
        assert_eq!(server.cli(&["SCRIPT", "FLUSH"]), "OK");
    }
}

#[tokio::test]
async fn bad_urls_and_settings_are_clear_errors() {
    let cases = [
        (
            "http://127.0.0.1:6379",
            "expected redis://host:port, rediss://host:port, redis+cluster://",
        ),
        #[cfg(not(feature = "tls"))]
        (
            "rediss://127.0.0.1:6379",
            "TLS (rediss://) needs floodgate-redis's `tls` feature",
        ),
        #[cfg(not(feature = "tls"))]
        (
            "rediss+cluster://127.0.0.1:6379,127.0.0.1:6380",
            "TLS (rediss://) needs floodgate-redis's `tls` feature",
        ),
        ("not a url", "expected redis://host:port"),
        ("redis+cluster://", "no Cluster node given"),
        #[cfg(feature = "tls")]
        ("rediss+cluster://", "no Cluster node given"),
    ];
    for (url, message) in cases {
        assert_invalid(RedisStore::connect(url).await.unwrap_err(), "url", message);
    }
    for (url, connections, message) in [
        ("redis://127.0.0.1:1", 0, "must be from 1 to 64, got 0"),
        ("redis://127.0.0.1:1", 65, "must be from 1 to 64, got 65"),
        (
            "redis+cluster://127.0.0.1:1,127.0.0.1:2",
            2,
            "a Cluster keeps one connection per node",
        ),
    ] {
        let built = RedisStore::builder(url).connections(connections).build();
        assert_invalid(built.await.unwrap_err(), "connections", message);
    }
    let built = RedisStore::builder("redis://127.0.0.1:1")
        .key_prefix("{app}")
        .build();
    assert_invalid(built.await.unwrap_err(), "key_prefix", "brace");

    // Nothing listens on the port of a server that has just stopped.
    let port = RedisServer::start().port();
    let started = Instant::now();
    let error = RedisStore::builder(&format!("redis://user:s3cret@127.0.0.1:{port}"))
        .connect_timeout(Duration::from_millis(500))
        .build()
        .await
        .unwrap_err();
    assert!(matches!(error, Error::Store(_)), "{error:?}");
    assert!(!error.to_string().contains("s3cret"), "{error}");
    assert!(error.to_string().contains("user:***@"), "{error}");
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[tokio::test]
async fn garbage_in_a_key_is_a_typed_error_and_changes_nothing() {
    let server = RedisServer::start();
    let limiter = RateLimiter::new(RedisStore::connect(&server.url()).await.unwrap());
    // Long periods: the keys must outlive the test (a TTL running out would look like a write).
    let policy = Policy::parse("api", "10/h; 100/d").unwrap();
    limiter.check(&policy, "k").await.unwrap();
    let keys = server.cli(&["--scan", "--pattern", "fg1{*"]);
    let (first, second) = {
        let mut keys: Vec<&str> = keys.lines().collect();
        keys.sort();
        (keys[0].to_owned(), keys[1].to_owned())
    };
    let untouched = server.cli(&["GET", &first]);
    for garbage in ["not-a-number", "-5", "1.5", "99999999999999999999"] {
        server.cli(&["SET", &second, garbage]);
        let error = limiter.check(&policy, "k").await.unwrap_err();
        assert!(matches!(error, Error::Store(_)), "{garbage}: {error:?}");
        assert!(
            error.to_string().contains("corrupted state"),
            "{garbage}: {error}"
        );
        assert_eq!(
            server.cli(&["GET", &first]),
            untouched,
            "a failed call wrote"
        );
    }
}

#[tokio::test]
async fn limits_too_fast_for_microseconds_are_invalid() {
    let server = RedisServer::start();
    let limiter = RateLimiter::new(RedisStore::connect(&server.url()).await.unwrap());
    // 5 M/s: 0.2 µs per token, fine in nanoseconds, not in microseconds.
    let policy = Policy::new("fast", [Limit::per_second(5_000_000)]).unwrap();
    let error = limiter.check(&policy, "k").await.unwrap_err();
    assert!(matches!(error, Error::InvalidLimit { .. }), "{error:?}");
    // 990 000/s would round 1.01 µs up to 2 µs; 9 900/s rounds 101.01 µs to 102 µs (< 1%).
    let rounds_too_much = Policy::parse("rounds", "990000/s").unwrap();
    assert!(matches!(
        limiter.check(&rounds_too_much, "k").await,
        Err(Error::InvalidLimit { .. })
    ));
    assert!(
        limiter
            .check(&Policy::parse("ok", "9900/s").unwrap(), "k")
            .await
            .unwrap()
            .is_allowed()
    );
}

/// The log lines written while connecting to `server`.
fn logs_while_connecting(server: &RedisServer) -> String {
    use std::sync::{Arc, Mutex};
    struct Sink(Arc<Mutex<Vec<u8>>>);
    impl std::io::Write for Sink {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(bytes);
            Ok(bytes.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let buffer = Arc::new(Mutex::new(Vec::new()));
    let sink = buffer.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_ansi(false)
        .with_writer(move || Sink(sink.clone()))
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async { RedisStore::connect(&server.url()).await.unwrap() });
    String::from_utf8(buffer.lock().unwrap().clone()).unwrap()
}

#[test]
fn warns_in_the_log_when_redis_may_evict_limiter_keys() {
    let evicting = RedisServer::start_with(&["--maxmemory-policy", "volatile-lru"]);
    let log = logs_while_connecting(&evicting);
    assert!(log.contains("WARN"), "{log}");
    assert!(log.contains("maxmemory_policy=volatile-lru"), "{log}");
    assert!(log.contains("use maxmemory-policy noeviction"), "{log}");
    let safe = RedisServer::start();
    let log = logs_while_connecting(&safe);
    assert!(!log.contains("maxmemory"), "noeviction is quiet: {log}");
}

/// `error` is `InvalidConfig` for `knob`, and its message contains `message`.
fn assert_invalid(error: Error, knob: &str, message: &str) {
    assert!(
        matches!(&error, Error::InvalidConfig { knob: k, .. } if *k == knob),
        "{error:?}"
    );
    assert!(error.to_string().contains(message), "{error}");
}
