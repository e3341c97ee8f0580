//! The login guard's attack patterns, generic over the store: each case drives a
//! [`LoginGuard`] with the harness's manual clock and checks what the guard promises.
//! [`login_tests!`](crate::login_tests) makes one test per case for a store, from the same
//! runner the conformance suite takes.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use floodgate::Store;
use floodgate::login::{LoginConfig, LoginDecision, LoginGuard, LoginRule, Outcome};

use crate::conformance::Harness;

/// Generates one `#[tokio::test]` per login case, each calling `runner(case)` as
/// [`conformance_tests!`](crate::conformance_tests) does.
#[macro_export]
macro_rules! login_tests {
    ($runner:path) => {
        $crate::__login_each! {
            [$runner]
            one_ip_guessing_one_account_is_locked_on_an_escalating_ladder,
            lockout_levels_are_forgotten_one_per_quiet_hour,
            failures_spread_wider_than_the_window_never_lock,
            one_ip_spraying_many_accounts_meets_the_per_ip_limit,
            many_ips_on_one_account_are_slowed_but_the_known_device_logs_in,
            a_device_key_makes_a_device_known_from_any_address,
            a_success_resets_the_pair,
            usernames_differing_in_case_width_or_space_share_limits,
            ipv6_rotation_inside_a_64_shares_limits,
            parallel_attempts_for_one_pair_pass_at_most_the_pair_burst,
            a_secret_keeps_guards_apart_and_decides_alike
        }
    };
}

#[doc(hidden)]
#[macro_export]
macro_rules! __login_each {
    ([$runner:path] $($case:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() {
                $runner(|h| ::std::boxed::Box::pin($crate::login::$case(h))).await;
            }
        )*
    };
}

const MINUTE: Duration = Duration::from_secs(60);

fn ip(text: &str) -> IpAddr {
    text.parse()
        .unwrap_or_else(|e| panic!("test address {text}: {e}"))
}

fn guard<S: Store>(h: &Harness<S>, config: LoginConfig) -> LoginGuard<S> {
    LoginGuard::new(h.limiter.clone(), "web", config).unwrap_or_else(|e| panic!("guard: {e}"))
}

async fn attempt<S: Store>(g: &LoginGuard<S>, user: &str, from: IpAddr) -> LoginDecision {
    g.attempt(user, from)
        .await
        .unwrap_or_else(|e| panic!("attempt {user} {from}: {e}"))
}

async fn record<S: Store>(g: &LoginGuard<S>, user: &str, from: IpAddr, outcome: Outcome) {
    g.record(user, from, outcome)
        .await
        .unwrap_or_else(|e| panic!("record {user} {from}: {e}"));
}

/// An allowed attempt that fails: asserts it was allowed.
async fn fail<S: Store>(g: &LoginGuard<S>, user: &str, from: IpAddr) {
    let decision = attempt(g, user, from).await;
    assert!(decision.is_allowed(), "{user} from {from}: {decision:?}");
    record(g, user, from, Outcome::Failure).await;
}

/// Asserts `decision` is refused by `rule` with a wait within the store's resolution of
/// `wait`.
fn assert_refused<S: Store>(
    h: &Harness<S>,
    decision: LoginDecision,
    rule: LoginRule,
    wait: Duration,
) {
    assert_eq!(decision.rule(), Some(rule), "{decision:?}");
    let got = decision.retry_after();
    assert!(
        got.abs_diff(wait) <= h.resolution,
        "{rule:?}: retry_after {got:?}, expected {wait:?}"
    );
}

/// One address guessing one account: the third failure locks the pair for 1 minute, the
/// next lockouts last 5 and then 15 minutes, and 15 minutes stays the cap. Every lockout
/// ends exactly on time.
pub async fn one_ip_guessing_one_account_is_locked_on_an_escalating_ladder<S: Store>(
    h: Harness<S>,
) {
    let g = guard(&h, LoginConfig::default());
    let from = ip("192.0.2.1");
    for (round, minutes) in [1, 5, 15, 15].into_iter().enumerate() {
        fail(&g, "alice", from).await;
        h.clock.advance(Duration::from_secs(10));
        fail(&g, "alice", from).await;
        h.clock.advance(Duration::from_secs(10));
        fail(&g, "alice", from).await;
        let lockout = minutes * MINUTE;
        assert_refused(
            &h,
            attempt(&g, "alice", from).await,
            LoginRule::Lockout,
            lockout,
        );
        h.clock.advance(lockout - Duration::from_millis(1));
        let still = attempt(&g, "alice", from).await;
        assert_eq!(
            still.rule(),
            Some(LoginRule::Lockout),
            "round {round}: {still:?}"
        );
        h.clock.advance(Duration::from_millis(1));
        // The lockout is over; the refused probes above charged nothing.
        let after = attempt(&g, "alice", from).await;
        assert!(after.is_allowed(), "round {round}: {after:?}");
        record(&g, "alice", from, Outcome::Failure).await;
        h.clock.advance(16 * MINUTE); // the strike window passes: start the next round fresh
    }
}

/// Escalation is forgotten one level per quiet hour since the last lockout.
pub async fn lockout_levels_are_forgotten_one_per_quiet_hour<S: Store>(h: Harness<S>) {
    let g = guard(&h, LoginConfig::default());
    let from = ip("192.0.2.2");
    let lock_now = |expected: u32| {
        let (g, h) = (&g, &h);
        async move {
            for _ in 0..3 {
                fail(g, "bob", from).await;
            }
            assert_refused(
                h,
                attempt(g, "bob", from).await,
                LoginRule::Lockout,
                expected * MINUTE,
            );
            h.clock.advance(expected * MINUTE);
        }
    };
    lock_now(1).await;
    lock_now(5).await;
    lock_now(15).await;
    lock_now(15).await;
    // Attacks that keep coming keep the cap; an hour without a lockout forgets one level
    // (the hour counts from the last lockout, which the 15 minutes waited are part of).
    h.clock.advance(45 * MINUTE);
    lock_now(5).await;
    h.clock.advance(2 * 60 * MINUTE - 5 * MINUTE);
    lock_now(1).await;
    // 58 more minutes: 59 since the last lockout, not yet an hour.
    h.clock.advance(58 * MINUTE);
    lock_now(5).await;
}

/// Three failures within 15 minutes lock; failures further apart than the window allows
/// (one per 15 minutes, forever) never do.
pub async fn failures_spread_wider_than_the_window_never_lock<S: Store>(h: Harness<S>) {
    let g = guard(&h, LoginConfig::default());
    let from = ip("192.0.2.3");
    for _ in 0..20 {
        fail(&g, "carol", from).await;
        h.clock.advance(15 * MINUTE);
    }
    // Three inside one window: locked, even spread to its edges.
    fail(&g, "carol", from).await;
    h.clock.advance(7 * MINUTE);
    fail(&g, "carol", from).await;
    h.clock.advance(8 * MINUTE - Duration::from_millis(1));
    fail(&g, "carol", from).await;
    assert_refused(
        &h,
        attempt(&g, "carol", from).await,
        LoginRule::Lockout,
        MINUTE,
    );
}

/// One address trying one password on many accounts meets the per-IP limit (30/m), and the
/// wait it is given is exact.
pub async fn one_ip_spraying_many_accounts_meets_the_per_ip_limit<S: Store>(h: Harness<S>) {
    let g = guard(&h, LoginConfig::default());
    let from = ip("198.51.100.7");
    for n in 0..30 {
        let user = format!("user{n}");
        let decision = attempt(&g, &user, from).await;
        assert!(decision.is_allowed(), "{user}: {decision:?}");
        record(&g, &user, from, Outcome::Failure).await;
    }
    let refused = attempt(&g, "user30", from).await;
    assert_refused(&h, refused, LoginRule::Ip, Duration::from_secs(2));
    // Another address is not affected.
    assert!(attempt(&g, "user30", ip("198.51.100.8")).await.is_allowed());
    h.clock.advance(Duration::from_secs(2));
    assert!(attempt(&g, "user30", from).await.is_allowed());
}

/// Many addresses on one account meet the per-username limit (10/m), while the owner's
/// known device (a pair with a success in the last 30 days) still logs in.
pub async fn many_ips_on_one_account_are_slowed_but_the_known_device_logs_in<S: Store>(
    h: Harness<S>,
) {
    let g = guard(&h, LoginConfig::default());
    let home = ip("203.0.113.10");
    assert!(attempt(&g, "dave", home).await.is_allowed());
    record(&g, "dave", home, Outcome::Success).await;
    h.clock.advance(MINUTE);
    for n in 0..10 {
        fail(&g, "dave", ip(&format!("192.0.2.{}", 100 + n))).await;
    }
    let refused = attempt(&g, "dave", ip("192.0.2.200")).await;
    assert_refused(&h, refused, LoginRule::Username, Duration::from_secs(6));
    for _ in 0..5 {
        assert!(
            attempt(&g, "dave", home).await.is_allowed(),
            "the known device"
        );
    }
    record(&g, "dave", home, Outcome::Success).await;
    // Known for 30 days from the last success, then an ordinary address again.
    h.clock
        .advance(30 * 24 * 60 * MINUTE - Duration::from_millis(1));
    for n in 0..10 {
        fail(&g, "dave", ip(&format!("192.0.2.{}", 100 + n))).await;
    }
    assert!(attempt(&g, "dave", home).await.is_allowed(), "still known");
    h.clock.advance(Duration::from_millis(1));
    let wait = Duration::from_secs(6) - Duration::from_millis(1);
    assert_refused(
        &h,
        attempt(&g, "dave", home).await,
        LoginRule::Username,
        wait,
    );
}

/// With a device key, the exemption follows the device, not the address.
pub async fn a_device_key_makes_a_device_known_from_any_address<S: Store>(h: Harness<S>) {
    let g = guard(&h, LoginConfig::default());
    let cafe = ip("192.0.2.50");
    let decision = g
        .attempt_with_device("erin", cafe, "cookie-1")
        .await
        .unwrap();
    assert!(decision.is_allowed());
    g.record_with_device("erin", cafe, "cookie-1", Outcome::Success)
        .await
        .unwrap();
    // The first attempt took one of the ten; nine more empty the per-username bucket.
    for n in 0..9 {
        fail(&g, "erin", ip(&format!("198.51.100.{n}"))).await;
    }
    let hotel = ip("203.0.113.99");
    let known = g
        .attempt_with_device("erin", hotel, "cookie-1")
        .await
        .unwrap();
    assert!(known.is_allowed(), "{known:?}");
    let unknown = g
        .attempt_with_device("erin", hotel, "cookie-2")
        .await
        .unwrap();
    assert_eq!(unknown.rule(), Some(LoginRule::Username));
    // Without the device, the address that logged in is not known either.
    assert_eq!(
        attempt(&g, "erin", cafe).await.rule(),
        Some(LoginRule::Username)
    );
}

/// A success resets the pair: its strikes, its lockout level and its per-pair bucket.
pub async fn a_success_resets_the_pair<S: Store>(h: Harness<S>) {
    let g = guard(&h, LoginConfig::default());
    let from = ip("192.0.2.60");
    for _ in 0..3 {
        fail(&g, "frank", from).await;
    }
    h.clock.advance(MINUTE);
    fail(&g, "frank", from).await;
    fail(&g, "frank", from).await;
    assert!(attempt(&g, "frank", from).await.is_allowed());
    record(&g, "frank", from, Outcome::Success).await;
    // Two strikes were forgotten: two failures do not lock, and the next lockout is the
    // first level again.
    fail(&g, "frank", from).await;
    fail(&g, "frank", from).await;
    assert!(attempt(&g, "frank", from).await.is_allowed());
    record(&g, "frank", from, Outcome::Failure).await;
    assert_refused(
        &h,
        attempt(&g, "frank", from).await,
        LoginRule::Lockout,
        MINUTE,
    );
    // A success fills the per-pair bucket again: five attempts, the sixth waits.
    h.clock.advance(MINUTE); // refill the per-username bucket, which a success keeps
    let g2 = guard(&h, LoginConfig::default());
    let other = ip("192.0.2.61");
    for _ in 0..5 {
        assert!(attempt(&g2, "frank", other).await.is_allowed());
    }
    assert_eq!(
        attempt(&g2, "frank", other).await.rule(),
        Some(LoginRule::Pair)
    );
    record(&g2, "frank", other, Outcome::Success).await;
    assert!(attempt(&g2, "frank", other).await.is_allowed());
}

/// `Grace`, `grace `, `ＧＲＡＣＥ` and `grace\t` are one account.
pub async fn usernames_differing_in_case_width_or_space_share_limits<S: Store>(h: Harness<S>) {
    let g = guard(&h, LoginConfig::default());
    let from = ip("192.0.2.70");
    fail(&g, "Grace", from).await;
    fail(&g, "grace ", from).await;
    fail(&g, "ＧＲＡＣＥ", from).await;
    assert_refused(
        &h,
        attempt(&g, "grace\t", from).await,
        LoginRule::Lockout,
        MINUTE,
    );
    assert!(attempt(&g, "gracie", from).await.is_allowed());
}

/// Addresses inside one IPv6 /64 are one client (and an IPv4-mapped address is its IPv4).
pub async fn ipv6_rotation_inside_a_64_shares_limits<S: Store>(h: Harness<S>) {
    let g = guard(&h, LoginConfig::default());
    for n in 0..30 {
        let from = ip(&format!("2001:db8:1:2::{:x}", n + 1));
        assert!(attempt(&g, &format!("u{n}"), from).await.is_allowed());
    }
    let rotated = ip("2001:db8:1:2:ffff:ffff:ffff:ffff");
    assert_eq!(
        attempt(&g, "u99", rotated).await.rule(),
        Some(LoginRule::Ip)
    );
    assert!(attempt(&g, "u99", ip("2001:db8:1:3::1")).await.is_allowed());
    // The pair follows the client too: three failures from three addresses of one /64.
    for n in 1..=3 {
        fail(&g, "heidi", ip(&format!("2001:db8:9:9::{n}"))).await;
    }
    let decision = attempt(&g, "heidi", ip("2001:db8:9:9::abcd")).await;
    assert_eq!(decision.rule(), Some(LoginRule::Lockout));
    for n in 0..30 {
        assert!(
            attempt(&g, &format!("v{n}"), ip("::ffff:192.0.2.80"))
                .await
                .is_allowed()
        );
    }
    assert_eq!(
        attempt(&g, "v99", ip("192.0.2.80")).await.rule(),
        Some(LoginRule::Ip)
    );
}

/// 100 attempts at once for one (username, IP): at most the per-pair burst pass, since the
/// pair is charged in `attempt`, before any failure can be recorded.
pub async fn parallel_attempts_for_one_pair_pass_at_most_the_pair_burst<S: Store>(h: Harness<S>) {
    // Only the pair binds: the per-IP and per-username limits are far above 100.
    let mut config = LoginConfig::default();
    config.per_ip = vec![floodgate::Limit::per_minute(1_000)];
    config.per_user = vec![floodgate::Limit::per_minute(1_000)];
    let g = Arc::new(guard(&h, config));
    let from = ip("192.0.2.90");
    let tasks: Vec<_> = (0..100)
        .map(|_| {
            let g = g.clone();
            tokio::spawn(async move { g.attempt("ivan", from).await })
        })
        .collect();
    let mut allowed = 0;
    for task in tasks {
        let decision = task.await.unwrap().unwrap();
        if decision.is_allowed() {
            allowed += 1;
        } else {
            assert_eq!(decision.rule(), Some(LoginRule::Pair), "{decision:?}");
        }
    }
    assert_eq!(allowed, 5, "the per-pair burst");
}

/// Two guards with one secret decide alike (a fleet); a guard under another name never
/// shares buckets with them.
pub async fn a_secret_keeps_guards_apart_and_decides_alike<S: Store>(h: Harness<S>) {
    let mut config = LoginConfig::default();
    config.secret = Some(b"fleet secret".to_vec());
    let node_a = guard(&h, config.clone());
    let node_b = guard(&h, config.clone());
    let api = LoginGuard::new(h.limiter.clone(), "api", config).unwrap();
    let from = ip("192.0.2.95");
    fail(&node_a, "judy", from).await;
    fail(&node_b, "Judy", from).await;
    fail(&node_a, "judy", from).await;
    assert_refused(
        &h,
        attempt(&node_b, "judy", from).await,
        LoginRule::Lockout,
        MINUTE,
    );
    assert!(attempt(&api, "judy", from).await.is_allowed());
}
