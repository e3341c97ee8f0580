//! Login brute-force protection: [`LoginGuard`] (feature `login`).
//!
//! Call [`LoginGuard::attempt`] *before* checking the password and
//! [`LoginGuard::record`] after it. A guard combines what a login needs, on any
//! [`Store`] (memory for one process, Redis for a fleet):
//!
//! - **per IP** (`30/m` by default): one address cannot try many accounts;
//! - **per username** (`10/m; 100/d`): one account sprayed from many addresses slows down —
//!   but not for the account's *known devices*, the (username, IP) pairs (or
//!   (username, device) pairs) that logged in successfully in the last 30 days, so an
//!   attacker cannot lock the owner out of their usual device;
//! - **per (username, IP)** (`5/m`): charged in `attempt`, so it also bounds guesses made in
//!   parallel, before any failure is recorded;
//! - **an escalating lockout** of the pair: 3 failures within 15 minutes lock it for 1
//!   minute, the next lockout lasts 5, then 15 (the cap); one level is forgotten per hour
//!   since the last lockout, and a success resets the pair (its strikes, its lockout and its
//!   escalation).
//!
//! Usernames are normalised — NFKC, then Unicode default case folding, then trimming white
//! space at both ends — so `Alice`, `alice ` and `ａｌｉｃｅ` share their limits. Addresses go
//! through [`crate::ip::client_key`]: IPv6 grouped by /64, IPv4-mapped IPv6 as IPv4.
//!
//! Keys are stored as every floodgate key is (the Redis store hashes them, but with a public
//! hash: whoever reads Redis can test guesses). With [`LoginConfig::secret`] set — the same
//! secret on every node — the guard keys its buckets by HMAC-SHA-256 under that secret
//! instead, so usernames and addresses cannot be recovered from the store. Recommended with a
//! shared store.
//!
//! ```
//! use std::sync::Arc;
//! use floodgate::RateLimiter;
//! use floodgate::login::{LoginConfig, LoginDecision, LoginGuard, LoginRule, Outcome};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), floodgate::Error> {
//! let guard = LoginGuard::new(Arc::new(RateLimiter::in_memory()), "web", LoginConfig::default())?;
//! let ip = "192.0.2.7".parse().unwrap();
//! for _ in 0..3 {
//!     assert!(guard.attempt("alice", ip).await?.is_allowed());
//!     // ... the password was wrong:
//!     guard.record("alice", ip, Outcome::Failure).await?;
//! }
//! // The third failure locked the pair for a minute.
//! let refused = guard.attempt("Alice ", ip).await?;
//! assert_eq!(refused.rule(), Some(LoginRule::Lockout));
//! assert!(refused.retry_after() > std::time::Duration::from_secs(59)); // up to 60 s
//! # Ok(()) }
//! ```
//!
//! Store errors are returned as they are: a caller should refuse the login then (never fail
//! open on a login). On a store with a failure policy, give the guard's policies
//! ([`LoginGuard::policies`]) `FailurePolicy::Deny` or `Error`.
//!
//! Why the rules hold as stated is proven in the [guide](crate::guide#login-protection).

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::{Error, Limit, MAX_NAME_LEN, Policy, RateLimiter, Store};

/// What the guard enforces. Start from [`LoginConfig::default`] (the values below) and
/// change fields; [`LoginGuard::new`] checks them. `Debug` never shows the secret.
#[derive(Clone, PartialEq)]
#[non_exhaustive]
pub struct LoginConfig {
    /// Attempts per client address (IPv6 grouped by `ipv6_prefix`): `30/m`.
    pub per_ip: Vec<Limit>,
    /// Attempts per username, except from the username's known devices: `10/m; 100/d`.
    pub per_user: Vec<Limit>,
    /// Attempts per (username, address): `5/m`.
    pub per_pair: Vec<Limit>,
    /// Failures within `strike_window` that lock the pair: 3.
    pub strikes: u32,
    /// The window the strikes count in: 15 minutes.
    pub strike_window: Duration,
    /// Lockout lengths: the first lockout lasts the first, the next the second, …, the last
    /// is the cap: 1, 5 and 15 minutes.
    pub lockouts: Vec<Duration>,
    /// One escalation level is forgotten per this time: 1 hour.
    pub forget_after: Duration,
    /// How long a successful login makes its device known: 30 days.
    pub known_device_for: Duration,
    /// A secret shared by every node: buckets are then keyed by HMAC-SHA-256 under it.
    /// `None` by default.
    pub secret: Option<Vec<u8>>,
    /// Leading bits of an IPv6 address that identify a client: 64.
    pub ipv6_prefix: u8,
}

impl Default for LoginConfig {
    fn default() -> Self {
        const MINUTE: Duration = Duration::from_secs(60);
        LoginConfig {
            per_ip: vec![Limit::per_minute(30)],
            per_user: vec![Limit::per_minute(10), Limit::per_day(100)],
            per_pair: vec![Limit::per_minute(5)],
            strikes: 3,
            strike_window: 15 * MINUTE,
            lockouts: vec![MINUTE, 5 * MINUTE, 15 * MINUTE],
            forget_after: 60 * MINUTE,
            known_device_for: Duration::from_secs(30 * 86_400),
            secret: None,
            ipv6_prefix: crate::ip::DEFAULT_IPV6_PREFIX,
        }
    }
}

impl std::fmt::Debug for LoginConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoginConfig")
            .field("per_ip", &self.per_ip)
            .field("per_user", &self.per_user)
            .field("per_pair", &self.per_pair)
            .field("strikes", &self.strikes)
            .field("strike_window", &self.strike_window)
            .field("lockouts", &self.lockouts)
            .field("forget_after", &self.forget_after)
            .field("known_device_for", &self.known_device_for)
            .field("secret", &self.secret.as_ref().map(|_| "<redacted>"))
            .field("ipv6_prefix", &self.ipv6_prefix)
            .finish()
    }
}

/// The longest lockout, 24 days: the lock bucket counts milliseconds, and a lockout
/// charges up to twice the longest in one `u32` cost.
pub const MAX_LOCKOUT: Duration = Duration::from_secs(24 * 86_400);

/// Which rule refused an attempt.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum LoginRule {
    /// The per-IP limit.
    Ip,
    /// The per-username limit.
    Username,
    /// The per-(username, IP) limit.
    Pair,
    /// The pair is locked out after repeated failures.
    Lockout,
}

impl LoginRule {
    /// The rule's name as the server reports it: `ip`, `username`, `pair`, `lockout`.
    pub fn as_str(self) -> &'static str {
        match self {
            LoginRule::Ip => "ip",
            LoginRule::Username => "username",
            LoginRule::Pair => "pair",
            LoginRule::Lockout => "lockout",
        }
    }
}

/// The answer to [`LoginGuard::attempt`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum LoginDecision {
    /// Check the password, then [`record`](LoginGuard::record) the outcome.
    Allowed,
    /// Do not check the password.
    Refused {
        /// The rule that refused it.
        rule: LoginRule,
        /// When an attempt may pass again (for the lockout, exactly when it ends).
        retry_after: Duration,
    },
}

impl LoginDecision {
    /// Whether the password may be checked.
    pub fn is_allowed(&self) -> bool {
        matches!(self, LoginDecision::Allowed)
    }
    /// The rule that refused the attempt; `None` when allowed.
    pub fn rule(&self) -> Option<LoginRule> {
        match *self {
            LoginDecision::Allowed => None,
            LoginDecision::Refused { rule, .. } => Some(rule),
        }
    }
    /// The wait before the next attempt may pass; zero when allowed.
    pub fn retry_after(&self) -> Duration {
        match *self {
            LoginDecision::Allowed => Duration::ZERO,
            LoginDecision::Refused { retry_after, .. } => retry_after,
        }
    }
}

/// The result of the password check, for [`LoginGuard::record`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The password was right: the pair is reset and its device becomes known.
    Success,
    /// The password was wrong: a strike for the pair.
    Failure,
}

/// Brute-force protection for one login form or API (see the [module docs](self)).
pub struct LoginGuard<S: Store> {
    limiter: Arc<RateLimiter<S>>,
    rules: Rules,
}

/// A guard's validated policies and settings, independent of the store.
struct Rules {
    name: String,
    per_ip: Policy,
    per_user: Policy,
    per_pair: Policy,
    /// `strikes − 1` free failures refilled one per window; `None` when one failure locks.
    strikes: Option<Policy>,
    /// One token per step of the lockout ladder above the first, one back per
    /// `forget_after` (see `level`); `None` with a single lockout length.
    levels: Option<Policy>,
    /// One token per millisecond, as many as the longest lockout: a lockout of `d` empties it
    /// and charges `d − 1 ms` of debt, so a token returns exactly `d` later (see `lock`).
    lock: Policy,
    /// One token per `known_device_for`: charged at a success, so it stays empty (the
    /// device is known) for exactly that long.
    known: Policy,
    lockouts: Vec<Duration>,
    secret: Option<Vec<u8>>,
    ipv6_prefix: u8,
}

impl Rules {
    fn policies(&self) -> Vec<&Policy> {
        let mut all = vec![&self.per_ip, &self.per_user, &self.per_pair];
        all.extend(self.strikes.as_ref());
        all.extend(self.levels.as_ref());
        all.extend([&self.lock, &self.known]);
        all
    }
}

impl LoginConfig {
    /// The policies a guard named `name` decides with (for a store's per-policy settings),
    /// or why no guard can be built from this config: what [`LoginGuard::new`] checks,
    /// without a store.
    pub fn policies(&self, name: &str) -> Result<Vec<Policy>, Error> {
        let rules = Rules::new(name, self.clone())?;
        Ok(rules.policies().into_iter().cloned().collect())
    }
}

/// What the guard's policy names add to the guard's name (`login:` + name + the longest).
const NAME_OVERHEAD: usize = "login:".len() + ":strikes".len();

impl Rules {
    fn new(name: &str, config: LoginConfig) -> Result<Rules, Error> {
        if name.len() > MAX_NAME_LEN - NAME_OVERHEAD {
            return Err(Error::InvalidPolicy {
                name: name.to_owned(),
                reason: format!(
                    "a login guard's name is at most {} bytes, this one is {}",
                    MAX_NAME_LEN - NAME_OVERHEAD,
                    name.len()
                ),
            });
        }
        if name.is_empty() || !name.chars().all(crate::is_name_char) {
            return Err(Error::InvalidPolicy {
                name: name.to_owned(),
                reason: "a login guard's name is ASCII letters, digits and -_.:/".into(),
            });
        }
        let policy =
            |role: &str, limits: Vec<Limit>| Policy::new(format!("login:{name}:{role}"), limits);
        let invalid = |knob: &'static str, reason: String| Error::InvalidConfig { knob, reason };
        let whole_ms = |knob: &'static str, d: Duration| {
            if d.is_zero() || d.as_nanos() % 1_000_000 != 0 {
                Err(invalid(
                    knob,
                    format!("{d:?} is not a positive whole number of milliseconds"),
                ))
            } else {
                Ok(d)
            }
        };
        if config.strikes == 0 {
            return Err(invalid("strikes", "must be at least 1".into()));
        }
        let window = whole_ms("strike_window", config.strike_window)?;
        let strikes = match config.strikes {
            1 => None,
            n => Some(policy("strikes", vec![Limit::per(1, window).burst(n - 1)])?),
        };
        if config.lockouts.is_empty() {
            return Err(invalid(
                "lockouts",
                "name at least one lockout length".into(),
            ));
        }
        if config.lockouts.len() > 1_000 {
            return Err(invalid("lockouts", "at most 1000 levels".into()));
        }
        for &lockout in &config.lockouts {
            whole_ms("lockouts", lockout)?;
            if lockout > MAX_LOCKOUT {
                return Err(invalid(
                    "lockouts",
                    format!("{lockout:?} is longer than the longest lockout, {MAX_LOCKOUT:?}"),
                ));
            }
        }
        let longest = config.lockouts.iter().max().copied().unwrap_or(MAX_LOCKOUT);
        let longest_ms = u32::try_from(longest.as_millis()).unwrap_or(u32::MAX / 2);
        let forget_after = whole_ms("forget_after", config.forget_after)?;
        let levels = match config.lockouts.len() {
            1 => None,
            n => Some(policy(
                "levels",
                vec![Limit::per(1, forget_after).burst(n as u32 - 1)],
            )?),
        };
        let lock = policy(
            "lock",
            vec![Limit::per(1, Duration::from_millis(1)).burst(longest_ms)],
        )?;
        let known = policy(
            "known",
            vec![Limit::per(
                1,
                whole_ms("known_device_for", config.known_device_for)?,
            )],
        )?;
        if config.secret.as_ref().is_some_and(Vec::is_empty) {
            return Err(invalid("secret", "an empty secret protects nothing".into()));
        }
        Ok(Rules {
            per_ip: policy("ip", config.per_ip)?,
            per_user: policy("user", config.per_user)?,
            per_pair: policy("pair", config.per_pair)?,
            strikes,
            levels,
            lock,
            known,
            lockouts: config.lockouts,
            secret: config.secret,
            ipv6_prefix: config.ipv6_prefix.min(128),
            name: name.to_owned(),
        })
    }
}

impl<S: Store> LoginGuard<S> {
    /// A guard named `name` (its policies are `login:{name}:ip`, `…:user`, `…:pair`,
    /// `…:strikes`, `…:levels`, `…:lock` and `…:known`, so guards with different names
    /// never share buckets), deciding with `limiter`. Fails with the setting that is wrong.
    pub fn new(
        limiter: Arc<RateLimiter<S>>,
        name: &str,
        config: LoginConfig,
    ) -> Result<Self, Error> {
        Ok(LoginGuard {
            limiter,
            rules: Rules::new(name, config)?,
        })
    }

    /// The guard's name.
    pub fn name(&self) -> &str {
        &self.rules.name
    }

    /// Every policy the guard decides with, for a store's per-policy settings (a Redis
    /// store's `on_failure_for`, say).
    pub fn policies(&self) -> Vec<&Policy> {
        self.rules.policies()
    }

    /// Whether `username` may try a password from `ip` now; the device is the IP.
    pub async fn attempt(&self, username: &str, ip: IpAddr) -> Result<LoginDecision, Error> {
        self.attempt_from(username, ip, None).await
    }

    /// [`attempt`](Self::attempt) with the known-device exemption keyed by `device` (a
    /// long-lived cookie, say) instead of the IP.
    pub async fn attempt_with_device(
        &self,
        username: &str,
        ip: IpAddr,
        device: &str,
    ) -> Result<LoginDecision, Error> {
        self.attempt_from(username, ip, Some(device)).await
    }

    /// Records the result of the password check for an allowed attempt.
    pub async fn record(&self, username: &str, ip: IpAddr, outcome: Outcome) -> Result<(), Error> {
        self.record_from(username, ip, None, outcome).await
    }

    /// [`record`](Self::record) for an attempt made with
    /// [`attempt_with_device`](Self::attempt_with_device).
    pub async fn record_with_device(
        &self,
        username: &str,
        ip: IpAddr,
        device: &str,
        outcome: Outcome,
    ) -> Result<(), Error> {
        self.record_from(username, ip, Some(device), outcome).await
    }

    /// `attempt` with an optional device (what the server calls).
    pub async fn attempt_from(
        &self,
        username: &str,
        ip: IpAddr,
        device: Option<&str>,
    ) -> Result<LoginDecision, Error> {
        let keys = self.keys(username, ip, device);
        let limiter = &self.limiter;
        let lock = limiter.peek(&self.rules.lock, &keys.pair).await?;
        if !lock.is_allowed() {
            return Ok(LoginDecision::Refused {
                rule: LoginRule::Lockout,
                retry_after: lock.retry_after(),
            });
        }
        let known = !limiter
            .peek(&self.rules.known, &keys.device)
            .await?
            .is_allowed();
        let checks = [
            (LoginRule::Ip, &self.rules.per_ip, &keys.ip),
            (LoginRule::Pair, &self.rules.per_pair, &keys.pair),
            (LoginRule::Username, &self.rules.per_user, &keys.user),
        ];
        for (rule, policy, key) in checks {
            if rule == LoginRule::Username && known {
                continue;
            }
            let decision = limiter.check(policy, key).await?;
            if !decision.is_allowed() {
                return Ok(LoginDecision::Refused {
                    rule,
                    retry_after: decision.retry_after(),
                });
            }
        }
        Ok(LoginDecision::Allowed)
    }

    /// `record` with an optional device (what the server calls).
    pub async fn record_from(
        &self,
        username: &str,
        ip: IpAddr,
        device: Option<&str>,
        outcome: Outcome,
    ) -> Result<(), Error> {
        let keys = self.keys(username, ip, device);
        let limiter = &self.limiter;
        match outcome {
            Outcome::Success => {
                for policy in [&self.rules.per_pair, &self.rules.lock]
                    .into_iter()
                    .chain(self.rules.strikes.as_ref())
                    .chain(self.rules.levels.as_ref())
                {
                    limiter.reset(policy, &keys.pair).await?;
                }
                // Known for exactly `known_device_for` from this success.
                limiter.reset(&self.rules.known, &keys.device).await?;
                limiter.charge(&self.rules.known, &keys.device, 1).await?;
            }
            Outcome::Failure => {
                if let Some(strikes) = &self.rules.strikes {
                    if limiter.check(strikes, &keys.pair).await?.is_allowed() {
                        return Ok(());
                    }
                    limiter.reset(strikes, &keys.pair).await?;
                }
                let length = self.rules.lockouts[self.level(&keys.pair).await?];
                self.lock(&keys.pair, length).await?;
            }
        }
        Ok(())
    }

    /// The index of the next lockout's length, and the ladder's step after it: one level up
    /// per lockout, capped at the last length, one level down per `forget_after` since the
    /// last lockout.
    ///
    /// The levels bucket holds one token per step above the first (`capacity` = lengths
    /// − 1). After a lockout the bucket is set to `p` tokens used, `p` the next step (a
    /// reset, then a charge of `p`), refilling one token per `forget_after`: at the next
    /// lockout `capacity − remaining` is `p` less the whole periods passed since.
    async fn level(&self, pair: &str) -> Result<usize, Error> {
        let Some(levels) = &self.rules.levels else {
            return Ok(0); // a single length: no ladder
        };
        let capacity = self.rules.lockouts.len() - 1;
        let remaining = self.limiter.peek(levels, pair).await?.remaining();
        let remaining = usize::try_from(remaining).unwrap_or(capacity);
        let level = capacity.saturating_sub(remaining);
        let next = (level + 1).min(capacity);
        self.limiter.reset(levels, pair).await?;
        // `next ≤ capacity < 1000`: fits a u32 and leaves no debt.
        self.limiter.charge(levels, pair, next as u32).await?;
        Ok(level)
    }

    /// Locks `pair` for `length`: from a full bucket of `C` one-millisecond tokens, a charge
    /// of `C + length − 1 ms` leaves `length − 1 ms` of debt (within the one burst of debt a
    /// charge may leave, since `length ≤ C`), so a one-token peek passes exactly `length`
    /// from now.
    async fn lock(&self, pair: &str, length: Duration) -> Result<(), Error> {
        let capacity = self.rules.lock.limits()[0].capacity();
        let millis = u32::try_from(length.as_millis()).unwrap_or(capacity);
        self.limiter.reset(&self.rules.lock, pair).await?;
        self.limiter
            .charge(&self.rules.lock, pair, capacity + millis.min(capacity) - 1)
            .await?;
        Ok(())
    }

    fn keys(&self, username: &str, ip: IpAddr, device: Option<&str>) -> Keys {
        let user = normalize_username(username);
        let ip = crate::ip::client_key(ip, self.rules.ipv6_prefix);
        // Length-prefixed, so no username can make two pairs collide.
        let pair = format!("{}:{user}|{ip}", user.len());
        let device = match device {
            Some(device) => format!("{}:{user}|device:{device}", user.len()),
            None => pair.clone(),
        };
        Keys {
            ip: self.hide("ip", ip),
            pair: self.hide("pair", pair),
            device: self.hide("device", device),
            user: self.hide("user", user),
        }
    }

    /// `key` as the store sees it: itself, or with a secret its HMAC (128 bits, hex).
    fn hide(&self, role: &str, key: String) -> String {
        let Some(secret) = &self.rules.secret else {
            return key;
        };
        let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(secret) else {
            return key; // unreachable: HMAC takes a key of any length
        };
        mac.update(role.as_bytes());
        mac.update(&[0]);
        mac.update(key.as_bytes());
        let digest = mac.finalize().into_bytes();
        let mut hex = String::with_capacity(32);
        for byte in &digest[..16] {
            hex.push_str(&format!("{byte:02x}"));
        }
        hex
    }
}

impl<S: Store> std::fmt::Debug for LoginGuard<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoginGuard")
            .field("name", &self.rules.name)
            .field("per_ip", &self.rules.per_ip)
            .field("per_user", &self.rules.per_user)
            .field("per_pair", &self.rules.per_pair)
            .field("lockouts", &self.rules.lockouts)
            .field("secret", &self.rules.secret.as_ref().map(|_| "<redacted>"))
            .finish_non_exhaustive()
    }
}

struct Keys {
    ip: String,
    user: String,
    pair: String,
    device: String,
}

/// The form of a username the guard keys by: NFKC, then Unicode default case folding, then
/// white space trimmed at both ends (`"  ＡＬＩＣＥ "` → `"alice"`).
pub fn normalize_username(username: &str) -> String {
    use unicode_normalization::UnicodeNormalization;
    let nfkc: String = username.nfkc().collect();
    caseless::default_case_fold_str(&nfkc).trim().to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usernames_differing_in_case_width_or_outer_space_normalise_alike() {
        for variant in [
            "alice",
            "Alice",
            "ALICE ",
            "  alice\t",
            "ａｌｉｃｅ",
            "Ａｌｉｃｅ\u{3000}",
        ] {
            assert_eq!(normalize_username(variant), "alice", "{variant:?}");
        }
        assert_eq!(normalize_username("Straße"), "strasse");
        assert_eq!(normalize_username("ǅemo"), normalize_username("ǆemo"));
        assert_ne!(normalize_username("al ice"), "alice");
    }

    fn guard(config: LoginConfig) -> Result<LoginGuard<crate::MemoryStore>, Error> {
        LoginGuard::new(Arc::new(RateLimiter::in_memory()), "web", config)
    }

    #[test]
    fn every_bad_setting_is_refused_by_name() {
        type Change = fn(&mut LoginConfig);
        let cases: [(&str, Change); 8] = [
            ("strikes", |c| c.strikes = 0),
            ("strike_window", |c| c.strike_window = Duration::ZERO),
            ("strike_window", |c| {
                c.strike_window = Duration::from_micros(1500)
            }),
            ("lockouts", |c| c.lockouts.clear()),
            ("lockouts", |c| {
                c.lockouts.push(Duration::from_secs(30 * 86_400))
            }),
            ("forget_after", |c| c.forget_after = Duration::ZERO),
            ("known_device_for", |c| c.known_device_for = Duration::ZERO),
            ("secret", |c| c.secret = Some(Vec::new())),
        ];
        for (knob, change) in cases {
            let mut config = LoginConfig::default();
            change(&mut config);
            match guard(config) {
                Err(Error::InvalidConfig { knob: named, .. }) => assert_eq!(named, knob),
                other => panic!("{knob}: {other:?}"),
            }
        }
        let config = LoginConfig {
            per_ip: vec![Limit::per_minute(0)],
            ..LoginConfig::default()
        };
        assert!(matches!(guard(config), Err(Error::InvalidLimit { .. })));
        let limiter = Arc::new(RateLimiter::in_memory());
        for name in ["", "a b", &"x".repeat(MAX_NAME_LEN)] {
            let refused = LoginGuard::new(limiter.clone(), name, LoginConfig::default());
            assert!(
                matches!(refused, Err(Error::InvalidPolicy { .. })),
                "{name:?}"
            );
        }
    }

    #[test]
    fn a_secret_hides_usernames_and_addresses_from_the_store() {
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        let plain = guard(LoginConfig::default()).unwrap();
        let keys = plain.keys("Alice", ip, None);
        assert_eq!(
            (keys.user.as_str(), keys.ip.as_str()),
            ("alice", "ip:192.0.2.1")
        );
        assert_eq!(keys.pair, "5:alice|ip:192.0.2.1");
        let mut config = LoginConfig {
            secret: Some(b"shared by every node".to_vec()),
            ..LoginConfig::default()
        };
        let hidden = guard(config.clone()).unwrap().keys("Alice", ip, None);
        for key in [&hidden.user, &hidden.ip, &hidden.pair] {
            assert_eq!(key.len(), 32);
            assert!(!key.contains("alice") && !key.contains("192"), "{key}");
        }
        assert_ne!(hidden.user, hidden.ip);
        let debug = format!("{config:?}");
        assert!(debug.contains("secret: Some(\"<redacted>\")"), "{debug}");
        // Every node with the secret computes the same keys; another secret does not.
        assert_eq!(
            guard(config.clone()).unwrap().keys("alice ", ip, None).user,
            hidden.user
        );
        config.secret = Some(b"another".to_vec());
        assert_ne!(
            guard(config).unwrap().keys("alice", ip, None).user,
            hidden.user
        );
    }
}
