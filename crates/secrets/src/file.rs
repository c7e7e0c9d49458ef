//! Reading one secret file by the rules of docs/external-secrets.md ("Reading, caching and
//! rotation"): follow symlinks (the CSI layout is symlinks by design: the Kubernetes atomic writer
//! swaps a `..data` symlink, see `atomic_writer`), refuse anything that is not a regular file
//! without ever blocking on it, refuse system trees (`/proc`, `/sys`, `/dev`), never read more than
//! the cap plus one byte, and turn every failure into a typed error that cannot contain file
//! content.
//!
//! Every secret read goes through [`read_settled`], which also owns the settle rule of
//! docs/external-secrets.md: a value that differs from the cached one is adopted only once
//! re-reads agree, so a writer caught half-way through rewriting the file in place is never
//! mistaken for a rotation.

use std::fs::{self, File, Metadata, OpenOptions};
use std::io::{self, Read};
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::thread;
use std::time::{Duration, Instant};

use zeroize::Zeroizing;

use crate::error::SecretError;
use crate::value::{strip_one_trailing_newline, Digest, SecretValue};

/// Default cap on a secret file: 64 KiB (docs/external-secrets.md, "Reading, caching and
/// rotation"). A Kubernetes Secret is at most 1 MiB
/// (https://kubernetes.io/docs/concepts/configuration/secret/#restriction-data-size) and
/// real credentials are far smaller; the cap bounds memory per read.
pub const DEFAULT_MAX_FILE_SIZE: u64 = 64 * 1024;

/// Why a bounded read failed, before it is attached to a secret name (the vault config
/// file is read with the same function).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum FileFault {
    Missing {
        dangling: bool,
    },
    TooLarge {
        limit: u64,
    },
    NotRegular {
        kind: &'static str,
    },
    Unreadable {
        detail: String,
    },
    /// Under a refused tree; `resolved` is the symlink target when only that lies there.
    Refused {
        root: &'static str,
        resolved: Option<PathBuf>,
    },
}

impl FileFault {
    pub(crate) fn into_secret_error(self, name: &str, path: &Path) -> SecretError {
        let name = name.to_string();
        let path = path.to_path_buf();
        match self {
            Self::Missing { dangling } => SecretError::Missing {
                name,
                path,
                dangling,
            },
            Self::TooLarge { limit } => SecretError::TooLarge { name, path, limit },
            Self::NotRegular { kind } => SecretError::NotRegular { name, path, kind },
            Self::Unreadable { detail } => SecretError::Unreadable { name, path, detail },
            Self::Refused { root, resolved } => SecretError::RefusedPath {
                name,
                path,
                resolved,
                root,
            },
        }
    }

    pub(crate) fn describe(&self) -> String {
        match self {
            Self::Missing { dangling: false } => "file not found".to_string(),
            Self::Missing { dangling: true } => "file not found (dangling symlink)".to_string(),
            Self::TooLarge { limit } => format!("file is larger than the limit of {limit} bytes"),
            Self::NotRegular { kind } => format!("it is {kind}, not a regular file"),
            Self::Unreadable { detail } => detail.clone(),
            Self::Refused { root, .. } => format!("it lies under {root}"),
        }
    }
}

/// Trees no secret is ever read from (docs/external-secrets.md, "Refused paths"):
/// `/proc/self/environ` holds the server's own environment, root secret included, and
/// `/proc`, `/sys` and `/dev` hold kernel and device files, never credentials.
pub(crate) const REFUSED_ROOTS: [&str; 3] = ["/proc", "/sys", "/dev"];

/// The refused tree `path` lies in, judged on its components as written (`//proc` and
/// `/./proc` are `/proc` too).
pub(crate) fn refused_root(path: &Path) -> Option<&'static str> {
    REFUSED_ROOTS
        .into_iter()
        .find(|root| path.starts_with(root))
}

/// The refused tree `path` lies in, as written or, where the path exists, once resolved
/// through symlinks; the resolved path is returned when only it is refused.
pub(crate) fn refused_location(path: &Path) -> Option<(&'static str, Option<PathBuf>)> {
    if let Some(root) = refused_root(path) {
        return Some((root, None));
    }
    let real = fs::canonicalize(path).ok()?;
    refused_root(&real).map(|root| (root, Some(real)))
}

/// Device numbers of the refused trees that are mount points of their own (procfs, sysfs,
/// devtmpfs). A file opened from one of them is refused whatever path led there, which
/// closes the window between resolving a path and opening it.
fn refused_devices() -> &'static [(&'static str, u64)] {
    static DEVICES: OnceLock<Vec<(&'static str, u64)>> = OnceLock::new();
    DEVICES.get_or_init(|| {
        let Ok(top) = fs::metadata("/") else {
            return Vec::new();
        };
        REFUSED_ROOTS
            .into_iter()
            .filter_map(|root| {
                let dev = fs::metadata(root).ok()?.dev();
                // Not a mount point (e.g. /sys absent in a minimal container): its device is
                // the root filesystem's, which says nothing.
                (dev != top.dev()).then_some((root, dev))
            })
            .collect()
    })
}

/// Identity of the file a value was read from. The atomic writer never changes a file
/// after the swap, so a new value in the *same* file means an in-place writer is at work.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct FileId {
    dev: u64,
    ino: u64,
}

impl FileId {
    fn of(meta: &Metadata) -> Self {
        Self {
            dev: meta.dev(),
            ino: meta.ino(),
        }
    }
}

/// One successful read of a secret file: the normalised value, its digest and the file.
#[derive(Clone)]
pub(crate) struct FileRead {
    pub(crate) value: SecretValue,
    pub(crate) digest: Digest,
    pub(crate) file: FileId,
    /// The file's modification time and size when it was opened: two reads of the
    /// same content settle only if nothing wrote the file between them (a writer that
    /// rewrites the same half-value again and again must not look settled).
    pub(crate) stamp: Stamp,
}

/// A file's modification time (seconds, nanoseconds) and size.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Stamp(i64, i64, u64);

impl Stamp {
    fn of(meta: &Metadata) -> Self {
        Stamp(meta.mtime(), meta.mtime_nsec(), meta.len())
    }
}

/// Reads the secret `name` from `path` and normalises it (docs/external-secrets.md,
/// "Reading, caching and rotation"): one trailing `\n` or `\r\n` is removed, every other
/// byte is kept. An empty or whitespace-only result is an
/// error, never an empty secret; so is a path under `/proc`, `/sys` or `/dev`. The file is
/// re-read until two reads agree ([`read_settled`] with no cached value), so a file being
/// rewritten in place is not reported half-written.
///
/// This is what the resolver does on every (re)load; it is public so that a command such
/// as `fhirbox vault check` can apply exactly the same rules without starting a resolver.
pub fn read_secret_file(
    name: &str,
    path: &Path,
    max_size: u64,
) -> Result<SecretValue, SecretError> {
    let request = SettleRequest {
        name,
        path,
        cached: None,
    };
    read_settled(&[request], max_size, SettleRule::default())
        .pop()
        .unwrap_or_else(|| read_once(name, path, max_size))
        .map(|read| read.value)
}

/// How a value that differs from the cached one must behave before it is adopted
/// (docs/external-secrets.md, "Settle rule").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct SettleRule {
    /// A new value in the same file as the cached one (an in-place writer) must read the
    /// same for at least this long. A value in another file (the atomic writer's swap) needs
    /// only two agreeing reads.
    pub(crate) in_place: Duration,
    /// Pause between re-reads.
    pub(crate) gap: Duration,
    /// Longest time one call may spend re-reading; what has not settled by then is
    /// reported as [`SecretError::Unsettled`] (or as its last read error).
    pub(crate) limit: Duration,
}

/// Default for [`SettleRule::in_place`] and `ResolverOptions::change_settle`.
pub(crate) const DEFAULT_CHANGE_SETTLE: Duration = Duration::from_millis(50);

impl SettleRule {
    pub(crate) fn new(in_place: Duration) -> Self {
        Self {
            in_place,
            gap: Duration::from_millis(1),
            limit: in_place.saturating_mul(10).max(Duration::from_millis(20)),
        }
    }
}

impl Default for SettleRule {
    fn default() -> Self {
        Self::new(DEFAULT_CHANGE_SETTLE)
    }
}

/// One secret to read, with what is cached for it.
pub(crate) struct SettleRequest<'a> {
    pub(crate) name: &'a str,
    pub(crate) path: &'a Path,
    /// Digest of the value being served and the file it was last read from, if any.
    pub(crate) cached: Option<(&'a Digest, Option<FileId>)>,
}

impl SettleRequest<'_> {
    fn is_cached(&self, read: &FileRead) -> bool {
        self.cached
            .is_some_and(|(digest, _)| bool::from(digest.ct_eq(&read.digest)))
    }

    fn is_in_place(&self, read: &FileRead) -> bool {
        self.cached.is_some_and(|(_, file)| file == Some(read.file))
    }
}

enum Probe {
    Done(Result<FileRead, SecretError>),
    Pending {
        last: Result<FileRead, SecretError>,
        /// When `last`'s outcome was first seen.
        since: Instant,
        /// A value in a new file, read once: confirm it with an immediate re-read. Once
        /// anything has changed between reads, re-reads are paced by `rule.gap`.
        confirm_now: bool,
    },
}

/// Reads every requested secret, settling those whose value changed: the one place every
/// secret read goes through (docs/external-secrets.md, "Settle rule").
///
/// - The cached value read back, or a failed first read, returns at once: an unchanged
///   secret costs one read, and a failure is the caller's to ride out (it keeps serving the
///   cached value for its settle window).
/// - Any other value is re-read until two consecutive reads agree (same content from the
///   same file). A value in a new file (the atomic writer's swap, or a first read) is
///   re-read at once, so a swap costs two reads and no wait. A value that changed inside the
///   file the cached value came from (an in-place writer) is re-read every `rule.gap` until
///   it has read the same for `rule.in_place`; so is anything that changed between reads.
///   Reading the cached value again ends the wait: the writer finished putting it back.
/// - Nothing takes longer than `rule.limit`; a value still changing by then is
///   [`SecretError::Unsettled`], which, like any error, is never adopted.
///
/// All secrets settle together, so a swap that rotates many of them costs one wait.
pub(crate) fn read_settled(
    requests: &[SettleRequest<'_>],
    max_size: u64,
    rule: SettleRule,
) -> Vec<Result<FileRead, SecretError>> {
    let mut probes: Vec<Probe> = requests
        .iter()
        .map(|req| match read_once(req.name, req.path, max_size) {
            Ok(read) if !req.is_cached(&read) => Probe::Pending {
                confirm_now: !req.is_in_place(&read),
                last: Ok(read),
                since: Instant::now(),
            },
            done => Probe::Done(done),
        })
        .collect();
    let started = Instant::now();
    while probes.iter().any(|p| matches!(p, Probe::Pending { .. })) {
        if started.elapsed() >= rule.limit {
            for (req, probe) in requests.iter().zip(probes.iter_mut()) {
                if let Probe::Pending { last, .. } = probe {
                    let outcome = match last {
                        Err(err) => Err(err.clone()),
                        Ok(_) => Err(SecretError::Unsettled {
                            name: req.name.to_string(),
                            path: req.path.to_path_buf(),
                        }),
                    };
                    *probe = Probe::Done(outcome);
                }
            }
            break;
        }
        // The atomic writer's swap (a value in a new file) is confirmed without waiting, so
        // it is in use as fast as a single read would make it.
        let pace = probes.iter().any(|p| {
            matches!(
                p,
                Probe::Pending {
                    confirm_now: false,
                    ..
                }
            )
        });
        if pace {
            thread::sleep(rule.gap);
        }
        for (req, probe) in requests.iter().zip(probes.iter_mut()) {
            let Probe::Pending {
                last,
                since,
                confirm_now,
            } = probe
            else {
                continue;
            };
            let read = read_once(req.name, req.path, max_size);
            let now = Instant::now();
            if read.as_ref().is_ok_and(|r| req.is_cached(r)) {
                *probe = Probe::Done(read);
            } else if same_outcome(&read, last) {
                let settled = match &read {
                    Ok(r) => !req.is_in_place(r) || now.duration_since(*since) >= rule.in_place,
                    Err(_) => true,
                };
                if settled {
                    *probe = Probe::Done(read);
                }
            } else {
                *last = read;
                *since = now;
                *confirm_now = false;
            }
        }
    }
    probes
        .into_iter()
        .map(|p| match p {
            Probe::Done(outcome) => outcome,
            // Unreachable: the loop above ends only when nothing is pending.
            Probe::Pending { last, .. } => last,
        })
        .collect()
}

fn same_outcome(a: &Result<FileRead, SecretError>, b: &Result<FileRead, SecretError>) -> bool {
    match (a, b) {
        (Ok(a), Ok(b)) => {
            a.file == b.file && a.stamp == b.stamp && bool::from(a.digest.ct_eq(&b.digest))
        }
        (Err(a), Err(b)) => a == b,
        _ => false,
    }
}

/// One read of a secret file, normalised, with its digest; refuses system trees.
fn read_once(name: &str, path: &Path, max_size: u64) -> Result<FileRead, SecretError> {
    let (raw, file, stamp) =
        read_guarded(path, max_size, true).map_err(|f| f.into_secret_error(name, path))?;
    let value = strip_one_trailing_newline(&raw);
    if value.iter().all(u8::is_ascii_whitespace) {
        return Err(SecretError::Empty {
            name: name.to_string(),
            path: path.to_path_buf(),
        });
    }
    let digest = Digest::of(value);
    // Copy into an allocation of exactly the right size; `raw` is wiped when dropped.
    let value = SecretValue::new(Arc::from(name), Box::from(value));
    Ok(FileRead {
        value,
        digest,
        file,
        stamp,
    })
}

/// Reads at most `max_size` bytes from `path` through symlinks into a buffer that is wiped
/// on drop. Never opens a FIFO or device in a way that could block, never reads more than
/// `max_size + 1` bytes. Used for the vault config; secrets go through [`read_settled`].
pub(crate) fn read_bounded(path: &Path, max_size: u64) -> Result<Zeroizing<Vec<u8>>, FileFault> {
    read_guarded(path, max_size, false).map(|(bytes, _, _)| bytes)
}

/// [`read_bounded`], also returning the file's identity; with `refuse_system`, a path under
/// `/proc`, `/sys` or `/dev` (as written, through symlinks, or by the device actually
/// opened) is refused before a byte is read.
fn read_guarded(
    path: &Path,
    max_size: u64,
    refuse_system: bool,
) -> Result<(Zeroizing<Vec<u8>>, FileId, Stamp), FileFault> {
    if refuse_system {
        if let Some((root, resolved)) = refused_location(path) {
            return Err(FileFault::Refused { root, resolved });
        }
    }
    // Check the type before opening: opening a FIFO for reading would otherwise wait for
    // a writer forever.
    let meta = fs::metadata(path).map_err(|e| stat_fault(path, &e))?;
    check_regular(&meta.file_type())?;
    if meta.len() > max_size {
        return Err(FileFault::TooLarge { limit: max_size });
    }

    // O_NONBLOCK closes the window between the check above and this open (the path could be
    // swapped for a FIFO in between); on a regular file it changes nothing.
    let mut file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
        .map_err(|e| stat_fault(path, &e))?;
    // Check again what was actually opened.
    let meta = file.metadata().map_err(|e| unreadable(&e))?;
    check_regular(&meta.file_type())?;
    if refuse_system {
        let opened = refused_devices()
            .iter()
            .find(|(_, dev)| *dev == meta.dev())
            .map(|(root, _)| *root);
        if let Some(root) = opened {
            return Err(FileFault::Refused {
                root,
                resolved: None,
            });
        }
    }
    if meta.len() > max_size {
        return Err(FileFault::TooLarge { limit: max_size });
    }
    let bytes = read_capped(&mut file, meta.len(), max_size)?;
    Ok((bytes, FileId::of(&meta), Stamp::of(&meta)))
}

/// Reads into a buffer sized in advance, growing it by hand (copy, then wipe the old one)
/// so that no unwiped copy of the content is left behind by a reallocation.
fn read_capped(
    file: &mut File,
    size_hint: u64,
    max_size: u64,
) -> Result<Zeroizing<Vec<u8>>, FileFault> {
    let hard_limit = usize::try_from(max_size.saturating_add(1)).unwrap_or(usize::MAX);
    let first = usize::try_from(size_hint.saturating_add(1))
        .unwrap_or(usize::MAX)
        .min(hard_limit);
    let mut buf = Zeroizing::new(vec![0u8; first.max(1)]);
    let mut filled = 0usize;
    loop {
        if filled == buf.len() {
            if buf.len() >= hard_limit {
                // Read cap + 1 bytes: the file grew past the cap while we read it.
                return Err(FileFault::TooLarge { limit: max_size });
            }
            let bigger_len = buf.len().saturating_mul(2).min(hard_limit);
            let mut bigger = Zeroizing::new(vec![0u8; bigger_len]);
            bigger[..filled].copy_from_slice(&buf[..filled]);
            buf = bigger;
        }
        match file.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(unreadable(&e)),
        }
    }
    buf.truncate(filled);
    Ok(buf)
}

fn check_regular(ft: &fs::FileType) -> Result<(), FileFault> {
    if ft.is_file() {
        return Ok(());
    }
    let kind = if ft.is_dir() {
        "a directory"
    } else if ft.is_fifo() {
        "a FIFO"
    } else if ft.is_socket() {
        "a socket"
    } else if ft.is_char_device() {
        "a character device"
    } else if ft.is_block_device() {
        "a block device"
    } else {
        "something other than a file"
    };
    Err(FileFault::NotRegular { kind })
}

/// Maps a failed stat/open. "Not found" is told apart from a dangling symlink, which is
/// what a CSI mount shows when `..data` points at a directory that was removed.
fn stat_fault(path: &Path, err: &io::Error) -> FileFault {
    if err.kind() == io::ErrorKind::NotFound {
        let dangling = fs::symlink_metadata(path)
            .map(|m| m.file_type().is_symlink())
            .unwrap_or(false);
        FileFault::Missing { dangling }
    } else {
        unreadable(err)
    }
}

fn unreadable(err: &io::Error) -> FileFault {
    // The OS message ("Permission denied (os error 13)", "Not a directory (os error 20)")
    // never contains file content.
    FileFault::Unreadable {
        detail: err.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    fn read(path: &Path) -> Result<SecretValue, SecretError> {
        read_secret_file("s", path, 16)
    }

    #[test]
    fn reads_and_normalises_through_symlinks() {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir(dir.path().join("..ts1")).unwrap();
        fs::write(dir.path().join("..ts1/s"), b"value\r\n").unwrap();
        symlink("..ts1", dir.path().join("..data")).unwrap();
        symlink("..data/s", dir.path().join("s")).unwrap();
        let v = read(&dir.path().join("s")).unwrap();
        assert_eq!(v.expose_bytes(), b"value");
        assert_eq!(v.name(), "s");
    }

    #[test]
    fn size_cap_is_exact() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("s");
        fs::write(&p, [b'a'; 16]).unwrap();
        assert_eq!(read(&p).unwrap().len(), 16);
        fs::write(&p, [b'a'; 17]).unwrap();
        assert_eq!(read(&p).unwrap_err().reason(), "too_large");
        // A newline counts toward the file size: the cap is on the file, not the value.
        fs::write(&p, b"aaaaaaaaaaaaaaaa\n").unwrap();
        assert_eq!(read(&p).unwrap_err().reason(), "too_large");
    }

    #[test]
    fn read_capped_stops_at_cap_plus_one_even_if_size_hint_lies() {
        // Simulates a file that grows after stat: the hint says 1 byte, the file has 100.
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("s");
        fs::write(&p, [b'x'; 100]).unwrap();
        let mut f = File::open(&p).unwrap();
        assert_eq!(
            read_capped(&mut f, 1, 10).unwrap_err(),
            FileFault::TooLarge { limit: 10 }
        );
        let mut f = File::open(&p).unwrap();
        assert_eq!(read_capped(&mut f, 1, 100).unwrap().len(), 100);
    }

    #[test]
    fn empty_and_whitespace_only_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("s");
        for content in [&b""[..], b"\n", b"\r\n", b"  \t \n", b"\n\n"] {
            fs::write(&p, content).unwrap();
            assert_eq!(read(&p).unwrap_err().reason(), "empty", "{content:?}");
        }
    }

    #[test]
    fn faults_are_typed() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        assert_eq!(
            read(&d.join("nope")).unwrap_err(),
            SecretError::Missing {
                name: "s".into(),
                path: d.join("nope"),
                dangling: false
            }
        );
        symlink("..data/gone", d.join("dangling")).unwrap();
        assert!(matches!(
            read(&d.join("dangling")).unwrap_err(),
            SecretError::Missing { dangling: true, .. }
        ));
        fs::create_dir(d.join("dir")).unwrap();
        assert!(matches!(
            read(&d.join("dir")).unwrap_err(),
            SecretError::NotRegular {
                kind: "a directory",
                ..
            }
        ));
        fs::write(d.join("file"), b"x").unwrap();
        let err = read(&d.join("file/child")).unwrap_err();
        assert_eq!(err.reason(), "unreadable", "{err}");
        symlink("loop", d.join("loop")).unwrap();
        assert_eq!(read(&d.join("loop")).unwrap_err().reason(), "unreadable");
        // A device is never opened for reading (the vault config reader has no tree rule,
        // so it shows the type check).
        assert_eq!(
            read_bounded(Path::new("/dev/null"), 16).unwrap_err(),
            FileFault::NotRegular {
                kind: "a character device"
            }
        );
    }

    #[test]
    fn system_trees_are_refused_as_written_and_through_symlinks() {
        for written in [
            "/proc/self/environ",
            "//proc/self/environ",
            "/./proc/self/environ",
            "/sys/kernel/hostname",
            "/dev/null",
            "/dev/shm/s",
        ] {
            let err = read(Path::new(written)).unwrap_err();
            assert_eq!(err.reason(), "refused_path", "{written}: {err}");
            assert!(
                err.to_string()
                    .contains("secrets are never read from /proc, /sys or /dev"),
                "{err}"
            );
        }
        assert!(matches!(
            read(Path::new("/proc/self/environ")).unwrap_err(),
            SecretError::RefusedPath {
                root: "/proc",
                resolved: None,
                ..
            }
        ));
        // Look-alikes outside the trees are ordinary paths.
        assert_eq!(refused_root(Path::new("/procedures/s")), None);
        assert_eq!(refused_root(Path::new("/run/proc/s")), None);

        // A symlink (or the CSI `..data` chain) that leads into /proc is refused too.
        let dir = tempfile::tempdir().unwrap();
        symlink("/proc/self/environ", dir.path().join("env")).unwrap();
        symlink("env", dir.path().join("s")).unwrap();
        let err = read(&dir.path().join("s")).unwrap_err();
        assert_eq!(
            err,
            SecretError::RefusedPath {
                name: "s".into(),
                path: dir.path().join("s"),
                resolved: Some(PathBuf::from(format!(
                    "/proc/{}/environ",
                    std::process::id()
                ))),
                root: "/proc",
            }
        );
        assert!(err.to_string().contains("resolves to /proc/"), "{err}");
    }

    fn request<'a>(
        path: &'a Path,
        cached: Option<(&'a Digest, Option<FileId>)>,
    ) -> SettleRequest<'a> {
        SettleRequest {
            name: "s",
            path,
            cached,
        }
    }

    fn read_one(path: &Path) -> FileRead {
        read_once("s", path, 64).unwrap()
    }

    #[test]
    fn an_unchanged_value_is_one_read_and_a_new_file_needs_no_in_place_wait() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("s");
        fs::write(&p, b"old").unwrap();
        let cached = read_one(&p);
        // With an in-place wait far beyond the test's patience, both answers come at once.
        let rule = SettleRule {
            in_place: Duration::from_secs(600),
            gap: Duration::from_millis(1),
            limit: Duration::from_secs(1200),
        };
        let started = Instant::now();
        let same = read_settled(
            &[request(&p, Some((&cached.digest, Some(cached.file))))],
            64,
            rule,
        );
        assert_eq!(same[0].as_ref().unwrap().value.expose_bytes(), b"old");

        // A new file renamed over the old one, as the atomic writer does: two agreeing reads.
        fs::write(dir.path().join("s.new"), b"new").unwrap();
        fs::rename(dir.path().join("s.new"), &p).unwrap();
        let swapped = read_settled(
            &[request(&p, Some((&cached.digest, Some(cached.file))))],
            64,
            rule,
        );
        assert_eq!(swapped[0].as_ref().unwrap().value.expose_bytes(), b"new");
        assert!(started.elapsed() < Duration::from_secs(60));
    }

    #[test]
    fn a_value_changed_in_place_must_hold_still_for_the_settle_time() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("s");
        fs::write(&p, b"old").unwrap();
        let cached = read_one(&p);
        fs::write(&p, b"new").unwrap(); // same inode: truncated and rewritten in place
        assert_eq!(read_one(&p).file, cached.file);
        let rule = SettleRule::new(Duration::from_millis(40));
        let started = Instant::now();
        let out = read_settled(
            &[request(&p, Some((&cached.digest, Some(cached.file))))],
            64,
            rule,
        );
        assert_eq!(out[0].as_ref().unwrap().value.expose_bytes(), b"new");
        assert!(started.elapsed() >= Duration::from_millis(40));
    }

    #[test]
    fn a_file_that_never_holds_still_is_unsettled_within_the_limit() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("s");
        fs::write(&p, b"value-0").unwrap();
        let cached = read_one(&p);
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let writer = {
            let (p, stop) = (p.clone(), stop.clone());
            thread::spawn(move || {
                let mut n = 1u64;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    fs::write(&p, format!("value-{n}")).unwrap();
                    n += 1;
                    thread::sleep(Duration::from_micros(200));
                }
            })
        };
        let rule = SettleRule::new(Duration::from_millis(30));
        let started = Instant::now();
        let out = read_settled(
            &[request(&p, Some((&cached.digest, Some(cached.file))))],
            64,
            rule,
        );
        let took = started.elapsed();
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        writer.join().unwrap();
        // Bounded work: it gives up after the limit instead of chasing the writer forever.
        assert!(took < rule.limit + Duration::from_secs(2), "{took:?}");
        match &out[0] {
            Err(err) => assert!(matches!(err.reason(), "unsettled" | "empty"), "{err}"),
            // The writer may have been descheduled for the whole settle time; then the value
            // did hold still and was fairly adopted.
            Ok(read) => assert!(read.value.expose_bytes().starts_with(b"value-")),
        }
    }

    #[test]
    fn the_same_half_value_written_again_and_again_never_settles() {
        // An editor saving in place over and over writes the same first half each time:
        // two reads that agree on the content but not on the file's modification time
        // saw a writer at work in between, not a value holding still.
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("s");
        fs::write(&p, b"the-full-current-value").unwrap();
        let cached = read_one(&p);
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let writer = {
            let (p, stop) = (p.clone(), stop.clone());
            thread::spawn(move || {
                let started = Instant::now();
                // The same half-value, rewritten in place, for longer than the settle time…
                while started.elapsed() < Duration::from_millis(150) {
                    fs::write(&p, b"the-full-").unwrap();
                    thread::sleep(Duration::from_millis(3));
                }
                // …then the writer puts the whole value back.
                fs::write(&p, b"the-full-current-value").unwrap();
                stop.store(true, std::sync::atomic::Ordering::Relaxed);
            })
        };
        // Let the writer start before the first read.
        thread::sleep(Duration::from_millis(5));
        let rule = SettleRule::new(Duration::from_millis(40));
        let out = read_settled(
            &[request(&p, Some((&cached.digest, Some(cached.file))))],
            64,
            rule,
        );
        writer.join().unwrap();
        if let Ok(read) = &out[0] {
            assert_ne!(
                read.value.expose_bytes(),
                b"the-full-",
                "a half-value rewritten in place was adopted"
            );
        }
    }

    #[test]
    fn a_failed_first_read_is_returned_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("missing");
        let rule = SettleRule {
            in_place: Duration::from_secs(600),
            gap: Duration::from_secs(600),
            limit: Duration::from_secs(1200),
        };
        let out = read_settled(&[request(&p, None)], 64, rule);
        assert_eq!(out[0].as_ref().err().unwrap().reason(), "missing");
    }

    #[test]
    fn config_sized_reads_share_the_same_rules() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c.json");
        fs::write(&p, b"{}").unwrap();
        assert_eq!(&read_bounded(&p, 2).unwrap()[..], b"{}");
        assert_eq!(
            read_bounded(&p, 1).unwrap_err(),
            FileFault::TooLarge { limit: 1 }
        );
    }
}
