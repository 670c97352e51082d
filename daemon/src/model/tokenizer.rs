//! The CLIP BPE tokenizer that Stable Diffusion's text encoders read, built from a model's
//! `tokenizer/vocab.json` + `merges.txt` with the `tokenizers` crate.
//!
//! It mirrors transformers' `CLIPTokenizer` (which diffusers uses): the part of ftfy's clean-up
//! that prompts meet (HTML entities, curly quotes), NFC, whitespace runs folded to one space,
//! lower case, CLIP's split pattern, byte-level symbols, BPE with a `</w>` end-of-word suffix.
//! Like transformers, the special tokens (including a pad token such as SD 2's `!`) are split
//! out of the text before BPE, so `hi!!` on SD 2 gives `hi</w> ! !`, as diffusers feeds it. An encoding is `<|startoftext|>`, the prompt's tokens (truncated so the
//! whole fits the encoder's context), `<|endoftext|>`, then the model's pad token up to the
//! context length. SD 1.x pads with `<|endoftext|>`, SD 2.x with `!` (id 0): the pad token
//! comes from `tokenizer_config.json`, never assumed.

use std::path::{Path, PathBuf};

use serde::Deserialize;
use tokenizers::models::bpe::BPE;
use tokenizers::normalizers::{Lowercase, NFC, Replace, Sequence as NormalizerSequence, Strip};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::sequence::Sequence as PreTokenizerSequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::{AddedToken, NormalizerWrapper, PreTokenizerWrapper, SplitDelimiterBehavior, Tokenizer};

const START_OF_TEXT: &str = "<|startoftext|>";
const END_OF_TEXT: &str = "<|endoftext|>";
/// CLIP's pre-tokenizer pattern (contractions, letter runs, single digits, punctuation runs).
const CLIP_SPLIT_PATTERN: &str =
    r"<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+";
/// The context length of every CLIP text encoder in the SD family.
pub const DEFAULT_MAX_LENGTH: usize = 77;

#[derive(Debug, thiserror::Error)]
pub enum TokenizerError {
    #[error("the tokenizer is missing {path}; a model folder needs tokenizer/vocab.json and tokenizer/merges.txt")]
    MissingFile { path: PathBuf },
    #[error("cannot read the tokenizer in {dir}: {message}")]
    Invalid { dir: PathBuf, message: String },
    #[error("cannot tokenize the prompt: {0}")]
    Encode(String),
}

/// A prompt as token ids, ready for the text encoder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tokens {
    /// BOS, tokens, EOS: no padding.
    pub ids: Vec<i64>,
    /// The symbols of `ids`, for `easel tokenize`.
    pub symbols: Vec<String>,
    /// Whether the prompt was cut to fit the context.
    pub truncated: bool,
}

#[derive(Debug)]
pub struct ClipTokenizer {
    inner: Tokenizer,
    bos: i64,
    eos: i64,
    pad: i64,
    max_length: usize,
}

#[derive(Deserialize, Default)]
struct TokenizerConfig {
    pad_token: Option<TokenSpec>,
    model_max_length: Option<f64>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum TokenSpec {
    Plain(String),
    Added { content: String },
}

impl TokenSpec {
    fn content(&self) -> &str {
        match self {
            TokenSpec::Plain(s) => s,
            TokenSpec::Added { content } => content,
        }
    }
}

impl ClipTokenizer {
    /// Reads `dir/vocab.json`, `dir/merges.txt` and (optionally) `dir/tokenizer_config.json`.
    pub fn from_dir(dir: &Path) -> Result<Self, TokenizerError> {
        let vocab = dir.join("vocab.json");
        let merges = dir.join("merges.txt");
        for path in [&vocab, &merges] {
            if !path.is_file() {
                return Err(TokenizerError::MissingFile { path: path.clone() });
            }
        }
        let invalid = |message: String| TokenizerError::Invalid {
            dir: dir.to_path_buf(),
            message,
        };
        let config: TokenizerConfig = match std::fs::read(dir.join("tokenizer_config.json")) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| invalid(format!("tokenizer_config.json: {e}")))?,
            Err(_) => TokenizerConfig::default(),
        };
        let bpe = BPE::from_file(&vocab.to_string_lossy(), &merges.to_string_lossy())
            .end_of_word_suffix("</w>".to_string())
            .unk_token(END_OF_TEXT.to_string())
            .build()
            .map_err(|e| invalid(e.to_string()))?;
        let mut inner = Tokenizer::new(bpe);
        let normalizer = NormalizerSequence::new(vec![
            NormalizerWrapper::NFC(NFC),
            NormalizerWrapper::Replace(
                Replace::new(
                    tokenizers::normalizers::replace::ReplacePattern::Regex(r"\s+".into()),
                    " ",
                )
                .map_err(|e| invalid(e.to_string()))?,
            ),
            NormalizerWrapper::StripNormalizer(Strip::new(true, true)),
            NormalizerWrapper::Lowercase(Lowercase),
        ]);
        inner.with_normalizer(Some(normalizer));
        let split = Split::new(
            SplitPattern::Regex(CLIP_SPLIT_PATTERN.into()),
            SplitDelimiterBehavior::Removed,
            true,
        )
        .map_err(|e| invalid(e.to_string()))?;
        inner.with_pre_tokenizer(Some(PreTokenizerSequence::new(vec![
            PreTokenizerWrapper::Split(split),
            PreTokenizerWrapper::ByteLevel(ByteLevel::new(false, false, false)),
        ])));
        let id = |token: &str| {
            inner
                .token_to_id(token)
                .map(i64::from)
                .ok_or_else(|| invalid(format!("the vocabulary has no `{token}`")))
        };
        let bos = id(START_OF_TEXT)?;
        let eos = id(END_OF_TEXT)?;
        let pad_token = config.pad_token.as_ref().map_or(END_OF_TEXT, TokenSpec::content);
        let pad = id(pad_token)?;
        let specials: Vec<AddedToken> = [START_OF_TEXT, END_OF_TEXT, pad_token]
            .iter()
            .map(|t| AddedToken::from(*t, true))
            .collect();
        inner.add_special_tokens(&specials);
        let max_length = config
            .model_max_length
            .filter(|&m| m >= 2.0 && m <= DEFAULT_MAX_LENGTH as f64)
            .map_or(DEFAULT_MAX_LENGTH, |m| m as usize);
        Ok(Self {
            inner,
            bos,
            eos,
            pad,
            max_length,
        })
    }

    pub fn max_length(&self) -> usize {
        self.max_length
    }

    /// The id chunks are padded with: `<|endoftext|>` for SD 1.x, `!` (0) for SD 2.x.
    pub fn pad_id(&self) -> i64 {
        self.pad
    }

    /// BOS + the prompt's tokens + EOS, truncated to the context length; no padding.
    pub fn encode(&self, prompt: &str) -> Result<Tokens, TokenizerError> {
        let body = self.token_ids(prompt)?;
        let room = self.max_length - 2;
        let truncated = body.len() > room;
        let mut ids = Vec::with_capacity(body.len().min(room) + 2);
        ids.push(self.bos);
        ids.extend(&body[..body.len().min(room)]);
        ids.push(self.eos);
        let symbols = self.symbols(&ids);
        Ok(Tokens {
            ids,
            symbols,
            truncated,
        })
    }

    /// The text's token ids without BOS/EOS and without truncation.
    pub fn token_ids(&self, text: &str) -> Result<Vec<i64>, TokenizerError> {
        let encoding = self
            .inner
            .encode(basic_clean(text), false)
            .map_err(|e| TokenizerError::Encode(e.to_string()))?;
        Ok(encoding.get_ids().iter().map(|&id| i64::from(id)).collect())
    }

    /// The vocabulary's symbols for `ids` (for `easel tokenize`).
    pub fn symbols(&self, ids: &[i64]) -> Vec<String> {
        ids.iter()
            .map(|&id| self.inner.id_to_token(id as u32).unwrap_or_default())
            .collect()
    }

    /// One chunk as the text encoder reads it: BOS, up to `max_length − 2` ids, EOS, then the
    /// pad token up to `max_length`.
    pub fn wrap_chunk(&self, body: &[i64]) -> Vec<i64> {
        let mut ids = Vec::with_capacity(self.max_length);
        ids.push(self.bos);
        ids.extend(&body[..body.len().min(self.max_length - 2)]);
        ids.push(self.eos);
        ids.resize(self.max_length, self.pad);
        ids
    }
}

/// The clean-up `CLIPTokenizer` applies before BPE (ftfy's `fix_text`, then `html.unescape`
/// twice), limited to what prompts meet: HTML character references and curly quotes.
fn basic_clean(text: &str) -> String {
    let once = unescape_html(text);
    let twice = if once.contains('&') { unescape_html(&once) } else { once };
    twice
        .chars()
        .map(|c| match c {
            '\u{2018}'..='\u{201b}' => '\'',
            '\u{201c}'..='\u{201f}' => '"',
            other => other,
        })
        .collect()
}

/// Decodes `&amp;`-style named references (the common ones) and `&#NN;` / `&#xHH;`.
fn unescape_html(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find('&') {
        out.push_str(&rest[..start]);
        rest = &rest[start..];
        // A reference is at most 10 bytes before its `;`: look no further, so text full of `&`
        // without `;` costs linear time, not quadratic.
        let window = &rest.as_bytes()[..rest.len().min(11)];
        let decoded = window.iter().position(|&b| b == b';').and_then(|end| {
            let entity = &rest[1..end];
            let c = match entity {
                "amp" => Some('&'),
                "lt" => Some('<'),
                "gt" => Some('>'),
                "quot" => Some('"'),
                "apos" => Some('\''),
                "nbsp" => Some('\u{a0}'),
                _ => {
                    let number = entity.strip_prefix('#')?;
                    let code = match number.strip_prefix(['x', 'X']) {
                        Some(hex) => u32::from_str_radix(hex, 16).ok()?,
                        None => number.parse().ok()?,
                    };
                    char::from_u32(code)
                }
            }?;
            Some((c, end + 1))
        });
        match decoded {
            Some((c, len)) => {
                out.push(c);
                rest = &rest[len..];
            }
            None => {
                out.push('&');
                rest = &rest[1..];
            }
        }
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    fn fixtures() -> std::path::PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures")
    }

    fn ids(value: &Value) -> Vec<i64> {
        value.as_array().unwrap().iter().map(|v| v.as_i64().unwrap()).collect()
    }

    /// A tokenizer folder from a fixture vocabulary with the given pad token.
    fn tokenizer(vocab: &str, pad: &str) -> (tempfile::TempDir, ClipTokenizer) {
        let dir = tempfile::tempdir().unwrap();
        for file in ["vocab.json", "merges.txt"] {
            std::fs::copy(
                fixtures().join("tokenizer").join(vocab).join(file),
                dir.path().join(file),
            )
            .unwrap();
        }
        std::fs::write(
            dir.path().join("tokenizer_config.json"),
            format!(r#"{{"pad_token": "{pad}", "model_max_length": 77}}"#),
        )
        .unwrap();
        let tokenizer = ClipTokenizer::from_dir(dir.path()).unwrap();
        (dir, tokenizer)
    }

    #[test]
    fn matches_transformers_clip_tokenizer() {
        let cases: Value =
            serde_json::from_slice(&std::fs::read(fixtures().join("tokenizer/cases.json")).unwrap()).unwrap();
        let mut checked = 0;
        for (vocab, key) in [("clip-full", "full"), ("clip-tiny", "tiny")] {
            let (_d1, sd1) = tokenizer(vocab, "<|endoftext|>");
            let (_d2, sd2) = tokenizer(vocab, "!");
            for case in cases["cases"].as_array().unwrap() {
                let prompt = case["prompt"].as_str().unwrap();
                let expected = ids(&case[format!("ids_{key}")]);
                assert_eq!(sd1.encode(prompt).unwrap().ids, expected, "{vocab} {prompt:?}");
                let expected_sd2 = case.get(format!("ids_{key}_sd2")).map(ids).unwrap_or(expected);
                assert_eq!(
                    sd2.encode(prompt).unwrap().ids,
                    expected_sd2,
                    "{vocab} (pad !) {prompt:?}"
                );
                checked += 1;
            }
            let padded = &cases["padded"];
            let prompt = padded["prompt"].as_str().unwrap();
            // What the text encoder reads: one chunk, padded with the model's pad token.
            assert_eq!(
                sd1.wrap_chunk(&sd1.token_ids(prompt).unwrap()),
                ids(&padded["ids"][key])
            );
            assert_eq!(
                sd2.wrap_chunk(&sd2.token_ids(prompt).unwrap()),
                ids(&padded["ids"][format!("{key}_sd2")])
            );
        }
        assert!(checked >= 60, "only {checked} cases");
    }

    #[test]
    fn long_prompts_are_truncated_to_the_context() {
        let (_dir, tok) = tokenizer("clip-full", "<|endoftext|>");
        let tokens = tok.encode(&"cat ".repeat(100)).unwrap();
        assert_eq!(tokens.ids.len(), 77);
        assert!(tokens.truncated);
        assert_eq!(*tokens.ids.last().unwrap(), 49407);
        assert!(!tok.encode("a cat").unwrap().truncated);
    }

    #[test]
    fn html_and_quotes_are_cleaned_like_ftfy() {
        assert_eq!(
            basic_clean("&amp;lt; &#65;&#x42; don\u{2019}t \u{201c}q\u{201d} & a&b;"),
            "< AB don't \"q\" & a&b;"
        );
    }

    #[test]
    fn missing_vocabulary_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let err = ClipTokenizer::from_dir(dir.path()).unwrap_err().to_string();
        assert!(err.contains("vocab.json"), "{err}");
    }
}
