//! The heap a piece of code holds at most, for the memory tests: the binary's
//! allocator is the system's, counted only on a thread that asks for it, so
//! that the tests running beside one do not count, nor the stand-in servers'
//! threads.

use std::{
    alloc::{GlobalAlloc, Layout, System},
    cell::Cell,
};

pub struct Counting;

thread_local! {
    static COUNTING: Cell<bool> = const { Cell::new(false) };
    static LIVE: Cell<isize> = const { Cell::new(0) };
    static PEAK: Cell<isize> = const { Cell::new(0) };
}

/// Adds `bytes` (negative when freed) to this thread's count, if it counts.
/// `try_with`: a thread's locals may already be gone while it exits.
fn count(bytes: isize) {
    let _ = COUNTING.try_with(|counting| {
        if counting.get() {
            let live = LIVE.get() + bytes;
            LIVE.set(live);
            PEAK.set(PEAK.get().max(live));
        }
    });
}

fn size(layout: Layout) -> isize {
    isize::try_from(layout.size()).unwrap_or(isize::MAX)
}

// SAFETY: every call is forwarded to the system allocator unchanged; the
// count only reads the sizes.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller's contract, passed on.
        let pointer = unsafe { System.alloc(layout) };
        if !pointer.is_null() {
            count(size(layout));
        }
        pointer
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller's contract, passed on.
        let pointer = unsafe { System.alloc_zeroed(layout) };
        if !pointer.is_null() {
            count(size(layout));
        }
        pointer
    }

    unsafe fn dealloc(&self, pointer: *mut u8, layout: Layout) {
        // SAFETY: the caller's contract, passed on.
        unsafe { System.dealloc(pointer, layout) };
        count(-size(layout));
    }

    unsafe fn realloc(&self, pointer: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: the caller's contract, passed on.
        let moved = unsafe { System.realloc(pointer, layout, new_size) };
        if !moved.is_null() {
            count(isize::try_from(new_size).unwrap_or(isize::MAX) - size(layout));
        }
        moved
    }
}

/// What `run` allocated on this thread and held at once, at most, above what
/// was held when it began; and what it still held when it returned (its
/// result among it).
pub struct Held {
    pub peak: usize,
    pub kept: usize,
}

/// Runs `run` on this thread, counting its heap.
pub fn held<T>(run: impl FnOnce() -> T) -> (T, Held) {
    LIVE.set(0);
    PEAK.set(0);
    COUNTING.set(true);
    let value = run();
    COUNTING.set(false);
    let held = Held {
        peak: usize::try_from(PEAK.get()).unwrap_or(0),
        kept: usize::try_from(LIVE.get()).unwrap_or(0),
    };
    (value, held)
}
