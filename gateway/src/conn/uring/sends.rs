//! Sends in flight on the ring. The kernel reads a send's buffers until
//! its completion, so a send owns what it points at: copies of the queued
//! items' heads (inline in `Out`, which moves when the queue grows),
//! references to their shared bodies (`Bytes`), or owned bytes (TLS
//! ciphertext, a refusal frame). `MSG_WAITALL` makes the kernel finish the
//! whole send (or fail): a completion means every byte went.

use bytes::Bytes;

use crate::core::push::Head;
use crate::core::Conn;

/// Slices per send (the kernel's IOV_MAX is 1024; a few dozen items cover
/// a burst of pushes).
pub const IOV_MAX: usize = 64;
/// Bytes per send at most, so one connection's backlog does not hold
/// the loop.
pub const SEND_BYTES_MAX: usize = 256 * 1024;
/// Finished sends kept for reuse (each is about 2.2 KB: its iovec and
/// head arrays), so a send costs no allocation and no zeroing.
pub const SPARE_SENDS_MAX: usize = 64;

/// Finished sends kept for reuse. Boxed: a send's message header and
/// iovecs are what the kernel points at, so they must not move.
#[allow(clippy::vec_box)]
pub type Spare = Vec<Box<SendOp>>;

/// One send in flight.
pub struct SendOp {
    /// The connection it belongs to (its completion finds it by id).
    pub conn_id: u64,
    msg: libc::msghdr,
    iov: [libc::iovec; IOV_MAX],
    heads: [Head; IOV_MAX / 2],
    bodies: Vec<Bytes>,
    owned: Vec<u8>,
    /// Bytes this send carries.
    pub len: usize,
}

impl SendOp {
    /// A send for `conn_id`: a spare one when there is one.
    fn empty(conn_id: u64, spare: &mut Spare) -> Box<SendOp> {
        if let Some(mut op) = spare.pop() {
            op.conn_id = conn_id;
            return op;
        }
        Box::new(SendOp {
            conn_id,
            // SAFETY: a zeroed msghdr is valid (no name, no control).
            msg: unsafe { std::mem::zeroed() },
            iov: [libc::iovec {
                iov_base: std::ptr::null_mut(),
                iov_len: 0,
            }; IOV_MAX],
            heads: [Head::EMPTY; IOV_MAX / 2],
            bodies: Vec::new(),
            owned: Vec::new(),
            len: 0,
        })
    }

    /// Gives a finished send back for reuse: what it held goes now (the
    /// bodies' references, its own bytes); its arrays stay.
    pub fn recycle(mut op: Box<SendOp>, spare: &mut Spare) {
        if spare.len() >= SPARE_SENDS_MAX {
            return;
        }
        op.bodies.clear();
        op.owned = Vec::new();
        op.len = 0;
        op.msg.msg_iovlen = 0;
        spare.push(op);
    }

    /// A send of the connection's queued items from the written offset on
    /// (plain TCP and WebSocket), or None when nothing is queued.
    pub fn queued(c: &Conn, spare: &mut Spare) -> Option<Box<SendOp>> {
        let mut op = SendOp::empty(c.id, spare);
        let mut skip = c.out_off as usize;
        let (mut n, mut h) = (0usize, 0usize);
        for item in c.out.iter() {
            if n + 2 > IOV_MAX || op.len >= SEND_BYTES_MAX {
                break;
            }
            let head = item.head.as_slice();
            if skip < head.len() {
                op.heads[h] = item.head;
                let copy = &op.heads[h].as_slice()[skip..];
                op.iov[n] = iovec(copy.as_ptr(), copy.len());
                op.len += copy.len();
                (n, h, skip) = (n + 1, h + 1, 0);
            } else {
                skip -= head.len();
            }
            if skip < item.body.len() {
                let body = &item.body[skip..];
                op.iov[n] = iovec(body.as_ptr(), body.len());
                op.len += body.len();
                op.bodies.push(item.body.clone());
                (n, skip) = (n + 1, 0);
            } else {
                skip -= item.body.len();
            }
        }
        if op.len == 0 {
            SendOp::recycle(op, spare);
            return None;
        }
        op.msg.msg_iov = op.iov.as_mut_ptr();
        op.msg.msg_iovlen = n as _;
        Some(op)
    }

    /// A send of bytes it owns (TLS ciphertext, a refusal frame).
    pub fn owned(conn_id: u64, bytes: Vec<u8>, spare: &mut Spare) -> Box<SendOp> {
        let mut op = SendOp::empty(conn_id, spare);
        op.len = bytes.len();
        op.owned = bytes;
        op.iov[0] = iovec(op.owned.as_ptr(), op.owned.len());
        op.msg.msg_iov = op.iov.as_mut_ptr();
        op.msg.msg_iovlen = 1;
        op
    }

    /// Whether it carries bytes of its own (TLS ciphertext): nothing of the
    /// connection's queue to drop when it completes.
    pub fn owns_bytes(&self) -> bool {
        !self.owned.is_empty()
    }

    /// The one slice of a send that has one (a Pong, a reply, TLS
    /// records): it goes as a SEND, which spares the kernel the message
    /// header and iovec copies of a SENDMSG.
    pub fn single(&self) -> Option<(*const u8, u32)> {
        (self.msg.msg_iovlen == 1).then(|| {
            (
                self.iov[0].iov_base as *const u8,
                self.iov[0].iov_len as u32,
            )
        })
    }

    /// The message header the SENDMSG entry points at (stable: boxed).
    pub fn msg(&self) -> *const libc::msghdr {
        &self.msg
    }
}

fn iovec(p: *const u8, len: usize) -> libc::iovec {
    libc::iovec {
        iov_base: p as *mut libc::c_void,
        iov_len: len,
    }
}
