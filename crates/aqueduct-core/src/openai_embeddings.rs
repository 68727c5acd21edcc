//! `POST /v1/embeddings` of the OpenAI-compatible API, defined once: what
//! a request must hold (checked by the HTTP front before a worker sees
//! it), the answer a worker sends ([`Vectors`]: a small head, then the
//! vectors as little-endian `f32`s, made by `aqueduct.openai` through the
//! binding) and the list object the front writes from it, with each vector
//! as a JSON list of numbers or, as the official client asks by default,
//! as the base64 of its `f32` bytes.

use serde_json::Value;

use crate::http_wire::push_json_string;
use crate::openai::ApiError;

/// What the front needs of an embeddings request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// `encoding_format: "base64"`: vectors as base64 of their bytes.
    pub base64: bool,
}

/// Checks a request to `/v1/embeddings` for `model`.
pub fn parse_request(body: &[u8], model: &str) -> Result<Request, ApiError> {
    let fields = crate::openai::fields_for(body, model)?;
    check_input(fields.get("input"))?;
    let base64 = match fields.get("encoding_format") {
        None | Some(Value::Null) => false,
        Some(Value::String(format)) if format == "float" => false,
        Some(Value::String(format)) if format == "base64" => true,
        Some(other) => {
            let message = format!("encoding_format must be \"float\" or \"base64\", not {other}");
            return Err(ApiError::invalid(message, Some("encoding_format")));
        }
    };
    if let Some(value) = fields.get("dimensions").filter(|v| !v.is_null()) {
        if !value.as_u64().is_some_and(|n| n > 0) {
            let message = format!("dimensions must be a positive integer, not {value}");
            return Err(ApiError::invalid(message, Some("dimensions")));
        }
    }
    Ok(Request { base64 })
}

/// `input`: a string, a list of strings, a list of token ids, or a list of
/// lists of token ids; never empty.
fn check_input(input: Option<&Value>) -> Result<(), ApiError> {
    let tokens = |v: &Value| {
        v.as_array()
            .is_some_and(|ids| ids.iter().all(Value::is_u64))
    };
    let fits = match input {
        Some(Value::String(_)) => true,
        Some(Value::Array(items)) if !items.is_empty() => {
            items.iter().all(Value::is_string)
                || items.iter().all(Value::is_u64)
                || items
                    .iter()
                    .all(|item| tokens(item) && item.as_array().is_some_and(|a| !a.is_empty()))
        }
        _ => false,
    };
    if fits {
        Ok(())
    } else {
        let message = "input must be a string, a list of strings, or token ids (a list, or a list of lists), not empty";
        Err(ApiError::invalid(message, Some("input")))
    }
}

/// Bytes of the head of [`Vectors`]: rows (u32), dimensions (u32), prompt
/// tokens (u64), little-endian.
pub const HEAD: usize = 16;

/// A worker's answer: `rows` vectors of `dimensions` `f32`s, and the
/// tokens the inputs counted.
#[derive(Debug, Clone, PartialEq)]
pub struct Vectors<'a> {
    pub rows: u32,
    pub dimensions: u32,
    pub prompt_tokens: u64,
    /// `rows * dimensions` little-endian `f32`s.
    pub values: &'a [u8],
}

impl<'a> Vectors<'a> {
    /// The head to put before the values' bytes.
    pub fn head(rows: u32, dimensions: u32, prompt_tokens: u64) -> [u8; HEAD] {
        let mut head = [0; HEAD];
        head[..4].copy_from_slice(&rows.to_le_bytes());
        head[4..8].copy_from_slice(&dimensions.to_le_bytes());
        head[8..].copy_from_slice(&prompt_tokens.to_le_bytes());
        head
    }

    /// What a head and its values make (None: not that, or values of
    /// another length).
    pub fn decode(bytes: &'a [u8]) -> Option<Vectors<'a>> {
        let head = bytes.get(..HEAD)?;
        let rows = u32::from_le_bytes(head[..4].try_into().ok()?);
        let dimensions = u32::from_le_bytes(head[4..8].try_into().ok()?);
        let prompt_tokens = u64::from_le_bytes(head[8..].try_into().ok()?);
        let values = &bytes[HEAD..];
        let expected = (rows as usize)
            .checked_mul(dimensions as usize)?
            .checked_mul(4)?;
        (values.len() == expected).then_some(Vectors {
            rows,
            dimensions,
            prompt_tokens,
            values,
        })
    }

    /// The API's list object for `model`.
    pub fn object(&self, model: &str, base64: bool) -> Vec<u8> {
        let mut out = String::with_capacity(self.values.len() * if base64 { 2 } else { 4 } + 128);
        out.push_str("{\"object\": \"list\", \"data\": [");
        let row_bytes = self.dimensions as usize * 4;
        for row in 0..self.rows as usize {
            if row > 0 {
                out.push_str(", ");
            }
            out.push_str(&format!(
                "{{\"object\": \"embedding\", \"index\": {row}, \"embedding\": "
            ));
            let bytes = &self.values[row * row_bytes..(row + 1) * row_bytes];
            if base64 {
                out.push('"');
                push_base64(&mut out, bytes);
                out.push('"');
            } else {
                push_floats(&mut out, bytes);
            }
            out.push('}');
        }
        out.push_str("], \"model\": ");
        push_json_string(&mut out, model);
        out.push_str(&format!(
            ", \"usage\": {{\"prompt_tokens\": {0}, \"total_tokens\": {0}}}}}",
            self.prompt_tokens
        ));
        out.into_bytes()
    }
}

/// `[x, y, ...]` of little-endian `f32`s (the shortest text each reads
/// back from; JSON has no NaN or infinity: `null`).
fn push_floats(out: &mut String, bytes: &[u8]) {
    out.push('[');
    for (i, four) in bytes.chunks_exact(4).enumerate() {
        if i > 0 {
            out.push_str(", ");
        }
        let x = f32::from_le_bytes([four[0], four[1], four[2], four[3]]);
        if x.is_finite() {
            out.push_str(&format!("{x:?}"));
        } else {
            out.push_str("null");
        }
    }
    out.push(']');
}

const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/// Standard base64 with padding (RFC 4648 §4).
fn push_base64(out: &mut String, bytes: &[u8]) {
    for three in bytes.chunks(3) {
        let n = three.len();
        let word = u32::from(three[0]) << 16
            | u32::from(*three.get(1).unwrap_or(&0)) << 8
            | u32::from(*three.get(2).unwrap_or(&0));
        for k in 0..4 {
            if k <= n {
                out.push(char::from(ALPHABET[(word >> (18 - 6 * k) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vectors(rows: &[&[f32]]) -> Vec<u8> {
        let dimensions = rows.first().map_or(0, |r| r.len()) as u32;
        let mut out = Vectors::head(rows.len() as u32, dimensions, 7).to_vec();
        for x in rows.iter().flat_map(|r| r.iter()) {
            out.extend_from_slice(&x.to_le_bytes());
        }
        out
    }

    #[test]
    fn base64_is_rfc_4648() {
        for (bytes, text) in [
            (&b""[..], ""),
            (b"f", "Zg=="),
            (b"fo", "Zm8="),
            (b"foo", "Zm9v"),
            (b"foob", "Zm9vYg=="),
            (b"fooba", "Zm9vYmE="),
            (b"foobar", "Zm9vYmFy"),
            (&[0xff, 0xfe, 0x00], "//4A"),
        ] {
            let mut out = String::new();
            push_base64(&mut out, bytes);
            assert_eq!(out, text);
        }
    }

    #[test]
    fn the_object_lists_every_vector_as_floats_or_base64() {
        let bytes = vectors(&[&[0.5, -1.0], &[0.1, 3.0]]);
        let answer = Vectors::decode(&bytes).expect("a well-made answer");
        assert_eq!(
            (answer.rows, answer.dimensions, answer.prompt_tokens),
            (2, 2, 7)
        );
        let floats: Value = serde_json::from_slice(&answer.object("m", false)).expect("JSON");
        assert_eq!(
            floats["data"][1]["embedding"],
            serde_json::json!([0.1, 3.0]) // the shortest text of each f32
        );
        assert_eq!(floats["data"][1]["index"], 1);
        assert_eq!(floats["usage"]["total_tokens"], 7);
        assert_eq!(floats["model"], "m");
        let coded: Value = serde_json::from_slice(&answer.object("m", true)).expect("JSON");
        let mut first = String::new();
        push_base64(&mut first, &bytes[HEAD..HEAD + 8]);
        assert_eq!(coded["data"][0]["embedding"], Value::String(first));
    }

    #[test]
    fn an_answer_of_the_wrong_length_is_not_decoded() {
        let mut bytes = vectors(&[&[1.0, 2.0]]);
        bytes.pop();
        assert_eq!(Vectors::decode(&bytes), None);
        assert_eq!(Vectors::decode(&bytes[..3]), None);
        let huge = Vectors::head(u32::MAX, u32::MAX, 0);
        assert_eq!(Vectors::decode(&huge), None);
    }

    #[test]
    fn requests_are_checked() {
        let ok = |body: &str| parse_request(body.as_bytes(), "m");
        assert_eq!(
            ok(r#"{"model": "m", "input": "a"}"#),
            Ok(Request { base64: false })
        );
        assert_eq!(
            ok(r#"{"model": "m", "input": ["a", "b"], "encoding_format": "base64"}"#),
            Ok(Request { base64: true })
        );
        assert!(ok(r#"{"model": "m", "input": [[1, 2], [3]]}"#).is_ok());
        assert!(ok(r#"{"model": "m", "input": [1, 2]}"#).is_ok());
        for (body, status, param) in [
            (r#"{"model": "x", "input": "a"}"#, 404, Some("model")),
            (r#"{"model": "m"}"#, 400, Some("input")),
            (r#"{"model": "m", "input": []}"#, 400, Some("input")),
            (r#"{"model": "m", "input": ["a", 1]}"#, 400, Some("input")),
            (r#"{"model": "m", "input": [[]]}"#, 400, Some("input")),
            (
                r#"{"model": "m", "input": "a", "encoding_format": "hex"}"#,
                400,
                Some("encoding_format"),
            ),
            (
                r#"{"model": "m", "input": "a", "dimensions": 0}"#,
                400,
                Some("dimensions"),
            ),
            ("[1]", 400, None),
        ] {
            let error = ok(body).expect_err(body);
            assert_eq!((error.status, error.param), (status, param), "{body}");
        }
    }
}
