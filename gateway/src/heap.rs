//! Heap accounting: the `gateway` binary's global allocator is mimalloc
//! wrapped by [`Counting`], which keeps the bytes currently allocated, so
//! that /metrics and /stats can tell heap growth (something holds more)
//! from resident-memory growth alone (the allocator holds freed pages).
//!
//! Each thread adds to its own cache line (a slot picked on its first
//! allocation), so cores do not contend; a read sums the slots. Memory
//! freed on another thread than the one that allocated it moves between
//! slots, which the sum does not mind. The cost is one uncontended atomic
//! add per allocation and free (BENCHMARKS.md, "Soak").

use std::alloc::{GlobalAlloc, Layout};
use std::cell::Cell;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicUsize, Ordering::Relaxed};

/// Counter slots; threads beyond this share slots (still correct).
const SLOTS: usize = 64;

#[repr(align(64))]
struct Slot(AtomicI64);

static LIVE: [Slot; SLOTS] = [const { Slot(AtomicI64::new(0)) }; SLOTS];
static NEXT_SLOT: AtomicUsize = AtomicUsize::new(0);
static INSTALLED: AtomicBool = AtomicBool::new(false);

thread_local! {
    // Const-initialised and without a destructor: no allocation, no
    // registration, safe to use inside the allocator.
    static MY_SLOT: Cell<usize> = const { Cell::new(usize::MAX) };
}

fn add(bytes: i64) {
    let i = MY_SLOT
        .try_with(|s| {
            let mut i = s.get();
            if i == usize::MAX {
                i = NEXT_SLOT.fetch_add(1, Relaxed) % SLOTS;
                s.set(i);
            }
            i
        })
        .unwrap_or(0);
    LIVE[i].0.fetch_add(bytes, Relaxed);
}

/// mimalloc, counting the bytes allocated.
pub struct Counting;

// SAFETY: every call forwards to mimalloc unchanged; the bookkeeping
// allocates nothing.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        let p = mimalloc::MiMalloc.alloc(l);
        if !p.is_null() {
            add(l.size() as i64);
        }
        p
    }
    unsafe fn alloc_zeroed(&self, l: Layout) -> *mut u8 {
        let p = mimalloc::MiMalloc.alloc_zeroed(l);
        if !p.is_null() {
            add(l.size() as i64);
        }
        p
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        add(-(l.size() as i64));
        mimalloc::MiMalloc.dealloc(p, l)
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, new: usize) -> *mut u8 {
        let q = mimalloc::MiMalloc.realloc(p, l, new);
        if !q.is_null() {
            add(new as i64 - l.size() as i64);
        }
        q
    }
}

impl Counting {
    /// Marks the counts as meaningful; the binary calls it first thing in
    /// `main` (a library user with another allocator never does).
    pub fn installed(&self) {
        INSTALLED.store(true, Relaxed);
    }
}

/// Bytes allocated and not yet freed, or None when [`Counting`] is not the
/// global allocator (tests, embedders).
pub fn allocated_bytes() -> Option<u64> {
    if !INSTALLED.load(Relaxed) {
        return None;
    }
    let sum: i64 = LIVE.iter().map(|s| s.0.load(Relaxed)).sum();
    Some(sum.max(0) as u64)
}

extern "C" {
    // mimalloc's: with `force`, frees what the calling thread's heap keeps
    // for reuse and purges it now. Linked in by the mimalloc crate.
    fn mi_collect(force: bool);
}

/// Gives the memory the calling thread's allocator keeps (freed but not yet
/// purged) back to the OS now. mimalloc purges lazily, on the thread's next
/// allocations, so a thread that goes idle after a burst (the control
/// thread after a big `/connz`) would keep it in RSS. Takes a few ms: only
/// for rare, big answers.
pub fn give_back() {
    // SAFETY: takes no pointers; safe to call from any thread at any time.
    unsafe { mi_collect(true) }
}

/// The process's resident memory (VmRSS), bytes; None where /proc is not.
pub fn resident_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    Some(pages * u64::try_from(page).ok()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_what_is_live() {
        // Not the global allocator in tests: drive it directly.
        let a = Counting;
        let before: i64 = LIVE.iter().map(|s| s.0.load(Relaxed)).sum();
        let l = Layout::from_size_align(1000, 8).unwrap_or(Layout::new::<u8>());
        // SAFETY: a non-zero layout; the pointer is freed with it below.
        unsafe {
            let p = a.alloc(l);
            assert!(!p.is_null());
            let q = a.realloc(p, l, 3000);
            assert!(!q.is_null());
            let mid: i64 = LIVE.iter().map(|s| s.0.load(Relaxed)).sum();
            assert_eq!(mid - before, 3000);
            a.dealloc(q, Layout::from_size_align(3000, 8).unwrap_or(l));
        }
        let after: i64 = LIVE.iter().map(|s| s.0.load(Relaxed)).sum();
        assert_eq!(after, before);
        assert!(resident_bytes().is_some_and(|r| r > 0));
    }
}
