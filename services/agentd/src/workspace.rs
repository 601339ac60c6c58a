//! The workspace directory: emptying it for `fresh_workspace` runs.
//!
//! Only the contents go; the directory itself (often a tmpfs mount point) is
//! kept. Symlinks are removed, never followed. This uses blocking `std::fs`
//! on purpose: `tokio::fs` needs a thread pool, and agentd must not need new
//! threads while a run may have used up the container's pids limit.

use std::fs;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

/// Deletes everything inside `dir`.
pub fn empty(dir: &Path) -> io::Result<()> {
    for entry in fs::read_dir(dir)? {
        let path = entry?.path();
        let meta = fs::symlink_metadata(&path)?;
        if !meta.is_dir() {
            fs::remove_file(&path)?;
        } else if fs::remove_dir_all(&path).is_err() {
            // A run may have left a directory we cannot list or write
            // (`chmod 000`); we own it, so give ourselves access and retry.
            grant_access(&path);
            fs::remove_dir_all(&path)?;
        }
    }
    Ok(())
}

/// Entries a listing looks at before it stops (a run may leave millions).
const LIST_VISITS: usize = 20_000;

/// The regular files below `dir` (symlinks are not followed), sorted, at
/// most `max`; paths relative to `dir`. Unreadable directories are skipped;
/// past [`LIST_VISITS`] entries the walk stops with what it found.
pub fn list(dir: &Path, max: usize) -> Vec<subjects::agent::WorkspaceFile> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    let mut visits = 0usize;
    while let Some(d) = stack.pop() {
        let Ok(entries) = fs::read_dir(&d) else {
            continue;
        };
        for entry in entries.flatten() {
            visits += 1;
            if visits > LIST_VISITS {
                stack.clear();
                break;
            }
            let path = entry.path();
            let Ok(meta) = fs::symlink_metadata(&path) else {
                continue;
            };
            if meta.is_dir() {
                stack.push(path);
            } else if meta.is_file() {
                if let Ok(rel) = path.strip_prefix(dir) {
                    out.push(subjects::agent::WorkspaceFile {
                        path: rel.to_string_lossy().into_owned(),
                        bytes: meta.len(),
                    });
                }
            }
        }
    }
    out.sort_by(|a, b| a.path.cmp(&b.path));
    out.truncate(max);
    out
}

/// Best effort: makes `dir` and every directory below it rwx for its owner.
fn grant_access(dir: &Path) {
    let _ = fs::set_permissions(dir, fs::Permissions::from_mode(0o700));
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        if entry.file_type().is_ok_and(|kind| kind.is_dir()) {
            grant_access(&entry.path());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::TempDir;

    #[test]
    fn lists_regular_files_without_following_links() -> io::Result<()> {
        let temp = TempDir::new("list")?;
        let ws = temp.path();
        fs::write(ws.join("b.md"), "xy")?;
        fs::create_dir_all(ws.join("a/c"))?;
        fs::write(ws.join("a/c/d.txt"), "x")?;
        std::os::unix::fs::symlink("/etc", ws.join("link"))?;
        let files = list(ws, 10);
        let paths: Vec<_> = files.iter().map(|f| (f.path.as_str(), f.bytes)).collect();
        assert_eq!(paths, [("a/c/d.txt", 1), ("b.md", 2)]);
        assert_eq!(list(ws, 1).len(), 1);
        Ok(())
    }

    #[test]
    fn empties_but_keeps_the_directory() -> io::Result<()> {
        let temp = TempDir::new("wipe")?;
        let ws = temp.path();
        fs::write(ws.join("file"), "x")?;
        fs::create_dir_all(ws.join("a/b/c"))?;
        fs::write(ws.join("a/b/c/deep"), "x")?;
        fs::write(ws.join(".hidden"), "x")?;
        std::os::unix::fs::symlink("/etc", ws.join("link"))?;
        fs::create_dir(ws.join("locked"))?;
        fs::write(ws.join("locked/inside"), "x")?;
        fs::set_permissions(ws.join("locked"), fs::Permissions::from_mode(0o000))?;

        empty(ws)?;

        assert!(ws.is_dir());
        assert_eq!(fs::read_dir(ws)?.count(), 0);
        assert!(Path::new("/etc").is_dir(), "a symlink must not be followed");
        Ok(())
    }
}
