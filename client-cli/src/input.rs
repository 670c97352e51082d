//! Reading the files a request carries (`--init-image`, `--mask`, `--init-noise`): each is
//! checked before it is read, so a mistaken path (`/dev/zero`, a FIFO, a disk image) is a
//! clear error rather than a client that grows until the kernel kills it.

use std::io::Read;
use std::path::{Path, PathBuf};

use easel_proto::limits::MAX_INPUT_FILE_BYTES;

#[derive(Debug, thiserror::Error)]
pub enum InputError {
    #[error("cannot read {option} {}", path.display())]
    Io {
        option: String,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{option} {} is {kind}, not a regular file; pass a picture or .npy file", path.display())]
    NotARegularFile {
        option: String,
        path: PathBuf,
        kind: &'static str,
    },
    #[error(
        "{option} {} is {size} bytes, more than the {max} bytes easel reads; pass a smaller file (a PNG or JPEG of the output size)",
        path.display()
    )]
    TooLarge {
        option: String,
        path: PathBuf,
        size: u64,
        max: u64,
    },
    #[error("{option} {} is empty (0 bytes); pass a PNG or JPEG picture", path.display())]
    Empty { option: String, path: PathBuf },
}

/// Reads a regular file of at most [`MAX_INPUT_FILE_BYTES`]; `option` names it in errors.
pub fn read_input(option: &str, path: &Path) -> Result<Vec<u8>, InputError> {
    read_limited(option, path, MAX_INPUT_FILE_BYTES)
}

/// [`read_input`] with the limit given.
pub fn read_limited(option: &str, path: &Path, max: u64) -> Result<Vec<u8>, InputError> {
    let io = |source| InputError::Io {
        option: option.to_string(),
        path: path.to_path_buf(),
        source,
    };
    // The checks look at the opened file, not the path, so the file cannot be swapped between
    // the check and the read. Opening a FIFO for reading would block until a writer comes:
    // refuse those from the path's metadata first.
    let kind_of = |meta: &std::fs::Metadata| -> Option<&'static str> {
        use std::os::unix::fs::FileTypeExt;
        let kind = meta.file_type();
        if kind.is_file() {
            None
        } else if kind.is_dir() {
            Some("a folder")
        } else if kind.is_char_device() || kind.is_block_device() {
            Some("a device")
        } else if kind.is_fifo() {
            Some("a pipe")
        } else if kind.is_socket() {
            Some("a socket")
        } else {
            Some("not a file")
        }
    };
    let not_regular = |kind| InputError::NotARegularFile {
        option: option.to_string(),
        path: path.to_path_buf(),
        kind,
    };
    if let Some(kind) = std::fs::metadata(path).ok().as_ref().and_then(kind_of) {
        return Err(not_regular(kind));
    }
    let file = std::fs::File::open(path).map_err(io)?;
    let meta = file.metadata().map_err(io)?;
    if let Some(kind) = kind_of(&meta) {
        return Err(not_regular(kind));
    }
    let too_large = |size| InputError::TooLarge {
        option: option.to_string(),
        path: path.to_path_buf(),
        size,
        max,
    };
    if meta.len() > max {
        return Err(too_large(meta.len()));
    }
    let mut bytes = Vec::with_capacity(meta.len() as usize);
    // A file that grows while it is read still stops at the limit.
    file.take(max + 1).read_to_end(&mut bytes).map_err(io)?;
    if bytes.len() as u64 > max {
        return Err(too_large(bytes.len() as u64));
    }
    if bytes.is_empty() {
        return Err(InputError::Empty {
            option: option.to_string(),
            path: path.to_path_buf(),
        });
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn devices_folders_and_pipes_are_refused_before_reading() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("pipe");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::S_IRWXU).unwrap();
        for (path, kind) in [
            (Path::new("/dev/zero"), "a device"),
            (dir.path(), "a folder"),
            (fifo.as_path(), "a pipe"),
        ] {
            let error = read_input("--init-image", path).unwrap_err();
            assert!(matches!(error, InputError::NotARegularFile { .. }), "{error:?}");
            let message = error.to_string();
            assert!(message.contains(kind) && message.contains("--init-image"), "{message}");
        }
    }

    #[test]
    fn files_over_the_limit_and_empty_files_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let big = dir.path().join("big.png");
        std::fs::write(&big, vec![1u8; 101]).unwrap();
        let error = read_limited("--mask", &big, 100).unwrap_err();
        assert!(
            matches!(
                error,
                InputError::TooLarge {
                    size: 101,
                    max: 100,
                    ..
                }
            ),
            "{error:?}"
        );
        assert_eq!(read_limited("--mask", &big, 101).unwrap().len(), 101);
        let empty = dir.path().join("empty.png");
        std::fs::write(&empty, b"").unwrap();
        assert!(matches!(read_input("--mask", &empty), Err(InputError::Empty { .. })));
        let missing = read_input("--mask", &dir.path().join("nope.png")).unwrap_err();
        assert!(matches!(missing, InputError::Io { .. }), "{missing:?}");
    }
}
