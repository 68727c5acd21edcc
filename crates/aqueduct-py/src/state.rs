//! A task's `__dict__` to and from a `KIND_STATE` body (the format is the
//! core's `state` module): tagged fields when every value is a plain scalar,
//! else the dict pickled.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::Mutex;

use aqueduct_core::state::{Field, FieldReader, FieldWriter, CODEC_FIELDS, CODEC_PICKLE};
use aqueduct_core::wire::{BOOKKEEPING_FIELDS as BOOKKEEPING, BUFFER_THRESHOLD, INLINE_LIMIT};
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyBool, PyBytes, PyDict, PyFloat, PyInt, PyString};

use crate::pickle;

/// Field names already made into interned Python strings (bounded: tasks
/// rarely have more than a few dozen distinct field names).
const MAX_NAMES: usize = 4096;

/// FNV-1a: field names are short, and come from our own messages.
#[derive(Default)]
struct Fnv(u64);

impl Hasher for Fnv {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        let mut hash = if self.0 == 0 {
            0xcbf2_9ce4_8422_2325
        } else {
            self.0
        };
        for byte in bytes {
            hash = (hash ^ u64::from(*byte)).wrapping_mul(0x0100_0000_01b3);
        }
        self.0 = hash;
    }
}

type Names = HashMap<String, Py<PyString>, BuildHasherDefault<Fnv>>;

fn name<'py>(py: Python<'py>, text: &str) -> Bound<'py, PyString> {
    static NAMES: PyOnceLock<Mutex<Names>> = PyOnceLock::new();
    let names = NAMES.get_or_init(py, || Mutex::new(Names::default()));
    let Ok(mut names) = names.lock() else {
        return PyString::intern(py, text);
    };
    if let Some(known) = names.get(text) {
        return known.bind(py).clone();
    }
    let made = PyString::intern(py, text);
    if names.len() < MAX_NAMES {
        names.insert(text.to_owned(), made.clone().unbind());
    }
    made
}

/// Appends the body for `fields` to `out`; false when a value needs the
/// Python path (a buffer for shared memory) or the body would not fit a
/// message.
pub(crate) fn encode(fields: &Bound<'_, PyDict>, out: &mut Vec<u8>) -> PyResult<bool> {
    let start = out.len();
    out.reserve(256);
    match encode_fields(fields, out) {
        Fields::Written => return Ok(out.len() - start <= INLINE_LIMIT),
        Fields::BigBuffer => return Ok(false),
        Fields::Other if pickle::has_big_bytes(fields) => return Ok(false),
        Fields::Other => {}
    }
    out.truncate(start);
    let Some(pickled) = pickle::dumps(fields.py(), fields.as_any())? else {
        return Ok(false);
    };
    out.push(CODEC_PICKLE);
    out.extend_from_slice(pickled.as_bytes());
    Ok(out.len() - start <= INLINE_LIMIT)
}

/// What `encode_fields` made of a dict.
enum Fields {
    Written,
    /// A bytes value for shared memory.
    BigBuffer,
    /// A value (or name) only pickle can write.
    Other,
}

fn encode_fields(fields: &Bound<'_, PyDict>, out: &mut Vec<u8>) -> Fields {
    let mut writer = FieldWriter::new(out);
    for (key, value) in fields.iter() {
        let Ok(key) = key.cast_exact::<PyString>() else {
            return Fields::Other;
        };
        let Ok(key) = key.to_str() else {
            return Fields::Other;
        };
        let written = if value.is_none() {
            writer.field(key, Field::None)
        } else if let Ok(b) = value.cast_exact::<PyBool>() {
            writer.field(key, Field::Bool(b.is_true()))
        } else if let Ok(i) = value.cast_exact::<PyInt>() {
            match i.extract::<i64>() {
                Ok(i) => writer.field(key, Field::Int(i)),
                Err(_) => false, // beyond 64 bits: pickle knows how
            }
        } else if let Ok(f) = value.cast_exact::<PyFloat>() {
            writer.field(key, Field::Float(f.value()))
        } else if let Ok(s) = value.cast_exact::<PyString>() {
            match s.to_str() {
                Ok(s) => writer.field(key, Field::Str(s)),
                Err(_) => false, // lone surrogates: pickle knows how
            }
        } else if let Ok(b) = value.cast_exact::<PyBytes>() {
            let b = b.as_bytes();
            if b.len() >= BUFFER_THRESHOLD {
                return Fields::BigBuffer;
            }
            writer.field(key, Field::Bytes(b))
        } else {
            false
        };
        if !written {
            return Fields::Other;
        }
    }
    writer.finish();
    Fields::Written
}

/// The fields a body holds, as a dict.
pub(crate) fn decode<'py>(py: Python<'py>, body: &[u8]) -> PyResult<Bound<'py, PyDict>> {
    match body.split_first() {
        Some((&CODEC_FIELDS, rest)) => {
            let dict = PyDict::new(py);
            for field in FieldReader::new(rest).map_err(|_| corrupt())? {
                let (key, value) = field.map_err(|_| corrupt())?;
                dict.set_item(name(py, key), to_python(py, value))?;
            }
            Ok(dict)
        }
        Some((&CODEC_PICKLE, rest)) => {
            let state = pickle::loads(py, &PyBytes::new(py, rest))?;
            Ok(state.cast_into::<PyDict>()?)
        }
        _ => Err(corrupt()),
    }
}

/// Sets the fields a body holds on `target` (a caller's task's `__dict__`),
/// except the bookkeeping ones the caller's task keeps.
pub(crate) fn apply(py: Python<'_>, body: &[u8], target: &Bound<'_, PyDict>) -> PyResult<()> {
    if let Some((&CODEC_FIELDS, rest)) = body.split_first() {
        // the body is checked whole before the task is touched
        let fields: Vec<(&str, Field<'_>)> = FieldReader::new(rest)
            .map_err(|_| corrupt())?
            .collect::<Result<_, _>>()
            .map_err(|_| corrupt())?;
        for (key, value) in fields {
            if !BOOKKEEPING.contains(&key) {
                target.set_item(name(py, key), to_python(py, value))?;
            }
        }
        return Ok(());
    }
    let state = decode(py, body)?;
    for key in BOOKKEEPING {
        if state.contains(key)? {
            state.del_item(key)?;
        }
    }
    target.update(state.as_mapping())
}

fn to_python<'py>(py: Python<'py>, value: Field<'_>) -> Bound<'py, PyAny> {
    match value {
        Field::None => py.None().into_bound(py),
        Field::Bool(b) => PyBool::new(py, b).to_owned().into_any(),
        Field::Int(i) => PyInt::new(py, i).into_any(),
        Field::Float(f) => PyFloat::new(py, f).into_any(),
        Field::Str(s) => PyString::new(py, s).into_any(),
        Field::Bytes(b) => PyBytes::new(py, b).into_any(),
    }
}

/// The error for a body that cannot be read.
pub(crate) fn corrupt() -> PyErr {
    let message = "a task's state in a queue message is corrupt";
    Python::attach(|py| match crate::exception(py, "TaskSerializationError") {
        Ok(ty) => PyErr::from_type(ty, message),
        Err(_) => PyValueError::new_err(message),
    })
}
