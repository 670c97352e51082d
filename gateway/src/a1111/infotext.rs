//! AUTOMATIC1111's "infotext", the `parameters` text a picture carries, read back into fields
//! (what `/sdapi/v1/png-info` answers as `parameters`).
//!
//! The text is the prompt, optionally a line `Negative prompt: …`, and a last line of
//! `Key: value` pairs separated by commas (a value with a comma is quoted). Values stay
//! strings, as A1111 leaves them; a `WxH` value becomes `Key-1` and `Key-2`.

use serde_json::{Map, Value};

/// The fields of an infotext, keyed as A1111 keys them (`Prompt`, `Negative prompt`, `Steps`,
/// `Size-1`, …).
pub fn parse(text: &str) -> Map<String, Value> {
    let mut lines: Vec<&str> = text.trim().split('\n').collect();
    let last = lines.pop().unwrap_or("");
    let mut pairs = key_values(last);
    if pairs.len() < 3 {
        lines.push(last);
        pairs.clear();
    }
    let (mut prompt, mut negative) = (String::new(), String::new());
    let mut in_negative = false;
    for line in lines {
        let mut line = line.trim();
        if let Some(rest) = line.strip_prefix("Negative prompt:") {
            in_negative = true;
            line = rest.trim();
        }
        let target = if in_negative { &mut negative } else { &mut prompt };
        if !target.is_empty() {
            target.push('\n');
        }
        target.push_str(line);
    }
    let mut fields = Map::new();
    fields.insert("Prompt".into(), Value::String(prompt));
    fields.insert("Negative prompt".into(), Value::String(negative));
    for (key, value) in pairs {
        match size_of(&value) {
            Some((width, height)) => {
                fields.insert(format!("{key}-1"), Value::String(width.into()));
                fields.insert(format!("{key}-2"), Value::String(height.into()));
            }
            None => {
                fields.insert(key, Value::String(value));
            }
        }
    }
    // A missing clip skip means the default, as A1111 reads it.
    fields.entry("Clip skip").or_insert_with(|| Value::String("1".into()));
    fields
}

/// `Key: value, Key: "quoted, value", …` → pairs; pieces that are not `Key: value` are skipped.
fn key_values(line: &str) -> Vec<(String, String)> {
    let mut pairs = Vec::new();
    for piece in split_unquoted_commas(line) {
        let Some((key, value)) = piece.split_once(':') else {
            continue;
        };
        let key = key.trim();
        let valid_key = key.chars().next().is_some_and(|c| c.is_alphanumeric() || c == '_')
            && key
                .chars()
                .all(|c| c.is_alphanumeric() || c == '_' || c == ' ' || c == '-' || c == '/');
        if !valid_key || key.len() < 2 {
            continue;
        }
        pairs.push((key.to_string(), unquote(value.trim())));
    }
    pairs
}

fn split_unquoted_commas(line: &str) -> Vec<&str> {
    let mut pieces = Vec::new();
    let (mut start, mut quoted, mut escaped) = (0, false, false);
    for (index, c) in line.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' if quoted => escaped = true,
            '"' => quoted = !quoted,
            ',' if !quoted => {
                pieces.push(&line[start..index]);
                start = index + 1;
            }
            _ => {}
        }
    }
    pieces.push(&line[start..]);
    pieces
}

/// A JSON-quoted value (A1111 quotes with `json.dumps`) as its text; anything else as is.
fn unquote(value: &str) -> String {
    if value.len() >= 2
        && value.starts_with('"')
        && value.ends_with('"')
        && let Ok(Value::String(text)) = serde_json::from_str(value)
    {
        return text;
    }
    value.to_string()
}

fn size_of(value: &str) -> Option<(&str, &str)> {
    let (width, height) = value.split_once('x')?;
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    (digits(width) && digits(height)).then_some((width, height))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn easels_own_parameters_read_back() {
        let text = "a red circle, on blue\nNegative prompt: blurry\nSteps: 20, Sampler: Euler a, CFG scale: 7.5, \
                    Seed: 42, Size: 512x768, Model: tiny-shapes, Version: easel 0.1.0";
        let fields = parse(text);
        assert_eq!(fields["Prompt"], "a red circle, on blue");
        assert_eq!(fields["Negative prompt"], "blurry");
        assert_eq!(fields["Steps"], "20");
        assert_eq!(fields["Sampler"], "Euler a");
        assert_eq!(fields["Size-1"], "512");
        assert_eq!(fields["Size-2"], "768");
        assert_eq!(fields["Clip skip"], "1");
    }

    #[test]
    fn quoted_values_multiline_prompts_and_plain_text() {
        let text = "line one\nline two\nSteps: 4, Lora hashes: \"a: 1, b: 2\", Seed: 1";
        let fields = parse(text);
        assert_eq!(fields["Prompt"], "line one\nline two");
        assert_eq!(fields["Lora hashes"], "a: 1, b: 2");
        let plain = parse("just a prompt");
        assert_eq!(plain["Prompt"], "just a prompt");
        assert_eq!(plain.len(), 3);
        assert_eq!(parse("")["Prompt"], "");
    }

    proptest::proptest! {
        #[test]
        fn any_text_parses_without_panicking(text in "\\PC{0,200}") {
            let fields = parse(&text);
            proptest::prop_assert!(fields.contains_key("Prompt"));
        }
    }
}
