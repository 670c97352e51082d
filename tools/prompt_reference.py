#!/usr/bin/env python3
"""Reference implementation of easel's prompt weighting and long-prompt encoding, and the
fixtures under tests/fixtures/prompts/ that the Rust tests compare against.

    .venv-tools/bin/python tools/prompt_reference.py

Model: tests/fixtures/models/sd1-tiny (slow transformers CLIPTokenizer on tokenizer/,
onnxruntime on text_encoder/model.onnx, float32, one thread).

Semantics (written from easel's spec, not copied from AUTOMATIC1111):

Parsing (A1111 attention syntax, stricter: malformed brackets are errors).
  Positions are 0-based indices in the prompt's Unicode scalar values (Python str index;
  in Rust, count chars, not bytes). "Whitespace" is Unicode White_Space (Rust
  char::is_whitespace), see WS below.
  * Escapes `\\(` `\\)` `\\[` `\\]` `\\\\` give the literal second character. Any other backslash
    (including a trailing one) is a literal backslash.
  * `(` pushes a round bracket, `[` a square one (one stack for both). Closing brackets must
    match the innermost open bracket's kind, otherwise (or with nothing open) the error is
    "unmatched `)` at position N" / "unmatched `]` at position N" (N = the closer's index).
    `(` ... `)` multiplies the weight of everything inside by 1.1; `[` ... `]` divides it by
    1.1 (w / 1.1, a division, not a multiplication by 1/1.1).
  * `:` while the innermost open bracket is `(`: if the rest of the prompt after the colon
    matches `WS* ([+-]?[.0-9]+) WS* )` the number is the weight: it must parse as a float
    (Python float() == Rust f64::from_str on that character set) or the error is
    "invalid weight `TEXT` at position N", N = index of the number's first character; when
    it parses, the inside of the bracket is multiplied by it (instead of 1.1) and the `)` is
    consumed. Anything else (no bracket open, innermost bracket `[`, `:` not followed by that
    pattern, e.g. `(a:x)`, `[a:1.2]`, `a:b`) leaves the `:` as literal text.
  * Weights are applied in closing order (innermost bracket first): a piece's weight is
    1.0 then multiplied/divided by each enclosing bracket's factor, innermost to outermost,
    in f64.
  * BREAK: the 5 characters `BREAK` at index i are a break when i == 0 or prompt[i-1] is
    whitespace, and i+5 == len or prompt[i+5] is whitespace (case-sensitive; checked on the
    raw prompt, so `(BREAK)` or `BREAKfast` are text). The whitespace run immediately before
    it (which is always the tail of the current text piece) and the run after it are dropped.
    A BREAK may appear inside brackets; weights continue across it.
  * At end of prompt, an unclosed bracket is an error "unclosed `(` at position N" where N
    is the index of the OUTERMOST (earliest) bracket still open (e.g. `((a` → position 0).
  * Then: empty text pieces are dropped, adjacent text pieces with equal weights merged
    (never across a BREAK marker); if nothing at all is left the result is [("", 1.0)].
    In cases.json a BREAK marker is ["BREAK", -1].

Tokenizing: each text piece separately, tokenizer(text, add_special_tokens=False).input_ids;
each token gets its piece's weight.

Chunking (75 tokens per chunk): tokens are appended in order; a chunk is closed lazily: when
a token arrives and the current chunk already holds 75, the chunk is closed first. A BREAK
closes the current chunk only if it is non-empty (so a leading BREAK, a trailing BREAK, two
BREAKs in a row, or a BREAK right after a full 75-token chunk create no empty chunk). At the
end the current chunk is closed if non-empty; if no chunk was produced at all there is one
empty chunk. Each chunk is [BOS] + tokens + [EOS] + [pad]*(77 - 2 - n) with weights 1.0 on
BOS, EOS and pads (sd1-tiny pads with <|endoftext|>).

Encoding: each chunk through the text encoder separately → z [77, D] float32. If any weight
in the chunk != 1.0: (computed in f64, result cast to f32)
    m0 = mean(z); z = z * w[:, None]; z = z * (m0 / mean(z))   (skipped when |m0| <= 1e-4 * mean|z|)
otherwise z is left as the encoder returned it. Chunks are concatenated along the sequence
axis → [1, 77k, D]. Cond and uncond: the one with fewer chunks is extended with the encoding
of the empty chunk (BOS, EOS, pads; weights 1) until both have the same count.

Outputs (byte-reproducible): tests/fixtures/prompts/cases.json and *.npy (float32
[1, 77k, 32]); an embedding identical to one already written reuses that file (e.g. every
empty negative prompt's uncond), which keeps the folder under 300 KB. The Rust side should
compare embeddings with a small tolerance (~1e-5 relative; the reference rescale is in f64).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

from common import FIX, MAX_LEN, ort_session  # also sets HF_HUB_OFFLINE etc.

MODEL = FIX / "models" / "sd1-tiny"
OUT = FIX / "prompts"

CHUNK_TOKENS = 75
SEQ = MAX_LEN

# Unicode White_Space (what Rust's char::is_whitespace accepts).
WS = set("\t\n\x0b\x0c\r \x85\xa0\u1680\u2028\u2029\u202f\u205f\u3000") | {
    chr(c) for c in range(0x2000, 0x200B)
}
NUMBER_CHARS = set("0123456789.")


class PromptError(ValueError):
    pass


def _is_break(p: str, i: int) -> bool:
    return (
        p.startswith("BREAK", i)
        and (i == 0 or p[i - 1] in WS)
        and (i + 5 == len(p) or p[i + 5] in WS)
    )


def _weight_after_colon(p: str, i: int):
    """p[i] == ':'. Returns (number_text, number_start, index_after_close_paren) when the
    colon is followed by WS* [+-]?[.0-9]+ WS* ')', else None."""
    j = i + 1
    n = len(p)
    while j < n and p[j] in WS:
        j += 1
    start = j
    if j < n and p[j] in "+-":
        j += 1
    digits = j
    while j < n and p[j] in NUMBER_CHARS:
        j += 1
    if j == digits:
        return None
    end = j
    while j < n and p[j] in WS:
        j += 1
    if j < n and p[j] == ")":
        return p[start:end], start, j + 1
    return None


def parse(prompt: str):
    """Returns a list of [text, weight] with ["BREAK", None] markers (written as
    ["BREAK", -1] in cases.json). Raises PromptError."""
    res: list[list] = []  # [text, weight]; markers are ["BREAK", None]
    stack: list[tuple[str, int, int]] = []  # (kind, position, index into res)
    buf: list[str] = []

    def flush(strip_right: bool = False):
        text = "".join(buf)
        buf.clear()
        if strip_right:
            k = len(text)
            while k > 0 and text[k - 1] in WS:
                k -= 1
            text = text[:k]
        if text:
            res.append([text, 1.0])

    def close(factor: float | None, divide: bool = False):
        _, _, start = stack.pop()
        for item in res[start:]:
            if item[1] is None:  # BREAK marker
                continue
            item[1] = item[1] / 1.1 if divide else item[1] * factor

    i, n = 0, len(prompt)
    while i < n:
        c = prompt[i]
        if c == "\\":
            if i + 1 < n and prompt[i + 1] in "()[]\\":
                buf.append(prompt[i + 1])
                i += 2
            else:
                buf.append("\\")
                i += 1
        elif c in "([":
            flush()
            stack.append((c, i, len(res)))
            i += 1
        elif c in ")]":
            want = "(" if c == ")" else "["
            if not stack or stack[-1][0] != want:
                raise PromptError(f"unmatched `{c}` at position {i}")
            flush()
            if c == ")":
                close(1.1)
            else:
                close(None, divide=True)
            i += 1
        elif c == ":" and stack and stack[-1][0] == "(":
            m = _weight_after_colon(prompt, i)
            if m is None:
                buf.append(c)
                i += 1
                continue
            text, start, after = m
            try:
                w = float(text)
            except ValueError:
                raise PromptError(f"invalid weight `{text}` at position {start}") from None
            flush()
            close(w)
            i = after
        elif c == "B" and _is_break(prompt, i):
            flush(strip_right=True)
            res.append(["BREAK", None])
            i += 5
            while i < n and prompt[i] in WS:
                i += 1
        else:
            buf.append(c)
            i += 1
    flush()
    if stack:
        kind, pos, _ = stack[0]
        raise PromptError(f"unclosed `{kind}` at position {pos}")

    out: list[list] = []
    for text, w in res:
        is_break = w is None
        if not is_break and text == "":
            continue
        if out and not is_break and out[-1][1] is not None and out[-1][1] == w:
            out[-1][0] += text
        else:
            out.append([text, w])
    if not out:
        out = [["", 1.0]]
    return out


class Encoder:
    def __init__(self):
        from transformers import CLIPTokenizer

        self.tok = CLIPTokenizer.from_pretrained(str(MODEL / "tokenizer"))
        self.sess = ort_session(MODEL / "text_encoder" / "model.onnx", threads=1)
        self.bos = self.tok.bos_token_id
        self.eos = self.tok.eos_token_id
        self.pad = self.tok.pad_token_id

    def chunks(self, segments):
        chunks: list[list[tuple[int, float]]] = []
        cur: list[tuple[int, float]] = []
        for text, w in segments:
            if w is None:  # BREAK
                if cur:
                    chunks.append(cur)
                    cur = []
                continue
            for t in self.tok(text, add_special_tokens=False).input_ids:
                if len(cur) == CHUNK_TOKENS:
                    chunks.append(cur)
                    cur = []
                cur.append((t, w))
        if cur or not chunks:
            chunks.append(cur)
        return [self.frame(c) for c in chunks]

    def frame(self, toks):
        ids = [self.bos] + [t for t, _ in toks] + [self.eos]
        ws = [1.0] + [float(w) for _, w in toks] + [1.0]
        ids += [self.pad] * (SEQ - len(ids))
        ws += [1.0] * (SEQ - len(ws))
        return {"ids": ids, "weights": ws}

    def empty_chunk(self):
        return self.frame([])

    def raw(self, ids):
        out = self.sess.run(
            ["last_hidden_state"], {"input_ids": np.array([ids], dtype=np.int64)}
        )[0]
        return out[0].astype(np.float32)

    def encode(self, chunks, weighted=True):
        zs = []
        for ch in chunks:
            z = self.raw(ch["ids"])
            if weighted and any(w != 1.0 for w in ch["weights"]):
                z64 = z.astype(np.float64)
                m0 = z64.mean()
                magnitude = np.abs(z64).mean()
                w = np.array(ch["weights"], dtype=np.float64)
                z64 = z64 * w[:, None]
                # A text encoder whose final layer norm has no bias gives a chunk mean of ~0
                # (1e-9 against values of ~1): restoring it would divide noise by noise, so the
                # rescale is skipped when |mean| <= 1e-4 * mean|z| (easel does the same).
                new_mean = z64.mean()
                if abs(m0) > 1e-4 * magnitude and new_mean != 0.0:
                    z64 = z64 * (m0 / new_mean)
                z = z64.astype(np.float32)
            zs.append(z)
        return np.concatenate(zs, axis=0)[None]


def words(n: int) -> str:
    base = (
        "a photo of a cat sitting on a red chair in a sunny garden , highly detailed , "
        "sharp focus , warm light , green trees and blue sky behind the old house"
    ).split()
    return " ".join(base[i % len(base)] for i in range(n))


NEG3 = "(blurry:1.4) BREAK lowres BREAK [ugly]"
NEG1 = "(blurry:1.4), lowres"


def cases(enc: Encoder):
    def ntok(text):
        return len(enc.tok(text, add_special_tokens=False).input_ids)

    def prompt_with_tokens(target):
        k = 1
        while ntok(words(k)) < target:
            k += 1
        return words(k)

    p100 = prompt_with_tokens(100)
    p200 = prompt_with_tokens(200)
    p200w = "((" + p200[: len(p200) // 3] + ")) " + p200[len(p200) // 3 : 2 * len(p200) // 3] + " [" + p200[2 * len(p200) // 3 :] + ":1.3]"
    return [
        ("plain", "a photo of a cat", ""),
        ("paren", "a photo of (a cat)", ""),
        ("double_paren", "a photo of ((a cat))", ""),
        ("square", "a photo of [a cat]", ""),
        ("explicit_weight", "a photo of (a cat:1.5)", ""),
        ("nested", "a photo of (a (nested:0.5) cat:1.2) in a garden", ""),
        ("escapes", r"\(not weighted\) \[literal\] back\\slash", ""),
        # a:b outside brackets and (c:x) inside: both literal colons
        ("literal_colon", "a:b, (c:x) style: photo", ""),
        ("square_colon_number", "a photo of [a cat:1.2]", ""),
        ("break_middle", "a cat BREAK a dog", NEG3),
        ("break_leading_trailing", "BREAK  a photo of a cat BREAK BREAK", ""),
        ("long_100", p100, NEG1),
        ("long_200_weighted", p200w, NEG3),
        ("weight_whitespace", "a photo of (a cat : 1.3 ) here", ""),
        ("negative_and_zero_weight", "a photo of (a cat:-1) on (a mat:0)", ""),
        ("empty", "", ""),
        # errors
        ("err_unclosed_paren", "a (unclosed", None),
        ("err_unmatched_paren", "unmatched) cat", None),
        ("err_unclosed_square", "x [unclosed", None),
        ("err_invalid_weight", "a (b:1.2.3) c", None),
        ("err_unclosed_outermost", "((a) b", None),
        ("err_mismatched_kind", "(a]", None),
        ("err_colon_weight_outside", "a:1.2) b", None),
        ("err_invalid_weight_dot", "(a: . )", None),
    ]


def json_segments(segs):
    return [[t, -1 if w is None else w] for t, w in segs]


def write_cases_json(path: Path, data):
    """cases.json: one line per field, and one line per chunk (ids and weights of 77 tokens
    would take hundreds of lines each with common.write_json's indentation)."""
    lines = ["["]
    for ci, case in enumerate(data):
        lines.append(" {")
        keys = list(case)
        for ki, k in enumerate(keys):
            v = case[k]
            end = "," if ki + 1 < len(keys) else ""
            if k in ("chunks", "negative_chunks"):
                lines.append(f'  "{k}": [')
                for j, ch in enumerate(v):
                    e2 = "," if j + 1 < len(v) else ""
                    lines.append("   " + json.dumps(ch, separators=(",", ":")) + e2)
                lines.append("  ]" + end)
            else:
                lines.append(f"  {json.dumps(k)}: {json.dumps(v, separators=(',', ':'), ensure_ascii=False)}{end}")
        lines.append(" }" + ("," if ci + 1 < len(data) else ""))
    lines.append("]")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def main():
    enc = Encoder()
    OUT.mkdir(parents=True, exist_ok=True)
    for f in OUT.glob("*.npy"):
        f.unlink()
    written: list[tuple[np.ndarray, str]] = []

    def save(arr: np.ndarray, name: str) -> str:
        assert arr.dtype == np.float32
        for prev, rel in written:
            if prev.shape == arr.shape and np.array_equal(prev, arr):
                return rel
        np.save(OUT / name, arr)
        rel = f"prompts/{name}"
        written.append((arr, rel))
        return rel

    out = []
    for name, prompt, neg in cases(enc):
        if neg is None:
            try:
                parse(prompt)
            except PromptError as e:
                out.append({"name": name, "prompt": prompt, "error": str(e)})
                print(f"{name:28s} error: {e}")
                continue
            raise SystemExit(f"{name}: expected an error")
        segs = parse(prompt)
        nsegs = parse(neg)
        ch = enc.chunks(segs)
        nch = enc.chunks(nsegs)
        while len(ch) < len(nch):
            ch.append(enc.empty_chunk())
        while len(nch) < len(ch):
            nch.append(enc.empty_chunk())
        cond = enc.encode(ch)
        uncond = enc.encode(nch)
        plain = enc.encode(ch, weighted=False)
        diff = float(np.abs(cond.astype(np.float64) - plain).mean())
        out.append(
            {
                "name": name,
                "prompt": prompt,
                "negative_prompt": neg,
                "segments": json_segments(segs),
                "negative_segments": json_segments(nsegs),
                "chunks": ch,
                "negative_chunks": nch,
                "cond": save(cond, f"{name}.cond.npy"),
                "uncond": save(uncond, f"{name}.uncond.npy"),
            }
        )
        ntoks = sum(len(enc.tok(t, add_special_tokens=False).input_ids) for t, w in segs if w is not None)
        print(
            f"{name:28s} tokens={ntoks:3d} chunks={len(ch)} cond={tuple(cond.shape)} "
            f"mean|weighted-unweighted|={diff:.6g}"
        )
    write_cases_json(OUT / "cases.json", out)
    total = sum(f.stat().st_size for f in OUT.iterdir())
    print(f"{len(out)} cases, {len(written)} npy files, {total} bytes in {OUT}")


if __name__ == "__main__":
    sys.exit(main())
