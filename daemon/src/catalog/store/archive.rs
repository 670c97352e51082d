//! Safe extraction into the store: archives (.zip, .tar, .tar.gz, .tar.zst) and folders.
//!
//! An archive comes from elsewhere, so nothing in it is trusted. The format is told by its
//! first bytes (zip `PK\3\4` or an empty zip's `PK\5\6`, gzip `1f 8b`, zstd `28 b5 2f fd`, tar
//! `ustar` at offset 257), never by the file name alone. Every entry is checked before anything
//! is written for it:
//! - its name must be relative: no leading `/`, no `..` component, no Windows drive or UNC
//!   prefix, no NUL (a `\` counts as a separator, as Windows tools mean it);
//! - device files, fifos, sockets and sparse files are refused;
//! - a symbolic link's target must stay inside the extraction root, resolved lexically from the
//!   link's folder; a hard link must name a file the archive wrote earlier;
//! - nothing is ever written through a link: each parent of an output path is created one level
//!   at a time and refused if it is a link, and an existing link at the path itself is replaced,
//!   never followed (files are opened with `create_new`);
//! - bytes are counted as they are written (headers are never trusted), and so are entries:
//!   past [`ImportLimits`] the extraction stops with the zip-bomb error.
//!
//! Once every entry is out, each link is resolved for real ([`verify_links`]): a chain of links
//! that leaves the tree, or a dangling one, is refused too. Entries are streamed in fixed-size
//! chunks; nothing holds a whole entry in memory. Modes, owners and times are not restored: a
//! model is data, so files get the process's default permissions.
//!
//! A folder (the user's own) is copied with [`copy_folder`]: its links are followed and the files
//! they reach copied (Hugging Face cache snapshots are made of links), under the same limits.
//!
//! These functions leave whatever they wrote when they fail; the store owns the destination
//! folder and deletes it.

pub use easel_proto::units::human_bytes;
use std::cell::Cell;
use std::collections::HashSet;
use std::ffi::OsStr;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufRead, BufReader, Cursor, Read, Seek, SeekFrom, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::rc::Rc;

use ruzstd::decoding::{FrameDecoder, StreamingDecoder};

use super::{ImportLimits, ImportProgress};

/// Bytes copied per read: large enough to be fast, small enough to poll cancellation often.
const CHUNK: usize = 256 * 1024;
/// Progress is reported at most this often (in bytes of progress), plus once at the end.
const REPORT_EVERY: u64 = 4 * 1024 * 1024;
/// A link target longer than this is not a real one (Linux's PATH_MAX).
const MAX_LINK_TARGET: u64 = 4096;

// File-type bits of a Unix mode, as zip stores them in its external attributes.
const S_IFMT: u32 = 0o170_000;
const S_IFSOCK: u32 = 0o140_000;
const S_IFLNK: u32 = 0o120_000;
const S_IFBLK: u32 = 0o060_000;
const S_IFDIR: u32 = 0o040_000;
const S_IFCHR: u32 = 0o020_000;
const S_IFIFO: u32 = 0o010_000;

#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    #[error(
        "{path} is not an archive easel can import ({found}); pass a model folder, or a .zip, .tar, .tar.gz or .tar.zst of one"
    )]
    UnknownFormat { path: PathBuf, found: &'static str },
    #[error(
        "{path} is {compression}-compressed but does not hold a tar archive; easel imports .tar.gz and .tar.zst files made from a tar of the model folder (or .zip and .tar)"
    )]
    NotTar { path: PathBuf, compression: &'static str },
    #[error("archive entry `{entry}` escapes the model folder; the archive is unsafe, rebuild it with relative paths")]
    Escapes { entry: String },
    #[error(
        "archive entry `{entry}` has a name easel cannot use ({reason}); rebuild the archive with plain relative paths"
    )]
    BadName { entry: String, reason: &'static str },
    #[error(
        "archive entry `{entry}` is a link to `{target}`, outside the model folder; the archive is unsafe, rebuild it with the files themselves or with links that stay inside the folder"
    )]
    LinkEscapes { entry: String, target: String },
    #[error(
        "archive entry `{entry}` is a link to `{target}`, which is nothing in the model folder; rebuild the archive with the files themselves"
    )]
    DanglingLink { entry: String, target: String },
    #[error(
        "archive entry `{entry}` would be written through the link `{link}`; the archive is unsafe, rebuild it without entries under links"
    )]
    ThroughLink { entry: String, link: String },
    #[error(
        "archive entry `{entry}` is a {kind}; a model archive holds only files, folders and links, rebuild it without it"
    )]
    SpecialFile { entry: String, kind: &'static str },
    #[error("archive entry `{entry}` has an unsupported type ({kind}); rebuild the archive with plain files")]
    UnsupportedEntry { entry: String, kind: String },
    #[error("archive entry `{entry}` clashes with an earlier entry ({reason}); the archive is damaged, rebuild it")]
    Clash { entry: String, reason: &'static str },
    #[error("{path} is a {kind}; a model folder holds only files, folders and links to them, import a copy without it")]
    FolderSpecialFile { path: PathBuf, kind: &'static str },
    #[error(
        "{path} is a link to the folder {target}, outside the model folder; import a copy of the model with the folder itself in place of the link"
    )]
    FolderLinkEscapes { path: PathBuf, target: PathBuf },
    #[error(
        "not enough free disk for the import: {} free on the model store's disk ({store}){}, and easel keeps {} free (import_keep_free); free some space, or lower import_keep_free",
        human_bytes(*available),
        needed.map(|n| format!(", the model needs {}", human_bytes(n))).unwrap_or_default(),
        human_bytes(*keep_free)
    )]
    NoSpace {
        store: PathBuf,
        available: u64,
        needed: Option<u64>,
        keep_free: u64,
    },
    #[error("{path} is a link that leads back to a folder above it; import a copy of the model without the loop")]
    FolderLoop { path: PathBuf },
    #[error("{what} (max_import_bytes); raise the limit if you trust it")]
    TooLarge { what: String },
    #[error("{what} more than {limit} entries (max_import_files); raise the limit if you trust it")]
    TooManyEntries { what: &'static str, limit: u64 },
    #[error(
        "{path} uses a zip feature easel does not read ({message}); rebuild it with deflate or no compression, and no encryption"
    )]
    UnsupportedZip { path: PathBuf, message: String },
    #[error("cannot read {path}: {message}; the archive may be truncated or damaged, download or build it again")]
    Corrupt { path: PathBuf, message: String },
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot write {path}: {source}; check the free space and permissions of the model store")]
    Write {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("the import was cancelled")]
    Cancelled,
}

/// The archive formats easel reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Zip,
    Tar,
    TarGz,
    TarZst,
}

/// Tells an archive's format from its first bytes.
pub fn detect(path: &Path) -> Result<Format, ArchiveError> {
    let read_error = |source| ArchiveError::Read {
        path: path.to_path_buf(),
        source,
    };
    let mut file = File::open(path).map_err(read_error)?;
    let head = read_up_to(&mut file, 512).map_err(read_error)?;
    let unknown = |found| ArchiveError::UnknownFormat {
        path: path.to_path_buf(),
        found,
    };
    if head.starts_with(b"PK\x03\x04") || head.starts_with(b"PK\x05\x06") {
        Ok(Format::Zip)
    } else if head.starts_with(&[0x1f, 0x8b]) {
        Ok(Format::TarGz)
    } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        Ok(Format::TarZst)
    } else if is_tar_start(&head) {
        Ok(Format::Tar)
    } else if head.starts_with(&[0xfd, b'7', b'z', b'X', b'Z', 0]) {
        Err(unknown("it is xz-compressed; recompress the tar with gzip or zstd"))
    } else if head.starts_with(b"BZh") {
        Err(unknown("it is bzip2-compressed; recompress the tar with gzip or zstd"))
    } else if head.starts_with(b"7z\xbc\xaf\x27\x1c") {
        Err(unknown("it is a 7-Zip archive"))
    } else if head.starts_with(b"Rar!") {
        Err(unknown("it is a RAR archive"))
    } else {
        Err(unknown("its content is not zip, tar, gzip or zstd"))
    }
}

/// A tar archive starts with a ustar header (POSIX and GNU both write the magic) or, when
/// empty, with a zero block.
fn is_tar_start(head: &[u8]) -> bool {
    (head.len() >= 262 && &head[257..262] == b"ustar") || (head.len() == 512 && head.iter().all(|&b| b == 0))
}

/// Extracts `archive` into `dest` (an existing, empty folder) under the rules of this module.
pub fn extract(
    archive: &Path,
    dest: &Path,
    limits: ImportLimits,
    progress: &mut dyn FnMut(ImportProgress),
    cancelled: &dyn Fn() -> bool,
) -> Result<Format, ArchiveError> {
    let format = detect(archive)?;
    let read_error = |source| ArchiveError::Read {
        path: archive.to_path_buf(),
        source,
    };
    let file = File::open(archive).map_err(read_error)?;
    let total = file.metadata().map_err(read_error)?.len();
    let position = Rc::new(Cell::new(0));
    let source = BufReader::with_capacity(
        CHUNK,
        Tracked {
            inner: file,
            position: position.clone(),
        },
    );
    let mut sink = Sink::new(
        dest,
        limits,
        Subject::Archive,
        progress,
        cancelled,
        ProgressSource::Position { position, total },
    );
    match format {
        Format::Zip => extract_zip(archive, source, &mut sink)?,
        Format::Tar => extract_tar(archive, source, &mut sink)?,
        Format::TarGz => {
            let decoded = flate2::read::MultiGzDecoder::new(source);
            let tar = with_tar_check(archive, "gzip", decoded)?;
            extract_tar(archive, tar, &mut sink)?;
        }
        Format::TarZst => {
            let decoded = ZstdFrames::new(source).map_err(|e| ArchiveError::Corrupt {
                path: archive.to_path_buf(),
                message: format!("zstd: {e}"),
            })?;
            let tar = with_tar_check(archive, "zstd", decoded)?;
            extract_tar(archive, tar, &mut sink)?;
        }
    }
    sink.finish()?;
    Ok(format)
}

/// Reads the first block of a decompressed stream to check it is a tar, then gives the whole
/// stream back.
fn with_tar_check<R: Read>(
    archive: &Path,
    compression: &'static str,
    mut decoded: R,
) -> Result<impl Read, ArchiveError> {
    let head = read_up_to(&mut decoded, 512).map_err(|e| ArchiveError::Corrupt {
        path: archive.to_path_buf(),
        message: format!("{compression}: {e}"),
    })?;
    if !is_tar_start(&head) {
        return Err(ArchiveError::NotTar {
            path: archive.to_path_buf(),
            compression,
        });
    }
    Ok(Cursor::new(head).chain(decoded))
}

fn extract_zip<R: Read + Seek>(archive: &Path, source: R, sink: &mut Sink<'_>) -> Result<(), ArchiveError> {
    let corrupt = |e: zip::result::ZipError| match e {
        zip::result::ZipError::UnsupportedArchive(message) => ArchiveError::UnsupportedZip {
            path: archive.to_path_buf(),
            message: message.to_string(),
        },
        other => ArchiveError::Corrupt {
            path: archive.to_path_buf(),
            message: other.to_string(),
        },
    };
    let mut zip = zip::ZipArchive::new(source).map_err(corrupt)?;
    // The central directory's count is only a hint, but refusing early spares the work.
    if zip.len() as u64 > sink.limits.max_files {
        return Err(sink.too_many_entries());
    }
    // Likewise the sizes it declares: a zip that says it will not fit is refused before a byte
    // is written (one that lies is caught while writing).
    let declared = (0..zip.len())
        .filter_map(|i| zip.by_index_raw(i).ok().map(|entry| entry.size()))
        .fold(0u64, u64::saturating_add);
    sink.ensure_room(Some(declared))?;
    for index in 0..zip.len() {
        sink.check_cancelled()?;
        let mut entry = zip.by_index(index).map_err(corrupt)?;
        let name = entry.name().to_string();
        let relative = entry_path(name.as_bytes())?;
        match entry.unix_mode().map(|mode| mode & S_IFMT) {
            Some(S_IFLNK) => {
                let target = read_link_target(&mut entry).map_err(|e| ArchiveError::Corrupt {
                    path: archive.to_path_buf(),
                    message: format!("entry `{name}`: {e}"),
                })?;
                sink.symlink(&relative, &name, &target)?;
            }
            Some(S_IFCHR | S_IFBLK) => return Err(special(&name, "device file")),
            Some(S_IFIFO) => return Err(special(&name, "fifo")),
            Some(S_IFSOCK) => return Err(special(&name, "socket")),
            Some(S_IFDIR) => sink.directory(&relative, &name)?,
            _ if entry.is_dir() => sink.directory(&relative, &name)?,
            _ => sink.file(&relative, &name, &mut entry, &|e| ArchiveError::Corrupt {
                path: archive.to_path_buf(),
                message: format!("entry `{name}`: {e}"),
            })?,
        }
    }
    Ok(())
}

fn extract_tar<R: Read>(archive: &Path, source: R, sink: &mut Sink<'_>) -> Result<(), ArchiveError> {
    use tar::EntryType;
    let corrupt = |e: io::Error| ArchiveError::Corrupt {
        path: archive.to_path_buf(),
        message: e.to_string(),
    };
    let mut tar = tar::Archive::new(source);
    for entry in tar.entries().map_err(corrupt)? {
        sink.check_cancelled()?;
        let mut entry = entry.map_err(corrupt)?;
        let kind = entry.header().entry_type();
        let raw_name = entry.path_bytes().into_owned();
        let name = String::from_utf8_lossy(&raw_name).into_owned();
        match kind {
            // Metadata for other entries (the tar crate applies the per-entry ones itself).
            EntryType::XGlobalHeader | EntryType::XHeader | EntryType::GNULongName | EntryType::GNULongLink => {
                continue;
            }
            EntryType::Char | EntryType::Block => return Err(special(&name, "device file")),
            EntryType::Fifo => return Err(special(&name, "fifo")),
            _ => {}
        }
        let relative = entry_path(&raw_name)?;
        match kind {
            // Pre-POSIX tars mark folders only with a trailing slash.
            EntryType::Regular if raw_name.ends_with(b"/") => sink.directory(&relative, &name)?,
            EntryType::Regular | EntryType::Continuous => {
                sink.file(&relative, &name, &mut entry, &|e| ArchiveError::Corrupt {
                    path: archive.to_path_buf(),
                    message: format!("entry `{name}`: {e}"),
                })?
            }
            EntryType::Directory => sink.directory(&relative, &name)?,
            EntryType::Symlink => {
                let target = entry.link_name_bytes().map(|t| t.into_owned()).unwrap_or_default();
                sink.symlink(&relative, &name, &target)?;
            }
            EntryType::Link => {
                let target = entry.link_name_bytes().map(|t| t.into_owned()).unwrap_or_default();
                sink.hard_link(&relative, &name, &target)?;
            }
            EntryType::GNUSparse => {
                return Err(ArchiveError::UnsupportedEntry {
                    entry: name,
                    kind: "sparse file".into(),
                });
            }
            other => {
                return Err(ArchiveError::UnsupportedEntry {
                    entry: name,
                    kind: format!("tar type {:?}", other.as_byte() as char),
                });
            }
        }
    }
    Ok(())
}

fn special(entry: &str, kind: &'static str) -> ArchiveError {
    ArchiveError::SpecialFile {
        entry: entry.to_string(),
        kind,
    }
}

fn read_link_target(reader: &mut impl Read) -> io::Result<Vec<u8>> {
    let mut target = Vec::new();
    reader.take(MAX_LINK_TARGET + 1).read_to_end(&mut target)?;
    if target.len() as u64 > MAX_LINK_TARGET {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "the link target is too long",
        ));
    }
    Ok(target)
}

/// Turns an entry name into a relative path of plain components, or refuses it. `.` components
/// are dropped, so the root itself (`./`) comes back empty.
pub fn entry_path(raw: &[u8]) -> Result<PathBuf, ArchiveError> {
    let entry = String::from_utf8_lossy(raw).into_owned();
    if raw.contains(&0) {
        return Err(ArchiveError::BadName {
            entry,
            reason: "it contains a NUL byte",
        });
    }
    if raw.starts_with(b"/") || raw.starts_with(b"\\") {
        return Err(ArchiveError::Escapes { entry });
    }
    let mut path = PathBuf::new();
    for (index, component) in raw.split(|&b| b == b'/' || b == b'\\').enumerate() {
        match component {
            b"" | b"." => {}
            b".." => return Err(ArchiveError::Escapes { entry }),
            // `C:` (a drive) as the first component: absolute on Windows.
            [letter, b':', ..] if index == 0 && letter.is_ascii_alphabetic() => {
                return Err(ArchiveError::Escapes { entry });
            }
            _ => path.push(OsStr::from_bytes(component)),
        }
    }
    Ok(path)
}

/// Whether a symbolic link at `link` (relative to the root) pointing to `target` stays inside
/// the root when resolved lexically from the link's folder.
fn link_stays_inside(link: &Path, target: &[u8]) -> bool {
    if target.is_empty() || target.starts_with(b"/") {
        return false;
    }
    let mut depth = link.parent().map_or(0, |parent| parent.components().count());
    for component in target.split(|&b| b == b'/') {
        match component {
            b"" | b"." => {}
            b".." => match depth.checked_sub(1) {
                Some(up) => depth = up,
                None => return false,
            },
            _ => depth += 1,
        }
    }
    true
}

/// Resolves every symbolic link under `root` and checks it lands inside `root`: links that
/// chain out of the tree, dangle or loop are refused. Run again by the store on the model root
/// it picks, which may be a sub-folder of what was extracted.
pub fn verify_links(root: &Path) -> Result<(), ArchiveError> {
    let canonical_root = fs::canonicalize(root).map_err(|source| ArchiveError::Read {
        path: root.to_path_buf(),
        source,
    })?;
    let mut pending = vec![root.to_path_buf()];
    while let Some(dir) = pending.pop() {
        let read_error = |source| ArchiveError::Read {
            path: dir.clone(),
            source,
        };
        for item in fs::read_dir(&dir).map_err(read_error)? {
            let item = item.map_err(read_error)?;
            let path = item.path();
            let file_type = item.file_type().map_err(read_error)?;
            if file_type.is_dir() {
                pending.push(path);
            } else if file_type.is_symlink() {
                let entry = path.strip_prefix(root).unwrap_or(&path).display().to_string();
                let target = fs::read_link(&path)
                    .map(|t| t.display().to_string())
                    .unwrap_or_default();
                match fs::canonicalize(&path) {
                    Ok(resolved) if resolved.starts_with(&canonical_root) => {}
                    Ok(_) => return Err(ArchiveError::LinkEscapes { entry, target }),
                    Err(_) => return Err(ArchiveError::DanglingLink { entry, target }),
                }
            }
        }
    }
    Ok(())
}

/// Copies the folder `source` into `dest` (an existing, empty folder), following links, under
/// `limits`. Device files, fifos, sockets, broken links and link loops are refused.
pub fn copy_folder(
    source: &Path,
    dest: &Path,
    limits: ImportLimits,
    progress: &mut dyn FnMut(ImportProgress),
    cancelled: &dyn Fn() -> bool,
) -> Result<(), ArchiveError> {
    let mut plan = Vec::new();
    let mut ancestors = Vec::new();
    let root = fs::canonicalize(source).map_err(|e| ArchiveError::Read {
        path: source.to_path_buf(),
        source: e,
    })?;
    plan_copy(&root, source, Path::new(""), limits, &mut plan, &mut ancestors)?;
    let total = plan
        .iter()
        .map(|item| match item {
            Planned::File { size, .. } => *size,
            Planned::Dir { .. } => 0,
        })
        .sum();
    let mut sink = Sink::new(
        dest,
        limits,
        Subject::Folder,
        progress,
        cancelled,
        ProgressSource::Written { total },
    );
    sink.ensure_room(Some(total))?;
    for item in &plan {
        sink.check_cancelled()?;
        match item {
            Planned::Dir { relative } => sink.directory(relative, &relative.display().to_string())?,
            Planned::File { relative, from, .. } => {
                let read_error = |source| ArchiveError::Read {
                    path: from.clone(),
                    source,
                };
                let mut file = File::open(from).map_err(read_error)?;
                sink.file(relative, &relative.display().to_string(), &mut file, &read_error)?;
            }
        }
    }
    sink.finish()
}

enum Planned {
    Dir {
        relative: PathBuf,
    },
    File {
        relative: PathBuf,
        from: PathBuf,
        size: u64,
    },
}

/// Lists what to copy, depth first and sorted by name. `ancestors` holds the (device, inode) of
/// the folders above, to catch links that loop. Links to files are followed wherever they lead
/// (a Hugging Face cache links each file to its blob); a link to a folder must stay inside
/// `root` (the canonical source), or a link to `$EASEL_HOME/models` would copy the whole store.
fn plan_copy(
    root: &Path,
    dir: &Path,
    relative: &Path,
    limits: ImportLimits,
    plan: &mut Vec<Planned>,
    ancestors: &mut Vec<(u64, u64)>,
) -> Result<(), ArchiveError> {
    let read_error = |source| ArchiveError::Read {
        path: dir.to_path_buf(),
        source,
    };
    let here = fs::metadata(dir).map_err(read_error)?;
    if ancestors.contains(&(here.dev(), here.ino())) {
        return Err(ArchiveError::FolderLoop {
            path: dir.to_path_buf(),
        });
    }
    ancestors.push((here.dev(), here.ino()));
    let mut children: Vec<_> = fs::read_dir(dir)
        .map_err(read_error)?
        .collect::<Result<Vec<_>, _>>()
        .map_err(read_error)?;
    children.sort_by_key(|c| c.file_name());
    for child in children {
        let path = child.path();
        let child_relative = relative.join(child.file_name());
        // Follows links: a folder is the user's own, and the files behind its links are the model.
        let metadata = fs::metadata(&path).map_err(|source| ArchiveError::Read {
            path: path.clone(),
            source,
        })?;
        let file_type = metadata.file_type();
        if file_type.is_dir() {
            if child.file_type().is_ok_and(|t| t.is_symlink()) {
                let target = fs::canonicalize(&path).map_err(|source| ArchiveError::Read {
                    path: path.clone(),
                    source,
                })?;
                if !target.starts_with(root) {
                    return Err(ArchiveError::FolderLinkEscapes { path, target });
                }
            }
            plan.push(Planned::Dir {
                relative: child_relative.clone(),
            });
            plan_copy(root, &path, &child_relative, limits, plan, ancestors)?;
        } else if file_type.is_file() {
            plan.push(Planned::File {
                relative: child_relative,
                from: path,
                size: metadata.len(),
            });
        } else {
            return Err(ArchiveError::FolderSpecialFile {
                path,
                kind: special_kind(&file_type),
            });
        }
        if plan.len() as u64 > limits.max_files {
            return Err(ArchiveError::TooManyEntries {
                what: Subject::Folder.holds(),
                limit: limits.max_files,
            });
        }
    }
    ancestors.pop();
    Ok(())
}

fn special_kind(file_type: &fs::FileType) -> &'static str {
    use std::os::unix::fs::FileTypeExt;
    if file_type.is_block_device() || file_type.is_char_device() {
        "device file"
    } else if file_type.is_fifo() {
        "fifo"
    } else if file_type.is_socket() {
        "socket"
    } else {
        "special file"
    }
}

/// What is being unpacked, for the limit errors.
#[derive(Clone, Copy)]
enum Subject {
    Archive,
    Folder,
}

impl Subject {
    fn holds(self) -> &'static str {
        match self {
            Subject::Archive => "the archive holds",
            Subject::Folder => "the folder holds",
        }
    }

    fn too_large(self, limit: u64) -> String {
        match self {
            Subject::Archive => format!("the archive expands beyond {}", human_bytes(limit)),
            Subject::Folder => format!("the folder holds more than {}", human_bytes(limit)),
        }
    }
}

/// What progress counts: the position in the (compressed) source file, or the bytes written.
enum ProgressSource {
    Position { position: Rc<Cell<u64>>, total: u64 },
    Written { total: u64 },
}

/// The writing side of an extraction: enforces the path, link and limit rules on every entry.
struct Sink<'a> {
    root: PathBuf,
    limits: ImportLimits,
    subject: Subject,
    bytes_written: u64,
    entries: u64,
    /// Regular files written so far (relative): what a hard link may point at.
    files: HashSet<PathBuf>,
    progress: &'a mut dyn FnMut(ImportProgress),
    cancelled: &'a dyn Fn() -> bool,
    progress_source: ProgressSource,
    last_reported: u64,
    buffer: Vec<u8>,
    /// `bytes_written` at which the free disk space is looked at next.
    next_space_check: u64,
}

/// The free space on `path`'s disk; tests replace it (per thread) to fill a disk on demand.
fn available_bytes(path: &Path) -> io::Result<u64> {
    #[cfg(test)]
    if let Some(free) = tests::FAKE_FREE_SPACE.with(|fake| fake.borrow_mut().as_mut().map(|next| next())) {
        return Ok(free);
    }
    super::available_bytes(path)
}

/// How often (in bytes written) an import looks at the free disk space.
const SPACE_CHECK_EVERY: u64 = 8 << 20;

impl<'a> Sink<'a> {
    fn new(
        root: &Path,
        limits: ImportLimits,
        subject: Subject,
        progress: &'a mut dyn FnMut(ImportProgress),
        cancelled: &'a dyn Fn() -> bool,
        progress_source: ProgressSource,
    ) -> Self {
        let mut sink = Self {
            root: root.to_path_buf(),
            limits,
            subject,
            bytes_written: 0,
            entries: 0,
            files: HashSet::new(),
            progress,
            cancelled,
            progress_source,
            last_reported: 0,
            buffer: vec![0; CHUNK],
            next_space_check: 0,
        };
        sink.report(true);
        sink
    }

    fn check_cancelled(&self) -> Result<(), ArchiveError> {
        if (self.cancelled)() {
            Err(ArchiveError::Cancelled)
        } else {
            Ok(())
        }
    }

    /// Refuses the import unless `needed` more bytes (when known) fit on the disk with
    /// `keep_free` to spare. A disk whose free space cannot be read is not held against it.
    fn ensure_room(&self, needed: Option<u64>) -> Result<(), ArchiveError> {
        let Ok(available) = available_bytes(&self.root) else {
            return Ok(());
        };
        let keep_free = self.limits.keep_free;
        if available < keep_free.saturating_add(needed.unwrap_or(0)) {
            return Err(ArchiveError::NoSpace {
                store: self.root.parent().unwrap_or(&self.root).to_path_buf(),
                available,
                needed,
                keep_free,
            });
        }
        Ok(())
    }

    fn too_many_entries(&self) -> ArchiveError {
        ArchiveError::TooManyEntries {
            what: self.subject.holds(),
            limit: self.limits.max_files,
        }
    }

    fn count_entry(&mut self) -> Result<(), ArchiveError> {
        self.entries += 1;
        if self.entries > self.limits.max_files {
            return Err(self.too_many_entries());
        }
        Ok(())
    }

    fn report(&mut self, force: bool) {
        let (done, total) = match &self.progress_source {
            ProgressSource::Position { position, total } => (position.get().min(*total), *total),
            ProgressSource::Written { total } => (self.bytes_written, *total),
        };
        if force || done >= self.last_reported + REPORT_EVERY {
            self.last_reported = done;
            (self.progress)(ImportProgress::Bytes { done, total });
        }
    }

    /// Creates the missing parents of `relative` one level at a time, refusing any that is a
    /// link (so nothing is ever written through one) or a file; returns the output path.
    fn prepare(&self, relative: &Path, entry: &str) -> Result<PathBuf, ArchiveError> {
        let mut path = self.root.clone();
        let mut components = relative.components().peekable();
        while let Some(component) = components.next() {
            path.push(component);
            if components.peek().is_none() {
                break;
            }
            match fs::symlink_metadata(&path) {
                Ok(meta) if meta.file_type().is_symlink() => {
                    return Err(ArchiveError::ThroughLink {
                        entry: entry.to_string(),
                        link: path.strip_prefix(&self.root).unwrap_or(&path).display().to_string(),
                    });
                }
                Ok(meta) if meta.is_dir() => {}
                Ok(_) => {
                    return Err(ArchiveError::Clash {
                        entry: entry.to_string(),
                        reason: "a folder on its path is a file",
                    });
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    fs::create_dir(&path).map_err(|source| ArchiveError::Write {
                        path: path.clone(),
                        source,
                    })?;
                }
                Err(source) => return Err(ArchiveError::Write { path, source }),
            }
        }
        Ok(path)
    }

    /// Makes room for a file or link at `path`: an earlier file or link of that name is
    /// removed (the later entry wins, as tar does), a folder is a clash.
    fn clear(&mut self, path: &Path, relative: &Path, entry: &str) -> Result<(), ArchiveError> {
        match fs::symlink_metadata(path) {
            Ok(meta) if meta.is_dir() => Err(ArchiveError::Clash {
                entry: entry.to_string(),
                reason: "a folder of that name exists",
            }),
            Ok(_) => {
                self.files.remove(relative);
                fs::remove_file(path).map_err(|source| ArchiveError::Write {
                    path: path.to_path_buf(),
                    source,
                })
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(source) => Err(ArchiveError::Write {
                path: path.to_path_buf(),
                source,
            }),
        }
    }

    fn directory(&mut self, relative: &Path, entry: &str) -> Result<(), ArchiveError> {
        self.count_entry()?;
        if relative.as_os_str().is_empty() {
            return Ok(()); // `./`: the root itself
        }
        let path = self.prepare(relative, entry)?;
        match fs::symlink_metadata(&path) {
            Ok(meta) if meta.is_dir() => Ok(()),
            Ok(meta) if meta.file_type().is_symlink() => Err(ArchiveError::ThroughLink {
                entry: entry.to_string(),
                link: relative.display().to_string(),
            }),
            Ok(_) => Err(ArchiveError::Clash {
                entry: entry.to_string(),
                reason: "a file of that name exists",
            }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                fs::create_dir(&path).map_err(|source| ArchiveError::Write { path, source })
            }
            Err(source) => Err(ArchiveError::Write { path, source }),
        }
    }

    /// Streams `reader` into the file `relative`, counting bytes against the limit.
    fn file(
        &mut self,
        relative: &Path,
        entry: &str,
        reader: &mut dyn Read,
        read_error: &dyn Fn(io::Error) -> ArchiveError,
    ) -> Result<(), ArchiveError> {
        self.count_entry()?;
        if relative.as_os_str().is_empty() {
            return Err(ArchiveError::BadName {
                entry: entry.to_string(),
                reason: "a file cannot be the root folder",
            });
        }
        let path = self.prepare(relative, entry)?;
        self.clear(&path, relative, entry)?;
        let write_error = |source| ArchiveError::Write {
            path: path.clone(),
            source,
        };
        // `create_new` never follows a link at the path (there is none: `clear` removed it).
        let mut out = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(write_error)?;
        loop {
            self.check_cancelled()?;
            let read = match reader.read(&mut self.buffer) {
                Ok(0) => break,
                Ok(read) => read,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(read_error(e)),
            };
            if self.bytes_written + read as u64 > self.limits.max_bytes {
                return Err(ArchiveError::TooLarge {
                    what: self.subject.too_large(self.limits.max_bytes),
                });
            }
            // Sizes an archive declares can lie: the disk itself is watched while writing.
            if self.bytes_written >= self.next_space_check {
                self.ensure_room(None)?;
                self.next_space_check = self.bytes_written + SPACE_CHECK_EVERY;
            }
            out.write_all(&self.buffer[..read]).map_err(write_error)?;
            self.bytes_written += read as u64;
            self.report(false);
        }
        self.files.insert(relative.to_path_buf());
        Ok(())
    }

    fn symlink(&mut self, relative: &Path, entry: &str, target: &[u8]) -> Result<(), ArchiveError> {
        self.count_entry()?;
        let target_text = String::from_utf8_lossy(target).into_owned();
        if target.contains(&0) {
            return Err(ArchiveError::BadName {
                entry: entry.to_string(),
                reason: "its link target contains a NUL byte",
            });
        }
        if relative.as_os_str().is_empty() || !link_stays_inside(relative, target) {
            return Err(ArchiveError::LinkEscapes {
                entry: entry.to_string(),
                target: target_text,
            });
        }
        let path = self.prepare(relative, entry)?;
        self.clear(&path, relative, entry)?;
        std::os::unix::fs::symlink(OsStr::from_bytes(target), &path)
            .map_err(|source| ArchiveError::Write { path, source })
    }

    /// A tar hard link: `target` is an archive path, and must be a file written earlier.
    fn hard_link(&mut self, relative: &Path, entry: &str, target: &[u8]) -> Result<(), ArchiveError> {
        self.count_entry()?;
        let target_text = String::from_utf8_lossy(target).into_owned();
        let escapes = || ArchiveError::LinkEscapes {
            entry: entry.to_string(),
            target: target_text.clone(),
        };
        let target_relative = entry_path(target).map_err(|_| escapes())?;
        if !self.files.contains(&target_relative) {
            return Err(ArchiveError::DanglingLink {
                entry: entry.to_string(),
                target: target_text,
            });
        }
        if relative.as_os_str().is_empty() {
            return Err(escapes());
        }
        let path = self.prepare(relative, entry)?;
        if target_relative == relative {
            return Ok(()); // a link to itself: the file is already there
        }
        self.clear(&path, relative, entry)?;
        fs::hard_link(self.root.join(&target_relative), &path).map_err(|source| ArchiveError::Write {
            path: path.clone(),
            source,
        })?;
        self.files.insert(relative.to_path_buf());
        Ok(())
    }

    /// Resolves every link for real, then reports the final progress.
    fn finish(mut self) -> Result<(), ArchiveError> {
        verify_links(&self.root)?;
        if let ProgressSource::Position { position, total } = &self.progress_source {
            position.set(*total);
        }
        self.report(true);
        Ok(())
    }
}

/// A reader that records how far into the source it has read (for progress).
struct Tracked<R> {
    inner: R,
    position: Rc<Cell<u64>>,
}

impl<R: Read> Read for Tracked<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let read = self.inner.read(buf)?;
        self.position.set(self.position.get() + read as u64);
        Ok(read)
    }
}

impl<R: Seek> Seek for Tracked<R> {
    fn seek(&mut self, pos: SeekFrom) -> io::Result<u64> {
        let at = self.inner.seek(pos)?;
        self.position.set(at);
        Ok(at)
    }
}

/// A zstd stream of one or more frames (`pzstd` and concatenated files write several); ruzstd's
/// decoder reads one. Windows over 100 MiB are refused by ruzstd, which bounds its memory.
struct ZstdFrames<R: BufRead> {
    decoder: Option<StreamingDecoder<R, FrameDecoder>>,
}

impl<R: BufRead> ZstdFrames<R> {
    fn new(source: R) -> io::Result<Self> {
        let decoder = StreamingDecoder::new(source).map_err(io::Error::other)?;
        Ok(Self { decoder: Some(decoder) })
    }
}

impl<R: BufRead> Read for ZstdFrames<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            let Some(decoder) = self.decoder.as_mut() else {
                return Ok(0);
            };
            let read = decoder.read(buf)?;
            if read > 0 || buf.is_empty() {
                return Ok(read);
            }
            if decoder.get_mut().fill_buf()?.is_empty() {
                return Ok(0);
            }
            // This frame is done and more bytes follow: decode the next frame.
            let Some(finished) = self.decoder.take() else {
                return Ok(0);
            };
            let (source, frame) = finished.into_parts();
            self.decoder = Some(StreamingDecoder::new_with_decoder(source, frame).map_err(io::Error::other)?);
        }
    }
}

/// Reads until `limit` bytes or the end, whichever comes first.
fn read_up_to(reader: &mut impl Read, limit: u64) -> io::Result<Vec<u8>> {
    let mut head = Vec::new();
    reader.take(limit).read_to_end(&mut head)?;
    Ok(head)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// An archive entry for the test builders; names and targets are written raw, unchecked.
    pub(crate) enum Item<'a> {
        File(&'a str, &'a [u8]),
        Dir(&'a str),
        Symlink(&'a str, &'a str),
        HardLink(&'a str, &'a str),
        CharDevice(&'a str),
        Fifo(&'a str),
    }

    /// A tar with the given entries, names copied byte for byte into the headers (the tar
    /// crate's own setters refuse `..` and absolute paths, which these tests need).
    pub(crate) fn tar_bytes(items: &[Item<'_>]) -> Vec<u8> {
        let mut builder = tar::Builder::new(Vec::new());
        for item in items {
            let (name, kind, data, link): (&str, tar::EntryType, &[u8], &str) = match item {
                Item::File(name, data) => (name, tar::EntryType::Regular, data, ""),
                Item::Dir(name) => (name, tar::EntryType::Directory, b"", ""),
                Item::Symlink(name, target) => (name, tar::EntryType::Symlink, b"", target),
                Item::HardLink(name, target) => (name, tar::EntryType::Link, b"", target),
                Item::CharDevice(name) => (name, tar::EntryType::Char, b"", ""),
                Item::Fifo(name) => (name, tar::EntryType::Fifo, b"", ""),
            };
            let mut header = tar::Header::new_ustar();
            let old = header.as_old_mut();
            old.name[..name.len()].copy_from_slice(name.as_bytes());
            old.linkname[..link.len()].copy_from_slice(link.as_bytes());
            header.set_entry_type(kind);
            header.set_size(data.len() as u64);
            header.set_mode(0o644);
            header.set_cksum();
            builder.append(&header, data).unwrap();
        }
        builder.into_inner().unwrap()
    }

    pub(crate) fn zip_bytes(items: &[Item<'_>]) -> Vec<u8> {
        let options = zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Deflated);
        let mut zip = zip::ZipWriter::new(Cursor::new(Vec::new()));
        for item in items {
            match item {
                Item::File(name, data) => {
                    zip.start_file(*name, options).unwrap();
                    zip.write_all(data).unwrap();
                }
                Item::Dir(name) => zip.add_directory(*name, options).unwrap(),
                Item::Symlink(name, target) => zip.add_symlink(*name, *target, options).unwrap(),
                _ => panic!("zip has no such entries"),
            }
        }
        zip.finish().unwrap().into_inner()
    }

    pub(crate) fn gzip(data: &[u8]) -> Vec<u8> {
        let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        encoder.write_all(data).unwrap();
        encoder.finish().unwrap()
    }

    /// One zstd frame holding `content` in raw (stored) blocks: magic, a frame header with the
    /// single-segment flag and a 4-byte content size, then blocks of at most 128 KiB, each with
    /// a 3-byte header (last-block bit, type 0 = raw, size << 3).
    pub(crate) fn zstd_frame(content: &[u8]) -> Vec<u8> {
        const MAX_BLOCK: usize = 128 * 1024;
        let mut frame = vec![0x28, 0xb5, 0x2f, 0xfd, 0b1010_0000];
        frame.extend((content.len() as u32).to_le_bytes());
        let blocks: Vec<&[u8]> = if content.is_empty() {
            vec![&[]]
        } else {
            content.chunks(MAX_BLOCK).collect()
        };
        for (index, block) in blocks.iter().enumerate() {
            let last = u32::from(index + 1 == blocks.len());
            let header = last | ((block.len() as u32) << 3);
            frame.extend(&header.to_le_bytes()[..3]);
            frame.extend(*block);
        }
        frame
    }

    struct Extraction {
        _dir: tempfile::TempDir,
        dest: PathBuf,
        result: Result<Format, ArchiveError>,
        reports: Vec<ImportProgress>,
    }

    fn extract_bytes(file_name: &str, bytes: &[u8], limits: ImportLimits) -> Extraction {
        let dir = tempfile::tempdir().unwrap();
        let archive = dir.path().join(file_name);
        fs::write(&archive, bytes).unwrap();
        // Nested, so an escape to `../` would land in a folder the test can look at.
        let dest = dir.path().join("out/dest");
        fs::create_dir_all(&dest).unwrap();
        let mut reports = Vec::new();
        let result = extract(&archive, &dest, limits, &mut |p| reports.push(p), &|| false);
        Extraction {
            _dir: dir,
            dest,
            result,
            reports,
        }
    }

    fn model_items() -> Vec<Item<'static>> {
        vec![
            Item::File("model_index.json", b"{}"),
            Item::Dir("unet/"),
            Item::File("unet/model.onnx", b"weights"),
            Item::File("tokenizer/vocab.json", b"{\"a\": 0}"),
        ]
    }

    fn prefixed(prefix: &'static str, items: Vec<Item<'static>>) -> Vec<Item<'static>> {
        let leak = |name: &str| -> &'static str { Box::leak(format!("{prefix}{name}").into_boxed_str()) };
        items
            .into_iter()
            .map(|item| match item {
                Item::File(name, data) => Item::File(leak(name), data),
                Item::Dir(name) => Item::Dir(leak(name)),
                other => other,
            })
            .collect()
    }

    fn assert_model_at(root: &Path) {
        assert_eq!(fs::read(root.join("model_index.json")).unwrap(), b"{}");
        assert_eq!(fs::read(root.join("unet/model.onnx")).unwrap(), b"weights");
        assert_eq!(fs::read(root.join("tokenizer/vocab.json")).unwrap(), b"{\"a\": 0}");
    }

    fn all_formats(items: &[Item<'_>]) -> Vec<(&'static str, Format, Vec<u8>)> {
        let tar = tar_bytes(items);
        vec![
            ("m.zip", Format::Zip, zip_bytes(items)),
            ("m.tar", Format::Tar, tar.clone()),
            ("m.tar.gz", Format::TarGz, gzip(&tar)),
            ("m.tar.zst", Format::TarZst, zstd_frame(&tar)),
        ]
    }

    #[test]
    fn every_format_extracts_files_at_the_root_and_under_one_top_folder() {
        for (layout, items, root) in [
            ("at the root", model_items(), ""),
            ("in a top folder", prefixed("sd/", model_items()), "sd"),
        ] {
            for (file_name, format, bytes) in all_formats(&items) {
                let run = extract_bytes(file_name, &bytes, ImportLimits::default());
                assert_eq!(run.result.as_ref().unwrap(), &format, "{file_name} {layout}");
                assert_model_at(&run.dest.join(root));
                // Progress ends with the whole source read.
                let size = bytes.len() as u64;
                assert_eq!(
                    run.reports.last(),
                    Some(&ImportProgress::Bytes {
                        done: size,
                        total: size
                    }),
                    "{file_name}"
                );
            }
        }
    }

    #[test]
    fn format_comes_from_the_content_not_the_name() {
        let zip = zip_bytes(&model_items());
        let run = extract_bytes("misnamed.tar.gz", &zip, ImportLimits::default());
        assert_eq!(run.result.unwrap(), Format::Zip);
        assert_model_at(&run.dest);

        let empty_zip = zip_bytes(&[]);
        assert!(empty_zip.starts_with(b"PK\x05\x06"));
        assert_eq!(
            extract_bytes("empty.zip", &empty_zip, ImportLimits::default())
                .result
                .unwrap(),
            Format::Zip
        );

        let err = extract_bytes("m.zip", b"just some text, not an archive", ImportLimits::default())
            .result
            .unwrap_err()
            .to_string();
        assert!(err.contains(".zip, .tar, .tar.gz or .tar.zst"), "{err}");

        let err = extract_bytes("m.tar.gz", &gzip(b"plain text"), ImportLimits::default())
            .result
            .unwrap_err();
        assert!(
            matches!(
                err,
                ArchiveError::NotTar {
                    compression: "gzip",
                    ..
                }
            ),
            "{err}"
        );
    }

    #[test]
    fn zip_features_easel_does_not_read_are_named() {
        let options = zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
        let mut zip = zip::ZipWriter::new(Cursor::new(Vec::new()));
        zip.start_file("model_index.json", options).unwrap();
        zip.write_all(b"{}").unwrap();
        let mut bytes = zip.finish().unwrap().into_inner();
        // Method 12 (bzip2), which this build of the zip crate does not decode, in the local
        // and the central header.
        let central = bytes.windows(4).position(|w| w == b"PK\x01\x02").unwrap();
        bytes[8] = 12;
        bytes[central + 10] = 12;
        let err = extract_bytes("m.zip", &bytes, ImportLimits::default())
            .result
            .unwrap_err();
        assert!(matches!(err, ArchiveError::UnsupportedZip { .. }), "{err}");
        assert!(err.to_string().contains("rebuild it with deflate"), "{err}");
    }

    #[test]
    fn zstd_streams_of_several_frames_are_read_whole() {
        let tar = tar_bytes(&model_items());
        let (first, second) = tar.split_at(700);
        let mut bytes = zstd_frame(first);
        bytes.extend(zstd_frame(second));
        let run = extract_bytes("m.tar.zst", &bytes, ImportLimits::default());
        assert_eq!(run.result.unwrap(), Format::TarZst);
        assert_model_at(&run.dest);
    }

    #[test]
    fn entry_names_that_escape_are_refused() {
        for name in [
            "../evil",
            "/abs",
            "a/../../x",
            "a/../b",
            "..\\evil",
            "C:\\evil",
            "c:/evil",
        ] {
            let items = [Item::File("model_index.json", b"{}"), Item::File(name, b"owned")];
            for (file_name, _, bytes) in all_formats(&items) {
                let run = extract_bytes(file_name, &bytes, ImportLimits::default());
                let err = run.result.unwrap_err();
                assert!(matches!(err, ArchiveError::Escapes { .. }), "{file_name} {name}: {err}");
                let message = err.to_string();
                assert!(message.contains(name) && message.contains("escapes"), "{message}");
                assert!(!run.dest.parent().unwrap().join("evil").exists());
            }
        }
        assert_eq!(entry_path(b"./unet//model.onnx").unwrap(), Path::new("unet/model.onnx"));
        assert_eq!(entry_path(b"./").unwrap(), Path::new(""));
        assert!(matches!(entry_path(b"a\0b"), Err(ArchiveError::BadName { .. })));
    }

    #[test]
    fn links_out_of_the_tree_are_refused_links_inside_accepted() {
        for (name, target) in [
            ("passwd", "/etc/passwd"),
            ("sub/up2", "../../x"),
            ("up", ".."),
            ("sub/deep", "../sub/../../x"),
        ] {
            let items = [Item::Dir("sub/"), Item::Symlink(name, target)];
            let tar = tar_bytes(&items);
            for (file_name, bytes) in [("m.tar", tar.clone()), ("m.zip", zip_bytes(&items))] {
                let err = extract_bytes(file_name, &bytes, ImportLimits::default())
                    .result
                    .unwrap_err();
                assert!(
                    matches!(err, ArchiveError::LinkEscapes { .. }),
                    "{file_name} {name}: {err}"
                );
                let message = err.to_string();
                assert!(message.contains(name) && message.contains(target), "{message}");
            }
        }

        let items = [
            Item::File("unet/model.onnx", b"weights"),
            Item::Symlink("unet/alias.onnx", "model.onnx"),
            Item::Symlink("top.onnx", "./unet/../unet/model.onnx"),
            Item::Symlink("sub/here", ".."),
        ];
        for (file_name, bytes) in [("m.tar", tar_bytes(&items)), ("m.zip", zip_bytes(&items))] {
            let run = extract_bytes(file_name, &bytes, ImportLimits::default());
            run.result.unwrap();
            assert!(
                fs::symlink_metadata(run.dest.join("unet/alias.onnx"))
                    .unwrap()
                    .is_symlink()
            );
            assert_eq!(fs::read(run.dest.join("unet/alias.onnx")).unwrap(), b"weights");
            assert_eq!(fs::read(run.dest.join("top.onnx")).unwrap(), b"weights");
        }
    }

    #[test]
    fn nothing_is_written_through_a_link() {
        // `a` points at the root (inside, so allowed); `a/x` would go through it.
        for target in [".", "sub"] {
            let items = [
                Item::Dir("sub/"),
                Item::Symlink("a", target),
                Item::File("a/x", b"data"),
            ];
            let err = extract_bytes("m.tar", &tar_bytes(&items), ImportLimits::default())
                .result
                .unwrap_err();
            assert!(matches!(err, ArchiveError::ThroughLink { .. }), "{err}");
        }
        // A file entry replacing a link replaces the link, never writes where it points.
        let items = [
            Item::File("real", b"original"),
            Item::Symlink("alias", "real"),
            Item::File("alias", b"new"),
        ];
        let run = extract_bytes("m.tar", &tar_bytes(&items), ImportLimits::default());
        run.result.unwrap();
        assert_eq!(fs::read(run.dest.join("real")).unwrap(), b"original");
        assert_eq!(fs::read(run.dest.join("alias")).unwrap(), b"new");
    }

    #[test]
    fn link_chains_that_leave_the_tree_are_caught_after_extraction() {
        // Each link is inside by itself; together `esc` is the parent of the root.
        let items = [
            Item::Dir("sub/"),
            Item::Symlink("sub/up", ".."),
            Item::Symlink("esc", "sub/up/.."),
        ];
        let err = extract_bytes("m.tar", &tar_bytes(&items), ImportLimits::default())
            .result
            .unwrap_err();
        assert!(
            matches!(err, ArchiveError::LinkEscapes { ref entry, .. } if entry == "esc"),
            "{err}"
        );

        let dangling = [Item::Symlink("gone", "missing.onnx")];
        let err = extract_bytes("m.tar", &tar_bytes(&dangling), ImportLimits::default())
            .result
            .unwrap_err();
        assert!(matches!(err, ArchiveError::DanglingLink { .. }), "{err}");
    }

    #[test]
    fn hard_links_must_name_an_earlier_file() {
        let items = [
            Item::File("unet/model.onnx", b"weights"),
            Item::HardLink("copy.onnx", "unet/model.onnx"),
        ];
        let run = extract_bytes("m.tar", &tar_bytes(&items), ImportLimits::default());
        run.result.unwrap();
        assert_eq!(fs::read(run.dest.join("copy.onnx")).unwrap(), b"weights");

        for target in ["/etc/passwd", "../outside", "not-yet"] {
            let items = [Item::HardLink("copy", target), Item::File("not-yet", b"x")];
            let err = extract_bytes("m.tar", &tar_bytes(&items), ImportLimits::default())
                .result
                .unwrap_err();
            assert!(
                matches!(
                    err,
                    ArchiveError::LinkEscapes { .. } | ArchiveError::DanglingLink { .. }
                ),
                "{target}: {err}"
            );
            assert!(err.to_string().contains(target), "{err}");
        }
    }

    #[test]
    fn devices_and_fifos_are_refused() {
        for (item, kind) in [
            (Item::CharDevice("dev/null"), "device file"),
            (Item::Fifo("pipe"), "fifo"),
        ] {
            let bytes = tar_bytes(&[Item::File("model_index.json", b"{}"), item]);
            let run = extract_bytes("m.tar", &bytes, ImportLimits::default());
            let err = run.result.unwrap_err();
            assert!(
                matches!(err, ArchiveError::SpecialFile { kind: k, .. } if k == kind),
                "{err}"
            );
            assert!(!run.dest.join("pipe").exists() && !run.dest.join("dev/null").exists());
        }
    }

    #[test]
    fn archives_expanding_beyond_the_limit_are_refused() {
        let zeros = vec![0u8; 50 * 1024 * 1024];
        let limits = ImportLimits {
            max_bytes: 1024 * 1024,
            max_files: 100,
            ..ImportLimits::default()
        };
        let bomb = zip_bytes(&[Item::File("unet/model.onnx", &zeros)]);
        assert!(bomb.len() < 1024 * 1024, "the bomb is small: {}", bomb.len());
        let run = extract_bytes("bomb.zip", &bomb, limits);
        let err = run.result.unwrap_err();
        let message = err.to_string();
        assert!(
            message.contains("expands beyond 1.0 MiB (max_import_bytes)"),
            "{message}"
        );
        let written = fs::metadata(run.dest.join("unet/model.onnx")).unwrap().len();
        assert!(written <= limits.max_bytes, "{written}");

        // Headers are not trusted: a tar.gz whose sizes add up past the limit is stopped too.
        let tar = tar_bytes(&[
            Item::File("a", &zeros[..600 * 1024]),
            Item::File("b", &zeros[..600 * 1024]),
        ]);
        let err = extract_bytes("m.tar.gz", &gzip(&tar), limits).result.unwrap_err();
        assert!(matches!(err, ArchiveError::TooLarge { .. }), "{err}");
    }

    #[test]
    fn archives_with_too_many_entries_are_refused() {
        let names: Vec<String> = (0..20).map(|i| format!("f{i}")).collect();
        let items: Vec<Item<'_>> = names.iter().map(|n| Item::File(n, b"x")).collect();
        let limits = ImportLimits {
            max_bytes: 1 << 20,
            max_files: 10,
            ..ImportLimits::default()
        };
        for (file_name, _, bytes) in all_formats(&items) {
            let err = extract_bytes(file_name, &bytes, limits).result.unwrap_err();
            let message = err.to_string();
            assert!(
                message.contains("more than 10 entries (max_import_files)"),
                "{file_name}: {message}"
            );
        }
    }

    #[test]
    fn cancellation_stops_the_extraction() {
        let dir = tempfile::tempdir().unwrap();
        let archive = dir.path().join("m.tar");
        fs::write(&archive, tar_bytes(&model_items())).unwrap();
        let dest = dir.path().join("dest");
        fs::create_dir(&dest).unwrap();
        let err = extract(&archive, &dest, ImportLimits::default(), &mut |_| {}, &|| true).unwrap_err();
        assert!(matches!(err, ArchiveError::Cancelled), "{err}");
        assert!(!dest.join("model_index.json").exists());
    }

    #[test]
    fn folders_are_copied_with_links_followed() {
        let dir = tempfile::tempdir().unwrap();
        let source = dir.path().join("source");
        let blobs = dir.path().join("blobs");
        fs::create_dir_all(source.join("unet")).unwrap();
        fs::create_dir_all(&blobs).unwrap();
        fs::write(blobs.join("sha"), b"weights").unwrap();
        fs::write(source.join("model_index.json"), b"{}").unwrap();
        // Like a Hugging Face cache snapshot: the file is a link to a blob outside the folder.
        std::os::unix::fs::symlink(blobs.join("sha"), source.join("unet/model.onnx")).unwrap();
        let dest = dir.path().join("dest");
        fs::create_dir(&dest).unwrap();
        let mut reports = Vec::new();
        copy_folder(
            &source,
            &dest,
            ImportLimits::default(),
            &mut |p| reports.push(p),
            &|| false,
        )
        .unwrap();
        let copied = dest.join("unet/model.onnx");
        assert!(fs::symlink_metadata(&copied).unwrap().is_file(), "a copy, not a link");
        assert_eq!(fs::read(copied).unwrap(), b"weights");
        assert_eq!(reports.last(), Some(&ImportProgress::Bytes { done: 9, total: 9 }));

        let limits = ImportLimits {
            max_bytes: 8,
            max_files: 100,
            ..ImportLimits::default()
        };
        let fresh = dir.path().join("fresh");
        fs::create_dir(&fresh).unwrap();
        let err = copy_folder(&source, &fresh, limits, &mut |_| {}, &|| false).unwrap_err();
        assert!(err.to_string().contains("the folder holds more than 8 B"), "{err}");
    }

    #[test]
    fn a_link_to_a_folder_outside_is_refused_one_inside_is_followed() {
        let dir = tempfile::tempdir().unwrap();
        let source = dir.path().join("source");
        let store = dir.path().join("models");
        fs::create_dir_all(source.join("parts/unet")).unwrap();
        fs::create_dir_all(store.join("other-model")).unwrap();
        fs::write(source.join("model_index.json"), b"{}").unwrap();
        fs::write(source.join("parts/unet/model.onnx"), b"weights").unwrap();
        std::os::unix::fs::symlink(source.join("parts/unet"), source.join("unet")).unwrap();
        let dest = dir.path().join("dest");
        fs::create_dir(&dest).unwrap();
        copy_folder(&source, &dest, ImportLimits::default(), &mut |_| {}, &|| false).unwrap();
        assert_eq!(fs::read(dest.join("unet/model.onnx")).unwrap(), b"weights");

        // A link to the model store (or anywhere outside) would copy whatever is there.
        std::os::unix::fs::symlink(&store, source.join("vae_decoder")).unwrap();
        let fresh = dir.path().join("fresh");
        fs::create_dir(&fresh).unwrap();
        let err = copy_folder(&source, &fresh, ImportLimits::default(), &mut |_| {}, &|| false).unwrap_err();
        assert!(matches!(err, ArchiveError::FolderLinkEscapes { .. }), "{err}");
        assert!(err.to_string().contains("outside the model folder"), "{err}");
        assert!(!fresh.join("vae_decoder").exists(), "refused before copying");
    }

    thread_local! {
        /// When set, what `available_bytes` answers on this thread, call by call.
        pub(super) static FAKE_FREE_SPACE: std::cell::RefCell<Option<Box<dyn FnMut() -> u64>>> =
            std::cell::RefCell::new(None);
    }

    /// Runs `work` with a disk whose free space starts at `free` and shrinks by what the import
    /// writes (as the Sink's checks see it: `written()` bytes so far).
    fn with_free_space<T>(answers: impl FnMut() -> u64 + 'static, work: impl FnOnce() -> T) -> T {
        FAKE_FREE_SPACE.with(|fake| *fake.borrow_mut() = Some(Box::new(answers)));
        let result = work();
        FAKE_FREE_SPACE.with(|fake| *fake.borrow_mut() = None);
        result
    }

    #[test]
    fn an_import_that_would_fill_the_disk_is_refused_before_and_while_writing() {
        let dir = tempfile::tempdir().unwrap();
        let source = dir.path().join("source");
        fs::create_dir_all(&source).unwrap();
        fs::write(source.join("model_index.json"), b"{}").unwrap();
        let dest = dir.path().join("dest");
        fs::create_dir(&dest).unwrap();
        let limits = ImportLimits {
            keep_free: 1000,
            ..ImportLimits::default()
        };
        // 1001 bytes free, 1000 kept: the folder's two bytes do not fit.
        let err = with_free_space(|| 1001, || copy_folder(&source, &dest, limits, &mut |_| {}, &|| false)).unwrap_err();
        assert!(matches!(err, ArchiveError::NoSpace { needed: Some(2), .. }), "{err}");
        assert!(err.to_string().contains("import_keep_free"), "{err}");
        assert!(!dest.join("model_index.json").exists(), "refused before writing");
        with_free_space(|| 1002, || copy_folder(&source, &dest, limits, &mut |_| {}, &|| false)).unwrap();

        // A tar.gz declares no total: 40 MiB of zeros (a few KiB packed) fits at first, and is
        // stopped while writing when the disk has filled up (the second look finds it full).
        let zeros = vec![0u8; 40 << 20];
        let packed = gzip(&tar_bytes(&[Item::File("unet/model.onnx", &zeros)]));
        assert!(packed.len() < 1 << 20);
        let mut looks = 0;
        let run = with_free_space(
            move || {
                looks += 1;
                if looks == 1 { 1 << 30 } else { 999 }
            },
            || extract_bytes("m.tar.gz", &packed, limits),
        );
        let err = run.result.unwrap_err();
        assert!(matches!(err, ArchiveError::NoSpace { needed: None, .. }), "{err}");
        let written = fs::metadata(run.dest.join("unet/model.onnx")).unwrap().len();
        assert!(
            written <= SPACE_CHECK_EVERY + CHUNK as u64,
            "stopped at the second look: {written}"
        );
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        #[derive(Debug, Clone)]
        enum Kind {
            File(Vec<u8>),
            Dir,
            Symlink(String),
            HardLink(String),
        }

        /// Paths built to hit the corners: `..`, `.`, empty segments, absolute ones.
        fn path() -> impl Strategy<Value = String> {
            (
                any::<bool>(),
                proptest::collection::vec(prop_oneof!["a", "b", "unet", "..", ".", ""], 1..5),
            )
                .prop_map(|(absolute, parts)| format!("{}{}", if absolute { "/" } else { "" }, parts.join("/")))
        }

        fn entry() -> impl Strategy<Value = (String, Kind)> {
            let kind = prop_oneof![
                proptest::collection::vec(any::<u8>(), 0..64).prop_map(Kind::File),
                Just(Kind::Dir),
                path().prop_map(Kind::Symlink),
                path().prop_map(Kind::HardLink),
            ];
            (path(), kind)
        }

        /// Every path under `dir`, links not followed.
        fn walk(dir: &Path, found: &mut Vec<PathBuf>) {
            for entry in fs::read_dir(dir).into_iter().flatten().flatten() {
                let path = entry.path();
                found.push(path.clone());
                if entry.file_type().is_ok_and(|t| t.is_dir()) {
                    walk(&path, found);
                }
            }
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(128))]

            /// Random trees (with `..`, absolute names, links anywhere, damaged tails), as tar
            /// and tar.gz: extraction ends in a folder or an error, never a panic, and nothing
            /// is written outside the destination or linked out of it.
            #[test]
            fn random_archives_stay_inside_their_folder(
                entries in proptest::collection::vec(entry(), 0..12),
                gzipped in any::<bool>(),
                keep in 0.5f64..=1.0,
            ) {
                let items: Vec<Item<'_>> = entries
                    .iter()
                    .filter(|(name, _)| name.len() < 100)
                    .map(|(name, kind)| match kind {
                        Kind::File(data) => Item::File(name, data),
                        Kind::Dir => Item::Dir(name),
                        Kind::Symlink(target) => Item::Symlink(name, target),
                        Kind::HardLink(target) => Item::HardLink(name, target),
                    })
                    .collect();
                let mut bytes = tar_bytes(&items);
                bytes.truncate((bytes.len() as f64 * keep) as usize);
                let (file_name, bytes) = if gzipped { ("m.tar.gz", gzip(&bytes)) } else { ("m.tar", bytes) };
                let run = extract_bytes(file_name, &bytes, ImportLimits::default());
                let out = run.dest.parent().unwrap();
                let beside: Vec<_> = fs::read_dir(out).unwrap().flatten().map(|e| e.file_name()).collect();
                prop_assert_eq!(beside, vec![std::ffi::OsString::from("dest")], "nothing lands beside the destination");
                let root = fs::canonicalize(&run.dest).unwrap();
                let mut found = Vec::new();
                walk(&run.dest, &mut found);
                for path in found {
                    let meta = fs::symlink_metadata(&path).unwrap();
                    if meta.file_type().is_symlink() {
                        let target = fs::read_link(&path).unwrap();
                        prop_assert!(target.is_relative(), "{} → {}", path.display(), target.display());
                        if let Ok(resolved) = fs::canonicalize(&path) {
                            prop_assert!(resolved.starts_with(&root), "{} → {}", path.display(), resolved.display());
                        }
                    } else {
                        prop_assert!(meta.is_file() || meta.is_dir(), "{}", path.display());
                    }
                }
            }
        }
    }

    #[test]
    fn folder_loops_and_fifos_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let source = dir.path().join("source");
        fs::create_dir_all(source.join("a")).unwrap();
        std::os::unix::fs::symlink("..", source.join("a/back")).unwrap();
        let dest = dir.path().join("dest");
        fs::create_dir(&dest).unwrap();
        let err = copy_folder(&source, &dest, ImportLimits::default(), &mut |_| {}, &|| false).unwrap_err();
        assert!(matches!(err, ArchiveError::FolderLoop { .. }), "{err}");

        fs::remove_file(source.join("a/back")).unwrap();
        nix::unistd::mkfifo(&source.join("a/pipe"), nix::sys::stat::Mode::S_IRWXU).unwrap();
        let err = copy_folder(&source, &dest, ImportLimits::default(), &mut |_| {}, &|| false).unwrap_err();
        assert!(
            matches!(err, ArchiveError::FolderSpecialFile { kind: "fifo", .. }),
            "{err}"
        );
    }
}
