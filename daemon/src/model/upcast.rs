//! float16 → float32 for a whole ONNX graph, in memory: what diffusers' `force_upcast` does to
//! an fp16 VAE (`vae.to(torch.float32)` before decoding), done to the graph's bytes.
//!
//! SDXL's VAE overflows float16: some activations pass 65 504 before a group norm scales them
//! back, and a float16 graph turns them into infinities (or, on the CPU, where ONNX Runtime
//! computes behind inserted casts, into clipped values that wash the picture out). diffusers
//! decodes such VAEs in float32 when their config says `force_upcast`; easel does the same by
//! rewriting the graph before ONNX Runtime sees it:
//!
//! - every float16 tensor (initializers, `Constant` values, any tensor attribute) becomes
//!   float32, its values widened exactly;
//! - every float16 type (graph inputs and outputs, `value_info`, nested types) becomes float32;
//! - every `Cast` to float16 casts to float32 instead.
//!
//! The rewrite walks the protobuf by field number (onnx.proto) and copies every field it does
//! not change byte for byte, so nothing it does not know about is lost. Tensors kept in
//! external data files are not rewritten: [`UpcastError::ExternalData`] names the fix.

use half::f16;

/// ONNX's `TensorProto.DataType` values this module reads.
const FLOAT: u64 = 1;
const FLOAT16: u64 = 10;
/// `TensorProto.DataLocation.EXTERNAL`.
const EXTERNAL: u64 = 1;
/// Deeper nesting than this is taken for a damaged file (graphs nest a few levels at most).
const MAX_DEPTH: usize = 64;

#[derive(Debug, thiserror::Error)]
pub enum UpcastError {
    #[error("the graph is not a valid ONNX protobuf ({0})")]
    Malformed(&'static str),
    #[error(
        "the float16 tensor `{0}` is kept in an external data file, which easel cannot widen to float32; \
         export this part in float32, or save it with its weights inside the .onnx file"
    )]
    ExternalData(String),
}

/// The protobuf messages on the way to a float16 tensor or type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Model,
    Function,
    Graph,
    Node,
    Attribute,
    Tensor,
    SparseTensor,
    ValueInfo,
    Type,
    /// `TypeProto.Tensor` and `TypeProto.SparseTensor`: `elem_type` is field 1.
    TensorType,
    /// `TypeProto.Sequence` and `TypeProto.Optional`: the element's type is field 1.
    ElementType,
    /// `TypeProto.Map`: the value's type is field 2.
    MapType,
}

impl Kind {
    /// The message a length-delimited field of `self` holds, when it can hold float16 (field
    /// numbers from onnx.proto).
    fn child(self, field: u64) -> Option<Kind> {
        use Kind::*;
        Some(match (self, field) {
            (Model, 7) => Graph,
            (Model, 25) => Function,
            (Function, 7) | (Graph, 1) => Node,
            (Function, 11) | (Function, 12) | (Graph, 11) | (Graph, 12) | (Graph, 13) => ValueInfo,
            (Graph, 5) | (Attribute, 5) | (Attribute, 10) | (SparseTensor, 1) => Tensor,
            (Graph, 15) | (Attribute, 22) | (Attribute, 23) => SparseTensor,
            (Node, 5) | (Function, 10) => Attribute,
            (Attribute, 6) | (Attribute, 11) => Graph,
            (Attribute, 14) | (Attribute, 15) | (ValueInfo, 2) | (ElementType, 1) | (MapType, 2) => Type,
            (Type, 1) | (Type, 8) => TensorType,
            (Type, 4) | (Type, 9) => ElementType,
            (Type, 5) => MapType,
            _ => return None,
        })
    }
}

/// The model at `bytes` with every float16 tensor, type and cast made float32.
pub fn to_float32(bytes: &[u8]) -> Result<Vec<u8>, UpcastError> {
    rewrite(Kind::Model, bytes, 0)
}

/// Whether the model at `bytes` has anything float16 in it (a quick look at the graph's
/// inputs, outputs and initializers is not enough: a graph can take float32 and compute in
/// float16 behind casts).
pub fn has_float16(bytes: &[u8]) -> Result<bool, UpcastError> {
    Ok(to_float32(bytes)? != bytes)
}

/// One protobuf field as read: its number, wire type, and its payload's byte range.
struct Field<'a> {
    number: u64,
    wire_type: u64,
    /// The whole field, tag included, as it was written.
    raw: &'a [u8],
    /// Varint fields: the value. Length-delimited: the payload.
    value: u64,
    payload: &'a [u8],
}

fn fields(bytes: &[u8]) -> Result<Vec<Field<'_>>, UpcastError> {
    let mut out = Vec::new();
    let mut at = 0;
    while at < bytes.len() {
        let start = at;
        let tag = varint(bytes, &mut at)?;
        let (number, wire_type) = (tag >> 3, tag & 7);
        let (mut value, mut payload): (u64, &[u8]) = (0, &[]);
        match wire_type {
            0 => value = varint(bytes, &mut at)?,
            1 => at = advance(bytes, at, 8)?,
            5 => at = advance(bytes, at, 4)?,
            2 => {
                let length =
                    usize::try_from(varint(bytes, &mut at)?).map_err(|_| UpcastError::Malformed("a length"))?;
                let end = advance(bytes, at, length)?;
                payload = &bytes[at..end];
                at = end;
            }
            _ => return Err(UpcastError::Malformed("an unknown wire type")),
        }
        out.push(Field {
            number,
            wire_type,
            raw: &bytes[start..at],
            value,
            payload,
        });
    }
    Ok(out)
}

fn advance(bytes: &[u8], at: usize, by: usize) -> Result<usize, UpcastError> {
    at.checked_add(by)
        .filter(|&end| end <= bytes.len())
        .ok_or(UpcastError::Malformed("a field running past the end of its message"))
}

fn varint(bytes: &[u8], at: &mut usize) -> Result<u64, UpcastError> {
    let mut value = 0u64;
    for shift in (0..64).step_by(7) {
        let byte = *bytes.get(*at).ok_or(UpcastError::Malformed("a truncated varint"))?;
        *at += 1;
        value |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Ok(value);
        }
    }
    Err(UpcastError::Malformed("a varint longer than 10 bytes"))
}

fn put_varint(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        out.push((value as u8) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

fn put_varint_field(out: &mut Vec<u8>, number: u64, value: u64) {
    put_varint(out, number << 3);
    put_varint(out, value);
}

fn put_bytes_field(out: &mut Vec<u8>, number: u64, payload: &[u8]) {
    put_varint(out, (number << 3) | 2);
    put_varint(out, payload.len() as u64);
    out.extend_from_slice(payload);
}

fn rewrite(kind: Kind, bytes: &[u8], depth: usize) -> Result<Vec<u8>, UpcastError> {
    if depth > MAX_DEPTH {
        return Err(UpcastError::Malformed("messages nested too deep"));
    }
    let fields = fields(bytes)?;
    if kind == Kind::Tensor {
        return tensor(&fields, bytes);
    }
    let cast_to = kind == Kind::Attribute && is_cast_to_float16(&fields);
    let mut out = Vec::with_capacity(bytes.len());
    for field in &fields {
        match (kind, field.number, field.wire_type) {
            // `TypeProto.Tensor.elem_type`.
            (Kind::TensorType, 1, 0) if field.value == FLOAT16 => put_varint_field(&mut out, 1, FLOAT),
            // `AttributeProto.i` of a Cast's `to`.
            (Kind::Attribute, 3, 0) if cast_to => put_varint_field(&mut out, 3, FLOAT),
            (_, number, 2) => match kind.child(number) {
                Some(child) => put_bytes_field(&mut out, number, &rewrite(child, field.payload, depth + 1)?),
                None => out.extend_from_slice(field.raw),
            },
            _ => out.extend_from_slice(field.raw),
        }
    }
    Ok(out)
}

/// An attribute named `to` of type INT (2) holding FLOAT16: a Cast to float16. Other
/// attributes named `to` do not exist in the standard operators.
fn is_cast_to_float16(fields: &[Field<'_>]) -> bool {
    let name = fields
        .iter()
        .find(|f| f.number == 1 && f.wire_type == 2)
        .map(|f| f.payload);
    let value = fields
        .iter()
        .find(|f| f.number == 3 && f.wire_type == 0)
        .map(|f| f.value);
    name == Some(b"to".as_slice()) && value == Some(FLOAT16)
}

/// A `TensorProto`: float16 data widened to float32 (`raw_data` stays raw; values in
/// `int32_data`, float16 bits one per entry, move to `float_data`).
fn tensor(fields: &[Field<'_>], bytes: &[u8]) -> Result<Vec<u8>, UpcastError> {
    let data_type = fields
        .iter()
        .find(|f| f.number == 2 && f.wire_type == 0)
        .map(|f| f.value);
    if data_type != Some(FLOAT16) {
        return Ok(bytes.to_vec());
    }
    let external = fields
        .iter()
        .any(|f| f.number == 14 && f.wire_type == 0 && f.value == EXTERNAL);
    if external {
        let name = fields
            .iter()
            .find(|f| f.number == 8 && f.wire_type == 2)
            .map(|f| String::from_utf8_lossy(f.payload).into_owned())
            .unwrap_or_default();
        return Err(UpcastError::ExternalData(name));
    }
    let mut out = Vec::with_capacity(bytes.len() * 2);
    let mut widened = Vec::new();
    for field in fields {
        match (field.number, field.wire_type) {
            (2, 0) => put_varint_field(&mut out, 2, FLOAT),
            // `raw_data`: little-endian float16 values.
            (9, 2) => {
                if field.payload.len() % 2 != 0 {
                    return Err(UpcastError::Malformed("float16 raw data of an odd length"));
                }
                let raw: Vec<u8> = field
                    .payload
                    .chunks_exact(2)
                    .flat_map(|pair| f16::from_le_bytes([pair[0], pair[1]]).to_f32().to_le_bytes())
                    .collect();
                put_bytes_field(&mut out, 9, &raw);
            }
            // `int32_data`, packed: one float16's bits per varint.
            (5, 2) => {
                let mut at = 0;
                while at < field.payload.len() {
                    let bits = varint(field.payload, &mut at)?;
                    widened.extend(f16::from_bits(bits as u16).to_f32().to_le_bytes());
                }
            }
            // `int32_data`, unpacked.
            (5, 0) => widened.extend(f16::from_bits(field.value as u16).to_f32().to_le_bytes()),
            _ => out.extend_from_slice(field.raw),
        }
    }
    if !widened.is_empty() {
        // `float_data`, packed.
        put_bytes_field(&mut out, 4, &widened);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A TensorProto with `dims`, `data_type` and `raw_data`.
    fn tensor_bytes(name: &str, data_type: u64, raw: &[u8]) -> Vec<u8> {
        let mut t = Vec::new();
        put_varint_field(&mut t, 1, (raw.len() / if data_type == FLOAT16 { 2 } else { 4 }) as u64);
        put_varint_field(&mut t, 2, data_type);
        put_bytes_field(&mut t, 8, name.as_bytes());
        put_bytes_field(&mut t, 9, raw);
        t
    }

    fn value_info(name: &str, elem_type: u64) -> Vec<u8> {
        let mut tensor_type = Vec::new();
        put_varint_field(&mut tensor_type, 1, elem_type);
        let mut type_proto = Vec::new();
        put_bytes_field(&mut type_proto, 1, &tensor_type);
        let mut info = Vec::new();
        put_bytes_field(&mut info, 1, name.as_bytes());
        put_bytes_field(&mut info, 2, &type_proto);
        info
    }

    fn cast_node(to: u64) -> Vec<u8> {
        let mut attribute = Vec::new();
        put_bytes_field(&mut attribute, 1, b"to");
        put_varint_field(&mut attribute, 3, to);
        put_varint_field(&mut attribute, 20, 2);
        let mut node = Vec::new();
        put_bytes_field(&mut node, 1, b"x");
        put_bytes_field(&mut node, 2, b"y");
        put_bytes_field(&mut node, 4, b"Cast");
        put_bytes_field(&mut node, 5, &attribute);
        node
    }

    fn model(graph: &[u8]) -> Vec<u8> {
        let mut model = Vec::new();
        put_varint_field(&mut model, 1, 8);
        put_bytes_field(&mut model, 7, graph);
        model
    }

    #[test]
    fn float16_tensors_types_and_casts_become_float32_and_the_rest_is_kept() {
        let halves: Vec<u8> = [1.5f32, -2.0, 65504.0]
            .iter()
            .flat_map(|&v| f16::from_f32(v).to_le_bytes())
            .collect();
        let floats: Vec<u8> = [0.25f32].iter().flat_map(|v| v.to_le_bytes()).collect();
        let mut graph = Vec::new();
        put_bytes_field(&mut graph, 1, &cast_node(FLOAT16));
        put_bytes_field(&mut graph, 1, &cast_node(7));
        put_bytes_field(&mut graph, 2, b"graph name");
        put_bytes_field(&mut graph, 5, &tensor_bytes("w", FLOAT16, &halves));
        put_bytes_field(&mut graph, 5, &tensor_bytes("b", FLOAT, &floats));
        put_bytes_field(&mut graph, 11, &value_info("x", FLOAT16));
        put_bytes_field(&mut graph, 12, &value_info("y", 7));
        let upcast = to_float32(&model(&graph)).unwrap();

        let mut expected_graph = Vec::new();
        put_bytes_field(&mut expected_graph, 1, &cast_node(FLOAT));
        put_bytes_field(&mut expected_graph, 1, &cast_node(7));
        put_bytes_field(&mut expected_graph, 2, b"graph name");
        let widened: Vec<u8> = [1.5f32, -2.0, 65504.0].iter().flat_map(|v| v.to_le_bytes()).collect();
        let mut w = Vec::new();
        put_varint_field(&mut w, 1, 3);
        put_varint_field(&mut w, 2, FLOAT);
        put_bytes_field(&mut w, 8, b"w");
        put_bytes_field(&mut w, 9, &widened);
        put_bytes_field(&mut expected_graph, 5, &w);
        put_bytes_field(&mut expected_graph, 5, &tensor_bytes("b", FLOAT, &floats));
        put_bytes_field(&mut expected_graph, 11, &value_info("x", FLOAT));
        put_bytes_field(&mut expected_graph, 12, &value_info("y", 7));
        assert_eq!(upcast, model(&expected_graph));
        assert!(has_float16(&model(&graph)).unwrap());
        assert!(!has_float16(&upcast).unwrap(), "a float32 graph is left as it is");
    }

    #[test]
    fn packed_int32_data_moves_to_float_data() {
        let mut t = Vec::new();
        put_varint_field(&mut t, 2, FLOAT16);
        let mut packed = Vec::new();
        put_varint(&mut packed, u64::from(f16::from_f32(3.0).to_bits()));
        put_varint(&mut packed, u64::from(f16::from_f32(-0.5).to_bits()));
        put_bytes_field(&mut t, 5, &packed);
        let mut graph = Vec::new();
        put_bytes_field(&mut graph, 5, &t);
        let upcast = to_float32(&model(&graph)).unwrap();
        let mut expected = Vec::new();
        put_varint_field(&mut expected, 2, FLOAT);
        let floats: Vec<u8> = [3.0f32, -0.5].iter().flat_map(|v| v.to_le_bytes()).collect();
        put_bytes_field(&mut expected, 4, &floats);
        let mut expected_graph = Vec::new();
        put_bytes_field(&mut expected_graph, 5, &expected);
        assert_eq!(upcast, model(&expected_graph));
    }

    #[test]
    fn external_float16_data_and_damaged_files_are_errors() {
        let mut t = Vec::new();
        put_varint_field(&mut t, 2, FLOAT16);
        put_bytes_field(&mut t, 8, b"weight");
        put_varint_field(&mut t, 14, EXTERNAL);
        let mut graph = Vec::new();
        put_bytes_field(&mut graph, 5, &t);
        let error = to_float32(&model(&graph)).unwrap_err().to_string();
        assert!(error.contains("`weight`") && error.contains("float32"), "{error}");
        let whole = model(&graph);
        assert!(matches!(
            to_float32(&whole[..whole.len() - 3]),
            Err(UpcastError::Malformed(_))
        ));
    }
}
