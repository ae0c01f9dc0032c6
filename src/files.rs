//! Files that hold secrets or personal data: created private (0600 files, 0700 dirs), replaced
//! atomically (a temp file written, fsync'd and renamed over the old one, then the directory
//! fsync'd), edited under a lock, and checked for loose permissions at start.
//!
//! The server also sets its umask to 077 ([`restrict_umask`]), so that RocksDB's own files (which
//! hold plaintext read models) are private too.

use std::io::Write;
use std::path::{Path, PathBuf};

/// The owner alone may read or write what the process creates from now on.
pub fn restrict_umask() {
    // SAFETY: umask only changes the process's file-mode creation mask; it cannot fail.
    unsafe {
        libc::umask(0o077);
    }
}

/// Creates `dir` (and its parents) with mode 0700 if it does not exist.
pub fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir)
}

/// Writes `bytes` to a new file at `path` (mode 0600), fsync'd; refuses to touch an existing file.
pub fn write_new_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(path)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    sync_dir_of(path)
}

/// Replaces the file at `path` with `bytes` (mode 0600) so that a crash leaves either the old or
/// the new content, never a mix or an empty file.
pub fn replace_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = parent(path);
    let mut tmp = tempfile::Builder::new().prefix(".tmp-").permissions(private_mode()).tempfile_in(&dir)?;
    tmp.write_all(bytes)?;
    tmp.as_file().sync_all()?;
    tmp.persist(path).map_err(|e| e.error)?;
    sync_dir_of(path)
}

fn private_mode() -> std::fs::Permissions {
    use std::os::unix::fs::PermissionsExt;
    std::fs::Permissions::from_mode(0o600)
}

fn parent(path: &Path) -> PathBuf {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

fn sync_dir_of(path: &Path) -> std::io::Result<()> {
    std::fs::File::open(parent(path))?.sync_all()
}

/// An exclusive advisory lock on `<path>.lock`, held until dropped: read-modify-write cycles of
/// one file by several processes (two `scimlog token` commands) take turns.
pub struct FileLock(std::fs::File);

impl FileLock {
    pub fn acquire(path: &Path) -> std::io::Result<FileLock> {
        use std::os::unix::fs::OpenOptionsExt;
        use std::os::unix::io::AsRawFd;
        let mut lock_path = path.as_os_str().to_owned();
        lock_path.push(".lock");
        let f = std::fs::OpenOptions::new().read(true).write(true).create(true).mode(0o600).open(lock_path)?;
        // SAFETY: flock on a descriptor this function owns; it blocks until the lock is free.
        if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(FileLock(f))
    }
}

impl Drop for FileLock {
    fn drop(&mut self) {
        use std::os::unix::io::AsRawFd;
        // SAFETY: unlocking the descriptor this lock owns; closing it would release it as well.
        unsafe {
            libc::flock(self.0.as_raw_fd(), libc::LOCK_UN);
        }
    }
}

/// Why a TOML configuration file (the outbound targets, the SET streams) was not read or written.
#[derive(Debug)]
pub enum TomlError {
    Io(std::io::Error),
    Syntax(String),
}

/// The file parsed as `T`; a missing file is `T::default()`.
pub fn read_toml<T: serde::de::DeserializeOwned + Default>(path: &Path) -> Result<T, TomlError> {
    match std::fs::read_to_string(path) {
        Ok(text) => toml::from_str(&text).map_err(|e| TomlError::Syntax(e.to_string())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(T::default()),
        Err(e) => Err(TomlError::Io(e)),
    }
}

/// Reads, changes (`f`) and replaces the file under its lock, so that two commands take turns;
/// `f`'s own error leaves the file as it was.
pub fn edit_toml<T, E>(path: &Path, f: impl FnOnce(&mut T) -> Result<(), E>) -> Result<Result<(), E>, TomlError>
where
    T: serde::de::DeserializeOwned + serde::Serialize + Default,
{
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        create_private_dir(dir).map_err(TomlError::Io)?;
    }
    let _lock = FileLock::acquire(path).map_err(TomlError::Io)?;
    let mut file: T = read_toml(path)?;
    if let Err(e) = f(&mut file) {
        return Ok(Err(e));
    }
    let text = toml::to_string(&file).map_err(|e| TomlError::Syntax(e.to_string()))?;
    replace_private(path, text.as_bytes()).map_err(TomlError::Io)?;
    Ok(Ok(()))
}

/// What group or other users may do with a file or directory, if anything: `Some(mode)` when it
/// is readable, writable or searchable by anyone but the owner.
pub fn loose_mode(path: &Path) -> Option<u32> {
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(path).ok()?.permissions().mode() & 0o777;
    (mode & 0o077 != 0).then_some(mode)
}

/// Logs a warning for each of `paths` that others than the owner can reach.
pub fn warn_if_loose(paths: &[(&Path, &str)]) -> Vec<String> {
    let mut warnings = Vec::new();
    for (path, what) in paths {
        if let Some(mode) = loose_mode(path) {
            let w = format!(
                "{what} {} is accessible to other users (mode {mode:o}); run: chmod go-rwx {}",
                path.display(),
                path.display()
            );
            tracing::warn!("{w}");
            warnings.push(w);
        }
    }
    warnings
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn private_files_atomic_replace_and_no_overwrite() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("secret");
        write_new_private(&p, b"one").unwrap();
        assert_eq!(loose_mode(&p), None, "created 0600");
        let e = write_new_private(&p, b"two").unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::AlreadyExists);
        assert_eq!(std::fs::read(&p).unwrap(), b"one", "never overwritten");
        replace_private(&p, b"three").unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"three");
        assert_eq!(loose_mode(&p), None);
        let left: Vec<_> = std::fs::read_dir(dir.path()).unwrap().flatten().map(|e| e.file_name()).collect();
        assert_eq!(left, vec![std::ffi::OsString::from("secret")], "no temp file left behind");
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert_eq!(loose_mode(&p), Some(0o644));
        assert_eq!(warn_if_loose(&[(&p, "the key")]).len(), 1);
    }

    #[test]
    fn a_private_dir_is_0700() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().join("a/b");
        create_private_dir(&d).unwrap();
        assert_eq!(loose_mode(&d), None);
    }
}

/// What identifies one version of a file without reading it (inode, size, modification and
/// change times): files edited by another process (`scimlog token`, `scimlog outbound`) are read
/// again only when their stamp changed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FileStamp {
    inode: u64,
    len: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
}

impl FileStamp {
    pub fn of(path: &Path) -> Option<FileStamp> {
        use std::os::unix::fs::MetadataExt;
        let m = std::fs::metadata(path).ok()?;
        Some(FileStamp {
            inode: m.ino(),
            len: m.len(),
            mtime: (m.mtime(), m.mtime_nsec()),
            ctime: (m.ctime(), m.ctime_nsec()),
        })
    }
}
