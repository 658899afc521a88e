//! Output files that appear whole or not at all: each is written under a temporary name in
//! its directory and renamed into place once everything succeeded, so a run that fails
//! half-way (a bad trace line an hour in) leaves no partial CSV, plot or summary behind.

use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};

/// The temporary name of `path`: `.<name>.tmp-<pid>` beside it.
fn temp_name(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    path.with_file_name(format!(".{name}.tmp-{}", std::process::id()))
}

/// Writes `bytes` to `path` through a temporary file renamed into place.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let mut staged = Staged::default();
    staged.write(path, bytes)?;
    staged.commit()
}

/// Files staged under temporary names; [`commit`](Staged::commit) renames them all into
/// place, and dropping an uncommitted set removes them.
#[derive(Debug, Default)]
pub struct Staged {
    /// `(temporary, final)` paths.
    files: Vec<(PathBuf, PathBuf)>,
}

impl Staged {
    /// Creates the temporary file for `path` (truncating a stale one).
    pub fn create(&mut self, path: &Path) -> io::Result<File> {
        let temp = temp_name(path);
        let file = File::create(&temp)?;
        self.files.push((temp, path.to_owned()));
        Ok(file)
    }

    /// Stages `bytes` for `path`.
    pub fn write(&mut self, path: &Path, bytes: &[u8]) -> io::Result<()> {
        use std::io::Write;
        let mut f = self.create(path)?;
        f.write_all(bytes)?;
        f.sync_all()
    }

    /// Renames every staged file into place, in staging order.
    pub fn commit(mut self) -> io::Result<()> {
        for (temp, path) in std::mem::take(&mut self.files) {
            if let Err(e) = std::fs::rename(&temp, &path) {
                let _ = std::fs::remove_file(&temp);
                return Err(io::Error::new(
                    e.kind(),
                    format!("renaming {} to {}: {e}", temp.display(), path.display()),
                ));
            }
        }
        Ok(())
    }
}

impl Drop for Staged {
    fn drop(&mut self) {
        for (temp, _) in &self.files {
            let _ = std::fs::remove_file(temp);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn staged_files_appear_on_commit_and_vanish_on_drop() {
        let dir = std::env::temp_dir().join(format!("gofe-sim-staged-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let mut s = Staged::default();
        s.write(&dir.join("a.txt"), b"a").unwrap();
        assert!(!dir.join("a.txt").exists());
        drop(s);
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 0);
        let mut s = Staged::default();
        s.write(&dir.join("a.txt"), b"a").unwrap();
        s.write(&dir.join("b.txt"), b"b").unwrap();
        s.commit().unwrap();
        let mut names: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        assert_eq!(names, ["a.txt", "b.txt"]);
        assert_eq!(std::fs::read(dir.join("b.txt")).unwrap(), b"b");
        std::fs::remove_dir_all(dir).ok();
    }
}
