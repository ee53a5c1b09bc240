//! Directories and files that hold keys: the agent's state directory, the collector's data directory
//! and operator identity files.
//!
//! Both binaries usually run as root next to ordinary users, so every path here is treated as
//! something an insider may have prepared: a directory is used only when nobody but the running user
//! (or root) could have swapped any part of the way to it, a key is read only from a regular file the
//! running user owns with one link, and a file is written under a fresh name opened with
//! `O_CREAT|O_EXCL|O_NOFOLLOW` and then renamed into place, so a planted symlink or hard link at the
//! final name is replaced rather than followed.

#[cfg(unix)]
use std::collections::VecDeque;
#[cfg(unix)]
use std::ffi::OsString;
use std::io::{Read, Write};
#[cfg(unix)]
use std::path::Component;
use std::path::{Path, PathBuf};

/// Symbolic links followed while resolving one path before giving up (Linux's own limit).
#[cfg(unix)]
const MAX_SYMLINKS: usize = 40;

#[derive(Debug, thiserror::Error)]
pub enum SecureFsError {
    #[error("cannot {action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "{what} {path} is reached through the symbolic link {link}, owned by uid {owner} rather than by the running user (uid {me}) or root; give a path that others cannot redirect"
    )]
    ForeignSymlink {
        what: &'static str,
        path: PathBuf,
        link: PathBuf,
        owner: u32,
        me: u32,
    },
    #[error(
        "{what} {path} lies under {dir}, which {problem}; others could swap it, so move it to a directory only root or the running user controls"
    )]
    UntrustedParent {
        what: &'static str,
        path: PathBuf,
        dir: PathBuf,
        problem: String,
    },
    #[error(
        "{what} {path} is owned by uid {owner}, not by the running user (uid {me}); chown it or choose another"
    )]
    NotOwned {
        what: &'static str,
        path: PathBuf,
        owner: u32,
        me: u32,
    },
    #[error(
        "{what} {path} is writable by group or others (mode {mode:o}); remove anything you did not put there and run chmod 700 on it"
    )]
    DirWritable {
        what: &'static str,
        path: PathBuf,
        mode: u32,
    },
    #[error("{what} {path} is not a directory")]
    NotDirectory { what: &'static str, path: PathBuf },
    #[error("{path} is a symbolic link or not a regular file; remove it")]
    NotRegular { path: PathBuf },
    #[error("{path} is accessible by group or others (mode {mode:o}); run chmod 600 on it")]
    FileExposed { path: PathBuf, mode: u32 },
    #[error("{path} is writable by group or others (mode {mode:o}); run chmod go-w on it")]
    FileWritable { path: PathBuf, mode: u32 },
    #[error(
        "{path} has {links} hard links, so another name may expose it; remove the other links or the file"
    )]
    HardLinked { path: PathBuf, links: u64 },
    #[error("{path} already exists; remove it or choose another path")]
    Exists { path: PathBuf },
    #[error("no randomness for a temporary file name: {reason}")]
    Random { reason: String },
}

fn io(action: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> SecureFsError {
    let path = path.to_path_buf();
    move |source| SecureFsError::Io {
        action,
        path,
        source,
    }
}

/// Who may read a file written here.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Mode 0600: keys and identity bundles.
    Private,
    /// Mode 0644: certificates others may read but not change.
    Public,
}

impl Access {
    #[cfg(unix)]
    fn mode(self) -> u32 {
        match self {
            Access::Private => 0o600,
            Access::Public => 0o644,
        }
    }
}

/// Creates `dir` (mode 0700) if it is missing, then refuses it unless it is trusted (see
/// [`check_private_dir`]). `what` names it in errors, e.g. "state directory".
pub fn prepare_private_dir(dir: &Path, what: &'static str) -> Result<(), SecureFsError> {
    if std::fs::symlink_metadata(dir).is_err() {
        let mut builder = std::fs::DirBuilder::new();
        builder.recursive(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::DirBuilderExt;
            builder.mode(0o700);
        }
        builder.create(dir).map_err(io("create", dir))?;
    }
    check_private_dir(dir, what)
}

/// Refuses `dir` unless the running user owns it, nobody else may write to it, and every directory
/// and symbolic link on the way to it belongs to root or the running user (a directory others may
/// write to is accepted on the way only when it is sticky, as /tmp is).
#[cfg(unix)]
pub fn check_private_dir(dir: &Path, what: &'static str) -> Result<(), SecureFsError> {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let resolved = resolve_trusted(dir, what)?;
    let meta = std::fs::metadata(&resolved).map_err(io("inspect", dir))?;
    if !meta.is_dir() {
        return Err(SecureFsError::NotDirectory {
            what,
            path: dir.to_path_buf(),
        });
    }
    let me = running_uid();
    if meta.uid() != me {
        return Err(SecureFsError::NotOwned {
            what,
            path: dir.to_path_buf(),
            owner: meta.uid(),
            me,
        });
    }
    let mode = meta.permissions().mode() & 0o7777;
    if mode & 0o022 != 0 {
        return Err(SecureFsError::DirWritable {
            what,
            path: dir.to_path_buf(),
            mode,
        });
    }
    Ok(())
}

#[cfg(not(unix))]
pub fn check_private_dir(dir: &Path, what: &'static str) -> Result<(), SecureFsError> {
    if !std::fs::metadata(dir).map_err(io("inspect", dir))?.is_dir() {
        return Err(SecureFsError::NotDirectory {
            what,
            path: dir.to_path_buf(),
        });
    }
    Ok(())
}

#[cfg(unix)]
fn running_uid() -> u32 {
    nix::unistd::geteuid().as_raw()
}

/// Follows `path` one component at a time, as the kernel would, and refuses it when a symbolic link
/// on the way belongs to someone other than root or the running user, or when a directory on the
/// way may be changed by someone else. Returns the resolved path.
#[cfg(unix)]
fn resolve_trusted(path: &Path, what: &'static str) -> Result<PathBuf, SecureFsError> {
    use std::os::unix::fs::MetadataExt;
    let me = running_uid();
    let absolute = if path.is_absolute() {
        path.to_path_buf()
    } else {
        std::env::current_dir()
            .map_err(io("find the current directory for", path))?
            .join(path)
    };
    let mut pending: VecDeque<OsString> = VecDeque::new();
    let mut resolved = PathBuf::from("/");
    push_front(&mut pending, &absolute, &mut resolved);
    let mut links = 0;
    while let Some(name) = pending.pop_front() {
        if name == ".." {
            resolved.pop();
            continue;
        }
        // The directory holding the next name decides what that name points to.
        check_parent(&resolved, path, what)?;
        let next = resolved.join(&name);
        let meta = std::fs::symlink_metadata(&next).map_err(io("inspect", &next))?;
        if meta.file_type().is_symlink() {
            if meta.uid() != me && meta.uid() != 0 {
                return Err(SecureFsError::ForeignSymlink {
                    what,
                    path: path.to_path_buf(),
                    link: next,
                    owner: meta.uid(),
                    me,
                });
            }
            links += 1;
            if links > MAX_SYMLINKS {
                return Err(SecureFsError::Io {
                    action: "resolve",
                    path: path.to_path_buf(),
                    source: std::io::Error::other("too many levels of symbolic links"),
                });
            }
            let target = std::fs::read_link(&next).map_err(io("read the link", &next))?;
            push_front(&mut pending, &target, &mut resolved);
        } else {
            resolved = next;
        }
    }
    Ok(resolved)
}

/// Refuses a directory others could use to swap the names in it: one that belongs to someone other
/// than root or the running user, or that others may write to without the sticky bit.
#[cfg(unix)]
fn check_parent(dir: &Path, path: &Path, what: &'static str) -> Result<(), SecureFsError> {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let me = running_uid();
    let meta = std::fs::metadata(dir).map_err(io("inspect", dir))?;
    let mode = meta.permissions().mode();
    let problem = if meta.uid() != me && meta.uid() != 0 {
        format!("belongs to uid {}", meta.uid())
    } else if mode & 0o022 != 0 && mode & 0o1000 == 0 {
        format!("is writable by group or others (mode {:o})", mode & 0o7777)
    } else {
        return Ok(());
    };
    Err(SecureFsError::UntrustedParent {
        what,
        path: path.to_path_buf(),
        dir: dir.to_path_buf(),
        problem,
    })
}

/// Puts `path`'s names in front of what is still to be resolved; an absolute path restarts at `/`.
#[cfg(unix)]
fn push_front(pending: &mut VecDeque<OsString>, path: &Path, resolved: &mut PathBuf) {
    let mut names = Vec::new();
    for component in path.components() {
        match component {
            Component::RootDir | Component::Prefix(_) => {
                *resolved = PathBuf::from("/");
                names.clear();
            }
            Component::CurDir => {}
            Component::ParentDir => names.push(OsString::from("..")),
            Component::Normal(name) => names.push(name.to_os_string()),
        }
    }
    for name in names.into_iter().rev() {
        pending.push_front(name);
    }
}

/// Refuses a file others could rewrite, such as a configuration file: it must belong to root or the
/// running user, be writable by nobody else, and be reached only through directories and symbolic
/// links that belong to root or the running user.
#[cfg(unix)]
pub fn check_trusted_file(path: &Path) -> Result<(), SecureFsError> {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let resolved = resolve_trusted(path, "file")?;
    let meta = std::fs::metadata(&resolved).map_err(io("inspect", path))?;
    let me = running_uid();
    if meta.uid() != me && meta.uid() != 0 {
        return Err(SecureFsError::NotOwned {
            what: "file",
            path: path.to_path_buf(),
            owner: meta.uid(),
            me,
        });
    }
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o022 != 0 {
        return Err(SecureFsError::FileWritable {
            path: path.to_path_buf(),
            mode,
        });
    }
    Ok(())
}

#[cfg(not(unix))]
pub fn check_trusted_file(_path: &Path) -> Result<(), SecureFsError> {
    Ok(())
}

/// Writes `contents` to `dir/name` without ever opening an existing file: a fresh temporary name is
/// created with `O_CREAT|O_EXCL|O_NOFOLLOW`, synced, and renamed over `name`. `dir` must have passed
/// [`check_private_dir`].
pub fn replace_file(
    dir: &Path,
    name: &str,
    contents: &[u8],
    access: Access,
) -> Result<(), SecureFsError> {
    let target = dir.join(name);
    let temp = write_temp(dir, name, contents, access)?;
    if let Err(source) = std::fs::rename(&temp, &target) {
        let _ = std::fs::remove_file(&temp);
        return Err(SecureFsError::Io {
            action: "write",
            path: target,
            source,
        });
    }
    sync_dir(dir)
}

/// Writes a new file at `path`, refusing to replace anything already there (a planted file, link or
/// symbolic link included): the contents go to a fresh temporary name first and are then linked to
/// `path`, which fails if the name exists. The directory holding `path` must be trusted as in
/// [`check_private_dir`], except that it may be shared when it is sticky.
pub fn create_new_file(path: &Path, contents: &[u8], access: Access) -> Result<(), SecureFsError> {
    let dir = match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let name = path
        .file_name()
        .ok_or_else(|| SecureFsError::NotRegular {
            path: path.to_path_buf(),
        })?
        .to_string_lossy()
        .into_owned();
    #[cfg(unix)]
    check_parent(&resolve_trusted(&dir, "file")?, path, "file")?;
    if std::fs::symlink_metadata(path).is_ok() {
        return Err(SecureFsError::Exists {
            path: path.to_path_buf(),
        });
    }
    let temp = write_temp(&dir, &name, contents, access)?;
    let linked = std::fs::hard_link(&temp, path);
    let _ = std::fs::remove_file(&temp);
    match linked {
        Ok(()) => sync_dir(&dir),
        Err(source) if source.kind() == std::io::ErrorKind::AlreadyExists => {
            Err(SecureFsError::Exists {
                path: path.to_path_buf(),
            })
        }
        Err(source) => Err(SecureFsError::Io {
            action: "write",
            path: path.to_path_buf(),
            source,
        }),
    }
}

fn write_temp(
    dir: &Path,
    name: &str,
    contents: &[u8],
    access: Access,
) -> Result<PathBuf, SecureFsError> {
    let mut random = [0u8; 8];
    getrandom::fill(&mut random).map_err(|error| SecureFsError::Random {
        reason: error.to_string(),
    })?;
    let temp = dir.join(format!(".{name}.{}.tmp", hex::encode(random)));
    let mut options = std::fs::OpenOptions::new();
    // create_new is O_CREAT|O_EXCL: an existing name, even a dangling symbolic link, is refused.
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options
            .mode(access.mode())
            .custom_flags(nix::libc::O_NOFOLLOW);
    }
    #[cfg(not(unix))]
    let _ = access;
    let mut file = options.open(&temp).map_err(io("create", &temp))?;
    let written = file.write_all(contents).and_then(|()| file.sync_all());
    if let Err(source) = written {
        drop(file);
        let _ = std::fs::remove_file(&temp);
        return Err(SecureFsError::Io {
            action: "write",
            path: temp,
            source,
        });
    }
    Ok(temp)
}

/// Makes a rename or link durable.
fn sync_dir(dir: &Path) -> Result<(), SecureFsError> {
    #[cfg(unix)]
    std::fs::File::open(dir)
        .and_then(|handle| handle.sync_all())
        .map_err(io("sync", dir))?;
    #[cfg(not(unix))]
    let _ = dir;
    Ok(())
}

/// Reads a file of ours: never through a symbolic link, only a regular file the running user owns
/// that others cannot write. A `Private` file must also be unreadable by others and have exactly one
/// link, so no second name planted elsewhere can reach it.
pub fn read_owned(path: &Path, access: Access) -> Result<Vec<u8>, SecureFsError> {
    let mut options = std::fs::OpenOptions::new();
    options.read(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        // O_NONBLOCK: a planted FIFO must not hang the open; it is refused below as not regular.
        options.custom_flags(nix::libc::O_NOFOLLOW | nix::libc::O_NONBLOCK);
    }
    let mut file = options.open(path).map_err(|source| {
        if is_symlink_refusal(&source) {
            SecureFsError::NotRegular {
                path: path.to_path_buf(),
            }
        } else {
            SecureFsError::Io {
                action: "read",
                path: path.to_path_buf(),
                source,
            }
        }
    })?;
    let meta = file.metadata().map_err(io("inspect", path))?;
    if !meta.is_file() {
        return Err(SecureFsError::NotRegular {
            path: path.to_path_buf(),
        });
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::{MetadataExt, PermissionsExt};
        let me = running_uid();
        if meta.uid() != me {
            return Err(SecureFsError::NotOwned {
                what: "file",
                path: path.to_path_buf(),
                owner: meta.uid(),
                me,
            });
        }
        let mode = meta.permissions().mode() & 0o777;
        match access {
            Access::Private if mode & 0o077 != 0 => {
                return Err(SecureFsError::FileExposed {
                    path: path.to_path_buf(),
                    mode,
                });
            }
            Access::Public if mode & 0o022 != 0 => {
                return Err(SecureFsError::FileWritable {
                    path: path.to_path_buf(),
                    mode,
                });
            }
            _ => {}
        }
        if access == Access::Private && meta.nlink() != 1 {
            return Err(SecureFsError::HardLinked {
                path: path.to_path_buf(),
                links: meta.nlink(),
            });
        }
    }
    // Owners, modes and link counts are what `access` asks about; elsewhere there are none.
    #[cfg(not(unix))]
    let _ = access;
    let mut contents = Vec::new();
    file.read_to_end(&mut contents).map_err(io("read", path))?;
    Ok(contents)
}

/// `O_NOFOLLOW` met a symbolic link.
fn is_symlink_refusal(error: &std::io::Error) -> bool {
    #[cfg(unix)]
    return error.raw_os_error() == Some(nix::libc::ELOOP);
    #[cfg(not(unix))]
    {
        let _ = error;
        false
    }
}

/// [`read_owned`] for text.
pub fn read_owned_string(path: &Path, access: Access) -> Result<String, SecureFsError> {
    String::from_utf8(read_owned(path, access)?).map_err(|error| SecureFsError::Io {
        action: "read",
        path: path.to_path_buf(),
        source: std::io::Error::new(std::io::ErrorKind::InvalidData, error),
    })
}

#[cfg(all(test, unix))]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn chmod(path: &Path, mode: u32) {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
    }

    #[test]
    fn a_planted_symlink_is_replaced_not_followed() {
        let dir = tempfile::tempdir().unwrap();
        let victim = dir.path().join("victim");
        std::fs::write(&victim, "precious").unwrap();
        let state = dir.path().join("state");
        prepare_private_dir(&state, "state directory").unwrap();
        std::os::unix::fs::symlink(&victim, state.join("key")).unwrap();
        replace_file(&state, "key", b"secret", Access::Private).unwrap();
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "precious");
        assert_eq!(
            read_owned(&state.join("key"), Access::Private).unwrap(),
            b"secret"
        );
        let leftovers: Vec<_> = std::fs::read_dir(&state).unwrap().collect();
        assert_eq!(leftovers.len(), 1, "no temporary file is left behind");
    }

    #[test]
    fn reads_refuse_symlinks_extra_links_and_loose_modes() {
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("key");
        replace_file(dir.path(), "key", b"k", Access::Private).unwrap();
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&key, &link).unwrap();
        assert!(matches!(
            read_owned(&link, Access::Private),
            Err(SecureFsError::NotRegular { .. })
        ));
        std::fs::hard_link(&key, dir.path().join("second")).unwrap();
        assert!(matches!(
            read_owned(&key, Access::Private),
            Err(SecureFsError::HardLinked { links: 2, .. })
        ));
        std::fs::remove_file(dir.path().join("second")).unwrap();
        chmod(&key, 0o640);
        assert!(matches!(
            read_owned(&key, Access::Private),
            Err(SecureFsError::FileExposed { .. })
        ));
        assert_eq!(read_owned(&key, Access::Public).unwrap(), b"k");
        chmod(&key, 0o666);
        assert!(matches!(
            read_owned(&key, Access::Public),
            Err(SecureFsError::FileWritable { .. })
        ));
    }

    #[test]
    fn directories_others_can_write_are_refused_on_the_way_and_at_the_end() {
        let dir = tempfile::tempdir().unwrap();
        let open = dir.path().join("open");
        std::fs::create_dir(&open).unwrap();
        chmod(&open, 0o777);
        assert!(matches!(
            check_private_dir(&open, "data directory"),
            Err(SecureFsError::DirWritable { .. })
        ));
        let inner = open.join("inner");
        std::fs::create_dir(&inner).unwrap();
        chmod(&inner, 0o700);
        assert!(matches!(
            check_private_dir(&inner, "data directory"),
            Err(SecureFsError::UntrustedParent { .. })
        ));
        // Sticky shared directories (like /tmp) are fine on the way.
        chmod(&open, 0o1777);
        check_private_dir(&inner, "data directory").unwrap();
        // Relative paths and links of our own resolve.
        std::os::unix::fs::symlink(&inner, dir.path().join("mine")).unwrap();
        check_private_dir(&dir.path().join("mine"), "data directory").unwrap();
        check_private_dir(&open.join("../open/inner"), "data directory").unwrap();
    }

    #[test]
    fn a_new_file_never_replaces_an_existing_name() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ana.pem");
        create_new_file(&path, b"one", Access::Private).unwrap();
        assert!(matches!(
            create_new_file(&path, b"two", Access::Private),
            Err(SecureFsError::Exists { .. })
        ));
        let dangling = dir.path().join("dangling.pem");
        std::os::unix::fs::symlink(dir.path().join("nowhere"), &dangling).unwrap();
        assert!(matches!(
            create_new_file(&dangling, b"two", Access::Private),
            Err(SecureFsError::Exists { .. })
        ));
        assert!(!dir.path().join("nowhere").exists());
        assert_eq!(read_owned(&path, Access::Private).unwrap(), b"one");
    }
}
