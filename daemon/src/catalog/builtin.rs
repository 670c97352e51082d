//! Models that ship inside the daemon: `tiny-shapes`, the default model, trained by the
//! project (see `tools/tiny_shapes/`). Its files are embedded at build time and unpacked on
//! first use into `$EASEL_HOME/builtin/NAME-DIGEST/`, atomically (a temp folder, then a rename),
//! so a crash halfway leaves nothing that looks like a model, and a newer easel with other
//! weights unpacks beside the old copy instead of over it.

use std::path::{Path, PathBuf};

mod embedded {
    include!(concat!(env!("OUT_DIR"), "/builtin_models.rs"));
}

/// The model a request gets when it names none.
pub const DEFAULT_MODEL: &str = "tiny-shapes";

#[derive(Debug, thiserror::Error)]
pub enum BuiltinError {
    #[error(
        "this easeld was built without the embedded `{name}` model (models/tiny-shapes/ was missing at build time)"
    )]
    NotEmbedded { name: String },
    #[error("cannot unpack the built-in model `{name}` into {path}: {source}")]
    Unpack {
        name: String,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Names of the built-in models.
pub fn names() -> &'static [&'static str] {
    &[DEFAULT_MODEL]
}

pub fn is_builtin(name: &str) -> bool {
    names().contains(&name)
}

/// The folder of built-in model `name`, unpacking it under `home` if needed.
pub fn ensure_unpacked(home: &Path, name: &str) -> Result<PathBuf, BuiltinError> {
    let files = embedded::TINY_SHAPES_FILES;
    if name != DEFAULT_MODEL || files.is_empty() {
        return Err(BuiltinError::NotEmbedded { name: name.to_string() });
    }
    let builtin_dir = home.join("builtin");
    let target = builtin_dir.join(format!("{name}-{}", embedded::TINY_SHAPES_DIGEST));
    if target.is_dir() {
        return Ok(target);
    }
    let unpack_error = |source: std::io::Error| BuiltinError::Unpack {
        name: name.to_string(),
        path: target.clone(),
        source,
    };
    std::fs::create_dir_all(&builtin_dir).map_err(unpack_error)?;
    let staging = builtin_dir.join(format!(".{name}.partial-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&staging);
    for (relative, bytes) in files {
        let path = staging.join(relative);
        std::fs::create_dir_all(path.parent().expect("files sit in folders")).map_err(unpack_error)?;
        std::fs::write(&path, bytes).map_err(unpack_error)?;
    }
    match std::fs::rename(&staging, &target) {
        Ok(()) => Ok(target),
        // Another daemon (or thread) unpacked the same digest first: theirs is as good as ours.
        Err(_) if target.is_dir() => {
            let _ = std::fs::remove_dir_all(&staging);
            Ok(target)
        }
        Err(source) => Err(unpack_error(source)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unpacks_once_into_a_digest_named_folder() {
        let home = tempfile::tempdir().unwrap();
        let first = ensure_unpacked(home.path(), DEFAULT_MODEL).unwrap();
        assert!(first.join("unet/model.onnx").is_file());
        assert!(first.join("tokenizer/vocab.json").is_file());
        assert!(first.file_name().unwrap().to_string_lossy().starts_with("tiny-shapes-"));
        let marker = first.join("unet/model.onnx");
        let before = std::fs::metadata(&marker).unwrap().modified().unwrap();
        let again = ensure_unpacked(home.path(), DEFAULT_MODEL).unwrap();
        assert_eq!(first, again);
        assert_eq!(
            std::fs::metadata(&marker).unwrap().modified().unwrap(),
            before,
            "not unpacked twice"
        );
        let leftovers: Vec<_> = std::fs::read_dir(home.path().join("builtin")).unwrap().collect();
        assert_eq!(leftovers.len(), 1, "no staging folder is left behind");
    }

    #[test]
    fn unknown_names_are_not_builtin() {
        let home = tempfile::tempdir().unwrap();
        assert!(!is_builtin("sd15"));
        assert!(ensure_unpacked(home.path(), "sd15").is_err());
    }
}
