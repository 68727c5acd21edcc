mod common;

use std::os::fd::{AsFd, FromRawFd, OwnedFd};

use aqueduct_core::arena::PAGE;
use aqueduct_core::{Arena, Error};
use common::{child_role, spawn_child, wait_child};

#[test]
fn blocks_are_whole_pages_and_freed_pages_are_reused_lowest_first() {
    let arena = Arena::create(16 * PAGE).expect("arena");
    let a = arena.alloc(1, 1).expect("a");
    let b = arena.alloc(3 * PAGE, 2).expect("b");
    assert_eq!((a.offset, a.capacity), (0, PAGE));
    assert_eq!((b.offset, b.capacity), (PAGE, 3 * PAGE));
    assert!(arena.free(a.offset));
    assert!(!arena.free(a.offset), "a block is freed once");
    let c = arena.alloc(PAGE, 3).expect("c");
    assert_eq!(
        c.offset, 0,
        "the freed, already faulted pages come back first"
    );
    assert_eq!(arena.used(), 4 * PAGE);
}

#[test]
fn a_full_arena_names_the_sizes() {
    let arena = Arena::create(4 * PAGE).expect("arena");
    arena.alloc(3 * PAGE, 1).expect("fits");
    match arena.alloc(2 * PAGE, 2) {
        Err(Error::ArenaFull {
            size,
            capacity,
            free,
        }) => {
            assert_eq!((size, capacity, free), (2 * PAGE, 4 * PAGE, PAGE));
        }
        other => panic!("expected ArenaFull, got {other:?}"),
    }
    let err = arena.alloc(100 * PAGE, 3).expect_err("never fits");
    assert!(err.to_string().contains(&(100 * PAGE).to_string()), "{err}");
}

#[test]
fn neighbouring_freed_blocks_merge() {
    let arena = Arena::create(4 * PAGE).expect("arena");
    let blocks: Vec<_> = (0..4)
        .map(|k| arena.alloc(PAGE, k).expect("alloc"))
        .collect();
    for b in &blocks {
        assert!(arena.free(b.offset));
    }
    assert_eq!(arena.alloc(4 * PAGE, 9).expect("merged run").offset, 0);
}

#[test]
fn locate_finds_the_block_of_an_interior_pointer() {
    let arena = Arena::create(8 * PAGE).expect("arena");
    arena.alloc(PAGE, 1).expect("a");
    let b = arena.alloc(2 * PAGE, 2).expect("b");
    let inner = arena.ptr_at(b.offset + PAGE + 5, 10).expect("inside");
    assert_eq!(
        arena.locate(inner, 10),
        Some((b.offset + PAGE + 5, b.offset))
    );
    let outside = [0u8; 4];
    assert_eq!(arena.locate(outside.as_ptr(), 4), None);
}

#[test]
fn only_the_owner_allocates_and_a_new_owner_keeps_live_blocks() {
    let arena = Arena::create(8 * PAGE).expect("arena");
    let live = arena.alloc(2 * PAGE, 7).expect("live");
    let mut peer = Arena::open_borrowed(arena.as_fd()).expect("peer");
    assert!(peer.alloc(PAGE, 1).is_err(), "a peer cannot allocate");
    // the owner dies; a respawned process takes the arena over
    drop(arena);
    peer.take_ownership();
    let next = peer.alloc(PAGE, 8).expect("alloc");
    assert_ne!(next.offset, live.offset);
    assert_eq!(peer.free_where(&|key| key == 7), 1);
    assert_eq!(peer.used(), PAGE);
}

/// Child: frees the block at the offset given in its role, then exits.
#[test]
fn child_frees_a_block() {
    let Some((role, fds)) = child_role() else {
        return;
    };
    let offset: u64 = role.parse().expect("offset");
    // SAFETY: the parent passed this fd for the child to own.
    let arena = Arena::open(unsafe { OwnedFd::from_raw_fd(fds[0]) }).expect("open");
    // SAFETY: the block is ours to write until we free it.
    unsafe { arena.ptr_at(offset, 1).expect("ptr").write(0xAB) };
    assert!(arena.free(offset));
}

#[test]
fn a_block_freed_in_another_process_is_reclaimed_by_the_owner() {
    if child_role().is_some() {
        return;
    }
    let arena = Arena::create(2 * PAGE).expect("arena");
    let a = arena.alloc(2 * PAGE, 1).expect("whole arena");
    assert!(arena.alloc(PAGE, 2).is_err());
    let child = spawn_child(
        "child_frees_a_block",
        &a.offset.to_string(),
        &[arena.raw_fd()],
    );
    assert!(wait_child(child, 10).success());
    let ptr = arena.ptr_at(a.offset, 1).expect("ptr");
    // SAFETY: inside the mapping; the child wrote this byte before freeing.
    let byte = unsafe { ptr.read() };
    assert_eq!(byte, 0xAB);
    let again = arena.alloc(2 * PAGE, 3).expect("reclaimed");
    assert_eq!(again.offset, 0);
}
