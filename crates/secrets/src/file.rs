//! Reading one secret file by the rules of SPEC 1.4: follow symlinks (the CSI layout is
//! symlinks by design, SPEC 1.5), refuse anything that is not a regular file without ever
//! blocking on it, never read more than the cap plus one byte, and turn every failure into
//! a typed error that cannot contain file content.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read};
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::Path;
use std::sync::Arc;

use zeroize::Zeroizing;

use crate::error::SecretError;
use crate::value::{strip_one_trailing_newline, SecretValue};

/// Default cap on a secret file: 64 KiB (SPEC 1.4). A Kubernetes Secret is at most 1 MiB
/// and real credentials are far smaller; the cap bounds memory per read.
pub const DEFAULT_MAX_FILE_SIZE: u64 = 64 * 1024;

/// Why a bounded read failed, before it is attached to a secret name (the vault config
/// file is read with the same function).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum FileFault {
    Missing { dangling: bool },
    TooLarge { limit: u64 },
    NotRegular { kind: &'static str },
    Unreadable { detail: String },
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
        }
    }

    pub(crate) fn describe(&self) -> String {
        match self {
            Self::Missing { dangling: false } => "file not found".to_string(),
            Self::Missing { dangling: true } => "file not found (dangling symlink)".to_string(),
            Self::TooLarge { limit } => format!("file is larger than the limit of {limit} bytes"),
            Self::NotRegular { kind } => format!("it is {kind}, not a regular file"),
            Self::Unreadable { detail } => detail.clone(),
        }
    }
}

/// Reads the secret `name` from `path` and normalises it (SPEC 1.4): one trailing `\n` or
/// `\r\n` is removed, every other byte is kept. An empty or whitespace-only result is an
/// error, never an empty secret.
///
/// This is what the resolver does on every (re)load; it is public so that a command such
/// as `fhirbox vault check` can apply exactly the same rules without starting a resolver.
pub fn read_secret_file(
    name: &str,
    path: &Path,
    max_size: u64,
) -> Result<SecretValue, SecretError> {
    let raw = read_bounded(path, max_size).map_err(|f| f.into_secret_error(name, path))?;
    let value = strip_one_trailing_newline(&raw);
    if value.iter().all(u8::is_ascii_whitespace) {
        return Err(SecretError::Empty {
            name: name.to_string(),
            path: path.to_path_buf(),
        });
    }
    // Copy into an allocation of exactly the right size; `raw` is wiped when dropped.
    Ok(SecretValue::new(Arc::from(name), Box::from(value)))
}

/// Reads at most `max_size` bytes from `path` through symlinks into a buffer that is wiped
/// on drop. Never opens a FIFO or device in a way that could block, never reads more than
/// `max_size + 1` bytes.
pub(crate) fn read_bounded(path: &Path, max_size: u64) -> Result<Zeroizing<Vec<u8>>, FileFault> {
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
    if meta.len() > max_size {
        return Err(FileFault::TooLarge { limit: max_size });
    }
    read_capped(&mut file, meta.len(), max_size)
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
        assert!(matches!(
            read(Path::new("/dev/null")).unwrap_err(),
            SecretError::NotRegular {
                kind: "a character device",
                ..
            }
        ));
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
