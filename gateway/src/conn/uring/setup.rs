//! The io_uring driver's setup: its settings, the kernel probe, the ring,
//! and the tags completions carry in their user data.

use io_uring::{opcode, IoUring};

use super::bufs::BufRing;

/// What a completion is for: the top byte of its user data.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
#[repr(u8)]
pub(super) enum Kind {
    Accept = 1,
    Recv = 2,
    Send = 3,
    Close = 4,
    Wake = 5,
    Cancel = 6,
}

pub(super) const KIND_SHIFT: u32 = 56;
pub(super) const VALUE_MASK: u64 = (1 << KIND_SHIFT) - 1;

pub(super) fn user_data(kind: Kind, value: u64) -> u64 {
    ((kind as u64) << KIND_SHIFT) | (value & VALUE_MASK)
}

pub(super) fn kind_of(ud: u64) -> Option<Kind> {
    Some(match (ud >> KIND_SHIFT) as u8 {
        1 => Kind::Accept,
        2 => Kind::Recv,
        3 => Kind::Send,
        4 => Kind::Close,
        5 => Kind::Wake,
        6 => Kind::Cancel,
        _ => return None,
    })
}

/// The driver's settings (`[io]` in the config).
#[derive(Clone, Copy, Debug)]
pub struct Settings {
    /// Submission queue entries (completion queue: twice as many).
    pub entries: u32,
    /// Receive buffers in the provided ring (a power of two).
    pub buffers: u16,
    /// Bytes of one receive buffer.
    pub buffer_bytes: u32,
}

/// Whether this kernel runs the driver: a ring with single issuer and
/// deferred task work, a provided buffer ring, and the opcodes used.
/// Err says what is missing (the startup line repeats it). The trial ring
/// lives on a thread of its own: tearing a ring down queues task work on
/// the thread that made it, which interrupts that thread's next blocking
/// call (EINTR on a socket read with a timeout, for one).
pub fn probe(s: &Settings) -> Result<(), String> {
    let s = *s;
    std::thread::Builder::new()
        .name("gw-uring-probe".into())
        .spawn(move || probe_here(&s))
        .map_err(|e| format!("cannot start a thread to probe io_uring: {e}"))?
        .join()
        .map_err(|_| "the io_uring probe panicked".to_string())?
}

fn probe_here(s: &Settings) -> Result<(), String> {
    let ring = build_ring(s).map_err(|e| format!("io_uring setup: {e}"))?;
    let mut p = io_uring::Probe::new();
    ring.submitter()
        .register_probe(&mut p)
        .map_err(|e| format!("io_uring probe: {e}"))?;
    for (op, name) in [
        (opcode::AcceptMulti::CODE, "accept"),
        (opcode::RecvMulti::CODE, "recv"),
        (opcode::SendMsg::CODE, "sendmsg"),
        (opcode::Shutdown::CODE, "shutdown"),
        (opcode::Close::CODE, "close"),
        (opcode::Read::CODE, "read"),
        (opcode::AsyncCancel::CODE, "cancel"),
    ] {
        if !p.is_supported(op) {
            return Err(format!("the kernel's io_uring lacks {name}"));
        }
    }
    BufRing::new(&ring, 2, 64).map_err(|e| format!("io_uring provided buffer ring: {e}"))?;
    Ok(())
}

pub(super) fn build_ring(s: &Settings) -> std::io::Result<IoUring> {
    IoUring::builder()
        .setup_single_issuer()
        .setup_defer_taskrun()
        .setup_cqsize(s.entries.saturating_mul(2))
        .build(s.entries)
}
