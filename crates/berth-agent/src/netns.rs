//! Named network namespaces, laid out as `ip netns add` does: a file `<dir>/<name>` on which
//! the namespace (`/proc/thread-self/ns/net` of a thread that unshared it) is bind-mounted,
//! with `<dir>` (default `/run/netns`) a shared mount point, so an operator can
//! `ip netns exec berth-<task id> …` and containerd's shim can join it by path.
//!
//! Namespaces belong to threads, so every switch happens in a dedicated short-lived std
//! thread: the calling thread (often a tokio worker) never changes namespace.
//!
//! The bind mount is made in the mount namespace of PID 1 when the agent runs in another one
//! (`ip netns exec h1 berth agent` gives the agent a private, slave mount namespace): a mount
//! made there would not propagate back, and containerd — which lives in PID 1's mount
//! namespace — would find an empty file where the namespace should be.

use std::fs::{self, OpenOptions};
use std::io;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sched::{setns, unshare, CloneFlags};
use nix::sys::statfs::{statfs, NSFS_MAGIC};

/// iproute2's directory for named network namespaces.
pub const DEFAULT_NETNS_DIR: &str = "/run/netns";

fn ctx(what: impl std::fmt::Display, e: impl Into<io::Error>) -> io::Error {
    let e: io::Error = e.into();
    io::Error::new(e.kind(), format!("{what}: {e}"))
}

/// Whether `path` has a network namespace mounted on it.
pub fn is_netns(path: &Path) -> bool {
    matches!(statfs(path), Ok(s) if s.filesystem_type() == NSFS_MAGIC)
}

/// Run `f` in a fresh thread that has joined PID 1's mount namespace if the agent is not in
/// it (see the module docs); otherwise just in a fresh thread.
fn in_host_mount_ns<T: Send>(f: impl FnOnce() -> io::Result<T> + Send) -> io::Result<T> {
    std::thread::scope(|s| {
        s.spawn(|| {
            let ours = fs::read_link("/proc/thread-self/ns/mnt").ok();
            let host = fs::read_link("/proc/1/ns/mnt").ok();
            if let (Some(ours), Some(host)) = (ours, host) {
                if ours != host {
                    // setns(CLONE_NEWNS) refuses a thread that shares its fs attributes
                    // with others, so give this thread its own first.
                    unshare(CloneFlags::CLONE_FS).map_err(|e| ctx("unshare(CLONE_FS)", e))?;
                    let fd = fs::File::open("/proc/1/ns/mnt")
                        .map_err(|e| ctx("open /proc/1/ns/mnt", e))?;
                    setns(&fd, CloneFlags::CLONE_NEWNS)
                        .map_err(|e| ctx("join PID 1's mount namespace", e))?;
                }
            }
            f()
        })
        .join()
        .unwrap_or_else(|p| std::panic::resume_unwind(p))
    })
}

/// Make `dir` exist and be a shared mount point, as iproute2 does: try to mark it shared;
/// if it is not a mount point yet (EINVAL), bind-mount it onto itself and try again.
fn ensure_shared_dir(dir: &Path) -> io::Result<()> {
    // Two concurrent callers could both see "not a mount point" and stack two bind mounts.
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _guard = LOCK.lock().unwrap_or_else(|p| p.into_inner());
    fs::create_dir_all(dir).map_err(|e| ctx(format!("create {}", dir.display()), e))?;
    let shared = || {
        mount(
            None::<&str>,
            dir,
            Some("none"),
            MsFlags::MS_SHARED | MsFlags::MS_REC,
            None::<&str>,
        )
    };
    match shared() {
        Ok(()) => Ok(()),
        Err(Errno::EINVAL) => {
            mount(
                Some(dir),
                dir,
                Some("none"),
                MsFlags::MS_BIND | MsFlags::MS_REC,
                None::<&str>,
            )
            .map_err(|e| ctx(format!("bind-mount {} onto itself", dir.display()), e))?;
            shared().map_err(|e| ctx(format!("make {} a shared mount", dir.display()), e))
        }
        Err(e) => Err(ctx(format!("make {} a shared mount", dir.display()), e)),
    }
}

/// Create the named namespace `<dir>/<name>` and return its path. Idempotent: an existing
/// namespace of that name is kept (a leftover empty file from a crash is replaced).
pub fn create(dir: &Path, name: &str) -> io::Result<PathBuf> {
    if name.is_empty() || name.contains('/') || name == "." || name == ".." {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("invalid network namespace name {name:?}"),
        ));
    }
    let path = dir.join(name);
    let p = path.clone();
    in_host_mount_ns(move || {
        ensure_shared_dir(dir)?;
        if is_netns(&p) {
            return Ok(());
        }
        match fs::remove_file(&p) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(ctx(format!("remove stale {}", p.display()), e)),
        }
        OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o000)
            .open(&p)
            .map_err(|e| ctx(format!("create {}", p.display()), e))?;
        let made = unshare(CloneFlags::CLONE_NEWNET)
            .map_err(|e| ctx("unshare(CLONE_NEWNET)", e))
            .and_then(|()| {
                mount(
                    Some("/proc/thread-self/ns/net"),
                    &p,
                    Some("none"),
                    MsFlags::MS_BIND,
                    None::<&str>,
                )
                .map_err(|e| {
                    ctx(
                        format!("bind-mount the new namespace on {}", p.display()),
                        e,
                    )
                })
            });
        if made.is_err() {
            let _ = fs::remove_file(&p);
        }
        made
    })?;
    Ok(path)
}

/// Remove a named namespace: detach the mount and unlink the file. Already-gone is fine.
/// The namespace itself lives on while something (a container) still uses it.
pub fn remove(path: &Path) -> io::Result<()> {
    let p = path.to_path_buf();
    in_host_mount_ns(move || {
        match umount2(&p, MntFlags::MNT_DETACH) {
            // EINVAL: not a mount point (half-created); ENOENT: gone.
            Ok(()) | Err(Errno::EINVAL) | Err(Errno::ENOENT) => {}
            Err(e) => return Err(ctx(format!("unmount {}", p.display()), e)),
        }
        match fs::remove_file(&p) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(ctx(format!("remove {}", p.display()), e)),
        }
    })
}

/// Run `f` inside the network namespace at `path`, on a dedicated thread (which is thrown
/// away afterwards, so no other code ever runs in the wrong namespace). Sockets created in
/// `f` stay in that namespace and may be returned and used from any thread.
pub fn run_in_netns<T: Send>(path: &Path, f: impl FnOnce() -> T + Send) -> io::Result<T> {
    std::thread::scope(|s| {
        s.spawn(|| {
            let fd =
                fs::File::open(path).map_err(|e| ctx(format!("open {}", path.display()), e))?;
            setns(&fd, CloneFlags::CLONE_NEWNET)
                .map_err(|e| ctx(format!("enter network namespace {}", path.display()), e))?;
            Ok(f())
        })
        .join()
        .unwrap_or_else(|p| std::panic::resume_unwind(p))
    })
}
