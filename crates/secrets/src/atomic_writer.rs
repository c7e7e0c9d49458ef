//! A replay of the Kubernetes atomic writer, the way the Secrets Store CSI Driver and ConfigMap
//! volumes update files (`pkg/volume/util/atomic_writer.go` in
//! https://github.com/kubernetes/kubernetes), for tests of anything that follows such a mount.
//! Enabled by the `test-support` feature.
//!
//! Layout it maintains under `root`:
//!
//! ```text
//! root/
//!   ..2026_05_01_12_00_00.483920117/client-secret   real file, mode 0644
//!   ..data -> ..2026_05_01_12_00_00.483920117      swapped by rename() on every write
//!   client-secret -> ..data/client-secret          created once, never rewritten
//! ```
//!
//! [`AtomicWriterDir::write`] performs the steps of `AtomicWriter.Write` in the same order
//! (step numbers are those of the Kubernetes source):
//! 4. compare with the current files; if nothing changed and nothing was dropped, touch
//!    nothing at all (no events, no mtime change);
//! 5. create a new timestamped directory `..<UTC time>.<digits>`, mode 0755;
//! 6. write each file into it, mode 0644;
//! 7. create the user-visible symlinks `name -> ..data/name` that do not exist yet (before
//!    the swap, so a new name dangles until step 9);
//! 8. create the symlink `..data_tmp -> <timestamped dir>`;
//! 9. `rename(..data_tmp, ..data)`, the atomic swap;
//! 10. remove the visible symlinks of names no longer in the payload (after the swap, so they
//!     dangle briefly);
//! 11. remove the old timestamped directory.
//!
//! No fsync is done, as in the original.

use std::collections::BTreeSet;
use std::fs::{self, DirBuilder, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{symlink, DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

const DATA_DIR: &str = "..data";
const DATA_TMP: &str = "..data_tmp";

/// Makes timestamped directory names unique within the process even within one
/// nanosecond-resolution clock tick; `create_dir` failing on a collision covers the rest.
static SEQUENCE: AtomicU64 = AtomicU64::new(0);

/// What a [`AtomicWriterDir::write`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteOutcome {
    /// Same content and same names: the disk was not touched (step 4).
    Unchanged,
    /// A new timestamped directory was swapped in.
    Swapped,
}

/// A directory written the way the Kubernetes atomic writer writes a secret volume.
#[derive(Debug, Clone)]
pub struct AtomicWriterDir {
    root: PathBuf,
}

impl AtomicWriterDir {
    /// Uses `root` as the volume directory, creating it if needed. Nothing is written until
    /// the first [`write`](Self::write).
    pub fn new(root: impl Into<PathBuf>) -> io::Result<Self> {
        let root = root.into();
        fs::create_dir_all(&root)?;
        Ok(Self { root })
    }

    /// The volume directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The user-visible path of `name` (`root/name`), the path a vault config names.
    pub fn path_of(&self, name: &str) -> PathBuf {
        self.root.join(name)
    }

    /// The timestamped directory `..data` points at now, if any.
    pub fn current_data_dir(&self) -> io::Result<Option<PathBuf>> {
        match fs::read_link(self.root.join(DATA_DIR)) {
            Ok(target) => Ok(Some(self.root.join(target))),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Replaces the whole payload with `files` (name, content), as one atomic swap.
    /// Names absent from `files` disappear from the volume. Identical content is not
    /// rewritten, like the real writer.
    ///
    /// Names must be a single path component, not empty, not starting with `..`.
    pub fn write(&self, files: &[(&str, &[u8])]) -> io::Result<WriteOutcome> {
        self.write_inner(files, false)
    }

    /// Like [`write`](Self::write) but swaps in a new timestamped directory even when the
    /// content is identical: what a writer without step 4 would do. Useful to prove that a
    /// reader does not count a swap with identical content as a rotation.
    pub fn write_even_if_unchanged(&self, files: &[(&str, &[u8])]) -> io::Result<()> {
        self.write_inner(files, true).map(|_| ())
    }

    fn write_inner(&self, files: &[(&str, &[u8])], force: bool) -> io::Result<WriteOutcome> {
        // Step 1: validate the payload.
        let mut names = BTreeSet::new();
        for (name, _) in files {
            validate_name(name)?;
            if !names.insert(*name) {
                return Err(invalid(format!("file name {name:?} given twice")));
            }
        }

        // Steps 2-3: what is there now, and which visible names will be dropped.
        let old_dir = self.current_data_dir()?;
        let old_names = match &old_dir {
            Some(dir) => list_names(dir)?,
            None => BTreeSet::new(),
        };
        let dropped: Vec<&String> = old_names
            .iter()
            .filter(|n| !names.contains(n.as_str()))
            .collect();

        // Step 4: byte-compare; an unchanged payload leaves the disk untouched.
        if !force && dropped.is_empty() {
            if let Some(dir) = &old_dir {
                let same = files.iter().all(|(name, content)| {
                    fs::read(dir.join(name)).is_ok_and(|old| old == *content)
                });
                if same {
                    return Ok(WriteOutcome::Unchanged);
                }
            }
        }

        // Step 5: new timestamped directory.
        let ts_name = self.create_timestamp_dir()?;
        let ts_dir = self.root.join(&ts_name);

        // Step 6: the files, mode 0644 regardless of umask.
        for (name, content) in files {
            let path = ts_dir.join(name);
            let mut f = OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o644)
                .open(&path)?;
            f.write_all(content)?;
            fs::set_permissions(&path, fs::Permissions::from_mode(0o644))?;
        }

        // Step 7: visible symlinks that are missing, before the swap.
        for name in &names {
            let visible = self.root.join(name);
            match fs::symlink_metadata(&visible) {
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    symlink(Path::new(DATA_DIR).join(name), &visible)?;
                }
                Err(e) => return Err(e),
            }
        }

        // Step 8: `..data_tmp -> <ts>` (relative). A leftover from a crashed writer is replaced.
        let tmp = self.root.join(DATA_TMP);
        match fs::remove_file(&tmp) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        symlink(&ts_name, &tmp)?;

        // Step 9: the atomic swap.
        fs::rename(&tmp, self.root.join(DATA_DIR))?;

        // Step 10: visible links of dropped names, after the swap.
        for name in dropped {
            match fs::remove_file(self.root.join(name)) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
        }

        // Step 11: the old timestamped directory.
        if let Some(old) = old_dir {
            if old != ts_dir {
                fs::remove_dir_all(old)?;
            }
        }
        Ok(WriteOutcome::Swapped)
    }

    /// `..YYYY_MM_DD_HH_MM_SS.<digits>` in UTC, like Go's
    /// `MkdirTemp(dir, now.UTC().Format("..2006_01_02_15_04_05."))`, then chmod 0755.
    fn create_timestamp_dir(&self) -> io::Result<String> {
        loop {
            let now = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap_or_default();
            let seq = SEQUENCE.fetch_add(1, Ordering::Relaxed);
            let name = format!(
                "..{}.{:09}{}",
                utc_stamp(now.as_secs()),
                now.subsec_nanos(),
                seq
            );
            match DirBuilder::new().mode(0o755).create(self.root.join(&name)) {
                Ok(()) => {
                    fs::set_permissions(self.root.join(&name), fs::Permissions::from_mode(0o755))?;
                    return Ok(name);
                }
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(e),
            }
        }
    }
}

fn validate_name(name: &str) -> io::Result<()> {
    if name.is_empty()
        || name == "."
        || name.starts_with("..")
        || name.contains('/')
        || name.contains('\0')
    {
        return Err(invalid(format!(
            "file name {name:?} must be one path component, not empty, not starting with \"..\""
        )));
    }
    Ok(())
}

fn invalid(message: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, message)
}

fn list_names(dir: &Path) -> io::Result<BTreeSet<String>> {
    let mut names = BTreeSet::new();
    for entry in fs::read_dir(dir)? {
        names.insert(entry?.file_name().to_string_lossy().into_owned());
    }
    Ok(names)
}

/// `YYYY_MM_DD_HH_MM_SS` for a Unix time in UTC (proleptic Gregorian calendar).
fn utc_stamp(unix_secs: u64) -> String {
    let days = i64::try_from(unix_secs / 86_400).unwrap_or(i64::MAX);
    let secs = unix_secs % 86_400;
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}_{m:02}_{d:02}_{:02}_{:02}_{:02}",
        secs / 3600,
        secs % 3600 / 60,
        secs % 60
    )
}

/// Days since 1970-01-01 to (year, month, day), after Howard Hinnant's published
/// `civil_from_days` algorithm (eras of 400 years).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097); // day of era, 0..=146096
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365; // 0..=399
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100); // 0..=365
    let mp = (5 * doy + 2) / 153; // March-based month, 0..=11
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month as u32, day as u32)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn utc_stamps() {
        assert_eq!(utc_stamp(0), "1970_01_01_00_00_00");
        assert_eq!(utc_stamp(951_782_400), "2000_02_29_00_00_00");
        assert_eq!(utc_stamp(1_777_636_800), "2026_05_01_12_00_00");
        assert_eq!(utc_stamp(4_107_542_399), "2100_02_28_23_59_59");
    }

    #[test]
    fn builds_the_csi_layout_and_swaps_it() {
        let tmp = tempfile::tempdir().unwrap();
        let w = AtomicWriterDir::new(tmp.path().join("mount")).unwrap();
        assert_eq!(
            w.write(&[("client-secret", b"v1"), ("other", b"o")])
                .unwrap(),
            WriteOutcome::Swapped
        );
        let first = w.current_data_dir().unwrap().unwrap();
        let first_name = first.file_name().unwrap().to_str().unwrap().to_string();
        assert!(
            first_name.starts_with("..") && first_name.len() > "..2026_05_01_12_00_00.".len(),
            "{first_name}"
        );
        assert_eq!(
            fs::read_link(w.path_of("client-secret")).unwrap(),
            Path::new("..data/client-secret")
        );
        assert_eq!(
            fs::read_link(w.root().join("..data")).unwrap(),
            Path::new(&first_name)
        );
        assert_eq!(fs::read(w.path_of("client-secret")).unwrap(), b"v1");
        assert_eq!(
            fs::metadata(first.join("client-secret")).unwrap().mode() & 0o777,
            0o644
        );
        assert_eq!(fs::metadata(&first).unwrap().mode() & 0o777, 0o755);
        let link_ino = fs::symlink_metadata(w.path_of("client-secret"))
            .unwrap()
            .ino();

        // Rotation: new directory, same visible link, old directory gone, no ..data_tmp left.
        assert_eq!(
            w.write(&[("client-secret", b"v2"), ("other", b"o")])
                .unwrap(),
            WriteOutcome::Swapped
        );
        let second = w.current_data_dir().unwrap().unwrap();
        assert_ne!(
            first, second,
            "timestamped names are unique even within one second"
        );
        assert!(!first.exists());
        assert!(!w.root().join("..data_tmp").exists());
        assert_eq!(fs::read(w.path_of("client-secret")).unwrap(), b"v2");
        assert_eq!(
            fs::symlink_metadata(w.path_of("client-secret"))
                .unwrap()
                .ino(),
            link_ino,
            "visible link never rewritten"
        );

        // Identical payload: nothing touched.
        assert_eq!(
            w.write(&[("client-secret", b"v2"), ("other", b"o")])
                .unwrap(),
            WriteOutcome::Unchanged
        );
        assert_eq!(w.current_data_dir().unwrap().unwrap(), second);
        w.write_even_if_unchanged(&[("client-secret", b"v2"), ("other", b"o")])
            .unwrap();
        assert_ne!(w.current_data_dir().unwrap().unwrap(), second);

        // Dropping a name removes its visible link.
        w.write(&[("client-secret", b"v2")]).unwrap();
        assert!(fs::symlink_metadata(w.path_of("other")).is_err());
        let entries: BTreeSet<String> = list_names(w.root()).unwrap();
        assert_eq!(
            entries.len(),
            3,
            "{entries:?}: ..data, one timestamped dir, one link"
        );
    }

    #[test]
    fn many_writes_in_one_second_get_distinct_directories() {
        let tmp = tempfile::tempdir().unwrap();
        let w = AtomicWriterDir::new(tmp.path()).unwrap();
        let mut seen = BTreeSet::new();
        for i in 0..50 {
            w.write(&[("s", format!("v{i}").as_bytes())]).unwrap();
            assert!(seen.insert(w.current_data_dir().unwrap().unwrap()));
            assert_eq!(
                fs::read(w.path_of("s")).unwrap(),
                format!("v{i}").as_bytes()
            );
        }
    }

    #[test]
    fn rejects_bad_names() {
        let tmp = tempfile::tempdir().unwrap();
        let w = AtomicWriterDir::new(tmp.path()).unwrap();
        for bad in ["", ".", "..data", "..x", "a/b", "a\0b"] {
            assert_eq!(
                w.write(&[(bad, b"x")]).unwrap_err().kind(),
                io::ErrorKind::InvalidInput,
                "{bad:?}"
            );
        }
        assert!(w.write(&[("a", b"1"), ("a", b"2")]).is_err());
    }
}
