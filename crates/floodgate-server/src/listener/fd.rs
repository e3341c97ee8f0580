//! The file-descriptor budget of the two listeners.

/// The file-descriptor budget: raises the soft `RLIMIT_NOFILE` to the hard limit and returns
/// the limit now in force (`None` where it cannot be read).
pub fn raise_fd_limit() -> Option<u64> {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let mut limit = getrlimit(Resource::Nofile);
    if limit.current != limit.maximum {
        let raised = rustix::process::Rlimit {
            current: limit.maximum,
            maximum: limit.maximum,
        };
        match setrlimit(Resource::Nofile, raised) {
            Ok(()) => limit = raised,
            Err(e) => tracing::warn!(error = %e, "cannot raise the file-descriptor limit"),
        }
    }
    limit.current
}

/// File descriptors kept aside for everything but client connections (store connections,
/// config files, the runtime).
const FD_RESERVE: u64 = 64;

/// Warns when both listeners' connection bounds together exceed what the file-descriptor
/// limit allows.
pub(crate) fn check_fd_budget(http: usize, grpc: usize) {
    let limit = rustix::process::getrlimit(rustix::process::Resource::Nofile).current;
    let wanted = http as u64 + grpc as u64 + FD_RESERVE;
    if let Some(limit) = limit
        && wanted > limit
    {
        tracing::warn!(
            limit,
            http_max_connections = http,
            grpc_max_connections = grpc,
            "server.max_connections + server.grpc_max_connections (+{FD_RESERVE} for the server itself) exceed the file-descriptor limit: \
             past it, accepting fails and backs off; raise `ulimit -n` or lower the bounds"
        );
    }
}
