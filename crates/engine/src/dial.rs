//! The one way the engine reaches a Unix socket: [`Dialer`].
//!
//! Everything the engine connects to by path — the broker's socket, and each dpinger status
//! socket its policy names — is registered in one `Dialer`, built during start-up from the
//! policy and the command line, *before* confinement. Every connection after that (the
//! first, and every reconnection after the broker or a dpinger restarts) goes through
//! [`Dialer::connect`], which refuses any path that was not registered, with an error that
//! says so and names what was. `cargo xtask tidy` checks that no other engine source file
//! connects a socket by path (`UnixStream::connect`, a client's `connect`, `connectat`).
//!
//! How a registered path is reached depends on the system:
//!
//! * **Linux**: `connect(2)` by path, which the engine's Landlock ruleset allows (Landlock
//!   does not restrict connecting to a Unix socket path; the seccomp list allows `AF_UNIX`
//!   sockets only).
//! * **FreeBSD**: capability mode refuses `connect(2)` by path (`ECAPMODE`). [`Dialer::open`]
//!   opens each socket's directory once, before `cap_enter`, limited to `CAP_LOOKUP` and
//!   `CAP_CONNECTAT` (`statecull_sandbox::freebsd::open_socket_directory`), and connects
//!   with `connectat(2)` to the socket's file name in it; each new connection is limited to
//!   a connected stream's rights (`FdUse::Stream`). A directory removed and created
//!   again (not what rc.d or pfSense do) is not the one held: the engine must be restarted.
//!   Type-checked only; it has not run on a FreeBSD kernel.
//!
//! [`Dialer::direct`] registers paths without opening anything: it connects by path on
//! every system, for tests and for an unconfined engine's helpers.

use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio::net::UnixStream;

use crate::error::EngineError;

/// While a listener's backlog is full, a non-blocking connect fails at once (`EAGAIN`) where
/// a blocking one would wait: try again this often, at most [`BACKLOG_TRIES`] times.
const BACKLOG_RETRY: std::time::Duration = std::time::Duration::from_millis(10);
const BACKLOG_TRIES: u32 = 100;

/// The Unix sockets the engine may reach, fixed before confinement; cheap to clone.
#[derive(Clone, Debug)]
pub struct Dialer {
    inner: Arc<BTreeMap<PathBuf, Target>>,
}

#[derive(Debug)]
struct Target {
    /// What it is, for messages ("the broker", "dpinger of WAN1").
    what: String,
    route: Route,
}

#[derive(Debug)]
enum Route {
    /// `connect(2)` by path.
    Path,
    /// `connectat(2)` to `name` in a directory opened before confinement.
    #[cfg(target_os = "freebsd")]
    At { dir: Arc<std::os::fd::OwnedFd>, name: std::ffi::OsString },
}

fn config(message: String) -> EngineError {
    EngineError::Config(message)
}

/// An absolute path with a plain file name (what a socket's directory can be opened for).
fn check_path(what: &str, path: &Path) -> Result<(), EngineError> {
    if !path.is_absolute() {
        return Err(config(format!(
            "{what}: socket path {} is not absolute (the engine reaches sockets through \
             directories opened at start-up)",
            path.display()
        )));
    }
    match path.file_name() {
        Some(_) if path.parent().is_some() => Ok(()),
        _ => Err(config(format!("{what}: socket path {} names no file", path.display()))),
    }
}

impl Dialer {
    /// Register `targets` (what each is, its socket path) and, on FreeBSD, open and limit
    /// each distinct directory holding one, so that they can be reached in capability mode.
    /// Call before confinement. A path registered twice keeps its first description.
    ///
    /// Errors: a relative path or one without a file name; on FreeBSD, a directory that
    /// cannot be opened (it must exist at start-up: rc.d creates the broker's).
    pub fn open(targets: impl IntoIterator<Item = (String, PathBuf)>) -> Result<Self, EngineError> {
        let mut map = BTreeMap::new();
        #[cfg(target_os = "freebsd")]
        let mut dirs: BTreeMap<PathBuf, Arc<std::os::fd::OwnedFd>> = BTreeMap::new();
        for (what, path) in targets {
            check_path(&what, &path)?;
            if map.contains_key(&path) {
                continue;
            }
            #[cfg(target_os = "freebsd")]
            let route = {
                let (Some(dir), Some(name)) = (path.parent(), path.file_name()) else {
                    return Err(config(format!("{what}: {} names no file", path.display())));
                };
                let fd = match dirs.get(dir) {
                    Some(fd) => Arc::clone(fd),
                    None => {
                        let fd = Arc::new(
                            statecull_sandbox::freebsd::open_socket_directory(dir)
                                .map_err(|e| config(format!("{what}: {e}")))?,
                        );
                        dirs.insert(dir.to_owned(), Arc::clone(&fd));
                        fd
                    }
                };
                Route::At { dir: fd, name: name.to_owned() }
            };
            #[cfg(not(target_os = "freebsd"))]
            let route = Route::Path;
            map.insert(path, Target { what, route });
        }
        Ok(Dialer { inner: Arc::new(map) })
    }

    /// Register `targets` without opening anything: connects by path on every system
    /// (refused in FreeBSD's capability mode). For tests and unconfined helpers.
    pub fn direct(targets: impl IntoIterator<Item = (String, PathBuf)>) -> Self {
        let map = targets
            .into_iter()
            .map(|(what, path)| (path, Target { what, route: Route::Path }))
            .collect();
        Dialer { inner: Arc::new(map) }
    }

    /// The registered paths and what each is, in path order.
    pub fn targets(&self) -> impl Iterator<Item = (&Path, &str)> {
        self.inner.iter().map(|(p, t)| (p.as_path(), t.what.as_str()))
    }

    /// Whether `path` was registered.
    pub fn knows(&self, path: &Path) -> bool {
        self.inner.contains_key(path)
    }

    /// The error for a path that was not registered before confinement.
    fn unregistered(&self, path: &Path) -> io::Error {
        let known: Vec<String> =
            self.targets().map(|(p, what)| format!("{} ({what})", p.display())).collect();
        io::Error::new(
            io::ErrorKind::Unsupported,
            format!(
                "{} was not registered with the engine's dialer at start-up, so it cannot be \
                 reached after confinement (registered: {})",
                path.display(),
                if known.is_empty() { "none".to_owned() } else { known.join(", ") }
            ),
        )
    }

    /// Connect to the registered socket at `path` (see the module documentation for how).
    /// A path not registered is refused without any system call.
    pub async fn connect(&self, path: &Path) -> io::Result<UnixStream> {
        let Some(target) = self.inner.get(path) else {
            return Err(self.unregistered(path));
        };
        let mut tries = 0;
        loop {
            let result = match &target.route {
                Route::Path => UnixStream::connect(path).await,
                #[cfg(target_os = "freebsd")]
                Route::At { dir, name } => {
                    use statecull_sandbox::freebsd::{FdUse, connect_unix_at, limit};
                    use std::os::fd::AsFd;
                    connect_unix_at(dir.as_fd(), name).and_then(|fd| {
                        let s = std::os::unix::net::UnixStream::from(fd);
                        s.set_nonblocking(true)?;
                        // The new connection keeps only a connected stream's rights.
                        limit(s.as_fd(), &FdUse::Stream)
                            .map_err(|e| io::Error::other(e.to_string()))?;
                        UnixStream::from_std(s)
                    })
                }
            };
            match result {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock && tries < BACKLOG_TRIES => {
                    tries += 1;
                    tokio::time::sleep(BACKLOG_RETRY).await;
                }
                other => return other,
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn scratch(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("sc-dial-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    /// A registered socket is reached (and reached again after its server restarts); a
    /// socket that exists and listens but was not registered is refused, naming what was.
    #[tokio::test]
    async fn only_registered_sockets_are_reached() {
        let dir = scratch("reg");
        let known = dir.join("broker.sock");
        let other = dir.join("other.sock");
        let dialer = Dialer::open([("the broker".to_owned(), known.clone())]).unwrap();
        assert!(dialer.knows(&known) && !dialer.knows(&other));

        for round in 0..2 {
            let _ = std::fs::remove_file(&known);
            let listener = tokio::net::UnixListener::bind(&known).unwrap();
            let server = tokio::spawn(async move {
                let (mut s, _) = listener.accept().await.unwrap();
                s.write_all(b"hi").await.unwrap();
            });
            let mut c = dialer.connect(&known).await.unwrap();
            let mut buf = Vec::new();
            c.read_to_end(&mut buf).await.unwrap();
            assert_eq!(buf, b"hi", "round {round}");
            server.await.unwrap();
        }

        let _listening = tokio::net::UnixListener::bind(&other).unwrap();
        let e = dialer.connect(&other).await.unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::Unsupported);
        let m = e.to_string();
        assert!(m.contains("other.sock was not registered"), "{m}");
        assert!(m.contains("broker.sock (the broker)"), "{m}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn relative_or_nameless_paths_are_refused_at_start_up() {
        let e = Dialer::open([("the broker".into(), PathBuf::from("broker.sock"))]).unwrap_err();
        assert!(e.to_string().contains("is not absolute"), "{e}");
        let e = Dialer::open([("x".into(), PathBuf::from("/"))]).unwrap_err();
        assert!(e.to_string().contains("names no file"), "{e}");
    }

    #[tokio::test]
    async fn a_missing_socket_is_an_ordinary_error() {
        let dir = scratch("missing");
        let p = dir.join("gone.sock");
        let dialer = Dialer::open([("dpinger of WAN1".into(), p.clone())]).unwrap();
        let e = dialer.connect(&p).await.unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::NotFound, "{e}");
        let registered: Vec<_> = dialer.targets().collect();
        assert_eq!(registered, vec![(p.as_path(), "dpinger of WAN1")]);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
