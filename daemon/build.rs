//! Embeds the default model (`models/tiny-shapes/` at the workspace root) into the daemon, so a
//! fresh install draws without any download. Generates `$OUT_DIR/builtin_models.rs`: the files
//! as `include_bytes!` and a digest of their contents (the folder they unpack to is named after
//! it, so a new easel never reuses an older unpacked copy).

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

fn main() {
    let root = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap()).join("../models/tiny-shapes");
    println!("cargo:rerun-if-changed={}", root.display());
    let mut files = Vec::new();
    if root.is_dir() {
        collect(&root, &root, &mut files);
    }
    files.sort();
    let mut digest = Sha256::new();
    let mut entries = String::new();
    for (relative, path) in &files {
        println!("cargo:rerun-if-changed={}", path.display());
        digest.update(relative.as_bytes());
        digest.update(std::fs::read(path).unwrap());
        writeln!(
            entries,
            "    ({relative:?}, include_bytes!({:?})),",
            path.display().to_string()
        )
        .unwrap();
    }
    let digest: String = digest.finalize().iter().take(8).map(|b| format!("{b:02x}")).collect();
    let code = format!(
        "/// The files of the embedded tiny-shapes model, relative to its folder.\n\
         pub static TINY_SHAPES_FILES: &[(&str, &[u8])] = &[\n{entries}];\n\
         /// Digest of the embedded files (names and contents).\n\
         pub const TINY_SHAPES_DIGEST: &str = {digest:?};\n"
    );
    let out = PathBuf::from(std::env::var("OUT_DIR").unwrap()).join("builtin_models.rs");
    std::fs::write(out, code).unwrap();
}

fn collect(root: &Path, dir: &Path, files: &mut Vec<(String, PathBuf)>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        if name.starts_with('.') {
            continue;
        }
        if path.is_dir() {
            collect(root, &path, files);
        } else {
            let relative = path.strip_prefix(root).unwrap().to_string_lossy().replace('\\', "/");
            files.push((relative, path));
        }
    }
}
