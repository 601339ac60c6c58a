//! The `read_file` and `write_file` tools: files inside the workspace only.
//!
//! A path is relative to the workspace (an absolute one must lie inside it).
//! It is refused when it climbs out with `..`, or when a symlink on the way
//! resolves outside the workspace. The file is then opened by its resolved
//! path with `O_NOFOLLOW`, so a symlink swapped in meanwhile is not followed.
//! Refusals are one sentence for the model. Blocking `std::fs`, like
//! [`crate::workspace`]: no thread pool is needed.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Component, Path, PathBuf};

use crate::output::{truncation_marker, Utf8Chunks};

/// `path`, as the model gave it, resolved inside `workspace`: the canonical
/// workspace and the relative, normalised path within it.
fn relative(workspace: &Path, path: &str) -> Result<(PathBuf, PathBuf), String> {
    if path.is_empty() {
        return Err("the path is empty.".to_owned());
    }
    if path.contains('\0') {
        return Err(format!("the path {path:?} contains a NUL byte."));
    }
    let root = fs::canonicalize(workspace).map_err(|err| {
        format!(
            "the workspace {} is not usable: {err}.",
            workspace.display()
        )
    })?;
    let given = Path::new(path);
    let inside = if given.is_absolute() {
        given
            .strip_prefix(workspace)
            .or_else(|_| given.strip_prefix(&root))
            .map_err(|_| {
                format!(
                    "the path {path:?} is outside the workspace; use a path relative to {}.",
                    workspace.display()
                )
            })?
    } else {
        given
    };
    let mut normal = PathBuf::new();
    for component in inside.components() {
        match component {
            Component::Normal(part) => normal.push(part),
            Component::CurDir => {}
            Component::ParentDir => {
                if !normal.pop() {
                    return Err(format!("the path {path:?} leaves the workspace."));
                }
            }
            Component::RootDir | Component::Prefix(_) => {
                return Err(format!("the path {path:?} leaves the workspace."));
            }
        }
    }
    if normal.as_os_str().is_empty() {
        return Err(format!(
            "the path {path:?} is the workspace itself, not a file."
        ));
    }
    Ok((root, normal))
}

/// Canonicalises `path` (which exists) and checks it is inside `root`.
fn resolve_existing(root: &Path, path: &Path, given: &str) -> Result<PathBuf, String> {
    let resolved = fs::canonicalize(path)
        .map_err(|err| format!("cannot resolve the path {given:?}: {err}."))?;
    if resolved.starts_with(root) {
        Ok(resolved)
    } else {
        Err(format!(
            "the path {given:?} leads outside the workspace through a symlink."
        ))
    }
}

/// Reads a file: its text (invalid UTF-8 replaced), cut after `max` bytes
/// with the cut marked.
pub fn read(workspace: &Path, path: &str, max: usize) -> Result<String, String> {
    let (root, relative) = relative(workspace, path)?;
    let target = root.join(&relative);
    if fs::symlink_metadata(&target).is_err() {
        return Err(format!("there is no file {path:?} in the workspace."));
    }
    let resolved = resolve_existing(&root, &target, path)?;
    let mut file = open_nofollow(&resolved, OpenOptions::new().read(true))
        .map_err(|err| format!("cannot open {path:?}: {err}."))?;
    let meta = file
        .metadata()
        .map_err(|err| format!("cannot read {path:?}: {err}."))?;
    if meta.is_dir() {
        return Err(format!("{path:?} is a directory, not a file."));
    }
    let mut kept = Vec::new();
    (&mut file)
        .take(max as u64)
        .read_to_end(&mut kept)
        .map_err(|err| format!("cannot read {path:?}: {err}."))?;
    let mut rest = 0u64;
    let mut sink = [0u8; 8192];
    loop {
        match file.read(&mut sink) {
            Ok(0) => break,
            Ok(n) => rest += n as u64,
            Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
            Err(err) => return Err(format!("cannot read {path:?}: {err}.")),
        }
    }
    let mut decoder = Utf8Chunks::default();
    let mut text = decoder.push(&kept);
    if rest == 0 {
        // The whole file: a broken character at its end is shown as U+FFFD.
        text.push_str(&decoder.finish());
    } else {
        // Cut: a character split by the cut goes with the cut.
        text.push_str(&truncation_marker(rest + decoder.pending() as u64));
    }
    Ok(text)
}

/// Writes `content` to a file, creating missing directories; answers what
/// it did.
pub fn write(workspace: &Path, path: &str, content: &str) -> Result<String, String> {
    let (root, relative) = relative(workspace, path)?;
    let target = root.join(&relative);
    let Some(parent) = target.parent() else {
        return Err(format!("the path {path:?} has no directory."));
    };
    // The deepest directory that exists must resolve inside; below it,
    // directories are created fresh (so they are no symlinks).
    let mut existing = parent.to_path_buf();
    let mut missing = Vec::new();
    while fs::symlink_metadata(&existing).is_err() {
        match (existing.file_name(), existing.parent()) {
            (Some(name), Some(up)) => {
                missing.push(name.to_owned());
                existing = up.to_path_buf();
            }
            _ => return Err(format!("cannot find a directory for {path:?}.")),
        }
    }
    let mut directory = resolve_existing(&root, &existing, path)?;
    for name in missing.into_iter().rev() {
        directory.push(name);
        fs::create_dir(&directory)
            .map_err(|err| format!("cannot create the directory for {path:?}: {err}."))?;
    }
    let name = target
        .file_name()
        .ok_or_else(|| format!("the path {path:?} names no file."))?;
    let mut file_path = directory.join(name);
    if let Ok(meta) = fs::symlink_metadata(&file_path) {
        if meta.file_type().is_symlink() {
            file_path = resolve_existing(&root, &file_path, path)?;
        }
    }
    let mut file = open_nofollow(
        &file_path,
        OpenOptions::new().write(true).create(true).truncate(true),
    )
    .map_err(|err| format!("cannot write {path:?}: {err}."))?;
    file.write_all(content.as_bytes())
        .map_err(|err| format!("cannot write {path:?}: {err}."))?;
    Ok(format!("wrote {} bytes to {path}", content.len()))
}

fn open_nofollow(path: &Path, options: &mut OpenOptions) -> io::Result<File> {
    options.custom_flags(libc::O_NOFOLLOW).open(path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::TempDir;
    use std::os::unix::fs::symlink;

    #[test]
    fn writes_and_reads_inside_the_workspace() {
        let temp = TempDir::new("files").expect("temp");
        let ws = temp.path();
        assert_eq!(
            write(ws, "a/b/c.txt", "hello").expect("write"),
            "wrote 5 bytes to a/b/c.txt"
        );
        assert_eq!(
            fs::read_to_string(ws.join("a/b/c.txt")).expect("read"),
            "hello"
        );
        assert_eq!(read(ws, "a/./b/../b/c.txt", 100).expect("read"), "hello");
        let absolute = ws.join("a/b/c.txt");
        assert_eq!(
            read(ws, absolute.to_str().expect("utf8"), 100).expect("read"),
            "hello"
        );
        write(ws, "a/b/c.txt", "hi").expect("overwrite");
        assert_eq!(read(ws, "a/b/c.txt", 100).expect("read"), "hi");
    }

    #[test]
    fn cuts_long_files_and_marks_the_cut() {
        let temp = TempDir::new("files").expect("temp");
        let ws = temp.path();
        fs::write(ws.join("big"), "x".repeat(1000)).expect("write");
        assert_eq!(
            read(ws, "big", 10).expect("read"),
            format!("{}\n[… 990 bytes truncated]", "x".repeat(10))
        );
        // A cut inside a character drops the whole character.
        fs::write(ws.join("euro"), "a€€").expect("write");
        assert_eq!(
            read(ws, "euro", 3).expect("read"),
            "a\n[… 6 bytes truncated]"
        );
        assert_eq!(read(ws, "euro", 7).expect("read"), "a€€");
    }

    #[test]
    fn refuses_paths_that_leave_the_workspace() {
        let temp = TempDir::new("files").expect("temp");
        let ws = temp.path().join("ws");
        fs::create_dir(&ws).expect("ws");
        fs::write(temp.path().join("secret"), "s").expect("secret");
        symlink(temp.path(), ws.join("up")).expect("symlink");
        symlink(temp.path().join("secret"), ws.join("secret-link")).expect("symlink");
        symlink(temp.path().join("new-outside"), ws.join("dangling")).expect("symlink");
        fs::create_dir(ws.join("d")).expect("d");
        fs::write(ws.join("d/inside"), "in").expect("inside");
        symlink("../d/inside", ws.join("d/ok-link")).expect("symlink");

        for (path, want) in [
            ("../secret", "leaves the workspace"),
            ("a/../../secret", "leaves the workspace"),
            ("/etc/passwd", "is outside the workspace"),
            ("up/secret", "outside the workspace through a symlink"),
            ("secret-link", "outside the workspace through a symlink"),
            ("", "is empty"),
            (".", "the workspace itself"),
            ("missing", "there is no file"),
            ("d", "is a directory"),
        ] {
            let err = read(&ws, path, 100).expect_err(path);
            assert!(err.contains(want), "read {path:?}: {err}");
        }
        for (path, want) in [
            ("../new", "leaves the workspace"),
            ("/tmp/new", "is outside the workspace"),
            ("up/new", "outside the workspace through a symlink"),
            ("up/deeper/new", "outside the workspace through a symlink"),
            ("secret-link", "outside the workspace through a symlink"),
            ("dangling", "cannot resolve"),
        ] {
            let err = write(&ws, path, "x").expect_err(path);
            assert!(err.contains(want), "write {path:?}: {err}");
        }
        assert_eq!(
            fs::read_to_string(temp.path().join("secret")).expect("s"),
            "s"
        );
        assert!(!temp.path().join("new").exists());
        assert!(!temp.path().join("deeper").exists());
        assert!(!temp.path().join("new-outside").exists());
        // A symlink that stays inside is fine.
        assert_eq!(read(&ws, "d/ok-link", 100).expect("read"), "in");
        write(&ws, "d/ok-link", "changed").expect("write through");
        assert_eq!(
            fs::read_to_string(ws.join("d/inside")).expect("read"),
            "changed"
        );
    }
}
