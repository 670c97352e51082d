//! Where generated files go, and writing them so a reader never sees half a file.
//!
//! - [`write_atomic`] writes to `.NAME.tmp-PID` in the target's folder, fsyncs it and renames
//!   it over the target. The temp file is created with `OpenOptions`, so the user's umask
//!   decides the final mode (the privacy section of DESIGN.md: files are the user's).
//! - [`OutputTarget`] turns `-o/--output` into image paths (the CLI creates missing folders):
//!   - none: `./easel-<seed>.png`;
//!   - an existing folder, or a path ending in `/`: `DIR/easel-<seed>.png`;
//!   - anything else is a file: image 0 is written to it as given, image `i > 0` to
//!     `STEM-i.EXT` (`cat.png`, `cat-1.png`, `cat-2.png`…), so the number in a name is the
//!     image's 0-based index, as in `--json` events and preview names.
//! - [`preview_path`]: `DIR/step-NNN.png`, or `DIR/imageI-step-NNN.png` when a request makes
//!   more than one image.

use std::fs::OpenOptions;
use std::io::Write;
use std::path::{Path, PathBuf};

/// A file could not be written.
#[derive(Debug, thiserror::Error)]
pub enum OutputError {
    #[error("cannot write {}; check that its folder exists and is writable", path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot create the folder {}", path.display())]
    CreateDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Writes `bytes` to `path` atomically: temp file in the same folder, fsync, rename.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), OutputError> {
    let error = |source| OutputError::Write {
        path: path.to_path_buf(),
        source,
    };
    let name = path.file_name().ok_or_else(|| {
        error(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "the path has no file name",
        ))
    })?;
    let folder = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let mut temp_name = std::ffi::OsString::from(".");
    temp_name.push(name);
    temp_name.push(format!(".tmp-{}", std::process::id()));
    let temp = folder.join(temp_name);
    let written = (|| {
        let mut file = OpenOptions::new().write(true).create(true).truncate(true).open(&temp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        drop(file);
        std::fs::rename(&temp, path)
    })();
    if let Err(source) = written {
        let _ = std::fs::remove_file(&temp);
        return Err(error(source));
    }
    // Make the rename itself durable; a failure here loses nothing the user can act on.
    if let Ok(dir) = std::fs::File::open(folder) {
        let _ = dir.sync_all();
    }
    Ok(())
}

/// Creates `dir` (and its parents) if it does not exist.
pub fn ensure_dir(dir: &Path) -> Result<(), OutputError> {
    std::fs::create_dir_all(dir).map_err(|source| OutputError::CreateDir {
        path: dir.to_path_buf(),
        source,
    })
}

/// What `-o/--output` asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OutputTarget {
    /// `easel-<seed>.png` in this folder.
    Dir(PathBuf),
    /// This file for image 0; numbered siblings for the others.
    File(PathBuf),
}

impl OutputTarget {
    /// Interprets the `--output` argument (`None`: the current folder).
    pub fn from_arg(arg: Option<&Path>) -> Self {
        match arg {
            None => OutputTarget::Dir(PathBuf::from(".")),
            Some(path) if path.is_dir() || ends_with_separator(path) => OutputTarget::Dir(path.to_path_buf()),
            Some(path) => OutputTarget::File(path.to_path_buf()),
        }
    }

    /// The folder the images go into, which must exist before writing (the CLI creates it).
    pub fn dir(&self) -> &Path {
        match self {
            OutputTarget::Dir(dir) => dir,
            OutputTarget::File(file) => file
                .parent()
                .filter(|p| !p.as_os_str().is_empty())
                .unwrap_or(Path::new(".")),
        }
    }

    /// Where image `index` (0-based) with `seed` goes.
    pub fn image_path(&self, index: u32, seed: u64) -> PathBuf {
        match self {
            OutputTarget::Dir(dir) => dir.join(format!("easel-{seed}.png")),
            OutputTarget::File(file) if index == 0 => file.clone(),
            OutputTarget::File(file) => numbered(file, index),
        }
    }
}

fn ends_with_separator(path: &Path) -> bool {
    path.as_os_str().as_encoded_bytes().last() == Some(&b'/')
}

/// `dir/cat.png` → `dir/cat-N.png`; `dir/cat` → `dir/cat-N`.
fn numbered(file: &Path, n: u32) -> PathBuf {
    let stem = file.file_stem().unwrap_or_default();
    let mut name = stem.to_os_string();
    name.push(format!("-{n}"));
    if let Some(ext) = file.extension() {
        name.push(".");
        name.push(ext);
    }
    file.with_file_name(name)
}

/// Where the preview of `step` (1-based) of image `image_index` goes.
pub fn preview_path(dir: &Path, image_index: u32, step: u32, count: u32) -> PathBuf {
    if count > 1 {
        dir.join(format!("image{image_index}-step-{step:03}.png"))
    } else {
        dir.join(format!("step-{step:03}.png"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn write_atomic_leaves_the_file_and_no_temp() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out.png");
        write_atomic(&path, b"first").unwrap();
        write_atomic(&path, b"second, longer").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"second, longer");
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("out.png")]);
    }

    #[test]
    fn write_atomic_respects_the_umask() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("mode.png");
        write_atomic(&path, b"x").unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        // Not forced to 0600 as a tempfile would be: the same mode as a file made the plain
        // way (0666 less the umask).
        let plain = dir.path().join("plain");
        std::fs::write(&plain, b"x").unwrap();
        let expected = std::fs::metadata(&plain).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, expected);
    }

    #[test]
    fn write_atomic_reports_a_missing_folder_and_cleans_up() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("absent").join("out.png");
        let error = write_atomic(&path, b"x").unwrap_err();
        assert!(error.to_string().contains("absent/out.png"), "{error}");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    #[test]
    fn a_failed_rename_removes_the_temp_file() {
        let dir = tempfile::tempdir().unwrap();
        let occupied = dir.path().join("taken.png");
        std::fs::create_dir(&occupied).unwrap();
        std::fs::write(occupied.join("inside"), b"x").unwrap();
        assert!(write_atomic(&occupied, b"png").is_err());
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("taken.png")]);
    }

    #[test]
    fn write_atomic_needs_a_file_name() {
        assert!(write_atomic(Path::new("/"), b"x").is_err());
    }

    #[test]
    fn default_output_is_the_current_folder() {
        let target = OutputTarget::from_arg(None);
        assert_eq!(target.image_path(0, 42), Path::new("./easel-42.png"));
        assert_eq!(target.image_path(3, 45), Path::new("./easel-45.png"));
    }

    #[test]
    fn output_to_a_folder() {
        let dir = tempfile::tempdir().unwrap();
        let target = OutputTarget::from_arg(Some(dir.path()));
        assert_eq!(target, OutputTarget::Dir(dir.path().to_path_buf()));
        assert_eq!(target.image_path(1, 7), dir.path().join("easel-7.png"));
        // A path ending in `/` is a folder even before it exists.
        let new = OutputTarget::from_arg(Some(Path::new("renders/")));
        assert_eq!(new.dir(), Path::new("renders/"));
        assert_eq!(new.image_path(0, 1), Path::new("renders/easel-1.png"));
    }

    #[test]
    fn output_to_a_file_numbers_later_images() {
        let target = OutputTarget::from_arg(Some(Path::new("out/cat.png")));
        assert_eq!(target.dir(), Path::new("out"));
        assert_eq!(OutputTarget::from_arg(Some(Path::new("x.png"))).dir(), Path::new("."));
        assert_eq!(target.image_path(0, 100), Path::new("out/cat.png"));
        assert_eq!(target.image_path(1, 101), Path::new("out/cat-1.png"));
        assert_eq!(target.image_path(2, 102), Path::new("out/cat-2.png"));
        let bare = OutputTarget::from_arg(Some(Path::new("cat")));
        assert_eq!(bare.image_path(1, 0), Path::new("cat-1"));
        let dotted = OutputTarget::from_arg(Some(Path::new("my.cat.png")));
        assert_eq!(dotted.image_path(2, 0), Path::new("my.cat-2.png"));
    }

    #[test]
    fn preview_names() {
        let dir = Path::new("previews");
        assert_eq!(preview_path(dir, 0, 3, 1), Path::new("previews/step-003.png"));
        assert_eq!(preview_path(dir, 1, 12, 2), Path::new("previews/image1-step-012.png"));
        assert_eq!(preview_path(dir, 0, 1000, 1), Path::new("previews/step-1000.png"));
    }
}
