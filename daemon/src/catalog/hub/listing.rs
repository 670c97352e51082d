//! The hub's side of a pull: which files of a repository an ONNX model needs, how its tree
//! listing reads, and how URLs and headers are spelled (see the module above for the protocol).

use reqwest::{Url, header};

use super::verify::{Check, is_hex};
use super::{HubError, PARTIAL_DIR};

/// The sub-model folders of an ONNX Stable Diffusion export (optimum's layout; SDXL adds the
/// `_2` ones). Anything else in a repository (safety checker, feature extractor, PyTorch or
/// Flax weights) is not needed to run the model.
const COMPONENTS: &[&str] = &[
    "scheduler",
    "tokenizer",
    "tokenizer_2",
    "text_encoder",
    "text_encoder_2",
    "unet",
    "vae_decoder",
    "vae_encoder",
    // A tiny decoder (TAESD) some repositories carry beside the full one.
    "vae_decoder_tiny",
];

/// File kinds a component needs: configs, tokenizer files, graphs and their external weights
/// (`.onnx_data` from optimum, `.pb` from the old diffusers conversion script).
const NEEDED_EXTENSIONS: &[&str] = &[".json", ".txt", ".onnx", ".onnx_data", ".pb"];

/// Whether a repository file is part of an ONNX Stable Diffusion model: `model_index.json`,
/// and inside the component folders (`scheduler/`, `tokenizer/`, `unet/`, …) configs (`.json`),
/// tokenizer files (`.txt`), graphs (`.onnx`) and their external weights (`.onnx_data`, `.pb`,
/// or a name that starts with the graph's, such as `model.onnx.data`). Not READMEs,
/// `.gitattributes`, safetensors/bin/ckpt weights, images, Flax files or nested folders.
pub fn is_needed(path: &str) -> bool {
    if path == "model_index.json" {
        return true;
    }
    let Some((folder, name)) = path.split_once('/') else {
        return false;
    };
    if !COMPONENTS.contains(&folder) || name.contains('/') {
        return false;
    }
    // A bare extension (`unet/.json`) is a hidden file, not a config.
    NEEDED_EXTENSIONS
        .iter()
        .any(|extension| name.len() > extension.len() && name.ends_with(extension))
        || is_external_data_name(name)
}

/// `model.onnx.data`, `model.onnx_data_0`, …: external weights named after their graph.
fn is_external_data_name(name: &str) -> bool {
    match name.find(".onnx") {
        Some(at) if at > 0 => {
            let rest = &name[at + ".onnx".len()..];
            rest.len() > 1 && (rest.starts_with('.') || rest.starts_with('_'))
        }
        _ => false,
    }
}

/// One entry of the hub's tree listing.
#[derive(Debug, serde::Deserialize)]
pub(super) struct TreeEntry {
    #[serde(rename = "type")]
    pub(super) kind: String,
    #[serde(default)]
    pub(super) oid: String,
    #[serde(default)]
    pub(super) size: u64,
    pub(super) path: String,
    #[serde(default)]
    pub(super) lfs: Option<LfsInfo>,
}

#[derive(Debug, serde::Deserialize)]
pub(super) struct LfsInfo {
    pub(super) oid: String,
    pub(super) size: u64,
}

/// A file to download and what it must hash to.
#[derive(Debug, Clone)]
pub(super) struct RemoteFile {
    pub(super) path: String,
    pub(super) size: u64,
    pub(super) check: Check,
}

/// The needed files of a listing, checked: safe paths, usable hashes, and the two files that
/// make it an ONNX Stable Diffusion model at all.
pub(super) fn select_files(repo: &str, entries: Vec<TreeEntry>) -> Result<Vec<RemoteFile>, HubError> {
    let bad = |reason: String| HubError::BadListing {
        repo: repo.to_string(),
        reason,
    };
    let mut files: Vec<RemoteFile> = Vec::new();
    for entry in entries {
        if entry.kind != "file" || !is_needed(&entry.path) {
            continue;
        }
        // The path comes from the network and becomes a local path: no way out of `dest`.
        if !is_safe_relative(&entry.path) {
            return Err(bad(format!("unsafe path `{}`", entry.path)));
        }
        let (size, check) = match entry.lfs {
            Some(lfs) => {
                let oid = lfs.oid.strip_prefix("sha256:").unwrap_or(&lfs.oid).to_ascii_lowercase();
                if !is_hex(&oid, 64) {
                    return Err(bad(format!("`{}` has no sha256 (lfs.oid `{}`)", entry.path, lfs.oid)));
                }
                (lfs.size, Check::Sha256(oid))
            }
            None => {
                if !is_hex(&entry.oid, 40) {
                    return Err(bad(format!("`{}` has no git oid (`{}`)", entry.path, entry.oid)));
                }
                (entry.size, Check::GitSha1(entry.oid.to_ascii_lowercase()))
            }
        };
        // Pages of a listing could overlap; a file is fetched once.
        if files.iter().any(|file| file.path == entry.path) {
            continue;
        }
        files.push(RemoteFile {
            path: entry.path,
            size,
            check,
        });
    }
    for required in ["unet/model.onnx", "model_index.json"] {
        if !files.iter().any(|file| file.path == required) {
            return Err(HubError::NotOnnxModel {
                repo: repo.to_string(),
                missing: required.to_string(),
            });
        }
    }
    Ok(files)
}

fn is_safe_relative(path: &str) -> bool {
    !path.is_empty()
        && !path.contains(['\\', '\0'])
        && path
            .split('/')
            .all(|part| !part.is_empty() && part != "." && part != ".." && part != PARTIAL_DIR)
}

/// Percent-encodes one URL path segment (everything but RFC 3986's unreserved characters), so
/// that `refs/pr/1` stays one segment.
pub(super) fn encode_segment(segment: &str) -> String {
    let mut out = String::with_capacity(segment.len());
    for byte in segment.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~') {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

/// A path whose segments are encoded one by one, keeping the '/' between them.
pub(super) fn encode_path(path: &str) -> String {
    path.split('/').map(encode_segment).collect::<Vec<_>>().join("/")
}

/// The target of a `Link: <url>; rel="next"` header, if any.
pub(super) fn next_link(headers: &header::HeaderMap) -> Option<String> {
    for value in headers.get_all(header::LINK) {
        let Ok(value) = value.to_str() else { continue };
        for link in value.split(',') {
            let mut pieces = link.split(';');
            let target = pieces.next().unwrap_or_default().trim();
            let is_next = pieces.any(|param| {
                let param = param.trim().replace(' ', "");
                param.eq_ignore_ascii_case("rel=\"next\"") || param.eq_ignore_ascii_case("rel=next")
            });
            if is_next && let Some(url) = target.strip_prefix('<').and_then(|t| t.strip_suffix('>')) {
                return Some(url.to_string());
            }
        }
    }
    None
}

/// The first byte of a `Content-Range: bytes START-END/TOTAL` header.
pub(super) fn content_range_start(headers: &header::HeaderMap) -> Option<u64> {
    let value = headers.get(header::CONTENT_RANGE)?.to_str().ok()?;
    let range = value.trim().strip_prefix("bytes")?.trim_start();
    range.split('-').next()?.trim().parse().ok()
}

pub(super) fn same_origin(a: &Url, b: &Url) -> bool {
    a.scheme() == b.scheme() && a.host_str() == b.host_str() && a.port_or_known_default() == b.port_or_known_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn needed_files_are_those_of_an_onnx_export() {
        for needed in [
            "model_index.json",
            "scheduler/scheduler_config.json",
            "tokenizer/vocab.json",
            "tokenizer/merges.txt",
            "tokenizer_2/special_tokens_map.json",
            "text_encoder/model.onnx",
            "text_encoder_2/model.onnx_data",
            "unet/model.onnx",
            "unet/model.onnx_data",
            "unet/weights.pb",
            "unet/model.onnx.data",
            "unet/config.json",
            "vae_decoder/model.onnx",
            "vae_encoder/config.json",
        ] {
            assert!(is_needed(needed), "{needed} is needed");
        }
        for junk in [
            "README.md",
            ".gitattributes",
            "model_index.json.bak",
            "sd.ckpt",
            "v1-5-pruned.safetensors",
            "logo.png",
            "unet/diffusion_pytorch_model.safetensors",
            "unet/diffusion_pytorch_model.bin",
            "unet/diffusion_flax_model.msgpack",
            "unet/.gitattributes",
            "unet/.json",
            "unet/sample.png",
            "unet/nested/model.onnx",
            "safety_checker/model.onnx",
            "feature_extractor/preprocessor_config.json",
            "onnx/unet/model.onnx",
            "text_encoder/model.onnx_",
            "vae_decoder/.onnx.data",
            "unet",
        ] {
            assert!(!is_needed(junk), "{junk} is not needed");
        }
    }

    #[test]
    fn segments_are_percent_encoded() {
        assert_eq!(encode_segment("refs/pr/1"), "refs%2Fpr%2F1");
        assert_eq!(encode_segment("v1.0_a-b~c"), "v1.0_a-b~c");
        assert_eq!(encode_segment("a b?#%"), "a%20b%3F%23%25");
        assert_eq!(encode_path("unet/model 1.onnx"), "unet/model%201.onnx");
    }

    #[test]
    fn link_headers_give_the_next_page() {
        let mut headers = header::HeaderMap::new();
        assert_eq!(next_link(&headers), None);
        headers.insert(
            header::LINK,
            "<https://hub/api/models/a/b/tree/main?cursor=x1>; rel=\"next\""
                .parse()
                .unwrap(),
        );
        assert_eq!(
            next_link(&headers).as_deref(),
            Some("https://hub/api/models/a/b/tree/main?cursor=x1")
        );
        headers.insert(
            header::LINK,
            "</first>; rel=\"first\", </page2>; rel=next".parse().unwrap(),
        );
        assert_eq!(next_link(&headers).as_deref(), Some("/page2"));
        headers.insert(header::LINK, "</first>; rel=\"prev\"".parse().unwrap());
        assert_eq!(next_link(&headers), None);
    }

    #[test]
    fn content_range_start_is_read() {
        let mut headers = header::HeaderMap::new();
        assert_eq!(content_range_start(&headers), None);
        headers.insert(header::CONTENT_RANGE, "bytes 100-999/1000".parse().unwrap());
        assert_eq!(content_range_start(&headers), Some(100));
        headers.insert(header::CONTENT_RANGE, "bytes */1000".parse().unwrap());
        assert_eq!(content_range_start(&headers), None);
    }

    #[test]
    fn listings_keep_needed_files_and_refuse_unsafe_or_non_onnx_ones() {
        let entry = |path: &str, lfs: bool| TreeEntry {
            kind: "file".into(),
            oid: "a".repeat(40),
            size: 3,
            path: path.into(),
            lfs: lfs.then(|| LfsInfo {
                oid: "B".repeat(64),
                size: 5,
            }),
        };
        let files = select_files(
            "a/b",
            vec![
                entry("model_index.json", false),
                entry("unet/model.onnx", true),
                entry("unet/model.onnx", true),
                entry("README.md", false),
                TreeEntry {
                    kind: "directory".into(),
                    oid: String::new(),
                    size: 0,
                    path: "unet".into(),
                    lfs: None,
                },
            ],
        )
        .unwrap();
        assert_eq!(files.len(), 2);
        let unet = files.iter().find(|file| file.path == "unet/model.onnx").unwrap();
        assert_eq!(unet.size, 5, "an LFS file's size is the LFS size");
        assert!(matches!(&unet.check, Check::Sha256(hex) if *hex == "b".repeat(64)));

        let error = select_files("a/b", vec![entry("model_index.json", false)]).unwrap_err();
        assert!(error.to_string().contains("no unet/model.onnx"), "{error}");
        let error = select_files("a/b", vec![entry("unet/model.onnx", true)]).unwrap_err();
        assert!(error.to_string().contains("no model_index.json"), "{error}");
        assert!(!is_safe_relative("unet/../x.json"));
        assert!(!is_safe_relative("/unet/x.json"));
        assert!(!is_safe_relative("unet//x.json"));
        assert!(is_safe_relative("unet/x.json"));
    }
}
