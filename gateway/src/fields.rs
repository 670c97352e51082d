//! Reading a JSON request body field by field, as leniently as the servers these APIs come from
//! (pydantic coerces `"20"` and `20.0` to `20`), and with an error that names the field.
//!
//! Bodies are read as `serde_json::Map` rather than typed structs: clients send dozens of
//! fields easel has no use for (A1111's payloads carry every UI setting), any of which could
//! have a type a struct would reject. Only the fields a handler asks for are checked.

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::http::StatusCode;
use serde_json::{Map, Value};

use crate::error::ApiError;

/// The body as a JSON object; an oversized body, bad JSON or a non-object is an error.
pub fn object(body: Result<Bytes, BytesRejection>, max_body: usize) -> Result<Map<String, Value>, ApiError> {
    let bytes = body.map_err(|rejection| {
        if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::too_large(max_body)
        } else {
            ApiError::new(rejection.status(), "invalid_body", rejection.body_text())
        }
    })?;
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(Map::new());
    }
    match serde_json::from_slice::<Value>(&bytes) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(_) => Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_json",
            "the request body must be a JSON object",
        )),
        Err(error) => Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_json",
            format!("the request body is not valid JSON ({error})"),
        )),
    }
}

/// Typed, lenient access to one request's fields. `null` reads as absent.
#[derive(Debug, Clone, Copy)]
pub struct Fields<'a>(pub &'a Map<String, Value>);

impl<'a> Fields<'a> {
    fn get(&self, key: &str) -> Option<&'a Value> {
        self.0.get(key).filter(|v| !v.is_null())
    }

    pub fn string(&self, key: &str) -> Result<Option<&'a str>, ApiError> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(other) => Err(ApiError::invalid(key, format!("{key} must be a string, not {other}"))),
        }
    }

    /// A number, or a string holding one.
    pub fn number(&self, key: &str) -> Result<Option<f64>, ApiError> {
        let value = match self.get(key) {
            None => return Ok(None),
            Some(Value::Number(n)) => n.as_f64(),
            Some(Value::String(s)) => s.trim().parse::<f64>().ok(),
            Some(_) => None,
        };
        match value {
            Some(v) if v.is_finite() => Ok(Some(v)),
            _ => Err(ApiError::invalid(
                key,
                format!(
                    "{key} must be a number, not {}",
                    self.get(key).map_or(String::new(), Value::to_string)
                ),
            )),
        }
    }

    /// A whole number (`20`, `20.0`, `"20"`), in `i64`.
    pub fn integer(&self, key: &str) -> Result<Option<i64>, ApiError> {
        let Some(value) = self.get(key) else {
            return Ok(None);
        };
        if let Some(i) = value.as_i64() {
            return Ok(Some(i));
        }
        if let Some(u) = value.as_u64() {
            return i64::try_from(u)
                .map(Some)
                .map_err(|_| ApiError::invalid(key, format!("{key} is too large ({u})")));
        }
        match self.number(key)? {
            Some(v) if v.fract() == 0.0 && v.abs() < 9.0e15 => Ok(Some(v as i64)),
            _ => Err(ApiError::invalid(
                key,
                format!("{key} must be a whole number, not {value}"),
            )),
        }
    }

    /// A whole number in `lo..=hi`.
    pub fn integer_in(&self, key: &str, lo: i64, hi: i64) -> Result<Option<i64>, ApiError> {
        match self.integer(key)? {
            Some(v) if !(lo..=hi).contains(&v) => Err(ApiError::invalid(
                key,
                format!("{key} must be between {lo} and {hi} (got {v})"),
            )),
            other => Ok(other),
        }
    }

    /// `u32` in `lo..=hi`.
    pub fn u32_in(&self, key: &str, lo: u32, hi: u32) -> Result<Option<u32>, ApiError> {
        Ok(self.integer_in(key, i64::from(lo), i64::from(hi))?.map(|v| v as u32))
    }

    /// `true`/`false`, `0`/`1`, or their strings.
    pub fn boolean(&self, key: &str) -> Result<Option<bool>, ApiError> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(*b)),
            Some(Value::Number(n)) if n.as_f64() == Some(0.0) => Ok(Some(false)),
            Some(Value::Number(n)) if n.as_f64() == Some(1.0) => Ok(Some(true)),
            Some(Value::String(s)) if matches!(s.as_str(), "true" | "True" | "1") => Ok(Some(true)),
            Some(Value::String(s)) if matches!(s.as_str(), "false" | "False" | "0" | "") => Ok(Some(false)),
            Some(other) => Err(ApiError::invalid(
                key,
                format!("{key} must be true or false, not {other}"),
            )),
        }
    }

    /// A list of strings (a lone string reads as a list of one).
    pub fn strings(&self, key: &str) -> Result<Vec<&'a str>, ApiError> {
        match self.get(key) {
            None => Ok(Vec::new()),
            Some(Value::String(s)) => Ok(vec![s]),
            Some(Value::Array(items)) => items
                .iter()
                .map(|item| {
                    item.as_str()
                        .ok_or_else(|| ApiError::invalid(key, format!("{key} must be a list of strings")))
                })
                .collect(),
            Some(other) => Err(ApiError::invalid(
                key,
                format!("{key} must be a list of strings, not {other}"),
            )),
        }
    }

    /// A nested object (`override_settings`); absent or `null` reads as empty.
    pub fn object(&self, key: &str) -> Result<Fields<'a>, ApiError> {
        static EMPTY: std::sync::OnceLock<Map<String, Value>> = std::sync::OnceLock::new();
        match self.get(key) {
            None => Ok(Fields(EMPTY.get_or_init(Map::new))),
            Some(Value::Object(map)) => Ok(Fields(map)),
            Some(other) => Err(ApiError::invalid(key, format!("{key} must be an object, not {other}"))),
        }
    }

    /// Whether a field is present with a value other than `null`, `false`, `0`, `""`, `[]`, `{}`
    /// (for refusing features easel does not have only when a client actually asks for them).
    pub fn is_set(&self, key: &str) -> bool {
        match self.get(key) {
            None => false,
            Some(Value::Bool(b)) => *b,
            Some(Value::Number(n)) => n.as_f64() != Some(0.0),
            Some(Value::String(s)) => !s.is_empty(),
            Some(Value::Array(a)) => !a.is_empty(),
            Some(Value::Object(o)) => !o.is_empty(),
            Some(Value::Null) => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn numbers_are_read_as_pydantic_reads_them() {
        let body = json!({"a": 20, "b": 20.0, "c": "20", "d": 20.5, "e": "x", "f": null, "g": -1, "t": 1});
        let map = body.as_object().unwrap();
        let fields = Fields(map);
        assert_eq!(fields.integer("a").unwrap(), Some(20));
        assert_eq!(fields.integer("b").unwrap(), Some(20));
        assert_eq!(fields.integer("c").unwrap(), Some(20));
        assert!(fields.integer("d").unwrap_err().message.contains("whole number"));
        assert!(fields.number("e").unwrap_err().message.contains("e must be a number"));
        assert_eq!(fields.integer("f").unwrap(), None);
        assert_eq!(fields.integer("missing").unwrap(), None);
        assert!(
            fields
                .u32_in("g", 1, 150)
                .unwrap_err()
                .message
                .contains("between 1 and 150")
        );
        assert_eq!(fields.boolean("t").unwrap(), Some(true));
        assert!(fields.string("a").is_err());
    }

    #[test]
    fn bodies_must_be_json_objects() {
        assert!(object(Ok(Bytes::from_static(b"[1]")), 10).is_err());
        assert!(
            object(Ok(Bytes::from_static(b"{")), 10)
                .unwrap_err()
                .message
                .contains("not valid JSON")
        );
        assert!(object(Ok(Bytes::from_static(b"")), 10).unwrap().is_empty());
    }

    #[test]
    fn is_set_tells_a_request_from_a_default() {
        let body = json!({"a": false, "b": [], "c": {"x": 1}, "d": 0, "e": "on"});
        let fields = Fields(body.as_object().unwrap());
        assert!(!fields.is_set("a") && !fields.is_set("b") && !fields.is_set("d") && !fields.is_set("z"));
        assert!(fields.is_set("c") && fields.is_set("e"));
    }
}
