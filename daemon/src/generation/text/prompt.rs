//! Prompt weighting and long prompts, AUTOMATIC1111-style.
//!
//! Syntax: `(text)` multiplies the attention weight of `text` by 1.1, `[text]` divides it by
//! 1.1, `(text:1.3)` multiplies it by 1.3; brackets nest; `\(`, `\)`, `\[`, `\]`, `\\` are
//! literal; `BREAK` (a whole word) starts a new chunk. easel is stricter than AUTOMATIC1111,
//! which silently accepts broken brackets: an unclosed or unmatched bracket, or a weight that
//! is not a number, is an error that names its position.
//!
//! Encoding: each weighted segment is tokenized on its own; the tokens are cut into chunks of
//! 75, each wrapped as `BOS tokens EOS pad…` (77 ids) and encoded separately; a chunk with
//! weights other than 1 has its embedding scaled token by token and then rescaled to its
//! original mean (AUTOMATIC1111's "original" emphasis). The chunks are concatenated along the
//! sequence, and cond and uncond are evened out with empty-prompt chunks.

/// One piece of a parsed prompt.
#[derive(Debug, Clone, PartialEq)]
pub enum Piece {
    Text { text: String, weight: f64 },
    Break,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PromptError {
    #[error("unclosed `{bracket}` at position {position} in the prompt; close it or escape it as `\\{bracket}`")]
    Unclosed { bracket: char, position: usize },
    #[error("unmatched `{bracket}` at position {position} in the prompt; remove it or escape it as `\\{bracket}`")]
    Unmatched { bracket: char, position: usize },
    #[error("invalid weight `{text}` at position {position} in the prompt; write a number, as in `(word:1.2)`")]
    InvalidWeight { text: String, position: usize },
    #[error("the weights in the prompt multiply to infinity for `{text}`; use fewer brackets or smaller weights")]
    InfiniteWeight { text: String },
}

const BRACKET_FACTOR: f64 = 1.1;

/// Parses the attention syntax into weighted text and breaks.
pub fn parse(prompt: &str) -> Result<Vec<Piece>, PromptError> {
    let chars: Vec<char> = prompt.chars().collect();
    let mut pieces: Vec<Piece> = Vec::new();
    // Open brackets: (index in `pieces` where their range starts, position in the prompt).
    let mut round: Vec<(usize, usize)> = Vec::new();
    let mut square: Vec<(usize, usize)> = Vec::new();
    let mut text = String::new();
    let mut i = 0;
    let flush = |text: &mut String, pieces: &mut Vec<Piece>| {
        if !text.is_empty() {
            push_text_with_breaks(std::mem::take(text), pieces);
        }
    };
    while i < chars.len() {
        let c = chars[i];
        match c {
            '\\' if matches!(chars.get(i + 1), Some('(' | ')' | '[' | ']' | '\\')) => {
                text.push(chars[i + 1]);
                i += 2;
                continue;
            }
            '(' => {
                flush(&mut text, &mut pieces);
                round.push((pieces.len(), i));
            }
            '[' => {
                flush(&mut text, &mut pieces);
                square.push((pieces.len(), i));
            }
            ')' | ']' => {
                flush(&mut text, &mut pieces);
                let stack = if c == ')' { &mut round } else { &mut square };
                let (start, _) = stack.pop().ok_or(PromptError::Unmatched {
                    bracket: c,
                    position: i,
                })?;
                // `[x]` divides (rather than multiplying by 1/1.1) to match the reference bit for bit.
                let scale = |w: f64| {
                    if c == ')' {
                        w * BRACKET_FACTOR
                    } else {
                        w / BRACKET_FACTOR
                    }
                };
                reweight(&mut pieces[start..], scale);
            }
            ':' => match weight_at(&chars, i)? {
                Some((weight, close)) => {
                    flush(&mut text, &mut pieces);
                    let (start, _) = round.pop().ok_or(PromptError::Unmatched {
                        bracket: ')',
                        position: close,
                    })?;
                    reweight(&mut pieces[start..], |w| w * weight);
                    i = close + 1;
                    continue;
                }
                None => text.push(c),
            },
            _ => text.push(c),
        }
        i += 1;
    }
    flush(&mut text, &mut pieces);
    let first_unclosed = round
        .iter()
        .map(|&(_, p)| ('(', p))
        .chain(square.iter().map(|&(_, p)| ('[', p)))
        .min_by_key(|&(_, p)| p);
    if let Some((bracket, position)) = first_unclosed {
        return Err(PromptError::Unclosed { bracket, position });
    }
    // `(x:1e300)` or ten thousand nested brackets would scale an embedding to inf (then NaN).
    for piece in &pieces {
        if let Piece::Text { text, weight } = piece
            && !weight.is_finite()
        {
            return Err(PromptError::InfiniteWeight {
                text: text.chars().take(40).collect(),
            });
        }
    }
    Ok(merge(pieces))
}

/// `:w)` at `colon` (spaces allowed around the number): the weight and the index of `)`.
/// Anything else after a colon is literal text, as in AUTOMATIC1111.
fn weight_at(chars: &[char], colon: usize) -> Result<Option<(f64, usize)>, PromptError> {
    let mut i = colon + 1;
    while chars.get(i).is_some_and(|c| c.is_whitespace()) {
        i += 1;
    }
    let start = i;
    if matches!(chars.get(i), Some('+' | '-')) {
        i += 1;
    }
    while chars.get(i).is_some_and(|c| c.is_ascii_digit() || *c == '.') {
        i += 1;
    }
    let number: String = chars[start..i].iter().collect();
    while chars.get(i).is_some_and(|c| c.is_whitespace()) {
        i += 1;
    }
    if chars.get(i) != Some(&')') || !number.chars().any(|c| c.is_ascii_digit() || c == '.') {
        return Ok(None);
    }
    match number.parse::<f64>() {
        Ok(weight) => Ok(Some((weight, i))),
        Err(_) => Err(PromptError::InvalidWeight {
            text: number,
            position: start,
        }),
    }
}

fn reweight(pieces: &mut [Piece], scale: impl Fn(f64) -> f64) {
    for piece in pieces {
        if let Piece::Text { weight, .. } = piece {
            *weight = scale(*weight);
        }
    }
}

/// Splits plain text on `BREAK` words (whitespace around them dropped).
fn push_text_with_breaks(text: String, pieces: &mut Vec<Piece>) {
    let words: Vec<&str> = text.split_inclusive(char::is_whitespace).collect();
    if !words.iter().any(|w| w.trim() == "BREAK") {
        pieces.push(Piece::Text { text, weight: 1.0 });
        return;
    }
    let mut current = String::new();
    for word in words {
        if word.trim() == "BREAK" {
            let kept = current.trim_end().to_string();
            if !kept.is_empty() {
                pieces.push(Piece::Text {
                    text: kept,
                    weight: 1.0,
                });
            }
            pieces.push(Piece::Break);
            current.clear();
        } else if current.is_empty() && pieces.last() == Some(&Piece::Break) {
            current.push_str(word.trim_start());
        } else {
            current.push_str(word);
        }
    }
    if !current.is_empty() {
        pieces.push(Piece::Text {
            text: current,
            weight: 1.0,
        });
    }
}

/// Joins neighbouring text of equal weight; an empty prompt is one empty segment.
fn merge(pieces: Vec<Piece>) -> Vec<Piece> {
    let mut merged: Vec<Piece> = Vec::new();
    for piece in pieces {
        match (merged.last_mut(), &piece) {
            (Some(Piece::Text { text, weight }), Piece::Text { text: next, weight: w }) if weight == w => {
                text.push_str(next);
            }
            _ => merged.push(piece),
        }
    }
    if merged.is_empty() {
        merged.push(Piece::Text {
            text: String::new(),
            weight: 1.0,
        });
    }
    merged
}

/// One chunk: token ids (BOS/EOS not included) and the weight of each.
pub type Chunk = (Vec<i64>, Vec<f64>);

/// Token ids and their weights, split into chunks of at most `size` tokens (BOS/EOS not
/// included). `tokenize` turns a segment's text into ids.
pub fn chunk<E>(
    pieces: &[Piece],
    size: usize,
    mut tokenize: impl FnMut(&str) -> Result<Vec<i64>, E>,
) -> Result<Vec<Chunk>, E> {
    let mut chunks: Vec<Chunk> = Vec::new();
    let mut current: Chunk = (Vec::new(), Vec::new());
    for piece in pieces {
        match piece {
            Piece::Break => {
                if !current.0.is_empty() {
                    chunks.push(std::mem::take(&mut current));
                }
            }
            Piece::Text { text, weight } => {
                for id in tokenize(text)? {
                    if current.0.len() == size {
                        chunks.push(std::mem::take(&mut current));
                    }
                    current.0.push(id);
                    current.1.push(*weight);
                }
            }
        }
    }
    if !current.0.is_empty() || chunks.is_empty() {
        chunks.push(current);
    }
    Ok(chunks)
}

/// AUTOMATIC1111's "original" emphasis on one chunk's embedding `[tokens, dim]`: scale each
/// token's vector by its weight, then restore the chunk's mean.
pub fn apply_weights(embedding: &mut [f32], weights: &[f64]) {
    if weights.iter().all(|&w| w == 1.0) {
        return;
    }
    let dim = embedding.len() / weights.len();
    let mean = |values: &[f32]| values.iter().map(|&v| f64::from(v)).sum::<f64>() / values.len() as f64;
    let original = mean(embedding);
    let magnitude = embedding.iter().map(|&v| f64::from(v).abs()).sum::<f64>() / embedding.len() as f64;
    let mut weighted: Vec<f64> = Vec::with_capacity(embedding.len());
    for (row, &weight) in embedding.chunks_exact(dim).zip(weights) {
        weighted.extend(row.iter().map(|&v| f64::from(v) * weight));
    }
    // A text encoder whose final layer norm has no bias gives a chunk mean of ~0 (1e-9 against
    // values of ~1): restoring it would divide noise by noise, so it is skipped there.
    let new_mean = weighted.iter().sum::<f64>() / weighted.len() as f64;
    let scale = if original.abs() > MEAN_FLOOR * magnitude && new_mean != 0.0 {
        original / new_mean
    } else {
        1.0
    };
    for (out, v) in embedding.iter_mut().zip(weighted) {
        *out = (v * scale) as f32;
    }
}

/// Below this fraction of the mean magnitude, a chunk's mean is treated as zero.
const MEAN_FLOOR: f64 = 1e-4;

#[cfg(test)]
mod tests {
    use super::*;

    fn text(t: &str, w: f64) -> Piece {
        Piece::Text {
            text: t.into(),
            weight: w,
        }
    }

    fn close(pieces: &[Piece], expected: &[Piece]) -> bool {
        pieces.len() == expected.len()
            && pieces.iter().zip(expected).all(|(a, b)| match (a, b) {
                (Piece::Text { text: t1, weight: w1 }, Piece::Text { text: t2, weight: w2 }) => {
                    t1 == t2 && (w1 - w2).abs() < 1e-12
                }
                (Piece::Break, Piece::Break) => true,
                _ => false,
            })
    }

    #[test]
    fn parses_the_attention_syntax() {
        let cases: Vec<(&str, Vec<Piece>)> = vec![
            ("a cat", vec![text("a cat", 1.0)]),
            ("(a cat)", vec![text("a cat", 1.1)]),
            ("((a cat))", vec![text("a cat", 1.1 * 1.1)]),
            ("[a cat]", vec![text("a cat", 1.0 / 1.1)]),
            (
                "a (cat:1.5) dog",
                vec![text("a ", 1.0), text("cat", 1.5), text(" dog", 1.0)],
            ),
            (
                "(a (nested:0.5) cat:1.2)",
                vec![text("a ", 1.2), text("nested", 0.6), text(" cat", 1.2)],
            ),
            ("\\(not weighted\\)", vec![text("(not weighted)", 1.0)]),
            ("a:b (c:x)", vec![text("a:b ", 1.0), text("c:x", 1.1)]),
            ("[x:1.2]", vec![text("x:1.2", 1.0 / 1.1)]),
            ("(a : 1.3 )", vec![text("a ", 1.3)]),
            ("(a:-1) (b:0)", vec![text("a", -1.0), text(" ", 1.0), text("b", 0.0)]),
            ("a BREAK b", vec![text("a", 1.0), Piece::Break, text("b", 1.0)]),
            ("", vec![text("", 1.0)]),
        ];
        for (prompt, expected) in cases {
            let parsed = parse(prompt).unwrap();
            assert!(close(&parsed, &expected), "{prompt:?}: {parsed:?}");
        }
    }

    #[test]
    fn broken_syntax_names_the_position() {
        assert_eq!(
            parse("a (unclosed"),
            Err(PromptError::Unclosed {
                bracket: '(',
                position: 2
            })
        );
        assert_eq!(
            parse("[unclosed"),
            Err(PromptError::Unclosed {
                bracket: '[',
                position: 0
            })
        );
        assert_eq!(
            parse("unmatched)"),
            Err(PromptError::Unmatched {
                bracket: ')',
                position: 9
            })
        );
        assert_eq!(
            parse("x]"),
            Err(PromptError::Unmatched {
                bracket: ']',
                position: 1
            })
        );
        assert_eq!(
            parse("(a:1.2.3)"),
            Err(PromptError::InvalidWeight {
                text: "1.2.3".into(),
                position: 3
            })
        );
        let message = parse("a (b").unwrap_err().to_string();
        assert!(message.contains("position 2"), "{message}");
    }

    #[test]
    fn chunks_hold_75_tokens_and_break_closes_one() {
        let tokenize = |t: &str| -> Result<Vec<i64>, ()> { Ok(t.split_whitespace().map(|w| w.len() as i64).collect()) };
        let long = vec![text(&"ab ".repeat(160), 1.0)];
        let chunks = chunk(&long, 75, tokenize).unwrap();
        assert_eq!(chunks.iter().map(|c| c.0.len()).collect::<Vec<_>>(), [75, 75, 10]);
        let broken = parse("a (bb:2) BREAK BREAK ccc").unwrap();
        let chunks = chunk(&broken, 75, tokenize).unwrap();
        assert_eq!(chunks, vec![(vec![1, 2], vec![1.0, 2.0]), (vec![3], vec![1.0])]);
        assert_eq!(
            chunk(&parse("").unwrap(), 75, tokenize).unwrap(),
            vec![(vec![], vec![])]
        );
    }

    #[test]
    fn weights_that_multiply_to_infinity_are_refused() {
        let deep = format!("{}x{}", "(".repeat(8000), ")".repeat(8000));
        assert!(matches!(parse(&deep), Err(PromptError::InfiniteWeight { .. })));
        let huge = format!("(x:{})", "9".repeat(400));
        assert!(
            matches!(parse(&huge), Err(PromptError::InfiniteWeight { .. })),
            "{:?}",
            parse(&huge)
        );
    }

    mod properties {
        use super::super::*;
        use proptest::prelude::*;

        proptest! {
            /// Any text: a typed error or pieces with finite weights, never a panic.
            #[test]
            fn any_prompt_parses_or_fails_cleanly(prompt in any::<String>()) {
                if let Ok(pieces) = parse(&prompt) {
                    for piece in &pieces {
                        if let Piece::Text { weight, .. } = piece {
                            prop_assert!(weight.is_finite());
                        }
                    }
                }
            }

            /// Prompts made of the syntax itself, where the parser's corners are.
            #[test]
            fn syntax_soup_parses_or_fails_cleanly(prompt in "[()\\[\\]:\\\\a 0-9.+-]{0,80}|(BREAK |\\(|\\)|:1.5\\)|a |\\[)*") {
                let _ = parse(&prompt);
            }

            /// Chunks never exceed their size, and no token is lost or duplicated.
            #[test]
            fn chunks_keep_every_token(prompt in "[a-z ()\\[\\]]{0,400}", size in 1usize..80) {
                if let Ok(pieces) = parse(&prompt) {
                    let tokenize = |t: &str| -> Result<Vec<i64>, ()> { Ok(t.bytes().map(i64::from).collect()) };
                    let chunks = chunk(&pieces, size, tokenize).unwrap();
                    prop_assert!(!chunks.is_empty());
                    let mut tokens = 0;
                    for (ids, weights) in &chunks {
                        prop_assert!(ids.len() <= size);
                        prop_assert_eq!(ids.len(), weights.len());
                        tokens += ids.len();
                    }
                    let expected: usize = pieces.iter().map(|p| match p {
                        Piece::Text { text, .. } => text.len(),
                        Piece::Break => 0,
                    }).sum();
                    prop_assert_eq!(tokens, expected);
                }
            }
        }
    }

    #[test]
    fn weights_scale_tokens_and_keep_the_mean() {
        let mut embedding = vec![1.0, 2.0, 3.0, 4.0];
        apply_weights(&mut embedding, &[2.0, 1.0]);
        let mean: f32 = embedding.iter().sum::<f32>() / 4.0;
        assert!((mean - 2.5).abs() < 1e-6);
        assert!((embedding[0] / embedding[2] - 2.0 / 3.0).abs() < 1e-6, "{embedding:?}");
        let mut unweighted = vec![1.0, 2.0];
        apply_weights(&mut unweighted, &[1.0]);
        assert_eq!(unweighted, [1.0, 2.0]);
    }
}
