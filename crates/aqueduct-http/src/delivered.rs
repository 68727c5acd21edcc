//! An answer as the reader thread hands it to its request: the message, and
//! for one whose body a worker placed in its arena (`FLAG_BODY`), that body
//! as `Bytes` that read the arena in place — hyper writes them to the
//! socket from there, and dropping them (written, or the client left, or no
//! request waits any more) frees the block.

use std::sync::Arc;

use aqueduct_core::http_wire::{decode_body_ref, decode_response, BODY_REF_BYTES};
use aqueduct_core::wire::{base_kind, FLAG_BODY, KIND_HTTP_PART, KIND_HTTP_RESPONSE};
use aqueduct_core::{Message, TrackedArena};
use bytes::Bytes;

/// What a waiting request gets.
pub struct Delivered {
    pub message: Message,
    /// The body placed in an arena; `Err` when its reference is not one
    /// (no such arena, or a range outside it).
    pub placed: Option<Result<Bytes, String>>,
}

impl Delivered {
    /// `message`, with its placed body found in `arenas` (the flow's).
    pub fn new(message: Message, arenas: &[Arc<TrackedArena>]) -> Delivered {
        let kind = message.header.kind;
        let placed = (kind & FLAG_BODY != 0).then(|| placed_body(&message, arenas));
        Delivered { message, placed }
    }

    /// What `read` makes of the body of a worker's answer (None: an error,
    /// or not what `read` reads).
    pub fn read_body<T>(&self, read: impl FnOnce(&[u8]) -> Option<T>) -> Option<T> {
        if base_kind(self.message.header.kind) != KIND_HTTP_RESPONSE {
            return None;
        }
        match &self.placed {
            Some(Ok(placed)) => read(placed),
            Some(Err(_)) => None,
            None => read(decode_response(self.message.payload())?.body),
        }
    }
}

fn placed_body(message: &Message, arenas: &[Arc<TrackedArena>]) -> Result<Bytes, String> {
    let payload = message.payload();
    let reference = match base_kind(message.header.kind) {
        KIND_HTTP_RESPONSE => decode_response(payload).map(|r| r.body),
        KIND_HTTP_PART => Some(payload),
        _ => None,
    }
    .filter(|r| r.len() == BODY_REF_BYTES)
    .and_then(decode_body_ref)
    .ok_or("a placed body without its reference")?;
    let arena = arenas.get(reference.arena as usize).ok_or_else(|| {
        format!(
            "a body placed in arena {}, which the flow has not",
            reference.arena
        )
    })?;
    let len = usize::try_from(reference.len).map_err(|_| "a body too big to address")?;
    let at = arena
        .arena()
        .ptr_at(reference.offset, reference.len)
        .ok_or("a body placed outside its arena")?;
    Ok(Bytes::from_owner(Block {
        arena: Arc::clone(arena),
        block: reference.block,
        at: at as usize,
        len,
    }))
}

/// A block of a worker's arena holding a body, until the body is dropped.
struct Block {
    arena: Arc<TrackedArena>,
    block: u64,
    at: usize,
    len: usize,
}

impl AsRef<[u8]> for Block {
    fn as_ref(&self) -> &[u8] {
        // SAFETY: `at..at+len` lies inside the arena's mapping (checked by
        // `ptr_at` when the block was found), which `self.arena` keeps
        // mapped. The worker that placed the body wrote it before sending
        // its reference and neither it nor any other process writes the
        // block again until this process frees it, in `drop`. (A worker
        // that scribbles over it anyway can change what is written, never
        // where: the range stays inside this mapping.)
        unsafe { std::slice::from_raw_parts(self.at as *const u8, self.len) }
    }
}

impl Drop for Block {
    fn drop(&mut self) {
        self.arena.arena().free(self.block);
    }
}

#[cfg(test)]
mod tests {
    use super::Delivered;
    use aqueduct_core::http_wire::{encode_body_ref, encode_response, BodyRef};
    use aqueduct_core::wire::{FLAG_BODY, KIND_HTTP_RESPONSE};
    use aqueduct_core::{Arena, MessageHeader, QueueConfig, TaskQueue, TrackedArena};
    use std::sync::Arc;

    #[test]
    fn a_placed_body_is_read_in_place_and_its_block_freed_when_dropped() {
        let arena = Arc::new(TrackedArena::new(
            Arena::create(1 << 24).expect("arena"),
            false,
        ));
        let body = vec![7u8; 3 << 20];
        let block = arena.arena().alloc(body.len() as u64, 0).expect("room");
        let at = arena
            .arena()
            .ptr_at(block.offset, body.len() as u64)
            .expect("inside");
        // SAFETY: a block just allocated in this test's own arena.
        unsafe { std::ptr::copy_nonoverlapping(body.as_ptr(), at, body.len()) };
        let mut payload = Vec::new();
        encode_response(&mut payload, 200, &[], &[]).expect("encoded");
        let reference = BodyRef {
            arena: 1,
            block: block.offset,
            offset: block.offset,
            len: body.len() as u64,
        };
        encode_body_ref(&mut payload, reference);
        let queue = TaskQueue::create(QueueConfig::default()).expect("queue");
        let header = MessageHeader {
            kind: KIND_HTTP_RESPONSE | FLAG_BODY,
            ..MessageHeader::default()
        };
        for _ in 0..2 {
            queue.push(&header, &payload).expect("room");
        }
        let other = Arc::new(TrackedArena::new(
            Arena::create(1 << 20).expect("arena"),
            false,
        ));
        let arenas = [other, Arc::clone(&arena)];
        let message = queue.try_pop().expect("intact").expect("a message");
        let missing = Delivered::new(message, &arenas[..1]);
        assert!(matches!(missing.placed, Some(Err(_))), "no arena 1 there");
        let message = queue.try_pop().expect("intact").expect("a message");
        let delivered = Delivered::new(message, &arenas);
        let placed = delivered.placed.expect("placed").expect("found");
        assert_eq!(&placed[..], &body[..]);
        assert!(arena.arena().used() > 0);
        drop(placed);
        assert_eq!(arena.arena().used(), 0, "freed once written");
    }
}
