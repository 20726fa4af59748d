//! Asking the processor to start loading memory the join will read soon: the
//! read-ahead in a batch (`ahead.rs`) says when. Nothing here knows the
//! engine's types.

use std::collections::VecDeque;

/// Asks the processor to start loading the cache lines `value` spans.
#[cfg(target_arch = "x86_64")]
pub(crate) fn value<T: ?Sized>(value: &T) {
    use std::arch::x86_64::{_MM_HINT_T0, _mm_prefetch};
    const LINE: usize = 64;
    let start = std::ptr::from_ref(value).cast::<i8>();
    for offset in (0..size_of_val(value)).step_by(LINE) {
        // SAFETY: a prefetch is a hint: it reads nothing the program sees and
        // does not fault, whatever the address; this one is in a live value.
        unsafe { _mm_prefetch::<_MM_HINT_T0>(start.wrapping_add(offset)) };
    }
}

/// Elsewhere, nothing: stable Rust has a prefetch for x86-64 only.
#[cfg(not(target_arch = "x86_64"))]
pub(crate) fn value<T: ?Sized>(_: &T) {}

/// Fetches the first two entries of `queue`, where a call's are mostly
/// found: the wire's queues are claimed from their fronts.
pub(crate) fn front<T>(queue: Option<&VecDeque<T>>) {
    if let Some(queue) = queue {
        queue.range(..queue.len().min(2)).for_each(value);
    }
}
