//! The host side of the containers' socket directories.
//!
//! Layout, under the worker's socket directory (`COLONY_SOCKET_DIR`):
//!
//! ```text
//! <socket_dir>/                 root's, 0755; every ancestor root's too
//!   <container>/                root's, 0755: bind-mounted at /run/colony
//!     gateway.sock              the worker's gateway (bound by root)
//!     agent/                    the container user's, 0700: its only
//!       agent.sock              writable place here; agentd's socket
//! ```
//!
//! A process in the container (a model's command runs as the same user as
//! agentd) can replace anything in `agent/`, and nothing else. So the
//! worker never follows a path there: [`connect_nofollow`] opens
//! `agent.sock` with `O_PATH | O_NOFOLLOW`, checks that what it opened is a
//! socket, and connects through that file descriptor, so a symlink swapped
//! in leads nowhere on the host. `gateway.sock` sits in the root-owned
//! directory, where the container cannot replace it.
//!
//! [`check_root`] refuses a socket directory that someone other than root
//! could rearrange: every component of its path must be root's (or the
//! worker's own user's, when it is not root), and none writable by others
//! except a sticky ancestor such as `/tmp`.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use subjects::agent::{AGENT_SOCKET, AGENT_SUBDIR, GATEWAY_SOCKET};
use tokio::net::UnixStream;

/// The user every container runs as.
pub const CONTAINER_UID: u32 = 65534;

/// The paths of one container's sockets on the host.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SocketPaths {
    /// The directory bind-mounted into the container.
    pub dir: PathBuf,
    pub agent: PathBuf,
    pub gateway: PathBuf,
}

impl SocketPaths {
    pub fn of(dir: PathBuf) -> SocketPaths {
        SocketPaths {
            agent: dir.join(AGENT_SUBDIR).join(AGENT_SOCKET),
            gateway: dir.join(GATEWAY_SOCKET),
            dir,
        }
    }
}

fn euid() -> u32 {
    // SAFETY: geteuid(2) cannot fail and has no preconditions.
    unsafe { libc::geteuid() }
}

/// Why a socket directory (or one of its ancestors) is refused, if it is.
fn refusal(path: &Path, meta: &std::fs::Metadata, is_target: bool) -> Option<String> {
    let me = euid();
    if !meta.is_dir() {
        return Some(format!("{} is not a directory", path.display()));
    }
    if meta.uid() != 0 && meta.uid() != me {
        return Some(format!(
            "{} belongs to uid {}, not root; a socket directory must sit where only root can rearrange it",
            path.display(),
            meta.uid()
        ));
    }
    let mode = meta.mode();
    let others_write = mode & 0o022 != 0;
    let sticky = mode & 0o1000 != 0;
    if others_write && (is_target || !sticky) {
        return Some(format!(
            "{} is writable by others (mode {:o}); make it 0755",
            path.display(),
            mode & 0o7777
        ));
    }
    None
}

/// Creates `socket_dir` (0755) if needed and checks it and every ancestor
/// (see the module docs); the error names the first one refused.
pub fn check_root(socket_dir: &Path) -> io::Result<()> {
    if !socket_dir.is_absolute() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "the socket directory {} must be an absolute path",
                socket_dir.display()
            ),
        ));
    }
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o755)
        .create(socket_dir)?;
    let mut cur = Some(socket_dir);
    let mut is_target = true;
    while let Some(p) = cur {
        // symlink_metadata: a symlinked component is refused as "not a
        // directory" (it could be re-pointed).
        let meta = std::fs::symlink_metadata(p)?;
        if let Some(why) = refusal(p, &meta, is_target) {
            return Err(io::Error::new(io::ErrorKind::PermissionDenied, why));
        }
        is_target = false;
        cur = p.parent();
    }
    Ok(())
}

/// Creates one container's socket directory with its `agent/` subdirectory
/// for the container's user (see the module docs). A directory already at
/// `dir` that is not a plain directory of ours is refused.
pub fn prepare_container_dir(dir: &Path) -> io::Result<SocketPaths> {
    match std::fs::DirBuilder::new().mode(0o755).create(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(e),
    }
    let meta = std::fs::symlink_metadata(dir)?;
    if !meta.is_dir() || meta.uid() != euid() {
        return Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!(
                "{} exists and is not this worker's directory",
                dir.display()
            ),
        ));
    }
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755))?;
    let agent = dir.join(AGENT_SUBDIR);
    match std::fs::DirBuilder::new().mode(0o700).create(&agent) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(e),
    }
    if !std::fs::symlink_metadata(&agent)?.is_dir() {
        return Err(io::Error::new(
            io::ErrorKind::AlreadyExists,
            format!("{} exists and is not a directory", agent.display()),
        ));
    }
    // The directory is new and inside ours: nothing in the container can
    // have swapped it yet. Only root may chown; a worker that is not root
    // leaves it open to everyone (it is private to one container either way).
    let owned = std::os::unix::fs::chown(&agent, Some(CONTAINER_UID), Some(CONTAINER_UID)).is_ok();
    let mode = if owned { 0o700 } else { 0o777 };
    std::fs::set_permissions(&agent, std::fs::Permissions::from_mode(mode))?;
    Ok(SocketPaths::of(dir.to_path_buf()))
}

/// Connects to the unix socket at `path` without following a symbolic link
/// in its last component: the file is opened with `O_PATH | O_NOFOLLOW`, must
/// be a socket, and the connection goes through `/proc/self/fd/<fd>`, which
/// names exactly that inode.
pub async fn connect_nofollow(path: &Path) -> io::Result<UnixStream> {
    let fd = open_socket_nofollow(path)?;
    let via = format!("/proc/self/fd/{}", fd.as_raw_fd());
    let stream = UnixStream::connect(&via).await;
    drop(fd);
    stream
}

fn open_socket_nofollow(path: &Path) -> io::Result<OwnedFd> {
    let c = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "a NUL in the socket path"))?;
    // SAFETY: `c` is a valid NUL-terminated path; open(2) returns a new fd
    // or -1.
    let raw = unsafe {
        libc::open(
            c.as_ptr(),
            libc::O_PATH | libc::O_NOFOLLOW | libc::O_CLOEXEC,
        )
    };
    if raw < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `raw` is a fresh descriptor that nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    // SAFETY: an all-zero `stat` is a valid value for fstat(2) to fill.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: `fd` is open and `st` is writable.
    if unsafe { libc::fstat(fd.as_raw_fd(), &mut st) } != 0 {
        return Err(io::Error::last_os_error());
    }
    if st.st_mode & libc::S_IFMT != libc::S_IFSOCK {
        return Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!(
                "{} is not a socket (a symbolic link or a file put there from inside the container?)",
                path.display()
            ),
        ));
    }
    Ok(fd)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "colony-sockets-{name}-{}",
            uuid::Uuid::new_v4().simple()
        ));
        std::fs::create_dir_all(&dir).expect("temp dir");
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        dir
    }

    #[tokio::test]
    async fn connects_to_a_socket_but_not_through_a_symlink() {
        let dir = temp("nofollow");
        let real = dir.join("real.sock");
        let listener = tokio::net::UnixListener::bind(&real).expect("bind");
        let accept = tokio::spawn(async move { listener.accept().await.map(|_| ()) });
        connect_nofollow(&real)
            .await
            .expect("a real socket connects");
        accept.await.expect("join").expect("accepted");

        let link = dir.join("link.sock");
        std::os::unix::fs::symlink(&real, &link).expect("symlink");
        let err = connect_nofollow(&link)
            .await
            .expect_err("a symlink is refused");
        assert!(
            err.raw_os_error() == Some(libc::ELOOP)
                || err.kind() == io::ErrorKind::PermissionDenied,
            "{err}"
        );
        let file = dir.join("file.sock");
        std::fs::write(&file, b"").expect("file");
        let err = connect_nofollow(&file)
            .await
            .expect_err("a file is refused");
        assert!(err.to_string().contains("is not a socket"), "{err}");
        std::fs::remove_dir_all(&dir).expect("cleanup");
    }

    #[test]
    fn container_dirs_give_the_container_only_agent() {
        let root = temp("layout");
        let paths = prepare_container_dir(&root.join("c1")).expect("prepare");
        let meta = std::fs::symlink_metadata(&paths.dir).expect("dir");
        assert_eq!(meta.mode() & 0o7777, 0o755);
        assert_eq!(meta.uid(), euid());
        let agent =
            std::fs::symlink_metadata(paths.agent.parent().expect("agent dir")).expect("agent");
        if euid() == 0 {
            assert_eq!(agent.uid(), CONTAINER_UID);
            assert_eq!(agent.mode() & 0o7777, 0o700);
        }
        assert_eq!(paths.gateway.parent(), Some(paths.dir.as_path()));
        // Preparing again (adoption) is fine; a symlink in its place is not.
        prepare_container_dir(&paths.dir).expect("again");
        std::os::unix::fs::symlink("/etc", root.join("c2")).expect("symlink");
        assert!(prepare_container_dir(&root.join("c2")).is_err());
        std::fs::remove_dir_all(&root).expect("cleanup");
    }

    #[test]
    fn a_socket_dir_others_can_rearrange_is_refused() {
        let root = temp("root");
        let ok = root.join("sockets");
        check_root(&ok).expect("a fresh 0755 directory under /tmp is fine");
        std::fs::set_permissions(&ok, std::fs::Permissions::from_mode(0o777)).expect("chmod");
        let err = check_root(&ok).expect_err("world-writable");
        assert!(err.to_string().contains("writable by others"), "{err}");

        let open_parent = root.join("open");
        std::fs::create_dir(&open_parent).expect("mkdir");
        std::fs::set_permissions(&open_parent, std::fs::Permissions::from_mode(0o777))
            .expect("chmod");
        let err = check_root(&open_parent.join("sockets")).expect_err("parent open");
        assert!(
            err.to_string().contains(&open_parent.display().to_string()),
            "{err}"
        );

        if euid() == 0 {
            let foreign = root.join("foreign");
            std::fs::create_dir(&foreign).expect("mkdir");
            std::os::unix::fs::chown(&foreign, Some(1000), Some(1000)).expect("chown");
            let err = check_root(&foreign.join("sockets")).expect_err("not root's");
            assert!(
                err.to_string().contains("belongs to uid 1000, not root"),
                "{err}"
            );
        }
        assert!(check_root(Path::new("relative/dir")).is_err());
        std::fs::remove_dir_all(&root).expect("cleanup");
    }
}
