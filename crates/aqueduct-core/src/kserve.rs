//! The Open Inference Protocol (KServe v2 REST, what Triton, KServe,
//! MLServer and `tritonclient` speak), defined once: the paths, the models
//! a server declares, an `infer` request checked against its model's inputs
//! and made a [`crate::tensor_table`] for the workers (JSON
//! `data`, or the binary tensor extension: a JSON head of
//! `Inference-Header-Content-Length` bytes, then each binary input's
//! bytes), and the answer made of the table a worker sends back, with each
//! output as JSON `data` or binary as the request asked.

use std::borrow::Cow;

use serde_json::{Map, Value};

use crate::http_wire::push_json_string;
use crate::tensor_table::{self, elements, push_tensor_head, Datatype, Table, Tensor};

/// The header giving the length of a binary request's (or answer's) JSON head.
pub const HEADER_LENGTH: &str = "inference-header-content-length";
/// The protocol's extensions this server speaks.
pub const EXTENSIONS: &[&str] = &["binary_tensor_data"];

/// An input or output a model declares: `-1` in its shape takes any size.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorSpec {
    pub name: String,
    pub datatype: Datatype,
    pub shape: Vec<i64>,
}

impl TensorSpec {
    /// Whether `shape` is one this tensor may have.
    pub fn fits(&self, shape: &[u64]) -> bool {
        shape.len() == self.shape.len()
            && self
                .shape
                .iter()
                .zip(shape)
                .all(|(want, got)| *want < 0 || u64::try_from(*want) == Ok(*got))
    }
}

/// A model behind the front: what its metadata says, which route takes its
/// requests, which steps must have their workers for it to be ready, and
/// how many priority levels its flow has (Triton's `priority` maps onto them).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelSpec {
    pub name: String,
    pub version: String,
    pub platform: String,
    pub inputs: Vec<TensorSpec>,
    pub outputs: Vec<TensorSpec>,
    pub route: usize,
    pub steps: Vec<usize>,
    pub priority_levels: u32,
}

/// A request the protocol refuses (or an answer it cannot make): the status
/// and the message of its `{"error": ...}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub status: u16,
    pub message: String,
}

impl Refusal {
    fn bad(message: impl Into<String>) -> Refusal {
        Refusal {
            status: 400,
            message: message.into(),
        }
    }

    fn broken(message: impl Into<String>) -> Refusal {
        Refusal {
            status: 500,
            message: message.into(),
        }
    }
}

/// What a server serves over the protocol: its version (for `GET /v2`)
/// and its models.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Repository {
    pub version: String,
    pub models: Vec<ModelSpec>,
}

impl Repository {
    /// As `aqueduct.kserve` gives it: `{"version", "models"}`, each model
    /// `{"name", "version", "platform", "inputs", "outputs", "route",
    /// "steps", "priority_levels"}`, each tensor `{"name", "datatype", "shape"}`.
    pub fn from_json(text: &[u8]) -> Result<Repository, String> {
        let value: Value = serde_json::from_slice(text).map_err(|e| e.to_string())?;
        let version = value.get("version").and_then(Value::as_str);
        let models = value.get("models").and_then(Value::as_array);
        let (Some(version), Some(models)) = (version, models) else {
            return Err("a repository is {\"version\", \"models\"}".into());
        };
        Ok(Repository {
            version: version.to_owned(),
            models: models
                .iter()
                .map(model_from_json)
                .collect::<Result<_, _>>()?,
        })
    }

    /// The model a page names, checking the version asked for.
    pub fn find(&self, name: &str, version: Option<&str>) -> Result<&ModelSpec, Refusal> {
        find(&self.models, name, version)
    }
}

fn model_from_json(value: &Value) -> Result<ModelSpec, String> {
    let text = |key: &str| {
        value
            .get(key)
            .and_then(Value::as_str)
            .map(str::to_owned)
            .ok_or(format!("a model needs a string {key}"))
    };
    let tensors = |key: &str| -> Result<Vec<TensorSpec>, String> {
        let list = value.get(key).and_then(Value::as_array);
        list.ok_or(format!("a model needs a list of {key}"))?
            .iter()
            .map(tensor_from_json)
            .collect()
    };
    let number = |key: &str| {
        value
            .get(key)
            .and_then(Value::as_u64)
            .ok_or(format!("a model needs a number {key}"))
    };
    let steps = value.get("steps").and_then(Value::as_array);
    let steps = steps
        .ok_or("a model needs its steps")?
        .iter()
        .map(|s| s.as_u64().map(|s| s as usize).ok_or("a step is an index"))
        .collect::<Result<_, _>>()?;
    Ok(ModelSpec {
        name: text("name")?,
        version: text("version")?,
        platform: text("platform")?,
        inputs: tensors("inputs")?,
        outputs: tensors("outputs")?,
        route: number("route")? as usize,
        steps,
        priority_levels: u32::try_from(number("priority_levels")?.max(1)).unwrap_or(u32::MAX),
    })
}

fn tensor_from_json(value: &Value) -> Result<TensorSpec, String> {
    let name = value.get("name").and_then(Value::as_str);
    let datatype = value.get("datatype").and_then(Value::as_str);
    let shape = value.get("shape").and_then(Value::as_array);
    let (Some(name), Some(datatype), Some(shape)) = (name, datatype, shape) else {
        return Err("a tensor needs a name, a datatype and a shape".into());
    };
    let datatype = Datatype::from_name(datatype).ok_or(format!("no datatype {datatype}"))?;
    let shape = shape
        .iter()
        .map(|d| {
            d.as_i64()
                .filter(|d| *d >= -1)
                .ok_or("a dimension is -1 or more")
        })
        .collect::<Result<_, _>>()?;
    Ok(TensorSpec {
        name: name.to_owned(),
        datatype,
        shape,
    })
}

/// What a path under `/v2` asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Page {
    Live,
    Ready,
    /// `GET /v2`: the server's metadata.
    Server,
    /// A model's metadata, readiness or inference: its name, and the
    /// version asked for (None: the one served).
    Model(String, Option<String>),
    ModelReady(String, Option<String>),
    Infer(String, Option<String>),
}

/// What `path` asks for, if it is a path of the protocol.
pub fn page_of(path: &str) -> Option<Page> {
    let rest = path.strip_prefix("/v2")?;
    match rest {
        "" | "/" => return Some(Page::Server),
        "/health/live" => return Some(Page::Live),
        "/health/ready" => return Some(Page::Ready),
        _ => {}
    }
    let mut parts = rest.strip_prefix("/models/")?.split('/');
    let name = percent_decoded(parts.next().filter(|n| !n.is_empty())?)?;
    let mut version = None;
    let mut action = parts.next();
    if action == Some("versions") {
        version = Some(percent_decoded(parts.next().filter(|v| !v.is_empty())?)?);
        action = parts.next();
    }
    if parts.next().is_some() {
        return None;
    }
    Some(match action {
        None | Some("") => Page::Model(name, version),
        Some("ready") => Page::ModelReady(name, version),
        Some("infer") => Page::Infer(name, version),
        Some(_) => return None,
    })
}

/// `%xx` escapes of a path segment decoded (None: a bad escape, or not UTF-8).
fn percent_decoded(segment: &str) -> Option<String> {
    let bytes = segment.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut at = 0;
    while at < bytes.len() {
        if bytes[at] == b'%' {
            let hex = std::str::from_utf8(bytes.get(at + 1..at + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            at += 3;
        } else {
            out.push(bytes[at]);
            at += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// The model of `models` a page names, checking the version asked for.
pub fn find<'a>(
    models: &'a [ModelSpec],
    name: &str,
    version: Option<&str>,
) -> Result<&'a ModelSpec, Refusal> {
    let model = models.iter().find(|m| m.name == name).ok_or(Refusal {
        status: 404,
        message: format!("unknown model {name}"),
    })?;
    match version {
        Some(v) if v != model.version => Err(Refusal {
            status: 404,
            message: format!(
                "model {name} has no version {v} (it serves {})",
                model.version
            ),
        }),
        _ => Ok(model),
    }
}

/// `GET /v2`.
pub fn server_metadata(version: &str) -> String {
    let mut out = String::from("{\"name\":\"aqueduct\",\"version\":");
    push_json_string(&mut out, version);
    out.push_str(",\"extensions\":[");
    for (i, extension) in EXTENSIONS.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        push_json_string(&mut out, extension);
    }
    out.push_str("]}");
    out
}

/// `GET /v2/models/{name}`.
pub fn model_metadata(model: &ModelSpec) -> String {
    let mut out = String::from("{\"name\":");
    push_json_string(&mut out, &model.name);
    out.push_str(",\"versions\":[");
    push_json_string(&mut out, &model.version);
    out.push_str("],\"platform\":");
    push_json_string(&mut out, &model.platform);
    for (key, tensors) in [("inputs", &model.inputs), ("outputs", &model.outputs)] {
        out.push_str(",\"");
        out.push_str(key);
        out.push_str("\":[");
        for (i, tensor) in tensors.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            out.push_str("{\"name\":");
            push_json_string(&mut out, &tensor.name);
            out.push_str(",\"datatype\":\"");
            out.push_str(tensor.datatype.name());
            out.push_str("\",\"shape\":[");
            let dims: Vec<String> = tensor.shape.iter().map(i64::to_string).collect();
            out.push_str(&dims.join(","));
            out.push_str("]}");
        }
        out.push(']');
    }
    out.push('}');
    out
}

/// An `infer` request, checked: its inputs (binary ones borrowed from the
/// body) for the table the workers get, and what the answer must hold.
#[derive(Debug, Clone)]
pub struct Infer<'a> {
    model: &'a ModelSpec,
    /// Per input of the model, in its order.
    inputs: Vec<Given<'a>>,
    /// The table's meta: `{"id", "parameters"}`.
    meta: String,
    /// The outputs to answer with (indices into the model's outputs), and
    /// whether each goes as binary data.
    pub outputs: Vec<(usize, bool)>,
    pub id: Option<String>,
    /// Triton's `priority` (1 is the highest; 0 the default), if given.
    pub priority: Option<u64>,
    /// Triton's `timeout`, in microseconds, if given.
    pub timeout_us: Option<u64>,
}

impl Infer<'_> {
    fn tensors(&self) -> Vec<Tensor<'_>> {
        self.model
            .inputs
            .iter()
            .zip(&self.inputs)
            .map(|(spec, given)| Tensor {
                name: &spec.name,
                datatype: spec.datatype,
                shape: &given.shape,
                data: &given.data,
            })
            .collect()
    }

    /// Bytes of the inputs' table.
    pub fn table_len(&self) -> usize {
        tensor_table::table_len(self.meta.as_bytes(), &self.tensors())
    }

    /// Writes the inputs' table into `out` ([`Infer::table_len`] bytes):
    /// where the workers read it, so that the bytes are copied once.
    pub fn write_table(&self, out: &mut [u8]) -> Result<(), String> {
        tensor_table::write_into(out, self.meta.as_bytes(), &self.tensors())
    }

    /// The inputs' table, as a new buffer.
    pub fn table(&self) -> Result<Vec<u8>, String> {
        tensor_table::write(self.meta.as_bytes(), &self.tensors())
    }
}

/// `priority` (Triton's: 1 the highest of `levels`, 0 the default) as
/// aqueduct's (0 the lowest and the default, `levels - 1` the highest).
pub fn aqueduct_priority(priority: u64, levels: u32) -> u32 {
    if priority == 0 {
        return 0;
    }
    let below = u32::try_from(priority).unwrap_or(u32::MAX);
    levels.saturating_sub(below)
}

/// Checks an `infer` request for `model`: `body` is JSON, or with
/// `head_len` (its `Inference-Header-Content-Length`) a JSON head followed
/// by the binary inputs.
pub fn parse_infer<'a>(
    model: &'a ModelSpec,
    body: &'a [u8],
    head_len: Option<usize>,
) -> Result<Infer<'a>, Refusal> {
    let head_len = head_len.unwrap_or(body.len());
    let (head, mut binary) = match (body.get(..head_len), body.get(head_len..)) {
        (Some(head), Some(rest)) => (head, rest),
        _ => {
            let message = format!(
                "Inference-Header-Content-Length is {head_len}, the body only {} bytes",
                body.len()
            );
            return Err(Refusal::bad(message));
        }
    };
    let request: Value = serde_json::from_slice(head)
        .map_err(|e| Refusal::bad(format!("the request is not JSON: {e}")))?;
    let request = request
        .as_object()
        .ok_or_else(|| Refusal::bad("the request must be a JSON object"))?;
    let id = match request.get("id") {
        None | Some(Value::Null) => None,
        Some(Value::String(id)) => Some(id.clone()),
        Some(other) => return Err(Refusal::bad(format!("id must be a string, not {other}"))),
    };
    let parameters = match request.get("parameters") {
        None | Some(Value::Null) => Map::new(),
        Some(Value::Object(parameters)) => parameters.clone(),
        Some(_) => return Err(Refusal::bad("parameters must be an object")),
    };
    let given = request
        .get("inputs")
        .and_then(Value::as_array)
        .ok_or_else(|| Refusal::bad("the request needs a list of inputs"))?;
    let binary_default = flag(&parameters, "binary_data_output")?.unwrap_or(false);
    let outputs = asked_outputs(model, request.get("outputs"), binary_default)?;
    let priority = number(&parameters, "priority")?;
    let timeout_us = number(&parameters, "timeout")?;
    let mut inputs: Vec<Option<Given<'_>>> = vec![None; model.inputs.len()];
    for input in given {
        let (index, given) = read_input(model, input, &mut binary)?;
        if inputs[index].replace(given).is_some() {
            let name = &model.inputs[index].name;
            return Err(Refusal::bad(format!("input {name} is given twice")));
        }
    }
    if !binary.is_empty() {
        let message = format!("{} bytes of binary data no input claims", binary.len());
        return Err(Refusal::bad(message));
    }
    let mut all = Vec::with_capacity(inputs.len());
    for (spec, input) in model.inputs.iter().zip(inputs) {
        let Some(given) = input else {
            return Err(Refusal::bad(format!("input {} is missing", spec.name)));
        };
        all.push(given);
    }
    let mut meta = Map::new();
    if let Some(id) = &id {
        meta.insert("id".into(), Value::String(id.clone()));
    }
    meta.insert("parameters".into(), Value::Object(parameters));
    Ok(Infer {
        model,
        inputs: all,
        meta: Value::Object(meta).to_string(),
        outputs,
        id,
        priority,
        timeout_us,
    })
}

fn flag(parameters: &Map<String, Value>, key: &str) -> Result<Option<bool>, Refusal> {
    match parameters.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Bool(on)) => Ok(Some(*on)),
        Some(other) => Err(Refusal::bad(format!(
            "{key} must be true or false, not {other}"
        ))),
    }
}

fn number(parameters: &Map<String, Value>, key: &str) -> Result<Option<u64>, Refusal> {
    match parameters.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(value) => value.as_u64().map(Some).ok_or_else(|| {
            Refusal::bad(format!(
                "parameter {key} must be a whole number >= 0, not {value}"
            ))
        }),
    }
}

/// The `name` of a request's input or output (`what`), and its index among
/// those the model declares (`specs`).
fn declared<'a>(
    model: &ModelSpec,
    specs: &[TensorSpec],
    given: &'a Value,
    what: &str,
) -> Result<(usize, &'a str), Refusal> {
    let name = given
        .get("name")
        .and_then(Value::as_str)
        .ok_or_else(|| Refusal::bad(format!("an {what} needs a name")))?;
    let index = specs
        .iter()
        .position(|spec| spec.name == name)
        .ok_or_else(|| Refusal::bad(format!("model {} has no {what} {name}", model.name)))?;
    Ok((index, name))
}

/// An input as a request gives it: its shape, and its bytes (borrowed from
/// the body when binary, made of its JSON data otherwise).
#[derive(Debug, Clone)]
struct Given<'a> {
    shape: Vec<u64>,
    data: Cow<'a, [u8]>,
}

/// One of the request's inputs: its index in the model's, and what it
/// gives (its bytes taken from the front of `binary` when it is binary).
fn read_input<'a>(
    model: &ModelSpec,
    input: &Value,
    binary: &mut &'a [u8],
) -> Result<(usize, Given<'a>), Refusal> {
    let (index, name) = declared(model, &model.inputs, input, "input")?;
    let spec = &model.inputs[index];
    let datatype = input.get("datatype").and_then(Value::as_str).unwrap_or("");
    if datatype != spec.datatype.name() {
        let message = format!("input {name} is {}, not {datatype:?}", spec.datatype.name());
        return Err(Refusal::bad(message));
    }
    let shape: Vec<u64> = input
        .get("shape")
        .and_then(Value::as_array)
        .and_then(|dims| dims.iter().map(Value::as_u64).collect())
        .ok_or_else(|| Refusal::bad(format!("input {name} needs a shape of whole numbers")))?;
    if !spec.fits(&shape) {
        let message = format!(
            "input {name} has shape {shape:?}, the model takes {:?}",
            spec.shape
        );
        return Err(Refusal::bad(message));
    }
    let count = elements(&shape)
        .filter(|n| n.checked_mul(spec.datatype.size().unwrap_or(4)).is_some())
        .ok_or_else(|| Refusal::bad(format!("input {name} has too many elements")))?;
    let parameters = input.get("parameters").and_then(Value::as_object);
    if parameters.is_some_and(|p| p.contains_key("shared_memory_region")) {
        let message = "shared memory inputs are not supported: send the tensor in the body";
        return Err(Refusal::bad(message));
    }
    let size = parameters.and_then(|p| p.get("binary_data_size"));
    let data = match (size, input.get("data")) {
        (Some(_), Some(_)) => {
            let message = format!("input {name} has both data and binary_data_size");
            return Err(Refusal::bad(message));
        }
        (Some(size), None) => {
            let size = size
                .as_u64()
                .and_then(|s| usize::try_from(s).ok())
                .filter(|s| *s <= binary.len())
                .ok_or_else(|| {
                    let message = format!(
                        "input {name}'s binary_data_size {size} is more than the {} bytes left",
                        binary.len()
                    );
                    Refusal::bad(message)
                })?;
            let (data, rest) = binary.split_at(size);
            *binary = rest;
            check_binary(name, spec.datatype, &shape, count, data)?;
            Cow::Borrowed(data)
        }
        (None, Some(data)) => Cow::Owned(json_data(name, spec.datatype, count, data)?),
        (None, None) => return Err(Refusal::bad(format!("input {name} has no data"))),
    };
    Ok((index, Given { shape, data }))
}

fn check_binary(
    name: &str,
    datatype: Datatype,
    shape: &[u64],
    count: usize,
    data: &[u8],
) -> Result<(), Refusal> {
    match datatype.size() {
        Some(size) if count * size != data.len() => Err(Refusal::bad(format!(
            "input {name} of shape {shape:?} needs {} bytes of {}, it has {}",
            count * size,
            datatype.name(),
            data.len()
        ))),
        Some(_) => Ok(()),
        None => tensor_table::check_bytes(data, count)
            .map_err(|e| Refusal::bad(format!("input {name}: {e}"))),
    }
}

/// JSON `data` (flat, or nested in row-major order) as the tensor's bytes.
fn json_data(
    name: &str,
    datatype: Datatype,
    count: usize,
    data: &Value,
) -> Result<Vec<u8>, Refusal> {
    let mut flat = Vec::with_capacity(count.min(1 << 20));
    flatten(data, &mut flat);
    if flat.len() != count {
        let message = format!(
            "input {name} has {} elements of data, its shape {count}",
            flat.len()
        );
        return Err(Refusal::bad(message));
    }
    let mut out = Vec::with_capacity(count * datatype.size().unwrap_or(8));
    for (index, value) in flat.iter().enumerate() {
        if !push_element(&mut out, datatype, value) {
            let message = format!(
                "input {name}'s element {index} ({value}) is not a {} value",
                datatype.name()
            );
            return Err(Refusal::bad(message));
        }
    }
    Ok(out)
}

fn flatten<'a>(value: &'a Value, out: &mut Vec<&'a Value>) {
    match value {
        Value::Array(items) => items.iter().for_each(|item| flatten(item, out)),
        other => out.push(other),
    }
}

/// Appends one JSON element as `datatype`'s bytes (false: it is not one).
fn push_element(out: &mut Vec<u8>, datatype: Datatype, value: &Value) -> bool {
    macro_rules! int {
        ($t:ty) => {{
            let Some(n) = value
                .as_i64()
                .and_then(|n| <$t>::try_from(n).ok())
                .or_else(|| value.as_u64().and_then(|n| <$t>::try_from(n).ok()))
            else {
                return false;
            };
            out.extend_from_slice(&n.to_le_bytes());
        }};
    }
    match datatype {
        Datatype::Bool => match value.as_bool() {
            Some(on) => out.push(u8::from(on)),
            None => return false,
        },
        Datatype::Uint8 => int!(u8),
        Datatype::Uint16 => int!(u16),
        Datatype::Uint32 => int!(u32),
        Datatype::Uint64 => int!(u64),
        Datatype::Int8 => int!(i8),
        Datatype::Int16 => int!(i16),
        Datatype::Int32 => int!(i32),
        Datatype::Int64 => int!(i64),
        Datatype::Fp16 | Datatype::Fp32 | Datatype::Fp64 | Datatype::Bf16 => {
            let Some(x) = value.as_f64() else {
                return false;
            };
            match datatype {
                Datatype::Fp16 => out.extend_from_slice(&half::f16::from_f64(x).to_le_bytes()),
                Datatype::Bf16 => out.extend_from_slice(&half::bf16::from_f64(x).to_le_bytes()),
                Datatype::Fp32 => out.extend_from_slice(&(x as f32).to_le_bytes()),
                _ => out.extend_from_slice(&x.to_le_bytes()),
            }
        }
        Datatype::Bytes => match value.as_str() {
            Some(text) => {
                let Ok(len) = u32::try_from(text.len()) else {
                    return false;
                };
                out.extend_from_slice(&len.to_le_bytes());
                out.extend_from_slice(text.as_bytes());
            }
            None => return false,
        },
    }
    true
}

/// The outputs the request asks for (all the model's when it names none),
/// each binary as its `binary_data` says, else as `binary_default`.
fn asked_outputs(
    model: &ModelSpec,
    outputs: Option<&Value>,
    binary_default: bool,
) -> Result<Vec<(usize, bool)>, Refusal> {
    let Some(outputs) = outputs.filter(|o| !o.is_null()) else {
        return Ok((0..model.outputs.len())
            .map(|i| (i, binary_default))
            .collect());
    };
    let outputs = outputs
        .as_array()
        .ok_or_else(|| Refusal::bad("outputs must be a list"))?;
    let mut asked = Vec::with_capacity(outputs.len());
    for output in outputs {
        let (index, name) = declared(model, &model.outputs, output, "output")?;
        let empty = Map::new();
        let parameters = match output.get("parameters") {
            None | Some(Value::Null) => &empty,
            Some(Value::Object(parameters)) => parameters,
            Some(_) => return Err(Refusal::bad("an output's parameters must be an object")),
        };
        if parameters
            .get("classification")
            .is_some_and(|c| c.as_u64() != Some(0))
        {
            let message = "the classification extension is not supported";
            return Err(Refusal::bad(message));
        }
        if parameters.contains_key("shared_memory_region") {
            let message = "shared memory outputs are not supported";
            return Err(Refusal::bad(message));
        }
        let binary = flag(parameters, "binary_data")?.unwrap_or(binary_default);
        if asked.iter().any(|(i, _)| *i == index) {
            return Err(Refusal::bad(format!("output {name} is asked for twice")));
        }
        asked.push((index, binary));
    }
    Ok(asked)
}

/// An answer's body, and the length of its JSON head when binary data
/// follows it (the `Inference-Header-Content-Length` to send).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    pub body: Vec<u8>,
    pub head_len: Option<usize>,
}

/// The answer to `infer` from the table of outputs a worker sent: each
/// output asked for, checked against the model's declaration (a misfit is
/// the model's fault: 500), as JSON data or binary.
pub fn answer(model: &ModelSpec, infer: &Infer<'_>, outputs: &[u8]) -> Result<Answer, Refusal> {
    let table = Table::read(outputs)
        .map_err(|e| Refusal::broken(format!("the model's outputs are not a tensor table: {e}")))?;
    let mut head = String::with_capacity(256);
    head.push('{');
    if let Some(id) = &infer.id {
        head.push_str("\"id\":");
        push_json_string(&mut head, id);
        head.push(',');
    }
    head.push_str("\"model_name\":");
    push_json_string(&mut head, &model.name);
    head.push_str(",\"model_version\":");
    push_json_string(&mut head, &model.version);
    head.push_str(",\"outputs\":[");
    let mut binary: Vec<&[u8]> = Vec::new();
    for (n, &(index, as_binary)) in infer.outputs.iter().enumerate() {
        let spec = &model.outputs[index];
        let entry = table
            .tensors
            .iter()
            .find(|t| t.name == spec.name)
            .ok_or_else(|| Refusal::broken(format!("the model gave no output {}", spec.name)))?;
        if entry.datatype != spec.datatype || !spec.fits(&entry.shape) {
            let message = format!(
                "the model's output {} is {} {:?}, it declares {} {:?}",
                spec.name,
                entry.datatype.name(),
                entry.shape,
                spec.datatype.name(),
                spec.shape
            );
            return Err(Refusal::broken(message));
        }
        let data = &outputs[entry.offset..entry.offset + entry.len];
        if n > 0 {
            head.push(',');
        }
        push_tensor_head(&mut head, &spec.name, spec.datatype, &entry.shape);
        if as_binary {
            head.push_str(",\"parameters\":{\"binary_data_size\":");
            head.push_str(&data.len().to_string());
            head.push_str("}}");
            binary.push(data);
        } else {
            head.push_str(",\"data\":");
            push_json_data(&mut head, spec.datatype, data)
                .map_err(|e| Refusal::bad(format!("output {}: {e}", spec.name)))?;
            head.push('}');
        }
    }
    head.push_str("]}");
    let head_len = (!binary.is_empty()).then_some(head.len());
    let mut body = head.into_bytes();
    body.reserve(binary.iter().map(|b| b.len()).sum());
    for data in binary {
        body.extend_from_slice(data);
    }
    Ok(Answer { body, head_len })
}

/// A tensor's bytes as a flat JSON list.
fn push_json_data(out: &mut String, datatype: Datatype, data: &[u8]) -> Result<(), String> {
    out.push('[');
    if datatype == Datatype::Bytes {
        for (i, element) in tensor_table::bytes_elements(data).enumerate() {
            if i > 0 {
                out.push(',');
            }
            let text = std::str::from_utf8(element)
                .map_err(|_| "BYTES that are not UTF-8 text: ask for it as binary data")?;
            push_json_string(out, text);
        }
        out.push(']');
        return Ok(());
    }
    let size = datatype.size().unwrap_or(1);
    for (i, b) in data.chunks_exact(size).enumerate() {
        if i > 0 {
            out.push(',');
        }
        let mut raw = [0u8; 8];
        raw[..size].copy_from_slice(b);
        let wide = u64::from_le_bytes(raw);
        match datatype {
            Datatype::Bool => out.push_str(if b[0] != 0 { "true" } else { "false" }),
            Datatype::Uint8 | Datatype::Uint16 | Datatype::Uint32 | Datatype::Uint64 => {
                out.push_str(&wide.to_string());
            }
            Datatype::Int8 => out.push_str(&(b[0] as i8).to_string()),
            Datatype::Int16 => out.push_str(&(wide as u16 as i16).to_string()),
            Datatype::Int32 => out.push_str(&(wide as u32 as i32).to_string()),
            Datatype::Int64 => out.push_str(&(wide as i64).to_string()),
            Datatype::Fp16 => push_float(out, half::f16::from_bits(wide as u16).to_f32()),
            Datatype::Bf16 => push_float(out, half::bf16::from_bits(wide as u16).to_f32()),
            Datatype::Fp32 => push_float(out, f32::from_bits(wide as u32)),
            Datatype::Fp64 => push_float(out, f64::from_bits(wide)),
            Datatype::Bytes => {}
        }
    }
    out.push(']');
    Ok(())
}

/// A number as JSON: the shortest text that reads back as the same float
/// (Rust's `Display`), with a `.0` on whole numbers; JSON has no NaN or
/// infinity: those are null.
fn push_float<F: std::fmt::Display + Into<f64> + Copy>(out: &mut String, x: F) {
    let wide: f64 = x.into();
    if !wide.is_finite() {
        out.push_str("null");
        return;
    }
    let text = x.to_string();
    let whole = !text.contains(['.', 'e', 'E']);
    out.push_str(&text);
    if whole {
        out.push_str(".0");
    }
}

#[cfg(test)]
#[path = "kserve_tests.rs"]
mod tests;
