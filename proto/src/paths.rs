//! Where the daemon and its clients meet: the socket path and the data folder.
//!
//! Both sides must agree on these without talking, so they live beside the protocol.
//! - Socket: `$EASEL_SOCKET`, else `$XDG_RUNTIME_DIR/easel/easeld.sock`, else a per-user
//!   folder in the temp dir (`/tmp/easel-UID/easeld.sock`).
//! - Data (models, runtime library): `$EASEL_HOME`, else the platform's data folder.

use std::path::PathBuf;

/// The socket the daemon listens on and clients connect to.
pub fn socket_path() -> PathBuf {
    if let Some(path) = std::env::var_os("EASEL_SOCKET").filter(|p| !p.is_empty()) {
        return PathBuf::from(path);
    }
    if let Some(runtime) = std::env::var_os("XDG_RUNTIME_DIR").filter(|p| !p.is_empty()) {
        return PathBuf::from(runtime).join("easel").join("easeld.sock");
    }
    std::env::temp_dir()
        .join(format!("easel-{}", nix::unistd::geteuid()))
        .join("easeld.sock")
}

/// The data folder: installed models under `models/`, the ONNX Runtime library under `runtime/`.
pub fn easel_home() -> PathBuf {
    if let Some(path) = std::env::var_os("EASEL_HOME").filter(|p| !p.is_empty()) {
        return PathBuf::from(path);
    }
    directories::ProjectDirs::from("", "", "easel")
        .map(|dirs| dirs.data_dir().to_path_buf())
        .unwrap_or_else(|| std::env::temp_dir().join(format!("easel-home-{}", nix::unistd::geteuid())))
}

/// The configuration file: `$EASEL_CONFIG`, else `config.toml` in the platform's config folder.
pub fn config_file() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("EASEL_CONFIG").filter(|p| !p.is_empty()) {
        return Some(PathBuf::from(path));
    }
    directories::ProjectDirs::from("", "", "easel").map(|dirs| dirs.config_dir().join("config.toml"))
}
