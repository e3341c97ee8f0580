//! `floodgate`: the rate limit server. `floodgate serve [--config FILE]` (the default) or
//! `floodgate check-config FILE`.

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use floodgate_server::{Config, Options, Overrides, start, validate};

#[derive(Parser)]
#[command(
    name = "floodgate",
    version,
    about = "Token-bucket rate limiting as a service: HTTP JSON and Envoy's rate limit gRPC API."
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    serve: ServeArgs,
}

#[derive(Subcommand)]
enum Command {
    /// Run the server (the default).
    Serve(ServeArgs),
    /// Validate a config file and print the resolved policies (secrets redacted).
    CheckConfig {
        /// The TOML config file.
        file: PathBuf,
    },
}

#[derive(clap::Args, Clone)]
struct ServeArgs {
    /// The TOML config file (default: the built-in demo config).
    #[arg(long, short, env = "FLOODGATE_CONFIG")]
    config: Option<PathBuf>,
    /// The HTTP listen address (overrides server.http).
    #[arg(long, env = "FLOODGATE_HTTP")]
    http: Option<SocketAddr>,
    /// The gRPC listen address (overrides server.grpc).
    #[arg(long, env = "FLOODGATE_GRPC")]
    grpc: Option<SocketAddr>,
    /// The store URL (overrides store.url; keeps a Redis password out of the file).
    #[arg(long, env = "FLOODGATE_STORE_URL", hide_env_values = true)]
    store_url: Option<String>,
    /// The admin token for POST /v1/reset (overrides server.admin_token).
    #[arg(long, env = "FLOODGATE_ADMIN_TOKEN", hide_env_values = true)]
    admin_token: Option<String>,
    /// Seconds between checks for a changed config file (0: only SIGHUP reloads).
    #[arg(long, env = "FLOODGATE_WATCH_SECS", default_value_t = 1)]
    watch_secs: u64,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_env("FLOODGATE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        .init();
    match cli.command {
        Some(Command::CheckConfig { file }) => check_config(file),
        Some(Command::Serve(args)) => serve(args),
        None => serve(cli.serve),
    }
}

fn runtime() -> Result<tokio::runtime::Runtime, ExitCode> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| {
            eprintln!("error: cannot start the async runtime: {e}");
            ExitCode::FAILURE
        })
}

fn check_config(file: PathBuf) -> ExitCode {
    let options = Options {
        config: Some(file),
        ..Options::default()
    };
    let runtime = match runtime() {
        Ok(runtime) => runtime,
        Err(code) => return code,
    };
    // The same validation a start runs, short of binding ports and connecting.
    match runtime.block_on(validate(&options)) {
        Ok(config) => {
            print!("{}", config.describe());
            println!("ok");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The start banner: where to send requests, with a policy the config really has.
fn banner(config: &Config, http: SocketAddr, grpc: SocketAddr, demo: bool) -> String {
    let mut banner =
        format!("floodgate listening: HTTP on http://{http}, Envoy RLS gRPC on {grpc}\n");
    if demo {
        banner.push_str(
            "built-in demo config: policies free (5/s burst 10; 1000/day), \
             pro (50/s burst 100), enterprise (100/s burst 200)\n",
        );
    }
    let first_guard = config.login.keys().next();
    match (config.policies.keys().next(), first_guard) {
        (Some(policy), _) => banner.push_str(&format!(
            "try: curl -s -X POST http://{http}/v1/check -d '{}'\n",
            serde_json::json!({ "policy": policy, "key": "user:42" })
        )),
        (None, Some(guard)) => banner.push_str(&format!(
            "try: curl -s -X POST http://{http}/v1/login/attempt -d '{}'\n",
            serde_json::json!({ "guard": guard, "username": "alice", "ip": "192.0.2.7" })
        )),
        (None, None) => banner.push_str(&format!(
            "no [policies] configured: the Envoy domains are served on {grpc} (see GET http://{http}/v1/policies)\n"
        )),
    }
    banner
}

fn serve(args: ServeArgs) -> ExitCode {
    let options = Options {
        watch_interval: (args.watch_secs > 0 && args.config.is_some())
            .then(|| Duration::from_secs(args.watch_secs)),
        config: args.config,
        overrides: Overrides {
            http: args.http,
            grpc: args.grpc,
            store_url: args.store_url,
            admin_token: args.admin_token,
        },
        reload_on_sighup: true,
    };
    // Every connection is a file descriptor: take all the hard limit allows.
    floodgate_server::raise_fd_limit();
    let runtime = match runtime() {
        Ok(runtime) => runtime,
        Err(code) => return code,
    };
    runtime.block_on(async move {
        let demo = options.config.is_none();
        let server = match start(options).await {
            Ok(server) => server,
            Err(e) => {
                eprintln!("error: {e}");
                return ExitCode::FAILURE;
            }
        };
        // The handlers are in place before the banner says the server is up: a signal
        // sent once it answers stops it gracefully, never by the default disposition.
        let stopping = shutdown_signal();
        let http = server.http_addr();
        tracing::info!(%http, grpc = %server.grpc_addr(), "listening");
        let banner = banner(&server.config(), http, server.grpc_addr(), demo);
        // A closed stdout must not take the server down.
        let mut stdout = std::io::stdout().lock();
        let _ = stdout
            .write_all(banner.as_bytes())
            .and_then(|()| stdout.flush());
        drop(stdout);
        stopping.await;
        tracing::info!("shutting down: finishing in-flight requests");
        server.shutdown().await;
        ExitCode::SUCCESS
    })
}

/// Registers the SIGINT and SIGTERM handlers now (not at the first poll); the future
/// ends at the first of them.
fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let interrupt = signal(SignalKind::interrupt());
        let terminate = signal(SignalKind::terminate());
        async move {
            let next = |signal: std::io::Result<tokio::signal::unix::Signal>| async move {
                match signal {
                    Ok(mut signal) => {
                        signal.recv().await;
                    }
                    Err(_) => std::future::pending::<()>().await,
                }
            };
            tokio::select! {
                () = next(interrupt) => {}
                () = next(terminate) => {}
            }
        }
    }
    #[cfg(not(unix))]
    async {
        let _ = tokio::signal::ctrl_c().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_banner_suggests_a_configured_policy() {
        let addr: SocketAddr = "127.0.0.1:1".parse().unwrap_or_else(|e| panic!("{e}"));
        let config = Config::parse(
            "[policies]\ngold = \"5/s\"\n",
            std::path::Path::new("x.toml"),
            None,
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let text = banner(&config, addr, addr, false);
        assert!(
            text.contains(r#"{"key":"user:42","policy":"gold"}"#),
            "{text}"
        );
        assert!(!text.contains("free"), "{text}");
    }

    #[test]
    fn with_only_login_guards_the_banner_suggests_an_attempt() {
        let addr: SocketAddr = "127.0.0.1:1".parse().unwrap_or_else(|e| panic!("{e}"));
        let config = Config::parse(
            "[login]
web = {}
",
            std::path::Path::new("x.toml"),
            None,
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let text = banner(&config, addr, addr, false);
        assert!(
            text.contains(
                r#"/v1/login/attempt -d '{"guard":"web","ip":"192.0.2.7","username":"alice"}'"#
            ),
            "{text}"
        );
    }
}
