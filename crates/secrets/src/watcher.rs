//! The directory watcher. It only signals: any event in a watched directory means
//! "re-read everything and compare", whatever its kind (docs/external-secrets.md, "Reading,
//! caching and rotation"; event kinds differ between notify versions and debouncers). It
//! watches the directories holding the config and the secrets' visible paths, never the
//! files, because the Kubernetes atomic writer swaps `..data` by rename and deletes the old
//! files, which kills any watch on a file (`pkg/volume/util/atomic_writer.go` in
//! https://github.com/kubernetes/kubernetes).

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::time::{Duration, Instant};

use notify::event::{AccessKind, AccessMode};
use notify::{EventKind, RecommendedWatcher, RecursiveMode, Watcher};

/// What the worker thread has been asked to do since it last looked.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Flags {
    /// Something may have changed: re-read everything.
    pub(crate) changed: bool,
    /// Watches may be lost (queue overflow, watcher error): re-arm them all, then re-read.
    pub(crate) rearm: bool,
    /// The resolver is gone: exit.
    pub(crate) stop: bool,
}

/// A flag set shared by the event callback, the resolver and the worker thread.
#[derive(Debug, Default)]
pub(crate) struct Signal {
    flags: Mutex<Flags>,
    cv: Condvar,
}

impl Signal {
    pub(crate) fn changed(&self) {
        self.update(|f| f.changed = true);
    }

    pub(crate) fn rearm(&self) {
        self.update(|f| {
            f.rearm = true;
            f.changed = true;
        });
    }

    pub(crate) fn stop(&self) {
        self.update(|f| f.stop = true);
    }

    fn update(&self, set: impl FnOnce(&mut Flags)) {
        let mut flags = self.flags.lock().unwrap_or_else(PoisonError::into_inner);
        set(&mut flags);
        self.cv.notify_all();
    }

    /// Waits until something is signalled or `timeout` passes; returns the flags and clears
    /// `changed`/`rearm` (`stop` stays set).
    pub(crate) fn wait(&self, timeout: Duration) -> Flags {
        let deadline = saturating_add(Instant::now(), timeout);
        let mut flags = self.flags.lock().unwrap_or_else(PoisonError::into_inner);
        loop {
            if flags.changed || flags.stop {
                break;
            }
            let now = Instant::now();
            if now >= deadline {
                break;
            }
            flags = self
                .cv
                .wait_timeout(flags, deadline - now)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
        let seen = *flags;
        flags.changed = false;
        flags.rearm = false;
        seen
    }
}

/// Opening or reading a file is reported by inotify on the directory too. Our own reads
/// would wake us up forever if these counted as changes, and a read never changes content;
/// every other kind (including `Other`, `Any` and close-after-write) does count.
fn is_read_only_access(kind: &EventKind) -> bool {
    matches!(
        kind,
        EventKind::Access(
            AccessKind::Open(_) | AccessKind::Read | AccessKind::Close(AccessMode::Read)
        )
    )
}

/// `at + d`, or a point a century away when that overflows: durations come from config
/// (`rotation_grace: "1000000y"` parses) and must never panic.
pub(crate) fn saturating_add(at: Instant, d: Duration) -> Instant {
    at.checked_add(d)
        .or_else(|| at.checked_add(Duration::from_secs(100 * 365 * 86_400)))
        .unwrap_or(at)
}

/// What one watcher callback asks of the reload thread.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Reaction {
    /// A read by someone (often us): nothing can have changed.
    Ignore,
    /// Re-read everything and compare.
    Reload,
    /// Watches may be dead or events lost: re-arm every watch, then re-read everything.
    Rearm,
}

/// Maps a watcher callback to a reaction, deliberately without looking at what kind of
/// change it was (docs/external-secrets.md, "Reading, caching and rotation"; kinds differ
/// between notify versions and debouncers).
pub(crate) fn reaction(
    res: &notify::Result<notify::Event>,
    watched: &BTreeSet<PathBuf>,
) -> Reaction {
    match res {
        // Queue overflow arrives as an event with the Rescan flag: events were lost.
        Ok(event) if event.need_rescan() => Reaction::Rearm,
        Ok(event) if is_read_only_access(&event.kind) => Reaction::Ignore,
        // An event about a watched directory itself (deleted, moved away) means its watch is
        // dead or about to be. The inode number cannot tell: a directory recreated at once
        // often gets the freed inode back.
        Ok(event) if event.paths.iter().any(|p| watched.contains(p)) => Reaction::Rearm,
        Ok(_) => Reaction::Reload,
        Err(_) => Reaction::Rearm,
    }
}

/// (device, inode) of a directory: tells a directory apart from one deleted and recreated
/// under the same path, whose old watch is dead.
type DirId = (u64, u64);

fn dir_id(dir: &Path) -> Option<DirId> {
    fs::metadata(dir)
        .ok()
        .filter(|m| m.is_dir())
        .map(|m| (m.dev(), m.ino()))
}

/// Non-recursive inotify watches on a set of directories, re-armed when the set changes or a
/// directory is replaced.
pub(crate) struct DirWatcher {
    watcher: RecommendedWatcher,
    /// Directory -> identity of the directory the live watch is on; `None` while it could not
    /// be armed (directory missing, inotify limits). The poll covers it meanwhile.
    armed: BTreeMap<PathBuf, Option<DirId>>,
    /// The armed directories, shared with the event callback.
    shared: Arc<Mutex<BTreeSet<PathBuf>>>,
}

impl DirWatcher {
    pub(crate) fn new(signal: Arc<Signal>) -> notify::Result<Self> {
        let shared = Arc::new(Mutex::new(BTreeSet::<PathBuf>::new()));
        let dirs = shared.clone();
        let handler = move |res: notify::Result<notify::Event>| {
            let watched = dirs.lock().unwrap_or_else(PoisonError::into_inner);
            match reaction(&res, &watched) {
                Reaction::Ignore => {}
                Reaction::Reload => signal.changed(),
                Reaction::Rearm => signal.rearm(),
            }
        };
        Ok(Self {
            watcher: RecommendedWatcher::new(handler, notify::Config::default())?,
            armed: BTreeMap::new(),
            shared,
        })
    }

    /// True while some wanted directory has no live watch (it does not exist yet, or the
    /// watch failed): the caller retries [`sync`](Self::sync) soon rather than at the poll.
    pub(crate) fn has_pending(&self) -> bool {
        self.armed.values().any(Option::is_none)
    }

    /// Makes the watched set equal to `wanted`. `force` re-arms every watch (after an
    /// overflow or a watcher error). Returns true when a watch was newly armed: files in that
    /// directory may have changed while nothing watched it, so the caller should re-read.
    pub(crate) fn sync(&mut self, wanted: &BTreeSet<PathBuf>, force: bool) -> bool {
        let unwanted: Vec<PathBuf> = self
            .armed
            .keys()
            .filter(|dir| !wanted.contains(*dir))
            .cloned()
            .collect();
        for dir in unwanted {
            // Fails harmlessly when the kernel already dropped the watch (directory deleted).
            let _ = self.watcher.unwatch(&dir);
            self.armed.remove(&dir);
        }

        let mut armed_any = false;
        for dir in wanted {
            let now = dir_id(dir);
            let before = self.armed.get(dir).copied();
            if !force && matches!(before, Some(Some(id)) if Some(id) == now) {
                continue;
            }
            if before.is_some() {
                let _ = self.watcher.unwatch(dir);
            }
            let Some(id) = now else {
                if before != Some(None) {
                    tracing::debug!(dir = %dir.display(), "directory to watch does not exist yet; relying on the poll until it does");
                }
                self.armed.insert(dir.clone(), None);
                continue;
            };
            match self.watcher.watch(dir, RecursiveMode::NonRecursive) {
                Ok(()) => {
                    if matches!(before, Some(Some(_))) {
                        tracing::debug!(dir = %dir.display(), "directory watch re-armed");
                    }
                    self.armed.insert(dir.clone(), Some(id));
                    armed_any = true;
                }
                Err(err) => {
                    if before != Some(None) {
                        tracing::warn!(dir = %dir.display(), error = %err, "cannot watch directory; relying on the poll");
                    }
                    self.armed.insert(dir.clone(), None);
                }
            }
        }
        *self.shared.lock().unwrap_or_else(PoisonError::into_inner) = self
            .armed
            .iter()
            .filter(|(_, id)| id.is_some())
            .map(|(dir, _)| dir.clone())
            .collect();
        armed_any
    }

    #[cfg(test)]
    pub(crate) fn armed_dirs(&self) -> Vec<PathBuf> {
        self.armed
            .iter()
            .filter(|(_, id)| id.is_some())
            .map(|(dir, _)| dir.clone())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fhirbox_test_support::wait_until;

    fn wait_for_change(signal: &Signal, within: Duration) -> bool {
        wait_until(within, || signal.wait(Duration::from_millis(50)).changed)
    }

    #[test]
    fn huge_durations_do_not_overflow() {
        let now = Instant::now();
        assert!(saturating_add(now, Duration::MAX) > now + Duration::from_secs(86_400 * 365));
        assert_eq!(
            saturating_add(now, Duration::from_secs(1)),
            now + Duration::from_secs(1)
        );
        let s = Signal::default();
        s.changed();
        assert!(s.wait(Duration::MAX).changed);
    }

    #[test]
    fn signal_wait_times_out_and_clears() {
        let s = Signal::default();
        let t = Instant::now();
        assert_eq!(s.wait(Duration::from_millis(30)), Flags::default());
        assert!(t.elapsed() >= Duration::from_millis(30));
        s.rearm();
        let f = s.wait(Duration::from_secs(5));
        assert!(f.changed && f.rearm && !f.stop);
        assert_eq!(s.wait(Duration::ZERO), Flags::default());
        s.stop();
        assert!(s.wait(Duration::from_secs(5)).stop);
        assert!(s.wait(Duration::from_secs(5)).stop, "stop is sticky");
    }

    #[test]
    fn any_event_kind_on_dot_data_means_reload() {
        use notify::event::{CreateKind, Flag, ModifyKind, RemoveKind, RenameMode};
        use notify::Event;
        let watched: BTreeSet<PathBuf> = [PathBuf::from("/run/vault-secrets")].into();
        let data = PathBuf::from("/run/vault-secrets/..data");
        let ev = |kind| Ok(Event::new(kind).add_path(data.clone()));
        // What notify 8 and debouncer-full report for the swap, and kinds we have never seen.
        for kind in [
            EventKind::Create(CreateKind::File),
            EventKind::Create(CreateKind::Folder),
            EventKind::Modify(ModifyKind::Name(RenameMode::To)),
            EventKind::Modify(ModifyKind::Name(RenameMode::Both)),
            EventKind::Remove(RemoveKind::Folder),
            EventKind::Access(AccessKind::Close(AccessMode::Write)),
            EventKind::Any,
            EventKind::Other,
        ] {
            assert_eq!(reaction(&ev(kind), &watched), Reaction::Reload, "{kind:?}");
        }
        assert_eq!(
            reaction(
                &ev(EventKind::Access(AccessKind::Open(AccessMode::Any))),
                &watched
            ),
            Reaction::Ignore
        );
        let overflow = Ok(Event::new(EventKind::Other).set_flag(Flag::Rescan));
        assert_eq!(reaction(&overflow, &watched), Reaction::Rearm);
        assert_eq!(
            reaction(&Err(notify::Error::generic("boom")), &watched),
            Reaction::Rearm
        );
        let dir_gone = Ok(Event::new(EventKind::Remove(RemoveKind::Folder))
            .add_path(PathBuf::from("/run/vault-secrets")));
        assert_eq!(reaction(&dir_gone, &watched), Reaction::Rearm);
    }

    #[test]
    fn read_only_access_is_not_a_change() {
        use notify::event::{CreateKind, ModifyKind, RenameMode};
        assert!(is_read_only_access(&EventKind::Access(AccessKind::Open(
            AccessMode::Any
        ))));
        assert!(is_read_only_access(&EventKind::Access(AccessKind::Close(
            AccessMode::Read
        ))));
        assert!(!is_read_only_access(&EventKind::Access(AccessKind::Close(
            AccessMode::Write
        ))));
        assert!(!is_read_only_access(&EventKind::Create(CreateKind::File)));
        assert!(!is_read_only_access(&EventKind::Modify(ModifyKind::Name(
            RenameMode::To
        ))));
        assert!(!is_read_only_access(&EventKind::Any));
        assert!(!is_read_only_access(&EventKind::Other));
    }

    #[test]
    fn rearms_a_directory_that_was_deleted_and_recreated() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("mount");
        fs::create_dir(&dir).unwrap();
        let signal = Arc::new(Signal::default());
        let mut w = DirWatcher::new(signal.clone()).unwrap();
        let wanted: BTreeSet<PathBuf> = [dir.clone(), tmp.path().join("not-yet")].into();
        assert!(w.sync(&wanted, false));
        assert_eq!(w.armed_dirs(), vec![dir.clone()]);
        assert!(!w.sync(&wanted, false), "nothing to do the second time");

        fs::write(dir.join("a"), b"1").unwrap();
        assert!(wait_for_change(&signal, Duration::from_secs(5)));

        // Deleting the watched directory itself asks for a re-arm (its watch is dead).
        fs::remove_dir_all(&dir).unwrap();
        assert!(
            wait_until(Duration::from_secs(5), || signal
                .wait(Duration::from_millis(50))
                .rearm),
            "deleting a watched directory must request a re-arm"
        );
        assert!(
            !w.sync(&wanted, true),
            "nothing to arm while the directory is gone"
        );
        assert!(w.has_pending());
        fs::create_dir(&dir).unwrap();
        assert!(w.sync(&wanted, false), "a recreated directory is re-armed");
        while signal.wait(Duration::from_millis(50)).changed {}
        fs::write(dir.join("b"), b"2").unwrap();
        assert!(
            wait_for_change(&signal, Duration::from_secs(5)),
            "the new watch delivers events"
        );

        fs::create_dir(tmp.path().join("not-yet")).unwrap();
        assert!(
            w.sync(&wanted, false),
            "a directory that appears later gets armed"
        );
        assert_eq!(w.armed_dirs().len(), 2);
        assert!(!w.has_pending());
        let fewer: BTreeSet<PathBuf> = [dir.clone()].into();
        assert!(!w.sync(&fewer, false));
        assert_eq!(w.armed_dirs(), vec![dir]);
    }
}
