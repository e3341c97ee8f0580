//! Login brute-force protection with floodgate's primitives.
//!
//! `POST /login` with a JSON body `{"username": …, "password": …}` (the demo password is
//! `correct horse` for every user). Three limits and an escalating lockout:
//!
//! - per client IP: `30/m` — one address cannot try many accounts;
//! - per username: `10/m; 100/d` — a sprayed account slows down, but this limit is skipped
//!   for the (username, IP) pairs that logged in successfully in the last 30 days, so an
//!   attacker spraying one username from many addresses cannot lock the real user out of
//!   their usual device;
//! - per (username, IP): `5/m`;
//! - lockout per (username, IP): 3 failures within 15 minutes lock the pair for 1 minute,
//!   then 5, then 15 (the cap); the escalation forgets one level per hour and a success
//!   resets the pair.
//!
//! Listens on `BIND` (default `127.0.0.1:3000`). Behind a proxy, list it in
//! `PeerIp::trust_proxies` instead of reading the socket address directly.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{ConnectInfo, State};
use axum::http::StatusCode;
use axum::routing::post;
use floodgate::{Decision, Limit, Policy, RateLimiter, Store};

/// The policies of the login flow.
pub(crate) struct Login<S: Store> {
    pub(crate) limiter: Arc<RateLimiter<S>>,
    per_ip: Policy,
    per_user: Policy,
    per_pair: Policy,
    /// Recent failures of a pair: two are free, the third within the window (one comes back
    /// every 5 minutes) means a lockout.
    strikes: Policy,
    /// Lockouts of a pair: each one used raises the next lockout's length; one comes back
    /// per hour.
    levels: Policy,
    /// The lockout itself: a 15-minute bucket of 1-second tokens, charged so that it holds
    /// no token until the lockout ends (see `lock`).
    lock: Policy,
    /// A success marks the pair as known for 30 days.
    known: Policy,
}

/// Lockout lengths by level, capped at the last.
const LOCKOUTS: [Duration; 3] = [
    Duration::from_secs(60),
    Duration::from_secs(300),
    Duration::from_secs(900),
];

impl<S: Store> Login<S> {
    pub(crate) fn new(limiter: Arc<RateLimiter<S>>) -> Result<Self, floodgate::Error> {
        Ok(Login {
            limiter,
            per_ip: Policy::parse("login-ip", "30/m")?,
            per_user: Policy::parse("login-user", "10/m; 100/d")?,
            per_pair: Policy::parse("login-pair", "5/m")?,
            strikes: Policy::parse("login-strikes", "3/15m burst 2")?,
            levels: Policy::parse("login-levels", "3/3h")?,
            lock: Policy::new(
                "login-lock",
                [Limit::per(1, Duration::from_secs(1)).burst(900)],
            )?,
            known: Policy::parse("login-known", "1/30d")?,
        })
    }

    /// Handles one attempt: the status to answer, and the wait for a 429.
    pub(crate) async fn attempt(
        &self,
        ip: &str,
        user: &str,
        password: &str,
    ) -> Result<(StatusCode, Duration), floodgate::Error> {
        let pair = format!("{user}|{ip}");
        let limiter = &self.limiter;
        // Locked out?
        let lock = limiter.peek(&self.lock, &pair).await?;
        if !lock.is_allowed() {
            return Ok((StatusCode::TOO_MANY_REQUESTS, lock.retry_after()));
        }
        let known = !limiter.peek(&self.known, &pair).await?.is_allowed();
        let mut checks: Vec<(&Policy, &str)> = vec![(&self.per_ip, ip), (&self.per_pair, &pair)];
        if !known {
            checks.push((&self.per_user, user));
        }
        for (policy, key) in checks {
            let d = limiter.check(policy, key).await?;
            if !d.is_allowed() {
                return Ok((StatusCode::TOO_MANY_REQUESTS, d.retry_after()));
            }
        }
        if password == "correct horse" {
            for policy in [&self.per_pair, &self.strikes, &self.lock] {
                limiter.reset(policy, &pair).await?;
            }
            limiter.charge(&self.known, &pair, 1).await?;
            return Ok((StatusCode::OK, Duration::ZERO));
        }
        if limiter.check(&self.strikes, &pair).await?.is_allowed() {
            return Ok((StatusCode::UNAUTHORIZED, Duration::ZERO));
        }
        // Third failure in the window: lock the pair, longer each time.
        limiter.reset(&self.strikes, &pair).await?;
        let level = self.level(&pair).await?;
        let length = LOCKOUTS[level.min(LOCKOUTS.len() - 1)];
        self.lock(&pair, length).await?;
        Ok((StatusCode::TOO_MANY_REQUESTS, length))
    }

    /// 0 for a first lockout, 1 for a second, …: lockouts used recently (at most 2: the
    /// cap; an exhausted bucket is not charged further, so the count forgets in 3 hours).
    async fn level(&self, pair: &str) -> Result<usize, floodgate::Error> {
        let d: Decision = self.limiter.check(&self.levels, pair).await?;
        if !d.is_allowed() {
            return Ok(LOCKOUTS.len() - 1);
        }
        let used = self.levels.limits()[0].capacity() as usize - d.remaining() as usize;
        Ok(used.saturating_sub(1))
    }

    /// Locks `pair` for `length`: from a full 900-token bucket of 1-second tokens, taking
    /// 900 + length − 1 tokens leaves it with its first token exactly `length` from now.
    async fn lock(&self, pair: &str, length: Duration) -> Result<(), floodgate::Error> {
        self.limiter.reset(&self.lock, pair).await?;
        let cost = 900 + u32::try_from(length.as_secs()).unwrap_or(900) - 1;
        self.limiter.charge(&self.lock, pair, cost).await?;
        Ok(())
    }
}

/// The app: `POST /login`.
pub(crate) fn app<S: Store>(login: Arc<Login<S>>) -> Router {
    Router::new()
        .route("/login", post(login_handler::<S>))
        .with_state(login)
}

async fn login_handler<S: Store>(
    State(login): State<Arc<Login<S>>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    body: Bytes,
) -> (StatusCode, [(&'static str, String); 1], String) {
    let Ok(request) = serde_json::from_slice::<serde_json::Value>(&body) else {
        return (
            StatusCode::BAD_REQUEST,
            [("retry-after", "0".into())],
            "expected JSON\n".into(),
        );
    };
    let (Some(user), Some(password)) = (request["username"].as_str(), request["password"].as_str())
    else {
        return (
            StatusCode::BAD_REQUEST,
            [("retry-after", "0".into())],
            "username and password, please\n".into(),
        );
    };
    match login.attempt(&peer.ip().to_string(), user, password).await {
        Ok((status, wait)) => {
            let seconds = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
            (
                status,
                [("retry-after", seconds.to_string())],
                format!("{}\n", status.canonical_reason().unwrap_or("")),
            )
        }
        Err(_) => (
            StatusCode::SERVICE_UNAVAILABLE,
            [("retry-after", "1".into())],
            "try again\n".into(),
        ),
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let bind = std::env::var("BIND").unwrap_or_else(|_| "127.0.0.1:3000".to_owned());
    let login = Arc::new(Login::new(Arc::new(RateLimiter::in_memory()))?);
    let listener = tokio::net::TcpListener::bind(&bind).await?;
    let addr = listener.local_addr()?;
    println!("login_protection listening on http://{addr}");
    println!(
        "try: curl -i -d '{{\"username\":\"alice\",\"password\":\"guess\"}}' http://{addr}/login"
    );
    axum::serve(
        listener,
        app(login).into_make_service_with_connect_info::<SocketAddr>(),
    )
    .await?;
    Ok(())
}
