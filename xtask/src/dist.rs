//! `cargo xtask dist`: the release tarball, `target/dist/easel-<version>-<arch>-<os>.tar.gz`.
//!
//! Its one folder is laid out as the install prefix it ends up in, so `install.sh` (inside it)
//! copies trees rather than knowing every file:
//!
//! ```text
//! bin/                      easel, easeld (and easel-tray when built)
//! lib/easel/                the pinned ONNX Runtime library (the daemon looks there)
//! share/bash-completion/completions/   easel, easeld
//! share/zsh/site-functions/            _easel, _easeld
//! share/fish/vendor_completions.d/     easel.fish, easeld.fish
//! share/man/man1/           easel.1, one page per subcommand (easel-generate.1, …), easeld.1
//! systemd/                  easeld.socket, easeld.service, easel-gateway.service (user units)
//! macos/                    org.easel.easeld.plist (LaunchAgent)
//! install.sh README.md LICENSE-MIT LICENSE-APACHE
//! ```
//!
//! Completions and man pages come from the binaries themselves (`easel completions SHELL`,
//! `easel manpages DIR`, `easeld --completions SHELL`, `easeld --manpage`), that is from the
//! clap definitions, so they cannot drift from the real command line.
//!
//! `--bins DIR` packs binaries already built there instead of building release ones, `--ort
//! PATH` a given ONNX Runtime library instead of the pinned download, and `--stage DIR` only
//! lays the folder out in DIR (no tarball): the install test uses all three on the debug build.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

/// The binaries a release carries; the optional ones are packed when they were built.
const BINARIES: [&str; 2] = ["easel", "easeld"];
const OPTIONAL_BINARIES: [&str; 1] = ["easel-tray"];

/// Where each shell looks for completions under a prefix, and the file name it expects.
const COMPLETIONS: [(&str, &str, &str); 3] = [
    ("bash", "share/bash-completion/completions", "{}"),
    ("zsh", "share/zsh/site-functions", "_{}"),
    ("fish", "share/fish/vendor_completions.d", "{}.fish"),
];

struct Options {
    bins: Option<PathBuf>,
    ort: Option<PathBuf>,
    stage: Option<PathBuf>,
}

fn parse(args: &[String]) -> Result<Options> {
    let mut options = Options {
        bins: None,
        ort: None,
        stage: None,
    };
    let mut args = args.iter();
    while let Some(arg) = args.next() {
        let mut value = |name: &str| {
            args.next().map(PathBuf::from).with_context(|| {
                format!("{name} needs a path: cargo xtask dist [--bins DIR] [--ort PATH] [--stage DIR]")
            })
        };
        match arg.as_str() {
            "--bins" => options.bins = Some(value("--bins")?),
            "--ort" => options.ort = Some(value("--ort")?),
            "--stage" => options.stage = Some(value("--stage")?),
            other => bail!("unknown option `{other}`: cargo xtask dist [--bins DIR] [--ort PATH] [--stage DIR]"),
        }
    }
    Ok(options)
}

/// The name of the release: `easel-<version>-<arch>-<os>`.
pub fn release_name() -> String {
    format!(
        "easel-{}-{}-{}",
        env!("CARGO_PKG_VERSION"),
        std::env::consts::ARCH,
        std::env::consts::OS
    )
}

pub fn dist(root: &Path, args: &[String]) -> Result<()> {
    let options = parse(args)?;
    // Only when needed: with every path given (the install test) cargo need not be there.
    let target = || super::target_dir(root);
    let bins = match options.bins {
        Some(dir) => dir,
        None => {
            let mut build = super::cargo();
            build
                .current_dir(root)
                .args(["build", "--release", "--bins", "-p", "easel", "-p", "easeld"]);
            if root.join("tray/Cargo.toml").is_file() {
                build.args(["-p", "easel-tray"]);
            }
            super::status(build, "cargo build --release (the binaries)")?;
            target()?.join("release")
        }
    };
    let ort = match options.ort {
        Some(path) => path,
        None => super::fetch_ort(root)?,
    };
    match options.stage {
        Some(stage) => {
            lay_out(root, &bins, &ort, &stage)?;
            println!("{}", stage.display());
        }
        None => {
            let dist = target()?.join("dist");
            let name = release_name();
            let stage = dist.join(&name);
            if stage.exists() {
                std::fs::remove_dir_all(&stage).with_context(|| format!("clearing {}", stage.display()))?;
            }
            lay_out(root, &bins, &ort, &stage)?;
            let tarball = dist.join(format!("{name}.tar.gz"));
            pack(&stage, &name, &tarball)?;
            println!("{}", tarball.display());
        }
    }
    Ok(())
}

/// Writes the release's folder into `stage` (see the module's layout).
fn lay_out(root: &Path, bins: &Path, ort: &Path, stage: &Path) -> Result<()> {
    let bin_dir = stage.join("bin");
    std::fs::create_dir_all(&bin_dir).with_context(|| format!("creating {}", bin_dir.display()))?;
    for name in BINARIES {
        let from = bins.join(name);
        if !from.is_file() {
            bail!(
                "{} is missing: build the binaries first (cargo build --bins), or leave out --bins to build release ones",
                from.display()
            );
        }
        copy(&from, &bin_dir.join(name))?;
    }
    for name in OPTIONAL_BINARIES {
        let from = bins.join(name);
        if from.is_file() {
            copy(&from, &bin_dir.join(name))?;
        }
    }
    if !ort.is_file() {
        bail!(
            "the ONNX Runtime library {} is missing: run `cargo xtask fetch-ort`",
            ort.display()
        );
    }
    let library_name = ort.file_name().context("the ONNX Runtime library's file name")?;
    copy(ort, &stage.join("lib/easel").join(library_name))?;

    for (shell, dir, file) in COMPLETIONS {
        let dir = stage.join(dir);
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        for (binary, args) in [
            ("easel", vec!["completions", shell]),
            ("easeld", vec!["--completions", shell]),
        ] {
            let script = run_binary(&bin_dir.join(binary), &args)?;
            let path = dir.join(file.replace("{}", binary));
            std::fs::write(&path, script).with_context(|| format!("writing {}", path.display()))?;
        }
    }
    let man = stage.join("share/man/man1");
    let dir = man.to_str().context("the stage folder's path is not UTF-8")?;
    run_binary(&bin_dir.join("easel"), &["manpages", dir])?;
    let page = run_binary(&bin_dir.join("easeld"), &["--manpage"])?;
    std::fs::write(man.join("easeld.1"), page).with_context(|| format!("writing {}", man.display()))?;

    let packaging = root.join("packaging");
    for (from, to) in [
        ("systemd/easeld.socket", "systemd/easeld.socket"),
        ("systemd/easeld.service", "systemd/easeld.service"),
        ("systemd/easel-gateway.service", "systemd/easel-gateway.service"),
        ("macos/org.easel.easeld.plist", "macos/org.easel.easeld.plist"),
        ("install.sh", "install.sh"),
    ] {
        copy(&packaging.join(from), &stage.join(to))?;
    }
    for file in ["README.md", "LICENSE-MIT", "LICENSE-APACHE"] {
        copy(&root.join(file), &stage.join(file))?;
    }
    Ok(())
}

/// Runs one of the staged binaries for what it prints (completions, a man page).
fn run_binary(binary: &Path, args: &[&str]) -> Result<Vec<u8>> {
    let output = Command::new(binary)
        .args(args)
        .output()
        .with_context(|| format!("could not run {}", binary.display()))?;
    if !output.status.success() {
        bail!(
            "{} {} failed ({}): {}",
            binary.display(),
            args.join(" "),
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(output.stdout)
}

/// Copies a file, creating its folder and keeping its mode (binaries stay executable).
fn copy(from: &Path, to: &Path) -> Result<()> {
    if let Some(parent) = to.parent() {
        std::fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
    }
    std::fs::copy(from, to).with_context(|| format!("copying {} to {}", from.display(), to.display()))?;
    Ok(())
}

/// `stage` as `name/…` in a gzipped tarball, with fixed times and owners (the same tree packs
/// to the same bytes), written beside and renamed into place.
fn pack(stage: &Path, name: &str, tarball: &Path) -> Result<()> {
    let partial = tarball.with_extension("gz.partial");
    let file = std::fs::File::create(&partial).with_context(|| format!("creating {}", partial.display()))?;
    let mut builder = tar::Builder::new(flate2::write::GzEncoder::new(file, flate2::Compression::default()));
    builder.mode(tar::HeaderMode::Deterministic);
    builder.follow_symlinks(false);
    builder
        .append_dir_all(name, stage)
        .with_context(|| format!("packing {}", stage.display()))?;
    builder
        .into_inner()
        .and_then(|gz| gz.finish())
        .with_context(|| format!("writing {}", partial.display()))?;
    std::fs::rename(&partial, tarball).with_context(|| format!("renaming to {}", tarball.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_parse_and_unknown_ones_are_named() {
        let args: Vec<String> = ["--bins", "target/debug", "--stage", "/tmp/s"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let options = parse(&args).unwrap();
        assert_eq!(options.bins.as_deref(), Some(Path::new("target/debug")));
        assert_eq!(options.stage.as_deref(), Some(Path::new("/tmp/s")));
        assert!(options.ort.is_none());
        let error = parse(&["--tarball".to_string()]).err().unwrap().to_string();
        assert!(error.contains("--tarball"), "{error}");
        assert!(parse(&["--ort".to_string()]).is_err(), "a flag without its value");
    }

    #[test]
    fn the_release_is_named_by_version_and_platform() {
        let name = release_name();
        assert!(
            name.starts_with(&format!("easel-{}-", env!("CARGO_PKG_VERSION"))),
            "{name}"
        );
        assert!(name.ends_with(std::env::consts::OS), "{name}");
    }
}
