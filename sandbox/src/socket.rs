//! Creating a daemon's listening Unix socket without following links.
//!
//! `bind` then `chmod`/`chown` by path is a race: in a directory others can write, a local
//! user swaps the fresh socket for a symlink between the two calls, and the daemon (root)
//! changes the mode and group of whatever the link points to. Here the socket is bound in a
//! private directory (mode 0700, created for the purpose next to the final path), given its
//! mode and group there, where nobody else can reach it, and then `rename`d into place.
//! `rename` replaces a directory entry and never follows a link at the destination.
//!
//! A socket directory writable by other users (without the sticky bit) is refused: whoever can
//! write there can replace the socket after it is in place, and clients would talk to them.
//! A stale socket (nothing listening) is replaced; a live one, or anything that is not a
//! socket, is refused.

use std::io;
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, MetadataExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};

/// Why a listening socket could not be created.
#[derive(Debug, thiserror::Error)]
pub enum SocketError {
    #[error("{path}: {what}: {source}")]
    Io { path: PathBuf, what: &'static str, source: io::Error },
    #[error("{path} is in use: {who} is listening there")]
    InUse { path: PathBuf, who: &'static str },
    #[error("{path} exists and is not a socket ({kind}); refusing to replace it")]
    NotASocket { path: PathBuf, kind: &'static str },
    #[error(
        "{dir} is writable by {whom} (mode {mode:04o}) without the sticky bit: anyone who can write there could replace the socket; use a directory only the daemon's user (and group) can write, like the services' runtime directory (root:statecull, mode 0750)"
    )]
    UnsafeDirectory { dir: PathBuf, mode: u32, whom: &'static str },
    #[error("{0} has no file name")]
    NoFileName(PathBuf),
}

/// How the socket should look once in place.
#[derive(Clone, Copy, Debug)]
pub struct SocketSpec<'a> {
    /// Where it goes.
    pub path: &'a Path,
    /// Its permission bits (e.g. 0o660).
    pub mode: u32,
    /// Its group, if not the creator's.
    pub group: Option<u32>,
    /// Who would be listening on a live socket there, for the error message.
    pub owner_name: &'static str,
}

fn io_err<'a>(path: &'a Path, what: &'static str) -> impl FnOnce(io::Error) -> SocketError + 'a {
    move |source| SocketError::Io { path: path.to_owned(), what, source }
}

fn kind_of(ft: std::fs::FileType) -> &'static str {
    if ft.is_symlink() {
        "a symbolic link"
    } else if ft.is_dir() {
        "a directory"
    } else if ft.is_file() {
        "a regular file"
    } else {
        "a special file"
    }
}

/// Refuse a directory that users other than ours (and our group) may write without the
/// sticky bit. `egid` is the creating process's group: a group-writable directory of that
/// group (systemd's `RuntimeDirectory` with a shared group) is fine.
fn check_directory(dir: &Path, egid: u32) -> Result<(), SocketError> {
    let meta = std::fs::metadata(dir).map_err(io_err(dir, "stat the socket directory"))?;
    let mode = meta.permissions().mode();
    let sticky = mode & 0o1000 != 0;
    if sticky {
        // /tmp-like: others may add entries, but cannot rename or remove ours.
        return Ok(());
    }
    let whom = if mode & 0o002 != 0 {
        "every user"
    } else if mode & 0o020 != 0 && meta.gid() != egid && meta.gid() != 0 {
        "its group"
    } else {
        return Ok(());
    };
    Err(SocketError::UnsafeDirectory { dir: dir.to_owned(), mode: mode & 0o7777, whom })
}

/// Is something there, and may it be replaced?
fn check_existing(spec: &SocketSpec<'_>) -> Result<(), SocketError> {
    let path = spec.path;
    let meta = match std::fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(io_err(path, "stat")(e)),
    };
    if !meta.file_type().is_socket() {
        return Err(SocketError::NotASocket {
            path: path.to_owned(),
            kind: kind_of(meta.file_type()),
        });
    }
    // A live daemon answers; a stale socket from a stopped one refuses.
    if UnixStream::connect(path).is_ok() {
        return Err(SocketError::InUse { path: path.to_owned(), who: spec.owner_name });
    }
    Ok(())
}

/// A private directory next to the final path, removed when dropped.
struct Staging(PathBuf);

impl Drop for Staging {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(self.0.join("s"));
        let _ = std::fs::remove_dir(&self.0);
    }
}

/// Create the listening socket at `spec.path`: bound in a private directory, mode and group
/// set there, renamed into place. The directory is created (mode 0755) if missing.
pub fn bind_unix_listener(spec: &SocketSpec<'_>) -> Result<UnixListener, SocketError> {
    let path = spec.path;
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_owned(),
        _ => PathBuf::from("."),
    };
    if path.file_name().is_none() {
        return Err(SocketError::NoFileName(path.to_owned()));
    }
    if !dir.exists() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(&dir)
            .map_err(io_err(&dir, "create the socket directory"))?;
    }
    check_directory(&dir, nix::unistd::getegid().as_raw())?;
    check_existing(spec)?;

    // mkdtemp creates the directory with mode 0700, under a name nobody could predict.
    let template = dir.join(".statecull-XXXXXX");
    let staging = Staging(
        nix::unistd::mkdtemp(&template)
            .map_err(|e| io_err(&dir, "create a private staging directory")(io::Error::from(e)))?,
    );
    let staged = staging.0.join("s");
    // No window with wider permissions, even inside the private directory.
    let old = nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o177));
    let bound = UnixListener::bind(&staged);
    nix::sys::stat::umask(old);
    let listener = bound.map_err(io_err(path, "bind"))?;
    // Only we can reach `staged` (0700 directory): these follow no attacker's link.
    std::fs::set_permissions(&staged, std::fs::Permissions::from_mode(spec.mode))
        .map_err(io_err(path, "set the socket's mode"))?;
    if let Some(gid) = spec.group {
        nix::unistd::chown(&staged, None, Some(nix::unistd::Gid::from_raw(gid)))
            .map_err(|e| io_err(path, "set the socket's group")(io::Error::from(e)))?;
    }
    // Something may have appeared at the path since the check; `rename` replaces the entry
    // itself (never what a link points to). A live daemon that started in between would lose
    // its name: check again right before, which narrows that to two daemons racing.
    check_existing(spec)?;
    std::fs::rename(&staged, path).map_err(io_err(path, "move the socket into place"))?;
    drop(staging);
    Ok(listener)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tempdir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("sc-socktest-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir(&d).unwrap();
        std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o755)).unwrap();
        d
    }

    fn spec(path: &Path) -> SocketSpec<'_> {
        SocketSpec { path, mode: 0o660, group: None, owner_name: "a test" }
    }

    #[test]
    fn creates_with_mode_and_leaves_no_staging() {
        let d = tempdir("mode");
        let p = d.join("x.sock");
        let l = bind_unix_listener(&spec(&p)).unwrap();
        let meta = std::fs::symlink_metadata(&p).unwrap();
        assert!(meta.file_type().is_socket());
        assert_eq!(meta.permissions().mode() & 0o7777, 0o660);
        // It works at its final name.
        let _c = UnixStream::connect(&p).unwrap();
        let (_s, _) = l.accept().unwrap();
        let names: Vec<_> =
            std::fs::read_dir(&d).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names.len(), 1, "{names:?}");
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn refuses_live_and_non_socket_and_replaces_stale() {
        let d = tempdir("live");
        let p = d.join("x.sock");
        let live = bind_unix_listener(&spec(&p)).unwrap();
        let e = bind_unix_listener(&spec(&p)).unwrap_err();
        assert!(matches!(e, SocketError::InUse { .. }), "{e}");
        drop(live); // stale now: nothing listens
        let _again = bind_unix_listener(&spec(&p)).unwrap();
        let f = d.join("file");
        std::fs::write(&f, b"precious").unwrap();
        let e = bind_unix_listener(&spec(&f)).unwrap_err();
        assert!(matches!(e, SocketError::NotASocket { kind: "a regular file", .. }), "{e}");
        assert_eq!(std::fs::read(&f).unwrap(), b"precious");
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn a_symlink_at_the_path_is_refused_and_its_target_untouched() {
        let d = tempdir("link");
        let target = d.join("target");
        std::fs::write(&target, b"root only").unwrap();
        std::fs::set_permissions(&target, std::fs::Permissions::from_mode(0o600)).unwrap();
        let p = d.join("x.sock");
        std::os::unix::fs::symlink(&target, &p).unwrap();
        let e = bind_unix_listener(&spec(&p)).unwrap_err();
        assert!(matches!(e, SocketError::NotASocket { kind: "a symbolic link", .. }), "{e}");
        let m = std::fs::metadata(&target).unwrap();
        assert_eq!(m.permissions().mode() & 0o7777, 0o600);
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn world_writable_directory_without_sticky_bit_is_refused() {
        let d = tempdir("ww");
        std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o777)).unwrap();
        let e = bind_unix_listener(&spec(&d.join("x.sock"))).unwrap_err();
        assert!(matches!(e, SocketError::UnsafeDirectory { whom: "every user", .. }), "{e}");
        // With the sticky bit (like /tmp) others cannot rename or remove our entry.
        std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o1777)).unwrap();
        let _l = bind_unix_listener(&spec(&d.join("x.sock"))).unwrap();
        std::fs::remove_dir_all(&d).unwrap();
    }
}
