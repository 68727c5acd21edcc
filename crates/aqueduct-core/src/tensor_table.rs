//! Named tensors as one message body, defined once: what the HTTP front
//! makes of an Open Inference Protocol request for the workers (see
//! [`crate::kserve`]), and what a worker answers with. A small head, an
//! entry per tensor (its name, datatype, shape and where its bytes are),
//! a blob of text the protocol passes on (the request's id and
//! parameters), then each tensor's bytes at a 64-byte aligned offset, so
//! that a worker sees them as a numpy array over the arena without a copy.
//!
//! Layout, little-endian: `MAGIC`, count (u32), meta length (u32), 4 zero
//! bytes; per tensor: datatype code (u8), dimensions (u8), name length
//! (u16), 4 zero bytes, data offset (u64, from the table's start), data
//! length (u64), the dimensions (u64 each), the name, zeros to a multiple
//! of 8; the meta; each tensor's data. `BYTES` data is the protocol's own:
//! per element a u32 length, then its bytes.

use crate::http_wire::push_json_string;

/// The first four bytes of a table.
pub const MAGIC: [u8; 4] = *b"AQT1";
/// Where each tensor's bytes start (a multiple of this, from the table's start).
pub const ALIGN: usize = 64;
/// Most dimensions a tensor may have (numpy's limit is 64).
pub const MAX_DIMS: usize = 32;
const HEAD: usize = 16;
const ENTRY: usize = 24;

/// The protocol's datatypes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Datatype {
    Bool,
    Uint8,
    Uint16,
    Uint32,
    Uint64,
    Int8,
    Int16,
    Int32,
    Int64,
    Fp16,
    Fp32,
    Fp64,
    Bf16,
    Bytes,
}

/// Every datatype, in code order (a datatype's code is its index).
pub const DATATYPES: [Datatype; 14] = [
    Datatype::Bool,
    Datatype::Uint8,
    Datatype::Uint16,
    Datatype::Uint32,
    Datatype::Uint64,
    Datatype::Int8,
    Datatype::Int16,
    Datatype::Int32,
    Datatype::Int64,
    Datatype::Fp16,
    Datatype::Fp32,
    Datatype::Fp64,
    Datatype::Bf16,
    Datatype::Bytes,
];

/// Their names, in code order.
pub const DATATYPE_NAMES: [&str; 14] = [
    "BOOL", "UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64", "FP16",
    "FP32", "FP64", "BF16", "BYTES",
];

impl Datatype {
    /// As the protocol names it (`"FP32"`).
    pub fn name(self) -> &'static str {
        DATATYPE_NAMES[usize::from(self.code())]
    }

    pub fn from_name(name: &str) -> Option<Datatype> {
        DATATYPES.into_iter().find(|d| d.name() == name)
    }

    pub fn code(self) -> u8 {
        self as u8 // declared in code order
    }

    pub fn from_code(code: u8) -> Option<Datatype> {
        DATATYPES.get(usize::from(code)).copied()
    }

    /// Bytes per element (None: `BYTES`, whose elements have their own).
    pub fn size(self) -> Option<usize> {
        Some(match self {
            Datatype::Bool | Datatype::Uint8 | Datatype::Int8 => 1,
            Datatype::Uint16 | Datatype::Int16 | Datatype::Fp16 | Datatype::Bf16 => 2,
            Datatype::Uint32 | Datatype::Int32 | Datatype::Fp32 => 4,
            Datatype::Uint64 | Datatype::Int64 | Datatype::Fp64 => 8,
            Datatype::Bytes => return None,
        })
    }
}

/// Elements of a tensor of `shape` (None: more than a usize holds).
pub fn elements(shape: &[u64]) -> Option<usize> {
    shape
        .iter()
        .try_fold(1usize, |n, &d| n.checked_mul(usize::try_from(d).ok()?))
}

/// Why `data` is not `count` elements of `BYTES` (the u32 length of each,
/// then its bytes), if it is not.
pub fn check_bytes(data: &[u8], count: usize) -> Result<(), String> {
    let mut at = 0usize;
    for index in 0..count {
        let len =
            read_u32(data, at).ok_or_else(|| format!("BYTES element {index} has no length"))?;
        at = (at + 4)
            .checked_add(len as usize)
            .filter(|end| *end <= data.len())
            .ok_or_else(|| format!("BYTES element {index} is past the data's end"))?;
    }
    if at == data.len() {
        Ok(())
    } else {
        Err(format!(
            "{} bytes after the {count} BYTES elements",
            data.len() - at
        ))
    }
}

/// The elements of `BYTES` data (checked by [`check_bytes`]).
pub fn bytes_elements(data: &[u8]) -> impl Iterator<Item = &[u8]> {
    let mut at = 0usize;
    std::iter::from_fn(move || {
        let len = read_u32(data, at)? as usize;
        let element = data.get(at + 4..at + 4 + len)?;
        at += 4 + len;
        Some(element)
    })
}

/// A tensor to put in a table.
#[derive(Debug, Clone, Copy)]
pub struct Tensor<'a> {
    pub name: &'a str,
    pub datatype: Datatype,
    pub shape: &'a [u64],
    pub data: &'a [u8],
}

/// A tensor as a table holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry<'a> {
    pub name: &'a str,
    pub datatype: Datatype,
    pub shape: Vec<u64>,
    /// Where its bytes are, from the table's start.
    pub offset: usize,
    pub len: usize,
}

fn pad(n: usize, to: usize) -> usize {
    n.div_ceil(to) * to
}

fn entry_len(tensor_name: &str, dims: usize) -> usize {
    pad(ENTRY + 8 * dims + tensor_name.len(), 8)
}

/// Bytes of the table [`write()`] makes of `tensors` and `meta`.
pub fn table_len(meta: &[u8], tensors: &[Tensor<'_>]) -> usize {
    let entries: usize = tensors
        .iter()
        .map(|t| entry_len(t.name, t.shape.len()))
        .sum();
    let mut at = pad(HEAD + entries + meta.len(), ALIGN);
    for tensor in tensors {
        at = pad(at + tensor.data.len(), ALIGN);
    }
    at
}

/// Why a tensor cannot go into a table, if it cannot.
fn check(tensor: &Tensor<'_>) -> Result<(), String> {
    if tensor.name.len() > usize::from(u16::MAX) {
        return Err("a tensor name over 65535 bytes".into());
    }
    if tensor.shape.len() > MAX_DIMS {
        return Err(format!(
            "tensor {} has over {MAX_DIMS} dimensions",
            tensor.name
        ));
    }
    let count = elements(tensor.shape)
        .ok_or_else(|| format!("tensor {} has too many elements", tensor.name))?;
    match tensor.datatype.size() {
        Some(size) if count.checked_mul(size) != Some(tensor.data.len()) => Err(format!(
            "tensor {} of shape {:?} needs {} bytes of {}, not {}",
            tensor.name,
            tensor.shape,
            count.saturating_mul(size),
            tensor.datatype.name(),
            tensor.data.len()
        )),
        Some(_) => Ok(()),
        None => check_bytes(tensor.data, count).map_err(|e| format!("tensor {}: {e}", tensor.name)),
    }
}

/// `tensors` and `meta` as a table, written into `out` (which must be
/// [`table_len`] bytes; zeroed or not): an error names a tensor whose data
/// does not fit its shape.
pub fn write_into(out: &mut [u8], meta: &[u8], tensors: &[Tensor<'_>]) -> Result<(), String> {
    for tensor in tensors {
        check(tensor)?;
    }
    if out.len() != table_len(meta, tensors) {
        return Err("a table buffer of the wrong size".into());
    }
    let count = u32::try_from(tensors.len()).map_err(|_| "too many tensors".to_owned())?;
    let meta_len = u32::try_from(meta.len()).map_err(|_| "too long a meta".to_owned())?;
    out[..4].copy_from_slice(&MAGIC);
    out[4..8].copy_from_slice(&count.to_le_bytes());
    out[8..12].copy_from_slice(&meta_len.to_le_bytes());
    out[12..16].fill(0);
    let entries: usize = tensors
        .iter()
        .map(|t| entry_len(t.name, t.shape.len()))
        .sum();
    let mut data_at = pad(HEAD + entries + meta.len(), ALIGN);
    let mut at = HEAD;
    for tensor in tensors {
        let len = entry_len(tensor.name, tensor.shape.len());
        let entry = &mut out[at..at + len];
        entry.fill(0);
        entry[0] = tensor.datatype.code();
        entry[1] = tensor.shape.len() as u8; // <= MAX_DIMS (checked)
        entry[2..4].copy_from_slice(&(tensor.name.len() as u16).to_le_bytes());
        entry[8..16].copy_from_slice(&(data_at as u64).to_le_bytes());
        entry[16..24].copy_from_slice(&(tensor.data.len() as u64).to_le_bytes());
        for (i, dim) in tensor.shape.iter().enumerate() {
            entry[ENTRY + 8 * i..ENTRY + 8 * i + 8].copy_from_slice(&dim.to_le_bytes());
        }
        let name_at = ENTRY + 8 * tensor.shape.len();
        entry[name_at..name_at + tensor.name.len()].copy_from_slice(tensor.name.as_bytes());
        at += len;
        let end = data_at + tensor.data.len();
        out[data_at..end].copy_from_slice(tensor.data);
        let next = pad(end, ALIGN);
        out[end..next].fill(0);
        data_at = next;
    }
    out[at..at + meta.len()].copy_from_slice(meta);
    let meta_end = at + meta.len();
    out[meta_end..pad(meta_end, ALIGN)].fill(0);
    Ok(())
}

/// `tensors` and `meta` as a new table.
pub fn write(meta: &[u8], tensors: &[Tensor<'_>]) -> Result<Vec<u8>, String> {
    let mut out = vec![0; table_len(meta, tensors)];
    write_into(&mut out, meta, tensors)?;
    Ok(out)
}

/// A table read back: its meta and its tensors, every length and offset
/// checked against the table's bytes (a worker's answer is not trusted).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Table<'a> {
    pub meta: &'a [u8],
    pub tensors: Vec<Entry<'a>>,
}

impl<'a> Table<'a> {
    pub fn read(table: &'a [u8]) -> Result<Table<'a>, String> {
        if table.get(..4) != Some(&MAGIC[..]) {
            return Err("not a tensor table".into());
        }
        let count = read_u32(table, 4).ok_or("a cut tensor table")? as usize;
        let meta_len = read_u32(table, 8).ok_or("a cut tensor table")? as usize;
        let mut tensors = Vec::with_capacity(count.min(1024));
        let mut at = HEAD;
        for _ in 0..count {
            let entry = table.get(at..at + ENTRY).ok_or("a cut tensor entry")?;
            let datatype = Datatype::from_code(entry[0]).ok_or("an unknown datatype code")?;
            let dims = usize::from(entry[1]);
            let name_len = usize::from(u16::from_le_bytes([entry[2], entry[3]]));
            let offset = read_u64(entry, 8).ok_or("a cut tensor entry")?;
            let len = read_u64(entry, 16).ok_or("a cut tensor entry")?;
            let shape = (0..dims)
                .map(|i| read_u64(table, at + ENTRY + 8 * i))
                .collect::<Option<Vec<u64>>>()
                .ok_or("a cut tensor shape")?;
            let name_at = at + ENTRY + 8 * dims;
            let name = table
                .get(name_at..name_at + name_len)
                .and_then(|n| std::str::from_utf8(n).ok())
                .ok_or("a tensor name that is cut or not UTF-8")?;
            let (offset, len) = (usize::try_from(offset), usize::try_from(len));
            let (Ok(offset), Ok(len)) = (offset, len) else {
                return Err("a tensor past the table's end".into());
            };
            let data = offset
                .checked_add(len)
                .and_then(|end| table.get(offset..end))
                .ok_or("a tensor past the table's end")?;
            check(&Tensor {
                name,
                datatype,
                shape: &shape,
                data,
            })?;
            tensors.push(Entry {
                name,
                datatype,
                shape,
                offset,
                len,
            });
            at += entry_len(name, dims);
        }
        let meta = table.get(at..at + meta_len).ok_or("a cut tensor meta")?;
        Ok(Table { meta, tensors })
    }
}

/// `"[d0,d1,...]"`.
pub fn push_shape(out: &mut String, shape: &[u64]) {
    out.push('[');
    for (i, dim) in shape.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(&dim.to_string());
    }
    out.push(']');
}

/// The JSON `{"name": ..., "datatype": ..., "shape": [...]` of a tensor
/// (left open: the caller adds `data` or `parameters`).
pub fn push_tensor_head(out: &mut String, name: &str, datatype: Datatype, shape: &[u64]) {
    out.push_str("{\"name\":");
    push_json_string(out, name);
    out.push_str(",\"datatype\":\"");
    out.push_str(datatype.name());
    out.push_str("\",\"shape\":");
    push_shape(out, shape);
}

fn read_u32(bytes: &[u8], at: usize) -> Option<u32> {
    let b = bytes.get(at..at.checked_add(4)?)?;
    Some(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
}

fn read_u64(bytes: &[u8], at: usize) -> Option<u64> {
    let b = bytes.get(at..at.checked_add(8)?)?;
    let mut array = [0; 8];
    array.copy_from_slice(b);
    Some(u64::from_le_bytes(array))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(items: &[&[u8]]) -> Vec<u8> {
        let mut out = Vec::new();
        for item in items {
            out.extend_from_slice(&(item.len() as u32).to_le_bytes());
            out.extend_from_slice(item);
        }
        out
    }

    #[test]
    fn a_table_reads_back_what_was_written_with_aligned_data() {
        let floats: Vec<u8> = [1.5f32, -2.0, 3.25, 0.0, 7.0, 8.0]
            .iter()
            .flat_map(|f| f.to_le_bytes())
            .collect();
        let words = strings(&[b"ab", b"", b"\xff\x00"]);
        let tensors = [
            Tensor {
                name: "x",
                datatype: Datatype::Fp32,
                shape: &[2, 3],
                data: &floats,
            },
            Tensor {
                name: "words",
                datatype: Datatype::Bytes,
                shape: &[3],
                data: &words,
            },
        ];
        let table = write(br#"{"id":"7"}"#, &tensors).unwrap();
        assert_eq!(table.len(), table_len(br#"{"id":"7"}"#, &tensors));
        let read = Table::read(&table).unwrap();
        assert_eq!(read.meta, br#"{"id":"7"}"#);
        assert_eq!(read.tensors.len(), 2);
        for (entry, tensor) in read.tensors.iter().zip(&tensors) {
            assert_eq!(entry.name, tensor.name);
            assert_eq!(entry.datatype, tensor.datatype);
            assert_eq!(entry.shape, tensor.shape);
            assert_eq!(entry.offset % ALIGN, 0);
            assert_eq!(&table[entry.offset..entry.offset + entry.len], tensor.data);
        }
        let elements: Vec<&[u8]> = bytes_elements(&words).collect();
        assert_eq!(elements, [&b"ab"[..], b"", b"\xff\x00"]);
    }

    #[test]
    fn data_that_does_not_fit_its_shape_is_refused_when_written() {
        let tensor = Tensor {
            name: "x",
            datatype: Datatype::Int64,
            shape: &[2, 2],
            data: &[0; 24],
        };
        let error = write(b"", &[tensor]).unwrap_err();
        assert!(error.contains("needs 32 bytes"), "{error}");
        let words = strings(&[b"ab"]);
        let tensor = Tensor {
            name: "w",
            datatype: Datatype::Bytes,
            shape: &[2],
            data: &words,
        };
        assert!(write(b"", &[tensor]).unwrap_err().contains("element 1"));
    }

    #[test]
    fn a_damaged_table_is_an_error_never_a_panic() {
        let data = [0u8; 8];
        let table = write(
            b"meta",
            &[Tensor {
                name: "t",
                datatype: Datatype::Fp64,
                shape: &[1],
                data: &data,
            }],
        )
        .unwrap();
        for cut in 0..table.len() {
            let _ = Table::read(&table[..cut]);
        }
        for at in 0..HEAD + ENTRY + 16 {
            for value in [0u8, 1, 0x7f, 0xff] {
                let mut damaged = table.clone();
                damaged[at] = value;
                let _ = Table::read(&damaged); // an error or a table, checked
            }
        }
        assert!(Table::read(b"AQT0").is_err());
    }

    #[test]
    fn datatypes_round_trip_through_names_and_codes() {
        for datatype in DATATYPES {
            assert_eq!(Datatype::from_name(datatype.name()), Some(datatype));
            assert_eq!(Datatype::from_code(datatype.code()), Some(datatype));
        }
        assert_eq!(Datatype::from_name("FP8"), None);
        assert_eq!(elements(&[u64::MAX, 2]), None);
    }
}
