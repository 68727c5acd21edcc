//! The body of a `KIND_STATE` message: a task's `__dict__`.
//!
//! Most task fields are a handful of numbers and short strings, for which
//! pickle's machinery (a pickler object, a memo, framing) costs more than the
//! data. A body is therefore either [`CODEC_FIELDS`] — the fields one after
//! the other, each a name and a tagged scalar (None, bool, 64-bit int, float,
//! str, bytes) — or [`CODEC_PICKLE`], the dict pickled, whenever any value is
//! something else. Readers check every length against the bytes they have:
//! a corrupt body is an error, never a read out of bounds.
//!
//! Layout (little-endian): `[codec u8]`, then for `CODEC_FIELDS` a `[count
//! u16]` and per field `[name len u16][name utf-8][tag u8][value]`, where the
//! value is nothing (None, False, True), 8 bytes (int, float) or `[len
//! u32][bytes]` (str as utf-8, bytes).

/// The body is a pickled dict.
pub const CODEC_PICKLE: u8 = 0;
/// The body is tagged fields.
pub const CODEC_FIELDS: u8 = 1;

const TAG_NONE: u8 = 0;
const TAG_FALSE: u8 = 1;
const TAG_TRUE: u8 = 2;
const TAG_INT: u8 = 3;
const TAG_FLOAT: u8 = 4;
const TAG_STR: u8 = 5;
const TAG_BYTES: u8 = 6;

/// One field value in [`CODEC_FIELDS`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Field<'a> {
    None,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(&'a str),
    Bytes(&'a [u8]),
}

/// Writes a [`CODEC_FIELDS`] body after whatever `out` already holds.
#[derive(Debug)]
pub struct FieldWriter<'a> {
    out: &'a mut Vec<u8>,
    count_at: usize,
    count: u16,
}

impl<'a> FieldWriter<'a> {
    pub fn new(out: &'a mut Vec<u8>) -> Self {
        out.push(CODEC_FIELDS);
        let count_at = out.len();
        out.extend_from_slice(&0u16.to_le_bytes());
        FieldWriter {
            out,
            count_at,
            count: 0,
        }
    }

    /// Appends a field; false when it cannot be written this way (too many
    /// fields, a name or value too long): write the body as a pickle then.
    pub fn field(&mut self, name: &str, value: Field<'_>) -> bool {
        let (Ok(name_len), Some(count)) = (u16::try_from(name.len()), self.count.checked_add(1))
        else {
            return false;
        };
        let out = &mut *self.out;
        out.extend_from_slice(&name_len.to_le_bytes());
        out.extend_from_slice(name.as_bytes());
        match value {
            Field::None => out.push(TAG_NONE),
            Field::Bool(false) => out.push(TAG_FALSE),
            Field::Bool(true) => out.push(TAG_TRUE),
            Field::Int(v) => {
                out.push(TAG_INT);
                out.extend_from_slice(&v.to_le_bytes());
            }
            Field::Float(v) => {
                out.push(TAG_FLOAT);
                out.extend_from_slice(&v.to_le_bytes());
            }
            Field::Str(s) => return self.sized(TAG_STR, s.as_bytes(), count),
            Field::Bytes(b) => return self.sized(TAG_BYTES, b, count),
        }
        self.count = count;
        true
    }

    fn sized(&mut self, tag: u8, bytes: &[u8], count: u16) -> bool {
        let Ok(len) = u32::try_from(bytes.len()) else {
            return false;
        };
        self.out.push(tag);
        self.out.extend_from_slice(&len.to_le_bytes());
        self.out.extend_from_slice(bytes);
        self.count = count;
        true
    }

    /// Writes the field count; the body is complete.
    pub fn finish(self) {
        self.out[self.count_at..self.count_at + 2].copy_from_slice(&self.count.to_le_bytes());
    }
}

/// Why a body could not be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Corrupt;

/// Reads a [`CODEC_FIELDS`] body (its codec byte already taken).
#[derive(Debug, Clone)]
pub struct FieldReader<'a> {
    rest: &'a [u8],
    left: u16,
}

impl<'a> FieldReader<'a> {
    pub fn new(body: &'a [u8]) -> Result<Self, Corrupt> {
        let (count, rest) = take(body, 2)?;
        Ok(FieldReader {
            rest,
            left: u16::from_le_bytes([count[0], count[1]]),
        })
    }

    /// How many fields are left.
    pub fn len(&self) -> usize {
        usize::from(self.left)
    }

    pub fn is_empty(&self) -> bool {
        self.left == 0
    }

    fn next_field(&mut self) -> Result<(&'a str, Field<'a>), Corrupt> {
        let (len, rest) = take(self.rest, 2)?;
        let (name, rest) = take(rest, usize::from(u16::from_le_bytes([len[0], len[1]])))?;
        let name = std::str::from_utf8(name).map_err(|_| Corrupt)?;
        let (tag, rest) = take(rest, 1)?;
        let (value, rest) = match tag[0] {
            TAG_NONE => (Field::None, rest),
            TAG_FALSE => (Field::Bool(false), rest),
            TAG_TRUE => (Field::Bool(true), rest),
            TAG_INT => {
                let (v, rest) = take(rest, 8)?;
                (Field::Int(i64::from_le_bytes(eight(v)?)), rest)
            }
            TAG_FLOAT => {
                let (v, rest) = take(rest, 8)?;
                (Field::Float(f64::from_le_bytes(eight(v)?)), rest)
            }
            tag @ (TAG_STR | TAG_BYTES) => {
                let (len, rest) = take(rest, 4)?;
                let len = u32::from_le_bytes([len[0], len[1], len[2], len[3]]);
                let (bytes, rest) = take(rest, usize::try_from(len).map_err(|_| Corrupt)?)?;
                if tag == TAG_STR {
                    (
                        Field::Str(std::str::from_utf8(bytes).map_err(|_| Corrupt)?),
                        rest,
                    )
                } else {
                    (Field::Bytes(bytes), rest)
                }
            }
            _ => return Err(Corrupt),
        };
        self.rest = rest;
        Ok((name, value))
    }
}

impl<'a> Iterator for FieldReader<'a> {
    type Item = Result<(&'a str, Field<'a>), Corrupt>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.left == 0 {
            return None;
        }
        self.left -= 1;
        let field = self.next_field();
        if field.is_err() {
            self.left = 0;
        }
        Some(field)
    }
}

fn take(bytes: &[u8], n: usize) -> Result<(&[u8], &[u8]), Corrupt> {
    if bytes.len() < n {
        return Err(Corrupt);
    }
    Ok(bytes.split_at(n))
}

fn eight(bytes: &[u8]) -> Result<[u8; 8], Corrupt> {
    bytes.try_into().map_err(|_| Corrupt)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(fields: &[(&str, Field<'_>)]) -> Vec<u8> {
        let mut out = Vec::new();
        let mut writer = FieldWriter::new(&mut out);
        for (name, value) in fields {
            assert!(writer.field(name, *value));
        }
        writer.finish();
        out
    }

    #[test]
    fn fields_come_back_as_written() {
        let fields = [
            (
                "task_id",
                Field::Str("0b5c9c7e-7d1e-4c45-9a57-4a0c7c4c1a55"),
            ),
            ("priority", Field::Int(-3)),
            ("expiration_time", Field::Float(12.5)),
            ("result", Field::None),
            ("ok", Field::Bool(true)),
            ("no", Field::Bool(false)),
            ("raw", Field::Bytes(b"\x00\x01")),
            ("ünïcode", Field::Str("värde")),
        ];
        let out = body(&fields);
        assert_eq!(out[0], CODEC_FIELDS);
        let read: Result<Vec<_>, _> = FieldReader::new(&out[1..]).unwrap().collect();
        assert_eq!(read, Ok(fields.to_vec()));
    }

    #[test]
    fn a_truncated_or_scribbled_body_is_an_error_not_a_panic() {
        let out = body(&[("a", Field::Int(1)), ("b", Field::Str("hello"))]);
        for end in 1..out.len() {
            let reader = FieldReader::new(&out[1..end]);
            if let Ok(reader) = reader {
                let fields: Vec<_> = reader.collect();
                assert!(fields.iter().any(Result::is_err), "cut at {end} read fine");
            }
        }
        let mut bad_tag = out.clone();
        bad_tag[1 + 2 + 2 + 1] = 99; // the first field's tag
        let fields: Vec<_> = FieldReader::new(&bad_tag[1..]).unwrap().collect();
        assert_eq!(fields, vec![Err(Corrupt)]);
        let mut huge = out;
        let at = 1 + 2 + 2 + 1 + 1 + 8 + 2 + 1 + 1; // the second field's length
        huge[at..at + 4].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(FieldReader::new(&huge[1..]).unwrap().any(|f| f.is_err()));
    }

    #[test]
    fn overlong_names_are_refused() {
        let mut out = Vec::new();
        let mut writer = FieldWriter::new(&mut out);
        assert!(!writer.field(&"x".repeat(70_000), Field::None));
    }
}
