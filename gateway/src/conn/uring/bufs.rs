//! The core's provided buffer ring (io_uring 5.19+): a fixed set of
//! receive buffers the kernel picks from when a multishot recv has data.
//! No connection owns a buffer while idle; a buffer goes back to the ring
//! as soon as what it held has gone through the layers (partial frames are
//! copied out, as with the epoll driver's scratch buffer).

use std::sync::atomic::{AtomicU16, Ordering};

use io_uring::types::BufRingEntry;
use io_uring::IoUring;

/// The buffer group id of the core's ring (one group per ring).
pub const GROUP: u16 = 1;

pub struct BufRing {
    /// The ring of entries the kernel reads (page-aligned, `entries` long).
    entries: *mut BufRingEntry,
    layout: std::alloc::Layout,
    mask: u16,
    /// Our view of the tail; published to the kernel by `publish`.
    tail: u16,
    /// The buffers themselves, `count` × `size` bytes.
    mem: Box<[u8]>,
    size: usize,
}

impl BufRing {
    /// Allocates `count` buffers of `size` bytes and registers them with
    /// the ring. `count` must be a power of two (≤ 32,768).
    pub fn new(ring: &IoUring, count: u16, size: usize) -> std::io::Result<BufRing> {
        if !count.is_power_of_two() || count > 1 << 15 {
            return Err(std::io::Error::other(
                "io_uring buffer count must be a power of two up to 32768",
            ));
        }
        let layout = std::alloc::Layout::from_size_align(
            count as usize * std::mem::size_of::<BufRingEntry>(),
            4096,
        )
        .map_err(std::io::Error::other)?;
        // SAFETY: a non-zero layout; zeroed memory is a valid (empty) ring.
        let entries = unsafe { std::alloc::alloc_zeroed(layout) } as *mut BufRingEntry;
        if entries.is_null() {
            return Err(std::io::Error::other("out of memory for the buffer ring"));
        }
        let mut b = BufRing {
            entries,
            layout,
            mask: count - 1,
            tail: 0,
            mem: vec![0u8; count as usize * size].into_boxed_slice(),
            size,
        };
        // The kernel hands the buffers out in turn, so all of them are in
        // use within the first `count` reads: fault them in now, so that
        // they show as the fixed cost per core they are (`uring_buffers` ×
        // `uring_buffer_bytes`), not as memory that grows with connections.
        for page in b.mem.chunks_mut(4096) {
            // SAFETY: a write to our own buffer, volatile so it is kept.
            unsafe { std::ptr::write_volatile(page.as_mut_ptr(), 0) };
        }
        // SAFETY: the entries stay allocated (and the ring registered) for
        // the lifetime of this BufRing, which outlives the ring's use.
        unsafe {
            ring.submitter()
                .register_buf_ring_with_flags(entries as u64, count, GROUP, 0)?;
        }
        for bid in 0..count {
            b.give_back(bid);
        }
        b.publish();
        Ok(b)
    }

    /// The bytes a completion delivered into buffer `bid`.
    pub fn data(&self, bid: u16, len: usize) -> &[u8] {
        let start = bid as usize * self.size;
        let len = len.min(self.size);
        &self.mem[start..start + len]
    }

    /// Returns buffer `bid` to the ring (visible to the kernel once published).
    pub fn give_back(&mut self, bid: u16) {
        let at = (self.tail & self.mask) as usize;
        // SAFETY: `at` is within the ring; the buffer lies within `mem`.
        unsafe {
            let e = &mut *self.entries.add(at);
            e.set_addr(self.mem.as_mut_ptr().add(bid as usize * self.size) as u64);
            e.set_len(self.size as u32);
            e.set_bid(bid);
        }
        self.tail = self.tail.wrapping_add(1);
    }

    /// Makes the buffers given back so far visible to the kernel.
    pub fn publish(&self) {
        // SAFETY: the tail field lives in the first entry of our ring.
        unsafe {
            let tail = BufRingEntry::tail(self.entries) as *const AtomicU16;
            (*tail).store(self.tail, Ordering::Release);
        }
    }
}

impl Drop for BufRing {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with this layout. The ring it was
        // registered with is dropped (or unregistered) first: the loop
        // owns both and drops the ring before the buffers.
        unsafe { std::alloc::dealloc(self.entries as *mut u8, self.layout) };
    }
}
