//! What triggers a reload: a changed config or Envoy file (polled from metadata, off the
//! async workers) and `SIGHUP`. The reload itself is [`Shared::reload`].

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use crate::files;
use crate::state::Shared;
use crate::until_stopped;

/// Reloads when the config file or any Envoy file changes: polled from metadata (no
/// platform watcher), off the async workers.
pub(crate) async fn watch_files(
    shared: Arc<Shared>,
    path: PathBuf,
    interval: Duration,
    first: Option<files::Fingerprint>,
    mut stopped: watch::Receiver<bool>,
) {
    let mut last = first;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            () = until_stopped(&mut stopped) => return,
        }
        let now = tokio::select! {
            now = fingerprint(&shared, &path) => now,
            () = until_stopped(&mut stopped) => return,
        };
        let changed = match (&now, &last) {
            (Some(now), Some(last)) => now.differs_from(last),
            _ => true,
        };
        if changed {
            last = now;
            let _ = shared.reload().await;
        }
    }
}

/// The fingerprint of the files the served config was loaded from, taken off the async
/// workers (`None` if that task failed).
pub(crate) async fn fingerprint(
    shared: &Shared,
    path: &std::path::Path,
) -> Option<files::Fingerprint> {
    let config = &shared.served.load().config;
    let dir = config.envoy_dir.clone();
    let cap = config.envoy_options.max_file_bytes;
    let path = path.to_path_buf();
    tokio::task::spawn_blocking(move || files::Fingerprint::take(&path, dir.as_deref(), cap))
        .await
        .ok()
}

#[cfg(unix)]
pub(crate) async fn on_sighup(
    shared: Arc<Shared>,
    mut hangups: tokio::signal::unix::Signal,
    mut stopped: watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            received = hangups.recv() => {
                if received.is_none() {
                    return;
                }
                tracing::info!("SIGHUP: reloading the configuration");
                let _ = shared.reload().await;
            }
            () = until_stopped(&mut stopped) => return,
        }
    }
}
