//! Reading NumPy `.npy` files: the format `--init-noise` takes.
//!
//! Supports format versions 1, 2 and 3, little-endian float dtypes (`<f2`, `<f4`, `<f8`), C
//! order and any shape. Everything is converted to `f32`. Anything else is an [`NpyError`] that
//! says how to re-save the array.
//!
//! Format reference: `numpy/lib/format.py` — magic `\x93NUMPY`, major and minor version
//! bytes, a little-endian header length (u16 for v1, u32 for v2/v3), then a Python dict
//! literal `{'descr': '<f4', 'fortran_order': False, 'shape': (1, 4, 64, 64), }` padded with
//! spaces and a newline, then the raw data.

use std::path::{Path, PathBuf};

use easel_proto::v1 as pb;

const MAGIC: &[u8] = b"\x93NUMPY";

/// A dense array read from an `.npy` file, as `f32` in row-major (C) order.
#[derive(Debug, Clone, PartialEq)]
pub struct Array {
    pub shape: Vec<usize>,
    pub data: Vec<f32>,
}

impl Array {
    /// The array as a protocol tensor (`f32`, little-endian bytes).
    pub fn to_tensor(&self) -> pb::Tensor {
        pb::Tensor {
            shape: self.shape.iter().map(|&d| d as i64).collect(),
            dtype: pb::Dtype::F32 as i32,
            data: self.data.iter().flat_map(|v| v.to_le_bytes()).collect(),
        }
    }
}

/// Why an `.npy` file could not be read.
#[derive(Debug, thiserror::Error)]
pub enum NpyError {
    #[error(transparent)]
    Read(#[from] crate::input::InputError),
    #[error("{}: {problem}", path.display())]
    InFile { path: PathBuf, problem: Box<NpyError> },
    #[error("not an .npy file (it does not start with the \\x93NUMPY magic); save the array with numpy.save")]
    NotNpy,
    #[error("unsupported .npy format version {0}; save the array with numpy.save (versions 1 to 3 are read)")]
    UnsupportedVersion(u8),
    #[error("the .npy header is malformed: {0}")]
    BadHeader(String),
    #[error(
        "unsupported dtype `{0}`; easel reads little-endian float16/32/64 (`<f2`, `<f4`, `<f8`): save with arr.astype('<f4')"
    )]
    UnsupportedDtype(String),
    #[error("the array is in Fortran order; save a C-ordered copy with numpy.save(path, numpy.ascontiguousarray(arr))")]
    FortranOrder,
    #[error("the data is truncated: shape {shape:?} of `{dtype}` needs {expected} bytes, the file has {found}")]
    Truncated {
        shape: Vec<usize>,
        dtype: String,
        expected: usize,
        found: usize,
    },
    #[error("the file has {extra} bytes after the data of shape {shape:?}; it is not a single .npy array")]
    TrailingBytes { shape: Vec<usize>, extra: usize },
}

/// Reads an `.npy` file into an [`Array`].
pub fn read(path: &Path) -> Result<Array, NpyError> {
    let bytes = crate::input::read_input("--init-noise", path)?;
    parse(&bytes).map_err(|problem| NpyError::InFile {
        path: path.to_path_buf(),
        problem: Box::new(problem),
    })
}

/// Parses the bytes of an `.npy` file into an [`Array`].
pub fn parse(bytes: &[u8]) -> Result<Array, NpyError> {
    if bytes.len() < MAGIC.len() + 2 || &bytes[..MAGIC.len()] != MAGIC {
        return Err(NpyError::NotNpy);
    }
    let major = bytes[MAGIC.len()];
    let after_version = MAGIC.len() + 2;
    let (header_len, header_start) = match major {
        1 => {
            let raw = bytes.get(after_version..after_version + 2).ok_or_else(short_header)?;
            (u16::from_le_bytes([raw[0], raw[1]]) as usize, after_version + 2)
        }
        2 | 3 => {
            let raw = bytes.get(after_version..after_version + 4).ok_or_else(short_header)?;
            (
                u32::from_le_bytes([raw[0], raw[1], raw[2], raw[3]]) as usize,
                after_version + 4,
            )
        }
        other => return Err(NpyError::UnsupportedVersion(other)),
    };
    let header_end = header_start.checked_add(header_len).ok_or_else(short_header)?;
    let header = bytes.get(header_start..header_end).ok_or_else(short_header)?;
    let header = std::str::from_utf8(header).map_err(|_| NpyError::BadHeader("it is not text".into()))?;
    let header = Header::parse(header)?;
    if header.fortran_order {
        return Err(NpyError::FortranOrder);
    }
    let item_size = match header.descr.as_str() {
        "<f2" => 2,
        "<f4" => 4,
        "<f8" => 8,
        other => return Err(NpyError::UnsupportedDtype(other.to_string())),
    };
    let count = header
        .shape
        .iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(d))
        .ok_or_else(|| NpyError::BadHeader(format!("shape {:?} is too large", header.shape)))?;
    let expected = count
        .checked_mul(item_size)
        .ok_or_else(|| NpyError::BadHeader(format!("shape {:?} is too large", header.shape)))?;
    let body = &bytes[header_end..];
    if body.len() < expected {
        return Err(NpyError::Truncated {
            shape: header.shape,
            dtype: header.descr,
            expected,
            found: body.len(),
        });
    }
    if body.len() > expected {
        return Err(NpyError::TrailingBytes {
            shape: header.shape,
            extra: body.len() - expected,
        });
    }
    let data = match item_size {
        2 => body
            .chunks_exact(2)
            .map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32())
            .collect(),
        4 => body
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect(),
        _ => body
            .chunks_exact(8)
            .map(|b| f64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]) as f32)
            .collect(),
    };
    Ok(Array {
        shape: header.shape,
        data,
    })
}

fn short_header() -> NpyError {
    NpyError::BadHeader("the file ends inside the header".into())
}

/// The three keys of the header dict.
#[derive(Debug)]
struct Header {
    descr: String,
    fortran_order: bool,
    shape: Vec<usize>,
}

impl Header {
    fn parse(text: &str) -> Result<Self, NpyError> {
        let text = text.trim();
        let inner = text
            .strip_prefix('{')
            .and_then(|t| t.strip_suffix('}'))
            .ok_or_else(|| NpyError::BadHeader(format!("expected a dict literal, found `{text}`")))?;
        let descr = value_after(inner, "descr")?;
        let descr = unquote(descr).ok_or_else(|| NpyError::BadHeader(format!("'descr' is not a string: `{descr}`")))?;
        let fortran_order = match value_after(inner, "fortran_order")? {
            v if v.starts_with("False") => false,
            v if v.starts_with("True") => true,
            v => {
                return Err(NpyError::BadHeader(format!(
                    "'fortran_order' is not True or False: `{v}`"
                )));
            }
        };
        let shape_text = value_after(inner, "shape")?;
        let shape = parse_shape(shape_text)?;
        Ok(Header {
            descr: descr.to_string(),
            fortran_order,
            shape,
        })
    }
}

/// The text after `'key':` (leading spaces removed).
fn value_after<'a>(dict: &'a str, key: &str) -> Result<&'a str, NpyError> {
    for quote in ['\'', '"'] {
        let pattern = format!("{quote}{key}{quote}");
        if let Some(at) = dict.find(&pattern) {
            let rest = dict[at + pattern.len()..].trim_start();
            if let Some(rest) = rest.strip_prefix(':') {
                return Ok(rest.trim_start());
            }
        }
    }
    Err(NpyError::BadHeader(format!("the key '{key}' is missing")))
}

/// The contents of a leading quoted string.
fn unquote(text: &str) -> Option<&str> {
    let quote = text.chars().next().filter(|c| *c == '\'' || *c == '"')?;
    let rest = &text[1..];
    rest.find(quote).map(|end| &rest[..end])
}

/// `(1, 4, 8, 8)`, `(3,)` or `()`.
fn parse_shape(text: &str) -> Result<Vec<usize>, NpyError> {
    let bad = || NpyError::BadHeader(format!("'shape' is not a tuple of sizes: `{text}`"));
    let inner = text.strip_prefix('(').ok_or_else(bad)?;
    let end = inner.find(')').ok_or_else(bad)?;
    inner[..end]
        .split(',')
        .map(str::trim)
        .filter(|part| !part.is_empty())
        .map(|part| part.trim_end_matches('L').parse::<usize>().map_err(|_| bad()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An `.npy` file as numpy writes it: header padded with spaces to a multiple of 64.
    fn npy(version: u8, header: &str, body: &[u8]) -> Vec<u8> {
        let prefix = MAGIC.len() + 2 + if version == 1 { 2 } else { 4 };
        let mut text = header.to_string();
        while !(prefix + text.len() + 1).is_multiple_of(64) {
            text.push(' ');
        }
        text.push('\n');
        let mut out = MAGIC.to_vec();
        out.extend([version, 0]);
        if version == 1 {
            out.extend((text.len() as u16).to_le_bytes());
        } else {
            out.extend((text.len() as u32).to_le_bytes());
        }
        out.extend(text.as_bytes());
        out.extend(body);
        out
    }

    fn f32s(values: &[f32]) -> Vec<u8> {
        values.iter().flat_map(|v| v.to_le_bytes()).collect()
    }

    #[test]
    fn reads_f4_v1() {
        let values = [0.5f32, -1.0, 2.25, 3.0, 0.0, -0.125];
        let bytes = npy(
            1,
            "{'descr': '<f4', 'fortran_order': False, 'shape': (1, 2, 3), }",
            &f32s(&values),
        );
        let array = parse(&bytes).unwrap();
        assert_eq!(array.shape, vec![1, 2, 3]);
        assert_eq!(array.data, values);
    }

    #[test]
    fn reads_f8_v2() {
        let values = [1.5f64, -2.0, 1e-3];
        let body: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        let bytes = npy(2, "{'descr': '<f8', 'fortran_order': False, 'shape': (3,), }", &body);
        let array = parse(&bytes).unwrap();
        assert_eq!(array.shape, vec![3]);
        assert_eq!(array.data, vec![1.5, -2.0, 1e-3f64 as f32]);
    }

    #[test]
    fn reads_f2() {
        let values = [1.0f32, -0.5, 65504.0, 0.0];
        let body: Vec<u8> = values
            .iter()
            .flat_map(|&v| half::f16::from_f32(v).to_le_bytes())
            .collect();
        let bytes = npy(1, "{'descr': '<f2', 'fortran_order': False, 'shape': (2, 2), }", &body);
        let array = parse(&bytes).unwrap();
        assert_eq!(array.shape, vec![2, 2]);
        assert_eq!(array.data, values);
    }

    #[test]
    fn reads_a_scalar_and_an_empty_array() {
        let scalar = parse(&npy(
            1,
            "{'descr': '<f4', 'fortran_order': False, 'shape': (), }",
            &f32s(&[7.0]),
        ))
        .unwrap();
        assert_eq!(
            scalar,
            Array {
                shape: vec![],
                data: vec![7.0]
            }
        );
        let empty = parse(&npy(
            1,
            "{'descr': '<f4', 'fortran_order': False, 'shape': (0, 4), }",
            &[],
        ))
        .unwrap();
        assert_eq!(
            empty,
            Array {
                shape: vec![0, 4],
                data: vec![]
            }
        );
    }

    #[test]
    fn key_order_and_quotes_do_not_matter() {
        let bytes = npy(
            3,
            "{\"shape\": (2,), \"fortran_order\": False, \"descr\": \"<f4\"}",
            &f32s(&[1.0, 2.0]),
        );
        assert_eq!(parse(&bytes).unwrap().data, vec![1.0, 2.0]);
    }

    #[test]
    fn to_tensor_is_little_endian_f32() {
        let tensor = Array {
            shape: vec![1, 2],
            data: vec![1.0, -2.0],
        }
        .to_tensor();
        assert_eq!(tensor.shape, vec![1, 2]);
        assert_eq!(tensor.dtype, pb::Dtype::F32 as i32);
        assert_eq!(tensor.data, f32s(&[1.0, -2.0]));
    }

    #[test]
    fn rejects_what_is_not_npy() {
        assert!(matches!(parse(b"PK\x03\x04 a zip file"), Err(NpyError::NotNpy)));
        assert!(matches!(parse(b""), Err(NpyError::NotNpy)));
        assert!(matches!(
            parse(b"\x93NUMPY\x09\x00"),
            Err(NpyError::UnsupportedVersion(9))
        ));
        assert!(matches!(parse(b"\x93NUMPY\x01\x00\xff"), Err(NpyError::BadHeader(_))));
        let mut cut = npy(1, "{'descr': '<f4', 'fortran_order': False, 'shape': (2,), }", &[]);
        cut.truncate(20);
        assert!(matches!(parse(&cut), Err(NpyError::BadHeader(_))));
    }

    #[test]
    fn rejects_unsupported_dtypes() {
        for descr in ["<i8", ">f4", "<c8", "|u1"] {
            let bytes = npy(
                1,
                &format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': (1,), }}"),
                &[0; 8],
            );
            match parse(&bytes) {
                Err(NpyError::UnsupportedDtype(d)) => assert_eq!(d, descr),
                other => panic!("{descr}: {other:?}"),
            }
        }
        let message = NpyError::UnsupportedDtype("<i8".into()).to_string();
        assert!(message.contains("astype('<f4')"), "{message}");
    }

    #[test]
    fn rejects_fortran_order() {
        let bytes = npy(
            1,
            "{'descr': '<f4', 'fortran_order': True, 'shape': (2, 2), }",
            &f32s(&[0.0; 4]),
        );
        assert!(matches!(parse(&bytes), Err(NpyError::FortranOrder)));
    }

    #[test]
    fn rejects_truncated_and_trailing_data() {
        let bytes = npy(
            1,
            "{'descr': '<f4', 'fortran_order': False, 'shape': (1, 4), }",
            &f32s(&[0.0; 3]),
        );
        match parse(&bytes) {
            Err(NpyError::Truncated {
                expected: 16,
                found: 12,
                ..
            }) => {}
            other => panic!("{other:?}"),
        }
        let bytes = npy(
            1,
            "{'descr': '<f4', 'fortran_order': False, 'shape': (1, 2), }",
            &f32s(&[0.0; 3]),
        );
        assert!(matches!(parse(&bytes), Err(NpyError::TrailingBytes { extra: 4, .. })));
    }

    #[test]
    fn rejects_malformed_headers() {
        for header in [
            "not a dict",
            "{'descr': '<f4', 'shape': (2,), }",
            "{'descr': '<f4', 'fortran_order': Maybe, 'shape': (2,), }",
            "{'descr': '<f4', 'fortran_order': False, 'shape': [2], }",
            "{'descr': '<f4', 'fortran_order': False, 'shape': (-2,), }",
            "{'descr': 4, 'fortran_order': False, 'shape': (2,), }",
            "{'descr': '<f4', 'fortran_order': False, 'shape': (99999999999, 99999999999, 99999999999), }",
        ] {
            let bytes = npy(1, header, &[]);
            assert!(matches!(parse(&bytes), Err(NpyError::BadHeader(_))), "{header}");
        }
    }

    #[test]
    fn read_names_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("noise.npy");
        std::fs::write(&path, b"hello").unwrap();
        let message = format!("{}", read(&path).unwrap_err());
        assert!(
            message.contains("noise.npy") && message.contains("not an .npy file"),
            "{message}"
        );
        let missing = read(&dir.path().join("absent.npy")).unwrap_err();
        assert!(matches!(missing, NpyError::Read(_)));
        let device = read(Path::new("/dev/zero")).unwrap_err().to_string();
        assert!(device.contains("a device"), "{device}");
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        proptest! {
            /// Any bytes: an array or an error, never a panic.
            #[test]
            fn any_bytes_parse_or_fail_cleanly(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
                let _ = parse(&bytes);
            }

            /// A well-formed header with any shape and dtype, and a body of any length: the array
            /// is read exactly when the body holds every element, and its values come back.
            #[test]
            fn headers_and_bodies_agree_or_fail_cleanly(
                version in 1u8..=3,
                shape in proptest::collection::vec(0usize..6, 0..4),
                dtype in prop_oneof![Just("<f2"), Just("<f4"), Just("<f8"), Just(">f4"), Just("<i4")],
                extra in -3i64..3,
            ) {
                let dims = shape.iter().map(|d| d.to_string()).collect::<Vec<_>>().join(", ");
                let comma = if shape.len() == 1 { "," } else { "" };
                let header = format!("{{'descr': '{dtype}', 'fortran_order': False, 'shape': ({dims}{comma}), }}");
                let width = match dtype { "<f2" => 2, "<f8" => 8, _ => 4 };
                let count: usize = shape.iter().product();
                let len = (count as i64 * width + extra).max(0) as usize;
                let body: Vec<u8> = (0..len).map(|i| (i % 7) as u8 * 0x10).collect();
                let result = parse(&npy(version, &header, &body));
                let readable = matches!(dtype, "<f2" | "<f4" | "<f8");
                if readable && len == count * width as usize {
                    let array = result.unwrap();
                    prop_assert_eq!(array.shape, shape);
                    prop_assert_eq!(array.data.len(), count);
                } else {
                    prop_assert!(result.is_err());
                }
            }

            /// Shapes whose element count overflows are an error, not a wrap-around.
            #[test]
            fn huge_shapes_are_refused(dims in proptest::collection::vec(1usize << 20.., 3..6)) {
                let dims_text = dims.iter().map(|d| d.to_string()).collect::<Vec<_>>().join(", ");
                let header = format!("{{'descr': '<f4', 'fortran_order': False, 'shape': ({dims_text}), }}");
                prop_assert!(parse(&npy(1, &header, &[0; 16])).is_err());
            }
        }
    }
}
