//! What travels in a queue message besides its bytes: the kinds and flags of
//! the header's `kind` word and the layout of task keys. Defined here once;
//! the binding exports them to Python (`aqueduct._core`).

/// A pickled task, its class found by name.
pub const KIND_TASK: u32 = 0;
/// A worker's error report for a task (a pickled description).
pub const KIND_ERROR: u32 = 1;
/// A task pickled by value (cloudpickle): its class cannot be found by name.
pub const KIND_TASK_BY_VALUE: u32 = 2;
/// A worker dropped the task (expired or cancelled): no process uses its
/// shared-memory blocks any more.
pub const KIND_DROPPED: u32 = 3;
/// A task of a plain class (see [`crate::state`]): its class by name, its
/// `__dict__` pickled. No class is pickled per task, and the caller's task
/// is updated from the dict without building an object.
pub const KIND_STATE: u32 = 4;

/// An HTTP request from the Rust server (see `http_wire`): the first step's
/// worker makes it a task with the server's `task_from_request`.
pub const KIND_HTTP_REQUEST: u32 = 5;
/// An HTTP response for the Rust server (see `http_wire`), made by the last
/// step's worker with the server's `response_from_task`.
pub const KIND_HTTP_RESPONSE: u32 = 6;
/// A part of a streamed task's result (`task.emit(part)` in a handler),
/// keyed like the final answer, which follows its parts and closes the
/// stream: the part pickled (or by shared-memory reference, `FLAG_REFS`).
pub const KIND_PART: u32 = 7;
/// A part of a streamed HTTP response: bytes the Rust server writes to the
/// connection as one chunk (made in the worker: Server-Sent Events, or the
/// route's own encoding).
pub const KIND_HTTP_PART: u32 = 8;

/// Flag: the payload starts with shared-memory references.
pub const FLAG_REFS: u32 = 0x100;
/// Flag (with `FLAG_REFS`): the last reference is the pickle itself.
pub const FLAG_BODY: u32 = 0x200;
/// Flag: the task came from the HTTP server; the last step answers it with
/// a `KIND_HTTP_RESPONSE`, and its errors are reported as HTTP statuses.
pub const FLAG_HTTP: u32 = 0x400;
/// Flag: the caller streams the task's parts (`Flow.stream`, a streaming
/// HTTP route); without it a handler's `emit` sends nothing. Carried by the
/// task through the steps.
pub const FLAG_STREAM: u32 = 0x800;
/// With `FLAG_HTTP`, the bits from this one up say which of the server's
/// routes the request came to (and so which pair of functions makes its
/// task and its response); they travel with the task through the steps.
pub const HTTP_ROUTE_SHIFT: u32 = 16;
/// The route bits of a `kind` word.
pub const HTTP_ROUTE_MASK: u32 = 0xffff << HTTP_ROUTE_SHIFT;
/// Every flag bit; `kind & !FLAGS` is the kind.
pub const FLAGS: u32 = FLAG_REFS | FLAG_BODY | FLAG_HTTP | FLAG_STREAM | HTTP_ROUTE_MASK;
/// What a task carries from step to step whatever its encoding: where it
/// came from (HTTP, and which route) and whether its parts are streamed.
pub const CARRIED: u32 = FLAG_HTTP | FLAG_STREAM | HTTP_ROUTE_MASK;

/// True for the messages that are parts of a streamed result.
pub fn is_part(kind: u32) -> bool {
    matches!(base_kind(kind), KIND_PART | KIND_HTTP_PART)
}

/// The `kind` bits of HTTP route `route`.
pub fn http_route_bits(route: u16) -> u32 {
    u32::from(route) << HTTP_ROUTE_SHIFT
}

/// The HTTP route a `kind` word carries.
pub fn http_route(kind: u32) -> u16 {
    ((kind & HTTP_ROUTE_MASK) >> HTTP_ROUTE_SHIFT) as u16
}

/// Bits of a task key above this one name the client that submitted it.
pub const CLIENT_SHIFT: u32 = 48;
/// Most processes that may submit tasks to one flow (a queue asks its
/// clients for room with one bit each of a 32-bit word).
pub const MAX_CLIENTS: u32 = 32;
/// Most priority levels of a queue (one ring each).
pub const MAX_PRIORITIES: u32 = 64;
/// Most steps of a flow (a client marks the steps it must wake with one
/// bit each of a 64-bit word).
pub const MAX_STEPS: usize = 64;

/// How the client treats the tasks of a class — decided once per class
/// by the Python half (`classify`), carried by every task of it.
/// `CLASS_PLAIN`: the finished fields are copied into the caller's
/// `__dict__` (the class has BaseTask's `update` and plain attribute
/// setting); otherwise the caller's `task.update(finished)` is called.
pub const CLASS_PLAIN: u32 = 1 << 0;
/// The class is found by module and name, so its tasks pickle by
/// reference (otherwise by value, with cloudpickle).
pub const CLASS_NAMED: u32 = 1 << 1;
/// The class pickles as nothing but its `__dict__` (no `__reduce__`,
/// `__getstate__`, `__setstate__`, `__slots__`...): its tasks may travel
/// as [`KIND_STATE`] messages.
pub const CLASS_STATE: u32 = 1 << 2;
/// The class has BaseTask's `set_timeout`: the client sets the deadline
/// field itself instead of calling it.
pub const CLASS_TIMEOUT: u32 = 1 << 3;

/// The fields of `BaseTask` that are the flow's bookkeeping: a caller's task
/// keeps its own, whatever the workers did to theirs.
pub const BOOKKEEPING_FIELDS: [&str; 3] = ["task_id", "priority", "expiration_time"];

/// The pickle protocol of every payload (out-of-band buffers need 5).
pub const PICKLE_PROTOCOL: u32 = 5;
/// Buffers at least this large travel through shared memory, not the queue.
pub const BUFFER_THRESHOLD: usize = 64 * 1024;
/// Pickles larger than this travel in the arena rather than in the queue.
pub const INLINE_LIMIT: usize = 256 * 1024;

/// The prefix of a [`KIND_STATE`] payload: the length of the class name
/// (little-endian u16), then the name (`module`, a NUL, `qualname`); the
/// pickled `__dict__` follows.
pub fn state_prefix(class_name: &[u8]) -> Option<Vec<u8>> {
    let len = u16::try_from(class_name.len()).ok()?;
    let mut out = Vec::with_capacity(2 + class_name.len());
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(class_name);
    Some(out)
}

/// Splits a [`KIND_STATE`] payload into the class name and the pickled dict.
pub fn split_state(payload: &[u8]) -> Option<(&[u8], &[u8])> {
    let len = usize::from(u16::from_le_bytes(payload.get(..2)?.try_into().ok()?));
    let name = payload.get(2..2 + len)?;
    Some((name, payload.get(2 + len..)?))
}

/// A shared-memory reference of a [`FLAG_REFS`] payload: a buffer of `len`
/// bytes at `offset` in block `block` of the flow's arena `arena`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ArenaRef {
    pub arena: u32,
    pub block: u64,
    pub offset: u64,
    pub len: u64,
}

/// Bytes of one encoded [`ArenaRef`] (`u32` arena, `u64` block, offset and
/// length, little-endian), after the `u32` count that starts the payload.
pub const REF_BYTES: usize = 28;
const COUNT_BYTES: usize = 4;

/// Appends the refs prefix of a [`FLAG_REFS`] payload: their count, then
/// each ref.
pub fn encode_refs(refs: &[ArenaRef], out: &mut Vec<u8>) -> Option<()> {
    out.extend_from_slice(&u32::try_from(refs.len()).ok()?.to_le_bytes());
    for r in refs {
        out.extend_from_slice(&r.arena.to_le_bytes());
        for word in [r.block, r.offset, r.len] {
            out.extend_from_slice(&word.to_le_bytes());
        }
    }
    Some(())
}

/// Splits a [`FLAG_REFS`] payload into its refs and what follows them;
/// `None` when it is too short for the count it starts with.
pub fn split_refs(payload: &[u8]) -> Option<(Vec<ArenaRef>, &[u8])> {
    let count = u32::from_le_bytes(payload.get(..COUNT_BYTES)?.try_into().ok()?) as usize;
    let end = count.checked_mul(REF_BYTES)?.checked_add(COUNT_BYTES)?;
    let table = payload.get(COUNT_BYTES..end)?;
    let word = |at: usize| -> Option<u64> {
        Some(u64::from_le_bytes(table.get(at..at + 8)?.try_into().ok()?))
    };
    let refs = (0..count)
        .map(|i| {
            let at = i * REF_BYTES;
            Some(ArenaRef {
                arena: u32::from_le_bytes(table.get(at..at + 4)?.try_into().ok()?),
                block: word(at + 4)?,
                offset: word(at + 12)?,
                len: word(at + 20)?,
            })
        })
        .collect::<Option<Vec<_>>>()?;
    Some((refs, payload.get(end..)?))
}

/// The kind of a `kind` word, without its flags.
pub fn base_kind(kind: u32) -> u32 {
    kind & !FLAGS
}

/// The client that submitted task `key` (clamped to the last of `clients`).
pub fn client_of(key: u64, clients: u32) -> u32 {
    let client = key >> CLIENT_SHIFT;
    u32::try_from(client)
        .unwrap_or(u32::MAX)
        .min(clients.saturating_sub(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_and_flags_do_not_overlap() {
        for kind in [
            KIND_TASK,
            KIND_ERROR,
            KIND_TASK_BY_VALUE,
            KIND_DROPPED,
            KIND_STATE,
            KIND_HTTP_REQUEST,
            KIND_HTTP_RESPONSE,
        ] {
            assert_eq!(kind & FLAGS, 0);
            let flagged = kind | FLAG_REFS | FLAG_BODY | FLAG_HTTP | http_route_bits(7);
            assert_eq!(base_kind(flagged), kind);
            assert_eq!(http_route(flagged), 7);
        }
    }

    #[test]
    fn state_payloads_carry_the_class_name() {
        let mut payload = state_prefix(b"app\0Task").unwrap_or_default();
        payload.extend_from_slice(b"PICKLE");
        assert_eq!(
            split_state(&payload),
            Some((&b"app\0Task"[..], &b"PICKLE"[..]))
        );
        assert_eq!(split_state(&payload[..5]), None, "a truncated name");
        assert_eq!(split_state(b""), None);
    }

    #[test]
    fn refs_come_out_as_they_went_in_and_a_short_table_is_refused() {
        let refs = [
            ArenaRef {
                arena: 1,
                block: 65536,
                offset: 65600,
                len: 10,
            },
            ArenaRef {
                arena: 3,
                block: 0,
                offset: 0,
                len: u64::MAX,
            },
        ];
        let mut payload = Vec::new();
        encode_refs(&refs, &mut payload).expect("encodes");
        payload.extend_from_slice(b"PICKLE");
        let (got, rest) = split_refs(&payload).expect("splits");
        assert_eq!((got.as_slice(), rest), (&refs[..], &b"PICKLE"[..]));
        assert_eq!(split_refs(&payload[..20]), None, "cut in the table");
        assert_eq!(
            split_refs(&u32::MAX.to_le_bytes()),
            None,
            "a count past the payload"
        );
        assert_eq!(split_refs(b""), None);
    }

    #[test]
    fn keys_name_their_client() {
        let key = (3u64 << CLIENT_SHIFT) | 12345;
        assert_eq!(client_of(key, 8), 3);
        assert_eq!(client_of(key, 2), 1, "clamped to the clients there are");
        assert_eq!(client_of(u64::MAX, MAX_CLIENTS), MAX_CLIENTS - 1);
    }
}

#[cfg(test)]
mod fuzz {
    use proptest::collection::vec;
    use proptest::prelude::*;

    use super::*;
    use crate::fuzzing::{bytes, damaged};

    fn arena_ref() -> impl Strategy<Value = ArenaRef> {
        (any::<u32>(), any::<u64>(), any::<u64>(), any::<u64>()).prop_map(
            |(arena, block, offset, len)| ArenaRef {
                arena,
                block,
                offset,
                len,
            },
        )
    }

    fn encoded_refs() -> impl Strategy<Value = Vec<u8>> {
        (vec(arena_ref(), 0..6), bytes(32)).prop_map(|(refs, rest)| {
            let mut out = Vec::new();
            encode_refs(&refs, &mut out).expect("a few refs encode");
            out.extend_from_slice(&rest);
            out
        })
    }

    proptest! {
        #[test]
        fn refs_and_class_names_come_back_as_they_went(
            refs in vec(arena_ref(), 0..8),
            name in bytes(300),
            rest in bytes(64),
        ) {
            let mut payload = Vec::new();
            encode_refs(&refs, &mut payload).expect("encodes");
            payload.extend_from_slice(&rest);
            let (got, after) = split_refs(&payload).expect("splits");
            prop_assert_eq!((got, after), (refs, &rest[..]));
            let mut payload = state_prefix(&name).expect("a short name");
            payload.extend_from_slice(&rest);
            prop_assert_eq!(split_state(&payload), Some((&name[..], &rest[..])));
        }

        #[test]
        fn any_bytes_split_into_what_they_hold_or_are_refused(
            payload in prop_oneof![bytes(256), encoded_refs().prop_flat_map(damaged)],
        ) {
            if let Some((refs, rest)) = split_refs(&payload) {
                prop_assert_eq!(COUNT_BYTES + refs.len() * REF_BYTES + rest.len(), payload.len());
            }
            if let Some((name, rest)) = split_state(&payload) {
                prop_assert_eq!(2 + name.len() + rest.len(), payload.len());
            }
        }

        #[test]
        fn any_kind_word_and_key_name_a_kind_route_and_client(
            kind in any::<u32>(),
            key in any::<u64>(),
            clients in 0..=MAX_CLIENTS,
        ) {
            prop_assert_eq!(base_kind(kind) & FLAGS, 0);
            prop_assert_eq!(base_kind(kind) | (kind & FLAGS), kind);
            prop_assert_eq!(http_route_bits(http_route(kind)), kind & HTTP_ROUTE_MASK);
            prop_assert!(client_of(key, clients) < clients.max(1));
        }
    }
}
