//! Verification: a downloaded file is accepted only when its size and hash match the hub's
//! listing (sha256 for LFS files, the git blob sha1 for the others).

use std::io::Read;
use std::path::Path;

use sha1::Sha1;
use sha2::{Digest, Sha256};

use super::HubError;

#[derive(Debug, Clone)]
pub(super) enum Check {
    /// LFS files: sha256 of the content.
    Sha256(String),
    /// Other files: the git blob id, sha1 of `"blob {size}\0" + content`.
    GitSha1(String),
}

impl Check {
    pub(super) fn algorithm(&self) -> &'static str {
        match self {
            Check::Sha256(_) => "sha256",
            Check::GitSha1(_) => "git blob sha1",
        }
    }

    pub(super) fn expected(&self) -> &str {
        match self {
            Check::Sha256(hex) | Check::GitSha1(hex) => hex,
        }
    }

    pub(super) fn hasher(&self, size: u64) -> Hasher {
        match self {
            Check::Sha256(_) => Hasher::Sha256(Sha256::new()),
            Check::GitSha1(_) => {
                let mut sha1 = Sha1::new();
                sha1.update(format!("blob {size}\0").as_bytes());
                Hasher::GitSha1(sha1)
            }
        }
    }
}

pub(super) enum Hasher {
    Sha256(Sha256),
    GitSha1(Sha1),
}

impl Hasher {
    pub(super) fn update(&mut self, bytes: &[u8]) {
        match self {
            Hasher::Sha256(hasher) => hasher.update(bytes),
            Hasher::GitSha1(hasher) => hasher.update(bytes),
        }
    }

    pub(super) fn finish(self) -> String {
        match self {
            Hasher::Sha256(hasher) => hex(&hasher.finalize()),
            Hasher::GitSha1(hasher) => hex(&hasher.finalize()),
        }
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

pub(super) fn is_hex(text: &str, len: usize) -> bool {
    text.len() == len && text.bytes().all(|byte| byte.is_ascii_hexdigit())
}

/// Feeds the first `len` bytes of a file to `hasher`, on the blocking pool (a multi-GB UNet
/// takes seconds to hash).
pub(super) async fn hash_prefix(path: &Path, len: u64, mut hasher: Hasher) -> Result<Hasher, HubError> {
    let owned = path.to_path_buf();
    let hashed = tokio::task::spawn_blocking(move || -> std::io::Result<Hasher> {
        let mut file = std::fs::File::open(&owned)?;
        let mut buffer = vec![0; 1 << 20];
        let mut remaining = len;
        while remaining > 0 {
            let want = buffer.len().min(usize::try_from(remaining).unwrap_or(usize::MAX));
            let read = file.read(&mut buffer[..want])?;
            if read == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
            hasher.update(&buffer[..read]);
            remaining -= read as u64;
        }
        Ok(hasher)
    })
    .await
    .map_err(std::io::Error::other)
    .and_then(|hashed| hashed);
    hashed.map_err(|source| HubError::Io {
        path: path.to_path_buf(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn git_blob_ids_match_git() {
        // `git hash-object` of an empty file and of "hello\n".
        let empty = Check::GitSha1(String::new()).hasher(0);
        assert_eq!(empty.finish(), "e69de29bb2d1d6434b8b29ae775ad8c2e48c5391");
        let mut hello = Check::GitSha1(String::new()).hasher(6);
        hello.update(b"hello\n");
        assert_eq!(hello.finish(), "ce013625030ba8dba906f756967f9e9ca394464a");
    }
}
