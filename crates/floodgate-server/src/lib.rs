//! The floodgate server: token-bucket rate limiting as a service for any language.
//!
//! One process answers "may this request go through?" over two APIs:
//!
//! - an **HTTP JSON API** (`POST /v1/check`, `/v1/peek`, `/v1/reset`, `GET /v1/policies`,
//!   `/healthz`, `/readyz`, `/metrics`) for the policies of the TOML config, with
//!   `POST /v1/login/attempt` and `/v1/login/result` for its `[login]` guards (brute-force
//!   protection, `floodgate::login::LoginGuard` over HTTP), and
//! - **Envoy's rate limit service** (`envoy.service.ratelimit.v3.RateLimitService`, gRPC),
//!   configured with envoyproxy/ratelimit's YAML descriptor files — a drop-in for Envoy and
//!   Istio.
//!
//! Buckets live in the embedded memory store or in Redis (standalone or Cluster), shared by
//! every server instance. A changed config file (or `SIGHUP`) reloads atomically; a bad one
//! is logged and counted while the previous one keeps serving.
//!
//! The binary `floodgate` is a thin wrapper around [`start`]; tests start servers in-process
//! on port 0:
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use floodgate_server::{Options, start};
//! let server = start(Options::demo_on_free_ports()).await?;
//! println!("HTTP on {}, gRPC on {}", server.http_addr(), server.grpc_addr());
//! server.shutdown().await;
//! # Ok(()) }
//! ```

#![cfg_attr(docsrs, feature(doc_cfg))]

mod api;
pub mod config;
pub mod files;
pub mod history;
mod listener;
pub mod metrics;
pub mod permits;
mod reload;
pub mod request;
mod rls;
pub mod rules;
mod state;
pub mod top;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

pub use api::{MAX_BODY, MAX_KEY};
pub use config::{Config, ConfigError, Overrides};
pub use listener::{DEFAULT_SHUTDOWN_GRACE, GrpcLimits, HttpLimits, raise_fd_limit};
pub use state::AnyStore;

/// The Envoy RLS v3 protocol types, generated from the trimmed protos in `proto/`.
#[allow(missing_docs, unreachable_pub, clippy::all, clippy::pedantic)]
pub mod proto {
    /// `envoy.*` packages.
    pub mod envoy {
        /// `envoy.config.*`.
        pub mod config {
            /// `envoy.config.core`.
            pub mod core {
                /// `envoy.config.core.v3`.
                pub mod v3 {
                    include!(concat!(env!("OUT_DIR"), "/envoy.config.core.v3.rs"));
                }
            }
        }
        /// `envoy.type.*`.
        pub mod r#type {
            /// `envoy.type.v3`.
            pub mod v3 {
                include!(concat!(env!("OUT_DIR"), "/envoy.r#type.v3.rs"));
            }
        }
        /// `envoy.extensions.*`.
        pub mod extensions {
            /// `envoy.extensions.common`.
            pub mod common {
                /// `envoy.extensions.common.ratelimit`.
                pub mod ratelimit {
                    /// `envoy.extensions.common.ratelimit.v3`.
                    pub mod v3 {
                        include!(concat!(
                            env!("OUT_DIR"),
                            "/envoy.extensions.common.ratelimit.v3.rs"
                        ));
                    }
                }
            }
        }
        /// `envoy.service.*`.
        pub mod service {
            /// `envoy.service.ratelimit`.
            pub mod ratelimit {
                /// `envoy.service.ratelimit.v3`.
                pub mod v3 {
                    include!(concat!(env!("OUT_DIR"), "/envoy.service.ratelimit.v3.rs"));
                }
            }
        }
    }
}

/// How to start a server.
#[derive(Clone, Debug, Default)]
pub struct Options {
    /// The config file (`None`: the built-in demo config).
    pub config: Option<PathBuf>,
    /// Command-line and environment overrides.
    pub overrides: Overrides,
    /// How often to look for a changed config file (`None`: never; `SIGHUP` still reloads).
    pub watch_interval: Option<Duration>,
    /// Reload on `SIGHUP` (Unix).
    pub reload_on_sighup: bool,
}

impl Options {
    /// The built-in demo config on ports chosen by the system (for tests and examples).
    pub fn demo_on_free_ports() -> Options {
        Options {
            overrides: Overrides {
                http: Some(SocketAddr::from(([127, 0, 0, 1], 0))),
                grpc: Some(SocketAddr::from(([127, 0, 0, 1], 0))),
                ..Overrides::default()
            },
            ..Options::default()
        }
    }

    /// `path` on ports chosen by the system, watched every 50 ms (for tests).
    pub fn file_on_free_ports(path: impl Into<PathBuf>) -> Options {
        Options {
            config: Some(path.into()),
            watch_interval: Some(Duration::from_millis(50)),
            ..Options::demo_on_free_ports()
        }
    }
}

/// Why a server did not start.
#[derive(Debug)]
pub enum StartError {
    /// The configuration is invalid (or its store cannot be reached).
    Config(ConfigError),
    /// A listen address could not be bound.
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The reason.
        error: std::io::Error,
    },
}

impl std::fmt::Display for StartError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StartError::Config(e) => write!(f, "{e}"),
            StartError::Bind { addr, error } => write!(f, "cannot listen on {addr}: {error}"),
        }
    }
}

impl std::error::Error for StartError {}

impl From<ConfigError> for StartError {
    fn from(e: ConfigError) -> Self {
        StartError::Config(e)
    }
}

/// Loads the configuration `options` name, with the overrides applied (blocking file I/O:
/// call it off the async workers, or use [`validate`]).
pub fn load_config(options: &Options) -> Result<Config, ConfigError> {
    let mut config = match &options.config {
        Some(path) => Config::load(path)?,
        None => Config::demo(),
    };
    config.apply(&options.overrides)?;
    Ok(config)
}

/// Everything a start checks short of binding ports and connecting to the store: the
/// configuration and the store settings (a Redis URL is parsed as connecting would parse it).
/// `floodgate check-config` runs exactly this, so it refuses what `serve` refuses.
pub async fn validate(options: &Options) -> Result<Config, ConfigError> {
    let owned = options.clone();
    let config = tokio::task::spawn_blocking(move || load_config(&owned))
        .await
        .map_err(|e| ConfigError::new(std::path::Path::new("<loader>"), "", e.to_string()))??;
    state::check_store(&config)?;
    Ok(config)
}

/// A running server.
pub struct Running {
    http: SocketAddr,
    grpc: SocketAddr,
    shared: Arc<state::Shared>,
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

impl std::fmt::Debug for Running {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Running")
            .field("http", &self.http)
            .field("grpc", &self.grpc)
            .finish_non_exhaustive()
    }
}

/// Starts the HTTP and gRPC servers (and the reload watchers) on the current tokio runtime.
pub async fn start(options: Options) -> Result<Running, StartError> {
    let config = validate(&options).await?;
    let http_listener = bind(config.server.http).await?;
    let grpc_listener = bind(config.server.grpc).await?;
    let http = local_addr(&http_listener, config.server.http)?;
    let grpc = local_addr(&grpc_listener, config.server.grpc)?;
    listener::check_fd_budget(
        config.server.limits.max_connections,
        config.server.grpc_limits.max_connections,
    );
    let server = config.server.clone();
    let shared =
        state::Shared::start(config, options.config.clone(), options.overrides.clone()).await?;
    let (stop, stopped) = watch::channel(false);
    let mut tasks = Vec::new();

    tasks.push(tokio::spawn(listener::serve_http(
        http_listener,
        api::router(shared.clone()),
        server.limits,
        server.shutdown_grace,
        shared.metrics.clone(),
        stopped.clone(),
    )));

    // A descriptor set larger than the HTTP API's body cap is not a rate limit request.
    let rls = proto::envoy::service::ratelimit::v3::rate_limit_service_server::RateLimitServiceServer::new(
        rls::Rls {
            shared: shared.clone(),
        },
    )
    .max_decoding_message_size(api::MAX_BODY);
    tasks.push(tokio::spawn(listener::serve_grpc(
        grpc_listener,
        tonic::service::Routes::new(rls).prepare(),
        server.grpc_limits,
        server.shutdown_grace,
        shared.metrics.clone(),
        stopped.clone(),
    )));

    tasks.push(tokio::spawn(history::sample_every_second(
        shared.history.clone(),
        shared.metrics.clone(),
        stopped.clone(),
    )));

    if let (Some(interval), Some(path)) = (options.watch_interval, options.config.clone()) {
        // The first fingerprint is taken before `start` returns: a change made right after
        // it must be seen as one.
        let first = reload::fingerprint(&shared, &path).await;
        tasks.push(tokio::spawn(reload::watch_files(
            shared.clone(),
            path,
            interval,
            first,
            stopped.clone(),
        )));
    }
    #[cfg(unix)]
    if options.reload_on_sighup {
        // Registered before `start` returns: a SIGHUP sent once the server answers must
        // reload it, never meet the default disposition (which ends the process).
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
            Ok(hangups) => tasks.push(tokio::spawn(reload::on_sighup(
                shared.clone(),
                hangups,
                stopped,
            ))),
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGHUP; reload by editing the config file")
            }
        }
    }
    Ok(Running {
        http,
        grpc,
        shared,
        stop,
        tasks,
    })
}

async fn bind(addr: SocketAddr) -> Result<TcpListener, StartError> {
    TcpListener::bind(addr)
        .await
        .map_err(|error| StartError::Bind { addr, error })
}

fn local_addr(listener: &TcpListener, addr: SocketAddr) -> Result<SocketAddr, StartError> {
    listener
        .local_addr()
        .map_err(|error| StartError::Bind { addr, error })
}

impl Running {
    /// Where the HTTP JSON API listens.
    pub fn http_addr(&self) -> SocketAddr {
        self.http
    }
    /// Where the Envoy RLS gRPC API listens.
    pub fn grpc_addr(&self) -> SocketAddr {
        self.grpc
    }
    /// Re-reads the config file now; returns the version served afterwards, or why the new
    /// file was refused (the old config keeps serving).
    pub async fn reload(&self) -> Result<u64, ConfigError> {
        self.shared.reload().await
    }
    /// The configuration being served.
    pub fn config(&self) -> Config {
        self.shared.served.load().config.clone()
    }
    /// The version of the config being served: 1 at start, +1 per applied reload.
    pub fn config_version(&self) -> u64 {
        self.shared.served.load().version
    }
    /// Reloads so far: (applied, refused).
    pub fn reloads(&self) -> (u64, u64) {
        self.shared.metrics.reloads()
    }
    /// The Prometheus exposition of this server's metrics.
    pub fn metrics(&self) -> String {
        self.shared.metrics.render()
    }
    /// Stops accepting connections, lets open connections finish for at most
    /// `server.shutdown_grace` (then cuts the rest), and returns when both servers have
    /// stopped.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        for task in self.tasks {
            let _ = task.await;
        }
    }
}

pub(crate) async fn until_stopped(stopped: &mut watch::Receiver<bool>) {
    let _ = stopped.wait_for(|&s| s).await;
}
