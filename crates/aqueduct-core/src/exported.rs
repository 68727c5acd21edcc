//! Every constant and limit the Python package uses, by the name it has
//! there (`aqueduct._core.<NAME>`): defined in the core's modules, listed
//! here once so the binding exports them all with one loop.

use crate::http_wire::{
    MAX_REQUEST_ID, MAX_STEP_TIMES, REQUEST_ID_HEADER, RESERVED_PATHS, STEP_TIMES_HEADER,
};
use crate::metrics::{STEP_COUNTERS, STEP_GAUGES, STEP_HISTOGRAMS};
use crate::queue::{DEFAULT_RING_SLOTS, DEFAULT_SLOT_BYTES};
use crate::spin::DEFAULT_SPIN_US;
use crate::wire::*;

/// The numbers.
pub const NUMBERS: [(&str, u64); 33] = [
    ("KIND_TASK", KIND_TASK as u64),
    ("KIND_ERROR", KIND_ERROR as u64),
    ("KIND_TASK_BY_VALUE", KIND_TASK_BY_VALUE as u64),
    ("KIND_DROPPED", KIND_DROPPED as u64),
    ("KIND_STATE", KIND_STATE as u64),
    ("KIND_HTTP_REQUEST", KIND_HTTP_REQUEST as u64),
    ("KIND_HTTP_RESPONSE", KIND_HTTP_RESPONSE as u64),
    ("KIND_PART", KIND_PART as u64),
    ("KIND_HTTP_PART", KIND_HTTP_PART as u64),
    ("FLAG_REFS", FLAG_REFS as u64),
    ("FLAG_BODY", FLAG_BODY as u64),
    ("FLAG_HTTP", FLAG_HTTP as u64),
    ("FLAG_STREAM", FLAG_STREAM as u64),
    ("CARRIED", CARRIED as u64),
    ("HTTP_ROUTE_SHIFT", HTTP_ROUTE_SHIFT as u64),
    ("HTTP_ROUTE_MASK", HTTP_ROUTE_MASK as u64),
    ("FLAGS", FLAGS as u64),
    ("CLIENT_SHIFT", CLIENT_SHIFT as u64),
    ("MAX_CLIENTS", MAX_CLIENTS as u64),
    ("MAX_PRIORITIES", MAX_PRIORITIES as u64),
    ("MAX_STEPS", MAX_STEPS as u64),
    ("CLASS_PLAIN", CLASS_PLAIN as u64),
    ("CLASS_NAMED", CLASS_NAMED as u64),
    ("CLASS_STATE", CLASS_STATE as u64),
    ("CLASS_TIMEOUT", CLASS_TIMEOUT as u64),
    ("PICKLE_PROTOCOL", PICKLE_PROTOCOL as u64),
    ("BUFFER_THRESHOLD", BUFFER_THRESHOLD as u64),
    ("INLINE_LIMIT", INLINE_LIMIT as u64),
    ("MAX_REQUEST_ID", MAX_REQUEST_ID as u64),
    ("MAX_STEP_TIMES", MAX_STEP_TIMES as u64),
    ("DEFAULT_SPIN_US", DEFAULT_SPIN_US),
    ("DEFAULT_RING_SLOTS", DEFAULT_RING_SLOTS),
    ("DEFAULT_SLOT_BYTES", DEFAULT_SLOT_BYTES),
];

/// The lists of names.
pub const NAMES: [(&str, &[&str]); 6] = [
    ("TENSOR_DATATYPES", &crate::tensor_table::DATATYPE_NAMES),
    ("BOOKKEEPING_FIELDS", &BOOKKEEPING_FIELDS),
    ("STEP_HISTOGRAMS", &STEP_HISTOGRAMS),
    ("STEP_COUNTERS", &STEP_COUNTERS),
    ("STEP_GAUGES", &STEP_GAUGES),
    ("RESERVED_PATHS", &RESERVED_PATHS),
];

/// The texts.
pub const TEXTS: [(&str, &str); 2] = [
    ("REQUEST_ID_HEADER", REQUEST_ID_HEADER),
    ("STEP_TIMES_HEADER", STEP_TIMES_HEADER),
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_name_is_exported_once() {
        let mut names: Vec<&str> = NUMBERS.iter().map(|(n, _)| *n).collect();
        names.extend(NAMES.iter().map(|(n, _)| *n));
        names.extend(TEXTS.iter().map(|(n, _)| *n));
        let all = names.len();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), all);
    }
}
