//! The portable backend: the `notify` crate (inotify on Linux). It sees what changed, never who
//! changed it, so its events carry no process.

use std::path::PathBuf;
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, sync_channel};

use bannin::event::FileAction;
use notify::event::{AccessKind, AccessMode, CreateKind, ModifyKind, RemoveKind, RenameMode};
use notify::{Config, EventKind, RecommendedWatcher, RecursiveMode, Watcher};
use tokio::time::Duration;

use super::observe::{Observer, Scope};
use crate::sensors::Stop;

/// With a rename waiting for its second half, how long a quiet wait lasts before the rename is
/// settled without it. With nothing waiting the loop sleeps until an event or the stop comes.
const TICK: Duration = Duration::from_millis(100);

/// When a new directory is walked again after it was first seen: notify tells of the directory
/// before it adds its watch, so a file made in between is in neither the first walk nor an event.
const NEW_DIR_AGAIN: [Duration; 2] = [Duration::from_millis(250), Duration::from_secs(2)];
/// New directories waiting for those walks; past this many, the watched trees are rescanned instead.
const NEW_DIR_PENDING: usize = 10_000;

/// New directories to walk again, each when due.
#[derive(Default)]
struct NewDirs {
    due: std::collections::VecDeque<(std::time::Instant, PathBuf)>,
}

impl NewDirs {
    fn push(&mut self, observer: &mut Observer, dir: &std::path::Path) {
        if self.due.len() + NEW_DIR_AGAIN.len() > NEW_DIR_PENDING {
            self.due.clear();
            observer.overflow(
                "too many new directories at once to walk each again after its watch was added; rescanning the watched trees",
                None,
            );
            return;
        }
        #[expect(
            clippy::disallowed_methods,
            reason = "the notify backend runs on its own thread, outside the runtime's clock"
        )]
        let now = std::time::Instant::now();
        for after in NEW_DIR_AGAIN {
            self.due.push_back((now + after, dir.to_path_buf()));
        }
    }

    /// When the next walk is due.
    fn next_due(&self) -> Option<std::time::Instant> {
        self.due.iter().map(|(when, _)| *when).min()
    }

    /// Walks the directories whose time has come; files already known are not reported again.
    fn walk_due(&mut self, observer: &mut Observer) {
        #[expect(
            clippy::disallowed_methods,
            reason = "the notify backend runs on its own thread, outside the runtime's clock"
        )]
        let now = std::time::Instant::now();
        // Pushed in batches with the same offsets, so the queue is not sorted by time: take
        // every due entry, keep the rest in order.
        let mut later = std::collections::VecDeque::with_capacity(self.due.len());
        for (when, dir) in self.due.drain(..) {
            if when <= now {
                if is_real_dir(&dir) {
                    observer.dir_created(&dir, None);
                }
            } else {
                later.push_back((when, dir));
            }
        }
        self.due = later;
    }
}

pub struct NotifyBackend {
    watcher: RecommendedWatcher,
    /// The watcher's events; `None` is the stop waking the loop.
    raw: Receiver<Option<notify::Result<notify::Event>>>,
    wake: SyncSender<Option<notify::Result<notify::Event>>>,
}

/// Starts the watcher on every root; the roots it could not watch come back with why.
pub fn open(
    scope: &Scope,
    capacity: usize,
) -> Result<(NotifyBackend, Vec<(PathBuf, String)>), notify::Error> {
    let (raw_tx, raw) = sync_channel(capacity.max(1));
    let wake = raw_tx.clone();
    let handler = move |event| forward(&raw_tx, event);
    // A symlink in a watched tree (`link -> /usr`, `loop -> ..`) must never add watches outside
    // it: the tree is watched as it is on disk, links are files.
    let mut watcher =
        RecommendedWatcher::new(handler, Config::default().with_follow_symlinks(false))?;
    let mut failed = Vec::new();
    for root in scope.roots() {
        if let Err(error) = watcher.watch(root, RecursiveMode::Recursive) {
            failed.push((root.clone(), describe(&error)));
        }
    }
    Ok((NotifyBackend { watcher, raw, wake }, failed))
}

/// Waits while the translator is behind: the kernel queue then fills and reports its own
/// overflow, which the translator turns into `sensor.overflow`, rather than losing events here
/// silently.
fn forward(
    raw_tx: &SyncSender<Option<notify::Result<notify::Event>>>,
    event: notify::Result<notify::Event>,
) {
    let _ = raw_tx.send(Some(event));
}

fn describe(error: &notify::Error) -> String {
    match error.kind {
        notify::ErrorKind::MaxFilesWatch => {
            "inotify watch limit reached (raise fs.inotify.max_user_watches); part of the tree is not watched"
                .to_string()
        }
        _ => error.to_string(),
    }
}

/// Events taken from the watcher's queue per round at most.
const ROUND: usize = 256;
/// After a round, how long the watcher's queue gathers before the next (see the fanotify
/// backend's `GATHER`); the queue holds [`QUEUE`] events, far more than arrive meanwhile.
const GATHER: Duration = Duration::from_millis(2);
/// Rounds of fewer events than this are followed by a [`GATHER`].
const GATHER_BELOW: usize = 64;

pub fn run(backend: NotifyBackend, mut observer: Observer, stop: Stop) {
    let NotifyBackend { watcher, raw, wake } = backend;
    // A full queue needs no wake: the loop is busy and looks at the flag between rounds.
    stop.on_set(move || {
        let _ = wake.try_send(None);
    });
    let mut translator = Translator::default();
    let mut new_dirs = NewDirs::default();
    while !stop.is_set() && !observer.closed() {
        observer.end_round();
        // Work due without new events: a rename's lone half, an owed rescan, new directories to
        // walk again (no event waits for its process: this backend names none). Nothing due:
        // asleep until an event or the stop comes.
        #[expect(
            clippy::disallowed_methods,
            reason = "the notify backend runs on its own thread, outside the runtime's clock"
        )]
        let now = std::time::Instant::now();
        let duty = [
            (translator.pending() || observer.rescan_owed()).then_some(TICK),
            new_dirs
                .next_due()
                .map(|due| due.saturating_duration_since(now)),
        ]
        .into_iter()
        .flatten()
        .min();
        let linger = observer.linger_left();
        let (wait, linger_only) = match (duty, linger) {
            (Some(duty), Some(linger)) if linger < duty => (Some(linger), true),
            (None, Some(linger)) => (Some(linger), true),
            (duty, _) => (duty, false),
        };
        let received = match wait {
            Some(wait) => raw.recv_timeout(wait),
            None => raw.recv().map_err(|_| RecvTimeoutError::Disconnected),
        };
        let (mut actions, mut taken) = match received {
            Ok(Some(event)) => (translator.translate(event), 1),
            Ok(None) => continue,
            // Only the outbox's linger was over: hand it over, then wait again.
            Err(RecvTimeoutError::Timeout) if linger_only => continue,
            Err(RecvTimeoutError::Timeout) => (translator.flush(), 0),
            Err(RecvTimeoutError::Disconnected) => break,
        };
        observer.begin_round();
        // What else is queued already is handled in the same round.
        while taken <= ROUND {
            match raw.try_recv() {
                Ok(Some(event)) => actions.extend(translator.translate(event)),
                Ok(None) | Err(_) => break,
            }
            taken += 1;
        }
        for action in actions {
            if let Action::DirCreated(dir) | Action::Rename { to: dir, .. } = &action
                && is_real_dir(dir)
                && observer.scope().contains(dir)
            {
                new_dirs.push(&mut observer, dir);
            }
            apply(&mut observer, action);
        }
        new_dirs.walk_due(&mut observer);
        observer.rescan_if_due();
        // A burst the sensor keeps up with: let the next round gather rather than wake for
        // every event. A sensor behind (a large round) goes straight on.
        if (1..GATHER_BELOW).contains(&taken) {
            #[expect(
                clippy::disallowed_methods,
                reason = "the notify backend runs on its own thread, never a runtime worker"
            )]
            std::thread::sleep(GATHER);
        }
    }
    // The receiver goes first so a handler blocked on a full channel wakes up and the watcher
    // thread can shut down.
    drop(raw);
    drop(watcher);
}

/// What a notify event means for the sensor.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    Create(PathBuf),
    Write(PathBuf),
    /// Data changed and the file is still open: only a shrink (truncate) is reported.
    Modified(PathBuf),
    Delete(PathBuf),
    /// `from` is `None` when the file moved in from outside the watched trees.
    Rename {
        from: Option<PathBuf>,
        to: PathBuf,
    },
    DirCreated(PathBuf),
    DirDeleted(PathBuf),
    Overflow,
    Error {
        message: String,
        path: PathBuf,
    },
}

/// Turns notify's events into [`Action`]s, pairing the two halves of a rename.
#[derive(Default)]
pub struct Translator {
    /// The first half of a rename, waiting for its second.
    pending_from: Option<(Option<usize>, PathBuf)>,
    /// The last pair emitted from a `To`, so notify's trailing `Both` is not reported twice.
    last_pair: Option<(PathBuf, PathBuf)>,
}

impl Translator {
    /// A rename's first half with no second: the file left the watched trees, which for the
    /// trees is a delete.
    /// Whether the first half of a rename waits for its second.
    pub fn pending(&self) -> bool {
        self.pending_from.is_some()
    }

    pub fn flush(&mut self) -> Vec<Action> {
        self.pending_from
            .take()
            .map(|(_, path)| Action::Delete(path))
            .into_iter()
            .collect()
    }

    pub fn translate(&mut self, event: notify::Result<notify::Event>) -> Vec<Action> {
        let event = match event {
            Ok(event) => event,
            Err(error) => {
                let mut actions = self.flush();
                actions.push(Action::Error {
                    message: describe(&error),
                    path: error.paths.first().cloned().unwrap_or_default(),
                });
                return actions;
            }
        };
        if event.need_rescan() {
            let mut actions = self.flush();
            actions.push(Action::Overflow);
            return actions;
        }
        let tracker = event.tracker();
        let mut paths = event.paths.into_iter();
        let Some(path) = paths.next() else {
            return Vec::new();
        };
        if let EventKind::Modify(ModifyKind::Name(RenameMode::To)) = event.kind {
            let from = match self.pending_from.take() {
                Some((from_tracker, from)) if from_tracker == tracker => Some(from),
                Some(other) => {
                    self.pending_from = Some(other);
                    let mut actions = self.flush();
                    actions.push(Action::Rename {
                        from: None,
                        to: path,
                    });
                    return actions;
                }
                None => None,
            };
            if let Some(from) = &from {
                self.last_pair = Some((from.clone(), path.clone()));
            }
            return vec![Action::Rename { from, to: path }];
        }
        let mut actions = self.flush();
        match event.kind {
            EventKind::Modify(ModifyKind::Name(RenameMode::From)) => {
                self.pending_from = Some((tracker, path));
            }
            EventKind::Modify(ModifyKind::Name(RenameMode::Both)) => {
                let Some(to) = paths.next() else {
                    return actions;
                };
                if self.last_pair.take() != Some((path.clone(), to.clone())) {
                    actions.push(Action::Rename {
                        from: Some(path),
                        to,
                    });
                }
            }
            EventKind::Modify(ModifyKind::Name(_)) => actions.push(if exists(&path) {
                Action::Rename {
                    from: None,
                    to: path,
                }
            } else {
                Action::Delete(path)
            }),
            EventKind::Create(CreateKind::Folder) => actions.push(Action::DirCreated(path)),
            // The watcher said what was created (inotify does); only a vaguer kind (Windows)
            // needs a look.
            EventKind::Create(CreateKind::File) => actions.push(Action::Create(path)),
            EventKind::Create(_) => actions.push(if is_real_dir(&path) {
                Action::DirCreated(path)
            } else {
                Action::Create(path)
            }),
            EventKind::Access(AccessKind::Close(AccessMode::Write)) => {
                actions.push(Action::Write(path))
            }
            // Where the platform has no close-after-write (macOS, Windows), a data change is the
            // only write signal; on Linux it would repeat every block written, so there it only
            // catches a truncate(2), which no close-after-write follows.
            EventKind::Modify(ModifyKind::Data(_) | ModifyKind::Any)
                if !cfg!(target_os = "linux") =>
            {
                actions.push(Action::Write(path))
            }
            EventKind::Modify(ModifyKind::Data(_) | ModifyKind::Any) => {
                actions.push(Action::Modified(path))
            }
            EventKind::Remove(RemoveKind::Folder) => actions.push(Action::DirDeleted(path)),
            EventKind::Remove(_) => actions.push(Action::Delete(path)),
            _ => {}
        }
        actions
    }
}

/// Whether `path` is a directory itself, not a symlink to one.
fn is_real_dir(path: &std::path::Path) -> bool {
    std::fs::symlink_metadata(path).is_ok_and(|m| m.is_dir())
}

/// Whether the name exists, even as a dangling symlink.
fn exists(path: &std::path::Path) -> bool {
    std::fs::symlink_metadata(path).is_ok()
}

fn apply(observer: &mut Observer, action: Action) {
    let in_scope = |path: &PathBuf| observer.scope().contains(path);
    match action {
        Action::Create(path) if in_scope(&path) => {
            let seen = observer.examine_path(&path);
            observer.changed(FileAction::Create, &path, None, seen);
        }
        Action::Write(path) if in_scope(&path) => {
            let seen = observer.examine_path(&path);
            observer.changed(FileAction::Write, &path, None, seen);
        }
        Action::Modified(path) if in_scope(&path) => observer.modified(&path, None),
        Action::Delete(path) if in_scope(&path) => observer.deleted(&path, None),
        Action::Rename { from, to } => {
            let from = from.filter(|f| in_scope(f));
            if is_real_dir(&to) {
                if let Some(from) = from {
                    observer.dir_renamed(&from, &to);
                } else {
                    observer.dir_created(&to, None);
                }
            } else if in_scope(&to) {
                observer.renamed(from.as_deref(), &to, None);
            } else if let Some(from) = from {
                // Renamed to an excluded name: the watched file is gone from view.
                observer.deleted(&from, None);
            }
        }
        Action::DirCreated(path) => observer.dir_created(&path, None),
        Action::DirDeleted(path) => observer.dir_deleted(&path),
        // inotify drops events past its queue limit without counting them.
        Action::Overflow => observer.overflow(
            "the inotify queue overflowed; an unknown number of events were lost (raise fs.inotify.max_queued_events)",
            None,
        ),
        Action::Error { message, path } => observer.error(message, &path),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use notify::event::Flag;

    fn rename(mode: RenameMode, tracker: usize, paths: &[&str]) -> notify::Result<notify::Event> {
        let mut event = notify::Event::new(EventKind::Modify(ModifyKind::Name(mode)));
        for path in paths {
            event = event.add_path(PathBuf::from(path));
        }
        Ok(event.set_tracker(tracker))
    }

    #[test]
    fn a_queue_overflow_becomes_an_overflow_action() {
        let mut translator = Translator::default();
        let overflow = notify::Event::new(EventKind::Other).set_flag(Flag::Rescan);
        assert_eq!(translator.translate(Ok(overflow)), vec![Action::Overflow]);
        let limit = notify::Error::new(notify::ErrorKind::MaxFilesWatch).add_path("/w/deep".into());
        match translator.translate(Err(limit)).as_slice() {
            [Action::Error { message, path }] => {
                assert!(message.contains("max_user_watches"), "{message}");
                assert_eq!(path, &PathBuf::from("/w/deep"));
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn rename_halves_pair_once_and_a_lone_half_settles_as_moved() {
        let mut translator = Translator::default();
        assert!(
            translator
                .translate(rename(RenameMode::From, 7, &["/w/a"]))
                .is_empty()
        );
        assert_eq!(
            translator.translate(rename(RenameMode::To, 7, &["/w/b"])),
            vec![Action::Rename {
                from: Some("/w/a".into()),
                to: "/w/b".into()
            }]
        );
        assert!(
            translator
                .translate(rename(RenameMode::Both, 7, &["/w/a", "/w/b"]))
                .is_empty()
        );

        assert!(
            translator
                .translate(rename(RenameMode::From, 8, &["/w/c"]))
                .is_empty()
        );
        assert_eq!(translator.flush(), vec![Action::Delete("/w/c".into())]);
        assert_eq!(
            translator.translate(rename(RenameMode::To, 9, &["/w/d"])),
            vec![Action::Rename {
                from: None,
                to: "/w/d".into()
            }]
        );
    }
}
