//! Login brute-force protection with `floodgate::login::LoginGuard`.
//!
//! `POST /login` with a JSON body `{"username": …, "password": …}` (the demo password is
//! `correct horse` for every user). The guard's defaults:
//!
//! - per client IP: `30/m` — one address cannot try many accounts;
//! - per username: `10/m; 100/d` — a sprayed account slows down, but this limit is skipped
//!   for the (username, IP) pairs that logged in successfully in the last 30 days, so an
//!   attacker spraying one username from many addresses cannot lock the real user out of
//!   their usual device;
//! - per (username, IP): `5/m`;
//! - lockout per (username, IP): 3 failures within 15 minutes lock the pair for 1 minute,
//!   then 5, then 15 (the cap); one level is forgotten per hour and a success resets the
//!   pair.
//!
//! Listens on `BIND` (default `127.0.0.1:3000`). Behind a proxy, take the address from
//! `floodgate_tower::PeerIp::trust_proxies` instead of the socket.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{ConnectInfo, State};
use axum::http::StatusCode;
use axum::routing::post;
use floodgate::login::{LoginConfig, LoginDecision, LoginGuard, Outcome};
use floodgate::{RateLimiter, Store};

/// The login flow: the guard around a password check.
pub(crate) struct Login<S: Store> {
    guard: LoginGuard<S>,
}

impl<S: Store> Login<S> {
    pub(crate) fn new(limiter: Arc<RateLimiter<S>>) -> Result<Self, floodgate::Error> {
        Ok(Login {
            guard: LoginGuard::new(limiter, "demo", LoginConfig::default())?,
        })
    }

    /// Handles one attempt: the status to answer, and the wait for a 429.
    pub(crate) async fn attempt(
        &self,
        ip: IpAddr,
        user: &str,
        password: &str,
    ) -> Result<(StatusCode, Duration), floodgate::Error> {
        if let LoginDecision::Refused { retry_after, .. } = self.guard.attempt(user, ip).await? {
            return Ok((StatusCode::TOO_MANY_REQUESTS, retry_after));
        }
        if password == "correct horse" {
            self.guard.record(user, ip, Outcome::Success).await?;
            return Ok((StatusCode::OK, Duration::ZERO));
        }
        self.guard.record(user, ip, Outcome::Failure).await?;
        Ok((StatusCode::UNAUTHORIZED, Duration::ZERO))
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
    match login.attempt(peer.ip(), user, password).await {
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
