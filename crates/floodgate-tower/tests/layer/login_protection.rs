//! The `login_protection` example on a manual clock: escalating, bounded lockouts that
//! forget; a success resets the pair; spraying cannot lock the real user's usual pair.
//! (The guard's rules are checked in full by the test kit's login cases.)

#[path = "../../examples/login_protection.rs"]
#[allow(dead_code)]
mod example;

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::http::StatusCode;
use floodgate::{ManualClock, RateLimiter};

fn login() -> (
    example::Login<floodgate::MemoryStore<ManualClock>>,
    ManualClock,
) {
    let clock = ManualClock::new();
    let limiter = Arc::new(RateLimiter::in_memory_with_clock(clock.clone()));
    (example::Login::new(limiter).unwrap(), clock)
}

fn ip(text: &str) -> IpAddr {
    text.parse().unwrap()
}

/// Three wrong passwords (each a `401`), then the answer to the next attempt: the lockout.
async fn fail_three_times(
    login: &example::Login<floodgate::MemoryStore<ManualClock>>,
    ip: IpAddr,
) -> (StatusCode, Duration) {
    for _ in 0..3 {
        assert_eq!(
            login.attempt(ip, "alice", "guess").await.unwrap().0,
            StatusCode::UNAUTHORIZED
        );
    }
    login.attempt(ip, "alice", "guess").await.unwrap()
}

#[tokio::test]
async fn lockouts_escalate_are_capped_and_forget_with_time() {
    let (login, clock) = login();
    let ip = ip("192.0.2.1");
    let mut lengths = Vec::new();
    for _ in 0..4 {
        let (status, length) = fail_three_times(&login, ip).await;
        assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
        lengths.push(length.as_secs());
        // Locked: even the right password waits, exactly until the lockout ends.
        clock.advance(length - Duration::from_secs(1));
        assert_eq!(
            login.attempt(ip, "alice", "correct horse").await.unwrap().0,
            StatusCode::TOO_MANY_REQUESTS
        );
        clock.advance(Duration::from_secs(1));
    }
    assert_eq!(lengths, [60, 300, 900, 900]);
    // Three hours later the escalation has forgotten: back to one minute.
    clock.advance(Duration::from_secs(3 * 3_600));
    assert_eq!(
        fail_three_times(&login, ip).await.1,
        Duration::from_secs(60)
    );
}

#[tokio::test]
async fn a_success_resets_the_pair() {
    let (login, clock) = login();
    let ip = ip("192.0.2.1");
    for _ in 0..2 {
        assert_eq!(
            login.attempt(ip, "alice", "guess").await.unwrap().0,
            StatusCode::UNAUTHORIZED
        );
    }
    assert_eq!(
        login.attempt(ip, "alice", "correct horse").await.unwrap().0,
        StatusCode::OK
    );
    clock.advance(Duration::from_secs(60));
    // The strikes were forgotten: two more failures are not a lockout.
    for _ in 0..2 {
        assert_eq!(
            login.attempt(ip, "alice", "guess").await.unwrap().0,
            StatusCode::UNAUTHORIZED
        );
    }
}

#[tokio::test]
async fn spraying_one_username_cannot_lock_out_the_users_usual_device() {
    let (login, clock) = login();
    let home = ip("198.51.100.10");
    assert_eq!(
        login
            .attempt(home, "alice", "correct horse")
            .await
            .unwrap()
            .0,
        StatusCode::OK
    );
    // An attacker sprays alice from 200 addresses, failing each time.
    let mut throttled = 0;
    for i in 0..200 {
        let (status, _) = login
            .attempt(ip(&format!("203.0.113.{i}")), "alice", "guess")
            .await
            .unwrap();
        throttled += usize::from(status == StatusCode::TOO_MANY_REQUESTS);
    }
    assert!(
        throttled >= 180,
        "the per-username limit should slow the spray: {throttled}"
    );
    // Alice, at home, still gets in.
    clock.advance(Duration::from_secs(1));
    assert_eq!(
        login
            .attempt(home, "alice", "correct horse")
            .await
            .unwrap()
            .0,
        StatusCode::OK
    );
}
