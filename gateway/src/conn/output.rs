//! The outbound queue of a connection as the drivers see it: what to
//! write next (the queued items from the written offset on, as slices),
//! and what a write of n bytes removes.

use std::io::IoSlice;

use crate::core::{Conn, Core};
use crate::metrics::CoreMetrics;

/// Appends the queued bytes from the written offset on to `iov`, a slice
/// per head and body, at most `max` slices.
pub fn gather<'a>(c: &'a Conn, iov: &mut Vec<IoSlice<'a>>, max: usize) {
    let mut skip = c.out_off as usize;
    for item in c.out.iter() {
        for part in [item.head.as_slice(), &item.body[..]] {
            if skip >= part.len() {
                skip -= part.len();
                continue;
            }
            iov.push(IoSlice::new(&part[skip..]));
            skip = 0;
            if iov.len() >= max {
                return;
            }
        }
    }
}

/// Drops `n` written bytes from the front of the queue.
pub(super) fn advance(c: &mut Conn, n: usize) {
    let mut left = n + c.out_off as usize;
    c.out_off = 0;
    while let Some(front) = c.out.front() {
        let len = front.len();
        if left < len {
            c.out_off = left as u32;
            break;
        }
        left -= len;
        c.out_bytes = c.out_bytes.saturating_sub(len as u32);
        c.out.pop_front();
    }
    if c.out.is_empty() {
        c.out = Default::default(); // give the ring buffer back while idle
    }
}

/// Counts bytes written to a connection's socket.
pub(super) fn wrote(core: &Core, c: &mut Conn, n: usize) {
    c.bytes_out = c.bytes_out.saturating_add(n as u32);
    CoreMetrics::add(&core.metrics.bytes_out, n as u64);
}
