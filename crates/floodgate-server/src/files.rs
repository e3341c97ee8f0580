//! Reading the files a configuration is made of, safely against what an operator may leave
//! beside them: only regular files are read (a FIFO, a device or a socket with a config
//! file's name is skipped), never more than a cap, and without blocking on open. Changes are
//! detected from metadata, without reading content (see [`Fingerprint`]).
//!
//! Everything here does blocking file I/O: call it off the async workers
//! (`tokio::task::spawn_blocking`).

use std::collections::BTreeMap;
use std::collections::hash_map::DefaultHasher;
use std::fs::{File, Metadata};
use std::hash::{Hash, Hasher};
use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

/// The largest TOML config file read.
pub const MAX_CONFIG_BYTES: u64 = 16 * 1024 * 1024;

/// Why a file could not be read.
#[derive(Debug)]
pub enum ReadError {
    /// Opening or reading failed.
    Io(std::io::Error),
    /// Not a regular file (a FIFO, a device, a directory, a socket).
    NotRegular,
    /// Larger than the cap.
    TooLarge {
        /// Its size (at least this many bytes).
        size: u64,
        /// The cap.
        cap: u64,
    },
    /// Not UTF-8 text.
    NotText,
}

impl std::fmt::Display for ReadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ReadError::Io(e) => write!(f, "cannot read: {e}"),
            ReadError::NotRegular => f.write_str("cannot read: not a regular file"),
            ReadError::TooLarge { size, cap } => {
                write!(f, "the file is {size} bytes, over the cap of {cap} bytes")
            }
            ReadError::NotText => f.write_str("cannot read: the file is not UTF-8 text"),
        }
    }
}

/// Reads a regular file of at most `cap` bytes as text. Opens without blocking (a FIFO
/// never stalls the caller), checks the open file is regular, and reads at most `cap + 1`
/// bytes, so a file growing meanwhile is caught too.
pub fn read_capped(path: &Path, cap: u64) -> Result<String, ReadError> {
    use rustix::fs::{Mode, OFlags};
    let fd = rustix::fs::open(
        path,
        OFlags::RDONLY | OFlags::NONBLOCK | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| ReadError::Io(e.into()))?;
    let file = File::from(fd);
    let meta = file.metadata().map_err(ReadError::Io)?;
    if !meta.is_file() {
        return Err(ReadError::NotRegular);
    }
    if meta.len() > cap {
        return Err(ReadError::TooLarge {
            size: meta.len(),
            cap,
        });
    }
    let mut bytes = Vec::with_capacity(usize::try_from(meta.len()).unwrap_or(0));
    file.take(cap.saturating_add(1))
        .read_to_end(&mut bytes)
        .map_err(ReadError::Io)?;
    if bytes.len() as u64 > cap {
        return Err(ReadError::TooLarge {
            size: bytes.len() as u64,
            cap,
        });
    }
    String::from_utf8(bytes).map_err(|_| ReadError::NotText)
}

/// Whether `path` has an Envoy config file's name (`*.yaml`, `*.yml`).
fn is_yaml_name(path: &Path) -> bool {
    matches!(
        path.extension().and_then(|e| e.to_str()),
        Some("yaml" | "yml")
    )
}

/// The Envoy config files of `dir`, sorted by name: entries named `*.yaml` / `*.yml` that
/// are regular files or symlinks to regular files. The second list holds the entries with
/// such a name that are something else (skipped; the caller warns).
pub fn yaml_files(dir: &Path) -> std::io::Result<(Vec<PathBuf>, Vec<PathBuf>)> {
    let mut files = Vec::new();
    let mut skipped = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if !is_yaml_name(&path) {
            continue;
        }
        // `metadata` follows symlinks: a ConfigMap's `name.yaml -> ..data/name.yaml` counts.
        match std::fs::metadata(&path) {
            Ok(meta) if meta.is_file() => files.push(path),
            _ => skipped.push(path),
        }
    }
    files.sort();
    skipped.sort();
    Ok((files, skipped))
}

/// A cheap summary of the files a reload reads, from their metadata: for the config file and
/// every Envoy file, the modification time (with nanoseconds), change time, size, inode and
/// device of its target; for a `..data` symlink (a Kubernetes ConfigMap mount), the same of
/// the link itself. A file modified within [`RECENT`] of the check is also hashed in full (up
/// to its cap), so two same-size edits inside one timestamp tick are not missed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Fingerprint {
    files: BTreeMap<PathBuf, Seen>,
}

/// What one check saw of one file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Seen {
    /// A hash of the metadata (`0` when it cannot be read).
    meta: u64,
    /// A hash of the content, for a recently modified file.
    content: Option<u64>,
}

/// How close to now a modification time must be for the file's content to be hashed too.
pub const RECENT: Duration = Duration::from_secs(2);

impl Fingerprint {
    /// Takes the fingerprint of `config` and, when given, the Envoy directory `dir`.
    pub fn take(config: &Path, dir: Option<&Path>, yaml_cap: u64) -> Fingerprint {
        let now = SystemTime::now();
        let mut files = BTreeMap::new();
        files.insert(config.to_path_buf(), seen(config, MAX_CONFIG_BYTES, now));
        if let Some(dir) = dir {
            match yaml_files(dir) {
                Ok((yaml, skipped)) => {
                    for path in yaml.into_iter().chain(skipped) {
                        let seen = seen(&path, yaml_cap, now);
                        files.insert(path, seen);
                    }
                }
                Err(_) => {
                    files.insert(
                        dir.to_path_buf(),
                        Seen {
                            meta: 0,
                            content: None,
                        },
                    );
                }
            }
            // A ConfigMap update swaps the `..data` link atomically.
            let link = dir.join("..data");
            if let Ok(meta) = std::fs::symlink_metadata(&link) {
                files.insert(
                    link,
                    Seen {
                        meta: hash(&summary(&meta)),
                        content: None,
                    },
                );
            }
        }
        Fingerprint { files }
    }

    /// Whether a reload may see something else than at `earlier`: a file came or went, its
    /// metadata changed, or its content changed while both checks hashed it.
    pub fn differs_from(&self, earlier: &Fingerprint) -> bool {
        self.files.len() != earlier.files.len()
            || self
                .files
                .iter()
                .zip(&earlier.files)
                .any(|((path, now), (was_path, was))| {
                    path != was_path
                        || now.meta != was.meta
                        || matches!((now.content, was.content), (Some(a), Some(b)) if a != b)
                })
    }
}

fn hash(value: &impl Hash) -> u64 {
    let mut hasher = DefaultHasher::new();
    value.hash(&mut hasher);
    hasher.finish()
}

fn seen(path: &Path, cap: u64, now: SystemTime) -> Seen {
    match std::fs::metadata(path) {
        Ok(meta) => Seen {
            meta: hash(&summary(&meta)),
            content: recent_content(path, &meta, cap, now),
        },
        Err(_) => Seen {
            meta: 0,
            content: None,
        },
    }
}

fn summary(meta: &Metadata) -> (i64, i64, i64, i64, u64, u64, u64, u32) {
    (
        meta.mtime(),
        meta.mtime_nsec(),
        meta.ctime(),
        meta.ctime_nsec(),
        meta.len(),
        meta.ino(),
        meta.dev(),
        meta.mode(),
    )
}

/// A hash of the file's content when it was modified within [`RECENT`] of `now`, else `None`.
fn recent_content(path: &Path, meta: &Metadata, cap: u64, now: SystemTime) -> Option<u64> {
    // Modified "in the future" (the clock stepped back): recent.
    let age = now
        .duration_since(meta.modified().ok()?)
        .unwrap_or(Duration::ZERO);
    if age >= RECENT || !meta.is_file() || meta.len() > cap {
        return None;
    }
    // An error (the file went away, grew past the cap) changes the hash as well.
    Some(match read_capped(path, cap) {
        Ok(text) => hash(&text),
        Err(e) => hash(&e.to_string()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_dir(tag: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("floodgate-files-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn reads_are_capped_and_only_of_regular_files() {
        let dir = temp_dir("cap");
        let path = dir.join("a.yaml");
        std::fs::write(&path, "x".repeat(100)).unwrap();
        assert_eq!(read_capped(&path, 100).unwrap().len(), 100);
        let error = read_capped(&path, 99).unwrap_err();
        assert!(
            matches!(error, ReadError::TooLarge { size: 100, cap: 99 }),
            "{error:?}"
        );
        assert!(matches!(
            read_capped(&dir, 1_000),
            Err(ReadError::NotRegular | ReadError::Io(_))
        ));
        assert!(matches!(
            read_capped(Path::new("/dev/zero"), 1_000),
            Err(ReadError::NotRegular)
        ));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn files_modified_within_two_seconds_are_hashed_by_content() {
        let dir = temp_dir("tick");
        let config = dir.join("floodgate.toml");
        std::fs::write(&config, "a = 1\n").unwrap();
        let now = SystemTime::now();
        let meta = std::fs::metadata(&config).unwrap();
        let first = recent_content(&config, &meta, 1_000, now);
        assert!(first.is_some());
        // A same-size edit with the modification time put back (one timestamp tick): the
        // metadata's mtime is unchanged, the content hash is not.
        let mtime = meta.modified().unwrap();
        std::fs::write(&config, "a = 2\n").unwrap();
        File::options()
            .write(true)
            .open(&config)
            .unwrap()
            .set_modified(mtime)
            .unwrap();
        let meta = std::fs::metadata(&config).unwrap();
        assert_eq!(meta.modified().unwrap(), mtime);
        let second = recent_content(&config, &meta, 1_000, now);
        assert!(second.is_some());
        assert_ne!(first, second);
        // A fingerprint sees the edit; one taken after the file aged is no change.
        let aged = Fingerprint {
            files: BTreeMap::from([(
                config.clone(),
                Seen {
                    meta: hash(&summary(&meta)),
                    content: None,
                },
            )]),
        };
        let fresh = Fingerprint::take(&config, None, 1_000);
        assert!(!aged.differs_from(&fresh) && !fresh.differs_from(&aged));
        // An old file is not read at all.
        let later = now + Duration::from_secs(3);
        assert_eq!(recent_content(&config, &meta, 1_000, later), None);
        // Nor one over the cap.
        assert_eq!(recent_content(&config, &meta, 3, now), None);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
